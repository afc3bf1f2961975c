#!/usr/bin/env python3
"""Warm spares: a crash -> the first request its replacement serves, and a steady load under kills.

    python benchmarks/spares.py                         # the full run, about five minutes
    python benchmarks/spares.py --only crash --runs 5   # crash figures only, 5 spare runs
    python benchmarks/spares.py --only load --duration 10

Every daemon runs examples/web.py behind `listen = ["127.0.0.1:PORT"]` with
`readiness = "heartbeat"`, `heartbeat_timeout = "5s"`, and the backoff and the
crash-loop breaker out of the way (`backoff = { reset_after = "100ms" }`,
`crash_loop = { max_restarts = 100000, window = "1s" }`, as in health.py), so
that every kill is promoted or restarted at once and what is timed is the
promotion or the restart itself.

`crash`: `instances = 1`, so only the replacement can answer. Per run: the
active instance's pid from `status --json` (the client's status_json, in this
process), SIGKILL through a pidfd, t0 right after; then one GET on a new
connection (timeout 30 s), which waits in the daemon-held socket's backlog
until a process accepts; t1 when the whole response has arrived. The answering
pid must differ from the killed one (and with a spare, be the spare's). Then
a wait, polling status, until the slot and every spare run again before the
next run. Each run also times, for the breakdown, the victim's exit (a thread
of ours waiting on its pidfd: the kernel done with it) and when the daemon
reaped it (the stamp of its exit event). Three kinds: `spares = 1` with
STARTUP_SECONDS=2 (--runs, default 20), `spares = 0` with STARTUP_SECONDS=2, a
cold restart (--cold-runs, 5), and a bare worker, STARTUP_SECONDS=0 and no
spare (--bare-runs, 10). Floor, what
the machine itself takes: kill -> the victim gone, plus one GET to the live
instance just before the kill (medians). Target (the issue): spare median
<= 2 ms and p99 <= 10 ms, absolute.

`load`: `instances = 2`, STARTUP_SECONDS=2; 8 client threads, each doing GETs
on new connections (`Connection: close`, 5 s timeout) in a loop, for
--duration seconds (default 60), while once a second an active instance is
SIGKILLed: the slots alternate (0, 1, 0, ...), and when that slot is not
running (a cold restart still starting) the other one is taken if it runs,
else the tick is skipped. `spares = 0`, then `spares = 2`, one after the
other. Reported: requests done, failed (by kind: `dropped` is a request the
killed process had accepted, reset, closed or cut short with it whatever the
spares; `timeout`; `refused`; `bad`), p50/p99 latency of the successful ones,
kills, promotions (from the events), and kills that found no spare ready
(from the status read just before the kill). A failure that does not end
within 250 ms of a kill is counted as "away from a kill". With spares, a
failure of any kind but `dropped`, or one away from a kill, fails the figure.

Every daemon is stopped with `supervise shutdown`, then waited for; after
each, no process it ran may be left. See benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import select
import signal
import socket
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from harness import PY, BenchError, Supervised, median, ms, settle, wait_for  # noqa: E402
from helpers import free_port  # noqa: E402  (tests/, put on the path by harness)
from runner import Bench, Options, main, run_selected  # noqa: E402

from supervise.client import Client, ClientError  # noqa: E402

EXAMPLES = HERE.parent / "examples"
FIGURES = ("crash", "load")
STARTUP = 2.0  # STARTUP_SECONDS of the slow web.py: a model to load, a cache to warm
TARGET_MEDIAN = 0.002
TARGET_P99 = 0.010
AT_KILL = 0.25  # a failure ending this long after a kill is put down to it
REQUEST = b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"


def web_app(port: int, instances: int, spares: int, startup: float) -> str:
    """One app, `web`: examples/web.py behind a listen socket, ready by heartbeat, no backoff in the way."""
    argv = ", ".join(json.dumps(part) for part in [PY, str(EXAMPLES / "web.py")])
    return (f"[apps.web]\ncommand = [{argv}]\ninstances = {instances}\nspares = {spares}\n"
            f'readiness = "heartbeat"\nheartbeat_timeout = "5s"\nlisten = ["127.0.0.1:{port}"]\n'
            f'env = {{ STARTUP_SECONDS = "{startup:g}" }}\nstop_timeout = "10s"\nstart_timeout = "30s"\n'
            'backoff = { reset_after = "100ms" }\ncrash_loop = { max_restarts = 100000, window = "1s" }\n')


def pct(values: list[float], q: float) -> float:
    """Nearest-rank percentile (p99 of 20 samples is the largest)."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


