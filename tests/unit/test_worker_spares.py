"""Warm spares in supervise.worker: a spare waits for its slot and takes it on a ``promote`` message.

As in test_worker.py, a real pyzmq ROUTER on an ipc endpoint plays the daemon (fakedaemon.py); nothing of the
client is mocked. A test waits on conditions with deadlines (the ROUTER polled with a timeout,
events, joins), never on a sleep.
"""

from __future__ import annotations

import asyncio
import json
import os
import threading
import time
from collections.abc import Callable, Iterator

import pytest
from fakedaemon import TIMEOUT, FakeDaemon

from supervise.wire import protocol
from supervise.worker import Heartbeat, Slot

pytestmark = pytest.mark.usefixtures("thread_errors")  # no thread of the client may die (conftest.py)

SPARE = "web:spare-0"


class Background:
    """Runs ``fn`` in a thread (a worker's main thread blocked in a wait) and hands back its result."""

    def __init__(self, fn: Callable[[], object]) -> None:
        self.result: object = None
        self.returned_at: float | None = None
        self._thread = threading.Thread(target=self._run, args=(fn,), name="test-waiter", daemon=True)
        self._thread.start()

    def _run(self, fn: Callable[[], object]) -> None:
        self.result = fn()  # an exception reaches threading.excepthook: thread_errors fails the test
        self.returned_at = time.perf_counter()

    def join(self, timeout: float = TIMEOUT) -> object:
        self._thread.join(timeout)
        assert not self._thread.is_alive(), f"still waiting after {timeout}s"
        return self.result


@pytest.fixture
def make(endpoint: str) -> Iterator[Callable[..., Heartbeat]]:
    """Heartbeats built as the brief of a spare says, closed after the test."""
    made: list[Heartbeat] = []

    def factory(spare: bool = True, **kwargs: object) -> Heartbeat:
        kwargs.setdefault("name", SPARE if spare else "web:0")
        hb = Heartbeat(endpoint, token="t", spare=spare, **kwargs)
        made.append(hb)
        return hb

    yield factory
    for hb in made:
        hb.close()


def env(endpoint: str, **extra: str) -> dict[str, str]:
    return {"SUPERVISE_HEARTBEAT": endpoint, "SUPERVISE_NAME": SPARE, "SUPERVISE_TOKEN": "t", **extra}


def settle(daemon: FakeDaemon, identity: bytes, hb: Heartbeat) -> None:
    """Returns once the I/O thread has handled every message sent to it before: it handles them
    in order, and a drain sent last sets ``draining``."""
    daemon.send(identity, protocol.DRAIN)
    assert hb.draining.wait(TIMEOUT)


# -- the environment -----------------------------------------------------------------------


def test_env_names() -> None:
    assert (protocol.ENV_ROLE, protocol.ENV_PORT, protocol.ROLE_SPARE) == ("SUPERVISE_ROLE", "SUPERVISE_PORT", "spare")


def test_from_env_active_instance(endpoint: str) -> None:
    hb = Heartbeat.from_env(env(endpoint, SUPERVISE_NAME="web:2", SUPERVISE_INSTANCE="2", SUPERVISE_PORT="8002"))
    assert hb.active and not hb.spare
    assert (hb.index, hb.port) == (2, 8002)
    assert hb.promoted.is_set()
    assert hb.slot == Slot("web:2", 2, 8002)


def test_from_env_spare(endpoint: str) -> None:
    # Whatever SUPERVISE_INSTANCE and SUPERVISE_PORT say, a spare has no slot until promoted.
    hb = Heartbeat.from_env(env(endpoint, SUPERVISE_ROLE="spare", SUPERVISE_INSTANCE="3", SUPERVISE_PORT="8003"))
    assert hb.active and hb.spare
    assert (hb.index, hb.port) == (None, None)
    assert not hb.promoted.is_set()
    assert hb.slot == Slot(SPARE, None, None)
    assert "spare" in repr(hb)
    assert hb._channel is None  # building it starts nothing


