"""The daemon's small HTTP server (runtime/http.py), over real loopback sockets: what it answers, and
what it refuses (methods, oversized or slow requests, too many connections, clients that do not read)."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Awaitable, Callable

import pytest

from supervise.runtime import http
from supervise.runtime.http import HttpServer, Request, Response, Stream

Scenario = Callable[[HttpServer], Awaitable[None]]


def run(scenario: Scenario, errors: list[tuple[str, BaseException]] | None = None) -> None:
    """Serve a hello page, a failing page and a stream on a free loopback port; play `scenario` against it."""
    async def main() -> None:
        server = HttpServer("127.0.0.1", 0, on_error=lambda path, exc: (errors if errors is not None else []).append(
            (path, exc)))
        server.route("/hello", lambda request: Response(200, f"hello {request.arg('who', 'world')}\n".encode(),
                                                        headers=(("X-Test", "1"),)))
        server.route("/boom", _boom)
        server.stream("/events", _events)
        await server.start()
        try:
            await asyncio.wait_for(scenario(server), 20)
        finally:
            server.close()
            await asyncio.sleep(0)  # the cancelled connections finish
    asyncio.run(main())


def _boom(request: Request) -> Response:
    raise RuntimeError("a bug in a page")


async def _events(request: Request, stream: Stream) -> None:
    for n in range(3):
        stream.send(f"data: {n}\n\n".encode())
        await stream.drain()
    await asyncio.sleep(3600)  # until the client goes or the server closes


async def exchange(port: int, raw: bytes) -> bytes:
    """Send `raw`, read until the server closes the connection."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(raw)
    await writer.drain()
    try:
        return await asyncio.wait_for(reader.read(), 10)
    finally:
        writer.close()


def parse(response: bytes) -> tuple[int, dict[str, str], bytes]:
    head, _, body = response.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {name.lower(): value.strip() for name, _, value in (line.partition(":") for line in lines)}
    return int(status_line.split(" ")[1]), headers, body


def get(path: str, method: str = "GET", extra: str = "") -> bytes:
    return f"{method} {path} HTTP/1.1\r\nHost: x\r\n{extra}\r\n".encode()


async def until(predicate: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        assert asyncio.get_running_loop().time() < deadline, "timed out"
        await asyncio.sleep(0.01)


def test_get_a_page_with_its_headers_and_query():
    async def scenario(server: HttpServer) -> None:
        status, headers, body = parse(await exchange(server.port, get("/hello?who=you")))
        assert (status, body) == (200, b"hello you\n")
        assert headers["content-length"] == str(len(body)) and headers["connection"] == "close"
        assert headers["content-type"] == "text/plain; charset=utf-8" and headers["x-test"] == "1"
    run(scenario)


def test_an_unknown_path_is_404_and_head_gets_no_body():
    async def scenario(server: HttpServer) -> None:
        status, _, body = parse(await exchange(server.port, get("/nope")))
        assert status == 404 and body == b"not found\n"
        status, headers, body = parse(await exchange(server.port, get("/nope", "HEAD")))
        assert status == 404 and body == b"" and headers["content-length"] == str(len(b"not found\n"))
    run(scenario)


def test_head_gets_the_headers_of_get_without_the_body():
    async def scenario(server: HttpServer) -> None:
        status, headers, body = parse(await exchange(server.port, get("/hello", "HEAD")))
        assert status == 200 and body == b"" and headers["content-length"] == str(len(b"hello world\n"))
    run(scenario)


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "PATCH", "OPTIONS"])
def test_anything_but_get_and_head_is_405(method):
    async def scenario(server: HttpServer) -> None:
        status, headers, body = parse(await exchange(server.port, get("/hello", method, "Content-Length: 0\r\n")))
        assert status == 405 and headers["allow"] == "GET, HEAD" and b"read-only" in body
    run(scenario)


@pytest.mark.parametrize("raw", [b"GARBAGE\r\n\r\n", b"GET /hello\r\n\r\n", b"GET /hello SPDY/3\r\n\r\n",
                                 b"GET /hello HTTP/1.1\r\nno colon here\r\n\r\n"])
def test_a_malformed_request_is_400(raw):
    async def scenario(server: HttpServer) -> None:
        status, _, _ = parse(await exchange(server.port, raw))
        assert status == 400
    run(scenario)


def test_an_oversized_head_is_431_whether_or_not_it_ends():
    async def scenario(server: HttpServer) -> None:
        never_ends = get("/hello")[:-2] + b"X-Pad: " + b"a" * (http.MAX_HEAD + 10)
        status, _, _ = parse(await exchange(server.port, never_ends))
        assert status == 431
        too_long = get("/hello", extra="X-Pad: " + "a" * http.MAX_HEAD + "\r\n")
        status, _, _ = parse(await exchange(server.port, too_long))
        assert status == 431
        just_fits = get("/hello", extra="X-Pad: " + "a" * (http.MAX_HEAD - 100) + "\r\n")
        assert len(just_fits) <= http.MAX_HEAD
        status, _, _ = parse(await exchange(server.port, just_fits))
        assert status == 200
    run(scenario)


