#!/usr/bin/env python3
"""Foundation benchmarks of supervise: restart, spawn, status, footprint, shutdown.

    python benchmarks/foundation.py            # the full run, a few minutes
    python benchmarks/foundation.py --quick    # a smoke check, well under a minute
    python benchmarks/foundation.py --only restart --only status

Every figure is compared with a floor measured in the same run (the machine
is shared and noisy), interleaved with ours where that is cheap. "First
line" is exact, not polled: each worker (bench_worker.py) sends one datagram
with its pid and CLOCK_MONOTONIC stamp to a socket this script binds, the
moment it starts. See benchmarks/README.md for what each figure means.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import (
    PY,
    WORKER,
    BenchError,
    Hello,
    MiB,
    Supervised,
    cpu_seconds,
    for_seconds,
    median,
    ms,
    p99,
    settle,
    usage,
)
from runner import Bench, Options, main

FIGURES = ("restart", "spawn", "status", "footprint", "shutdown")


class Foundation(Bench):
    """A run of the foundation figures: every worker is bench_worker.py, under the daemon or as a floor."""

    @property
    def worker_argv(self) -> list[str]:
        # -S: the worker's start is the interpreter's, not this machine's .pth files (README)
        return [PY, str(WORKER)] if self.args.worker_site else [PY, "-S", str(WORKER)]

    def describe(self) -> str:
        return f"{' '.join(self.worker_argv[1:-1]) or 'with site'} worker, {super().describe()}"

    def popen_worker(self) -> subprocess.Popen:
        """The floor: a plain Popen of the same worker the daemon runs."""
        return self.popen(self.worker_argv)

    def bench_daemon(self, name: str, instances: int, extra: str = "") -> Supervised:
        """A daemon (not started) on `instances` bench workers."""
        return self.daemon(name, instances, self.worker_argv, extra)

    def up(self, d: Supervised, what: str, timeout: float = 180) -> tuple[float, list[Hello]]:
        """Start `d` and wait for every instance's first datagram; (time of the exec, the hellos)."""
        t0 = d.start()
        try:
            hellos = self.inbox.take(d.instances, timeout, what)
        except BenchError:
            d.check_running()
            raise
        names = {h.name for h in hellos}
        if len(names) != d.instances:
            raise BenchError(f"{what}: {len(names)} distinct instances reported, expected {d.instances}")
        return t0, hellos


# -- 1. restart latency ---------------------------------------------------------------

RESTART_EXTRA = """\
# Every kill must be a "first failure in a row" (restarted at once): the
# replacement runs >= reset_after before the next kill. initial = 1s makes
# an accidental backoff stand out.
backoff = { initial = "1s", reset_after = "50ms" }
crash_loop = { max_restarts = 1000000, window = "1s" }
"""


def bench_restart(b: Foundation) -> None:
    """Restart latency: SIGKILL of the running instance -> its replacement's first datagram."""
    kills = b.args.kills
    b.say(f"\n[restart] SIGKILL -> replacement's first datagram, {kills} kills, interleaved with "
          f"{kills} floor Popen -> first datagram")
    d = b.bench_daemon("restart", 1, RESTART_EXTRA)
    _, (hello,) = b.up(d, "the first instance")
    pid = hello.pid
    ours, floor = [], []
    for i in range(kills):
        settle(0.12)  # > reset_after (50ms) since the replacement started
        t0 = time.monotonic()
        os.kill(pid, signal.SIGKILL)
        (hello,) = b.inbox.take(1, 10, f"the replacement of pid {pid} (kill {i + 1})")
        if hello.pid == pid:
            raise BenchError(f"pid {pid} reported twice")
        ours.append(hello.stamp - t0)
        pid = hello.pid
        settle(0.03)
        t0 = time.monotonic()
        p = b.popen_worker()
        (hello,) = b.inbox.take(1, 10, "a floor worker")
        floor.append(hello.stamp - t0)
        b.procs.stop_floor([p])
    (inst,) = d.status()
    d.shutdown()
    if inst["state"] != "running" or inst["restarts"] != kills:
        raise BenchError(f"unexpected status after {kills} kills: {inst}")
    slow = sum(1 for x in ours if x > 0.5)
    b.raw["restart"] = {"ours": ours, "floor": floor}
    b.say(f"  ours : median {ms(median(ours))}  p99 {ms(p99(ours))}  min {ms(min(ours))}  max {ms(max(ours))}"
          + (f"  ({slow} looked like a backoff)" if slow else ""))
    b.say(f"  floor: median {ms(median(floor))}  p99 {ms(p99(floor))}  min {ms(min(floor))}  max {ms(max(floor))}")
    dm, dp = median(ours) - median(floor), p99(ours) - p99(floor)
    b.add("restart latency median", ms(median(ours)), ms(median(floor)),
          f"+{dm * 1000:.1f} ms (<= +5 ms)", dm <= 0.005)
    b.add("restart latency p99", ms(p99(ours)), ms(p99(floor)), f"+{dp * 1000:.1f} ms (<= +20 ms)", dp <= 0.020)


