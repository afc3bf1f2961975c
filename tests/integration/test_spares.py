"""Warm spares with a real daemon, real processes and the shipped web example (issue 15, part 1).

The example takes STARTUP_SECONDS to start, as a service that loads a model
does. A spare has done that already: when the active instance is SIGKILLed,
the spare is promoted into its slot and serves the very next request as that
instance, long before a cold start could have; a new spare starts behind it.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
import urllib.request
from pathlib import Path

from helpers import file_text, free_port, gone, marked_processes, wait_until

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
STARTUP = 2.0  # seconds the example takes to start: what a promotion saves


def config(port: int, spares: int = 1) -> str:
    return f"""
    [apps.api]
    command = ["{sys.executable}", "{EXAMPLES / 'web.py'}"]
    instances = 1
    spares = {spares}
    readiness = "heartbeat"
    heartbeat_timeout = "5s"
    listen = ["127.0.0.1:{port}"]
    stop_timeout = "5s"
    env = {{ STARTUP_SECONDS = "{STARTUP}" }}
    """


def get(port: int) -> dict:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=30) as reply:
        return json.loads(reply.read())


def ready_pair(sup) -> tuple[dict, dict]:
    """The active instance and the spare, once both run."""
    def check():
        status = sup.status()
        active, spare = status.get("api:0"), status.get("api:spare-0")
        if active and spare and active["state"] == spare["state"] == "running":
            return active, spare
        return None
    return wait_until(check, 30, interval=0.05, message="api:0 and its spare running")


def test_a_killed_instance_is_replaced_by_its_spare_which_serves_as_that_instance(supervisor):
    port = free_port()
    sup = supervisor(config(port))
    active, spare = ready_pair(sup)
    assert active["role"] == "active" and spare["role"] == "spare" and spare["index"] is None
    assert get(port)["pid"] == active["pid"], "the spare accepts nothing before its promotion"

    killed_at = time.monotonic()
    signal_pid(active["pid"], signal.SIGKILL)
    answer = get(port)  # waits in the daemon's listen backlog until a process accepts
    answered_in = time.monotonic() - killed_at
    assert answer["pid"] == spare["pid"], "the spare answered, not a new process"
    assert answer["instance"] == "api:0", "the promoted spare is api:0 as its client reports it"
    assert answered_in < STARTUP, f"answered after {answered_in:.3f}s: no faster than a cold start"

    slot = sup.status()["api:0"]
    assert slot["pid"] == spare["pid"] and slot["state"] == "running"
    assert slot["restarts"] == 1 and slot["last_exit"]["signal"] == 9
    events = [json.loads(line) for line in sup.cli("events", "--since", "0", "--no-follow", "--json")
              .stdout.splitlines()]
    promoted = [e for e in events if e["type"] == "promoted"]
    assert promoted and promoted[-1]["name"] == "api:0" and promoted[-1]["spare"] == "api:spare-0"
    # Its output: what it wrote as a spare in the spare's log, from its promotion on in the slot's.
    logs = sup.dir / ".supervise" / "logs"
    assert "promoted: now api:0" in file_text(logs / "api.0.log")
    assert "spare api:spare-0: waiting for a slot" in file_text(logs / "api.spare-0.log")

    # A new spare starts behind it, and is promoted in its turn.
    _, second = ready_pair(sup)
    assert second["pid"] not in (active["pid"], spare["pid"])
    signal_pid(spare["pid"], signal.SIGKILL)
    assert get(port)["pid"] == second["pid"]

    assert sup.cli("shutdown").returncode == 0
    assert sup.proc.wait(15) == 0
    wait_until(lambda: not marked_processes(sup.marker), 10, message="every worker and spare gone")


def test_a_spare_outlives_the_daemons_death_and_the_next_daemon_promotes_it(supervisor):
    port = free_port()
    sup = supervisor(config(port))
    active, spare = ready_pair(sup)
    wait_until(lambda: _checkpoint_names(sup) >= {"api:0", "api:spare-0"}, 10, message="the checkpoint")
    sup.proc.send_signal(signal.SIGKILL)
    sup.proc.wait(10)
    sup.start()

    status = sup.status()
    assert status["api:spare-0"]["pid"] == spare["pid"] and status["api:spare-0"]["role"] == "spare", \
        "adopted as the spare it was, not restarted"
    assert status["api:0"]["pid"] == active["pid"]
    signal_pid(active["pid"], signal.SIGKILL)
    answer = get(port)
    assert answer["pid"] == spare["pid"] and answer["instance"] == "api:0"
    assert sup.cli("shutdown").returncode == 0
    assert sup.proc.wait(15) == 0
    assert gone(spare["pid"])


def test_spares_need_heartbeat_readiness_and_check_says_which_key(supervisor):
    port = free_port()
    sup = supervisor(config(port).replace('readiness = "heartbeat"', 'readiness = "none"'), start=False)
    result = sup.cli("check")
    assert result.returncode == 2
    assert 'apps.api.spares: need readiness = "heartbeat"' in result.stderr + result.stdout


def signal_pid(pid: int, sig: int) -> None:
    os.kill(pid, sig)


def _checkpoint_names(sup) -> set[str]:
    path = sup.dir / ".supervise" / "checkpoint.json"
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return set()
    return {(f"{r['app']}:spare-{r['index']}" if r["role"] == "spare" else f"{r['app']}:{r['index']}")
            for r in data["instances"] if r.get("pid")}
