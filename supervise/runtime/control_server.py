"""The control channel's server side: a ROUTER for CLI requests and live event streams.

Requests become core commands (their replies come back as the core's Reply
actions, matched by request id); ``events`` is served here from the event
history, with live events pushed to followers. A malformed request is
counted and answered, never raised into the loop. A bug of ours in handling
a request is answered too ("internal error"), counted apart from the
client's mistakes (``internal_errors``) and logged with its traceback.
"""

from __future__ import annotations

import asyncio
import itertools
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, NamedTuple, Protocol

import zmq

from supervise.config.model import SuperviseConfig
from supervise.core.actions import Reply
from supervise.runtime import log as log_module
from supervise.runtime.history import History
from supervise.runtime.ipc import bind_ipc
from supervise.wire import protocol

MAX_FOLLOWERS = 64


class Guard(Protocol):
    """What secures a TCP control socket (curve.ServerAuth): stopped after the socket is closed."""

    def stop(self) -> None: ...


class _Pending(NamedTuple):
    """A request handed to the core, waiting for its reply."""

    envelope: tuple[bytes, ...]  # the route back to the client
    client_id: object  # the client's own request id, echoed in the reply
    cmd: str


class ControlServer:
    """One control socket: the ipc one at `path` in the state dir, or (with `tcp`) a CURVE-secured TCP one.

    `tcp` is (endpoint, secure): `secure(sock)` makes the socket a CURVE
    server and returns what guards it, before the bind. Several servers may
    serve one daemon; they then share `request_ids`, so the core's replies,
    matched by request id, can never reach the wrong client. `log` is the
    daemon's logger (the configured structlog one when not given).
    """

    def __init__(self, ctx: zmq.Context, path: Path | None, loop: asyncio.AbstractEventLoop, history: History,
                 submit: Callable[[int, protocol.Request], None],
                 finish_status: Callable[[dict[str, object]], dict[str, object]],
                 tcp: tuple[str, Callable[[zmq.Socket], Guard]] | None = None,
                 request_ids: Iterator[int] | None = None, log: log_module.Log | None = None) -> None:
        if (path is None) == (tcp is None):
            raise ValueError("a control server listens either on an ipc path or on a tcp endpoint")
        self.loop = loop
        self.path = path
        self.history = history
        self.submit = submit
        self.finish_status = finish_status  # the shell adds what only it knows to the core's status
        self.malformed = 0  # requests that are not valid control messages: the client's fault
        self.internal_errors = 0  # requests whose handling raised: our bug
        self.requests: Counter[str] = Counter()  # valid requests by command (/metrics)
        self._bug = log_module.BugLog(log if log is not None else log_module.default(),
                                      "control request failed: internal error", clock=loop.time)
        self.followers: set[tuple[bytes, ...]] = set()  # envelopes of `events --follow` clients
        # By request id: ints handed out here, which the core echoes back as opaque objects.
        self._requests: dict[object, _Pending] = {}
        self._ids = request_ids if request_ids is not None else itertools.count(1)
        self.sock = ctx.socket(zmq.ROUTER)
        self.sock.setsockopt(zmq.ROUTER_MANDATORY, 1)  # a vanished client raises, so followers get dropped
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.setsockopt(zmq.MAXMSGSIZE, protocol.MAX_REQUEST_BYTES + 1024)
        self.guard: Guard | None = None
        if tcp is not None:
            endpoint, secure = tcp
            self.guard = secure(self.sock)  # CURVE server and its authenticator, before bind
            self.sock.bind(endpoint)
        elif path is not None:
            bind_ipc(self.sock, path)  # the daemon holds the lock: any socket file there is stale
        self._fd = self.sock.getsockopt(zmq.FD)
        loop.add_reader(self._fd, self._on_readable)

    def reply(self, reply: Reply) -> None:
        """Send the core's reply to the client that asked; one for another server's client is ignored."""
        pending = self._requests.pop(reply.request_id, None)
        if pending is None:
            return
        result = reply.result
        if pending.cmd == "status" and reply.ok and isinstance(result, dict):
            result = self.finish_status(result)
        self._send(pending.envelope, protocol.encode_reply(reply.ok, result, reply.error, reply.usage,
                                                           id=pending.client_id))

    def push(self, stamped_event: bytes) -> None:
        """A live event to every follower; one that stopped reading is dropped."""
        if not self.followers:
            return
        payload = protocol.encode_event(stamped_event)
        for envelope in list(self.followers):
            if not self._send(envelope, payload):
                self.followers.discard(envelope)

    def close(self) -> None:
        self.loop.remove_reader(self._fd)
        self.sock.close(linger=200)
        if self.guard is not None:
            self.guard.stop()  # after the socket: a closed socket needs no authenticator
        if self.path is not None:
            self.path.unlink(missing_ok=True)

    def _on_readable(self) -> None:
        # zmq.FD is edge-triggered: drain every queued message before returning.
        while self.sock.getsockopt(zmq.EVENTS) & zmq.POLLIN:
            try:
                frames = self.sock.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                break
            if len(frames) < 2:
                self.malformed += 1
                continue
            # A REQ client puts an empty delimiter after its identity; keep it
            # in the envelope so the reply finds its way back.
            split = 2 if len(frames) > 2 and frames[1] == b"" else 1
            envelope = tuple(frames[:split])
            try:
                self._on_request(envelope, frames[split:])
            except Exception as error:  # noqa: BLE001  (a bug of ours costs this one request, never the channel; logged)
                self.internal_errors += 1
                self._bug(error)
                self._send(envelope, protocol.encode_reply(False, error=f"internal error: {type(error).__name__}: "
                                                                        f"{error}"))

    def _on_request(self, envelope: tuple[bytes, ...], frames: list[bytes]) -> None:
        try:
            req = protocol.decode_request(frames)
        except protocol.ProtocolError as exc:
            self.malformed += 1
            self._send(envelope, protocol.encode_reply(False, error=f"bad request: {exc}", usage=True))
            return
        self.requests[req.cmd] += 1
        if req.cmd == "events":
            self._send(envelope, protocol.encode_events_reply(
                self.history.since(req.since), self.history.first_seq, self.history.last_seq, id=req.id))
            if req.follow:
                if len(self.followers) >= MAX_FOLLOWERS:
                    self.followers.pop()
                self.followers.add(envelope)
            return
        rid = next(self._ids)
        self._requests[rid] = _Pending(envelope, req.id, req.cmd)
        try:
            self.submit(rid, req)
        except BaseException:
            del self._requests[rid]  # no reply will come for it: the caller answers the client
            raise

    def _send(self, envelope: tuple[bytes, ...], payload: bytes) -> bool:
        try:
            self.sock.send_multipart([*envelope, payload], zmq.NOBLOCK)
            return True
        except zmq.ZMQError:  # EHOSTUNREACH: the client is gone; EAGAIN: it stopped reading
            return False
        finally:
            # Sending can consume the edge of zmq.FD; look again for queued input.
            if self.sock.getsockopt(zmq.EVENTS) & zmq.POLLIN:
                self.loop.call_soon(self._on_readable)


