"""HTTP and TCP probe checks: a GET on a new connection, or a connection alone, on the daemon's loop."""

from __future__ import annotations

import asyncio
import errno
import ipaddress
import os
import socket
import struct
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

from supervise.frozen import frozen
from supervise.runtime.probe_checks import Check, Context, Done, InvalidTarget, seconds

__all__ = ["Endpoint", "HttpTarget", "TcpTarget", "parse_address"]

STATUS_LIMIT = 1024  # bytes of an HTTP response read looking for the status line
USER_AGENT = "supervise-probe"
# SO_LINGER on, 0 s: close() resets the connection instead of leaving it in TIME_WAIT. A probe
# opens a connection per instance per interval; Kubernetes ran out of ephemeral ports on busy
# nodes until its probes did the same (kubernetes#89898).
LINGER_RESET = struct.pack("ii", 1, 0)


@frozen
class Endpoint:
    """Where to connect: an address ready for connect(), or a host name to resolve first."""

    family: int
    address: Any  # (host, port), a unix path; None: resolve `host` at each check
    host: str
    port: int
    shown: str  # as reasons quote it: "127.0.0.1:8001", "[::1]:80", "unix:/run/web.sock"


def parse_address(text: str) -> Endpoint | str:
    """``HOST:PORT``, ``[V6]:PORT`` or ``unix:PATH`` (``unix:@NAME``: abstract); a str says what is wrong."""
    if text.startswith("unix:"):
        path = text[5:]
        if not path:
            return f"no path in {text!r}"
        address = "\0" + path[1:] if path.startswith("@") else path
        return Endpoint(socket.AF_UNIX, address, "", 0, text)
    host, sep, port_text = text.rpartition(":")
    if not sep or not port_text.isdigit() or not 0 < int(port_text) < 65536:
        return f"expected HOST:PORT, [V6]:PORT or unix:PATH, got {text!r}"
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host:
        return f"an IPv6 address takes brackets: [{host}]:{port_text}"
    return _endpoint(host, int(port_text))


def _endpoint(host: str, port: int) -> Endpoint | str:
    if not host:
        return f"no host in {host}:{port}"
    shown = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:  # a name: resolved at each check, off the loop
        return Endpoint(socket.AF_UNSPEC, None, host, port, shown)
    family = socket.AF_INET6 if ip.version == 6 else socket.AF_INET
    return Endpoint(family, (host, port), host, port, shown)


@frozen
class TcpTarget:
    """Passes when a connection is made (and closed at once)."""

    endpoint: Endpoint

    def start(self, ctx: Context, timeout: float, done: Done) -> Check:
        return _Connection(ctx, self.endpoint, None, "", timeout, done)


@frozen
class HttpTarget:
    """GET `url`: passes on a status of 200-399. Only the status line is read."""

    endpoint: Endpoint
    url: str
    request: bytes

    @classmethod
    def parse(cls, url: str) -> HttpTarget | InvalidTarget:
        try:
            parts = urlsplit(url)
            port = parts.port or 80
        except ValueError as exc:
            return InvalidTarget(f"bad URL {url!r}: {exc}")
        if parts.scheme != "http":
            return InvalidTarget(f"only http:// URLs can be probed, got {url!r} (or probe the port with tcp)")
        endpoint = _endpoint(parts.hostname or "", port)
        if isinstance(endpoint, str):
            return InvalidTarget(f"bad URL {url!r}: {endpoint}")
        path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        host = parts.netloc.rpartition("@")[2]
        request = (f"GET {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: {USER_AGENT}\r\nAccept: */*\r\n"
                   "Connection: close\r\n\r\n").encode("latin-1", errors="replace")
        return cls(endpoint, url, request)

    def start(self, ctx: Context, timeout: float, done: Done) -> Check:
        return _Connection(ctx, self.endpoint, self.request, self.url, timeout, done)


