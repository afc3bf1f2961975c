"""Per-instance sd_notify sockets: real datagrams from real processes into a real asyncio loop.

The loop runs in a thread of its own (NotifySockets is only touched there); the test thread
sends from child processes and waits on what arrives with wait_until.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import stat
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers import CI_ENV, wait_until

from supervise.runtime.notify import MAX_DATAGRAM, NotifyMessage, NotifySockets, parse_message

NOBODY = 65534

# The sender, run as its own process: each argument is one datagram, in hex. Connects the way
# gunicorn's systemd.sd_notify does ("@" -> "\0", connect, send); exits 3 on ECONNREFUSED,
# 4 on EACCES, so that tests can tell a refused sender from a broken one.
SENDER = """
import socket, sys
address = sys.argv[1]
if address.startswith("@"):
    address = "\\0" + address[1:]
sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
try:
    sock.connect(address)
    for payload in sys.argv[2:]:
        sock.send(bytes.fromhex(payload))
except ConnectionRefusedError:
    sys.exit(3)
except PermissionError:
    sys.exit(4)
"""


class Recorder:
    def __init__(self) -> None:
        self.records: list[tuple[str, str, dict[str, Any]]] = []

    def info(self, event: str, **fields: Any) -> None:
        self.records.append(("info", event, fields))

    def warning(self, event: str, **fields: Any) -> None:
        self.records.append(("warning", event, fields))

    def error(self, event: str, **fields: Any) -> None:
        self.records.append(("error", event, fields))


class Harness:
    """A NotifySockets on an event loop running in its own thread, and what reached on_message."""

    def __init__(self, directory: Path) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="notify-loop", daemon=True)
        self.thread.start()
        self.messages: list[tuple[int, NotifyMessage]] = []
        self.log = Recorder()
        self.sockets: NotifySockets = self.call(NotifySockets, self.loop, directory, self._record, self.log)

    def _record(self, spawn_id: int, message: NotifyMessage) -> None:
        self.messages.append((spawn_id, message))

    def call(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """``fn(*args, **kwargs)`` on the loop's thread (NotifySockets belongs to it); its result."""
        async def run() -> Any:
            return fn(*args, **kwargs)
        return asyncio.run_coroutine_threadsafe(run(), self.loop).result(10)

    def wait_messages(self, count: int) -> list[tuple[int, NotifyMessage]]:
        wait_until(lambda: len(self.messages) >= count, message=f"{count} notify messages (got {self.messages})")
        return list(self.messages)

    def stop(self) -> None:
        if self.loop.is_closed():
            return
        self.call(self.sockets.close_all, unlink=True)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


@pytest.fixture
def harness(tmp_path: Path) -> Iterator[Callable[..., Harness]]:
    made: list[Harness] = []

    def make(directory: Path | None = None) -> Harness:
        made.append(Harness(directory or tmp_path / "notify"))
        return made[-1]

    yield make
    for h in made:
        h.stop()


def send(address: str, *payloads: bytes, user: int | None = None, python: str = sys.executable,
         expect: int = 0) -> int:
    """Send each payload as one datagram from a child process (as `user`); returns its pid."""
    kwargs: dict[str, Any] = {}
    if user is not None:
        kwargs = {"user": user, "group": user, "extra_groups": [], "cwd": "/"}
    proc = subprocess.Popen([python, "-I", "-S", "-c", SENDER, address, *(p.hex() for p in payloads)],
                            stderr=subprocess.PIPE, text=True, **kwargs)
    _, stderr = proc.communicate(timeout=30)
    assert proc.returncode == expect, f"sender exited {proc.returncode}, expected {expect}: {stderr}"
    return proc.pid


def open_fds() -> set[int]:
    return {int(name) for name in os.listdir("/proc/self/fd")}


# --- the protocol -------------------------------------------------------------------------------


def test_ready_status_watchdog_from_a_child_process(harness):
    h = harness()
    address = h.call(h.sockets.open, 7, "web:0")
    assert address == str(h.sockets.directory / "web:0.7.sock")
    pid = send(address, b"READY=1", b"STATUS=listening on :8000", b"WATCHDOG=1", b"WATCHDOG=1")
    messages = h.wait_messages(4)
    assert messages == [
        (7, NotifyMessage(ready=True, sender_pid=pid)),
        (7, NotifyMessage(status="listening on :8000", sender_pid=pid)),
        (7, NotifyMessage(watchdog=True, sender_pid=pid)),
        (7, NotifyMessage(watchdog=True, sender_pid=pid)),
    ]
    assert h.sockets.counters.accepted == 4


