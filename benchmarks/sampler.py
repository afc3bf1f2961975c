#!/usr/bin/env python3
"""Sampler benchmarks of supervise: the cost of counting shared pages once, and a pre-forked server's soak.

    python benchmarks/sampler.py            # the full run: passes over 1,000 sleeps, then a 5-minute soak
    python benchmarks/sampler.py --quick    # a smoke check: fewer passes, a 30 s soak
    python benchmarks/sampler.py --only pass

`pass`: 1,000 `sleep` processes, first as 1,000 roots of one process, then
as 100 trees of 10 (an `sh` and its 9 sleeps), then (where a writable
cgroup2 exists) as 1,000 roots each in a cgroup leaf, as the daemon runs
them: members from cgroup.procs, no /proc walk. In the same process, passes
alternate between today's sampler before this change (the RSS sum, kept
here verbatim as `rss_sum_trees`) and the new one: its exact pass (PSS read
for every process: the display pass every 30 s, and every quick pass of
trees near their limit) and its quick pass far from the limits (statm
only, the PSS carried over). CPU (thread_time) and wall time of each pass,
medians and the ratio new / old. Target: a pass over 1,000 under 100 ms of
CPU, as for health.py's `sampler` figure.

`cadence`: `supervise run` with 1,000 `sleep` instances (no max_memory),
each sampled every DISPLAY_INTERVAL for `status`'s CPU, MEM and process
count (an exact pass, every tree's PSS, every EXACT_INTERVAL). The daemon's
CPU over `--cadence-windows` windows of `--cadence-seconds` each, once all
run; the median. Target: under 1 % of one core.

`soak`: `supervise run` with one app, tests/integration/workers/preforked.py
(a master writes 150 MB, then forks 4 children sharing it), max_memory
500M: above the tree's PSS (~165 MiB), below its RSS sum (~800 MiB). Over
`--soak-seconds` the status is read every second: memory restarts (target
0), the figure shown against psutil's PSS and RSS sum, the daemon's CPU. Then
the children write their copies (SIGUSR1): the tree must be restarted for
memory.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TypeVar

import psutil

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from harness import PY, BenchError, MiB, Supervised, cpu_seconds, median, ms, wait_for  # noqa: E402
from runner import Bench, Options, main, run_selected  # noqa: E402

from supervise.runtime import sampler  # noqa: E402
from supervise.runtime.cgroups import Cgroups  # noqa: E402
from supervise.runtime.chores import DISPLAY_INTERVAL, EXACT_INTERVAL, MEMORY_INTERVAL  # noqa: E402

FIGURES = ("pass", "cadence", "soak")
PREFORKED = HERE.parent / "tests" / "integration" / "workers" / "preforked.py"
PASS_TARGET = 0.100  # seconds of CPU for a pass over 1,000 processes
FAR = 1 << 40  # a limit no tree here comes near: the quick pass carries PSS over
T = TypeVar("T")


# -- today's sampler, before PSS: the reference ---------------------------------------------


def rss_sum_trees(roots: Iterable[sampler.Root]) -> tuple[dict[int, int | None], dict[int, int]]:
    """supervise.runtime.sampler.sample_trees as it was before this change: each tree's RSS
    summed, its members from its cgroup leaf or one scan of /proc/*/stat, each member's statm."""
    roots = list(roots)
    result: dict[int, int | None] = {}
    counts: dict[int, int] = {}
    needs_walk = []
    for root in roots:
        members = legacy_cgroup_members(root.cgroup) if root.cgroup is not None else None
        if members is None:
            needs_walk.append(root)
        elif root.pid not in members and not os.path.exists(f"/proc/{root.pid}"):
            result[root.key] = None
        else:
            tree = members | {root.pid}
            result[root.key] = sum(legacy_rss(pid) for pid in tree)
            counts[root.key] = len(tree)
    if needs_walk:
        children = legacy_children_map()
        for root in needs_walk:
            own = legacy_rss(root.pid)
            if own == 0 and not os.path.exists(f"/proc/{root.pid}"):
                result[root.key] = None
                continue
            below = legacy_descendants(root.pid, children)
            result[root.key] = own + sum(legacy_rss(pid) for pid in below)
            counts[root.key] = 1 + len(below)
    return result, counts


def legacy_cgroup_members(path: Path) -> set[int] | None:
    try:
        dirs = [str(path)] if os.stat(path).st_nlink == 2 else [d for d, _, _ in os.walk(path)]
        pids: set[int] = set()
        for directory in dirs:
            with open(os.path.join(directory, "cgroup.procs")) as f:
                pids.update(int(line) for line in f.read().split())
    except (OSError, ValueError):
        return None
    return pids


def legacy_children_map() -> dict[int, list[int]]:
    children: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat", "rb") as f:
                data = f.read()
        except OSError:
            continue
        fields = data[data.rfind(b")") + 2:].split(b" ", 2)
        try:
            children.setdefault(int(fields[1]), []).append(int(entry.name))
        except (IndexError, ValueError):
            continue
    return children


def legacy_descendants(pid: int, children: dict[int, list[int]]) -> list[int]:
    found, stack = [], list(children.get(pid, ()))
    while stack:
        child = stack.pop()
        found.append(child)
        stack.extend(children.get(child, ()))
    return found


def legacy_rss(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/statm", "rb") as f:
            return int(f.read().split()[1]) * sampler.PAGE_SIZE
    except (OSError, ValueError, IndexError):
        return 0


# -- 1. the cost of a pass --------------------------------------------------------------


def timed(fn: Callable[[], T]) -> tuple[float, float, T]:
    """(CPU seconds of this thread, wall seconds, the result) of one call."""
    c0, w0 = time.thread_time(), time.monotonic()
    result = fn()
    return time.thread_time() - c0, time.monotonic() - w0, result


def check_pass(memory: dict[int, int | None], n: int, what: str) -> None:
    """A pass that measured fewer trees than it was given would flatter its time."""
    good = sum(1 for v in memory.values() if v)
    if good != n:
        raise BenchError(f"pass ({what}): {good}/{n} trees measured")


def start_trees(b: Bench, trees: int, size: int) -> list[subprocess.Popen]:
    """`trees` process trees of `size` processes each: a lone `sleep`, or an `sh` and its sleeps."""
    argv = ["sleep", "3600"] if size == 1 else ["sh", "-c", "sleep 3600 & " * (size - 1) + "wait"]
    procs = [b.popen(argv) for _ in range(trees)]
    if size > 1:
        def formed() -> bool:
            return all(len(psutil.Process(p.pid).children()) == size - 1 for p in procs)
        wait_for(formed, 60, f"{trees} trees of {size} processes")
    return procs


def stop_trees(b: Bench, procs: list[subprocess.Popen]) -> None:
    """Each tree's process group killed (start_new_session made each root a leader), then the roots reaped."""
    for p in procs:
        try:
            os.killpg(p.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    b.procs.stop_floor(procs)


def measure_layout(b: Bench, trees: int, size: int, cgroups: Cgroups | None = None) -> None:
    """Old, exact and quick passes alternated over one layout of 1,000 processes (each tree in
    a cgroup leaf of its own, given `cgroups`); the table rows."""
    passes = b.args.passes
    procs = start_trees(b, trees, size)
    try:
        leaves = [None if cgroups is None else cgroups.adopt(p.pid, f"w:{i}") for i, p in enumerate(procs)]
        if cgroups is not None and any(leaf is None for leaf in leaves):
            raise BenchError(f"pass: some sleeps could not be moved to a cgroup under {cgroups.root}")
        roots = [sampler.Root(i, p.pid, leaf) for i, (p, leaf) in enumerate(zip(procs, leaves, strict=True))]
        far = [sampler.Root(i, p.pid, leaf, FAR) for i, (p, leaf) in enumerate(zip(procs, leaves, strict=True))]
        quick = sampler.Sampler()
        ways: dict[str, Callable[[], dict[int, int | None]]] = {
            "old": lambda: rss_sum_trees(roots)[0],
            "exact": lambda: sampler.Sampler().sample(roots, exact=True).memory,
            "quick": lambda: quick.sample(far).memory,
        }
        for fn in ways.values():  # warm-up; the quick sampler's first pass reads every tree
            fn()
        cpu: dict[str, list[float]] = {name: [] for name in ways}
        wall: dict[str, list[float]] = {name: [] for name in ways}
        shown: dict[str, int] = {}
        for _ in range(passes):
            for name, fn in ways.items():
                c, w, memory = timed(fn)
                check_pass(memory, trees, name)
                cpu[name].append(c)
                wall[name].append(w)
                shown[name] = sum(v or 0 for v in memory.values())
        procs_on_machine = sum(1 for e in os.scandir("/proc") if e.name.isdigit())
        label = f"{trees} x {size}" + (", cgroups" if cgroups is not None else "")
        b.say(f"  {label} ({trees * size} processes; {procs_on_machine} in /proc):")
        for name in ways:
            b.say(f"    {name:5}: CPU median {ms(median(cpu[name]))} max {ms(max(cpu[name]))}, "
                  f"wall median {ms(median(wall[name]))}; total shown {shown[name] / MiB:.0f} MiB")
        b.raw.setdefault("pass", {})[label] = {"cpu": cpu, "wall": wall, "procs": procs_on_machine}
        old = median(cpu["old"])
        for name, what in (("exact", "exact pass (PSS of all)"), ("quick", "quick pass, far from limits")):
            ours = median(cpu[name])
            b.add(f"{what}, {label}", ms(ours), f"old {ms(old)}", f"x{ours / old:.2f} (< 100 ms CPU)",
                  ours < PASS_TARGET)
    finally:
        stop_trees(b, procs)


def bench_pass(b: Bench) -> None:
    """CPU of a sampling pass over 1,000 processes: today's RSS sum against PSS."""
    b.say(f"\n[pass] sampling passes over {b.args.processes} `sleep` processes, CPU (thread_time) and wall; "
          f"median of {b.args.passes}, old / exact / quick alternated")
    n = b.args.processes
    measure_layout(b, n, 1)
    measure_layout(b, n // 10, 10)
    cgroups = Cgroups.detect(f"sampler-bench-{os.getpid()}")
    if cgroups is None:
        b.say("  cgroups: no writable cgroup2 hierarchy here; skipped")
        return
    try:
        measure_layout(b, n, 1, cgroups)
    finally:
        cgroups.close(timeout=5.0)
        if cgroups.root.exists():
            b.say(f"  warning: could not remove {cgroups.root}")


# -- 2. the daemon's cost of sampling every instance at the default cadence --------------

CADENCE_TARGET = 1.0  # % of one core, 1,000 instances


def bench_cadence(b: Bench) -> None:
    """Daemon CPU with 1,000 idle `sleep` instances, all sampled every DISPLAY_INTERVAL."""
    n, seconds, windows = b.args.processes, b.args.cadence_seconds, b.args.cadence_windows
    b.say(f"\n[cadence] daemon with {n} `sleep` instances, every one sampled every {DISPLAY_INTERVAL:g} s "
          f"(PSS of all every {EXACT_INTERVAL:g} s); CPU over {windows} windows of {seconds:g} s")
    d = b.supervised("cadence", f'[apps.s]\ncommand = ["sleep", "3600"]\ninstances = {n}\nreadiness = "none"\n'
                                f'stop_timeout = "2s"\n')
    d.start()
    rows = d.wait_running(n, timeout=300)
    for row in rows:
        b.procs.saw_pid(row["pid"])
    wait_for(lambda: all(i.get("processes") == 1 and i.get("cpu") is not None for i in d.status()), 30,
             "cpu and processes for every instance")
    time.sleep(EXACT_INTERVAL / 10)  # let the start's work pass (a pace, not a wait for a condition)
    pid = d.proc.pid  # type: ignore[union-attr]
    cpus = []
    for _ in range(windows):
        c0, t0 = cpu_seconds(pid), time.monotonic()
        time.sleep(seconds)  # the measuring window
        cpus.append((cpu_seconds(pid) - c0) / (time.monotonic() - t0) * 100)
    d.shutdown()
    cpu = median(cpus)
    b.say(f"  daemon CPU per window: {', '.join(f'{c:.2f} %' for c in cpus)}; median {cpu:.2f} %")
    b.raw["cadence"] = {"instances": n, "interval": DISPLAY_INTERVAL, "cpu": cpus}
    b.add(f"daemon CPU, {n} instances sampled every {DISPLAY_INTERVAL:g} s", f"{cpu:.2f} %", "",
          f"(< {CADENCE_TARGET:g} % of a core)", cpu < CADENCE_TARGET)


# -- 3. a pre-forked server under a limit between its PSS and its RSS sum ----------------


def tree_of(pid: int) -> list[psutil.Process]:
    master = psutil.Process(pid)
    return [master, *master.children(recursive=True)]


def pss_and_rss_sum(pid: int) -> tuple[int, int]:
    """(PSS, RSS sum) of the tree by psutil: a reading independent of the sampler's."""
    procs = tree_of(pid)
    return sum(p.memory_full_info().pss for p in procs), sum(p.memory_info().rss for p in procs)


def soak_config(shared_mb: int, children: int, limit_mb: int) -> str:
    return (f'[apps.pre]\ncommand = ["{PY}", "{PREFORKED}", "{shared_mb}", "{children}"]\n'
            f'max_memory = "{limit_mb}M"\nstop_timeout = "10s"\n')


def instance(d: Supervised) -> dict:
    return d.status()[0]


def watch_soak(b: Bench, d: Supervised, seconds: float, first_pid: int) -> tuple[int, list[int]]:
    """(memory stops seen, each status's rss) over `seconds`, the status read every second."""
    shown: list[int] = []
    deadline = time.monotonic() + seconds
    next_say = time.monotonic() + 60
    while time.monotonic() < deadline:
        inst = instance(d)
        if inst["pid"] != first_pid or inst["last_exit"] is not None:
            b.say(f"    restarted: {inst}")
            break
        shown.append(inst["rss"])
        if time.monotonic() >= next_say:
            next_say += 60
            pss, rss_sum = pss_and_rss_sum(first_pid)
            b.say(f"    {seconds - (deadline - time.monotonic()):.0f} s: shown {inst['rss'] / MiB:.1f} MiB, "
                  f"PSS {pss / MiB:.1f} MiB, RSS sum {rss_sum / MiB:.1f} MiB")
        time.sleep(1.0)  # the soak's pace, not a wait for a condition
    stops = [e for e in d.events() if e.get("name") == "pre:0" and e.get("to") == "stopping"]
    return len(stops), shown


def bench_soak(b: Bench) -> None:
    """A pre-forked tree over its limit by RSS sum only: never restarted; grown past it: restarted."""
    shared, children, limit = 150, 4, 500
    seconds = b.args.soak_seconds
    b.say(f"\n[soak] a master writing {shared} MB then forking {children} children, max_memory {limit}M, "
          f"{seconds:g} s; status every second")
    d = b.supervised("soak", soak_config(shared, children, limit))
    d.start()
    first = d.wait_running(1)[0]["pid"]
    log = d.dir / ".supervise" / "logs" / "pre.0.log"
    wait_for(lambda: log.exists() and "forked" in log.read_text(), 30, "the children forked")
    for p in tree_of(first):
        b.procs.saw_pid(p.pid)
    pss, rss_sum = pss_and_rss_sum(first)
    wait_for(lambda: instance(d)["rss"], 10, "a sample")
    b.say(f"  tree: PSS {pss / MiB:.1f} MiB, RSS sum {rss_sum / MiB:.1f} MiB (what the old sampler judged), "
          f"status shows {instance(d)['rss'] / MiB:.1f} MiB")
    if not pss < limit * MiB < rss_sum:
        raise BenchError(f"soak: the limit is not between the PSS and the RSS sum ({pss=}, {rss_sum=})")
    cpu0, t0 = cpu_seconds(d.proc.pid), time.monotonic()  # type: ignore[union-attr]
    stops, shown = watch_soak(b, d, seconds, first)
    cpu = (cpu_seconds(d.proc.pid) - cpu0) / (time.monotonic() - t0) * 100  # type: ignore[union-attr]
    b.say(f"  {stops} memory restarts in {seconds:g} s; shown {min(shown) / MiB:.1f}-{max(shown) / MiB:.1f} MiB; "
          f"daemon CPU {cpu:.2f} % (a pass every {MEMORY_INTERVAL:g} s; the tree's PSS read every 30 s, or when "
          f"its page faults say it may have grown near the limit)")
    b.raw["soak"] = {"stops": stops, "shown": shown, "pss": pss, "rss_sum": rss_sum, "cpu": cpu}
    b.add(f"pre-forked 4 x {shared} MB shared, {limit}M limit, {seconds:g} s", f"{stops} memory restarts",
          f"RSS sum {rss_sum / MiB:.0f} MiB", f"PSS {pss / MiB:.0f} MiB shown ~{median(shown) / MiB:.0f} (target 0)",
          stops == 0)
    b.add("  daemon CPU during the soak", f"{cpu:.2f} %", "", "", None)
    os.kill(first, signal.SIGUSR1)
    t1 = time.monotonic()
    grown = wait_for(lambda: (i := instance(d))["last_exit"] and i, 30, "a restart for memory after the growth")
    took = time.monotonic() - t1
    b.procs.saw_pid(grown["pid"])
    b.say(f"  grown: last_exit {grown['last_exit']} after {took:.2f} s")
    b.add("  the same tree grown past the limit", grown["last_exit"]["reason"], "", f"in {took:.1f} s (memory)",
          grown["last_exit"]["reason"] == "memory")
    d.shutdown()


# -- the run ----------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    opts = Options(__doc__, FIGURES)
    opts.add("--processes", type=int, default=1000, help="pass: processes (default 1000)")
    opts.number("--passes", int, 15, 5, "pass: passes of each kind")
    opts.number("--cadence-seconds", float, 30.0, 10.0, "cadence: seconds a window")
    opts.number("--cadence-windows", int, 5, 3, "cadence: windows")
    opts.number("--soak-seconds", float, 300.0, 30.0, "soak: seconds")
    return opts.parse(argv)


def run(b: Bench) -> None:
    run_selected(b, ("pass", bench_pass), ("cadence", bench_cadence), ("soak", bench_soak))


if __name__ == "__main__":
    sys.exit(main("sampler", parse_args(None), run))
