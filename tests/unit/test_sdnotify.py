"""sd_notify client: the tests play systemd with a real AF_UNIX datagram socket."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import struct
import time
import uuid
from pathlib import Path

import pytest

from supervise.runtime.sdnotify import ENVIRONMENT, Notifier, unset_environment

RECV_TIMEOUT = 2.0  # a receive that waits this long has failed; a passing one returns at once


class Log:
    """Collects warnings the way structlog's and logging's loggers would receive them."""

    def __init__(self) -> None:
        self.warnings: list[str] = []

    def warning(self, event: str) -> None:
        self.warnings.append(event)


@pytest.fixture
def systemd(tmp_path: Path):
    """A bound receiving socket standing in for systemd's notification socket."""
    path = tmp_path / "notify"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.settimeout(RECV_TIMEOUT)
    yield sock, str(path)
    sock.close()


def receive(sock: socket.socket) -> str:
    return sock.recv(65536).decode()


def nothing_waiting(sock: socket.socket) -> bool:
    """True if no message is queued; else takes one off the queue."""
    sock.setblocking(False)
    try:
        sock.recv(65536)
    except BlockingIOError:
        return True
    finally:
        sock.settimeout(RECV_TIMEOUT)
    return False


@contextlib.contextmanager
def must_not_block(seconds: float):
    """Fail, instead of hanging the suite, if the body is stuck in a blocking call."""
    def blocked(signum, frame):
        raise AssertionError(f"still blocked after {seconds}s")
    previous = signal.signal(signal.SIGALRM, blocked)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def notifier_for(address: str, log: Log | None = None, **env: str) -> Notifier:
    notifier = Notifier.from_env({"NOTIFY_SOCKET": address, **env}, pid=4242, log=log)
    assert notifier is not None
    return notifier


# --- from_env and the watchdog ---------------------------------------------------------------

@pytest.mark.parametrize("environ", [{}, {"NOTIFY_SOCKET": ""}, {"WATCHDOG_USEC": "1000000"}])
def test_from_env_is_none_without_a_notify_socket(environ):
    assert Notifier.from_env(environ) is None


def test_from_env_refuses_an_address_kind_it_does_not_speak():
    log = Log()
    assert Notifier.from_env({"NOTIFY_SOCKET": "vsock:2:1234"}, log=log) is None
    assert len(log.warnings) == 1 and "vsock:2:1234" in log.warnings[0]


def test_from_env_defaults_to_our_own_pid(systemd):
    receiver, path = systemd
    with Notifier.from_env({"NOTIFY_SOCKET": path}) as notifier:
        assert notifier.pid == os.getpid()
        notifier.ready()
    assert receive(receiver) == f"READY=1\nMAINPID={os.getpid()}\n"


def test_watchdog_interval_is_half_of_watchdog_usec():
    notifier = notifier_for("/run/x", WATCHDOG_USEC="10000000")
    assert notifier.watchdog_usec == 10_000_000
    assert notifier.watchdog_interval == 5.0


def test_watchdog_for_our_pid_is_on():
    assert notifier_for("/run/x", WATCHDOG_USEC="3000000", WATCHDOG_PID="4242").watchdog_interval == 1.5


@pytest.mark.parametrize("watchdog", [
    {},                                                 # no WatchdogSec=
    {"WATCHDOG_USEC": "1000000", "WATCHDOG_PID": "1"},  # meant for another process
    {"WATCHDOG_USEC": "1000000", "WATCHDOG_PID": "x"},
    {"WATCHDOG_USEC": "0"},
    {"WATCHDOG_USEC": "-5"},
    {"WATCHDOG_USEC": "10s"},
    {"WATCHDOG_USEC": ""},
])
def test_no_watchdog(watchdog):
    notifier = notifier_for("/run/x", **watchdog)
    assert notifier.watchdog_usec is None and notifier.watchdog_interval is None


# --- what systemd receives ---------------------------------------------------------------------

def test_ready_names_the_main_pid(systemd):
    receiver, path = systemd
    with notifier_for(path) as notifier:
        notifier.ready()
        notifier.ready("9 running, 0 starting, 0 failed")
    assert receive(receiver) == "READY=1\nMAINPID=4242\n"
    assert receive(receiver) == "READY=1\nSTATUS=9 running, 0 starting, 0 failed\nMAINPID=4242\n"


def test_status_is_one_line(systemd):
    receiver, path = systemd
    with notifier_for(path) as notifier:
        notifier.status("3 running")
        notifier.status("web:0 crashed\nweb:1 crashed\r\n")
    assert receive(receiver) == "STATUS=3 running\n"
    assert receive(receiver) == "STATUS=web:0 crashed web:1 crashed\n"


def test_a_long_status_is_cut_to_fit_systemds_buffer(systemd):
    receiver, path = systemd
    with notifier_for(path) as notifier:
        notifier.status("é" * 5000)
    message = receive(receiver)
    assert message.startswith("STATUS=é") and message.endswith("é\n")
    assert len(message.encode()) < 4096


def test_stopping(systemd):
    receiver, path = systemd
    with notifier_for(path) as notifier:
        notifier.stopping()
        notifier.stopping("draining 9 instances")
    assert receive(receiver) == "STOPPING=1\n"
    assert receive(receiver) == "STOPPING=1\nSTATUS=draining 9 instances\n"