# -- 2. spawn N -------------------------------------------------------------------------


def floor_spawn(b: Foundation, n: int) -> tuple[float, float, float]:
    """(Popen loop, its CPU time, exec of the first Popen -> last first-datagram) in seconds."""
    b.inbox.clear()
    c0, t0 = time.thread_time(), time.monotonic()
    procs = [b.popen_worker() for _ in range(n)]
    loop, cpu = time.monotonic() - t0, time.thread_time() - c0
    hellos = b.inbox.take(n, 180, f"{n} floor workers")
    elapsed = max(h.stamp for h in hellos) - t0
    b.procs.stop_floor(procs)
    return loop, cpu, elapsed


def last_spawn(d: Supervised, start_wall: float) -> float | None:
    """Seconds from the daemon's exec to its log line for the last instance it started."""
    started = [t for t, m in d.log_times() if "starting -> running" in m or "stopped -> starting" in m]
    return max(started) - start_wall if started else None


def bench_spawn(b: Foundation, keep_last: bool) -> Supervised | None:
    """Spawn N: exec of the daemon -> every instance's first datagram; returns the last daemon if `keep_last`."""
    n, runs = b.args.instances, b.args.runs
    b.say(f"\n[spawn] {n} instances: `supervise run` exec -> last first-datagram, vs {n} Popens "
          f"from this process -> last first-datagram; {runs} runs, interleaved")
    ours, floor, ratios, first, issued, loops, cpus, loop_cpus = [], [], [], [], [], [], [], []
    kept = None
    for r in range(runs):
        settle(1.0)
        loop, loop_cpu, elapsed = floor_spawn(b, n)
        floor.append(elapsed)
        loops.append(loop)
        loop_cpus.append(loop_cpu)
        settle(1.0)
        b.inbox.clear()
        d = b.bench_daemon(f"spawn{r}", n)
        wall = time.time()
        t0, hellos = b.up(d, f"{n} instances (run {r + 1})")
        cpus.append(cpu_seconds(d.proc.pid))
        ours.append(max(h.stamp for h in hellos) - t0)
        first.append(min(h.stamp for h in hellos) - t0)
        issued.append(last_spawn(d, wall))
        ratios.append(ours[-1] / floor[-1])
        spawned = f", all spawned after {issued[-1]:.3f} s" if issued[-1] is not None else ""
        b.say(f"  run {r + 1}: ours {ours[-1]:.3f} s (first instance up after {ms(first[-1])}{spawned}; "
              f"daemon CPU {cpus[-1]:.2f} s)  floor {floor[-1]:.3f} s (Popen loop {loop:.3f} s, "
              f"CPU {loop_cpu:.2f} s)  ratio {ratios[-1]:.2f}")
        if keep_last and r == runs - 1:
            kept = d
        else:
            d.shutdown()
    ratio = median(ratios)
    b.say(f"  medians: ours {median(ours):.3f} s, floor {median(floor):.3f} s, "
          f"ratio of medians {median(ours) / median(floor):.2f}, median of paired ratios {ratio:.2f}")
    b.say(f"  CPU per instance: daemon {median(cpus) / n * 1000:.2f} ms (start-up included), "
          f"floor's Popen loop {median(loop_cpus) / n * 1000:.2f} ms")
    b.raw["spawn"] = {"ours": ours, "floor": floor, "ratios": ratios, "first_instance": first,
                      "all_spawned": issued, "floor_popen_loop": loops, "daemon_cpu": cpus,
                      "floor_loop_cpu": loop_cpus}
    b.add(f"spawn {n} -> all first lines", f"{median(ours):.3f} s", f"{median(floor):.3f} s",
          f"x{ratio:.2f} (<= x1.10)", ratio <= 1.10)
    return kept


