"""`readiness = "notify"` through the real daemon: sd_notify datagrams from a worker that knows
nothing of supervise (workers/notify_ready.py, the socket module alone, as gunicorn sends them).

The worker sends READY=1 only once the test creates a file, so the test decides when it is
ready; STATUS= shows in `status --json`; WATCHDOG=1 is a heartbeat.
"""

from __future__ import annotations

import json
import os
import socket
import stat
import uuid
from pathlib import Path

from helpers import wait_until

WORKER = "{workers}/notify_ready.py"


def notify_app(tmp: Path, instances: int = 1, args: str = "", extra: str = "", name: str = "web",
               start_timeout: str = "60s") -> str:
    return f"""
    [apps.{name}]
    command = ["{{python}}", "{WORKER}", "--report", "{tmp}/report-{name}-{{instance}}.json"{args}]
    instances = {instances}
    readiness = "notify"
    start_timeout = "{start_timeout}"
    stop_timeout = "10s"
    {extra}
    """


def report(tmp: Path, name: str, index: int, timeout: float = 20) -> dict:
    """What the worker found in its environment (it writes the file whole, at start)."""
    path = tmp / f"report-{name}-{index}.json"
    wait_until(path.exists, timeout, message=f"{path} to be written")
    return json.loads(path.read_text())


def test_a_notify_worker_is_running_only_after_ready_and_its_status_shows(supervisor, tmp_path):
    sup = supervisor(notify_app(tmp_path, args=f', "--ready-when", "{tmp_path}/ready", "--status", "warming up"'))
    info = report(tmp_path, "web", 0)
    assert info["NOTIFY_SOCKET"], "a notify app's worker gets a NOTIFY_SOCKET"
    assert info["WATCHDOG_USEC"] is None, "no heartbeat_timeout: no watchdog asked for"
    # STATUS= was sent before anything else; it shows while the instance is still starting.
    inst = wait_until(lambda: (i := sup.status()["web:0"])["fields"] and i, timeout=20,
                      message="STATUS= to show in status")
    assert inst["fields"] == {"status": "warming up"}
    assert inst["state"] == "starting" and inst["pid"] == info["pid"]
    (tmp_path / "ready").touch()
    running = sup.wait_state("web:0", "running", timeout=20)
    assert running["pid"] == info["pid"] and running["restarts"] == 0
    assert running["fields"] == {"status": "warming up"}
    table = sup.cli("status")
    assert table.returncode == 0 and "running" in table.stdout


def test_a_notify_worker_that_never_says_ready_hits_start_timeout(supervisor, tmp_path):
    sup = supervisor(notify_app(tmp_path, args=f', "--ready-when", "{tmp_path}/never"',
                                start_timeout="1s"))
    first = report(tmp_path, "web", 0)
    inst = wait_until(lambda: (i := sup.status()["web:0"])["last_exit"] and i, timeout=20,
                      message="web:0 to have been taken down")
    assert inst["last_exit"]["reason"] == "start-timeout", inst
    assert inst["pid"] != first["pid"], "the one that never said READY=1 is gone"