def spread(values: list[float]) -> str:
    return f"median {ms(median(values))}, p90 {ms(pct(values, 0.9))}, p99/max {ms(pct(values, 0.99))}"


# -- one request -------------------------------------------------------------------------


class Failed(Exception):
    """A request that got no good answer; `kind` sorts it: dropped (reset, closed or cut short by the
    server: in flight at a process that was killed), timeout, refused, error, bad."""

    def __init__(self, kind: str, detail: str) -> None:
        super().__init__(f"{kind}: {detail}")
        self.kind = kind


def get(port: int, timeout: float) -> dict:
    """One GET / on a new connection: the JSON body (with "pid" and "instance"), or Failed."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
            sock.sendall(REQUEST)
            chunks = []
            while chunk := sock.recv(65536):
                chunks.append(chunk)
    except TimeoutError as exc:
        raise Failed("timeout", str(exc)) from None
    except ConnectionRefusedError as exc:
        raise Failed("refused", str(exc)) from None
    except (ConnectionResetError, BrokenPipeError) as exc:
        raise Failed("dropped", str(exc)) from None
    except OSError as exc:
        raise Failed("error", f"{type(exc).__name__}: {exc}") from None
    data = b"".join(chunks)
    if not data:
        raise Failed("dropped", "closed without an answer")
    head, _, body = data.partition(b"\r\n\r\n")
    length = next((int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")[1:]
                   if line.lower().startswith(b"content-length:")), None)
    if length is not None and len(body) < length:  # its process died while it answered
        raise Failed("dropped", f"cut short: {len(body)} of {length} bytes of body")
    if head.split(b" ", 2)[1:2] != [b"200"]:
        raise Failed("bad", f"answer {head[:60]!r}")
    try:
        return json.loads(body)
    except ValueError:
        raise Failed("bad", f"body {body[:60]!r}") from None


class Gone:
    """A thread blocked on a pidfd that stamps (CLOCK_MONOTONIC) when the process has exited."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.killed = 0.0  # CLOCK_MONOTONIC, just before the kill
        self.wall = 0.0  # the same moment on the wall clock
        self.at: float | None = None
        waiting = threading.Event()
        self._thread = threading.Thread(target=self._wait, args=(waiting,), daemon=True)
        self._thread.start()
        waiting.wait()  # the thread keeps the GIL from set() until select() lets it go: it waits when we go on

    def _wait(self, waiting: threading.Event) -> None:
        waiting.set()
        if select.select([self.fd], [], [], 30)[0]:
            self.at = time.monotonic()

    def after(self) -> float | None:
        """Kill -> gone, in seconds (None: not gone within 30 s); closes the pidfd."""
        self._thread.join(31)
        os.close(self.fd)
        return None if self.at is None else self.at - self.killed


# -- the daemon's view -------------------------------------------------------------------


