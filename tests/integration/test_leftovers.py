"""No leftovers, even across a daemon's death (issue 12, point 5).

Kill the daemon, then a worker's main process: its forked child lives on, re-parented away from any
daemon, still carrying the spawn's token. The next daemon, finding the recorded main process gone,
kills what that instance left behind before it restarts the slot.
"""

from __future__ import annotations

import os
import signal

import psutil
from helpers import gone, wait_until
from test_adoption import checkpointed

APPS = """
[apps.g]
command = ["{python}", "{workers}/forked_child.py"]
instances = 2
readiness = "heartbeat"
stop_timeout = "2s"
"""


def children_of(pid: int) -> list[int]:
    return [p.pid for p in psutil.Process(pid).children()]


def test_a_dead_workers_child_is_killed_by_the_next_daemon(supervisor):
    sup = supervisor(APPS)
    before = sup.wait_all_running(2)
    main = before["g:0"]["pid"]
    child = wait_until(lambda: children_of(main), 10, message="the worker's child")[0]
    checkpointed(sup, 2)
    sup.proc.kill()
    sup.proc.wait()
    os.kill(main, signal.SIGKILL)
    wait_until(lambda: gone(main), 10)
    assert not gone(child), "the child outlived its main process (the scenario)"
    sup.start()
    after = sup.wait_all_running(2)
    assert after["g:0"]["pid"] != main and after["g:0"]["last_exit"]["reason"] == "lost"
    wait_until(lambda: gone(child), 10, message=f"the dead worker's child {child} killed")
    assert after["g:1"]["pid"] == before["g:1"]["pid"], "a live worker is adopted, not swept"
    assert not gone(children_of(after["g:1"]["pid"])[0]), "nor its child"