def test_a_slow_client_gets_408_and_its_connection_ends(monkeypatch):
    monkeypatch.setattr(http, "REQUEST_TIMEOUT", 0.3)

    async def scenario(server: HttpServer) -> None:
        started = asyncio.get_running_loop().time()
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(b"GET /hello HTTP/1.1\r\n")  # and then nothing
        response = await asyncio.wait_for(reader.read(), 10)
        writer.close()
        assert parse(response)[0] == 408
        assert asyncio.get_running_loop().time() - started < 5
        await until(lambda: not server._connections)
    run(scenario)


def test_too_many_connections_are_answered_503_and_the_server_recovers(monkeypatch):
    monkeypatch.setattr(http, "MAX_CONNECTIONS", 3)

    async def scenario(server: HttpServer) -> None:
        idle = [await asyncio.open_connection("127.0.0.1", server.port) for _ in range(3)]
        await until(lambda: len(server._connections) == 3)
        status, headers, _ = parse(await exchange(server.port, get("/hello")))
        assert status == 503 and headers["retry-after"] == "1"
        _, writer = idle.pop()
        writer.close()
        await until(lambda: len(server._connections) == 2)
        assert parse(await exchange(server.port, get("/hello")))[0] == 200
        for _, writer in idle:
            writer.close()
        await until(lambda: not server._connections)
    run(scenario)


def test_a_client_that_does_not_read_is_dropped(monkeypatch):
    monkeypatch.setattr(http, "WRITE_TIMEOUT", 0.3)

    async def scenario(server: HttpServer) -> None:
        big = b"x" * (32 * 1024 * 1024)
        server.route("/big", lambda request: Response(200, big))
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.connect(("127.0.0.1", server.port))
        sock.sendall(get("/big"))  # and never reads
        await until(lambda: len(server._connections) == 1)
        await until(lambda: not server._connections)  # dropped after WRITE_TIMEOUT, its buffer with it
        received = await asyncio.get_running_loop().run_in_executor(None, _read_all, sock)
        assert received < len(big)  # what was in flight, not the rest: aborted, not left to flush
        assert parse(await exchange(server.port, get("/hello")))[0] == 200
    run(scenario)


def _read_all(sock: socket.socket) -> int:
    sock.settimeout(10)
    total = 0
    with sock:
        while True:
            try:
                chunk = sock.recv(1 << 20)
            except ConnectionResetError:
                return total
            if not chunk:
                return total
            total += len(chunk)


def test_a_page_that_raises_is_500_reported_and_the_server_goes_on():
    errors: list[tuple[str, BaseException]] = []

    async def scenario(server: HttpServer) -> None:
        status, _, body = parse(await exchange(server.port, get("/boom")))
        assert status == 500 and b"a bug" not in body  # the traceback is the log's, not the client's
        assert parse(await exchange(server.port, get("/hello")))[0] == 200
    run(scenario, errors)
    assert [(path, str(exc)) for path, exc in errors] == [("/boom", "a bug in a page")]


def test_a_stream_sends_as_it_goes_and_ends_when_the_server_closes():
    async def scenario(server: HttpServer) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(get("/events"))
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        assert head.startswith(b"HTTP/1.1 200 OK\r\n") and b"Content-Type: text/event-stream" in head
        data = b""
        while data.count(b"\n\n") < 3:
            data += await asyncio.wait_for(reader.read(100), 5)
        assert data == b"data: 0\n\ndata: 1\n\ndata: 2\n\n"
        server.close()
        assert await asyncio.wait_for(reader.read(), 5) == b""  # the connection ends with the server
        writer.close()
    run(scenario)


def test_a_client_that_goes_away_leaves_no_connection_behind():
    async def scenario(server: HttpServer) -> None:
        for raw in (b"", b"GET /hel", get("/events")):
            reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
            writer.write(raw)
            await writer.drain()
            await until(lambda: len(server._connections) == 1)
            writer.close()
            await until(lambda: not server._connections)
    run(scenario)


def test_a_port_in_use_is_an_oserror_for_the_caller():
    async def main() -> None:
        first = HttpServer("127.0.0.1", 0)
        await first.start()
        second = HttpServer("127.0.0.1", first.port)
        with pytest.raises(OSError):
            await second.start()
        first.close()
    asyncio.run(main())


def test_ipv6_loopback():
    if not socket.has_ipv6:
        pytest.skip("no IPv6 here")

    async def main() -> None:
        server = HttpServer("::1", 0)
        server.route("/", lambda request: Response(200, b"six\n"))
        try:
            await server.start()
        except OSError as exc:
            pytest.skip(f"cannot bind ::1 here: {exc}")
        reader, writer = await asyncio.open_connection("::1", server.port)
        writer.write(get("/"))
        assert parse(await asyncio.wait_for(reader.read(), 5))[2] == b"six\n"
        writer.close()
        server.close()
    asyncio.run(main())
