"""`supervise chaos`: harm at random through the daemon, and see every instance come back."""

from __future__ import annotations

import json
import re

from helpers import wait_until

CONFIG = """
[apps.b]
command = ["{python}", "{workers}/beater.py"]
instances = 3
readiness = "heartbeat"
heartbeat_timeout = "1s"
stop_timeout = "2s"
backoff = { initial = "20ms", max = "200ms" }
crash_loop = { max_restarts = 1000, window = "10s" }
chaos = true

[apps.safe]
command = ["{python}", "{workers}/sleeper.py"]
"""


def test_chaos_kills_at_random_and_every_instance_comes_back(supervisor):
    sup = supervisor(CONFIG)
    before = sup.wait_all_running()
    result = sup.cli("chaos", "b", "--kill-rate", "10/s", "--duration", "1.5s", "--seed", "3")
    assert result.returncode == 0, result.stderr
    harms = re.findall(r"SIGKILL -> (b:\d) \(pid (\d+)\)", result.stdout)
    assert len(harms) >= 3, result.stdout  # ~15 expected; a loaded machine may do fewer
    assert f"done, {len(harms)} harms" in result.stdout
    after = sup.wait_all_running()
    assert after["safe:0"]["pid"] == before["safe:0"]["pid"], "chaos touched only its target"
    events = [json.loads(line) for line in sup.cli("events", "--no-follow").stdout.splitlines()]
    harmed = {int(pid) for _, pid in harms}
    exits = [e for e in events if e["type"] == "state" and e.get("exit") and e["pid"] in harmed]
    assert not exits or all(e["exit"]["reason"] == "crashed" for e in exits)
    crashed = [e for e in events if e["type"] == "state" and e.get("exit", {}).get("signal") == 9]
    assert len(crashed) == len(harms), "every harm was noticed as a crash"
    assert [e["event"] for e in events if e["type"] == "chaos"] == ["started"] + ["harm"] * len(harms) + ["done"]


def test_sigstop_chaos_is_caught_as_hung(supervisor):
    sup = supervisor(CONFIG)
    sup.wait_all_running()
    # Stopped again and again for 2.5 s, more than heartbeat_timeout (1 s) at a time.
    result = sup.cli("chaos", "b:1", "--signal", "STOP", "--kill-rate", "20/s", "--duration", "2.5s")
    assert result.returncode == 0, result.stderr
    assert "SIGSTOP -> b:1" in result.stdout
    def hung():  # a hung worker re-stopped after its SIGTERM exits only at its SIGKILL, maybe after the chaos
        events = [json.loads(line) for line in sup.cli("events", "--no-follow").stdout.splitlines()]
        return any(e["type"] == "state" and e["name"] == "b:1" and e.get("exit", {}).get("reason") == "hung"
                   for e in events)
    wait_until(hung, timeout=15, message="b:1 restarted as hung")
    sup.wait_all_running()  # and what was still stopped at the end was continued


def test_chaos_refuses_apps_not_marked_and_bad_settings(supervisor):
    sup = supervisor(CONFIG)
    sup.wait_all_running()
    refused = sup.cli("chaos", "safe", "--duration", "1s")
    assert refused.returncode == 2 and "not marked `chaos = true`" in refused.stderr
    assert sup.cli("chaos", "nope").returncode == 2
    bad = sup.cli("chaos", "b", "--kill-rate", "lots")
    assert bad.returncode == 2 and "2/s" in bad.stderr
    assert sup.cli("chaos", "b", "--duration", "-1s").returncode == 2
    forced = sup.cli("chaos", "safe", "--force", "--kill-rate", "50/s", "--duration", "0.2s")
    assert forced.returncode == 0, forced.stderr
    sup.wait_all_running()
