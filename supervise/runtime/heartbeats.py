"""The heartbeat channel's server side: a ROUTER that turns valid worker messages into core events.

Trust comes from the per-spawn token alone: a message whose token is unknown,
stale (an earlier spawn) or paired with another instance's name is counted
and dropped, so a stranger on the socket can neither keep a hung worker
alive nor fake readiness. Malformed frames are counted and dropped; nothing
a worker sends can raise into the event loop. Nor can a bug of ours in
handling one message: it is counted apart (``internal_errors``, so that a
bug never hides among the clients' mistakes) and logged with its traceback,
and the server reads on.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import zmq

from supervise.core.events import Drained, Event, Ready
from supervise.runtime import log as log_module
from supervise.runtime.ipc import bind_ipc
from supervise.wire import protocol

BATCH = 5000  # messages per loop callback, so a flood cannot starve other work
READ_PAUSE = 0.03
"""After reading, leave the socket alone this long so messages arrive in batches.

At 1,000 workers beating once a second, waking the loop per message costs
more than handling the messages. A beat only moves a timestamp and hang
checks allow far more than 30 ms of slack; ready and drained wait at most this.
"""


@dataclass(slots=True)
class Counters:
    """What came in on the heartbeat socket; ``status --json`` shows them as ``daemon.heartbeats``."""

    accepted: int = 0
    rejected: int = 0  # well-formed, but a wrong or stale token
    malformed: int = 0  # not a heartbeat message: the sender's fault
    internal_errors: int = 0  # a well-formed message whose handling raised: our bug

    def as_json(self) -> dict[str, int]:
        return {"accepted": self.accepted, "rejected": self.rejected, "malformed": self.malformed,
                "internal_errors": self.internal_errors}


class HeartbeatServer:
    """The ROUTER at ``ipc://<path>``: every worker's beats, readiness and drain handshake.

    `deliver` takes Ready and Drained events; `beat` takes (spawn id, status
    fields) on the hot path, straight to the core. `log` is the daemon's
    logger (the configured structlog one when not given).
    """

    def __init__(self, ctx: zmq.Context, path: Path, loop: asyncio.AbstractEventLoop,
                 deliver: Callable[[Event], None], beat: Callable[[int, Mapping[str, object] | None], None],
                 log: log_module.Log | None = None, others: frozenset[int] = frozenset()) -> None:
        self.loop = loop
        self.deliver = deliver
        self.beat = beat  # the hot path: straight to the core, no event queue
        self.path = path
        self.counters = Counters()
        self._bug = log_module.BugLog(log if log is not None else log_module.default(),
                                      "heartbeat message dropped: internal error", clock=loop.time)
        self._tokens: dict[str, tuple[int, str]] = {}  # token -> (spawn id, instance name)
        self._spare_names: dict[str, str] = {}  # a promoted spare's token -> its spare name, still accepted
        self._routes: dict[int, bytes] = {}  # spawn id -> routing id of its last valid message
        self._awaiting_ready: set[int] = set()  # adopted while starting: a beat saying ready counts
        self._fence_pending: dict[int, float] = {}  # singleton spawn id -> an extension it could not get yet
        self._promote_pending: dict[int, bytes] = {}  # spawn id -> a promotion for its first message
        self.sock = ctx.socket(zmq.ROUTER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.setsockopt(zmq.ROUTER_MANDATORY, 1)
        self.sock.setsockopt(zmq.MAXMSGSIZE, protocol.MAX_HEARTBEAT_BYTES)
        self.sock.setsockopt(zmq.RCVHWM, 100_000)
        bind_ipc(self.sock, path, others)  # others: the uids of apps run as another user
        self._fd = self.sock.getsockopt(zmq.FD)
        self._paused: asyncio.TimerHandle | None = None
        self._reading = False

    def start_reading(self) -> None:
        """Read from now on. Until then workers may connect and send: their messages
        wait in the socket, so that adopted workers' first beats, sent the moment they
        reconnect, are read once their tokens are registered rather than rejected."""
        self._reading = True
        self.loop.add_reader(self._fd, self._on_readable)
        self._on_readable()

    def register(self, token: str, spawn_id: int, name: str) -> None:
        """Accept messages carrying `token` and `name` as spawn `spawn_id`'s, from now on."""
        self._tokens[token] = (spawn_id, name)

    def unregister(self, token: str, spawn_id: int) -> None:
        """The spawn is gone: its token is stale from now on, its messages rejected."""
        self._tokens.pop(token, None)
        self._spare_names.pop(token, None)
        self._routes.pop(spawn_id, None)
        self._awaiting_ready.discard(spawn_id)
        self._fence_pending.pop(spawn_id, None)
        self._promote_pending.pop(spawn_id, None)

    def await_ready(self, spawn_id: int) -> None:
        """An adopted instance still `starting`: its ready message may have gone to the dead
        daemon, so a beat that says ready (the client sends that after ready()) stands in for it."""
        self._awaiting_ready.add(spawn_id)

    def send_drain(self, spawn_id: int) -> bool:
        """Ask a worker to drain; False when it never spoke (it still gets its stop signal)."""
        route = self._routes.get(spawn_id)
        return route is not None and self._send(route, protocol.DRAIN)

    def promote(self, spawn_id: int, token: str, name: str, index: int, port: int | None) -> bool:
        """A spare is instance `name` from now on: its messages may carry that name (and, for those
        already on their way, its spare name), and it is told which slot it took."""
        known = self._tokens.get(token)
        if known is None or known[0] != spawn_id:
            return False
        if known[1] != name:
            self._spare_names[token] = known[1]
            self._tokens[token] = (spawn_id, name)
        message = protocol.promote_message(name, index, port)
        route = self._routes.get(spawn_id)
        if route is None:  # adopted, not heard from since: told with its first message
            self._promote_pending[spawn_id] = message
            return True
        return self._send(route, message)

    def _send(self, route: bytes, message: bytes) -> bool:
        """One message to one worker, never blocking; False when it cannot be queued."""
        try:
            self.sock.send_multipart([route, message], zmq.NOBLOCK)
            return True
        except zmq.ZMQError:
            return False
        finally:
            self._recheck()

    def send_fence(self, spawn_id: int, until: float) -> bool:
        """Extend a singleton worker's fencing deadline; one that has not spoken yet gets it with
        its first message (else a singleton started just before a renewal would stop early)."""
        route = self._routes.get(spawn_id)
        if route is None:
            self._fence_pending[spawn_id] = until
            return False
        return self._send(route, protocol.fence_message(until))

    def _recheck(self) -> None:
        # zmq.FD is edge-triggered and a send can consume the edge: look again.
        if self._paused is None and self.sock.getsockopt(zmq.EVENTS) & zmq.POLLIN:
            self.loop.call_soon(self._on_readable)

    def _resume(self) -> None:
        self._paused = None
        self.loop.add_reader(self._fd, self._on_readable)
        self._on_readable()  # the edge may have passed while we were not watching

    def _on_readable(self) -> None:
        if self._paused is not None:
            return
        count = self._read_batch()
        if count == BATCH:  # a flood: more is queued; let other work run, then read on
            self.loop.call_soon(self._on_readable)
        elif count:
            self.loop.remove_reader(self._fd)
            self._paused = self.loop.call_later(READ_PAUSE, self._resume)

    def _read_batch(self) -> int:
        """Handle up to BATCH queued messages; returns how many there were."""
        sock, counters = self.sock, self.counters
        for count in range(BATCH):
            try:
                frames = sock.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return count
            except zmq.ZMQError:
                counters.malformed += 1
                continue
            try:
                msg = protocol.decode_heartbeat(frames[1:])
            except protocol.ProtocolError:
                counters.malformed += 1
                continue
            try:
                self._handle(frames[0], msg)
            except Exception as error:  # noqa: BLE001  (a bug of ours costs this one message, never the loop; logged)
                counters.internal_errors += 1
                self._bug(error, name=_printable(msg.name))
        return BATCH

    def _handle(self, route: bytes, msg: protocol.Heartbeat) -> None:
        """One well-formed message: checked against the tokens, then to the core.

        Counted as accepted once handled, so that every message read lands in
        exactly one counter (one whose handling raised: ``internal_errors``).
        """
        known = self._tokens.get(msg.token)
        if known is None or (known[1] != msg.name and self._spare_names.get(msg.token) != msg.name):
            self.counters.rejected += 1
            return
        spawn_id = known[0]
        self._routes[spawn_id] = route
        if self._fence_pending and spawn_id in self._fence_pending:
            self.send_fence(spawn_id, self._fence_pending.pop(spawn_id))
        if self._promote_pending and spawn_id in self._promote_pending:
            self._send(route, self._promote_pending.pop(spawn_id))
        if msg.type == "beat":
            self.beat(spawn_id, msg.status)
            if msg.ready and self._awaiting_ready and spawn_id in self._awaiting_ready:
                self._awaiting_ready.discard(spawn_id)
                self.deliver(Ready(spawn_id))
        elif msg.type == "ready":
            self.deliver(Ready(spawn_id))
            if msg.status:
                self.beat(spawn_id, msg.status)
        else:
            self.deliver(Drained(spawn_id))
        self.counters.accepted += 1

    def close(self) -> None:
        if self._paused is not None:
            self._paused.cancel()
        if self._reading:
            self.loop.remove_reader(self._fd)
        self.sock.close(linger=0)
        self.path.unlink(missing_ok=True)


def _printable(value: object) -> str:
    """A client's string as it may go into our log: bounded, one line."""
    text = str(value)[:64]
    return text if text.isprintable() else repr(text)
