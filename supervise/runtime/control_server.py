"""The control channel's server side: a ROUTER for CLI requests and live event streams.

Requests become core commands (their replies come back as the core's Reply
actions, matched by request id); ``events`` is served here from the event
history, with live events pushed to followers. A malformed frame is counted
and answered, never raised into the loop.
"""

from __future__ import annotations

import asyncio
import itertools
import os
from collections.abc import Callable, Iterator
from pathlib import Path

import zmq

from supervise.wire import protocol
from supervise.core.events import Reply
from supervise.runtime.history import History

MAX_FOLLOWERS = 64


def allow_own_uid(sock: zmq.Socket) -> None:
    """Accept ipc connections only from our own user (and root), by the peer's SO_PEERCRED.

    The socket file is 0600 in a 0700 directory, which already keeps others
    out; this holds even if those modes are loosened by mistake. Call before bind.
    """
    for uid in {os.getuid(), 0}:
        try:
            sock.setsockopt(zmq.IPC_FILTER_UID, uid)
        except (zmq.ZMQError, AttributeError):  # a libzmq built without it: the file modes remain
            return


class ControlServer:
    """One control socket: the ipc one in the state dir, or (with `tcp`) a CURVE-secured TCP one.

    Several may serve one daemon; they then share `request_ids`, so the
    core's replies, matched by request id, can never reach the wrong client.
    """

    def __init__(self, ctx: zmq.Context, path: Path | None, loop: asyncio.AbstractEventLoop, history: History,
                 submit: Callable[[int, protocol.Request], None], status_extra: Callable[[], dict],
                 tcp: tuple[str, Callable[[zmq.Socket], object]] | None = None,
                 request_ids: Iterator[int] | None = None) -> None:
        self.loop = loop
        self.path = path
        self.history = history
        self.submit = submit
        self.status_extra = status_extra
        self.malformed = 0
        self.followers: set[tuple[bytes, ...]] = set()  # envelopes of `events --follow` clients
        self._requests: dict[int, tuple[tuple[bytes, ...], object, str]] = {}  # id -> (envelope, client id, cmd)
        self._ids = request_ids if request_ids is not None else itertools.count(1)
        self.sock = ctx.socket(zmq.ROUTER)
        self.sock.setsockopt(zmq.ROUTER_MANDATORY, 1)  # a vanished client raises, so followers get dropped
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.setsockopt(zmq.MAXMSGSIZE, protocol.MAX_REQUEST_BYTES + 1024)
        if tcp is not None:
            endpoint, secure = tcp
            self.guard = secure(self.sock)  # CURVE server and its authenticator, before bind
            self.sock.bind(endpoint)
        else:
            self.guard = None
            allow_own_uid(self.sock)
            path.unlink(missing_ok=True)  # the daemon holds the lock: any socket file here is stale
            old_umask = os.umask(0o077)
            try:
                self.sock.bind(f"ipc://{path}")
            finally:
                os.umask(old_umask)
            os.chmod(path, 0o600)
        self._fd = self.sock.getsockopt(zmq.FD)
        loop.add_reader(self._fd, self._on_readable)

    def reply(self, reply: Reply) -> None:
        envelope, client_id, cmd = self._requests.pop(reply.request_id, (None, None, None))
        if envelope is None:
            return
        result = reply.result
        if cmd == "status" and reply.ok:
            result = {**result, "daemon": self.status_extra()}
        self._send(envelope, protocol.encode_reply(reply.ok, result, reply.error, reply.usage, id=client_id))

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
            try:
                self._on_request(tuple(frames[:split]), frames[split:])
            except Exception as exc:  # a bug costs this one request, never the control channel
                self.malformed += 1
                self._send(tuple(frames[:split]), protocol.encode_reply(
                    False, error=f"internal error: {type(exc).__name__}: {exc}"))

    def _on_request(self, envelope: tuple[bytes, ...], frames: list[bytes]) -> None:
        try:
            req = protocol.decode_request(frames)
        except protocol.ProtocolError as exc:
            self.malformed += 1
            self._send(envelope, protocol.encode_reply(False, error=f"bad request: {exc}", usage=True))
            return
        if req.cmd == "events":
            self._send(envelope, protocol.encode_events_reply(
                self.history.since(req.since), self.history.first_seq, self.history.last_seq, id=req.id))
            if req.follow:
                if len(self.followers) >= MAX_FOLLOWERS:
                    self.followers.pop()
                self.followers.add(envelope)
            return
        rid = next(self._ids)
        self._requests[rid] = (envelope, req.id, req.cmd)
        self.submit(rid, req)

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