class Web:
    """A started daemon on the `web` app, and its status read in this process (no CLI start per poll)."""

    def __init__(self, b: Bench, d: Supervised, port: int, instances: int, spares: int) -> None:
        self.b, self.d, self.port, self.instances, self.spares = b, d, port, instances, spares
        self.client = Client.from_config(d.config)
        self.pids: set[int] = set()  # every worker pid seen: none may be left at the end

    def rows(self) -> list[dict] | None:
        """The app's instances, as `status --json` lists them (with "role"); None while it does not answer."""
        try:
            data = self.client.status_json("web")
        except ClientError:
            return None
        rows = data["apps"][0]["instances"]
        for row in rows:
            if row["pid"]:
                self.pids.add(row["pid"])
                self.b.procs.saw_pid(row["pid"])
        return rows

    def settled(self, gone: set[int] | frozenset[int] = frozenset()) -> list[dict]:
        """The rows once every slot and every spare runs, none of them a pid in `gone`."""
        def check() -> list[dict] | None:
            self.d.check_running()
            rows = self.rows()
            if rows is None:
                return None
            active = [r for r in rows if r["role"] == "active"]
            spare = [r for r in rows if r["role"] == "spare"]
            ok = (len(active) == self.instances and len(spare) == self.spares
                  and all(r["state"] == "running" and r["pid"] and r["pid"] not in gone for r in active + spare))
            return rows if ok else None
        return wait_for(check, 60, f"{self.instances} active and {self.spares} spare instances running", 0.02)

    def check_roles(self) -> None:
        """The CLI's `status --json` lists the spares with "role": "spare" (once per daemon)."""
        rows = self.d.status()
        roles = sorted(r.get("role", "?") for r in rows)
        want = sorted(["active"] * self.instances + ["spare"] * self.spares)
        if roles != want:
            raise BenchError(f"status --json roles {roles}, expected {want}")

    def kill(self, pid: int) -> bool:
        """SIGKILL `pid` through a pidfd (after checking it is ours: never a reused pid); False if gone."""
        if self.b.procs.ours(pid) is None:
            return False
        try:
            fd = os.pidfd_open(pid)
        except ProcessLookupError:
            return False
        try:
            signal.pidfd_send_signal(fd, signal.SIGKILL)
        except ProcessLookupError:
            return False
        finally:
            os.close(fd)
        return True

    def kill_watched(self, pid: int) -> Gone:
        """SIGKILL `pid` as `kill` does, with a thread already waiting on its pidfd: the moment the
        kernel is done with it (readable pidfd), without the daemon. Raises BenchError if it is gone."""
        if self.b.procs.ours(pid) is None:
            raise BenchError(f"pid {pid} was gone before the kill")
        gone = Gone(os.pidfd_open(pid))
        gone.wall = time.time()  # for the daemon's event stamps
        gone.killed = time.monotonic()
        try:
            signal.pidfd_send_signal(gone.fd, signal.SIGKILL)
        except ProcessLookupError:
            gone.after()  # its pidfd is readable already: the thread returns at once
            raise BenchError(f"pid {pid} was gone before the kill") from None
        return gone

    def exit_seen(self) -> float | None:
        """The wall-clock stamp of the event saying the last killed slot exited: when the daemon reaped it (the
        events carry the time of their cause). A promotion is published in the same step."""
        events = list(self.client.events(since=0, follow=False))
        # The exit's own event carries no pid: it is the slot's last SIGKILL exit, ours a moment ago.
        kills = [e for e in events if e.get("type") == "state" and (e.get("exit") or {}).get("signal") == 9
                 and e.get("index") is not None]
        return kills[-1]["time"] if kills else None

    def promotions(self) -> int:
        return sum(1 for e in self.d.events() if e.get("type") == "promoted")

    def shutdown(self) -> None:
        """`supervise shutdown`, the daemon gone, then no worker of it left (a short deadline: they are
        stopped before the daemon exits)."""
        self.d.shutdown()
        self.client.close()
        try:
            wait_for(lambda: not self.b.procs.leftovers(self.pids), 5, "the workers gone after shutdown")
        except BenchError:
            raise BenchError(f"left running after shutdown: {self.b.procs.leftovers(self.pids)}") from None


def start_web(b: Bench, name: str, instances: int, spares: int, startup: float) -> Web:
    port = free_port()
    d = b.started(name, web_app(port, instances, spares, startup))
    web = Web(b, d, port, instances, spares)
    web.settled()
    web.check_roles()
    get(port, 10)  # the first answer, before anything is timed
    return web


# -- crash -> first request --------------------------------------------------------------