def start_big(b: Foundation) -> Supervised:
    """The N-instance daemon status and footprint need, when spawn did not leave one."""
    n = b.args.instances
    b.say(f"\n(starting a daemon with {n} instances)")
    d = b.bench_daemon("big", n)
    b.up(d, f"{n} instances")
    return d


# -- 3. status --json -------------------------------------------------------------------


def bench_status(b: Foundation, d: Supervised) -> None:
    """`status --json` as a whole command (interpreter, imports, request) with N running."""
    n, runs = d.instances, b.args.status_runs
    instances = d.status()
    running = sum(1 for i in instances if i["state"] == "running")
    if running != n:
        raise BenchError(f"status: {running}/{n} instances running")
    args = ["status", "--json", "-c", str(d.config)]
    commands = {"python -c pass": [PY, "-c", "pass"],
                "python -m supervise status --json": [PY, "-m", "supervise", *args]}
    script = Path(PY).parent / "supervise"
    if script.exists():
        commands[f"{script} status --json"] = [str(script), *args]
    on_path = shutil.which("supervise")
    if on_path and os.path.realpath(on_path) != os.path.realpath(script):
        commands[f"{on_path} status --json (PATH)"] = [on_path, *args]
    envs = {name: b.procs.env() for name in commands}
    if "PYTHONPYCACHEPREFIX" in b.procs.base_env and os.environ.get("PYTHONDONTWRITEBYTECODE"):
        name = "python -m supervise status --json (no bytecode cache)"
        commands[name] = commands["python -m supervise status --json"]
        envs[name] = dict(os.environ, BENCH_MARKER=b.procs.marker)
    b.say(f"\n[status] whole commands with {n} instances running, {runs} rounds, interleaved")
    times: dict[str, list[float]] = {name: [] for name in commands}
    size = 0
    for _ in range(runs):
        for name, argv in commands.items():
            t0 = time.monotonic()
            result = subprocess.run(argv, capture_output=True, cwd=d.dir, env=envs[name], check=False)
            times[name].append(time.monotonic() - t0)
            if result.returncode != 0:
                raise BenchError(f"{name} failed ({result.returncode}): {result.stderr.decode()[-500:]}")
            size = max(size, len(result.stdout)) if "status" in name else size
    for name, values in times.items():
        b.say(f"  {name:<60} median {ms(median(values))}  p99 {ms(p99(values))}  min {ms(min(values))}")
    b.say(f"  (the JSON is {size / 1024:.0f} KiB)")
    b.raw["status"] = times
    floor = median(times["python -c pass"])
    for name, values in times.items():
        if name == "python -c pass":
            continue
        ours = median(values)
        label = (name.replace(str(Path(PY).parent) + "/", "").replace(" status --json", "")
                 .replace(" (no bytecode cache)", ", no pyc"))
        info = "(PATH)" in name or "(no bytecode" in name  # a pyenv shim, or this environment's setting
        b.add(f"status --json {n} ({label})", ms(ours), ms(floor),
              f"x{ours / floor:.2f}, +{(ours - floor) * 1000:.0f} ms (< 60 ms)", None if info else ours < 0.060)


# -- 4. footprint -----------------------------------------------------------------------


def resident_after_start(b: Foundation, code: str) -> int:
    """RSS of `python -c code` once it has settled (the code should end in signal.pause())."""
    p = subprocess.Popen([PY, "-c", code], stdin=subprocess.DEVNULL, env=b.procs.env(), cwd=b.dir)
    b.procs.floor.append(p)
    try:
        settle(1.5)
        if p.poll() is not None:
            raise BenchError(f"floor process exited ({p.returncode}): {code}")
        return psutil.Process(p.pid).memory_info().rss
    finally:
        b.procs.stop_floor([p])


