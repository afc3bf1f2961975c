#!/usr/bin/env python3
"""Health benchmarks of supervise: heartbeat ingest, hang detection, memory restart, sampling, 1,000 beating.

    python benchmarks/health.py            # the full run, about five minutes
    python benchmarks/health.py --quick    # a smoke check, under two minutes
    python benchmarks/health.py --only ingest --only hang

Every figure has a floor or baseline measured in the same run where one
exists (the machine is shared and noisy). Times are exact, not polled where
it matters: workers stamp CLOCK_MONOTONIC themselves and send the stamp in a
datagram to a socket this script binds (harness.Inbox). See
benchmarks/README.md for what each figure means; benchmarks/harness.py for
the process registry that cleans up whatever happens.
"""

from __future__ import annotations

import argparse
import heapq
import json
import math
import os
import queue
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import (
    PY,
    BenchError,
    Hello,
    MiB,
    Supervised,
    cpu_seconds,
    for_seconds,
    median,
    ms,
    settle,
    usage,
    wait_for,
)
from runner import Bench, Options, handle_signals, main, run_selected

from supervise.config.locate import locate_state_dir
from supervise.control.client import Control, ControlError, NoDaemon
from supervise.runtime import sampler
from supervise.runtime.cgroups import Cgroups
from supervise.wire import protocol
from supervise.wire.statedir import StatePaths

HERE = Path(__file__).resolve().parent
HEALTH_WORKER = HERE / "health_worker.py"
LOAD = HERE / "health_load.py"
SINK = HERE / "health_sink.py"
FIGURES = ("ingest", "hang", "memory", "sampler", "beat1000")
OTHER_BENCHMARKS = ("foundation.py",)  # never measured at the same time as ours
T = TypeVar("T")


class Health(Bench):
    """A run of the health figures, which also start helper processes (generators, sinks, py-spy)."""

    def helper(self, argv: list[str]) -> Helper:
        return Helper(self, argv)


class Helper:
    """A helper process (load generator, raw sink, py-spy) whose stdout lines we wait for.

    Recorded as a floor process, so cleanup ends it by pid whatever happens.
    """

    def __init__(self, b: Health, argv: list[str]) -> None:
        self.b = b
        self.argv = argv
        self.out: Path | None = None  # where it writes its result, for those that do (py-spy)
        self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                     stderr=b.floor_log, cwd=b.dir, env=b.procs.env(), text=True)
        b.procs.floor.append(self.proc)
        self.lines: queue.Queue[str | None] = queue.Queue()
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.lines.put(line.rstrip("\n"))
        self.lines.put(None)

    def expect(self, prefix: str, timeout: float, wait: bool = True) -> str | None:
        """The rest of the next line starting with `prefix`; None after `timeout` if not `wait`."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                line = self.lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                if not wait:
                    return None
                raise BenchError(f"{Path(self.argv[1]).name}: no '{prefix}' line within {timeout:g}s") from None
            if line is None:
                self.lines.put(None)  # stays at EOF
                raise BenchError(f"{Path(self.argv[1]).name} exited ({self.proc.wait()}) before '{prefix}'; "
                                 f"see floor.log")
            if line.startswith(prefix):
                return line[len(prefix):].strip()

    def finish(self, timeout: float = 30) -> None:
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.b.procs.stop_floor([self.proc])
            raise BenchError(f"{Path(self.argv[1]).name} did not exit") from None
        self.b.procs.floor = [p for p in self.b.procs.floor if p is not self.proc]
        if code != 0:
            raise BenchError(f"{Path(self.argv[1]).name} exited {code}; see floor.log")


def per_second(value: float) -> str:
    """A rate as the table shows it."""
    return f"{value:,.0f}/s"


# -- the daemon, seen from outside ------------------------------------------------------


def control(d: Supervised) -> Control:
    """The CLI's own client for `d`: polling it costs no interpreter start."""
    return Control(StatePaths(locate_state_dir(d.config)))


def status(d: Supervised) -> dict:
    """`status --json`'s result, over the CLI's own client code (no interpreter start per call)."""
    try:
        return control(d).request(protocol.Request("status"), timeout=30)
    except (ControlError, NoDaemon) as exc:
        raise BenchError(f"status failed: {exc}\n{d.log_tail()}") from None


def counters(result: dict) -> dict:
    """The daemon's heartbeat counters (accepted, rejected, malformed) in a status."""
    return result["daemon"]["heartbeats"]


def instances(result: dict) -> list[dict]:
    """Every instance in a status, whatever its app."""
    return [i for app in result["apps"] for i in app["instances"]]


def heartbeat_endpoint(d: Supervised) -> str:
    """Where `d`'s workers beat: the load generator and sinks beat there for them."""
    return f"ipc://{StatePaths(locate_state_dir(d.config)).heartbeat_socket}"


