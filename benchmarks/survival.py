#!/usr/bin/env python3
"""Survival benchmarks of supervise: adoption after a daemon crash, worker downtime, checkpoint cost.

    python benchmarks/survival.py            # the full run, about two minutes
    python benchmarks/survival.py --quick    # a smoke check
    python benchmarks/survival.py --only adopt --only checkpoint --only storm

`adopt`: 500 beating workers; the daemon is SIGKILLed and started again on the
same state dir. Measured: exec of the new daemon -> all 500 shown `running`
with a heartbeat heard by it; workers that exited (target 0); the heartbeat
gap at each worker (kill -> its first beat the new daemon heard) against the
daemon's restart time (kill -> the new daemon answering). `checkpoint`: the
cost of one checkpoint of 500 instances as the daemon makes it (snapshot of
the core, records, JSON, write + fsync + rename). `storm`: how many
checkpoints a crash storm (workers killed every 10 ms for 3 s) causes per
second, counted by the file's inode changing (each write is a rename).
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import time
from pathlib import Path

import psutil

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from harness import PY, BenchError, median, ms  # noqa: E402
from runner import Bench, Options, main, run_selected  # noqa: E402

from supervise.config.model import AppConfig, Config, Readiness, SuperviseConfig  # noqa: E402
from supervise.core import Core, DaemonStarted, Ready, Spawn, Spawned  # noqa: E402
from supervise.runtime import checkpoint as state  # noqa: E402
from supervise.runtime.process import Child  # noqa: E402
from supervise.runtime.workers import Worker  # noqa: E402

FIGURES = ("adopt", "checkpoint", "storm")
BEATER = HERE.parent / "tests" / "integration" / "workers" / "beater.py"


def app_config(instances: int, extra: str = "") -> str:
    """The config of one app, `w`: `instances` beating workers, ready by heartbeat."""
    return (f'[apps.w]\ncommand = ["{PY}", "{BEATER}"]\ninstances = {instances}\nreadiness = "heartbeat"\n'
            f'stop_timeout = "5s"\n{extra}')


def bench_adopt(b: Bench) -> None:
    """A daemon with 500 workers SIGKILLed and started again: adoption time, exits, heartbeat gap."""
    count = 500
    totals, gaps_max, gaps_med, restarts, exits = [], [], [], [], []
    for run in range(b.args.runs):
        d = b.started(f"adopt{run}", app_config(count))
        before = {i["name"]: i["pid"] for i in d.wait_running(count, timeout=120)}
        d.wait_checkpoint(count)
        killed = time.time()
        d.kill()
        began = d.start()
        answered = None
        heard: dict[str, float] = {}
        while time.monotonic() - began < 60:  # as fast as the CLI answers: the figure is when it first can
            instances = d.try_status()
            now = time.time()
            if instances is None:
                continue
            answered = answered or now
            for i in instances:
                if i["heartbeat_age"] is not None and i["name"] not in heard:
                    heard[i["name"]] = now - i["heartbeat_age"]
            if len(heard) == count and all(i["state"] == "running" for i in instances):
                break
        else:
            raise BenchError(f"only {len(heard)}/{count} adopted instances heard from after 60 s")
        total = time.monotonic() - began
        after = {i["name"]: i["pid"] for i in instances}
        changed = sum(1 for name, pid in before.items() if after.get(name) != pid)
        gaps = sorted(t - killed for t in heard.values())
        restart = answered - killed
        totals.append(total)
        gaps_max.append(gaps[-1] - restart)
        gaps_med.append(gaps[len(gaps) // 2] - restart)
        restarts.append(restart)
        exits.append(changed)
        b.say(f"  adopt run {run + 1}: {count} adopted and heard from in {total:.2f}s; {changed} workers replaced; "
              f"daemon back after {restart:.2f}s, heartbeat gap median +{ms(gaps_med[-1])}, "
              f"max +{ms(gaps_max[-1])} beyond that")
        d.shutdown()
    b.raw["adopt"] = {"total": totals, "gap_max_beyond_restart": gaps_max, "restart": restarts, "replaced": exits}
    b.add("adopt 500 after kill -9: all running + heard", f"{median(totals):.2f} s", "-",
          "target < 2 s", median(totals) < 2.0)
    b.add("workers that exited across the crash", str(sum(exits)), "0", "target 0", sum(exits) == 0)
    b.add("heartbeat gap beyond the daemon's restart", f"+{ms(median(gaps_max))} (max)",
          f"restart {median(restarts):.2f} s", "target < +100 ms", median(gaps_max) < 0.1)


def bench_checkpoint(b: Bench) -> None:
    """One checkpoint of 500 instances, the way the daemon makes one (Checkpointer.encode, then write)."""
    apps = {"w": AppConfig("w", ("x",), Path("/"), instances=500, readiness=Readiness.HEARTBEAT)}
    config = Config(Path("/c.toml"), SuperviseConfig(b.dir / "cp"), apps, text="x" * 2000)
    core = Core(config, random.Random(0))
    pending = [a for a in core.handle(DaemonStarted(), 0.0) if isinstance(a, Spawn)]
    table: dict[int, Worker] = {}
    for a in pending:
        core.handle(Spawned(a.spawn_id, 10_000 + a.spawn_id), 0.1)
        core.handle(Ready(a.spawn_id), 0.2)
        child = Child(10_000 + a.spawn_id, None, Path("/sys/fs/cgroup/supervise-1.4026531836/w_0.abcdef"), 1.0e9)
        table[a.spawn_id] = Worker(a.spawn_id, f"w:{a.index}", a.app, child, "f" * 32, None,
                                   "/var/lib/supervise/logs/w.0.log")
    path = b.dir / "cp" / "checkpoint.json"
    path.parent.mkdir()
    samples = []
    for _ in range(50 if b.args.quick else 200):
        began = time.perf_counter()
        data = state.encode_live(core.view.snapshot(), table, 1.0e9, config.path, config.text)  # type: ignore[arg-type]
        state.write(path, data)
        samples.append(time.perf_counter() - began)
    b.raw["checkpoint"] = samples
    b.say(f"  checkpoint of 500: median {ms(median(samples))}, {len(data) // 1024} KiB")
    b.add("one checkpoint of 500 instances", ms(median(samples)), "-",
          f"{len(data) // 1024} KiB with fsync (target < 5 ms)", median(samples) < 0.005)


def bench_storm(b: Bench) -> None:
    """Checkpoints per second while workers are killed every 10 ms: they must be coalesced."""
    d = b.started("storm", app_config(50, "backoff = { initial = \"10ms\", max = \"50ms\" }\n"
                                          "crash_loop = { max_restarts = 100000, window = \"1s\" }\n"))
    d.wait_running(50)
    path = d.dir / ".supervise" / "checkpoint.json"
    seconds, kills, writes, last_inode = 3.0, 0, 0, None
    began = time.monotonic()
    daemon = psutil.Process(d.proc.pid)
    while time.monotonic() - began < seconds:
        children = daemon.children()
        if children:
            try:
                random.choice(children).kill()
                kills += 1
            except psutil.Error:
                pass
        try:
            inode = os.stat(path).st_ino
        except OSError:
            inode = None
        if inode != last_inode:
            writes += inode is not None and last_inode is not None
            last_inode = inode
        time.sleep(0.01)  # the storm's pace: a kill every 10 ms
    rate = writes / seconds
    b.say(f"  storm: {kills} kills in {seconds:g}s ({kills / seconds:.0f}/s) -> {writes} checkpoints "
          f"({rate:.1f}/s)")
    b.raw["storm"] = {"kills": kills, "writes": writes, "seconds": seconds}
    d.shutdown()
    b.add("checkpoints during a crash storm", f"{rate:.1f}/s", f"{kills / seconds:.0f} kills/s",
          "coalesced (target <= 5/s)", rate <= 5.0)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The common options and --runs."""
    opts = Options(__doc__, FIGURES)
    opts.number("--runs", int, 3, 1, "runs of the adoption figure")
    return opts.parse(argv)


def run(b: Bench) -> None:
    """The selected figures: the cheap ones first, adoption (500 workers) last."""
    run_selected(b, ("checkpoint", bench_checkpoint), ("storm", bench_storm), ("adopt", bench_adopt))


if __name__ == "__main__":
    sys.exit(main("survival", parse_args(None), run))