class Controls:
    """The daemon's control sockets as one: a reply goes to whichever holds its request."""

    def __init__(self, servers: list[ControlServer]) -> None:
        self.servers = servers

    def reply(self, reply: Reply) -> None:
        for server in self.servers:
            server.reply(reply)

    def push(self, stamped_event: bytes) -> None:
        for server in self.servers:
            server.push(stamped_event)

    def close(self) -> None:
        for server in self.servers:
            server.close()

    @property
    def malformed(self) -> int:
        return sum(server.malformed for server in self.servers)

    @property
    def internal_errors(self) -> int:
        return sum(server.internal_errors for server in self.servers)

    @property
    def requests(self) -> Counter[str]:
        return sum((server.requests for server in self.servers), Counter())



def curve_security(settings: SuperviseConfig, ctx: zmq.Context[Any],
                   log: log_module.Log) -> tuple[str, Callable[[zmq.Socket[Any]], Guard]]:
    """The TCP control endpoint and how to secure it: CURVE, only the listed client keys.
    Raises CurveError (a ValueError) for a key that cannot be used."""
    from supervise.wire import curve  # only a daemon with a TCP endpoint pays for it

    assert settings.control is not None and settings.control_key is not None
    secret = curve.load_secret(settings.control_key)
    clients = [curve.load_public(c) for c in settings.control_clients]
    log.info("control endpoint", endpoint=settings.control, server_key=secret.public,
             clients=[curve.mask(c) for c in clients])
    return settings.control, lambda sock: curve.secure_server(sock, secret, clients, ctx)
