#!/usr/bin/env python3
"""The probes benchmark: what 500 instances probed every second cost the daemon, and how soon a failing
liveness probe is reported.

    python benchmarks/probes.py             # the full run: about 4 minutes
    python benchmarks/probes.py --quick     # a smoke check: 1 run of 5 s per figure, 10 trials
    python benchmarks/probes.py --only http --only latency

The Prober (supervise.runtime.probes) runs in this process, in an asyncio
loop of its own, as in the daemon; its targets are served by a separate
process (this script with --serve: one asyncio listener per instance on
127.0.0.1, each answering 200, or 503 when told), so the servers' CPU is not
counted. Instances start spread evenly over one interval, as a fleet's
spawns and restarts spread them.

- `http`, `tcp`: 500 instances (`--instances`), each with a liveness probe
  every second (`--interval`): CPU time of this process (user + system:
  connecting on loopback costs the kernel about as much as Python costs us)
  over `--seconds`, as % of one core; median of `--runs`. Alternated with
  the floor: the same probes written the obvious way, a task per instance
  with asyncio.open_connection (and asyncio.timeout). Also shown:
  the syscalls alone, the same checks from a blocking loop as fast as it
  goes (CPU per check x the probe rate), which no implementation beats.
  Every check must pass, and the server must have seen all of them.
  Target: < 5 %.
- `latency`: under the same http load, `--trials` instances (concurrently, each
  at a random moment over two intervals) start answering 503: from the
  server's switch (its CLOCK_MONOTONIC, which is system-wide) to the
  Unhealthy report, minus interval x failures (1 s x 3). Median and max.
  Target: max <= +100 ms.
- `exec`: 50 instances (`--exec-instances`) with an exec probe (`true`) every
  second, a reaper like the daemon's running: CPU % and per check. No target.
"""

from __future__ import annotations

import asyncio
import math
import random
import resource
import signal
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

from harness import PY, BenchError, median  # noqa: E402
from runner import Bench, Options, main, run_selected  # noqa: E402

from supervise.config.model import AppConfig, Probe, ProbeKind  # noqa: E402
from supervise.core.events import Event, Healthy, Unhealthy  # noqa: E402
from supervise.runtime import process  # noqa: E402
from supervise.runtime.probes import FIRST_DELAY, SLACK, Prober  # noqa: E402

FIGURES = ("http", "tcp", "latency", "exec")
TARGET_CPU = 5.0  # % of one core
TARGET_EXCESS = 0.100  # seconds past interval x failures
FAILURES = 3
WARM_UP = 2.0  # seconds of probing before a window: every instance has had its first checks


# -- the target server (a process of its own) -------------------------------------------------


def serve(count: int) -> None:
    """--serve COUNT: `count` listeners; prints their ports, then takes commands on stdin, one
    reply line each: `fail PORT` -> `failing PORT STAMP`, `ok PORT` -> `ok PORT STAMP` (when it first
    answered 503), `count` -> `count N`. Stamps are time.monotonic(), system-wide on Linux."""
    ok = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    bad = b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    failing: set[int] = set()
    first_503: dict[int, float] = {}
    accepted = [0]

    class Answer(asyncio.Protocol):
        def connection_made(self, transport: Any) -> None:
            accepted[0] += 1
            self.transport = transport
            self.port = transport.get_extra_info("sockname")[1]

        def data_received(self, data: bytes) -> None:
            if data.endswith(b"\r\n\r\n"):
                if self.port in failing:
                    first_503.setdefault(self.port, time.monotonic())
                self.transport.write(bad if self.port in failing else ok)
                self.transport.close()

    async def run() -> None:
        loop = asyncio.get_running_loop()
        servers = [await loop.create_server(Answer, "127.0.0.1", 0, backlog=1024) for _ in range(count)]
        print("ports", *(s.sockets[0].getsockname()[1] for s in servers), flush=True)
        reader = asyncio.StreamReader()
        await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
        while line := await reader.readline():
            command, *rest = line.decode().split()
            if command == "fail":
                failing.add(int(rest[0]))
                print("failing", rest[0], repr(time.monotonic()), flush=True)
            elif command == "ok":
                failing.discard(int(rest[0]))
                print("ok", rest[0], repr(first_503.pop(int(rest[0]), 0.0)), flush=True)
            elif command == "count":
                print("count", accepted[0], flush=True)

    asyncio.run(run())


