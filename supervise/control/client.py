"""The control channel's transport, and the errors every control call raises.

``Control`` sends one request and reads its reply (or an events stream);
``control.api.Client``, the public API's and the CLI's client, builds the
requests. The errors carry the CLI's exit codes. It speaks ZMTP directly
over the ipc socket (supervise.wire.zmtp) instead of importing pyzmq, which
alone would cost more than the whole `status` budget. Only a TCP endpoint,
which needs CURVE, pays for pyzmq.
"""

from __future__ import annotations

import json

from supervise.wire import protocol, zmtp
from supervise.wire.statedir import StatePaths

# typing.TYPE_CHECKING without importing typing, which nothing else on the CLI's path imports.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from types import TracebackType
    from typing import Any, Protocol, Self, TypeAlias

    JSONObject: TypeAlias = dict[str, Any]
    """A decoded reply's result: a JSON object whose fields each verb documents (docs/protocol.md)."""

    class Connection(Protocol):
        """One connection to a daemon: zmtp.DealerConnection (ipc) or _CurveConnection (tcp)."""

        def send(self, frames: list[bytes]) -> None: ...
        def recv(self, timeout: float | None) -> list[bytes]: ...
        def close(self) -> None: ...
        def __enter__(self) -> Self: ...
        def __exit__(self, et: type[BaseException] | None, ev: BaseException | None,
                     tb: TracebackType | None, /) -> None: ...


class ClientError(Exception):
    """Something a request to the daemon could not do; ``str()`` says what, for a person.

    Each kind carries the exit code the CLI gives it (``exit_code``), so a
    script and the command line agree on what went wrong.
    """

    exit_code = 1
    usage = False  # the request was wrong in itself (exit code 2)


class OperationFailed(ClientError):
    """The operation was tried and did not succeed: an instance gave up, a rollout failed,
    no answer in time (exit code 1)."""


class UsageError(ClientError):
    """A request wrong in itself: an unknown app or instance, a bad signal name, a bad
    config file (exit code 2)."""

    exit_code = 2
    usage = True


class NoDaemon(ClientError):
    """No daemon holds this state dir, or none accepts commands there yet (exit code 3)."""

    exit_code = 3


ControlError = ClientError
"""The former name of :class:`ClientError` (``usage`` tells a bad request from a failure)."""


def _refused(message: str, usage: bool) -> ClientError:
    return UsageError(message) if usage else OperationFailed(message)


LIVE_ONLY = 2**53 - 1
"""An ``events`` ``since`` above every sequence number: no history, only live events (and the reply's ``last``)."""


class Remote:
    """A daemon's TCP control endpoint, and the CURVE keys to reach it."""

    def __init__(self, endpoint: str, key_file: str, server_key: str) -> None:
        self.endpoint, self.key_file, self.server_key = endpoint, key_file, server_key


