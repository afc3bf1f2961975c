"""A small read-only HTTP/1.1 server on the daemon's own loop: `/metrics` and the dashboard.

On the loop, not in a thread (as prometheus_client's own server would be):
every handler reads the daemon's state where it lives, with no lock and no
copy, and a slow or hostile client costs a coroutine, never the loop. It
answers GET and HEAD only, one request per connection; a request line and
headers over `MAX_HEAD`, or not sent within `REQUEST_TIMEOUT`, end the
connection (431, 408), and so does a client that does not take its answer
within `WRITE_TIMEOUT`. At most `MAX_CONNECTIONS` are served at once; one
more is answered 503 and closed, so a crowd of idle clients costs bounded
memory and never delays the loop. Streams (server-sent events) stay open
until the client goes or the server closes.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from dataclasses import field
from urllib.parse import parse_qs, unquote, urlsplit

from supervise.frozen import frozen

__all__ = ["MAX_CONNECTIONS", "HttpServer", "Request", "Response", "Stream"]

REQUEST_TIMEOUT = 5.0
"""Seconds a client has to send its request line and headers."""

WRITE_TIMEOUT = 10.0
"""Seconds a client has to take its answer (a scrape of 1,000 instances is about 1 MB)."""

MAX_HEAD = 8192
"""Bytes of request line and headers at most."""

MAX_CONNECTIONS = 64
"""Connections served at once; more are answered 503 and closed."""

REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed",
           408: "Request Timeout", 431: "Request Header Fields Too Large", 500: "Internal Server Error",
           503: "Service Unavailable"}


@frozen
class Request:
    method: str
    path: str  # decoded, without the query
    query: dict[str, list[str]] = field(default_factory=dict)
    headers: dict[str, str] = field(default_factory=dict)  # names in lower case

    def arg(self, name: str, default: str | None = None) -> str | None:
        """The first value of query parameter `name`."""
        values = self.query.get(name)
        return values[0] if values else default


@frozen
class Response:
    status: int
    body: bytes
    content_type: str = "text/plain; charset=utf-8"
    headers: tuple[tuple[str, str], ...] = ()


Handler = Callable[[Request], Response]
"""Answers a request at once, on the loop: it must not block."""


class Stream:
    """An open response the handler writes events to (server-sent events)."""

    def __init__(self, writer: asyncio.StreamWriter) -> None:
        self._writer = writer

    def send(self, data: bytes) -> None:
        self._writer.write(data)

    async def drain(self) -> None:
        await self._writer.drain()

    @property
    def closing(self) -> bool:
        return self._writer.is_closing()


StreamHandler = Callable[[Request, Stream], Awaitable[None]]
"""Writes to the stream until it is done or the client goes (the handler's coroutine is then cancelled)."""


class HttpServer:
    """Routes by exact path; GET and HEAD only."""

    def __init__(self, host: str, port: int, on_error: Callable[[str, BaseException], None] | None = None) -> None:
        self.host, self.port = host, port
        self.on_error = on_error  # a handler's bug: logged by the owner, answered 500
        self._routes: dict[str, Handler] = {}
        self._streams: dict[str, tuple[str, StreamHandler]] = {}
        self._server: asyncio.Server | None = None
        self._connections: set[asyncio.Task[None]] = set()

    def route(self, path: str, handler: Handler) -> None:
        self._routes[path] = handler

    def stream(self, path: str, handler: StreamHandler, content_type: str = "text/event-stream") -> None:
        self._streams[path] = (content_type, handler)

    async def start(self) -> None:
        """Bind and listen; raises OSError (address in use, not permitted) for the caller to report."""
        # limit: the reader's buffer; readuntil() fails with LimitOverrunError past it, so a head that
        # never ends is refused at MAX_HEAD bytes instead of being buffered up to asyncio's 64 KiB.
        self._server = await asyncio.start_server(self._serve, self.host, self.port, reuse_address=True,
                                                  limit=MAX_HEAD)
        self.port = self._server.sockets[0].getsockname()[1]  # port 0: the one the kernel chose

    def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._connections):
            task.cancel()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        try:
            if len(self._connections) >= MAX_CONNECTIONS:
                await _respond(writer, Response(503, b"too many connections\n", headers=(("Retry-After", "1"),)),
                               head=False)
                return
            self._connections.add(task)
            await self._handle(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass  # the client went
        except TimeoutError:  # it does not take its answer: drop what is still buffered for it, now
            writer.transport.abort()
        finally:
            self._connections.discard(task)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), REQUEST_TIMEOUT)
        except TimeoutError:
            await _respond(writer, Response(408, b"request timeout\n"), head=False)
            return
        except asyncio.LimitOverrunError:
            await _respond(writer, Response(431, b"request head too large\n"), head=False)
            return
        if len(head) > MAX_HEAD:
            await _respond(writer, Response(431, b"request head too large\n"), head=False)
            return
        request = _parse(head)
        if request is None:
            await _respond(writer, Response(400, b"bad request\n"), head=False)
            return
        if request.method not in ("GET", "HEAD"):
            await _respond(writer, Response(405, b"read-only: GET and HEAD only\n", headers=(("Allow", "GET, HEAD"),)),
                           head=False)
            return
        if request.path in self._streams:
            content_type, streamer = self._streams[request.path]
            writer.write(_status_line(200) + _header_lines(
                (("Content-Type", content_type), ("Cache-Control", "no-cache"), ("Connection", "close"))) + b"\r\n")
            if request.method == "GET":
                await streamer(request, Stream(writer))
            return
        handler = self._routes.get(request.path)
        if handler is None:
            await _respond(writer, Response(404, b"not found\n"), head=request.method == "HEAD")
            return
        try:
            response = handler(request)
        except Exception as exc:  # noqa: BLE001  (a bug in a page must not end the server)
            if self.on_error is not None:
                self.on_error(request.path, exc)
            response = Response(500, b"internal error\n")
        await _respond(writer, response, head=request.method == "HEAD")


def _parse(head: bytes) -> Request | None:
    try:
        text = head.decode("latin-1")
        line, *header_lines = text.split("\r\n")
        method, target, version = line.split(" ")
    except ValueError:
        return None
    if not version.startswith("HTTP/1."):
        return None
    headers = {}
    for header in header_lines:
        if not header:
            continue
        name, sep, value = header.partition(":")
        if not sep:
            return None
        headers[name.strip().lower()] = value.strip()
    parts = urlsplit(target)
    return Request(method, unquote(parts.path), parse_qs(parts.query), headers)


def _status_line(status: int) -> bytes:
    return f"HTTP/1.1 {status} {REASONS.get(status, 'Unknown')}\r\n".encode()


def _header_lines(headers: tuple[tuple[str, str], ...]) -> bytes:
    return "".join(f"{name}: {value}\r\n" for name, value in headers).encode("latin-1")


async def _respond(writer: asyncio.StreamWriter, response: Response, head: bool) -> None:
    headers = (("Content-Type", response.content_type), ("Content-Length", str(len(response.body))),
               ("Connection", "close"), *response.headers)
    writer.write(_status_line(response.status) + _header_lines(headers) + b"\r\n")
    if not head:
        writer.write(response.body)
    await asyncio.wait_for(writer.drain(), WRITE_TIMEOUT)