def thread_cpu(pid: int) -> Counter:
    """CPU seconds by thread: the main thread (the daemon's event loop), ZeroMQ's I/O thread, the rest."""
    out: Counter = Counter()
    for t in psutil.Process(pid).threads():
        try:
            with open(f"/proc/{pid}/task/{t.id}/comm") as f:
                name = f.read().strip()
        except OSError:
            name = "?"
        if t.id == pid:
            name = "main thread"
        elif name.startswith("ZMQbg/IO"):
            name = "zmq I/O"
        elif not name.startswith("ZMQbg"):
            name = "other threads"  # the executor (sampling, sweeps, log rotation)
        out[name] += t.user_time + t.system_time
    return out


def thread_breakdown(before: Counter, after: Counter) -> str:
    """Where the CPU between two `thread_cpu` readings went, busiest thread first."""
    delta = {k: after[k] - before.get(k, 0.0) for k in after}
    return ", ".join(f"{k} {v:.2f} s" for k, v in sorted(delta.items(), key=lambda kv: -kv[1]) if v >= 0.005)


# -- shell workers that hand us their tokens -------------------------------------------


def shell_worker(tokens: Path) -> list[str]:
    """A tiny worker: append "<name> <token> <pid>" to `tokens`, then become `sleep`.

    The token is a per-spawn secret; the worker's environment is the only
    place to get a valid one. `exec` keeps the pid ($$) and leaves one cheap
    process per instance. (No braces: the command is a template.)
    """
    script = (f'printf "%s %s %s\\n" "$SUPERVISE_NAME" "$SUPERVISE_TOKEN" "$$" >> {shlex.quote(str(tokens))}; '
              "exec sleep 3600")
    return ["/bin/sh", "-c", script]


def read_tokens(tokens: Path) -> dict[str, tuple[str, str]]:
    """(token, pid) by instance name, the newest line of each (a restarted instance writes again)."""
    latest: dict[str, tuple[str, str]] = {}
    try:
        for line in tokens.read_text().splitlines():
            parts = line.split()
            if len(parts) == 3:
                latest[parts[0]] = (parts[1], parts[2])
    except FileNotFoundError:
        pass  # no instance has started yet
    return latest


def wait_tokens(d: Supervised, tokens: Path, n: int, timeout: float) -> Path:
    """Wait until `n` instances have written their token; returns a clean copy (the newest per name)."""
    def check() -> dict[str, tuple[str, str]] | None:
        d.check_running()
        latest = read_tokens(tokens)
        return latest if len(latest) >= n else None
    latest = wait_for(check, timeout, f"{n} instances to write their token", interval=0.1)
    clean = tokens.with_suffix(".clean")
    clean.write_text("".join(f"{name} {tok} {pid}\n" for name, (tok, pid) in sorted(latest.items())))
    return clean


def wait_running(d: Supervised, n: int, timeout: float) -> dict:
    """The status, once `n` instances are running (polled over the control client, not the CLI)."""
    def check() -> dict | None:
        result = status(d)
        return result if sum(1 for i in instances(result) if i["state"] == "running") == n else None
    return wait_for(check, timeout, f"{n} instances running", interval=0.2)


def shell_daemon(b: Health, name: str, n: int, timeout: float) -> tuple[Supervised, Path]:
    """A daemon running `n` shell workers, all running and settled; (it, the clean token file)."""
    root = b.dir / name
    root.mkdir()
    d = b.daemon(name, n, shell_worker(root / "tokens"))
    d.start()
    tokens = wait_tokens(d, root / "tokens", n, timeout)
    wait_running(d, n, timeout / 2)
    return d, tokens


def record_profile(b: Health, pid: int, name: str) -> Helper | None:
    """py-spy on the daemon (--py-spy DIR), stopped by stop_profile; None without the option."""
    if not b.args.py_spy:
        return None
    exe = shutil.which("py-spy")
    if exe is None:
        raise BenchError("--py-spy: py-spy is not installed (pip install py-spy)")
    out = Path(b.args.py_spy) / f"{name}.txt"
    out.parent.mkdir(parents=True, exist_ok=True)
    h = b.helper([exe, "record", "--pid", str(pid), "--rate", "250", "--nonblocking", "--threads",
                  "--format", "raw", "--output", str(out)])
    h.out = out
    settle(0.5)  # py-spy attaches; it says nothing when it has
    return h


def stop_profile(b: Health, h: Helper | None) -> None:
    """Stop py-spy (it writes on SIGINT) and print the frames with the most own time."""
    if h is None:
        return
    h.proc.send_signal(signal.SIGINT)  # py-spy writes its output on SIGINT
    try:
        h.proc.wait(30)
    except subprocess.TimeoutExpired:
        pass
    b.procs.stop_floor([h.proc])
    try:
        lines = h.out.read_text().splitlines()
    except OSError:
        b.say(f"  (py-spy wrote nothing to {h.out})")
        return
    own: Counter = Counter()
    total = 0
    for line in lines:
        stack, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue
        total += int(count)
        frames = stack.split(";")
        own[frames[-1]] += int(count)
    b.say(f"  py-spy ({total} samples, {h.out}): top frames by own time")
    for frame, count in own.most_common(12):
        b.say(f"    {count / max(1, total) * 100:5.1f} %  {frame}")


