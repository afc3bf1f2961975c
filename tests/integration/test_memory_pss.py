"""max_memory counts shared pages once: a pre-forking server is not restarted in a loop (issue 12, point 4).

A master writes 150 MB, then forks 4 children that share those pages
copy-on-write (gunicorn --preload --workers 4). Summed, the five RSS figures
say ~800 MB; the kernel holds ~165 MB (PSS, or the cgroup's charge). With
max_memory between the two the tree is never restarted, and `status` shows
the figure it is judged on; once the children really write their copies,
the tree is over its limit by any measure, and is restarted for memory.
"""

from __future__ import annotations

import json
import os
import signal
import time

import psutil
from helpers import wait_until

from supervise.runtime.chores import MEMORY_INTERVAL

MiB = 1024 * 1024
SHARED_MB = 150
CHILDREN = 4
LIMIT_MB = 500  # the issue's own figure: between the tree's PSS (~165M) and its RSS sum (~800M)
WINDOW = 12 * MEMORY_INTERVAL  # a dozen samples, each of which could have started a restart

CONFIG = f"""
[apps.pre]
command = ["{{python}}", "{{workers}}/preforked.py", "{SHARED_MB}", "{CHILDREN}"]
max_memory = "{LIMIT_MB}M"
stop_timeout = "10s"
"""


def events(sup) -> list[dict]:
    return [json.loads(line) for line in sup.cli("events", "--no-follow").stdout.splitlines()]


def tree(pid: int) -> list[psutil.Process]:
    master = psutil.Process(pid)
    return [master, *master.children(recursive=True)]


def pss(pid: int) -> int:
    return sum(p.memory_full_info().pss for p in tree(pid))


def rss_sum(pid: int) -> int:
    return sum(p.memory_info().rss for p in tree(pid))


def daemon_status(sup) -> dict:
    result = sup.cli("status", "--json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_a_preforked_tree_under_its_limit_by_pss_is_never_restarted_and_its_growth_is(supervisor):
    sup = supervisor(CONFIG)
    first = sup.wait_state("pre:0", "running")
    log = sup.dir / ".supervise" / "logs" / "pre.0.log"
    wait_until(lambda: log.exists() and "forked" in log.read_text(), 30, message="the children forked")
    master = first["pid"]
    held, summed, limit = pss(master), rss_sum(master), LIMIT_MB * MiB
    print(f"tree: PSS {held / MiB:.1f} MiB, RSS sum {summed / MiB:.1f} MiB, max_memory {LIMIT_MB} MiB")
    assert held < limit < summed, "the premise: over the limit by RSS sum, well under it by PSS"

    # The status shows what the tree is judged on: its PSS (or its cgroup's charge), not the RSS sum.
    # (A sample from before the master loaded its 150 MB may still be the last one: wait for one taken since.)
    seen: list[int] = []

    def near() -> bool:
        seen.append(shown := sup.status()["pre:0"]["rss"] or 0)
        return abs(shown - held) < 30 * MiB

    try:
        wait_until(near, 10, interval=0.1)
    except AssertionError:
        raise AssertionError(f"status shows {seen[-1] / MiB:.1f} MiB, the tree holds {held / MiB:.1f}") from None
    measure = daemon_status(sup)["daemon"]["memory_measure"]
    assert measure in ("pss", "cgroup"), measure

    # A dozen sampling intervals (the scenario's length, not a wait for a condition): no restart.
    deadline = time.monotonic() + WINDOW
    while time.monotonic() < deadline:
        inst = sup.status()["pre:0"]
        assert (inst["pid"], inst["state"], inst["restarts"], inst["last_exit"]) == (master, "running", 0, None)
        assert inst["rss"] < limit
        time.sleep(MEMORY_INTERVAL / 2)
    assert not [e for e in events(sup) if e.get("name") == "pre:0" and e.get("to") == "stopping"]

    # Now it really grows: every child writes its own copy, and the tree is over its limit by PSS too.
    os.kill(master, signal.SIGUSR1)
    restarted = wait_until(lambda: (i := sup.status()["pre:0"])["last_exit"] and i, 30,
                           message="a restart for memory")
    assert restarted["last_exit"]["reason"] == "memory"
    assert restarted["pid"] != master
    # (Whether every child had finished writing its copy by then depends on the load: under it, the
    # tree can cross the limit while the children are still writing, and be restarted before they say so.)
