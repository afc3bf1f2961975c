"""`listen`: sockets bound once by the daemon, handed to every instance, outliving them all."""

from __future__ import annotations

import json
import os
import select
import signal
import socket
import subprocess
import sys

from helpers import external_tool, free_port, wait_until


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


def test_a_workers_connections_have_tcp_nodelay_without_asking(supervisor):
    """TCP_NODELAY is on by default on the daemon's listener, and Linux gives it to every socket a
    worker accepts: a server that writes headers and body apart is not held up by Nagle's algorithm."""
    port = free_port()
    sup = supervisor(f"""
    [apps.probe]
    command = ["{{python}}", "-c", '''
import socket
sock = socket.socket(fileno=3)
while True:
    conn, _ = sock.accept()
    conn.sendall(b"%d" % conn.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
    conn.close()
''']
    listen = ["127.0.0.1:{port}"]
    """)
    for _ in range(3):  # waits in the accept queue until the worker is up: nothing to wait for first
        with socket.create_connection(("127.0.0.1", port), timeout=10) as client:
            assert client.makefile("rb").read() == b"1"
    assert sup.status()["probe:0"]["restarts"] == 0


SERVES_BOTH = """
import socket, threading
def serve(fd):
    sock = socket.socket(fileno=fd)
    while True:
        conn, _ = sock.accept()
        tcp = conn.family != socket.AF_UNIX
        conn.sendall(b"%d" % conn.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) if tcp else b"unix")
        conn.close()
threading.Thread(target=serve, args=(4,), daemon=True).start()
serve(3)
"""


def options_config(path, port: int, mode: str, nodelay: str) -> str:
    return f"""
    [apps.both]
    command = ["{{python}}", "-c", '''{SERVES_BOTH}''']
    listen = [{{ address = "unix:{path}", mode = "{mode}" }},
              {{ address = "127.0.0.1:{port}", nodelay = {nodelay}, backlog = 7 }}]
    stop_timeout = "2s"
    """


def answer(address) -> bytes:
    family = socket.AF_UNIX if isinstance(address, str) else socket.AF_INET
    with socket.socket(family) as s:
        s.settimeout(10)
        s.connect(address)
        return s.makefile("rb").read()


def test_listen_tables_set_up_the_sockets_and_a_reload_changes_them_live(supervisor, tmp_path):
    path, port = tmp_path / "both.sock", free_port()
    sup = supervisor(options_config(path, port, "0600", "false"))
    assert answer(str(path)) == b"unix" and answer(("127.0.0.1", port)) == b"0"
    assert path.stat().st_mode & 0o777 == 0o600
    ss = external_tool("ss", why="the kernel's backlog of a TCP listener is read with ss (iproute2)")
    ss = subprocess.run([ss, "-ltnH", f"sport = :{port}"], capture_output=True, text=True).stdout
    assert ss.split()[2] == "7", ss  # the backlog
    inode = path.stat().st_ino
    sup.config.write_text(options_config(path, port, "0660", "true").replace("{python}", sys.executable))
    assert sup.cli("reload").returncode == 0
    assert path.stat().st_ino == inode and path.stat().st_mode & 0o777 == 0o660  # the same socket, changed
    wait_until(lambda: answer(("127.0.0.1", port)) == b"1", message="connections accepted after it have nodelay")