class _CurveConnection:
    """The DealerConnection interface over pyzmq with CURVE (the stdlib cannot do Curve25519)."""

    def __init__(self, remote: Remote) -> None:
        import zmq

        from supervise.wire import curve

        try:
            client = curve.load_secret(remote.key_file)
            server = curve.load_public(remote.server_key)
        except curve.CurveError as exc:
            raise UsageError(str(exc)) from None
        self.endpoint = remote.endpoint
        self._zmq = zmq
        self._ctx = zmq.Context()
        self._sock = self._ctx.socket(zmq.DEALER)
        self._sock.setsockopt(zmq.LINGER, 0)
        curve.secure_client(self._sock, client, server)
        self._sock.connect(remote.endpoint)

    def send(self, frames: list[bytes]) -> None:
        self._sock.send_multipart(frames)

    def recv(self, timeout: float | None) -> list[bytes]:
        if not self._sock.poll(None if timeout is None else int(timeout * 1000)):
            raise TimeoutError
        return self._sock.recv_multipart()

    def close(self) -> None:
        self._sock.close(linger=0)
        self._ctx.term()

    def __enter__(self) -> _CurveConnection:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Control:
    """Requests to one daemon: the local one of a state dir, or a remote one over CURVE."""

    def __init__(self, daemon: StatePaths | Remote) -> None:
        self.daemon = daemon

    def _connect(self, timeout: float) -> Connection:
        if isinstance(self.daemon, Remote):
            return _CurveConnection(self.daemon)
        paths = self.daemon
        if paths.lock_holder() is None:
            raise NoDaemon(f"no supervise daemon is running for state dir {paths.root} "
                           "(start one with `supervise run -c FILE`)")
        try:
            return zmtp.DealerConnection.connect_ipc(str(paths.control_socket), timeout)
        except (FileNotFoundError, ConnectionRefusedError):
            raise NoDaemon(f"the supervise daemon for {paths.root} is not accepting commands "
                           "(it may be starting or stopping; try again)") from None
        except TimeoutError:
            raise OperationFailed(f"the daemon for {paths.root} did not answer within {timeout:g}s") from None
        except (OSError, zmtp.ZmtpError) as exc:
            raise OperationFailed(f"cannot talk to the daemon for {paths.root}: {exc}") from None

    def request(self, req: protocol.Request, timeout: float = 10.0) -> JSONObject:
        """Send one request and return its result; raises UsageError or OperationFailed on a refusal."""
        return self._result(self._decode(self._exchange(req, timeout)))

    def request_json(self, req: protocol.Request, timeout: float = 10.0) -> bytes:
        """`request`'s result as JSON text, for printing: the daemon's own bytes when they can be cut
        out of its reply (protocol.result_json), else decoded, checked and encoded again."""
        frames = self._exchange(req, timeout)
        raw = protocol.result_json(frames)
        if raw is not None and raw.startswith(b"{"):  # every verb's result is an object (docs/protocol.md)
            return raw
        return json.dumps(self._result(self._decode(frames))).encode()

    def shutdown(self, keep_workers: bool = False) -> JSONObject:
        """Ask for a drain (or, keeping the workers, just an exit) and wait until the daemon is gone."""
        with self._connect(10.0) as conn:
            conn.send([protocol.encode_request(protocol.Request("shutdown", keep_workers=keep_workers))])
            result = self._result(self._recv_reply(conn, 10.0))
            if isinstance(self.daemon, Remote):
                return result  # over TCP a closed connection is not seen: the reply is all we get
            try:
                while True:  # the daemon closes our connection as it exits
                    conn.recv(timeout=None)
            except zmtp.ZmtpError:
                pass
        _wait_unlocked(self.daemon)
        return result

    def events(self, since: int | None, follow: bool, idle: float | None = None) -> EventStream:
        """History after ``since`` (None: none, only what happens from now), then (with ``follow``) live
        events until the daemon exits, or until none has come for ``idle`` seconds. Subscribed before
        this returns: what happens after the call is in the stream."""
        conn = self._connect(10.0)
        try:
            asked = LIVE_ONLY if since is None else since
            conn.send([protocol.encode_request(protocol.Request("events", since=asked, follow=follow))])
            result = self._result(self._recv_reply(conn, 10.0))
        except BaseException:
            conn.close()
            raise
        return EventStream(conn, result["events"], result["last"] if since is None else since, follow, idle)

    def _exchange(self, req: protocol.Request, timeout: float) -> list[bytes]:
        """One request on a connection of its own, and the reply's frames."""
        with self._connect(timeout) as conn:
            conn.send([protocol.encode_request(req)])
            return self._recv_frames(conn, timeout)

    def _recv_reply(self, conn: Connection, timeout: float) -> protocol.Reply:
        return self._decode(self._recv_frames(conn, timeout))

    def _recv_frames(self, conn: Connection, timeout: float) -> list[bytes]:
        try:
            return conn.recv(timeout)
        except TimeoutError:
            if isinstance(self.daemon, Remote):
                raise OperationFailed(f"no answer from {self.daemon.endpoint} within {timeout:g}s: no daemon there, "
                                   "or the keys do not match (this client's public key must be in the "
                                   "daemon's control_clients, and --server-key must be the daemon's public "
                                   "key)") from None
            raise OperationFailed(f"the daemon did not answer within {timeout:g}s") from None
        except zmtp.ZmtpError:
            raise OperationFailed("the daemon closed the connection (is it shutting down?)") from None

    @staticmethod
    def _decode(frames: list[bytes]) -> protocol.Reply:
        try:
            return protocol.decode_reply(frames)
        except protocol.ProtocolError as exc:
            raise OperationFailed(f"unreadable reply from the daemon: {exc}") from None

    @staticmethod
    def _result(reply: protocol.Reply) -> JSONObject:
        if not reply.ok:
            raise _refused(reply.error or "failed", reply.usage)
        if not isinstance(reply.result, dict):  # every verb's result is an object (docs/protocol.md)
            raise OperationFailed(f"unreadable reply from the daemon: a result of type {type(reply.result).__name__}")
        return reply.result


class EventStream:
    """The events of one ``events`` request: an iterator over decoded events (dicts) holding its
    connection until it ends, is closed, or is left (a ``with`` block, or garbage)."""

    def __init__(self, conn: Connection, history: list[JSONObject], last: int, follow: bool,
                 idle: float | None) -> None:
        self._conn: Connection | None = conn
        self._history = iter(history)
        self._last, self._follow, self._idle = last, follow, idle

    def __iter__(self) -> EventStream:
        return self

    def __next__(self) -> JSONObject:
        for event in self._history:
            self._last = event["seq"]
            return event
        while self._conn is not None and self._follow:
            try:
                frames = self._conn.recv(timeout=self._idle)
                reply = protocol.decode_reply(frames)
            except (zmtp.ZmtpError, TimeoutError, protocol.ProtocolError):
                break  # the daemon is gone (or said nothing for `idle` seconds): the stream ends
            if reply.event is not None and reply.event.get("seq", 0) > self._last:
                self._last = reply.event["seq"]
                return reply.event
        self.close()
        raise StopIteration

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def __enter__(self) -> EventStream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        self.close()


def _wait_unlocked(paths: StatePaths) -> None:
    """The daemon releases its lock as its very last act; wait for it briefly."""
    import time

    deadline = time.monotonic() + 10.0
    while paths.lock_holder() is not None and time.monotonic() < deadline:
        time.sleep(0.002)