def bench_footprint_small(b: Foundation, n: int = 100) -> None:
    """The daemon's RSS and idle CPU with 100 instances, against a bare interpreter."""
    seconds = b.args.idle_seconds
    b.say(f"\n[footprint] daemon with {n} idle instances over {seconds:g} s")
    d = b.bench_daemon("idle", n)
    b.up(d, f"{n} idle instances")
    settle(2.0)
    cpu, rss = usage(d.proc.pid, for_seconds(seconds))
    d.shutdown()
    bare = resident_after_start(b, "import signal; signal.pause()")
    imports = resident_after_start(b, "import signal, supervise.cli; supervise.cli.import_daemon(); signal.pause()")
    b.say(f"  daemon RSS {rss / MiB:.1f} MiB  CPU {cpu:.3f} % of one core")
    b.say(f"  floors: bare interpreter {bare / MiB:.1f} MiB; interpreter + the daemon's imports "
          f"{imports / MiB:.1f} MiB")
    b.raw["footprint"] = {"rss_100": rss, "cpu_100": cpu, "bare_rss": bare, "imports_rss": imports}
    b.add(f"daemon RSS, {n} idle", f"{rss / MiB:.1f} MiB", f"{bare / MiB:.1f} MiB",
          f"x{rss / bare:.2f} (<= 25 MiB)", rss <= 25 * MiB)
    b.add(f"daemon CPU, {n} idle", f"{cpu:.3f} %", "0 %", "(< 0.1 %)", cpu < 0.1)


def bench_footprint_big(b: Foundation, d: Supervised) -> None:
    """The daemon's RSS with N instances (after the status rounds, when both run)."""
    seconds = min(10.0, b.args.idle_seconds)
    settle(2.0)
    cpu, rss = usage(d.proc.pid, for_seconds(seconds))
    bare = b.raw.get("footprint", {}).get("bare_rss") or resident_after_start(b, "import signal; signal.pause()")
    after = " (after the status rounds)" if "status" in b.args.only else ""
    b.say(f"\n[footprint] daemon with {d.instances} idle instances over {seconds:g} s: RSS {rss / MiB:.1f} MiB "
          f"CPU {cpu:.3f} %{after}")
    b.raw.setdefault("footprint", {}).update({f"rss_{d.instances}": rss, f"cpu_{d.instances}": cpu})
    b.add(f"daemon RSS, {d.instances} idle", f"{rss / MiB:.1f} MiB", f"{bare / MiB:.1f} MiB",
          f"x{rss / bare:.2f} (< 40 MiB)", rss < 40 * MiB)


# -- 5. shutdown ------------------------------------------------------------------------


def floor_shutdown(b: Foundation, n: int) -> float:
    """An interpreter start (the CLI's share) plus SIGTERM to n plain workers and reaping them."""
    b.inbox.clear()
    procs = [b.popen_worker() for _ in range(n)]
    b.inbox.take(n, 60, f"{n} floor workers")
    settle(0.5)
    t0 = time.monotonic()
    subprocess.run([PY, "-c", "pass"], env=b.procs.env(), check=True)
    b.procs.stop_floor(procs)
    return time.monotonic() - t0


def shutdown_phases(d: Supervised, start: float, gone: float) -> dict[str, float]:
    """Where a shutdown's time went, from the daemon's log stamps (wall clock); {} if unreadable.

    cli: exec of `supervise shutdown` -> the first instance stopping (interpreter, imports,
    connect, request); signal: first -> last instance stopping; exits: -> last instance
    stopped (workers exit, the daemon reaps); close: -> "daemon stopped" (the daemon's
    cleanup); exit: -> the process is gone (interpreter teardown).
    """
    lines = [(t, m) for t, m in d.log_times() if t >= start - 1]
    stopping = [t for t, m in lines if m.endswith("-> stopping") or " -> stopping " in m]
    stopped = [t for t, m in lines if " stopping -> stopped" in m]
    final = [t for t, m in lines if m.startswith("daemon stopped")]
    if not (stopping and stopped and final):
        return {}
    marks = [start, min(stopping), max(stopping), max(stopped), final[-1], gone]
    names = ("cli", "signal", "exits", "close", "exit")
    return {name: marks[i + 1] - marks[i] for i, name in enumerate(names)}