class Target:
    """The server process, as the benchmark talks to it."""

    def __init__(self, b: Bench, count: int) -> None:
        self.proc = subprocess.Popen([PY, __file__, "--serve", str(count)], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, env=b.procs.env(), text=True, start_new_session=True)
        b.procs.floor.append(self.proc)
        first = self.proc.stdout.readline().split() if self.proc.stdout else []
        if not first or first[0] != "ports":
            raise BenchError("the target server did not start")
        self.ports = [int(port) for port in first[1:]]

    def send(self, line: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()

    def reply(self) -> list[str]:
        assert self.proc.stdout is not None
        return self.proc.stdout.readline().split()

    def count(self) -> int:
        self.send("count")
        return int(self.reply()[1])


# -- what runs in the loop ------------------------------------------------------------------


class Log:
    def info(self, event: str, **fields: Any) -> None:
        pass

    warning = info

    def error(self, event: str, **fields: Any) -> None:
        print(f"prober error: {event} {fields}", file=sys.stderr)


def apps(kind: str, ports: list[int], interval: float) -> list[AppConfig]:
    """An app per instance, its target literal (the ports the server got are not consecutive)."""
    target = "http://127.0.0.1:{}/health" if kind == "http" else "127.0.0.1:{}"
    return [AppConfig(name="w", command=("true",), cwd=Path("/"),
                      liveness=Probe(ProbeKind(kind), (target.format(port),), interval=interval, failures=FAILURES))
            for port in ports]


async def spread(count: int, interval: float, start: Callable[[int], object]) -> None:
    """Start `count` things evenly over one interval (a real fleet's spawns are spread, not aligned)."""
    loop = asyncio.get_running_loop()
    begin = loop.time()
    for i in range(count):
        await asyncio.sleep(max(0.0, begin + interval * i / count - loop.time()))
        start(i)


def grid_start(started: float, interval: float) -> float:
    """The due time of the first check of a probe started at `started`, as Prober._start puts it."""
    slack = max(min(SLACK, interval / 20), 0.001)
    return math.ceil((started + min(interval, FIRST_DELAY)) / slack - 1e-6) * slack


def cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def window(target: Target, seconds: float) -> tuple[float, int]:
    """(CPU % of one core of this process, checks the server saw) over `seconds` from now."""
    c0, s0 = target.count(), cpu()
    w0 = time.monotonic()
    await asyncio.sleep(seconds)  # the measured window: the loop runs the probes meanwhile
    s1, w1 = cpu(), time.monotonic()
    return (s1 - s0) / (w1 - w0) * 100, target.count() - c0


async def ours(kind: str, target: Target, interval: float, seconds: float) -> tuple[float, int]:
    events: list[Event] = []
    loop = asyncio.get_running_loop()
    prober = Prober(loop, events.append, Log())
    configs = apps(kind, target.ports, interval)
    await spread(len(configs), interval, lambda i: prober.start_liveness(i, configs[i], 0))
    await asyncio.sleep(WARM_UP)
    figure = await window(target, seconds)
    failed = [prober.last_failure(i) for i in range(len(configs)) if prober.last_failure(i)]
    prober.close()
    if events or failed:
        raise BenchError(f"{kind} probes failed: {events[:3]} {failed[:3]}")
    return figure


async def streams(kind: str, target: Target, interval: float, seconds: float) -> tuple[float, int]:
    """The floor: a task per instance, asyncio.open_connection under asyncio.timeout, on the same grid."""
    request = b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nUser-Agent: x\r\nConnection: close\r\n\r\n"
    failures: list[str] = []

    async def check(port: int) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            if kind == "http":
                writer.write(request)
                line = await reader.readline()
                if line.split()[1] != b"200":
                    failures.append(line.decode())
        finally:
            writer.close()

    async def probe(port: int) -> None:
        loop = asyncio.get_running_loop()
        due = loop.time()
        while True:
            try:
                async with asyncio.timeout(1.0):  # not wait_for: in 3.11 it can swallow a cancel (gh-86296)
                    await check(port)
            except OSError as exc:  # TimeoutError too
                failures.append(repr(exc))
            due += interval
            await asyncio.sleep(max(0.0, due - loop.time()))

    tasks: list[asyncio.Task[None]] = []
    await spread(len(target.ports), interval, lambda i: tasks.append(asyncio.create_task(probe(target.ports[i]))))
    await asyncio.sleep(WARM_UP)
    figure = await window(target, seconds)
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    if failures:
        raise BenchError(f"floor {kind} probes failed: {failures[:3]}")
    return figure


def syscalls(kind: str, ports: list[int], checks: int) -> float:
    """CPU seconds per check of the bare syscalls: blocking socket, connect, (send, recv), close."""
    request = b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nUser-Agent: x\r\nConnection: close\r\n\r\n"
    linger = struct.pack("ii", 1, 0)
    s0 = cpu()
    for i in range(checks):
        with socket.socket() as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, linger)
            sock.connect(("127.0.0.1", ports[i % len(ports)]))
            if kind == "http":
                sock.sendall(request)
                if not sock.recv(1024).startswith(b"HTTP/1.1 200"):
                    raise BenchError("the syscall floor's check did not get a 200")
    return (cpu() - s0) / checks


