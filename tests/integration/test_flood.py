"""A flooding neighbour (issue 12, point 7): one worker sending beats and output as fast as it can must
not delay another instance's beats into a false `hung`."""

from __future__ import annotations

import json
import os
import time

from helpers import wait_until

SECONDS = float(os.environ.get("SUPERVISE_FLOOD_SECONDS", "6"))  # the figure: 30


def test_a_flooder_causes_no_false_hang(supervisor):
    sup = supervisor("""
    [apps.flooder]
    command = ["{python}", "{workers}/beat_flood.py"]
    readiness = "heartbeat"
    env = { FLOOD_OUTPUT = "1" }
    log_max_size = "1M"
    log_backups = 1

    [apps.w]
    command = ["{python}", "{workers}/beater.py"]
    instances = 20
    readiness = "heartbeat"
    heartbeat_timeout = "1s"
    stop_timeout = "1s"
    """)
    running = sup.wait_all_running(21, timeout=60)
    pids = {name: inst["pid"] for name, inst in running.items() if name.startswith("w:")}
    start = time.monotonic()
    while time.monotonic() - start < SECONDS:  # watching for a false hang during the flood
        now = {name: inst["pid"] for name, inst in sup.status("w").items()}
        assert now == pids, "an instance was restarted during the flood"
        time.sleep(0.2)
    events = [json.loads(line) for line in sup.cli("events", "--no-follow").stdout.splitlines()]
    assert not [e for e in events if e.get("to") == "stopping"], "a false hang"
    counters = json.loads(sup.cli("status", "--json").stdout)["daemon"]["heartbeats"]
    print(f"beats accepted during the flood: {counters['accepted']}")
    assert counters["accepted"] > 100_000, "the flooder did flood"
    wait_until(lambda: sup.status("flooder")["flooder:0"]["state"] == "running", 5)
