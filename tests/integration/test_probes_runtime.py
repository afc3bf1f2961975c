"""The Prober against real sockets and processes, in a real asyncio loop.

Servers run in the test's own loop (asyncio servers whose answers the test
switches); exec probes run real commands while a reaper like the daemon's
(process.reap on SIGCHLD, and every 2 ms besides, to make it as greedy as it
can be) collects every child of this process.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import psutil
import pytest
from helpers import wait_until

from supervise.config.model import AppConfig, Probe, ProbeKind
from supervise.core.events import Event, Healthy, Ready, Unhealthy
from supervise.runtime import process
from supervise.runtime.probes import Prober

T = TypeVar("T")


# -- harness ----------------------------------------------------------------------------------


class Log:
    def __init__(self) -> None:
        self.errors: list[tuple[str, dict[str, Any]]] = []

    def info(self, event: str, **fields: Any) -> None:
        pass

    def warning(self, event: str, **fields: Any) -> None:
        pass

    def error(self, event: str, **fields: Any) -> None:
        self.errors.append((event, fields))


class Harness:
    """A Prober in the running loop, the events it reported (with their loop times), and loop errors."""

    def __init__(self, max_in_flight: int = 64, env: dict[str, str] | None = None) -> None:
        self.loop = asyncio.get_running_loop()
        self.events: list[tuple[float, Event]] = []
        self.log = Log()
        self.loop_errors: list[dict[str, Any]] = []
        self.loop.set_exception_handler(lambda loop, context: self.loop_errors.append(context))
        self.prober = Prober(self.loop, self.report, self.log, max_in_flight=max_in_flight, env=env)

    def report(self, event: Event) -> None:
        self.events.append((self.loop.time(), event))

    def of(self, spawn_id: int) -> list[Event]:
        return [event for _, event in self.events if event.spawn_id == spawn_id]  # type: ignore[union-attr]

    def check_clean(self) -> None:
        self.prober.close()
        assert self.prober.in_flight == 0
        assert not self.loop_errors, self.loop_errors
        assert not self.log.errors, self.log.errors


def run(body: Callable[[Harness], Awaitable[None]], **kwargs: Any) -> None:
    async def main() -> None:
        harness = Harness(**kwargs)
        try:
            await asyncio.wait_for(body(harness), 30)
        finally:
            harness.prober.close()
        harness.check_clean()

    asyncio.run(main())


async def until(predicate: Callable[[], T], timeout: float = 5.0, message: str = "") -> T:
    """The loop's wait_until: poll `predicate` (letting the loop run) until it is truthy, or fail."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {message or predicate}")
        await asyncio.sleep(0.005)


def app(kind: str, *target: str, port: int | None = None, cwd: Path = Path("/"), env: dict[str, str] | None = None,
        readiness: bool = True, **settings: Any) -> AppConfig:
    probe = Probe(ProbeKind(kind), target, **settings)
    return AppConfig(name="web", command=("true",), cwd=cwd, env=env or {}, port=port,
                     readiness_probe=probe if readiness else None, liveness=None if readiness else probe)