# -- the figures ------------------------------------------------------------------------------


def bench_cpu(b: Bench, kind: str) -> None:
    n, interval, seconds = b.args.instances, b.args.interval, b.args.seconds
    target = Target(b, n)
    expected = n * seconds / interval
    mine, floor = [], []
    for run in range(b.args.runs):
        for name, body, into in (("ours", ours, mine), ("floor", streams, floor)):
            percent, checks = asyncio.run(body(kind, target, interval, seconds))
            if not 0.9 * expected <= checks <= 1.1 * expected:
                raise BenchError(f"{kind} {name}: the server saw {checks} checks in {seconds:g} s, "
                                 f"expected about {expected:.0f}")
            into.append(percent)
            b.say(f"{kind} run {run + 1}: {name} {percent:.2f} % of a core ({checks} checks, "
                  f"{percent * 10 * seconds / checks * 1000:.0f} us each)")
    bare = [syscalls(kind, target.ports, 2000) for _ in range(b.args.runs)]
    b.procs.stop_floor([target.proc])
    bare_percent = median(bare) * n / interval * 100
    b.say(f"{kind}: the syscalls alone, {median(bare) * 1e6:.0f} us a check: {bare_percent:.2f} % "
          f"at {n / interval:g}/s")
    b.raw[kind] = {"ours": mine, "floor": floor, "syscalls_per_check": bare}
    m, f = median(mine), median(floor)
    b.add(f"{kind} probes, {n} x 1/{interval:g}s", f"{m:.2f} %", f"streams {f:.2f} %",
          f"x{m / f:.2f} of streams; syscalls alone {bare_percent:.2f} % (< {TARGET_CPU:g} %)", m < TARGET_CPU)


def bench_http(b: Bench) -> None:
    bench_cpu(b, "http")


def bench_tcp(b: Bench) -> None:
    bench_cpu(b, "tcp")