@pytest.mark.parametrize("role", ["", "Spare", "active", "spare "])
def test_from_env_other_roles_are_active(endpoint: str, role: str) -> None:
    hb = Heartbeat.from_env(env(endpoint, SUPERVISE_ROLE=role))
    assert not hb.spare and hb.promoted.is_set()


@pytest.mark.parametrize("text", [None, "", "x", "-1", "+1", "1.5", " 1", "1e3", "\u0663", "9" * 11, "9" * 5000])
def test_from_env_bad_index_is_none(endpoint: str, text: str | None) -> None:
    environ = env(endpoint) if text is None else env(endpoint, SUPERVISE_INSTANCE=text)
    assert Heartbeat.from_env(environ).index is None


@pytest.mark.parametrize(("text", "expected"), [
    ("0", None), ("1", 1), ("65535", 65535), ("65536", None), ("-80", None), ("http", None), ("", None),
    ("8000.0", None), ("\u0668\u0660", None), ("9" * 5000, None),
])
def test_from_env_port(endpoint: str, text: str, expected: int | None) -> None:
    assert Heartbeat.from_env(env(endpoint, SUPERVISE_PORT=text)).port == expected


def test_from_env_index_zero(endpoint: str) -> None:
    assert Heartbeat.from_env(env(endpoint, SUPERVISE_INSTANCE="0")).index == 0


# -- no waiting: active instances and inert mode --------------------------------------------


def test_inert_spare_is_not_a_spare_and_returns_at_once() -> None:
    before = set(threading.enumerate())
    hb = Heartbeat.from_env({"SUPERVISE_ROLE": "spare", "SUPERVISE_INSTANCE": "1", "SUPERVISE_PORT": "8001"})
    assert not hb.active and not hb.spare and hb.promoted.is_set()
    assert hb.wait_for_slot() == Slot("", None, None)
    assert asyncio.run(hb.wait_for_slot_async()) == Slot("", None, None)
    assert set(threading.enumerate()) == before


def test_inert_active_returns_its_slot() -> None:
    hb = Heartbeat.from_env({"SUPERVISE_INSTANCE": "1", "SUPERVISE_PORT": "8001"})
    assert hb.wait_for_slot(timeout=0) == Slot("", 1, 8001)


def test_active_instance_returns_at_once_without_sending(daemon: FakeDaemon, make) -> None:
    hb = make(spare=False, index=0, port=8000)
    started = time.monotonic()
    assert hb.wait_for_slot() == Slot("web:0", 0, 8000)
    assert asyncio.run(hb.wait_for_slot_async()) == Slot("web:0", 0, 8000)
    assert time.monotonic() - started < 0.5
    assert hb._channel is None  # it said nothing: readiness stays the worker's own business


# -- a spare waiting ------------------------------------------------------------------------


def test_wait_says_ready_itself_and_times_out(daemon: FakeDaemon, make) -> None:
    hb = make()
    started = time.monotonic()
    assert hb.wait_for_slot(timeout=0.1) is None
    elapsed = time.monotonic() - started
    assert 0.1 <= elapsed < 0.6
    _, msg = daemon.recv()
    assert (msg.type, msg.name, msg.token) == ("ready", SPARE, "t")
    assert hb.spare and not hb.promoted.is_set()


def test_wait_does_not_say_ready_twice(daemon: FakeDaemon, make) -> None:
    hb = make()
    hb.ready(warm=True)
    assert daemon.recv()[1].type == "ready"
    assert hb.wait_for_slot(timeout=0) is None
    assert hb.wait_for_slot(timeout=0.01) is None
    assert daemon.silent(0.1)  # no start(): nothing periodic either