def bench_shutdown(b: Foundation, n: int = 100) -> None:
    """Shutdown: exec of `supervise shutdown` -> the daemon is gone, its 100 workers with it."""
    runs = b.args.shutdown_runs
    b.say(f"\n[shutdown] `supervise shutdown` exec -> daemon gone, {n} instances, {runs} runs; floor: "
          f"`python -c pass` + SIGTERM and reap {n} Popen'd workers")
    ours, cli, floor, phases = [], [], [], []
    for r in range(runs):
        floor.append(floor_shutdown(b, n))
        d = b.bench_daemon(f"shutdown{r}", n)
        _, hellos = b.up(d, f"{n} instances")
        settle(1.0)
        t0, wall0 = time.monotonic(), time.time()
        c = subprocess.Popen(d.cli_argv("shutdown"), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             cwd=d.dir, env=b.procs.env())
        code = d.wait_gone(60)
        t1 = time.monotonic()
        _, err = c.communicate(timeout=30)
        t2 = time.monotonic()
        if code != 0 or c.returncode != 0:
            raise BenchError(f"shutdown: daemon exit {code}, CLI exit {c.returncode}: {err.decode()[-500:]}")
        left = b.procs.leftovers(h.pid for h in hellos)
        if left:
            raise BenchError(f"shutdown left {len(left)} workers running: {left[:10]}")
        ours.append(t1 - t0)
        cli.append(t2 - t0)
        b.say(f"  run {r + 1}: daemon gone after {ms(ours[-1])} (CLI returned after {ms(cli[-1])})  "
              f"floor {ms(floor[-1])}")
        phases.append(shutdown_phases(d, wall0, wall0 + (t1 - t0)))
        if phases[-1]:
            b.say("         " + "  ".join(f"{k} {ms(v)}" for k, v in phases[-1].items()))
    b.raw["shutdown"] = {"ours": ours, "cli": cli, "floor": floor, "phases": phases}
    if all(phases):
        b.say("  median phases: " + "  ".join(f"{k} {ms(median([p[k] for p in phases]))}" for k in phases[0]))
    b.add(f"shutdown {n}", ms(median(ours)), ms(median(floor)),
          f"x{median(ours) / median(floor):.2f} (< 120 ms)", median(ours) < 0.120)
    b.add(f"shutdown {n}, CLI returns", ms(median(cli)), ms(median(floor)),
          f"x{median(cli) / median(floor):.2f}", None)


# -- the run ----------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The common options, and the counts of each foundation figure."""
    opts = Options(__doc__, FIGURES)
    opts.number("--kills", int, 200, 30, "restart: kills")
    opts.number("--runs", int, 5, 1, "spawn: runs")
    opts.add("--instances", type=int, default=500, help="spawn/status/footprint: instances (default 500)")
    opts.number("--status-runs", int, 30, 10, "status: rounds")
    opts.number("--idle-seconds", float, 30.0, 10.0, "footprint: window")
    opts.number("--shutdown-runs", int, 5, 2, "shutdown: runs")
    opts.add("--worker-site", action="store_true",
             help="run the bench worker with site.py (default: python -S, so the worker's start "
                  "is the interpreter's, not this machine's .pth files)")
    opts.daemon_options()
    return opts.parse(argv)


def run(b: Foundation) -> None:
    """The selected figures; status and the 500-instance footprint share the last spawn run's daemon."""
    b.warm_up([PY, "-c", "pass"])
    only = b.args.only
    if "restart" in only:
        bench_restart(b)
    if "footprint" in only:
        bench_footprint_small(b)
    if "shutdown" in only:
        bench_shutdown(b)
    big = None
    try:
        needs_big = bool(only & {"status", "footprint"})
        if "spawn" in only:
            big = bench_spawn(b, keep_last=needs_big)
        elif needs_big:
            big = start_big(b)
        if "status" in only:
            bench_status(b, big)
        if "footprint" in only:
            bench_footprint_big(b, big)
    finally:
        if big is not None and big.proc.poll() is None:
            big.shutdown()


if __name__ == "__main__":
    sys.exit(main("foundation", parse_args(None), run, Foundation))