def bench_latency(b: Bench) -> None:
    n, interval, trials = b.args.instances, b.args.interval, b.args.trials
    target = Target(b, n)
    chosen = random.Random(1).sample(range(n), trials)

    async def body() -> tuple[list[float], list[float]]:
        loop = asyncio.get_running_loop()  # its time() is time.monotonic(), as the server's stamps
        reported: dict[int, float] = {}
        healthy: set[int] = set()
        started: dict[int, float] = {}

        def report(event: Event) -> None:
            if isinstance(event, Unhealthy):
                reported[event.spawn_id] = time.monotonic()
            elif isinstance(event, Healthy):
                healthy.add(event.spawn_id)

        def start(i: int) -> None:
            started[i] = loop.time()
            prober.start_liveness(i, configs[i], 0)

        prober = Prober(loop, report, Log())
        configs = apps("http", target.ports, interval)
        await spread(n, interval, start)
        await asyncio.sleep(WARM_UP)
        for i in chosen:  # each at a random moment of the grid
            loop.call_later(random.uniform(0, 2 * interval), target.send, f"fail {target.ports[i]}")
        deadline = loop.time() + 2 * interval + interval * FAILURES + 10
        while len(reported) < trials and loop.time() < deadline:
            await asyncio.sleep(0.1)
        switched, first_503 = {}, {}
        for _ in chosen:
            _, port, stamp = target.reply()
            switched[target.ports.index(int(port))] = float(stamp)
        for i in chosen:
            target.send(f"ok {target.ports[i]}")
            first_503[i] = float(target.reply()[2])
        deadline = loop.time() + 2 * interval + 10
        while len(healthy) < trials and loop.time() < deadline:
            await asyncio.sleep(0.1)
        prober.close()
        if len(reported) < trials or len(healthy) < trials:
            raise BenchError(f"of {trials} failing instances {len(reported)} were reported unhealthy, "
                             f"{len(healthy)} healthy again")
        wrong = set(reported) - set(chosen)
        if wrong:
            raise BenchError(f"instances reported unhealthy that never failed: {sorted(wrong)[:5]}")
        observed = [reported[i] - switched[i] for i in chosen]
        # The worst case: the switch an instant after a check. What the prober adds to interval x failures
        # is then the report's lateness after the due time of the first check that failed (the grid point
        # at or before its 503), plus the failures - 1 intervals after it.
        added = []
        for i in chosen:
            first_due = grid_start(started[i], interval)
            failed_due = first_due + (first_503[i] - first_due) // interval * interval
            added.append(reported[i] - failed_due - (FAILURES - 1) * interval)
        return observed, added

    observed, added = asyncio.run(body())
    b.procs.stop_floor([target.proc])
    b.raw["latency"] = {"observed": observed, "added": added}
    bound = interval * FAILURES
    b.say(f"latency: {trials} trials, switch -> Unhealthy: median {median(observed):.3f} s, "
          f"max {max(observed):.3f} s (interval x failures = {bound:g} s)")
    b.say(f"latency: past the due time of the first failing check + {FAILURES - 1} intervals: "
          f"median {median(added) * 1000:+.0f} ms, max {max(added) * 1000:+.0f} ms")
    b.add(f"liveness fail -> Unhealthy, {n} inst.", f"{bound:g} s {max(added) * 1000:+.0f} ms",
          f"{interval:g} s x {FAILURES}", f"worst case; median {median(added) * 1000:+.0f} ms (<= +100 ms)",
          max(added) <= TARGET_EXCESS and max(observed) <= bound + TARGET_EXCESS)


def bench_exec(b: Bench) -> None:
    n, interval, seconds = b.args.exec_instances, b.args.interval, b.args.seconds

    async def body() -> tuple[float, int]:
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGCHLD, process.reap)  # the daemon's reaper: it collects the shells
        events: list[Event] = []
        prober = Prober(loop, events.append, Log())
        config = AppConfig(name="w", command=("true",), cwd=b.dir,
                           liveness=Probe(ProbeKind.EXEC, ("true",), interval=interval, failures=FAILURES))
        await spread(n, interval, lambda i: prober.start_liveness(i, config, i))
        await asyncio.sleep(WARM_UP)
        c0, w0 = cpu(), time.monotonic()
        await asyncio.sleep(seconds)
        c1, w1 = cpu(), time.monotonic()
        failed = [prober.last_failure(i) for i in range(n) if prober.last_failure(i)]
        prober.close()
        loop.remove_signal_handler(signal.SIGCHLD)
        process.reap()
        if events or failed:
            raise BenchError(f"exec probes failed: {events[:3]} {failed[:3]}")
        return (c1 - c0) / (w1 - w0) * 100, round(n * seconds / interval)

    percent, checks = asyncio.run(body())
    b.raw["exec"] = percent
    per_check = percent * 10 * seconds / checks  # ms of CPU
    b.say(f"exec: {n} instances, {percent:.2f} % of a core, {per_check:.2f} ms of CPU a check")
    b.add(f"exec probes, {n} x 1/{interval:g}s", f"{percent:.2f} %", "", f"{per_check:.2f} ms a check", None)


def build_options() -> Options:
    options = Options(__doc__ or "", FIGURES)
    options.number("--instances", int, 500, 500, "probed instances")
    options.number("--interval", float, 1.0, 1.0, "seconds between two checks of an instance")
    options.number("--seconds", float, 15, 5, "measured window of a run")
    options.number("--runs", int, 3, 1, "runs of ours and of the floor, alternated")
    options.number("--trials", int, 30, 10, "instances made to fail for the latency figure")
    options.number("--exec-instances", int, 50, 50, "instances with an exec probe")
    return options


if __name__ == "__main__":
    if sys.argv[1:2] == ["--serve"]:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        serve(int(sys.argv[2]))
        sys.exit(0)
    parsed = build_options().parse(None)
    sys.exit(main("probes", parsed, lambda b: run_selected(
        b, ("http", bench_http), ("tcp", bench_tcp), ("latency", bench_latency), ("exec", bench_exec))))