@dataclass
class CrashRuns:
    label: str
    latencies: list[float] = field(default_factory=list)  # kill -> the replacement's answer
    floor: list[float] = field(default_factory=list)  # a GET to the live instance, just before the kill
    not_spare: int = 0  # answered by a pid other than the spare's (with a spare)
    gone: list[float] = field(default_factory=list)  # kill -> its pidfd readable (the kernel is done)
    seen: list[float] = field(default_factory=list)  # kill -> the daemon reaped it (its event's stamp)

    def floor_median(self) -> float:
        """What the machine takes with no supervisor in the way: the victim gone, then a GET answered."""
        return (median(self.gone) if self.gone else 0.0) + median(self.floor)


def crash_runs(b: Bench, label: str, spares: int, startup: float, runs: int) -> CrashRuns:
    b.say(f"\n[crash: {label}] spares = {spares}, STARTUP_SECONDS={startup:g}, instances = 1; {runs} runs")
    web = start_web(b, f"crash-{label}", 1, spares, startup)
    out = CrashRuns(label)
    killed: set[int] = set()
    for run in range(runs):
        settle(0.3)  # the last run's after-effects (the new spare's start) out of the way
        t = time.monotonic()
        get(web.port, 10)
        out.floor.append(time.monotonic() - t)
        rows = web.settled(killed)
        victim = next(r["pid"] for r in rows if r["role"] == "active")
        spare_pids = {r["pid"] for r in rows if r["role"] == "spare"}
        gone = web.kill_watched(victim)
        t0 = time.monotonic()
        try:
            answer = get(web.port, 30)
        except Failed as exc:
            raise BenchError(f"run {run + 1}: the request after killing {victim} failed ({exc})\n"
                             f"{web.d.log_tail()}") from None
        t1 = time.monotonic()
        killed.add(victim)
        if answer["pid"] == victim:
            raise BenchError(f"run {run + 1}: answered by the killed pid {victim}")
        note = ""
        if spares and answer["pid"] not in spare_pids:
            out.not_spare += 1
            note = f"  (NOT the spare: spares were {sorted(spare_pids)})"
        out.latencies.append(t1 - t0)
        exited = gone.after()
        if exited is not None:
            out.gone.append(exited)
        seen = web.exit_seen()
        if seen is not None:
            out.seen.append(seen - gone.wall)
        b.say(f"  run {run + 1}: killed {victim}, answered by {answer['instance']} pid {answer['pid']} "
              f"after {ms(t1 - t0)} (gone at {'?' if exited is None else ms(exited)}, reaped by the daemon at "
              f"{'?' if seen is None else ms(seen - gone.wall)}){note}")
        web.settled(killed)  # the slot runs, and the spare behind it, before the next kill
    web.shutdown()
    b.say(f"  {label}: {spread(out.latencies)}; a GET to the live instance: median {ms(median(out.floor))}; "
          f"kill -> gone: median {ms(median(out.gone)) if out.gone else '?'}; kill -> reaped by the daemon: "
          f"median {ms(median(out.seen)) if out.seen else '?'}")
    b.raw[f"crash-{label}"] = {"latencies": out.latencies, "get": out.floor, "not_spare": out.not_spare,
                               "gone": out.gone, "reaped": out.seen}
    return out