class _Connection:
    """Connect, then with a request (http) send it and read up to the status line.

    On loopback a non-blocking connect() has usually finished by the time it
    returns EINPROGRESS (the handshake runs before the call releases the
    socket), so the request is sent at once, and only a handshake still on
    its way waits for writability. The response is read after the context's
    Pause, with the others of its batch; only one not there by then is
    waited for with add_reader.
    """

    __slots__ = ("_ctx", "_loop", "_endpoint", "_request", "_url", "_timeout", "_done", "_sock", "_fd",
                 "_stage", "_buffer", "_watching", "_resolving", "_over")

    def __init__(self, ctx: Context, endpoint: Endpoint, request: bytes | None, url: str, timeout: float,
                 done: Done) -> None:
        self._ctx = ctx
        self._loop = ctx.loop
        self._endpoint = endpoint
        self._request = request
        self._url = url
        self._timeout = timeout
        self._done = done
        self._sock: socket.socket | None = None
        self._fd = -1
        self._stage = "connecting"
        self._buffer = b""
        self._watching = 0  # 0, or 1 for a reader, 2 for a writer on _fd
        self._resolving: asyncio.Future[Any] | None = None
        self._over = False
        try:
            if endpoint.address is None:
                self._stage = "resolving"
                self._resolving = ctx.resolver.lookup(endpoint.host, endpoint.port)
                self._resolving.add_done_callback(self._resolved)
            else:
                self._connect(endpoint.family, endpoint.address)
        except Exception as exc:  # noqa: BLE001 - a probe never raises into the loop: it fails, saying why
            self._finish(f"probe error: {type(exc).__name__}: {exc}")

    def cancel(self) -> None:
        self._close()

    def _resolved(self, future: asyncio.Future[Any]) -> None:
        if self._over or future.cancelled():
            return
        error = future.exception()
        if error is not None or not future.result():
            self._finish(f"cannot resolve {self._endpoint.host}: {error or 'no address'}")
            return
        family, _, _, _, address = future.result()[0]
        self._stage = "connecting"
        self._guarded(self._connect, family, address)

    def _connect(self, family: int, address: Any) -> None:
        sock = self._sock = socket.socket(family, socket.SOCK_STREAM | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC)
        self._fd = sock.fileno()
        if family != socket.AF_UNIX:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, LINGER_RESET)
        err = sock.connect_ex(address)
        if err not in (0, errno.EINPROGRESS):  # a unix socket's EAGAIN: its listen backlog is full
            self._finish(self._connect_failed(err))
        elif self._request is None:
            self._tcp_progress()
        else:
            self._send()

    def _connect_failed(self, err: int) -> str:
        if err == errno.ECONNREFUSED:
            return f"connect refused {self._endpoint.shown}"
        return f"connect to {self._endpoint.shown}: {os.strerror(err)}"

    def _tcp_progress(self) -> None:
        assert self._sock is not None
        err = self._sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if err:
            self._finish(self._connect_failed(err))
            return
        try:
            self._sock.getpeername()
        except OSError:  # ENOTCONN: the handshake is still on its way
            self._watch(2, self._on_writable)
            return
        self._finish(None)

    def _send(self) -> None:
        assert self._sock is not None and self._request is not None
        try:
            sent = self._sock.send(self._request)
        except (BlockingIOError, InterruptedError):  # not connected yet (or a full buffer): wait for it
            self._watch(2, self._on_writable)
            return
        except OSError as exc:
            self._finish(self._connect_failed(exc.errno or errno.EIO) if self._stage == "connecting"
                         else f"{self._url}: {exc.strerror}")
            return
        self._stage = "waiting"
        self._request = self._request[sent:]
        if self._request:
            self._watch(2, self._on_writable)
        else:
            self._unwatch()
            self._ctx.pause.defer(self._on_paused)

    def _on_paused(self) -> None:
        if not self._over:
            self._guarded(self._read)
            if not self._over:  # no answer yet: wait for it
                self._watch(1, self._on_readable)

    def _on_writable(self) -> None:
        self._guarded(self._tcp_progress if self._request is None else self._send)

    def _on_readable(self) -> None:
        self._guarded(self._read)

    def _read(self) -> None:
        assert self._sock is not None
        try:
            data = self._sock.recv(STATUS_LIMIT)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            self._finish(f"{self._url}: {exc.strerror}")
            return
        if not data:
            self._finish(f"connection closed by {self._endpoint.shown} before a response to {self._url}")
            return
        self._buffer += data
        end = self._buffer.find(b"\n")
        if end >= 0:
            self._finish(self._status(self._buffer[:end]))
        elif len(self._buffer) >= STATUS_LIMIT:
            self._finish(self._status(self._buffer))

    def _status(self, line: bytes) -> str | None:
        line = line.rstrip(b"\r")
        parts = line.split(None, 2)
        if len(parts) < 2 or not parts[0].startswith(b"HTTP/") or len(parts[1]) != 3 or not parts[1].isdigit():
            return f"not an HTTP response from {self._url}: {line[:60].decode(errors='replace')!r}"
        status = int(parts[1])
        return None if 200 <= status < 400 else f"http {status} from {self._url}"

    def expire(self) -> None:
        match self._stage:
            case "resolving":
                where = f"resolving {self._endpoint.host}"
            case "connecting":
                where = f"connecting to {self._endpoint.shown}"
            case _:
                where = f"waiting for {self._url}"
        self._finish(f"timed out after {seconds(self._timeout)} {where}")

    def _watch(self, what: int, callback: Callable[[], None]) -> None:
        if self._watching == what:
            return
        self._unwatch()
        if what == 1:
            self._loop.add_reader(self._fd, callback)
        else:
            self._loop.add_writer(self._fd, callback)
        self._watching = what

    def _unwatch(self) -> None:
        if self._watching == 1:
            self._loop.remove_reader(self._fd)
        elif self._watching == 2:
            self._loop.remove_writer(self._fd)
        self._watching = 0

    def _guarded(self, step: Callable[..., None], *args: Any) -> None:
        try:
            step(*args)
        except Exception as exc:  # noqa: BLE001 - a probe never raises into the loop: it fails, saying why
            self._finish(f"probe error: {type(exc).__name__}: {exc}")

    def _finish(self, reason: str | None) -> None:
        if self._over:
            return
        self._close()
        self._done(reason)

    def _close(self) -> None:
        if self._over:
            return
        self._over = True
        if self._resolving is not None:  # shared with other checks: let go of it, never cancel it
            self._resolving.remove_done_callback(self._resolved)
        if self._sock is not None:
            self._unwatch()
            self._sock.close()
