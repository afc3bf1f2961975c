"""The disruption budget with real workers (issue 12, point 6).

Eight instances stop beating together with `max_unavailable = 2`: never more than 2 are out of
service at once (replayed from `supervise events`), the others wait (said so in `status --json`
and in `budget` events) and go as replacements become ready; all 8 end up replaced and running.
A single hung instance is still restarted at once, within heartbeat_timeout.
"""

from __future__ import annotations

import json
from pathlib import Path

from helpers import wait_until

TIMEOUT = 1.0  # heartbeat_timeout
INSTANCES = 8
BUDGET = 2


def config(budget: int = BUDGET) -> str:
    return f"""
    [apps.w]
    command = ["{{python}}", "{{workers}}/beat_pause.py"]
    instances = {INSTANCES}
    readiness = "heartbeat"
    heartbeat_timeout = "{TIMEOUT}s"
    stop_timeout = "2s"
    max_unavailable = {budget}
    env = {{ PAUSE_DIR = "pause" }}
    """


def events(sup, since: int = 0) -> list[dict]:
    out = sup.cli("events", "--no-follow", "--since", str(since)).stdout.splitlines()
    return [json.loads(line) for line in out]


def out_of_service(history: list[dict], names: list[str]) -> int:
    """The most instances not running at once, replayed from state events (all running before)."""
    states = dict.fromkeys(names, "running")
    most = 0
    for event in history:
        if event.get("type") == "state" and event.get("app") == "w":
            states[event["name"]] = event["to"]
            most = max(most, sum(1 for state in states.values() if state != "running"))
    return most


def app_status(sup) -> dict:
    result = sup.cli("status", "--json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)["apps"][0]


def test_eight_stop_beating_together_at_most_two_out_of_service_at_once(supervisor):
    sup = supervisor(config())
    pause = sup.dir / "pause"
    pause.mkdir()
    before = {name: inst["pid"] for name, inst in sup.wait_all_running(INSTANCES).items()}
    seq = events(sup)[-1]["seq"]
    (pause / "gate").touch()  # replacements say ready only once the gate is gone: what waits can be seen
    (pause / "pause").touch()

    def held_back() -> dict | None:
        app = app_status(sup)
        waiting = [i for i in app["instances"] if i.get("waiting") == "budget"]
        return app if len(waiting) == INSTANCES - BUDGET else None
    app = wait_until(held_back, 15, interval=0.05, message=f"{INSTANCES - BUDGET} restarts held by the budget")
    assert app["budget"] == {"max_unavailable": BUDGET, "setting": str(BUDGET), "unavailable": BUDGET,
                             "waiting": INSTANCES - BUDGET}
    waiting = [i for i in app["instances"] if i.get("waiting")]
    assert all(i["state"] == "running" and i["waiting_reason"] == "hung" and i["pid"] == before[i["name"]]
               for i in waiting), waiting
    assert sum(1 for i in app["instances"] if i["state"] != "running") == BUDGET
    held = [e for e in events(sup, seq) if e["type"] == "budget" and e["event"] == "held"]
    assert len(held) == INSTANCES - BUDGET and all(e["reason"] == "hung" for e in held)

    (pause / "gate").unlink()  # replacements may become ready now: the rest follow, two at a time

    def replaced() -> dict | None:
        now = sup.status()
        done = len(now) == INSTANCES and all(
            i["state"] == "running" and i["pid"] != before[name] and "waiting" not in i for name, i in now.items())
        return now if done else None
    wait_until(replaced, 60, interval=0.1, message="all 8 replaced and running")
    history = events(sup, seq)
    most = out_of_service(history, list(before))
    print(f"8 instances stopped beating, max_unavailable {BUDGET}: at most {most} out of service at once")
    assert most == BUDGET, f"{most} out of service at once, max_unavailable is {BUDGET}"
    stops = [e for e in history if e.get("to") == "stopping"]
    assert sorted(e["name"] for e in stops) == sorted(before) and all(e["reason"] == "hung" for e in stops)
    released = [e for e in history if e["type"] == "budget" and e["event"] == "released"]
    assert len(released) == INSTANCES - BUDGET


def test_a_single_hung_instance_is_restarted_at_once(supervisor):
    sup = supervisor(config(budget=1))
    pause = sup.dir / "pause"
    pause.mkdir()
    before = {name: inst["pid"] for name, inst in sup.wait_all_running(INSTANCES).items()}
    (pause / "pause-3").touch()
    last_beat = float(wait_until(lambda: _text(pause / "paused-3"), 10, message="w:3 to stop beating"))
    caught = wait_until(lambda: [e for e in events(sup) if e.get("name") == "w:3" and e.get("to") == "stopping"],
                        10, message="the hung instance restarted")
    took = caught[0]["time"] - last_beat
    print(f"a lone hung instance was stopped {took:.3f}s after its last beat (heartbeat_timeout {TIMEOUT:g}s)")
    assert caught[0]["reason"] == "hung"
    assert took <= TIMEOUT + 0.5, f"stopped {took:.2f}s after its last beat"
    assert not [e for e in events(sup) if e["type"] == "budget"], "a lone hung instance was held"
    after = sup.wait_state("w:3", "running", timeout=15)
    assert after["pid"] != before["w:3"]
    others = {name: inst["pid"] for name, inst in sup.status().items() if name != "w:3"}
    assert others == {name: pid for name, pid in before.items() if name != "w:3"}


def _text(path: Path) -> str:
    try:
        return path.read_text()
    except FileNotFoundError:
        return ""