def bench_crash(b: Bench) -> None:
    spare = crash_runs(b, "spare", 1, STARTUP, b.args.runs)
    cold = crash_runs(b, "cold", 0, STARTUP, b.args.cold_runs)
    bare = crash_runs(b, "bare", 0, 0.0, b.args.bare_runs)
    ratio = median(cold.latencies) / median(spare.latencies)
    b.say(f"\n  cold / spare (medians): x{ratio:,.0f}")
    ok = (median(spare.latencies) <= TARGET_MEDIAN and pct(spare.latencies, 0.99) <= TARGET_P99
          and spare.not_spare == 0)
    b.add("crash -> first request, spares = 1", ms(median(spare.latencies)), ms(spare.floor_median()),
          f"p90 {ms(pct(spare.latencies, 0.9))}, p99/max {ms(pct(spare.latencies, 0.99))} "
          f"(target median <= {ms(TARGET_MEDIAN)}, p99 <= {ms(TARGET_P99)})"
          + (f"; {spare.not_spare} not by the spare" if spare.not_spare else ""), ok)
    b.add("crash -> first request, cold (2 s start)", ms(median(cold.latencies)), ms(cold.floor_median()),
          f"p90 {ms(pct(cold.latencies, 0.9))}, p99/max {ms(pct(cold.latencies, 0.99))}; x{ratio:,.0f} of spare",
          None)
    b.add("crash -> first request, bare worker", ms(median(bare.latencies)), ms(bare.floor_median()),
          f"p90 {ms(pct(bare.latencies, 0.9))}, p99/max {ms(pct(bare.latencies, 0.99))}", None)


# -- steady load with kills --------------------------------------------------------------


@dataclass
class LoadResult:
    ok: int = 0
    latencies: list[float] = field(default_factory=list)  # of the successful requests, seconds
    failed: dict[str, int] = field(default_factory=dict)  # by kind
    first_errors: list[str] = field(default_factory=list)
    failed_at: list[tuple[float, str]] = field(default_factory=list)  # when each ended (monotonic), and why
    elapsed: float = 0.0

    @property
    def failures(self) -> int:
        return sum(self.failed.values())


class Load:
    """`clients` threads, each a loop of GETs on new connections, until stopped."""

    def __init__(self, port: int, clients: int, timeout: float) -> None:
        self.port, self.timeout = port, timeout
        self.result = LoadResult()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._client, daemon=True) for _ in range(clients)]
        self._started = 0.0

    def start(self) -> Load:
        self._started = time.monotonic()
        for t in self._threads:
            t.start()
        return self

    def stop(self) -> LoadResult:
        self._stop.set()
        for t in self._threads:
            t.join(self.timeout + 5)
            if t.is_alive():
                raise BenchError("a load thread did not finish")
        self.result.elapsed = time.monotonic() - self._started
        return self.result

    def _client(self) -> None:
        while not self._stop.is_set():
            began = time.monotonic()
            try:
                get(self.port, self.timeout)
            except Failed as exc:
                with self._lock:
                    self.result.failed[exc.kind] = self.result.failed.get(exc.kind, 0) + 1
                    self.result.failed_at.append((time.monotonic(), str(exc)))
                    if len(self.result.first_errors) < 5:
                        self.result.first_errors.append(f"{time.monotonic() - self._started:.2f}s {exc}")
            else:
                took = time.monotonic() - began
                with self._lock:
                    self.result.ok += 1
                    self.result.latencies.append(took)


@dataclass
class LoadRun:
    spares: int
    result: LoadResult
    kills: int
    skipped: int  # ticks with no slot running
    promotions: int
    no_spare: int  # kills when no spare was running (with spares)
    away: int  # failures that did not end within AT_KILL of a kill

    def describe(self) -> str:
        r = self.result
        kinds = ", ".join(f"{n} {k}" for k, n in sorted(r.failed.items())) or "none"
        lat = (f"p50 {ms(pct(r.latencies, 0.5))}, p99 {ms(pct(r.latencies, 0.99))}, max {ms(max(r.latencies))}"
               if r.latencies else "no latencies")
        return (f"{r.ok + r.failures} requests ({(r.ok + r.failures) / r.elapsed:,.0f}/s), failed {r.failures} "
                f"({kinds}); {lat}; {self.kills} kills ({self.skipped} ticks skipped), {self.promotions} promotions"
                + (f", {self.no_spare} kills with no spare ready" if self.spares else "")
                + f"; {self.away} failures away from a kill")