def test_multi_line_datagram_is_one_message(harness):
    h = harness()
    address = h.call(h.sockets.open, 1, "web:0")
    pid = send(address, b"READY=1\nSTATUS=first\nSTATUS=3 workers\nMAINPID=4242\nERRNO=5\n"
                              b"STOPPING=1\nRELOADING=1\nMONOTONIC_USEC=123\nX_CUSTOM=yes\n\n")
    [(spawn_id, message)] = h.wait_messages(1)
    assert spawn_id == 1
    assert message == NotifyMessage(ready=True, status="3 workers", watchdog=False, stopping=True, reloading=True,
                                    mainpid=4242, errno=5, sender_pid=pid)


def test_garbage_and_oversize_are_counted_never_raised(harness):
    h = harness()
    address = h.call(h.sockets.open, 1, "web:0")
    garbage = [
        b"\xff\xfe\x00\x01",                 # not text
        b"READY=1\0STATUS=hidden",           # embedded NUL: systemd drops these too
        b"\xc3\x28READY=1",                  # bad UTF-8
        b"",                                 # empty datagram
        b"no equals sign at all",            # nothing to act on
        b"READY=0\nWATCHDOG=trigger\nMAINPID=-3\nMAINPID=abc\nERRNO=\xd9\xa3".decode("utf-8", "replace").encode(),
        b"BARRIER=1",
        b"STATUS=" + b"x" * MAX_DATAGRAM,    # over the limit: dropped whole, not truncated
    ]
    # The last datagram proves every earlier one was read (a socket is FIFO).
    send(address, *garbage, b"STATUS=" + b"y" * (MAX_DATAGRAM - 7), b"READY=1")
    messages = h.wait_messages(2)
    assert [m.status for _, m in messages] == ["y" * (MAX_DATAGRAM - 7), None]
    assert messages[1][1].ready
    counters = h.sockets.counters.as_json()
    assert counters == {"accepted": 2, "rejected": 0, "malformed": 3, "oversize": 1, "ignored": 4,
                        "internal_errors": 0}, counters


def test_parse_message_values():
    assert parse_message(b"MAINPID=0") == NotifyMessage()  # no such pid: ignored
    assert parse_message(b"ERRNO=0").errno == 0
    assert parse_message(b"STATUS=") == NotifyMessage(status="")  # clears the status, as in systemd
    assert parse_message(b"STATUS=a=b").status == "a=b"
    assert parse_message(b"READY=1\nREADY=0") == NotifyMessage()  # the last one wins
    assert parse_message(b"MAINPID=" + b"9" * 40) == NotifyMessage()
    assert parse_message(b"\x00") is None
    assert parse_message(b"ready=1").empty  # keys are case-sensitive


def test_a_bug_in_on_message_costs_one_message(harness):
    h = harness()
    seen: list[NotifyMessage] = []

    def on_message(spawn_id: int, message: NotifyMessage) -> None:
        if message.status == "boom":
            raise RuntimeError("bug")
        seen.append(message)

    h.sockets.on_message = on_message
    address = h.call(h.sockets.open, 1, "web:0")
    send(address, b"STATUS=boom", b"READY=1")
    wait_until(lambda: seen, message="the message after the failing one")
    assert seen[0].ready
    assert h.sockets.counters.internal_errors == 1 and h.sockets.counters.accepted == 1
    assert [r[0] for r in h.log.records] == ["error"]


SYSTEMD_NOTIFY = shutil.which("systemd-notify")


def check_systemd_notify_ready_and_barrier(h: Harness, path: str) -> None:
    address = h.call(h.sockets.open, 3, "job:0")
    fds = open_fds()
    # systemd-notify (as root) reports its *parent*'s pid in SCM_CREDENTIALS, as if the main
    # process had sent READY=1, then sends BARRIER=1 with a pipe and waits until the receiver
    # closes it. A shell in between plays the worker's main process; "; exit" keeps the shell
    # from exec'ing systemd-notify in its place.
    proc = subprocess.Popen(["/bin/sh", "-c", f"{path} --ready --status='booted ok'; exit $?"],
                            env=dict(os.environ, NOTIFY_SOCKET=address))
    assert proc.wait(timeout=30) == 0, "systemd-notify failed (or its barrier was never released)"
    [(spawn_id, message)] = h.wait_messages(1)
    assert spawn_id == 3 and message.ready and message.status == "booted ok"
    if os.geteuid() == 0:
        assert message.sender_pid == proc.pid
    else:
        assert message.sender_pid > 0
    wait_until(lambda: h.sockets.counters.ignored == 1, message="BARRIER=1 read and counted")
    assert open_fds() == fds, "the barrier's descriptor was kept"