class Web:
    """An HTTP server in the loop: answers `status`, or with `hang` never answers.

    `open` counts connections whose handler runs; `max_open` is the most connections the prober
    held open at once, counted when each is accepted by asking the kernel which of the others
    are still open (their handlers may not have run yet to see a reset).
    """

    def __init__(self) -> None:
        self.status = 200
        self.fail_next = 0  # answer this many requests with 503 before `status` again
        self.hang = False
        self.requests: list[bytes] = []
        self.open = 0
        self.max_open = 0
        self.server: asyncio.Server | None = None
        self.port = 0
        self._socks: set[socket.socket] = set()

    async def start(self, host: str = "127.0.0.1") -> Web:
        self.server = await asyncio.start_server(self._handle, host, 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    def _count(self, sock: socket.socket) -> None:
        for other in list(self._socks):
            if not still_open(other):
                self._socks.discard(other)
                other.close()
        self._socks.add(sock)
        self.max_open = max(self.max_open, len(self._socks))

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.open += 1
        self._count(socket.socket(fileno=os.dup(writer.get_extra_info("socket").fileno())))
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            self.requests.append(head)
            if self.hang:
                await reader.read()  # until the prober closes (or resets) the connection
                return
            status = self.status
            if self.fail_next:
                self.fail_next -= 1
                status = 503
            writer.write(f"HTTP/1.1 {status} Whatever\r\nContent-Length: 2\r\n\r\nok".encode())
            await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            self.open -= 1
            writer.close()

    def paths(self) -> list[str]:
        return [request.split(b" ")[1].decode() for request in self.requests]

    def close(self) -> None:
        if self.server is not None:
            self.server.close()
        for sock in self._socks:
            sock.close()


def still_open(sock: socket.socket) -> bool:
    """The peer has neither closed nor reset the connection (a peek, which reads nothing)."""
    try:
        return sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) != b""
    except BlockingIOError:
        return True
    except OSError:
        return False