def load_run(b: Bench, spares: int) -> LoadRun:
    duration = b.args.duration
    b.say(f"\n[load: spares = {spares}] instances = 2, STARTUP_SECONDS={STARTUP:g}, {b.args.clients} clients, "
          f"{duration:g} s, a kill a second")
    web = start_web(b, f"load-s{spares}", 2, spares, STARTUP)
    kills = skipped = no_spare = 0
    killed_at: list[float] = []
    gen = Load(web.port, b.args.clients, 5.0).start()
    began = time.monotonic()
    tick = 1
    try:
        while tick < duration:
            pause = began + tick - time.monotonic()
            if pause > 0:
                time.sleep(pause)  # pacing the kills, not synchronization
            rows = web.rows() or []
            running = {r["index"]: r["pid"] for r in rows
                       if r["role"] == "active" and r["state"] == "running" and r["pid"]}
            ready_spares = sum(1 for r in rows if r["role"] == "spare" and r["state"] == "running")
            want = tick % 2
            target = running.get(want) or running.get(1 - want)
            if target is not None and web.kill(target):
                killed_at.append(time.monotonic())
                kills += 1
                if spares and not ready_spares:
                    no_spare += 1
            else:
                skipped += 1
            tick += 1
        left = began + duration - time.monotonic()
        if left > 0:
            time.sleep(left)  # the rest of the window
    finally:
        result = gen.stop()
    away_list = [(t, why) for t, why in result.failed_at if not any(k - 0.005 <= t <= k + AT_KILL for k in killed_at)]
    away = len(away_list)
    run = LoadRun(spares, result, kills, skipped, web.promotions(), no_spare, away)
    web.shutdown()
    b.say(f"  {run.describe()}")
    if result.first_errors:
        b.say(f"  first failures: {result.first_errors}")
    for t, why in away_list[:10]:
        last = max((k for k in killed_at if k <= t), default=None)
        b.say(f"  away from a kill: {t - began:.3f}s, "
              f"{'no kill before' if last is None else f'{ms(t - last)} after the last kill'}: {why}")
    b.raw[f"load-s{spares}"] = {"ok": result.ok, "failed": result.failed, "kills": kills, "skipped": skipped,
                                "promotions": run.promotions, "no_spare": no_spare, "elapsed": result.elapsed,
                                "away_from_kills": away,
                                "p50": pct(result.latencies, 0.5) if result.latencies else None,
                                "p99": pct(result.latencies, 0.99) if result.latencies else None}
    return run


def bench_load(b: Bench) -> None:
    for spares in (0, 2):
        run = load_run(b, spares)
        r = run.result
        lat = (f"p50 {ms(pct(r.latencies, 0.5))}, p99 {ms(pct(r.latencies, 0.99))}" if r.latencies else "-")
        kinds = ", ".join(f"{n} {k}" for k, n in sorted(r.failed.items()))
        # A dropped request was in flight at the killed process: lost with it, spares or not. With
        # spares, nothing else may fail: the other kinds mean nobody served in time.
        ok = None if not spares else (sum(n for k, n in r.failed.items() if k != "dropped") == 0
                                      and run.away == 0)
        b.add(f"load + 1 kill/s, spares = {spares}", f"{r.ok + r.failures} req, {r.failures} failed", "",
              f"{lat}; {kinds or 'no failures'} ({run.away} away from a kill); {run.kills} kills, "
              f"{run.promotions} promoted"
              + (f", {run.no_spare} found no spare ready (target: only dropped, at kills)" if spares else ""),
              ok)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    opts = Options(__doc__, FIGURES)
    opts.number("--runs", int, 20, 5, "crash runs with a spare")
    opts.number("--cold-runs", int, 5, 3, "crash runs with no spare (each ~2 s)")
    opts.number("--bare-runs", int, 10, 5, "crash runs of a bare worker (STARTUP_SECONDS=0)")
    opts.number("--duration", float, 60, 10, "seconds of load per spares setting")
    opts.add("--clients", type=int, default=8, help="load client threads (default 8)")
    return opts.parse(argv)


def run(b: Bench) -> None:
    b.warm_up(imports=("supervise.worker", "supervise.client", "http.server"))
    run_selected(b, ("crash", bench_crash), ("load", bench_load))


if __name__ == "__main__":
    sys.exit(main("spares", parse_args(None), run))
