"""Issue 13: CPU, memory and process count for every instance, limits or not; and an exit's time.

Every instance is sampled every DISPLAY_INTERVAL (max_memory or not): `status --json` has `cpu`
(percent of one core since the last pass), `cpu_seconds` and `processes` beside `rss`. Every wait
is for a condition, with a deadline.
"""

from __future__ import annotations

import json
import os
import signal
import statistics
import time

from helpers import wait_until

from supervise.runtime.chores import DISPLAY_INTERVAL

CONFIG = """
[apps.idle]
command = ["{python}", "{workers}/sleeper.py"]
readiness = "none"

[apps.busy]
command = ["{python}", "-c", "while True: pass"]
readiness = "none"

[apps.forked]
command = ["{python}", "{workers}/forked_child.py"]
"""
SAMPLED = 2 * DISPLAY_INTERVAL + 10  # two passes (CPU % needs a previous one), with room for a loaded machine


def test_every_instance_has_cpu_and_processes_without_max_memory(supervisor):
    sup = supervisor(CONFIG)
    sup.wait_all_running(3)

    def sampled() -> dict[str, dict] | None:
        status = sup.status()
        known = all(i.get("cpu") is not None and i.get("processes") is not None and i.get("rss") is not None
                    for i in status.values())
        return status if known else None

    status = wait_until(sampled, SAMPLED, message="cpu and processes for every instance")
    first = status["busy:0"]["cpu_seconds"]
    # A second pass: the busy loop's CPU over the interval is near a whole core, the sleeper's near none.
    status = wait_until(lambda: (s := sup.status())["busy:0"]["cpu_seconds"] > first and s, SAMPLED,
                        message="a second pass")
    print({name: (i["cpu"], i["cpu_seconds"], i["processes"]) for name, i in status.items()})
    assert status["busy:0"]["cpu"] >= 40.0, "a busy loop on a loaded 2-core machine still gets most of a core"
    assert status["idle:0"]["cpu"] <= 5.0
    assert status["idle:0"]["processes"] == 1
    assert status["forked:0"]["processes"] == 2, "the forked child counts in its tree"
    assert isinstance(status["busy:0"]["cpu_seconds"], float)


def test_an_exits_event_time_is_when_it_was_killed(supervisor):
    sup = supervisor(CONFIG.split("[apps.busy]")[0])
    delays = []
    for _ in range(5):
        pid = sup.wait_all_running(1)["idle:0"]["pid"]
        seen = max((json.loads(line)["seq"] for line in sup.cli("events", "--no-follow").stdout.splitlines()),
                   default=0)
        killed = time.time()
        os.kill(pid, signal.SIGKILL)
        wait_until(lambda p=pid: sup.status()["idle:0"]["pid"] not in (None, p), 10, message="a replacement")
        events = [json.loads(line) for line in sup.cli("events", "--no-follow").stdout.splitlines()]
        mine = [e for e in events if e.get("name") == "idle:0" and e.get("type") == "state" and e["seq"] > seen]
        exit_at = next(i for i, e in enumerate(mine) if (e.get("exit") or {}).get("signal") == signal.SIGKILL)
        exit_event = mine[exit_at]
        delays.append(exit_event["time"] - killed)
        later = [e for e in mine[exit_at + 1:] if e.get("to") in ("starting", "running")]
        assert all(e["time"] >= exit_event["time"] for e in later)
    print(f"exit event time - kill time: median {statistics.median(delays) * 1000:.1f} ms, "
          f"max {max(delays) * 1000:.1f} ms")
    assert -0.005 <= statistics.median(delays) <= 0.020