async def read_then_close(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Read the request, answer nothing (reading it first: a close with unread data would be a reset)."""
    try:
        await reader.readuntil(b"\r\n\r\n")
    finally:
        writer.close()


class Reaper:
    """The daemon's reaping, as greedy as it gets: process.reap() on SIGCHLD and every 2 ms."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.reaped: list[int] = []
        loop.add_signal_handler(signal.SIGCHLD, self.reap)
        self._timer = loop.call_later(0.002, self._again)

    def reap(self) -> None:
        self.reaped.extend(pid for pid, _, _ in process.reap())

    def _again(self) -> None:
        self.reap()
        self._timer = self.loop.call_later(0.002, self._again)

    def close(self) -> None:
        self._timer.cancel()
        self.loop.remove_signal_handler(signal.SIGCHLD)
        self.reap()


def alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# -- http -------------------------------------------------------------------------------------


def test_http_readiness_waits_for_successes_in_a_row_then_reports_ready_once() -> None:
    async def body(h: Harness) -> None:
        web = await Web().start()
        web.status = 503
        base = web.port - 2  # instance 2 of an app whose `port` is this: {port} is the server's
        h.prober.start_readiness(7, app("http", "http://127.0.0.1:{port}/health/{instance}?x=1", port=base,
                                        interval=0.02, successes=3), 2)
        url = f"http://127.0.0.1:{web.port}/health/2?x=1"
        assert await until(lambda: h.prober.last_failure(7)) == f"http 503 from {url}"
        assert h.of(7) == []
        web.status = 204
        await until(lambda: h.of(7), message="Ready")
        assert h.of(7) == [Ready(7)]
        assert not h.prober.probing(7)
        assert h.prober.last_failure(7) is None
        served = len(web.requests)
        assert web.paths()[-3:] == ["/health/2?x=1"] * 3
        request = web.requests[-1].decode()
        assert request.startswith("GET /health/2?x=1 HTTP/1.1\r\n")
        assert f"\r\nHost: 127.0.0.1:{web.port}\r\n" in request
        assert "\r\nUser-Agent: supervise-probe\r\n" in request
        assert "\r\nConnection: close\r\n" in request
        # Ready stopped the readiness loop: a fresh probe of something else comes and goes meanwhile.
        h.prober.start_readiness(8, app("http", url, interval=0.02), 0)
        await until(lambda: h.of(8))
        assert len(web.requests) == served + 1 and h.of(7) == [Ready(7)]
        web.close()

    run(body)


def test_the_first_check_comes_promptly_whatever_the_interval() -> None:
    async def body(h: Harness) -> None:
        web = await Web().start()
        started = h.loop.time()
        h.prober.start_readiness(1, app("http", f"http://127.0.0.1:{web.port}/", interval=30), 0)
        await until(lambda: h.of(1))
        assert h.events[0][0] - started < 1.0
        web.close()

    run(body)


def test_http_statuses_pass_from_200_to_399_only() -> None:
    async def body(h: Harness) -> None:
        web = await Web().start()
        for status, passes in ((200, True), (302, True), (399, True), (199, False), (404, False), (500, False)):
            web.status = status
            spawn = status
            h.prober.start_liveness(spawn, app("http", f"http://127.0.0.1:{web.port}/", readiness=False,
                                               interval=0.02, failures=1), 0)
            if passes:
                await until(lambda spawn=spawn: len(web.requests) >= 3 and h.prober.probing(spawn))
                assert h.of(spawn) == [] and h.prober.last_failure(spawn) is None
            else:
                await until(lambda spawn=spawn: h.of(spawn))
                assert h.of(spawn) == [Unhealthy(spawn, f"http {status} from http://127.0.0.1:{web.port}/")]
            h.prober.forget(spawn)
            web.requests.clear()
        web.close()

    run(body)


def test_liveness_goes_unhealthy_after_failures_in_a_row_then_healthy_then_unhealthy_again() -> None:
    interval, failures = 0.1, 3

    async def body(h: Harness) -> None:
        web = await Web().start()
        h.prober.start_liveness(3, app("http", f"http://127.0.0.1:{web.port}/live", readiness=False,
                                       interval=interval, failures=failures), 0)
        await until(lambda: len(web.requests) >= 3)
        for round_ in range(2):
            failing_since = h.loop.time()
            web.status = 500
            await until(lambda n=2 * round_ + 1: len(h.of(3)) == n, message="Unhealthy")
            took = h.events[-1][0] - failing_since
            # The target is interval x failures + 100 ms; a loaded test machine gets more slack.
            assert took < interval * failures + 0.4, took
            assert took > interval * (failures - 1), took
            web.status = 200
            await until(lambda n=2 * round_ + 2: len(h.of(3)) == n, message="Healthy")
        assert h.of(3) == [Unhealthy(3, f"http 500 from http://127.0.0.1:{web.port}/live"), Healthy(3)] * 2
        web.close()

    run(body)


def test_a_single_failure_between_passes_is_forgiven() -> None:
    async def body(h: Harness) -> None:
        web = await Web().start()
        h.prober.start_liveness(4, app("http", f"http://127.0.0.1:{web.port}/", readiness=False, interval=0.01,
                                       failures=2), 0)
        for _ in range(5):  # fail, pass, fail, pass...: never two in a row
            web.fail_next = 1
            await until(lambda: h.prober.last_failure(4))
            await until(lambda: h.prober.last_failure(4) is None)
        assert h.of(4) == []
        web.close()

    run(body)


def test_http_timeout_covers_the_response_and_the_connection_is_closed() -> None:
    async def body(h: Harness) -> None:
        web = await Web().start()
        web.hang = True
        url = f"http://127.0.0.1:{web.port}/slow"
        h.prober.start_liveness(5, app("http", url, readiness=False, interval=5, timeout=0.2, failures=1), 0)
        await until(lambda: web.open == 1)
        started = h.loop.time()
        await until(lambda: h.of(5), message="Unhealthy")
        assert h.of(5) == [Unhealthy(5, f"timed out after 0.2s waiting for {url}")]
        assert 0.1 < h.events[0][0] - started < 1.5
        await until(lambda: web.open == 0, message="the connection closed")
        web.close()

    run(body)


def test_answers_that_are_not_http_fail_with_what_came() -> None:
    async def body(h: Harness) -> None:
        async def garbage(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            writer.write(b"SSH-2.0-OpenSSH\r\n")
            writer.close()

        for spawn, handler, expected in (
                (1, garbage, "not an HTTP response from {url}: 'SSH-2.0-OpenSSH'"),
                (2, read_then_close, "connection closed by 127.0.0.1:{port} before a response to {url}")):
            server = await asyncio.start_server(handler, "127.0.0.1", 0)
            port = server.sockets[0].getsockname()[1]
            url = f"http://127.0.0.1:{port}/"
            h.prober.start_readiness(spawn, app("http", url, interval=0.05), 0)
            assert await until(lambda spawn=spawn: h.prober.last_failure(spawn)) == expected.format(url=url, port=port)
            server.close()

    run(body)


def test_targets_that_cannot_be_probed_fail_saying_why_and_never_raise() -> None:
    async def body(h: Harness) -> None:
        cases = {
            1: app("http", "https://127.0.0.1:1/"),
            2: app("http", "http://127.0.0.1:{port}/"),  # no `port` in the app
            3: app("tcp", "127.0.0.1"),
            4: app("tcp", "::1:80"),
            5: app("http", "http://127.0.0.1:99999/"),
            6: app("http", "http://no-such-host.invalid:80/"),
        }
        for spawn, config in cases.items():
            h.prober.start_readiness(spawn, config, 0)
        failures = {spawn: await until(lambda spawn=spawn: h.prober.last_failure(spawn), timeout=10)
                    for spawn in cases}
        assert failures[1].startswith("only http:// URLs can be probed")
        assert failures[2].startswith("bad probe target ['http://127.0.0.1:{port}/']")
        assert failures[3] == "expected HOST:PORT, [V6]:PORT or unix:PATH, got '127.0.0.1'"
        assert failures[4] == "an IPv6 address takes brackets: [::1]:80"
        assert failures[5].startswith("bad URL 'http://127.0.0.1:99999/'")
        assert failures[6].startswith("cannot resolve no-such-host.invalid") or "timed out" in failures[6]
        assert h.events == []

    run(body)


def test_a_host_name_is_resolved() -> None:
    async def body(h: Harness) -> None:
        web = await Web().start()
        # "localhost" may resolve to ::1 first, where nothing listens: any verdict but an error will do,
        # so listen on both when the machine has IPv6.
        h.prober.start_readiness(1, app("tcp", f"localhost:{web.port}", interval=0.05), 0)
        await until(lambda: h.of(1) or h.prober.last_failure(1))
        assert h.of(1) == [Ready(1)] or h.prober.last_failure(1).startswith("connect refused localhost:")
        web.close()

    run(body)


# -- tcp and unix ----------------------------------------------------------------------------


def test_tcp_refused_then_ready_once_something_listens() -> None:
    async def body(h: Harness) -> None:
        port = free_port()
        h.prober.start_readiness(1, app("tcp", "127.0.0.1:{port}", port=port - 1, interval=0.02), 1)
        assert await until(lambda: h.prober.last_failure(1)) == f"connect refused 127.0.0.1:{port}"
        accepted: list[int] = []

        async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            accepted.append(1)
            writer.close()

        server = await asyncio.start_server(handler, "127.0.0.1", port)
        await until(lambda: h.of(1))
        assert h.of(1) == [Ready(1)]
        assert h.prober.last_failure(1) is None
        server.close()

    run(body)


def test_tcp_over_ipv6() -> None:
    if not socket.has_ipv6:
        pytest.skip("no IPv6")
    try:
        with socket.socket(socket.AF_INET6) as probe_socket:
            probe_socket.bind(("::1", 0))
    except OSError:
        pytest.skip("no ::1 here")

    async def body(h: Harness) -> None:
        web = await Web().start("::1")
        h.prober.start_readiness(1, app("tcp", f"[::1]:{web.port}", interval=0.02), 0)
        h.prober.start_readiness(2, app("http", f"http://[::1]:{web.port}/", interval=0.02), 0)
        await until(lambda: h.of(1) and h.of(2))
        assert h.of(1) == [Ready(1)] and h.of(2) == [Ready(2)]
        assert f"\r\nHost: [::1]:{web.port}\r\n" in web.requests[0].decode()
        web.close()

    run(body)


def test_tcp_connect_timeout_when_the_handshake_never_completes() -> None:
    async def body(h: Harness) -> None:
        # A listener that never accepts, its queue full: new handshakes are dropped, connect hangs.
        full = socket.socket()
        full.bind(("127.0.0.1", 0))
        full.listen(0)
        port = full.getsockname()[1]
        fillers = []
        for _ in range(8):
            filler = socket.socket()
            filler.setblocking(False)
            filler.connect_ex(("127.0.0.1", port))
            fillers.append(filler)
        h.prober.start_readiness(1, app("tcp", f"127.0.0.1:{port}", interval=5, timeout=0.2), 0)
        assert await until(lambda: h.prober.last_failure(1)) == f"timed out after 0.2s connecting to 127.0.0.1:{port}"
        for filler in fillers:
            filler.close()
        full.close()

    run(body)


def test_unix_socket_missing_then_listening(tmp_path: Path) -> None:
    path = tmp_path / "web-0.sock"

    async def body(h: Harness) -> None:
        h.prober.start_readiness(1, app("tcp", f"unix:{tmp_path}/web-{{instance}}.sock", interval=0.02), 0)
        assert await until(lambda: h.prober.last_failure(1)) == f"connect to unix:{path}: No such file or directory"
        server = await asyncio.start_unix_server(lambda r, w: w.close(), str(path))
        await until(lambda: h.of(1))
        assert h.of(1) == [Ready(1)]
        server.close()

    run(body)


def test_abstract_unix_socket() -> None:
    name = f"supervise-probe-test-{uuid.uuid4().hex}"

    async def body(h: Harness) -> None:
        server = await asyncio.start_unix_server(lambda r, w: w.close(), "\0" + name)
        h.prober.start_readiness(1, app("tcp", f"unix:@{name}", interval=0.02), 0)
        await until(lambda: h.of(1))
        server.close()

    run(body)


# -- scheduling -------------------------------------------------------------------------------


def test_forget_closes_a_connection_in_flight_and_stops_the_schedule() -> None:
    async def body(h: Harness) -> None:
        web = await Web().start()
        web.hang = True
        h.prober.start_liveness(1, app("http", f"http://127.0.0.1:{web.port}/", readiness=False, interval=0.02,
                                       timeout=10), 0)
        h.prober.start_readiness(1, app("http", f"http://127.0.0.1:{web.port}/", interval=0.02, timeout=10), 0)
        await until(lambda: web.open == 2)
        assert h.prober.in_flight == 2
        h.prober.forget(1)
        assert h.prober.in_flight == 0 and not h.prober.probing(1)
        await until(lambda: web.open == 0, message="both connections closed")
        seen = len(web.requests)
        # The schedule is gone: another probe's checks come and go while nothing more arrives for spawn 1.
        h.prober.start_liveness(2, app("http", f"http://127.0.0.1:{web.port}/two", readiness=False, interval=0.02,
                                       timeout=0.05), 0)
        await until(lambda: web.paths().count("/two") >= 3)
        assert len(web.requests) - seen == web.paths().count("/two")
        assert h.events == []
        web.close()

    run(body)


def test_in_flight_bound_holds_and_a_waiting_check_gets_its_whole_timeout() -> None:
    async def body(h: Harness) -> None:
        web = await Web().start()
        web.hang = True
        for spawn in range(8):
            h.prober.start_liveness(spawn, app("http", f"http://127.0.0.1:{web.port}/{{instance}}", readiness=False,
                                               interval=0.01, timeout=0.15, failures=1), spawn)
        # 8 instances due every 10 ms, 3 slots, checks that take their whole 150 ms: each must still connect
        # (its timeout runs from its start, not from when it was due), three at a time at most.
        await until(lambda: set(web.paths()) == {f"/{spawn}" for spawn in range(8)}, timeout=10)
        await until(lambda: len(h.events) == 8)
        assert web.max_open <= 3 and h.prober.in_flight <= 3
        assert {event for _, event in h.events} == {
            Unhealthy(spawn, f"timed out after 0.15s waiting for http://127.0.0.1:{web.port}/{spawn}")
            for spawn in range(8)}
        # No pile-up: each instance has at most one check running or waiting, so the queue stays short.
        assert len(h.prober._waiting) <= 8
        web.close()

    run(body, max_in_flight=3)


def test_a_late_check_is_not_doubled() -> None:
    async def body(h: Harness) -> None:
        web = await Web().start()
        web.hang = True
        h.prober.start_liveness(1, app("http", f"http://127.0.0.1:{web.port}/", readiness=False, interval=0.02,
                                       timeout=0.3, failures=1), 0)
        await until(lambda: len(web.requests) >= 3, timeout=10)
        # Ticks every 20 ms, each check 300 ms: one at a time, the next right after the last.
        assert web.max_open == 1
        web.close()

    run(body)


def test_checks_keep_their_interval_beside_slow_ones() -> None:
    async def body(h: Harness) -> None:
        fast, slow = await Web().start(), await Web().start()
        slow.hang = True
        h.prober.start_liveness(1, app("http", f"http://127.0.0.1:{fast.port}/", readiness=False, interval=0.2), 0)
        await until(lambda: len(fast.requests) >= 2)
        # Started between two of the fast one's ticks: its far deadline and next tick must not hold them up.
        h.prober.start_liveness(2, app("http", f"http://127.0.0.1:{slow.port}/", readiness=False, interval=10,
                                       timeout=4), 0)
        await until(lambda: slow.open == 1)
        started, seen = h.loop.time(), len(fast.requests)
        await until(lambda: len(fast.requests) >= seen + 5, timeout=10)
        assert h.loop.time() - started < 2.0  # 1 s on time; 4 s held behind the slow one's deadline
        fast.close()
        slow.close()

    run(body)


# -- exec ------------------------------------------------------------------------------------


def test_exec_passes_on_exit_0_and_fails_with_code_and_first_line(tmp_path: Path) -> None:
    async def body(h: Harness) -> None:
        reaper = Reaper(h.loop)
        said = "$SUPERVISE_NAME $SUPERVISE_APP $SUPERVISE_INSTANCE $MODE $FROM_DAEMON $(pwd)"
        script = f"echo; echo \"{said}\" >&2; exit 3"
        h.prober.start_readiness(1, app("exec", "sh", "-c", script, cwd=tmp_path, env={"MODE": "prod"}), 4)
        h.prober.start_readiness(2, app("exec", "true", interval=0.05), 0)
        h.prober.start_readiness(3, app("exec", "sh", "-c", "kill -9 $$"), 0)
        h.prober.start_readiness(4, app("exec", "no-such-command-{instance}"), 0)
        h.prober.start_readiness(5, app("exec", "true", cwd=tmp_path / "missing"), 0)
        await until(lambda: h.of(2))
        assert h.of(2) == [Ready(2)]
        cwd = os.path.realpath(tmp_path)
        assert await until(lambda: h.prober.last_failure(1)) == f"exit code 3: web:4 web 4 prod yes {cwd}"
        assert (await until(lambda: h.prober.last_failure(3))).startswith("exit code 137 (SIGKILL)")
        assert (await until(lambda: h.prober.last_failure(4))).startswith("exit code 127: ")
        assert "no-such-command-0" in h.prober.last_failure(4)
        assert await until(lambda: h.prober.last_failure(5)) == f"cannot run the probe in {tmp_path / 'missing'}: " \
                                                                "No such file or directory"
        reaper.close()

    run(body, env={"FROM_DAEMON": "yes", "PATH": os.environ["PATH"]})


def test_exec_status_survives_a_greedy_reaper(tmp_path: Path) -> None:
    """The daemon's reaper collects every child the moment it exits; the probe's verdicts must not change."""
    passes, fails = tmp_path / "passes", tmp_path / "fails"

    async def body(h: Harness) -> None:
        reaper = Reaper(h.loop)
        h.prober.start_liveness(1, app("exec", "sh", "-c", f"echo >> {passes}; exit 0", readiness=False,
                                       interval=0.01, failures=1), 0)
        h.prober.start_liveness(2, app("exec", "sh", "-c", f"echo >> {fails}; exit 2", readiness=False,
                                       interval=0.01, failures=1), 0)
        await until(lambda: passes.exists() and len(passes.read_text()) >= 40, timeout=20)
        assert h.of(1) == []
        assert h.of(2) == [Unhealthy(2, "exit code 2")]
        assert h.prober.last_failure(2) == "exit code 2"
        assert reaper.reaped  # it did reap the probes' shells
        reaper.close()

    run(body)


def test_exec_hanging_past_its_timeout_is_killed_with_its_whole_group(tmp_path: Path) -> None:
    pids = tmp_path / "pids"

    async def body(h: Harness) -> None:
        reaper = Reaper(h.loop)
        script = f"sleep 60 & echo $! >> {pids}; echo $$ >> {pids}; wait"
        h.prober.start_liveness(1, app("exec", "sh", "-c", script, readiness=False, interval=10, timeout=0.3,
                                       failures=1), 0)
        await until(lambda: h.of(1), message="Unhealthy")
        assert h.of(1) == [Unhealthy(1, "timed out after 0.3s running sh")]
        reaper.close()

    run(body)
    started = [int(line) for line in pids.read_text().split()]
    assert len(started) == 2
    wait_until(lambda: not any(alive(pid) for pid in started), timeout=5, message="the probe's processes gone")


def test_forget_kills_an_exec_probe_in_flight(tmp_path: Path) -> None:
    pid_file = tmp_path / "pid"

    async def body(h: Harness) -> None:
        reaper = Reaper(h.loop)
        h.prober.start_readiness(1, app("exec", "sh", "-c", f"echo $$ > {pid_file}; exec sleep 60", timeout=30), 0)
        await until(lambda: pid_file.exists() and pid_file.read_text().strip())
        pid = int(pid_file.read_text())
        assert alive(pid)
        h.prober.forget(1)
        assert h.prober.in_flight == 0
        await until(lambda: not alive(pid), message="the probe's process gone")
        assert h.events == []
        reaper.close()

    run(body)


def test_an_app_without_probes_starts_nothing_and_a_second_start_replaces_the_first() -> None:
    async def body(h: Harness) -> None:
        plain = AppConfig(name="web", command=("true",), cwd=Path("/"))
        assert not h.prober.start_readiness(1, plain, 0) and not h.prober.start_liveness(1, plain, 0)
        assert not h.prober.probing(1)
        web = await Web().start()
        web.hang = True
        h.prober.start_readiness(2, app("http", f"http://127.0.0.1:{web.port}/old", timeout=10), 0)
        await until(lambda: web.open == 1)
        web.hang = False
        assert h.prober.start_readiness(2, app("http", f"http://127.0.0.1:{web.port}/new"), 0)
        await until(lambda: h.of(2))
        assert h.of(2) == [Ready(2)] and web.paths() == ["/old", "/new"]
        await until(lambda: web.open == 0, message="the old check's connection closed")
        web.close()

    run(body)


def test_close_forgets_every_spawn() -> None:
    async def body(h: Harness) -> None:
        web = await Web().start()
        web.hang = True
        for spawn in range(5):
            h.prober.start_liveness(spawn, app("http", f"http://127.0.0.1:{web.port}/", readiness=False,
                                               interval=0.01, timeout=10), 0)
        await until(lambda: web.open == 5)
        h.prober.close()
        assert h.prober.in_flight == 0 and not any(h.prober.probing(spawn) for spawn in range(5))
        await until(lambda: web.open == 0)
        web.close()

    run(body)