# -- 1. heartbeat ingest ----------------------------------------------------------------


@dataclass
class IngestRun:
    rate: float  # messages per second, first send -> all processed
    send_rate: float  # the generator's own pace
    cpu: float  # receiver's CPU seconds


def ingest_raw(b: Health, tokens: Path, total: int, r: int) -> IngestRun:
    """The floor: the same burst into a bare pyzmq ROUTER that only json-decodes."""
    endpoint = f"ipc://{b.dir}/raw{r}.sock"
    sink = b.helper([PY, str(SINK), endpoint, str(total)])
    sink.expect("ready", 30)
    gen = b.helper([PY, str(LOAD), endpoint, str(tokens), "--count", str(total), "--sockets", str(b.args.sockets)])
    limit = 60 + total / 5000
    sent = json.loads(gen.expect("done", limit))
    got = json.loads(sink.expect("done", limit))
    gen.finish()
    sink.finish()
    return IngestRun(total / (got["last"] - sent["first"]), total / (sent["last"] - sent["first"]), got["cpu"])


def ingest_ours(b: Health, d: Supervised, tokens: Path, total: int, profile: bool) -> tuple[IngestRun, str]:
    """One burst into the daemon, timed until a status shows every beat accepted; and the CPU by thread."""
    pid = d.proc.pid
    before = counters(status(d))
    target = before["accepted"] + total
    spy = record_profile(b, pid, "ingest") if profile else None
    c0, th0 = cpu_seconds(pid), thread_cpu(pid)
    gen = b.helper([PY, str(LOAD), heartbeat_endpoint(d), str(tokens), "--count", str(total),
                    "--sockets", str(b.args.sockets)])
    limit = 60 + total / 5000
    sent = json.loads(gen.expect("done", limit))
    deadline = time.monotonic() + limit
    while True:  # poll only once everything has been sent: it cannot be counted before
        now_counters = counters(status(d))
        counted = time.monotonic()
        if now_counters["accepted"] >= target:
            break
        if time.monotonic() > deadline:
            raise BenchError(f"ingest: {now_counters['accepted'] - before['accepted']}/{total} accepted "
                             f"after {limit:g}s")
        time.sleep(0.01)
    c1, th1 = cpu_seconds(pid), thread_cpu(pid)
    gen.finish()
    stop_profile(b, spy)
    for key in ("rejected", "malformed"):
        if now_counters[key] != before[key]:
            raise BenchError(f"ingest: {now_counters[key] - before[key]} beats counted as {key}")
    if now_counters["accepted"] != target:
        raise BenchError(f"ingest: {now_counters['accepted'] - before['accepted']} accepted, sent {total}")
    run = IngestRun(total / (counted - sent["first"]), total / (sent["last"] - sent["first"]), c1 - c0)
    return run, thread_breakdown(th0, th1)


def bench_ingest(b: Health) -> None:
    """Heartbeat ingest rate against a raw ROUTER's, interleaved run by run."""
    n, total, runs = b.args.ingest_instances, b.args.beats, b.args.ingest_runs
    b.say(f"\n[ingest] {total:,} valid beats for {n} instances from one generator process "
          f"({b.args.sockets} DEALER{'s' if b.args.sockets > 1 else ''}, blocking sends) -> all accepted; "
          f"vs a raw pyzmq ROUTER that json-decodes them; {runs} runs, interleaved")
    d, tokens = shell_daemon(b, "ingest", n, 120)
    settle(1.0)
    ours, raw, threads = [], [], []
    for r in range(runs):
        raw.append(ingest_raw(b, tokens, total, r))
        settle(0.5)
        run, breakdown = ingest_ours(b, d, tokens, total, profile=r == 0)
        ours.append(run)
        threads.append(breakdown)
        b.say(f"  run {r + 1}: ours {per_second(run.rate)} (generator's pace {per_second(run.send_rate)}, "
              f"daemon CPU {run.cpu:.2f} s: {breakdown})  raw {per_second(raw[-1].rate)} "
              f"(generator's pace {per_second(raw[-1].send_rate)}, sink CPU {raw[-1].cpu:.2f} s)")
        settle(0.5)
    final = status(d)
    d.shutdown()
    hb = counters(final)
    if hb["rejected"] or hb["malformed"]:
        raise BenchError(f"ingest: counters at the end {hb}")
    rate, raw_rate = median([r.rate for r in ours]), median([r.rate for r in raw])
    cpu, raw_cpu = median([r.cpu for r in ours]), median([r.cpu for r in raw])
    b.say(f"  medians: ours {per_second(rate)}, raw {per_second(raw_rate)} (x{rate / raw_rate:.2f}); "
          f"counters at the end {hb} (rejected and malformed stayed 0)")
    b.say(f"  CPU per beat: daemon {cpu / total * 1e6:.1f} us (median {cpu:.2f} s per {total:,}), "
          f"raw sink {raw_cpu / total * 1e6:.1f} us")
    b.raw["ingest"] = {"ours": [r.__dict__ for r in ours], "raw": [r.__dict__ for r in raw], "threads": threads,
                       "counters": hb}
    b.add(f"heartbeat ingest, {n} instances", per_second(rate), f"raw {per_second(raw_rate)}",
          f"x{rate / raw_rate:.2f} of raw (>= 50,000/s)", rate >= 50_000)
    b.add("ingest: daemon CPU per beat", f"{cpu / total * 1e6:.1f} us", f"raw {raw_cpu / total * 1e6:.1f} us",
          f"x{cpu / raw_cpu:.1f}, rejected/malformed {hb['rejected']}/{hb['malformed']}", None)


