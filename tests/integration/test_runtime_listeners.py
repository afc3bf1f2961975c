"""Listeners against real sockets: binding, options, matching an address among a live worker's fds, cleanup."""

from __future__ import annotations

import grp
import os
import pwd
import socket
import stat
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import CI_ENV, external_tool, free_port

from supervise.config.model import ListenOptions
from supervise.runtime.listeners import DEFAULT, ListenError, Listeners

PAUSE = "import signal\nwhile True: signal.pause()"


@pytest.fixture
def listeners() -> Iterator[Listeners]:
    made = Listeners()
    yield made
    made.close()


def open_fds() -> set[str]:
    return set(os.listdir("/proc/self/fd"))


def connect(address: str) -> socket.socket:
    """A client connected to `address` (as written in a config); it waits in the accept queue."""
    if address.startswith("unix:"):
        client = socket.socket(socket.AF_UNIX)
        path = address[5:]
        client.connect("\0" + path[1:] if path.startswith("@") else path)
    else:
        host, _, port = address.rpartition(":")
        client = socket.create_connection((host.strip("[]"), int(port)), timeout=10)
    return client


def test_a_unix_socket_replaces_a_stale_file_and_close_removes_it(tmp_path: Path, listeners: Listeners) -> None:
    path = tmp_path / "app.sock"
    path.write_text("left by an earlier daemon")
    listeners.bind(f"unix:{path}")
    connect(f"unix:{path}").close()
    assert listeners.close_unused(set()) == [f"unix:{path}"]
    assert not path.exists()


def test_close_without_unlink_leaves_the_file_to_the_workers(tmp_path: Path, listeners: Listeners) -> None:
    path = tmp_path / "app.sock"
    listeners.bind(f"unix:{path}")
    listeners.close(unlink=False)
    assert path.exists()


def test_a_failed_bind_says_why_and_leaks_no_socket(listeners: Listeners) -> None:
    address = f"127.0.0.1:{free_port()}"
    listeners.bind(address)
    other = Listeners()
    before = open_fds()
    for _ in range(3):  # a reload retried against a port in use
        with pytest.raises(ListenError, match=f"cannot listen on {address}: Address already in use"):
            other.bind(address)
    assert open_fds() == before


def test_an_address_that_does_not_parse_is_a_listen_error(listeners: Listeners) -> None:
    with pytest.raises(ListenError, match="cannot listen on nowhere: expected an address"):
        listeners.bind("nowhere")


@pytest.mark.parametrize("kind", ["tcp", "tcp6", "abstract", "path"])
def test_take_over_finds_the_very_socket_in_a_live_worker(kind: str, tmp_path: Path) -> None:
    if kind == "tcp6" and not socket.has_ipv6:
        pytest.skip("no IPv6")
    address = {"tcp": f"127.0.0.1:{free_port()}", "tcp6": f"[::1]:{free_port()}",
               "abstract": f"unix:@supervise-test-{uuid.uuid4().hex}", "path": f"unix:{tmp_path / 'a.sock'}"}[kind]
    first = Listeners()
    try:
        first.bind(address)
    except ListenError as error:
        first.close()
        if kind != "tcp6":
            raise
        pytest.skip(str(error))  # no IPv6 loopback in this container: only that kind can be missing
    # A worker holding the socket (at some fd), and the daemon that bound it gone:
    [fd] = first.fds((address,))
    worker = subprocess.Popen([sys.executable, "-c", PAUSE], pass_fds=(fd,))
    first.close(unlink=False)
    pidfd = os.pidfd_open(worker.pid)
    second = Listeners()
    try:
        waiting = connect(address)  # queued on the worker's socket before the take-over
        # An address the worker does not hold is left to the caller to bind afresh.
        assert second.take_over(pidfd, worker.pid, (address, "127.0.0.1:1")) == [address]
        [taken] = second.fds((address,))
        with socket.socket(fileno=os.dup(taken)) as sock:
            sock.settimeout(10)
            accepted, _ = sock.accept()  # the same accept queue: the very socket
            accepted.close()
        waiting.close()
    finally:
        second.close()
        worker.kill()
        worker.wait()
        os.close(pidfd)