def test_watchdog(systemd):
    receiver, path = systemd
    with notifier_for(path, WATCHDOG_USEC="10000000") as notifier:
        notifier.watchdog()
    assert receive(receiver) == "WATCHDOG=1\n"


def test_reloading_carries_the_monotonic_clock_then_ready_again(systemd):
    receiver, path = systemd
    with notifier_for(path) as notifier:
        before = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        notifier.reloading("re-reading the config")
        after = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        notifier.ready_again("9 running, 0 starting, 0 failed")
    lines = receive(receiver).splitlines()
    assert lines[0] == "RELOADING=1"
    assert lines[2] == "STATUS=re-reading the config"
    key, _, usec = lines[1].partition("=")
    assert key == "MONOTONIC_USEC" and before <= int(usec) <= after
    assert receive(receiver) == "READY=1\nSTATUS=9 running, 0 starting, 0 failed\n"


def test_an_abstract_address():
    name = f"supervise-test-{uuid.uuid4().hex}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as receiver:
        receiver.bind("\0" + name)
        receiver.settimeout(RECV_TIMEOUT)
        with notifier_for("@" + name) as notifier:
            notifier.ready("up")
        assert receive(receiver) == "READY=1\nSTATUS=up\nMAINPID=4242\n"


@pytest.mark.skipif(not hasattr(socket, "SO_PASSCRED"), reason="SCM_CREDENTIALS is Linux-only")
def test_systemd_sees_the_sending_process(systemd):
    # systemd attributes a notification to the pid in its SCM_CREDENTIALS
    # (NotifyAccess=main accepts only the main pid's): it must be ours.
    receiver, path = systemd
    receiver.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
    with notifier_for(path) as notifier:
        notifier.watchdog()
    data, ancillary, _, _ = receiver.recvmsg(4096, socket.CMSG_SPACE(struct.calcsize("3i")))
    assert data == b"WATCHDOG=1\n"
    [(level, kind, creds)] = ancillary
    assert (level, kind) == (socket.SOL_SOCKET, socket.SCM_CREDENTIALS)
    assert struct.unpack("3i", creds)[0] == os.getpid()


# --- never raise, never block ------------------------------------------------------------------

def test_a_vanished_socket_is_logged_once_and_ignored(systemd):
    receiver, path = systemd
    log = Log()
    notifier = notifier_for(path, log=log)
    notifier.ready()
    assert receive(receiver) == "READY=1\nMAINPID=4242\n"
    receiver.close()
    Path(path).unlink()
    notifier.status("still here")
    notifier.watchdog()
    notifier.stopping()
    assert len(log.warnings) == 1 and path in log.warnings[0]
    notifier.close()


def test_a_closed_receiver_whose_file_remains_is_ignored(systemd):
    receiver, path = systemd
    log = Log()
    receiver.close()  # the path is still there: ECONNREFUSED rather than ENOENT
    with notifier_for(path, log=log) as notifier:
        notifier.ready()
        notifier.ready()
    assert len(log.warnings) == 1


def test_without_a_log_failures_are_silent(tmp_path):
    with notifier_for(str(tmp_path / "nobody-here")) as notifier:
        notifier.ready()


def test_a_full_queue_does_not_block(systemd):
    receiver, path = systemd
    receiver.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1024)
    log = Log()
    notifier = notifier_for(path, log=log)
    with must_not_block(1.0):
        sent = 0
        while not log.warnings:  # the first EAGAIN is the proof the queue filled up
            assert sent < 100_000, "the receive queue never filled"
            notifier.status(f"message {sent}")
            sent += 1
        for _ in range(1000):  # once full, every send returns at once and is dropped
            notifier.watchdog()
    assert len(log.warnings) == 1 and "full" in log.warnings[0]
    assert receive(receiver) == "STATUS=message 0\n"  # what got in is intact, in order

    while not nothing_waiting(receiver):  # systemd catches up: notifications flow again
        pass
    notifier.ready()
    assert receive(receiver) == "READY=1\nMAINPID=4242\n"
    notifier.close()


def test_close_makes_every_call_a_no_op(systemd):
    receiver, path = systemd
    notifier = notifier_for(path)
    notifier.close()
    notifier.ready()
    notifier.close()
    assert nothing_waiting(receiver)


def test_the_socket_is_not_opened_until_the_first_message(systemd):
    # from_env must be cheap and infallible: no fd is taken until there is something to say.
    _, path = systemd
    before = len(os.listdir("/proc/self/fd")) if os.path.isdir("/proc/self/fd") else None
    notifier = notifier_for(path)
    if before is not None:
        assert len(os.listdir("/proc/self/fd")) == before
    notifier.close()


# --- the workers' environment -------------------------------------------------------------------

def test_unset_environment_removes_only_systemds_variables():
    environ = {"NOTIFY_SOCKET": "/run/systemd/notify", "WATCHDOG_USEC": "10000000",
               "WATCHDOG_PID": "7", "PATH": "/usr/bin", "LISTEN_FDS": "1"}
    unset_environment(environ)
    assert environ == {"PATH": "/usr/bin", "LISTEN_FDS": "1"}
    unset_environment(environ)  # absent keys are fine
    assert set(ENVIRONMENT) == {"NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"}
