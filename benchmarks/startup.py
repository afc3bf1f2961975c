#!/usr/bin/env python3
"""Start-up benchmark of supervise: exec of `supervise run` -> its first worker up.

    python benchmarks/startup.py            # the full run, about half a minute
    python benchmarks/startup.py --quick    # a smoke check
    python benchmarks/startup.py --only first --runs 15

`first`: a daemon on one instance of bench_worker.py: exec of `supervise run`
-> the worker's first datagram (its CLOCK_MONOTONIC stamp, as in foundation.py).
Floors, measured in the same rounds, interleaved: `python -c pass` (exec ->
exit: an interpreter that does nothing) and one plain Popen of the worker
(-> its first datagram: the worker's own start). The daemon's own start-up is
ours - worker; target: within 60 ms of `python -c pass`. The daemon's log line
for the first spawn ("stopped -> starting") is shown too, as exec -> spawn.

`ten`: the same with 10 instances, to the last first datagram; floor: 10
plain Popens of the worker from this process -> the last first datagram.
Target: ours <= 1.1 x that floor + (`python -c pass` + 60 ms).

`instructions`: exec of `supervise run` -> its first spawn (first_spawn.py
exits there), counted in instructions by valgrind's callgrind, against
`python -c pass` counted the same way. A count is the same on a loaded
machine as on a quiet one, so it shows a change of a few percent that the
wall-clock figures above drown in noise; it leaves out what the kernel does
(exec, page faults) and the time spent waiting. Needs valgrind; once, not
--runs times (it repeats to within 0.1 %).

Each daemon gets a fresh state dir and is stopped with SIGTERM (its drain)
before the next round. See benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import PY, WORKER, BenchError, Supervised, median, ms, settle, wait_exit  # noqa: E402
from runner import Bench, Options, main  # noqa: E402

FIGURES = ("first", "ten", "instructions")
BUDGET = 0.060  # the daemon's own start-up, over `python -c pass`
SPAWN_LINE = "stopped -> starting"


class Startup(Bench):
    """A run of the start-up figures: the worker is bench_worker.py, under the daemon or as a floor."""

    @property
    def worker_argv(self) -> list[str]:
        return [PY, "-S", str(WORKER)]  # as in foundation.py: the worker's start is the interpreter's

    def bare_python(self) -> float:
        """Exec -> exit of `python -c pass`, reaped on a pidfd."""
        t0 = time.monotonic()
        p = subprocess.Popen([PY, "-c", "pass"], stdin=subprocess.DEVNULL, env=self.procs.env(), cwd=self.dir)
        wait_exit(p, 30)
        return time.monotonic() - t0

    def floor_workers(self, n: int) -> float:
        """`n` plain Popens of the worker -> the last first datagram."""
        self.inbox.clear()
        t0 = time.monotonic()
        procs = [self.popen(self.worker_argv) for _ in range(n)]
        hellos = self.inbox.take(n, 60, f"{n} floor workers")
        self.procs.stop_floor(procs)
        return max(h.stamp for h in hellos) - t0

    def daemon_run(self, name: str, n: int) -> tuple[float, float | None]:
        """A daemon on `n` workers: (exec -> the last first datagram, exec -> its first spawn logged)."""
        self.inbox.clear()
        d = self.daemon(name, n, self.worker_argv)
        wall = time.time()
        t0 = d.start()
        try:
            hellos = self.inbox.take(n, 60, f"{n} instances ({name})")
        except BenchError:
            d.check_running()
            raise
        elapsed = max(h.stamp for h in hellos) - t0
        stop(d)
        spawns = [t for t, m in d.log_times() if SPAWN_LINE in m]
        return elapsed, (min(spawns) - wall if spawns else None)


def stop(d: Supervised) -> None:
    """SIGTERM (the drain: it stops its workers), then wait until the daemon is gone."""
    assert d.proc is not None
    d.proc.terminate()
    code = d.wait_gone(30)
    if code != 0:
        raise BenchError(f"the daemon exited {code} on SIGTERM:\n{d.log_tail()}")


def bench_first(b: Startup) -> None:
    """exec -> the first worker's first datagram, one instance."""
    runs = b.args.runs
    b.say(f"\n[first] `supervise run` exec -> its one worker's first datagram, vs `python -c pass` "
          f"and a plain Popen of the worker; {runs} runs, interleaved")
    ours, logged, bare, worker = [], [], [], []
    for r in range(runs):
        settle(0.3)
        bare.append(b.bare_python())
        settle(0.1)
        worker.append(b.floor_workers(1))
        settle(0.1)
        elapsed, spawn = b.daemon_run(f"first{r}", 1)
        ours.append(elapsed)
        if spawn is not None:
            logged.append(spawn)
        b.say(f"  run {r + 1}: ours {ms(elapsed)} (first spawn logged at "
              f"{ms(spawn) if spawn is not None else '?'})  python -c pass {ms(bare[-1])}  "
              f"worker {ms(worker[-1])}")
    own = median(ours) - median(worker)
    over = own - median(bare)
    b.say(f"  medians: ours {ms(median(ours))}, worker {ms(median(worker))}, daemon's own {ms(own)}, "
          f"python -c pass {ms(median(bare))}, over it {ms(over)}"
          + (f"; first spawn logged at {ms(median(logged))}" if logged else ""))
    b.raw["first"] = {"ours": ours, "spawn_logged": logged, "python_pass": bare, "worker": worker}
    b.add("exec -> first worker up", ms(median(ours)), f"{ms(median(bare))} + worker {ms(median(worker))}",
          f"+{ms(over)} (<= +{ms(BUDGET)})", over <= BUDGET)