# -- options: TCP_NODELAY, backlog, SO_REUSEPORT, a unix socket file's mode and owner --------------

NOBODY, NOGROUP = "nobody", "nogroup"


def as_root(why: str) -> None:
    """Skip (fail under .ci/run, which runs as root) when these tests cannot chown."""
    if os.geteuid() == 0:
        return
    message = f"not root: {why}"
    if os.environ.get(CI_ENV) == "1":
        pytest.fail(message)
    pytest.skip(message)


def listening(listeners: Listeners, address: str) -> socket.socket:
    """The daemon's socket for `address`, as a socket object of its own (a dup: closing it is harmless)."""
    [fd] = listeners.fds((address,))
    return socket.socket(fileno=os.dup(fd))


def nodelay(sock: socket.socket) -> int:
    return sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)


def reuseport(sock: socket.socket) -> int:
    return sock.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT)


def backlog_of(port: int) -> int:
    """The listening socket's accept-queue limit, as the kernel reports it (ss's Send-Q)."""
    ss = external_tool("ss", why="the kernel's backlog of a TCP listener is read with ss (iproute2)")
    out = subprocess.run([ss, "-ltnH", f"sport = :{port}"], capture_output=True, text=True, check=True).stdout
    [line] = out.splitlines()
    return int(line.split()[2])


def capped(backlog: int) -> int:
    return min(backlog, int(Path("/proc/sys/net/core/somaxconn").read_text()))