def test_promote_returns_the_slot_and_renames_every_later_message(daemon: FakeDaemon, make) -> None:
    hb = make()
    waiter = Background(hb.wait_for_slot)
    identity, msg = daemon.recv()
    assert (msg.type, msg.name) == ("ready", SPARE)
    sent = time.perf_counter()
    daemon.promote(identity, "web:2", 2, 8002)
    assert waiter.join() == Slot("web:2", 2, 8002)
    assert waiter.returned_at is not None
    print(f"\npromoted after {(waiter.returned_at - sent) * 1000:.2f} ms")
    # The promotion is announced at once, under the new name, by a beat saying it is ready.
    _, announced = daemon.recv()
    assert announced == protocol.Heartbeat("beat", "web:2", "t", os.getpid(), None, True)
    assert (hb.name, hb.index, hb.port, hb.spare) == ("web:2", 2, 8002, False)
    assert hb.promoted.is_set() and hb.slot == Slot("web:2", 2, 8002)
    hb.beat(inflight=1)
    hb.drained()
    assert [(m.type, m.name) for m in (daemon.recv()[1], daemon.recv()[1])] == [("beat", "web:2"),
                                                                                 ("drained", "web:2")]
    assert hb.wait_for_slot(timeout=0) == Slot("web:2", 2, 8002)  # settled: at once from now on


def test_promote_is_fast(daemon: FakeDaemon, make) -> None:
    hb = make()
    waiter = Background(lambda: hb.wait_for_slot(TIMEOUT))
    identity, _ = daemon.recv()
    sent = time.perf_counter()
    daemon.promote(identity, port=None)
    assert waiter.join() == Slot("web:2", 2, None)
    latency = waiter.returned_at - sent
    assert latency < 0.25, f"{latency * 1000:.1f} ms from the promote message to the waiter"  # ~0.1 ms idle


def test_promote_before_anyone_waits(daemon: FakeDaemon, make) -> None:
    hb = make()
    hb.ready()
    identity, _ = daemon.recv()
    daemon.promote(identity, "web:5", 5, None)
    assert hb.promoted.wait(TIMEOUT)
    assert hb.wait_for_slot(timeout=0) == Slot("web:5", 5, None)
    assert daemon.recv()[1].name == "web:5"


def test_drain_while_waiting_returns_none(daemon: FakeDaemon, make) -> None:
    hb = make()
    waiter = Background(hb.wait_for_slot)
    identity, _ = daemon.recv()
    daemon.send(identity, protocol.DRAIN)
    assert waiter.join() is None
    assert hb.draining.is_set() and hb.spare and not hb.promoted.is_set()
    assert hb.wait_for_slot() is None  # drained: at once, however often asked


def test_draining_set_by_the_worker_itself_ends_the_wait(daemon: FakeDaemon, make) -> None:
    hb = make()
    waiter = Background(hb.wait_for_slot)
    daemon.recv()
    hb.draining.set()  # e.g. from the worker's own SIGTERM handler
    assert waiter.join() is None


def test_close_while_waiting_returns_none(daemon: FakeDaemon, make) -> None:
    hb = make()
    waiter = Background(hb.wait_for_slot)
    daemon.recv()
    hb.close()
    assert waiter.join() is None
    assert hb.wait_for_slot() is None


def test_several_waiters_all_get_the_slot(daemon: FakeDaemon, make) -> None:
    hb = make()
    waiters = [Background(hb.wait_for_slot) for _ in range(4)]
    identity, _ = daemon.recv()
    daemon.promote(identity)
    assert [w.join() for w in waiters] == [Slot("web:2", 2, 8002)] * 4


# -- what is ignored ------------------------------------------------------------------------