def test_watchdog_pings_keep_a_heartbeat_app_alive_and_their_absence_restarts_it_as_hung(supervisor, tmp_path):
    sup = supervisor(notify_app(tmp_path, instances=2, extra='heartbeat_timeout = "1500ms"', args=(
        f', "--watchdog", "0.1", "--watchdog-until", "{tmp_path}/silent-{{instance}}"')))
    infos = [report(tmp_path, "web", index) for index in range(2)]
    assert [i["WATCHDOG_USEC"] for i in infos] == ["1500000", "1500000"], "sd_watchdog_enabled() says yes"
    before = sup.wait_all_running(2, timeout=20)
    # Three heartbeat_timeouts with nothing but WATCHDOG=1 pings: nobody is hung.
    def up_long() -> dict[str, dict] | None:
        status = sup.status()
        return status if all((i["uptime"] or 0) > 4.5 for i in status.values()) else None

    alive = wait_until(up_long, timeout=30, interval=0.1, message="both instances up for 4.5 s")
    assert {n: (i["pid"], i["restarts"], i["state"]) for n, i in alive.items()} == \
        {n: (i["pid"], 0, "running") for n, i in before.items()}
    assert all(i["heartbeat_age"] is not None and i["heartbeat_age"] < 1.5 for i in alive.values()), alive

    (tmp_path / "silent-1").touch()  # web:1 stops pinging
    after = wait_until(lambda: (s := sup.status())["web:1"]["pid"] != before["web:1"]["pid"] and s,
                       timeout=20, interval=0.05, message="web:1 to be restarted")
    assert after["web:1"]["last_exit"]["reason"] == "hung", after["web:1"]
    assert after["web:0"]["pid"] == before["web:0"]["pid"] and after["web:0"]["restarts"] == 0
    # The hung one's socket went with it; its successor has one of its own.
    fresh = wait_until(lambda: (r := report(tmp_path, "web", 1))["pid"] == after["web:1"]["pid"] and r,
                       timeout=20, message="the new web:1's report")
    live = {infos[0]["NOTIFY_SOCKET"], fresh["NOTIFY_SOCKET"]}
    assert fresh["NOTIFY_SOCKET"] != infos[1]["NOTIFY_SOCKET"]
    if not any(address.startswith("@") for address in live):
        on_disk = {str(p) for p in (tmp_path / ".supervise" / "notify").iterdir() if stat.S_ISSOCK(p.lstat().st_mode)}
        assert on_disk == live, "exactly the live instances' sockets are there"


def test_each_instance_gets_its_own_notify_socket_and_never_the_daemons(supervisor, tmp_path):
    # The daemon runs under a NOTIFY_SOCKET of its own, as under a systemd Type=notify unit.
    daemon_address = f"@supervise-test-{uuid.uuid4().hex}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as ours:
        ours.bind("\0" + daemon_address[1:])
        ours.settimeout(30)
        config = notify_app(tmp_path, instances=3) + notify_app(tmp_path, name="plain").replace(
            'readiness = "notify"', 'readiness = "none"\n    ready_after = 0')
        sup = supervisor(config, start=False)
        sup.env["NOTIFY_SOCKET"] = daemon_address
        sup.start()
        said: list[str] = []
        while "READY=1" not in said:  # the daemon tells its own manager (recv times out: 30 s)
            said += ours.recv(4096).decode().splitlines()
        sup.wait_all_running(4, timeout=30)
    sockets = [report(tmp_path, "web", index)["NOTIFY_SOCKET"] for index in range(3)]
    assert all(sockets) and len(set(sockets)) == 3, sockets
    assert daemon_address not in sockets
    plain = report(tmp_path, "plain", 0)
    assert plain["NOTIFY_SOCKET"] is None and plain["WATCHDOG_USEC"] is None, \
        "an app that is not notify gets no NOTIFY_SOCKET at all, least of all the daemon's"


def test_no_notify_socket_file_is_left_after_shutdown(supervisor, tmp_path):
    sup = supervisor(notify_app(tmp_path, instances=2))
    sup.wait_all_running(2, timeout=30)
    addresses = [report(tmp_path, "web", index)["NOTIFY_SOCKET"] for index in range(2)]
    state = tmp_path / ".supervise"
    paths = [Path(a) for a in addresses if not a.startswith("@")]
    for path in paths:  # a path (not an abstract name): the file is there while the instance runs
        assert stat.S_ISSOCK(path.stat().st_mode), path
        assert state in path.parents, f"{path} is in the state dir"
    result = sup.cli("shutdown")
    assert result.returncode == 0, result.stderr
    assert sup.proc.wait(30) == 0
    left = [p for p in paths if p.exists()]
    assert not left, f"notify sockets left behind: {left}"
    sockets = [str(p) for p in state.rglob("*") if not p.is_symlink() and stat.S_ISSOCK(os.lstat(p).st_mode)
               and "notify" in str(p.relative_to(state))]
    assert not sockets, f"notify socket files left in the state dir: {sockets}"
