"""supervise.worker against a real pyzmq ROUTER playing the daemon on an ipc endpoint."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from fakedaemon import TIMEOUT, FakeDaemon
from helpers import wait_until

from supervise.wire import protocol
from supervise.worker import LINGER, Heartbeat, listen_fds

pytestmark = pytest.mark.usefixtures("thread_errors")  # no thread of the client may die (conftest.py)

ROOT = Path(__file__).resolve().parents[2]
INTERVAL = 0.05


def env(endpoint: str, interval: float = INTERVAL, **extra: str) -> dict[str, str]:
    return {"SUPERVISE_HEARTBEAT": endpoint, "SUPERVISE_NAME": "web:0", "SUPERVISE_TOKEN": "s3cret",
            "SUPERVISE_HEARTBEAT_INTERVAL": str(interval), **extra}


@pytest.fixture
def make(endpoint: str) -> Iterator[Callable[..., Heartbeat]]:
    made: list[Heartbeat] = []

    def factory(interval: float = INTERVAL) -> Heartbeat:
        hb = Heartbeat.from_env(env(endpoint, interval))
        made.append(hb)
        return hb

    yield factory
    for hb in made:
        hb.close()


def heartbeat_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "supervise-heartbeat"]


# -- inert mode ------------------------------------------------------------------------


@pytest.mark.parametrize("missing", [None, "SUPERVISE_HEARTBEAT", "SUPERVISE_NAME", "SUPERVISE_TOKEN"])
def test_inert_without_env_every_call_is_a_no_op(missing: str | None) -> None:
    environ = {} if missing is None else {k: v for k, v in env("ipc:///nonexistent").items() if k != missing}
    before = set(threading.enumerate())
    hb = Heartbeat.from_env(environ)
    assert not hb.active
    hb.ready(phase="up")
    assert hb.start() is hb
    hb.beat(inflight=1)
    hb.drained()
    assert hb.listen_sockets() == []
    hb.close()
    hb.close()
    assert not hb.draining.is_set()
    assert hb._channel is None
    assert set(threading.enumerate()) == before


def test_inert_still_checks_status_fields() -> None:
    with pytest.raises(ValueError, match="status"):
        Heartbeat.from_env({}).beat(nested={"a": 1})


@pytest.mark.parametrize(("text", "expected"), [
    ("0.25", 0.25), ("2", 2.0), (None, 1.0), ("", 1.0), ("soon", 1.0), ("0", 1.0), ("-1", 1.0), ("nan", 1.0),
])
def test_interval_from_env(text: str | None, expected: float) -> None:
    environ = {} if text is None else {"SUPERVISE_HEARTBEAT_INTERVAL": text}
    assert Heartbeat.from_env(environ).interval == expected


# -- messages --------------------------------------------------------------------------


def test_ready_arrives_with_name_token_pid(daemon: FakeDaemon, make) -> None:
    hb = make()
    assert hb.active
    hb.ready(version="1.2")
    _, msg = daemon.recv()
    assert msg == protocol.Heartbeat("ready", "web:0", "s3cret", os.getpid(), {"version": "1.2"})


def test_start_beats_at_the_interval(daemon: FakeDaemon, make) -> None:
    hb = make(interval=0.05)
    hb.start()
    daemon.recv()  # the first beat starts the window
    beats = daemon.collect(1.0)
    assert all(m.type == "beat" for m in beats)
    assert 8 <= len(beats) <= 30, f"{len(beats)} beats in 1 s at a 50 ms interval"


def test_no_background_beats_without_start(daemon: FakeDaemon, make) -> None:
    hb = make(interval=0.02)
    hb.ready()
    daemon.recv()
    assert daemon.collect(0.2) == []


def test_status_fields_arrive_and_are_repeated(daemon: FakeDaemon, make) -> None:
    hb = make(interval=0.05)
    hb.start()
    hb.beat(inflight=3)
    daemon.recv_until(lambda m: m.status == {"inflight": 3})
    repeated = [daemon.recv()[1] for _ in range(3)]
    assert [(m.type, m.status) for m in repeated] == [("beat", {"inflight": 3})] * 3
    hb.beat(queue="q", ok=True, load=0.5, missing=None)
    daemon.recv_until(lambda m: m.status == {"inflight": 3, "queue": "q", "ok": True, "load": 0.5, "missing": None})


@pytest.mark.parametrize("fields", [
    {"nested": {"a": 1}}, {"items": [1]}, {"text": "x" * 300}, {"k" * 65: 1}, {"obj": object()},
    {f"f{i}": i for i in range(33)},
])
def test_invalid_status_fields_raise_and_are_not_remembered(daemon: FakeDaemon, make, fields: dict) -> None:
    hb = make()
    with pytest.raises(ValueError, match="status"):
        hb.ready(**fields)
    with pytest.raises(ValueError, match="status"):
        hb.beat(**fields)
    hb.ready(fine=1)  # not a beat: a beat sent before the connection is up is dropped
    _, msg = daemon.recv()
    assert msg.status == {"fine": 1}


def test_drained_arrives(daemon: FakeDaemon, make) -> None:
    hb = make()
    hb.ready(inflight=0)
    hb.drained()
    msgs = daemon.recv_until(lambda m: m.type == "drained")
    assert msgs[-1] == protocol.Heartbeat("drained", "web:0", "s3cret", os.getpid(), None)


@pytest.mark.parametrize("started", [False, True])
def test_drain_sets_draining_quickly(daemon: FakeDaemon, make, started: bool) -> None:
    hb = make(interval=0.5)
    hb.ready()
    if started:
        hb.start()
    identity, _ = daemon.recv()
    assert not hb.draining.is_set()
    sent = time.perf_counter()
    daemon.drain(identity)
    assert hb.draining.wait(TIMEOUT)
    latency = time.perf_counter() - sent
    print(f"\ndrain noticed after {latency * 1000:.2f} ms")
    assert latency < 0.5  # typically well under 1 ms; generous for loaded CI machines


def test_malformed_daemon_messages_are_ignored(daemon: FakeDaemon, make) -> None:
    hb = make()
    hb.ready()
    identity, _ = daemon.recv()
    for junk in (b"", b"not json", b'{"v":1}', b'{"v":9,"type":"drain"}', b'{"v":1,"type":"other"}'):
        daemon.router.send_multipart([identity, junk])
    daemon.drain(identity)
    assert hb.draining.wait(TIMEOUT)


def test_calls_from_eight_threads_at_once(daemon: FakeDaemon, make) -> None:
    hb = make(interval=0.01)
    start = threading.Barrier(8)

    def hammer(n: int) -> None:
        start.wait()
        for i in range(200):
            hb.beat(**{f"t{n}": i})
            if i % 50 == 0:
                hb.ready()
            if n == 0 and i == 100:
                hb.start()
        hb.drained()

    threads = [threading.Thread(target=hammer, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(TIMEOUT)
    assert not any(t.is_alive() for t in threads)
    hb.beat(final=True)
    # A queued beat is sent with the latest status, so the final fields may
    # overtake a drained queued after that beat: wait for both.
    seen: list[protocol.Heartbeat] = []

    def final_and_drained(m: protocol.Heartbeat) -> bool:
        seen.append(m)
        final = [x for x in seen if x.status is not None and x.status.get("final") is True]
        return bool(final) and any(x.type == "drained" for x in seen)

    msgs = daemon.recv_until(final_and_drained)
    assert {m.type for m in msgs} <= {"ready", "beat", "drained"}
    final = next(m for m in msgs if m.status is not None and m.status.get("final") is True)
    assert final.status == {**{f"t{n}": 199 for n in range(8)}, "final": True}
    assert len(heartbeat_threads()) == 1


# -- the daemon going away -------------------------------------------------------------


def test_survives_the_daemon_restarting(daemon: FakeDaemon, make) -> None:
    hb = make(interval=0.02)
    hb.ready()
    hb.start()
    daemon.recv_until(lambda m: m.type == "beat")
    daemon.unbind()
    hb.beat(during="outage")  # must neither raise nor block
    wait_until(lambda: hb._channel.dropped_beats >= 30, TIMEOUT, message="beats to be dropped during the outage")
    hb.ready(phase="again")  # held, not dropped: sent once a daemon is back
    daemon.bind()
    first = daemon.recv()[1]
    burst = [first, *daemon.collect(0.2)]
    assert any(m.type == "ready" for m in burst)
    beats = [m for m in burst if m.type == "beat"]
    assert beats and beats[-1].status == {"during": "outage", "phase": "again"}
    # about 10 fresh beats in 0.2 s; the 30+ of the outage would be a stale backlog
    assert len(burst) <= 22, f"{len(burst)} messages right after the restart"
    assert heartbeat_threads() and heartbeat_threads()[0].is_alive()


def test_ready_sent_before_the_daemon_binds_is_delivered(endpoint: str, make) -> None:
    hb = make()
    hb.ready()
    fake = FakeDaemon(endpoint)
    try:
        fake.bind()
        _, msg = fake.recv()
        assert msg.type == "ready"
    finally:
        fake.close()


def test_close_without_a_daemon_returns_promptly(make) -> None:
    hb = make()
    hb.ready()
    hb.drained()
    started = time.monotonic()
    hb.close()
    assert time.monotonic() - started < LINGER + 1.0
    assert not heartbeat_threads()


# -- lifecycle -------------------------------------------------------------------------


def test_close_is_idempotent_and_leaves_no_thread(daemon: FakeDaemon, make) -> None:
    hb = make()
    hb.ready()
    hb.start()
    thread = hb._channel._thread
    assert thread.is_alive()
    hb.close()
    hb.close()
    assert not thread.is_alive()
    assert not heartbeat_threads()
    assert hb._channel._ctx.closed
    hb.beat(after="close")  # no-ops now
    hb.ready()
    hb.start()
    assert not heartbeat_threads()


def test_close_delivers_a_final_drained(daemon: FakeDaemon, make) -> None:
    hb = make()
    hb.ready()
    daemon.recv()
    hb.drained()
    hb.close()
    assert daemon.recv()[1].type == "drained"


def test_context_manager(daemon: FakeDaemon, endpoint: str) -> None:
    with Heartbeat.from_env(env(endpoint)) as hb:
        hb.ready()
        hb.start()
        daemon.recv()
    assert not heartbeat_threads()


def test_calls_in_a_forked_child_are_ignored(daemon: FakeDaemon, make) -> None:
    hb = make(interval=10)
    hb.ready()
    daemon.recv()
    pid = os.fork()
    if pid == 0:  # the child: must neither send nor touch the parent's zmq context or lock
        code = 1
        try:
            hb.beat(child=True)
            hb.drained()
            hb.start()
            code = 0 if hb.listen_sockets() == [] else 2
            hb.close()
        finally:
            os._exit(code)
    def reaped() -> list[int]:
        done, status = os.waitpid(pid, os.WNOHANG)
        return [status] if done else []

    try:
        (status,) = wait_until(reaped, TIMEOUT, message="the forked child to exit")
    except BaseException:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        raise
    assert os.waitstatus_to_exitcode(status) == 0
    hb.beat(parent=True)
    msgs = daemon.recv_until(lambda m: m.status is not None and m.status.get("parent") is True)
    assert [m.type for m in msgs] == ["beat"]
    assert "child" not in msgs[-1].status


# -- listen sockets --------------------------------------------------------------------


@pytest.mark.parametrize(("environ", "expected"), [
    ({"LISTEN_PID": "100", "LISTEN_FDS": "2", "LISTEN_FDNAMES": "http:admin"}, [(3, "http"), (4, "admin")]),
    ({"LISTEN_PID": "100", "LISTEN_FDS": "2", "LISTEN_FDNAMES": "http"}, [(3, "http"), (4, None)]),
    ({"LISTEN_PID": "100", "LISTEN_FDS": "1"}, [(3, None)]),
    ({"LISTEN_PID": "101", "LISTEN_FDS": "1"}, []),
    ({"LISTEN_FDS": "1"}, []),
    ({"LISTEN_PID": "100"}, []),
    ({"LISTEN_PID": "100", "LISTEN_FDS": "0"}, []),
    ({"LISTEN_PID": "100", "LISTEN_FDS": "-1"}, []),
    ({"LISTEN_PID": "100", "LISTEN_FDS": "two"}, []),
    ({"LISTEN_PID": "me", "LISTEN_FDS": "1"}, []),
    ({}, []),
])
def test_listen_fds_parsing(environ: dict, expected: list) -> None:
    assert listen_fds(environ, 100) == expected


def test_listen_sockets_for_another_pid_is_empty() -> None:
    hb = Heartbeat.from_env({"LISTEN_PID": str(os.getpid() + 1), "LISTEN_FDS": "1"})
    assert hb.listen_sockets() == []


WRAPPER = """
import os, sys
fd = int(sys.argv[1])
if fd != 3:
    os.dup2(fd, 3)
    os.close(fd)
