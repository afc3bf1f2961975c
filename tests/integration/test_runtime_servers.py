"""The heartbeat and control servers on real ipc sockets: a bug of ours is not the client's fault.

A message that cannot be decoded is the client's mistake (``malformed``);
one whose handling raises is our bug: counted apart (``internal_errors``),
logged with its traceback, and the server reads on.
"""

from __future__ import annotations

import asyncio
import os
import stat
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import zmq

from supervise.core.events import Drained, Event, Ready
from supervise.runtime.control_server import Controls, ControlServer
from supervise.runtime.heartbeats import HeartbeatServer
from supervise.runtime.history import History
from supervise.runtime.ipc import bind_ipc
from supervise.wire import protocol

DEADLINE = 10.0


class Recorder:
    """A structlog-like logger that keeps what it was given."""

    def __init__(self) -> None:
        self.records: list[tuple[str, str, dict[str, Any]]] = []

    def info(self, event: str, **fields: Any) -> None:
        self.records.append(("info", event, fields))

    def warning(self, event: str, **fields: Any) -> None:
        self.records.append(("warning", event, fields))

    def error(self, event: str, **fields: Any) -> None:
        self.records.append(("error", event, fields))


@pytest.fixture
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    loop = asyncio.new_event_loop()
    yield loop
    loop.close()


@pytest.fixture
def ctx() -> Iterator[zmq.Context]:
    ctx = zmq.Context()
    yield ctx
    ctx.destroy(linger=0)


def run_until(loop: asyncio.AbstractEventLoop, predicate: Callable[[], object], what: str) -> None:
    """Run the loop (the servers read in its callbacks) until `predicate` holds; fail after DEADLINE."""

    async def wait() -> None:
        deadline = loop.time() + DEADLINE
        while not predicate():
            if loop.time() > deadline:
                raise AssertionError(f"timed out waiting for {what}")
            await asyncio.sleep(0.005)

    loop.run_until_complete(wait())


def dealer(ctx: zmq.Context, path: Path) -> zmq.Socket:
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 1000)
    sock.connect(f"ipc://{path}")
    return sock


def heartbeat(kind: str, name: str = "w:0", token: str = "tok") -> bytes:
    return protocol.encode_heartbeat(protocol.Heartbeat(kind, name, token))


# -- heartbeats ------------------------------------------------------------------------------


def test_a_handler_bug_is_an_internal_error_not_malformed_and_the_server_reads_on(tmp_path, loop, ctx):
    delivered: list[Event] = []
    beats: list[int] = []

    def deliver(event: Event) -> None:
        if not delivered:
            delivered.append(event)
            raise RuntimeError("bug in the daemon's handler")
        delivered.append(event)

    log = Recorder()
    server = HeartbeatServer(ctx, tmp_path / "hb.sock", loop, deliver, lambda sid, fields: beats.append(sid), log=log)
    server.register("tok", 7, "w:0")
    server.start_reading()
    worker = dealer(ctx, tmp_path / "hb.sock")
    try:
        worker.send(heartbeat("ready"))  # deliver raises on this one
        worker.send(heartbeat("beat"))
        worker.send(heartbeat("drained"))
        worker.send(b"not json")  # the client's fault, for contrast
        run_until(loop, lambda: len(delivered) == 2 and server.counters.malformed == 1, "every message handled")
    finally:
        worker.close()
        server.close()
    assert delivered == [Ready(7), Drained(7)]
    assert beats == [7]
    assert server.counters.as_json() == {"accepted": 2, "rejected": 0, "malformed": 1, "internal_errors": 1}
    [(level, event, fields)] = log.records
    assert (level, event) == ("error", "heartbeat message dropped: internal error")
    error = fields["exc_info"]
    assert isinstance(error, RuntimeError) and error.__traceback__ is not None
    assert fields["error"] == "RuntimeError: bug in the daemon's handler" and fields["name"] == "w:0"