MALFORMED = {
    "index-negative": {"name": "web:2", "index": -1, "port": 8002},
    "index-bool": {"name": "web:2", "index": True, "port": 8002},
    "index-float": {"name": "web:2", "index": 2.0, "port": 8002},
    "index-text": {"name": "web:2", "index": "2", "port": 8002},
    "index-missing": {"name": "web:2", "port": 8002},
    "name-empty": {"name": "", "index": 2, "port": 8002},
    "name-long": {"name": "w" * 257, "index": 2, "port": 8002},
    "name-number": {"name": 2, "index": 2, "port": 8002},
    "name-missing": {"index": 2, "port": 8002},
    "port-zero": {"name": "web:2", "index": 2, "port": 0},
    "port-high": {"name": "web:2", "index": 2, "port": 65536},
    "port-bool": {"name": "web:2", "index": 2, "port": True},
    "port-text": {"name": "web:2", "index": 2, "port": "8002"},
    "port-float": {"name": "web:2", "index": 2, "port": 8002.0},
}


def promote_body(fields: dict) -> bytes:
    return json.dumps({"v": 1, "type": "promote", **fields}).encode()


def test_malformed_promotes_are_ignored(daemon: FakeDaemon, make) -> None:
    hb = make()
    waiter = Background(hb.wait_for_slot)
    identity, _ = daemon.recv()
    for fields in MALFORMED.values():
        daemon.send(identity, promote_body(fields))
    daemon.send(identity, protocol.promote_message("web:2", 2, 8002), b"second frame")
    daemon.send(identity, b'{"v":2,"type":"promote","name":"web:2","index":2,"port":8002}')
    daemon.send(identity, b"promote")
    daemon.promote(identity, "web:7", 7, 8007)  # the first valid one, after all the junk
    assert waiter.join() == Slot("web:7", 7, 8007)
    assert daemon.recv()[1].name == "web:7"


def test_second_and_duplicate_promotes_are_ignored(daemon: FakeDaemon, make) -> None:
    hb = make()
    hb.ready()
    identity, _ = daemon.recv()
    daemon.promote(identity, "web:2", 2, 8002)
    assert hb.promoted.wait(TIMEOUT)
    assert daemon.recv()[1].name == "web:2"
    daemon.promote(identity, "web:2", 2, 8002)  # a duplicate
    daemon.promote(identity, "web:3", 3, 8003)  # another slot
    settle(daemon, identity, hb)
    assert hb.slot == Slot("web:2", 2, 8002)
    assert daemon.silent(0.05)  # neither was announced


def test_promote_to_an_active_instance_is_ignored(daemon: FakeDaemon, make) -> None:
    hb = make(spare=False, index=0, port=8000)
    hb.ready()
    identity, _ = daemon.recv()
    daemon.promote(identity, "web:2", 2, 8002)
    settle(daemon, identity, hb)
    assert hb.slot == Slot("web:0", 0, 8000) and not hb.spare
    assert daemon.silent(0.05)


# -- asyncio --------------------------------------------------------------------------------


def test_async_promote(daemon: FakeDaemon, make) -> None:
    hb = make()
    promoter_done = threading.Event()

    def promoter() -> None:  # the daemon, in its own thread while the loop runs
        identity, msg = daemon.recv()
        assert msg.type == "ready"
        daemon.promote(identity, "web:4", 4, None)
        promoter_done.set()

    async def main() -> Slot | None:
        threads_before = {t.name for t in threading.enumerate()}
        task = asyncio.create_task(hb.wait_for_slot_async())
        await asyncio.sleep(0)  # the wait has begun, and the loop still runs other tasks
        assert not task.done()
        threading.Thread(target=promoter, name="test-promoter", daemon=True).start()
        slot = await asyncio.wait_for(task, TIMEOUT)
        # The wait held no thread of its own: only the client's I/O thread and the promoter exist.
        assert {t.name for t in threading.enumerate()} <= threads_before | {"supervise-heartbeat", "test-promoter"}
        return slot

    assert asyncio.run(main()) == Slot("web:4", 4, None)
    assert promoter_done.wait(TIMEOUT)
    assert daemon.recv()[1].name == "web:4"
    assert hb._async_waiters == []


def test_async_timeout(daemon: FakeDaemon, make) -> None:
    hb = make()
    started = time.monotonic()
    assert asyncio.run(hb.wait_for_slot_async(timeout=0.1)) is None
    assert 0.1 <= time.monotonic() - started < 0.6
    assert daemon.recv()[1].type == "ready"  # said by the wait
    assert hb._async_waiters == []