if SYSTEMD_NOTIFY is not None:  # absent, there is nothing of its own to check: not a skip
    def test_systemd_notify_ready_and_barrier(harness):
        check_systemd_notify_ready_and_barrier(harness(), SYSTEMD_NOTIFY)


# --- who may send ----------------------------------------------------------------------------------


def test_accept_pid_rejects_senders_outside_the_instance(harness):
    h = harness()
    asked: list[tuple[int, int]] = []
    me = os.getpid()

    def accept_pid(spawn_id: int, pid: int) -> bool:
        asked.append((spawn_id, pid))
        return pid != me  # here "outside the instance" is the test process itself

    h.sockets.accept_pid = accept_pid
    address = h.call(h.sockets.open, 9, "web:2")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as stranger:
        stranger.sendto(b"READY=1", address)
        stranger.sendto(b"WATCHDOG=1", address)
    pid = send(address, b"STATUS=from the instance")
    [(_, message)] = h.wait_messages(1)
    assert message.status == "from the instance" and message.sender_pid == pid
    assert asked == [(9, me), (9, me), (9, pid)]
    assert h.sockets.counters.rejected == 2 and h.sockets.counters.accepted == 1
    warnings = [r for r in h.log.records if r[0] == "warning"]
    assert len(warnings) == 1 and "web:2" in warnings[0][1] and warnings[0][2] == {"pid": me}


# --- where the sockets are ---------------------------------------------------------------------------


def test_directory_mode_and_socket_mode(harness, tmp_path):
    directory = tmp_path / "state" / "notify"
    h = harness(directory)
    assert stat.S_IMODE(directory.stat().st_mode) == 0o711
    address = h.call(h.sockets.open, 1, "odd name/../x")
    path = Path(address)
    assert path.parent == directory and path.name == "odd_name_.._x.1.sock"
    info = path.lstat()
    assert stat.S_ISSOCK(info.st_mode) and stat.S_IMODE(info.st_mode) == 0o600
    assert sorted(p.name for p in directory.iterdir()) == [path.name], "no temporary file left"


def test_long_directory_falls_back_to_an_abstract_socket(harness, tmp_path):
    directory = tmp_path / ("d" * 110)
    h = harness(directory)
    address = h.call(h.sockets.open, 5, "web:0")
    assert address.startswith("@supervise-") and len(address) <= 108
    assert list(directory.iterdir()) == []
    pid = send(address, b"READY=1")
    assert h.wait_messages(1) == [(5, NotifyMessage(ready=True, sender_pid=pid))]
    h.call(h.sockets.close, 5)
    send(address, b"READY=1", expect=3)  # closed: the name is free, nobody listens


def test_owner_can_connect_others_cannot(harness):
    if os.geteuid() != 0:
        message = "chown to another user needs root"
        if os.environ.get(CI_ENV) == "1":
            pytest.fail(message + f" ({CI_ENV}=1: run the tests as root)")
        pytest.skip(message)
    python = _python_for(NOBODY)
    # Not under tmp_path: pytest's tmp directories are 0700, which no other user can cross.
    # Every directory above the sockets must let the app's user through (x), like a state dir would.
    directory = Path(tempfile.mkdtemp(prefix="supervise-notify-")) / "notify"
    os.chmod(directory.parent, 0o711)
    try:
        h = harness(directory)
        owned = h.call(h.sockets.open, 1, "web:0", owner_uid=NOBODY, owner_gid=NOBODY)
        info = os.lstat(owned)
        assert (info.st_uid, info.st_gid, stat.S_IMODE(info.st_mode)) == (NOBODY, NOBODY, 0o600)
        send(owned, b"READY=1", user=NOBODY, python=python)
        [(spawn_id, message)] = h.wait_messages(1)
        assert spawn_id == 1 and message.ready and message.sender_pid > 0
        # A socket the app does not own: connect needs write permission, so it is refused.
        not_owned = h.call(h.sockets.open, 2, "web:1")
        send(not_owned, b"READY=1", user=NOBODY, python=python, expect=4)
        # Adoption keeps the owner.
        h.call(h.sockets.close_all, unlink=False)
        h.call(h.sockets.reopen, 1, "web:0", owned, owner_uid=NOBODY, owner_gid=NOBODY)
        assert os.lstat(owned).st_uid == NOBODY
        send(owned, b"STATUS=again", user=NOBODY, python=python)
        assert h.wait_messages(2)[1][1].status == "again"
    finally:
        shutil.rmtree(directory.parent, ignore_errors=True)


