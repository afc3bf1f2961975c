"""`listen`: sockets bound once by the daemon, handed to every instance, outliving them all."""

from __future__ import annotations

import json
import os
import select
import signal
import socket

from helpers import free_port, wait_until


def ask(address) -> dict:
    family = socket.AF_UNIX if isinstance(address, str) else socket.AF_INET
    with socket.socket(family) as s:
        s.settimeout(10)
        s.connect(address)
        return json.loads(s.makefile().readline())


def config(*addresses: str, instances: int = 2) -> str:
    listen = ", ".join(f'"{a}"' for a in addresses)
    return f"""
    [apps.echo]
    command = ["{{python}}", "{{workers}}/listen_echo.py"]
    instances = {instances}
    readiness = "heartbeat"
    listen = [{listen}]
    stop_timeout = "2s"
    """


def test_instances_share_a_tcp_socket_with_the_systemd_protocol(supervisor):
    port = free_port()
    sup = supervisor(config(f"127.0.0.1:{port}"))
    pids = {sup.wait_state(f"echo:{i}", "running")["pid"] for i in range(2)}
    seen = set()
    for _ in range(40):
        reply = ask(("127.0.0.1", port))
        assert reply["pid"] in pids
        assert reply["listen_pid"] == str(reply["pid"])  # LISTEN_PID is the worker's own pid
        assert reply["names"] == f"127.0.0.1_{port}" and reply["fds"] == [3]
        seen.add(reply["pid"])
        if seen == pids:
            break
    assert seen == pids, "both instances accept on the one socket"


def test_the_socket_outlives_every_worker(supervisor):
    port = free_port()
    sup = supervisor(config(f"127.0.0.1:{port}", instances=1))
    old = sup.wait_state("echo:0", "running")["pid"]
    pidfd = os.pidfd_open(old)
    os.kill(old, signal.SIGKILL)
    # Wait until it has really died: a killed process still blocked in accept()
    # can take one more connection from the queue before the signal lands.
    try:
        assert select.select([pidfd], [], [], 10)[0], "SIGKILLed worker still alive"
    finally:
        os.close(pidfd)
    # No instance is serving at this moment, yet the connection is accepted by
    # the kernel's queue and answered by the replacement.
    reply = ask(("127.0.0.1", port))
    assert reply["pid"] != old
    assert sup.status()["echo:0"]["restarts"] == 1


def test_unix_socket_and_several_sockets(supervisor, tmp_path):
    port = free_port()
    path = str(tmp_path / "echo.sock")
    sup = supervisor(config(f"unix:{path}", f"127.0.0.1:{port}", instances=1))
    sup.wait_state("echo:0", "running")
    reply = ask(path)
    assert reply["fds"] == [3, 4] and reply["names"] == f"unix_{path}:127.0.0.1_{port}"
    assert ask(("127.0.0.1", port))["pid"] == reply["pid"]
    assert sup.cli("shutdown").returncode == 0
    sup.proc.wait(10)
    assert not os.path.exists(path)  # removed with the daemon


def test_address_in_use_is_a_clear_start_error(tmp_path, supervisor):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        sup = supervisor(config(f"127.0.0.1:{port}"), start=False)
        result = sup.cli("run", timeout=30)
    assert result.returncode == 1
    assert f"cannot listen on 127.0.0.1:{port}" in result.stderr and "Traceback" not in result.stderr
    wait_until(lambda: not (tmp_path / ".supervise" / "control.sock").exists(), timeout=5)


def test_missing_command_behind_a_listen_socket_says_so(supervisor):
    sup = supervisor(f"""
    [apps.nope]
    command = "no-such-program-xyz"
    listen = ["127.0.0.1:{free_port()}"]
    """)
    inst = wait_until(lambda: (i := sup.status()["nope:0"])["last_exit"] and i)
    assert "command not found: 'no-such-program-xyz'" in inst["last_exit"]["error"]


def test_python_launcher_where_there_is_no_bash(tmp_path):
    import sys
    from pathlib import Path

    from supervise.runtime import process
    from supervise.runtime.listeners import Listeners, environment

    listeners = Listeners()
    listeners._bash = None  # as on a system without bash
    address = f"127.0.0.1:{free_port()}"
    listeners.bind(address)
    try:
        fds = listeners.fds((address,))
        code = ("import os; "
                "print(os.getpid(), os.environ['LISTEN_PID'], os.environ['LISTEN_FDS'], os.get_inheritable(3))")
        spec = process.SpawnSpec(argv=(sys.executable, "-c", code), cwd=tmp_path,
                                 env={**os.environ, **environment((address,))}, output=tmp_path / "out.log",
                                 name="t:0", pass_fds=fds, launcher=listeners.launcher(fds))
        child = process.spawn(spec)
        _, status = os.waitpid(child.pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        pid, listen_pid, count, _ = Path(tmp_path / "out.log").read_text().split()
        assert pid == listen_pid == str(child.pid) and count == "1"
        if child.pidfd is not None:
            os.close(child.pidfd)
    finally:
        listeners.close()
