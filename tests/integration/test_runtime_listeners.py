"""Listeners against real sockets: binding, matching an address among a live worker's fds, cleanup."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import free_port

from supervise.runtime.listeners import ListenError, Listeners

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