# -- 2. hang detection ------------------------------------------------------------------

HANG_TIMEOUT = 1.0
HANG_EXTRA = """\
heartbeat_timeout = "1s"
readiness = "heartbeat"
# Every run lasts >= 1.5 s (ready, beats for 0.5-2 s, then 1 s of silence), so
# each hang is a first failure in a row and restarted at once.
backoff = { reset_after = "1s" }
crash_loop = { max_restarts = 100000, window = "1s" }
"""


def bench_hang(b: Health) -> None:
    """Hang detection: how long after heartbeat_timeout a silent worker gets its SIGTERM."""
    want, k = b.args.hangs, b.args.hang_instances
    floor_want, floor_k = max(5, want // 2), 2
    b.say(f"\n[hang] heartbeat_timeout 1s: (SIGTERM arrives - last beat) - 1s, over {want} hangs of {k} "
          f"instances beating from their loop; floor: this script's own timer + kill, {floor_want} hangs "
          f"of {floor_k} plain processes, at the same time")
    argv = [PY, str(HEALTH_WORKER), "hang"]
    d = b.daemon("hang", k, argv, HANG_EXTRA)
    interval = str(round(min(1.0, HANG_TIMEOUT / 3), 3))  # what the daemon gives its workers
    floor_procs: dict[int, subprocess.Popen] = {}
    floor_started = 0

    def start_floor() -> None:
        nonlocal floor_started
        p = b.popen(argv, SUPERVISE_NAME=f"floor:{floor_started}", SUPERVISE_HEARTBEAT_INTERVAL=interval)
        floor_procs[p.pid] = p
        floor_started += 1

    b.inbox.clear()
    d.start()
    for _ in range(floor_k):
        start_floor()
    kills: list[tuple[float, int]] = []  # the floor's timer: (due, pid)
    quiet: set[int] = set()
    ours: list[float] = []
    floor: list[float] = []
    early: list[tuple[int, float]] = []  # signalled while still beating, or before the timeout ran out
    deadline = time.monotonic() + 60 + 8 * want
    while len(ours) < want or len(floor) < floor_want:
        now = time.monotonic()
        while kills and kills[0][0] <= now:
            _, pid = heapq.heappop(kills)
            if floor_procs[pid].poll() is None:
                os.kill(pid, signal.SIGTERM)
        if now > deadline:
            raise BenchError(f"hang: only {len(ours)}/{want} hangs and {len(floor)}/{floor_want} floor hangs "
                             f"in time\n{d.log_tail()}")
        if d.proc.poll() is not None:
            raise BenchError(f"the daemon exited ({d.proc.returncode}):\n{d.log_tail()}")
        wait = min(0.5, kills[0][0] - now) if kills else 0.5
        try:
            (h,) = b.inbox.take(1, max(0.0, wait), "hang reports")
        except BenchError:
            continue  # nothing yet; run the due kills
        what, _, rest = h.name.partition(" ")
        if what == "quiet":
            quiet.add(h.pid)
            if rest.startswith("floor:"):
                heapq.heappush(kills, (h.stamp + HANG_TIMEOUT, h.pid))
        elif what == "term":
            last_text, _, name = rest.partition(" ")
            if last_text == "None":
                continue  # signalled before it was ready: not a hang
            value = h.stamp - float(last_text) - HANG_TIMEOUT
            if name.startswith("floor:"):
                floor_procs.pop(h.pid).wait(10)
                b.procs.floor = [p for p in b.procs.floor if p.pid != h.pid]
                floor.append(value)
                if floor_started < floor_want + floor_k:
                    start_floor()
            elif len(ours) < want:
                if h.pid not in quiet or value < 0:
                    early.append((h.pid, value))
                ours.append(value)
    final = status(d)
    d.shutdown()
    b.procs.stop_floor([p for p in floor_procs.values()])
    hb = counters(final)
    reasons = Counter((i["last_exit"] or {}).get("reason") for i in instances(final))
    restarts = sum(i["restarts"] for i in instances(final))
    b.raw["hang"] = {"ours": ours, "floor": floor, "early": early, "counters": hb, "restarts": restarts}
    b.say(f"  ours : median +{ms(median(ours))}  max +{ms(max(ours))}  min +{ms(min(ours))}  "
          f"({restarts} restarts; last exits {dict(reasons)}; heartbeats {hb})")
    b.say(f"  floor: median +{ms(median(floor))}  max +{ms(max(floor))}  min +{ms(min(floor))}")
    if early:
        b.say(f"  {len(early)} signalled while still beating or before the timeout ran out: {early[:5]}")
    if hb["rejected"] or hb["malformed"]:
        raise BenchError(f"hang: heartbeats counted as rejected/malformed: {hb}")
    ok_early = not early
    b.add("hang detection median (after 1s)", f"+{ms(median(ours))}", f"+{ms(median(floor))}",
          f"+{(median(ours) - median(floor)) * 1000:.1f} ms vs floor (<= +100 ms)",
          median(ours) <= 0.100 and ok_early)
    b.add("hang detection max (after 1s)", f"+{ms(max(ours))}", f"+{ms(max(floor))}",
          f"{len(ours)} hangs, {len(early)} early (<= +100 ms)", max(ours) <= 0.100 and ok_early)


# -- 3. memory restart ------------------------------------------------------------------


def take_from(b: Health, pid: int, what: str, timeout: float) -> Hello:
    """The next `what` datagram of `pid`; earlier ones (the last daemon's workers stopping) are skipped."""
    deadline = time.monotonic() + timeout
    while True:
        (h,) = b.inbox.take(1, max(0.0, deadline - time.monotonic()), f"pid {pid}'s {what}")
        if h.pid == pid and h.name.partition(" ")[0] == what:
            return h


def bench_memory(b: Health) -> None:
    """Memory restart: a worker over max_memory -> its replacement up, with default settings."""
    want = b.args.memory_restarts
    # Default settings allow 10 restarts per instance per minute (crash_loop):
    # spread the restarts so that no instance needs more than about 6.
    k = max(2, math.ceil(want / 5))
    size = 150 * MiB
    b.say(f"\n[memory] max_memory = \"100M\", nothing else tuned: a worker touches {size // MiB} MiB in one step "
          f"-> its replacement's first datagram; {want} restarts over {k} instances; floor of the restart part: "
          f"this script's SIGTERM + reap + Popen")
    argv = [PY, "-S", str(HEALTH_WORKER), "memory", str(size)]
    d = b.daemon("memory", k, argv, 'max_memory = "100M"\n')
    b.inbox.clear()
    d.start()
    crossed: dict[str, tuple[int, float]] = {}
    terms: dict[int, float] = {}
    samples: list[tuple[float, float | None]] = []  # (crossing -> replacement up, crossing -> SIGTERM)
    deadline = time.monotonic() + 60 + 5 * want
    while len(samples) < want:
        left = deadline - time.monotonic()
        if left <= 0 or d.proc.poll() is not None:
            result = status(d) if d.proc.poll() is None else {"apps": []}
            states = Counter(i["state"] for i in instances(result))
            raise BenchError(f"memory: {len(samples)}/{want} restarts seen (states {dict(states)})\n{d.log_tail()}")
        try:
            (h,) = b.inbox.take(1, min(1.0, left), "memory reports")
        except BenchError:
            continue
        what, _, rest = h.name.partition(" ")
        if what == "crossed":
            crossed[rest] = (h.pid, h.stamp)
        elif what == "term":
            terms[h.pid] = h.stamp
        elif what == "up" and rest in crossed:
            pid, t0 = crossed.pop(rest)
            if pid == h.pid:
                raise BenchError(f"memory: pid {pid} reported twice")
            term = terms.get(pid)
            samples.append((h.stamp - t0, None if term is None else term - t0))
    final = status(d)
    d.shutdown()
    reasons = Counter((i["last_exit"] or {}).get("reason") for i in instances(final))
    states = Counter(i["state"] for i in instances(final))
    floor = []
    for _ in range(b.args.memory_floor):
        settle(0.1)
        p = b.popen(argv, BENCH_HOLD_MIN="0", BENCH_HOLD_SPREAD="0", SUPERVISE_NAME="floor")
        take_from(b, p.pid, "crossed", 10)
        t0 = time.monotonic()
        p.send_signal(signal.SIGTERM)  # its exit frees the 150 MiB: ~10 ms of kernel work here
        p.wait(10)
        q = b.popen(argv, BENCH_HOLD_MIN="3600", SUPERVISE_NAME="floor")
        h = take_from(b, q.pid, "up", 10)
        floor.append(h.stamp - t0)
        b.procs.stop_floor([p, q])
    total = [s[0] for s in samples]
    detect = [s[1] for s in samples if s[1] is not None]
    restart = [s[0] - s[1] for s in samples if s[1] is not None]
    b.raw["memory"] = {"total": total, "detect": detect, "floor": floor, "reasons": dict(reasons)}
    b.say(f"  crossing -> replacement up: median {ms(median(total))}  max {ms(max(total))}  min {ms(min(total))}")
    b.say(f"    of which crossing -> SIGTERM (detection: 3 samples over the limit) median {ms(median(detect))}, "
          f"SIGTERM -> replacement up median {ms(median(restart))}")
    b.say(f"  floor of the restart part (SIGTERM to a bloated worker, reap, Popen a new one -> its first "
          f"datagram): median {ms(median(floor))}")
    b.say(f"  instances at the end: {dict(states)}, last exits {dict(reasons)}")
    if states.get("failed"):
        raise BenchError("memory: the crash-loop breaker opened; fewer restarts per instance needed")
    b.add("memory restart median (default settings)", f"{median(total):.2f} s", f"{ms(median(floor))} restart",
          "(< 1 s; PM2 15.1 s, circus 0.87 s tuned)", median(total) < 1.0)
    b.add("  of which SIGTERM -> replacement up", ms(median(restart)), ms(median(floor)),
          f"+{(median(restart) - median(floor)) * 1000:.1f} ms", None)


# -- 4. sampling cost ---------------------------------------------------------------------


def statm_floor(pids: list[int]) -> None:
    """The least any tree-RSS pass must do: read each root's statm once."""
    for pid in pids:
        try:
            with open(f"/proc/{pid}/statm", "rb") as f:
                f.read()
        except OSError:
            pass


def cpu_of(fn: Callable[[], T], passes: int) -> tuple[list[float], list[float], T]:
    """CPU (thread_time) and wall seconds of each of `passes` calls of fn, after one warm-up call."""
    result = fn()
    cpu, wall = [], []
    for _ in range(passes):
        c0, w0 = time.thread_time(), time.monotonic()
        result = fn()
        cpu.append(time.thread_time() - c0)
        wall.append(time.monotonic() - w0)
    return cpu, wall, result


def check_sample(result: dict, n: int, what: str) -> None:
    """A pass that measured fewer roots than it was given would flatter its time."""
    good = sum(1 for v in result.values() if v)
    if good != n:
        raise BenchError(f"sampler ({what}): {good}/{n} roots measured")


def bench_sampler(b: Health) -> None:
    """CPU of one memory-sampling pass over 1,000 roots, with and without cgroups."""
    n, passes = b.args.sample_instances, b.args.sample_passes
    b.say(f"\n[sampler] one supervise.runtime.sampler.sample_trees() pass over {n} `sleep` processes, CPU time "
          f"(thread_time) of the pass, median of {passes}; floor: reading each root's statm once")
    sleeps = []
    cg = None
    try:
        for _ in range(n):
            p = subprocess.Popen(["sleep", "3600"], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                 env=b.procs.env(), close_fds=True)
            b.procs.floor.append(p)
            sleeps.append(p)
        pids = [p.pid for p in sleeps]
        procs_on_machine = sum(1 for e in os.scandir("/proc") if e.name.isdigit())
        roots = [sampler.Root(i, pid) for i, pid in enumerate(pids)]
        floor, floor_wall, _ = cpu_of(lambda: statm_floor(pids), passes)
        plain, plain_wall, result = cpu_of(lambda: sampler.sample_trees(roots)[0], passes)
        check_sample(result, n, "no cgroups")
        b.say(f"  no cgroups: CPU median {ms(median(plain))} max {ms(max(plain))} (wall {ms(median(plain_wall))}); "
              f"{procs_on_machine} processes in /proc")
        b.say(f"  floor (statm of {n} pids): CPU median {ms(median(floor))} (wall {ms(median(floor_wall))})")
        b.raw["sampler"] = {"plain": plain, "plain_wall": plain_wall, "floor": floor, "procs": procs_on_machine}
        b.add(f"sampler pass, {n} roots, no cgroups", ms(median(plain)), ms(median(floor)),
              f"x{median(plain) / median(floor):.1f} (< 100 ms CPU)", median(plain) < 0.100)
        cg = Cgroups.detect(f"health-bench-{os.getpid()}")
        if cg is None:
            b.say("  cgroups: no writable cgroup2 hierarchy here; skipped")
            b.add(f"sampler pass, {n} roots, cgroups", "n/a", "", "no writable cgroup2 here", None)
            return
        leaves = [cg.adopt(pid, f"w:{i}") for i, pid in enumerate(pids)]
        if any(leaf is None for leaf in leaves):
            raise BenchError(f"sampler: {sum(1 for x in leaves if x is None)}/{n} sleeps could not be "
                             f"moved to a cgroup under {cg.root}")
        croots = [sampler.Root(i, pid, leaf) for i, (pid, leaf) in enumerate(zip(pids, leaves, strict=True))]
        grouped, grouped_wall, result = cpu_of(lambda: sampler.sample_trees(croots)[0], passes)
        check_sample(result, n, "cgroups")
        b.say(f"  cgroups ({cg.root}): CPU median {ms(median(grouped))} max {ms(max(grouped))} "
              f"(wall {ms(median(grouped_wall))})")
        b.raw["sampler"].update({"cgroups": grouped, "cgroups_wall": grouped_wall})
        b.add(f"sampler pass, {n} roots, cgroups", ms(median(grouped)), ms(median(floor)),
              f"x{median(grouped) / median(floor):.1f} (< 100 ms CPU)", median(grouped) < 0.100)
    finally:
        b.procs.stop_floor(sleeps)
        if cg is not None:
            cg.close(timeout=5.0)
            if cg.root.exists():
                b.say(f"  warning: could not remove {cg.root}")


# -- 5. 1,000 instances beating once a second --------------------------------------------


def usage_until_done(pid: int, gen: Helper) -> tuple[float, int, str]:
    """(CPU % of one core, max RSS, the generator's done line) of process `pid` until `gen` says done."""
    done: list[str] = []

    def until() -> bool:
        line = gen.expect("done", 1.0, wait=False)  # waits up to a second: the sampling interval
        if line is not None:
            done.append(line)
        return bool(done)

    cpu, rss = usage(pid, until)
    return cpu, rss, done[0]


def paced_load(b: Health, endpoint: str, tokens: Path, n: int, seconds: float) -> Helper:
    """The generator beating each of `n` tokens once a second from its own DEALER, for `seconds`."""
    return b.helper([PY, str(LOAD), endpoint, str(tokens), "--rate", str(n), "--duration", str(seconds),
                     "--sockets", "per-token", "--settle", "2"])


def beat1000_raw(b: Health, tokens: Path, n: int, seconds: float) -> tuple[float, str]:
    """CPU % of the raw pyzmq sink under the same paced load; and its thread breakdown."""
    endpoint = f"ipc://{b.dir}/raw-paced.sock"
    sink = b.helper([PY, str(SINK), endpoint, str(int(n * seconds)), "30"])
    sink.expect("ready", 30)
    gen = paced_load(b, endpoint, tokens, n, seconds)
    gen.expect("go", 60)
    th0 = thread_cpu(sink.proc.pid)
    cpu, _, _ = usage_until_done(sink.proc.pid, gen)
    th1 = thread_cpu(sink.proc.pid)
    sink.expect("done", 30)
    gen.finish()
    b.procs.stop_floor([sink.proc])  # it lingers for the measurement above
    return cpu, thread_breakdown(th0, th1)


def beat1000_ours(b: Health, d: Supervised, tokens: Path, n: int, seconds: float,
                  profile: bool) -> tuple[float, int, str]:
    """CPU % and max RSS of the daemon under the paced load, and its thread breakdown."""
    pid = d.proc.pid
    before = counters(status(d))
    gen = paced_load(b, heartbeat_endpoint(d), tokens, n, seconds)
    gen.expect("go", 60)
    spy = record_profile(b, pid, "beat1000") if profile else None
    th0 = thread_cpu(pid)
    cpu, rss, done = usage_until_done(pid, gen)
    th1 = thread_cpu(pid)
    stop_profile(b, spy)
    gen.finish()
    sent = json.loads(done)
    settle(0.5)
    after = counters(status(d))
    accepted = after["accepted"] - before["accepted"]
    if accepted != sent["sent"] or after["rejected"] != before["rejected"] or after["malformed"] != before["malformed"]:
        raise BenchError(f"beat1000: sent {sent['sent']}, counters before {before}, after {after}")
    pace = sent["sent"] / (sent["last"] - sent["first"])
    return cpu, rss, f"{thread_breakdown(th0, th1)}; {accepted:,}/{sent['sent']:,} accepted at {per_second(pace)}"


def bench_beat1000(b: Health) -> None:
    """The daemon's CPU and RSS while 1,000 instances beat once a second each."""
    n, seconds, runs = b.args.load_instances, b.args.load_seconds, b.args.load_runs
    b.say(f"\n[beat1000] daemon CPU and RSS with {n} shell instances, each beating once a second "
          f"(one DEALER each, spread evenly), {runs} window{'s' if runs > 1 else ''} of {seconds:g} s; floors: "
          f"the same daemon idle, and a raw pyzmq ROUTER under the same load, interleaved")
    d, tokens = shell_daemon(b, "beat1000", n, 300)
    settle(3.0)
    idle_cpu, idle_rss = usage(d.proc.pid, for_seconds(seconds))
    b.say(f"  idle: CPU {idle_cpu:.2f} %, RSS {idle_rss / MiB:.1f} MiB")
    ours, raw, rss_max = [], [], 0
    for r in range(runs):
        raw_cpu, raw_threads = beat1000_raw(b, tokens, n, seconds)
        raw.append(raw_cpu)
        settle(1.0)
        cpu, rss, detail = beat1000_ours(b, d, tokens, n, seconds, profile=r == 0)
        ours.append(cpu)
        rss_max = max(rss_max, rss)
        b.say(f"  run {r + 1}: ours CPU {cpu:.2f} % of one core, RSS {rss / MiB:.1f} MiB ({detail})")
        b.say(f"         raw pyzmq ROUTER CPU {raw_cpu:.2f} % ({raw_threads})")
        settle(1.0)
    d.shutdown()
    cpu, raw_cpu = median(ours), median(raw)
    b.raw["beat1000"] = {"cpu": ours, "raw_cpu": raw, "rss": rss_max, "idle_cpu": idle_cpu, "idle_rss": idle_rss}
    b.add(f"daemon CPU, {n} beating 1/s", f"{cpu:.2f} %", f"raw {raw_cpu:.2f} %",
          f"x{cpu / raw_cpu:.2f} of raw; idle {idle_cpu:.2f} % (< 5 %)", cpu < 5.0)
    b.add(f"daemon RSS, {n} beating 1/s", f"{rss_max / MiB:.1f} MiB", f"idle {idle_rss / MiB:.1f} MiB",
          f"+{(rss_max - idle_rss) / MiB:.1f} MiB", None)


# -- the run ----------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The common options, and the counts of each health figure."""
    opts = Options(__doc__, FIGURES)
    opts.number("--beats", int, 500_000, 200_000, "ingest: beats per run")
    opts.number("--ingest-runs", int, 5, 2, "ingest: runs")
    opts.add("--ingest-instances", type=int, default=50, help="ingest: instances (default 50)")
    opts.add("--sockets", type=int, default=1, help="ingest: the generator's DEALERs (default 1)")
    opts.number("--hangs", int, 30, 10, "hang: hangs measured")
    opts.add("--hang-instances", type=int, default=4, help="hang: instances hanging in turn (default 4)")
    opts.number("--memory-restarts", int, 20, 10, "memory: restarts measured")
    opts.number("--memory-floor", int, 10, 5, "memory: floor spawns")
    opts.add("--sample-instances", type=int, default=1000, help="sampler: roots (default 1000)")
    opts.number("--sample-passes", int, 15, 5, "sampler: passes")
    opts.add("--load-instances", type=int, default=1000, help="beat1000: instances (default 1000)")
    opts.number("--load-seconds", float, 30.0, 10.0, "beat1000: window")
    opts.number("--load-runs", int, 2, 1, "beat1000: windows, each with a raw one")
    opts.daemon_options(python_args_example="-X importtime")
    opts.add("--py-spy", metavar="DIR",
             help="profile the daemon with py-spy during the first ingest run and the beat1000 window "
                  "(skews those figures a little); raw stacks go to DIR")
    opts.add("--no-wait", action="store_true",
             help="do not wait for a running benchmarks/foundation.py to finish first")
    return opts.parse(argv)


def other_benchmarks() -> list[int]:
    """Pids of other benchmark scripts running now (by a script argument's file name)."""
    found = []
    for proc in psutil.process_iter(["pid", "cmdline"]):
        cmdline = proc.info["cmdline"] or []
        if proc.pid != os.getpid() and any(os.path.basename(arg) in OTHER_BENCHMARKS for arg in cmdline[1:3]):
            found.append(proc.pid)
    return found


def wait_for_other_benchmarks() -> None:
    """Until no other benchmark script runs: two at once on a small machine skew each other."""
    said = False
    while pids := other_benchmarks():
        if not said:
            print(f"waiting for another benchmark to finish (pids {pids}); --no-wait to skip", flush=True)
            said = True
        time.sleep(5)


def run(b: Health) -> None:
    """Warm the caches, then the selected figures in order."""
    b.warm_up([PY, str(LOAD), "--help"], imports=("supervise.worker",))
    run_selected(b, ("ingest", bench_ingest), ("hang", bench_hang), ("memory", bench_memory),
                 ("sampler", bench_sampler), ("beat1000", bench_beat1000))


def health(argv: list[str] | None = None) -> int:
    """Wait for a running foundation.py (it would skew both), then run; the exit code."""
    args = parse_args(argv)
    handle_signals()
    if not args.no_wait:
        try:
            wait_for_other_benchmarks()
        except KeyboardInterrupt:
            return 130
    return main("health", args, run, Health)


if __name__ == "__main__":
    sys.exit(health())