def mode_of(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def umask_077() -> Iterator[None]:
    """A daemon started with a strict umask: the socket's mode must not depend on it."""
    old = os.umask(0o077)
    yield
    os.umask(old)


def test_nodelay_is_on_by_default_and_off_when_asked(listeners: Listeners) -> None:
    on, off = f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"
    listeners.bind(on)
    listeners.bind(off, ListenOptions(nodelay=False))
    with listening(listeners, on) as a, listening(listeners, off) as b:
        assert nodelay(a) and not nodelay(b)


WORKER_ACCEPTS = """
import socket, sys
sock = socket.socket(fileno=int(sys.argv[1]))
conn, _ = sock.accept()
conn.sendall(b"%d" % conn.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
conn.close()
"""


@pytest.mark.parametrize("wanted", [True, False])
def test_a_workers_accepted_connections_inherit_nodelay(wanted: bool, listeners: Listeners) -> None:
    """Linux copies TCP_NODELAY from the listener to what accept() returns: no server needs to set it."""
    address = f"127.0.0.1:{free_port()}"
    listeners.bind(address, ListenOptions(nodelay=wanted))
    [fd] = listeners.fds((address,))
    worker = subprocess.Popen([sys.executable, "-c", WORKER_ACCEPTS, str(fd)], pass_fds=(fd,))
    try:
        with connect(address) as client:
            assert client.makefile("rb").read() == (b"1" if wanted else b"0")
        assert worker.wait(10) == 0
    finally:
        worker.kill()
        worker.wait()


@pytest.mark.parametrize(("options", "backlog"), [(DEFAULT, 1024), (ListenOptions(backlog=7), 7)])
def test_the_backlog_is_the_accept_queue_of_a_tcp_listener(options: ListenOptions, backlog: int,
                                                            listeners: Listeners) -> None:
    port = free_port()
    listeners.bind(f"127.0.0.1:{port}", options)
    assert backlog_of(port) == capped(backlog)


def fill_queue(address: str) -> list[socket.socket]:
    """Connect to a unix listener nobody accepts on until its queue is full: the clients that got in.
    (A unix connect() fails at once with EAGAIN on a full queue, where TCP would retry for seconds.)"""
    path = address.removeprefix("unix:")
    waiting: list[socket.socket] = []
    while len(waiting) < 10_000:
        client = socket.socket(socket.AF_UNIX)
        client.setblocking(False)
        try:
            client.connect(path)
        except BlockingIOError:
            client.close()
            return waiting
        waiting.append(client)
    raise AssertionError("the queue never filled")


def test_the_backlog_is_how_many_clients_wait_on_a_unix_listener(tmp_path: Path, listeners: Listeners) -> None:
    address = f"unix:{tmp_path / 'q.sock'}"
    listeners.bind(address, ListenOptions(backlog=4))
    waiting = fill_queue(address)
    try:
        assert len(waiting) == 4 + 1  # Linux lets in one more than the backlog
    finally:
        for client in waiting:
            client.close()


def test_reuseport_is_off_by_default(listeners: Listeners) -> None:
    address = f"127.0.0.1:{free_port()}"
    listeners.bind(address)
    with listening(listeners, address) as sock:
        assert not reuseport(sock)
    with pytest.raises(ListenError, match="Address already in use"):
        Listeners().bind(address, ListenOptions(reuseport=True))  # it takes both sockets asking


def test_reuseport_lets_two_listeners_bind_one_port(listeners: Listeners) -> None:
    address = f"127.0.0.1:{free_port()}"
    other = Listeners()
    try:
        listeners.bind(address, ListenOptions(reuseport=True))
        other.bind(address, ListenOptions(reuseport=True))
        with listening(listeners, address) as a, listening(other, address) as b:
            assert reuseport(a) and reuseport(b) and a.getsockname() == b.getsockname()
    finally:
        other.close()


@pytest.mark.usefixtures("umask_077")
@pytest.mark.parametrize(("mode", "expected"), [(None, 0o666), (0o660, 0o660), (0o600, 0o600), (0o777, 0o777)])
def test_a_unix_socket_file_gets_its_mode_whatever_the_umask(mode: int | None, expected: int, tmp_path: Path,
                                                             listeners: Listeners) -> None:
    path = tmp_path / "app.sock"
    listeners.bind(f"unix:{path}", ListenOptions(mode=mode))
    assert mode_of(path) == expected
    connect(f"unix:{path}").close()


@pytest.mark.parametrize(("owner", "group", "expected"), [
    (NOBODY, None, (NOBODY, NOGROUP)),  # as systemd: the owner's primary group
    (None, NOGROUP, ("root", NOGROUP)),
    ("65534", "65534", (NOBODY, NOGROUP)),  # numbers as text
    (NOBODY, "root", (NOBODY, "root")),
])
def test_a_unix_socket_file_gets_its_owner_and_group(owner: str | None, group: str | None,
                                                     expected: tuple[str, str], tmp_path: Path,
                                                     listeners: Listeners) -> None:
    as_root("only root can give a socket file to another user")
    path = tmp_path / "app.sock"
    listeners.bind(f"unix:{path}", ListenOptions(mode=0o660, owner=owner, group=group))
    info = path.stat()
    assert (pwd.getpwuid(info.st_uid).pw_name, grp.getgrgid(info.st_gid).gr_name) == expected
    assert mode_of(path) == 0o660


@pytest.mark.parametrize(("options", "message"), [
    (ListenOptions(owner="no-such-user-xyz"), "owner 'no-such-user-xyz': no such user"),
    (ListenOptions(group="no-such-group-xyz"), "group 'no-such-group-xyz': no such group"),
])
def test_an_unknown_owner_or_group_is_a_clear_error_and_leaves_nothing(options: ListenOptions, message: str,
                                                                       tmp_path: Path, listeners: Listeners) -> None:
    path = tmp_path / "app.sock"
    before = open_fds()
    with pytest.raises(ListenError, match=f"^cannot listen on unix:{path}: {message}$"):
        listeners.bind(f"unix:{path}", options)
    assert not path.exists() and open_fds() == before


def test_a_refused_chown_is_a_clear_error_and_leaves_no_file() -> None:
    as_root("the test becomes nobody for a moment, which only root can undo")
    with tempfile.TemporaryDirectory() as where:  # in /tmp: pytest's tmp_path is root's alone
        os.chmod(where, 0o777)
        refused_chown(Path(where) / "app.sock")


def refused_chown(path: Path) -> None:
    # A daemon that is not root, giving the file to root: the effective uid alone changes (and
    # with it CAP_CHOWN goes), the real one stays 0 so that the test can come back.
    os.seteuid(pwd.getpwnam(NOBODY).pw_uid)
    try:
        with pytest.raises(ListenError) as refused:
            Listeners().bind(f"unix:{path}", ListenOptions(owner="root"))
    finally:
        os.seteuid(0)
    assert str(refused.value) == (f"cannot listen on unix:{path}: cannot give the socket file to uid 0, gid 0: "
                                  "Operation not permitted (only root may give a file away)")
    assert not path.exists()


def test_a_reload_applies_new_tcp_options_to_the_live_socket(listeners: Listeners) -> None:
    port = free_port()
    address = f"127.0.0.1:{port}"
    listeners.bind(address)
    before = listeners.fds((address,))
    assert listeners.bind(address, ListenOptions(nodelay=False, backlog=7)) == []
    assert listeners.fds((address,)) == before  # the same socket: its queue and clients kept
    with listening(listeners, address) as sock:
        assert not nodelay(sock)
    assert backlog_of(port) == 7
    notes = listeners.bind(address, ListenOptions(reuseport=True))
    assert notes == [f"{address}: reuseport stays off: a bound socket cannot change it; "
                     "remove the address from the config, reload, then add it back"]
    with listening(listeners, address) as sock:
        assert nodelay(sock) and not reuseport(sock)
    assert backlog_of(port) == capped(1024)


def test_a_reload_applies_a_new_mode_and_owner_to_the_live_unix_socket(tmp_path: Path, listeners: Listeners) -> None:
    path = tmp_path / "app.sock"
    address = f"unix:{path}"
    listeners.bind(address)
    waiting = connect(address)  # queued before the change, still there after it
    assert listeners.bind(address, ListenOptions(mode=0o600, backlog=2)) == []
    assert mode_of(path) == 0o600
    more = fill_queue(address)
    try:
        assert len(more) == 2  # 1 waiting already + 2 = backlog + 1
    finally:
        for client in [waiting, *more]:
            client.close()
    if os.geteuid() == 0:
        listeners.bind(address, ListenOptions(owner=NOBODY))
        assert (path.stat().st_uid, mode_of(path)) == (pwd.getpwnam(NOBODY).pw_uid, 0o666)


def test_a_reload_refused_leaves_the_live_socket_as_it_was(tmp_path: Path, listeners: Listeners) -> None:
    path = tmp_path / "app.sock"
    address = f"unix:{path}"
    listeners.bind(address, ListenOptions(mode=0o600))
    bad = ListenOptions(mode=0o666, owner="no-such-user-xyz")
    for _ in range(2):  # not recorded as applied: asked again, refused again
        with pytest.raises(ListenError, match="no such user"):
            listeners.bind(address, bad)
    assert mode_of(path) == 0o600


@pytest.mark.parametrize("kind", ["tcp", "path"])
def test_options_are_applied_to_a_socket_taken_over(kind: str, tmp_path: Path) -> None:
    address = {"tcp": f"127.0.0.1:{free_port()}", "path": f"unix:{tmp_path / 'a.sock'}"}[kind]
    first = Listeners()
    first.bind(address, ListenOptions(nodelay=False, mode=0o600))  # as an older daemon left it
    [fd] = first.fds((address,))
    worker = subprocess.Popen([sys.executable, "-c", PAUSE], pass_fds=(fd,))
    first.close(unlink=False)
    pidfd = os.pidfd_open(worker.pid)
    second = Listeners()
    try:
        assert second.take_over(pidfd, worker.pid, (address,)) == [address]
        assert second.bind(address) == []  # as the daemon does for every address after taking over
        if kind == "tcp":
            with listening(second, address) as sock:
                assert nodelay(sock)
        else:
            assert mode_of(tmp_path / "a.sock") == 0o666
    finally:
        second.close()
        worker.kill()
        worker.wait()
        os.close(pidfd)