def _python_for(uid: int) -> str:
    """An interpreter `uid` may run (ours may live under root's 0700 home)."""
    for candidate in (sys.executable, shutil.which("python3"), "/usr/bin/python3"):
        if candidate is None:
            continue
        try:
            result = subprocess.run([candidate, "-I", "-S", "-c", "pass"], user=uid, group=uid, extra_groups=[],
                                    cwd="/", capture_output=True)
        except PermissionError:  # exec refused: the interpreter is out of uid's reach
            continue
        if result.returncode == 0:
            return candidate
    pytest.fail(f"no python3 that uid {uid} can run: install one outside 0700 directories")
    raise AssertionError("unreachable")


# --- lifetimes ---------------------------------------------------------------------------------------


def test_reopen_after_daemon_restart(harness, tmp_path):
    directory = tmp_path / "notify"
    old = harness(directory)
    address = old.call(old.sockets.open, 4, "web:1")
    send(address, b"READY=1")
    old.wait_messages(1)
    old.call(old.sockets.close_all, unlink=False)  # the daemon is gone; the worker's env still names the path
    old.stop()
    assert Path(address).exists()
    send(address, b"WATCHDOG=1", expect=3)  # nobody listens: the sender is refused, not blocked
    new = harness(directory)
    assert new.call(new.sockets.reopen, 4, "web:1", address) == address
    pid = send(address, b"WATCHDOG=1")
    assert new.wait_messages(1) == [(4, NotifyMessage(watchdog=True, sender_pid=pid))]
    new.call(new.sockets.close, 4)
    assert not Path(address).exists()


def test_reopen_abstract(harness, tmp_path):
    h = harness(tmp_path / ("d" * 110))
    address = h.call(h.sockets.open, 1, "web:0")
    h.call(h.sockets.close_all, unlink=False)
    assert h.call(h.sockets.reopen, 1, "web:0", address) == address
    send(address, b"READY=1")
    assert h.wait_messages(1)[0][1].ready


def test_reopen_refuses_what_is_not_its_socket(harness, tmp_path):
    h = harness(tmp_path / "notify")
    elsewhere = tmp_path / "precious.sock"
    elsewhere.write_text("keep me")
    with pytest.raises(ValueError):
        h.call(h.sockets.reopen, 1, "web:0", str(elsewhere))
    with pytest.raises(ValueError):
        h.call(h.sockets.reopen, 1, "web:0", str(tmp_path / "notify" / ".." / "precious.sock"))
    impostor = tmp_path / "notify" / "web:0.1.sock"
    impostor.write_text("not a socket")
    with pytest.raises(ValueError):
        h.call(h.sockets.reopen, 1, "web:0", str(impostor))
    with pytest.raises(ValueError):
        h.call(h.sockets.reopen, 1, "web:0", "relative.sock")
    assert elsewhere.read_text() == "keep me" and impostor.read_text() == "not a socket"
    assert 1 not in h.sockets


def test_second_open_replaces_the_first(harness):
    h = harness()
    first = h.call(h.sockets.open, 1, "web:0")
    fds = open_fds()
    second = h.call(h.sockets.open, 1, "web:0-renamed")
    assert open_fds() == fds, "the first socket was closed"
    assert not Path(first).exists() and Path(second).exists()
    assert h.sockets.address(1) == second
    send(first, b"READY=1", expect=1)  # gone: FileNotFoundError
    send(second, b"READY=1")
    assert h.wait_messages(1)[0][0] == 1


def test_no_descriptor_or_file_left_after_close(harness, tmp_path):
    directory = tmp_path / "notify"
    h = harness(directory)
    fds = open_fds()
    addresses = [h.call(h.sockets.open, i, f"web:{i}") for i in range(20)]
    assert len(open_fds()) == len(fds) + 20
    send(addresses[0], b"READY=1")
    h.wait_messages(1)
    for i in range(0, 20, 2):
        h.call(h.sockets.close, i)
    h.call(h.sockets.close, 999)  # unknown: nothing
    h.call(h.sockets.close_all, unlink=True)
    assert open_fds() == fds
    assert list(directory.iterdir()) == []


def test_close_leaves_a_file_it_no_longer_owns(harness, tmp_path):
    directory = tmp_path / "notify"
    h = harness(directory)
    address = h.call(h.sockets.open, 1, "web:0")
    other = harness(directory)  # e.g. a successor daemon that re-bound the same path meanwhile
    other.call(other.sockets.reopen, 1, "web:0", address)
    h.call(h.sockets.close, 1)
    assert Path(address).exists(), "unlinked another socket's file"
    send(address, b"READY=1")
    assert other.wait_messages(1)[0][1].ready and h.messages == []
