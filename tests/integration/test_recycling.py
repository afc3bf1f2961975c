"""max_age recycling through the real daemon: judged from `supervise events` and `status --json`.

With `listen` sockets an old instance is replaced successor first: the new process is running
before the old one is even asked to stop. With a fixed per-instance `port` two cannot share
the port, so it is stopped, then started. Jitter gives each instance a limit of its own.
"""

from __future__ import annotations

import json
import socket

from helpers import Supervisor, free_port, wait_until


def events(sup: Supervisor) -> list[dict]:
    result = sup.cli("events", "--no-follow", "--json")
    assert result.returncode == 0, result.stderr
    return [json.loads(line) for line in result.stdout.splitlines()]


def first_recycle(sup: Supervisor, reason: str = "max-age") -> tuple[list[dict], dict]:
    """Every event so far, and the first state event that takes a process down for `reason`."""
    def found() -> tuple[list[dict], dict] | None:
        history = events(sup)
        down = [e for e in history if e["type"] == "state" and e.get("reason") == reason]
        return (history, down[0]) if down else None
    return wait_until(found, timeout=30, interval=0.1, message=f"an instance taken down for {reason}")


def pid_events(history: list[dict], pid: int) -> list[dict]:
    return [e for e in history if e.get("pid") == pid]


def test_max_age_with_listen_sockets_replaces_successor_first(supervisor):
    port = free_port()
    sup = supervisor(f"""
    [apps.web]
    command = ["{{python}}", "{{workers}}/listen_echo.py"]
    readiness = "heartbeat"
    listen = ["127.0.0.1:{port}"]
    max_age = "3s"
    start_timeout = "30s"
    """)
    first = sup.wait_all_running(1, timeout=30)["web:0"]
    assert first["recycle_in"] <= 3, first
    history, stopping = first_recycle(sup)
    old_pid = stopping["pid"]
    assert old_pid == first["pid"] and stopping["name"] == "web:0" and stopping["to"] == "stopping"

    def replaced() -> dict | None:
        return next((e for e in events(sup) if e["type"] == "replaced" and e.get("old_pid") == old_pid), None)

    swap = wait_until(replaced, timeout=30, interval=0.1, message="the replaced event")
    assert swap["reason"] == "max-age" and swap["pid"] != old_pid, swap
    history = events(sup)
    new_running = [e for e in pid_events(history, swap["pid"]) if e["type"] == "state" and e["to"] == "running"]
    old_down = [e for e in pid_events(history, old_pid) if e["type"] == "state" and e["to"] == "stopping"]
    assert new_running and old_down, (new_running, old_down)
    assert new_running[0]["seq"] < old_down[0]["seq"], "the successor ran before the old one was asked to stop"
    old_gone = [e for e in pid_events(history, old_pid) if e["type"] == "state" and "exit" in e]
    assert not old_gone or old_gone[0]["seq"] > new_running[0]["seq"]

    now = wait_until(lambda: (i := sup.status()["web:0"])["pid"] != old_pid and i["state"] == "running" and i,
                     timeout=30, message="web:0 to run its successor")
    assert now["last_exit"]["reason"] == "max-age", now
    assert now["restarts"] >= 1


def test_a_recycle_whose_successor_fails_leaves_the_old_instance_serving(supervisor, tmp_path):
    flag = tmp_path / "broken"
    port = free_port()
    sup = supervisor(f"""
    [apps.web]
    command = ["sh", "-c", "test -e {flag} && exit 1; exec {{python}} {{workers}}/listen_echo.py"]
    readiness = "heartbeat"
    listen = ["127.0.0.1:{port}"]
    max_age = "2s"
    start_timeout = "30s"
    """)
    first = sup.wait_all_running(1, timeout=30)["web:0"]
    flag.touch()  # from now on, every new process of web fails at once

    def successor_failed() -> dict | None:
        return next((e for e in events(sup) if e["type"] == "state" and e.get("from") == "starting"
                     and (e.get("exit") or {}).get("reason") == "crashed"), None)

    wait_until(successor_failed, timeout=30, interval=0.1, message="a successor to fail")
    now = sup.status()["web:0"]
    assert now["pid"] == first["pid"] and now["state"] == "running", "the old one was never taken down first"
    assert now["last_exit"] is None and "recycle_in" in now, now
    assert not [e for e in events(sup) if e.get("pid") == first["pid"] and e.get("to") == "stopping"]
    with socket.create_connection(("127.0.0.1", port), timeout=10) as conn:
        assert json.loads(conn.makefile().readline())["pid"] == first["pid"], "it still serves"


def test_max_age_jitter_gives_each_instance_its_own_limit(supervisor):
    # max_age + uniform(0, jitter): with a jitter of 1000 h, three limits within a minute of
    # each other would be a one-in-a-billion draw. Without jitter, they are max_age apart from
    # the instant each one was spawned.
    sup = supervisor("""
    [apps.jittered]
    command = ["{python}", "{workers}/sleeper.py"]
    instances = 3
    ready_after = "200ms"
    max_age = "1h"
    max_age_jitter = "1000h"

    [apps.plain]
    command = ["{python}", "{workers}/sleeper.py"]
    instances = 3
    ready_after = "200ms"
    max_age = "1h"
    """)
    status = sup.wait_all_running(6, timeout=30)
    jittered = sorted(i["recycle_in"] for n, i in status.items() if n.startswith("jittered:"))
    plain = sorted(i["recycle_in"] for n, i in status.items() if n.startswith("plain:"))
    assert all(0 < r <= 3600 + 1000 * 3600 for r in jittered), jittered
    assert jittered[-1] - jittered[0] > 60, f"three instances recycled within a minute: {jittered}"
    assert all(3600 - 60 < r <= 3600 for r in plain), plain
    table = sup.cli("status")
    assert table.returncode == 0


def test_max_age_with_a_fixed_port_stops_then_starts(supervisor, tmp_path):
    port = free_port()
    sup = supervisor(f"""
    [apps.web]
    command = ["{{python}}", "{{workers}}/probe_server.py", "{{port}}"]
    port = {port}
    readiness = {{ http = "/health", interval = "100ms" }}
    max_age = "2s"
    start_timeout = "30s"
    """)
    first = sup.wait_all_running(1, timeout=30)["web:0"]
    history, stopping = first_recycle(sup)
    old_pid = stopping["pid"]
    assert old_pid == first["pid"]

    def restarted() -> tuple[list[dict], dict] | None:
        history = events(sup)
        new = [e for e in history if e["type"] == "state" and e.get("name") == "web:0" and e.get("pid")
               and e["pid"] != old_pid and e["seq"] > stopping["seq"]]
        return (history, new[0]) if new else None

    history, new = wait_until(restarted, timeout=30, interval=0.1, message="web:0 to get a new process")
    exited = [e for e in history if e["type"] == "state" and e.get("name") == "web:0" and "exit" in e
              and e["seq"] > stopping["seq"]]
    assert exited, f"the old process's exit is recorded: {history}"
    assert exited[0]["from"] == "stopping" and exited[0]["pid"] in (old_pid, None), exited[0]
    assert exited[0]["seq"] < new["seq"], "the old process was gone before the new one appeared"
    assert exited[0]["exit"]["reason"] == "max-age", exited[0]
    assert not [e for e in history if e["type"] == "replaced"], "no successor beside it"
    now = wait_until(lambda: (i := sup.status()["web:0"])["pid"] != old_pid and i["state"] == "running" and i,
                     timeout=30, message="web:0 to run again")
    assert now["last_exit"]["reason"] == "max-age", now
