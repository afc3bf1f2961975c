"""A paused daemon judges on fresh evidence (issue 12, point 1).

SIGSTOP the daemon past its instances' heartbeat_timeout while they beat on: their beats wait on the
socket, and the deadlines come due while the loop sleeps. Resumed, the daemon sees its own stall
first and re-arms liveness from the moment it runs again: healthy instances are not restarted, and an
instance that really hung meanwhile is still caught within heartbeat_timeout (+ the stall check) of the resume.
"""

from __future__ import annotations

import json
import os
import signal
import time

import pytest
from helpers import wait_until

TIMEOUT = 1.0

APPS = f"""
[apps.w]
command = ["{{python}}", "{{workers}}/beater.py"]
instances = 4
readiness = "heartbeat"
heartbeat_timeout = "{TIMEOUT}s"
stop_timeout = "1s"
"""


def events(sup, since: int = 0) -> list[dict]:
    out = sup.cli("events", "--no-follow", "--since", str(since)).stdout.splitlines()
    return [json.loads(line) for line in out]


@pytest.mark.parametrize("pause", [2 * TIMEOUT, 6 * TIMEOUT])
def test_a_paused_daemon_restarts_no_healthy_instance(supervisor, pause):
    sup = supervisor(APPS)
    before = {name: inst["pid"] for name, inst in sup.wait_all_running(4).items()}
    seq = events(sup)[-1]["seq"]
    os.kill(sup.proc.pid, signal.SIGSTOP)
    time.sleep(pause)  # the scenario itself: a pause of this length, not a wait for a condition
    os.kill(sup.proc.pid, signal.SIGCONT)
    stalled = wait_until(lambda: [e for e in events(sup, seq) if e.get("event") == "stalled"], 10,
                         message="a stalled event")
    # How late the first deadline came: the pause less the time that deadline still had to run.
    assert stalled[0]["type"] == "daemon" and stalled[0]["seconds"] >= pause - TIMEOUT - 0.5
    # Well past a heartbeat_timeout after the resume: still the same processes, never a hang.
    deadline = time.monotonic() + 3 * TIMEOUT
    while time.monotonic() < deadline:
        now = {name: inst["pid"] for name, inst in sup.status().items()}
        assert now == before, f"a healthy instance was restarted after a {pause:g}s pause"
        time.sleep(0.1)
    assert not [e for e in events(sup, seq) if e.get("to") == "stopping"]


def test_a_real_hang_during_the_pause_is_caught_soon_after_the_resume(supervisor):
    sup = supervisor(APPS)
    running = sup.wait_all_running(4)
    hung = running["w:2"]["pid"]
    os.kill(sup.proc.pid, signal.SIGSTOP)
    os.kill(hung, signal.SIGSTOP)  # this one really stops beating
    time.sleep(3 * TIMEOUT)  # the scenario: a pause of this length
    os.kill(sup.proc.pid, signal.SIGCONT)
    resumed = time.time()
    caught = wait_until(lambda: [e for e in events(sup) if e.get("name") == "w:2" and e.get("to") == "stopping"],
                        10, message="the hung instance caught")
    took = caught[0]["time"] - resumed
    print(f"the hung instance was caught {took:.3f}s after the resume (heartbeat_timeout {TIMEOUT:g}s)")
    assert took <= TIMEOUT + 0.3, f"caught {took:.2f}s after the resume"  # measured: +1 to +4 ms
    others = {name: inst["pid"] for name, inst in sup.status().items() if name != "w:2"}
    assert others == {name: inst["pid"] for name, inst in running.items() if name != "w:2"}