os.environ.update(LISTEN_FDS="1", LISTEN_PID=str(os.getpid()), LISTEN_FDNAMES="http")
os.execv(sys.executable, [sys.executable, "-c", sys.argv[2]])  # same pid, so LISTEN_PID holds
"""

CHILD = """
import json
from supervise.worker import Heartbeat
hb = Heartbeat.from_env()
socks = hb.listen_sockets()
again = hb.listen_sockets()
s = socks[0]
print(json.dumps({"active": hb.active, "fds": [x.fileno() for x in socks],
                  "same": len(again) == 1 and again[0] is s, "family": int(s.family), "type": int(s.type),
                  "inheritable": s.get_inheritable(), "addr": s.getsockname()}), flush=True)
conn, _ = s.accept()
conn.sendall(b"served by the passed socket")
conn.close()
"""


def test_listen_sockets_end_to_end_in_a_child() -> None:
    listener = socket.create_server(("127.0.0.1", 0))
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("SUPERVISE_", "LISTEN_"))}
    with listener, subprocess.Popen([sys.executable, "-c", WRAPPER, str(listener.fileno()), CHILD],
                                    pass_fds=[listener.fileno()], stdout=subprocess.PIPE, text=True,
                                    env=environ, cwd=ROOT) as proc:
        try:
            info = json.loads(proc.stdout.readline())
            assert info == {"active": False, "fds": [3], "same": True, "family": int(socket.AF_INET),
                            "type": int(socket.SOCK_STREAM), "inheritable": False,
                            "addr": list(listener.getsockname())}
            with socket.create_connection(listener.getsockname(), timeout=TIMEOUT) as client:
                assert client.makefile("rb").read() == b"served by the passed socket"
            assert proc.wait(TIMEOUT) == 0
        finally:
            if proc.poll() is None:
                proc.kill()