def test_async_drain(daemon: FakeDaemon, make) -> None:
    hb = make()
    hb.ready()
    identity, _ = daemon.recv()

    async def main() -> Slot | None:
        task = asyncio.create_task(hb.wait_for_slot_async())
        await asyncio.sleep(0)
        daemon.send(identity, protocol.DRAIN)
        return await asyncio.wait_for(task, TIMEOUT)

    assert asyncio.run(main()) is None
    assert hb.draining.is_set()


def test_async_cancel_then_promote(daemon: FakeDaemon, make) -> None:
    hb = make()

    async def main() -> None:
        task = asyncio.create_task(hb.wait_for_slot_async())
        await asyncio.sleep(0)
        assert hb._async_waiters
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(main())
    assert hb._async_waiters == []
    identity, _ = daemon.recv()
    daemon.promote(identity)  # nobody awaits now, and the loop is closed: the I/O thread must not mind
    assert hb.wait_for_slot(TIMEOUT) == Slot("web:2", 2, 8002)


def test_async_waiter_on_a_closed_loop_does_not_break_the_io_thread(daemon: FakeDaemon, make) -> None:
    hb = make()
    loop = asyncio.new_event_loop()
    task = loop.create_task(hb.wait_for_slot_async())
    loop.run_until_complete(asyncio.sleep(0))  # the wait is registered; the loop then goes away under it
    assert hb._async_waiters
    loop.close()
    identity, _ = daemon.recv()
    daemon.promote(identity)
    assert hb.wait_for_slot(TIMEOUT) == Slot("web:2", 2, 8002)
    assert not task.done()
    task._log_destroy_pending = False  # left pending on purpose: asyncio need not warn of it at exit


# -- the wire format ------------------------------------------------------------------------


def test_promote_message_format() -> None:
    assert protocol.promote_message("web:2", 2, 8002) == \
        b'{"v":1,"type":"promote","name":"web:2","index":2,"port":8002}'
    assert protocol.promote_message("web:0", 0, None) == \
        b'{"v":1,"type":"promote","name":"web:0","index":0,"port":null}'


@pytest.mark.parametrize(("name", "index", "port"), [("web:2", 2, 8002), ("w", 0, None), ("a" * 256, 10**6, 1),
                                                     ("ünï:1", 1, 65535)])
def test_promote_round_trip(name: str, index: int, port: int | None) -> None:
    frames = [protocol.promote_message(name, index, port)]
    assert protocol.decode_daemon_message(frames) == "promote"
    assert protocol.decode_promote(frames) == (name, index, port)


def test_promote_without_port_means_null() -> None:
    assert protocol.decode_promote([promote_body({"name": "web:2", "index": 2})]) == ("web:2", 2, None)


@pytest.mark.parametrize("fields", MALFORMED.values(), ids=MALFORMED.keys())
def test_decode_promote_refuses(fields: dict) -> None:
    frames = [promote_body(fields)]
    assert protocol.decode_daemon_message(frames) == "promote"
    with pytest.raises(protocol.ProtocolError):
        protocol.decode_promote(frames)


@pytest.mark.parametrize("frames", [
    [protocol.DRAIN], [protocol.fence_message(5.0)], [protocol.promote_message("web:2", 2, 8002), b""],
    [b'{"v":2,"type":"promote","name":"web:2","index":2,"port":8002}'], [b"[]"], [b"\xff"],
    [b'{"v":1,"type":"promote","name":"web:2","index":2,"port":NaN}'],
], ids=["drain", "fence", "two-frames", "version", "array", "not-utf8", "nan"])
def test_decode_promote_refuses_other_messages(frames: list[bytes]) -> None:
    with pytest.raises(protocol.ProtocolError):
        protocol.decode_promote(frames)