def bench_ten(b: Startup) -> None:
    """exec -> the last of 10 workers' first datagram."""
    runs, n = b.args.runs, 10
    b.say(f"\n[ten] `supervise run` exec -> the last of {n} workers' first datagram, vs {n} plain Popens; "
          f"{runs} runs, interleaved")
    ours, logged, floor, bare = [], [], [], []
    for r in range(runs):
        settle(0.3)
        bare.append(b.bare_python())
        settle(0.1)
        floor.append(b.floor_workers(n))
        settle(0.3)
        elapsed, spawn = b.daemon_run(f"ten{r}", n)
        ours.append(elapsed)
        if spawn is not None:
            logged.append(spawn)
        b.say(f"  run {r + 1}: ours {ms(elapsed)}  floor {ms(floor[-1])}  python -c pass {ms(bare[-1])}")
    allowed = 1.1 * median(floor) + median(bare) + BUDGET
    b.say(f"  medians: ours {ms(median(ours))}, floor {ms(median(floor))}, python -c pass {ms(median(bare))}; "
          f"allowed 1.1 x floor + pass + {ms(BUDGET)} = {ms(allowed)}")
    b.raw["ten"] = {"ours": ours, "spawn_logged": logged, "floor": floor, "python_pass": bare}
    b.add(f"exec -> {n} workers up", ms(median(ours)), ms(median(floor)),
          f"{ms(median(ours) - median(floor))} over (<= {ms(allowed)})", median(ours) <= allowed)


def bench_instructions(b: Startup) -> None:
    """exec -> the first spawn, in instructions (callgrind), against `python -c pass`."""
    valgrind = shutil.which("valgrind")
    if valgrind is None:
        b.add("instructions, exec -> first spawn", "-", "-", "valgrind not found", None)
        return
    b.say("\n[instructions] exec -> the first spawn under callgrind, vs `python -c pass`")
    d = b.daemon("instructions", 1, b.worker_argv)

    def count(*argv: str) -> int:
        out = subprocess.run([valgrind, "--tool=callgrind", "--callgrind-out-file=/dev/null", PY, *argv],
                             capture_output=True, text=True, env=b.procs.env(), cwd=d.dir, timeout=300)
        found = re.search(r"Collected : (\d+)", out.stderr)
        if found is None:
            raise BenchError(f"callgrind printed no count:\n{out.stderr[-2000:]}")
        return int(found.group(1))

    bare = count("-c", "pass")
    ours = count(str(Path(__file__).resolve().parent / "first_spawn.py"), str(d.config))
    b.say(f"  python -c pass {bare / 1e6:.0f}M instructions; supervise run -> first spawn {ours / 1e6:.0f}M, "
          f"{(ours - bare) / 1e6:.0f}M over it")
    b.raw["instructions"] = {"ours": ours, "python_pass": bare}
    b.add("instructions, exec -> first spawn", f"{ours / 1e6:.0f}M", f"{bare / 1e6:.0f}M (python -c pass)",
          f"+{(ours - bare) / 1e6:.0f}M, x{ours / bare:.2f}", None)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    opts = Options(__doc__, FIGURES)
    opts.number("--runs", int, 11, 3, "runs per figure")
    opts.daemon_options("-X importtime")
    return opts.parse(argv)


def run(b: Startup) -> None:
    b.warm_up([PY, "-c", "pass"], [PY, "-m", "supervise", "check", "-c", str(WORKER.parent.parent / "supervise.toml")])
    b.daemon_run("warm", 1)  # every module the daemon imports, compiled and cached before anything is timed
    if "first" in b.args.only:
        bench_first(b)
    if "ten" in b.args.only:
        bench_ten(b)
    if "instructions" in b.args.only:
        bench_instructions(b)


if __name__ == "__main__":
    sys.exit(main("startup", parse_args(None), run, Startup))