def test_repeated_internal_errors_are_all_counted_but_logged_once_per_interval(tmp_path, loop, ctx):
    def deliver(event: Event) -> None:
        raise KeyError("always")

    log = Recorder()
    server = HeartbeatServer(ctx, tmp_path / "hb.sock", loop, deliver, lambda sid, fields: None, log=log)
    server.register("tok", 1, "w:0")
    server.start_reading()
    worker = dealer(ctx, tmp_path / "hb.sock")
    try:
        for _ in range(50):
            worker.send(heartbeat("ready"))
        run_until(loop, lambda: server.counters.internal_errors == 50, "50 internal errors")
    finally:
        worker.close()
        server.close()
    assert server.counters.accepted == 0 and server.counters.malformed == 0
    assert len(log.records) == 1  # a client repeating what trips a bug cannot flood the log


def test_the_heartbeat_socket_is_owner_only_and_replaces_a_stale_file(tmp_path, loop, ctx):
    path = tmp_path / "hb.sock"
    path.write_text("left by a daemon that died")
    server = HeartbeatServer(ctx, path, loop, lambda event: None, lambda sid, fields: None, log=Recorder())
    try:
        assert stat.S_ISSOCK(path.stat().st_mode)
        assert path.stat().st_mode & 0o777 == 0o600
    finally:
        server.close()
    assert not path.exists()


# -- control ---------------------------------------------------------------------------------


def control(tmp_path: Path, loop: asyncio.AbstractEventLoop, ctx: zmq.Context, log: Recorder,
            submit: Callable[[int, protocol.Request], None]) -> ControlServer:
    return ControlServer(ctx, tmp_path / "control.sock", loop, History(), submit, lambda: {}, log=log)


def ask(loop: asyncio.AbstractEventLoop, client: zmq.Socket, request: bytes) -> protocol.Reply:
    client.send(request)
    run_until(loop, lambda: client.poll(0), "a reply")
    return protocol.decode_reply(client.recv_multipart())


def test_a_control_handler_bug_is_answered_counted_apart_and_logged(tmp_path, loop, ctx):
    def submit(request_id: int, request: protocol.Request) -> None:
        raise ZeroDivisionError("bug in the daemon's submit")

    log = Recorder()
    server = control(tmp_path, loop, ctx, log, submit)
    controls = Controls([server])
    client = dealer(ctx, tmp_path / "control.sock")
    try:
        reply = ask(loop, client, protocol.encode_request(protocol.Request("status")))
        assert not reply.ok and reply.error == "internal error: ZeroDivisionError: bug in the daemon's submit"
        # The channel is still served, and the failed request left nothing pending behind.
        events = ask(loop, client, protocol.encode_request(protocol.Request("events")))
        assert events.ok and events.result["events"] == []
        bad = ask(loop, client, b'{"v": 1, "cmd": "no-such-verb"}')
        assert not bad.ok and bad.error.startswith("bad request")
    finally:
        client.close()
        controls.close()
    assert (server.internal_errors, server.malformed) == (1, 1)
    assert (controls.internal_errors, controls.malformed) == (1, 1)
    assert server._requests == {}
    [(level, event, fields)] = log.records
    assert (level, event) == ("error", "control request failed: internal error")
    assert isinstance(fields["exc_info"], ZeroDivisionError)


def test_a_control_server_needs_exactly_one_endpoint(tmp_path, loop, ctx):
    history = History()
    with pytest.raises(ValueError, match="either on an ipc path or on a tcp endpoint"):
        ControlServer(ctx, None, loop, history, lambda rid, req: None, lambda: {})


# -- bind_ipc --------------------------------------------------------------------------------


def test_bind_ipc_restores_the_umask_and_refuses_what_it_cannot_bind(tmp_path, ctx):
    before = os.umask(0o022)
    os.umask(before)
    sock = ctx.socket(zmq.ROUTER)
    try:
        with pytest.raises(zmq.ZMQError):
            bind_ipc(sock, tmp_path / "missing-dir" / "x.sock")
        assert os.umask(before) == before  # restored even when bind failed
        bind_ipc(sock, tmp_path / "ok.sock")
        assert os.umask(before) == before
        assert (tmp_path / "ok.sock").stat().st_mode & 0o777 == 0o600
    finally:
        sock.close(linger=0)
