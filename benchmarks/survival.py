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
import json
import os
import random
import signal
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "tests"))

from harness import PY, BenchError, Row, median, ms  # noqa: E402
from reload import Bench, Daemon, run_figures  # noqa: E402

from supervise.runtime import checkpoint as state  # noqa: E402
from supervise.config.model import AppConfig, Config, Readiness, SuperviseConfig  # noqa: E402
from supervise.core import Core, Ready, Spawn, Spawned  # noqa: E402

FIGURES = ("adopt", "checkpoint", "storm")
BEATER = HERE.parent / "tests" / "integration" / "workers" / "beater.py"


def app_config(instances: int, extra: str = "") -> str:
    return (f'[apps.w]\ncommand = ["{PY}", "{BEATER}"]\ninstances = {instances}\nreadiness = "heartbeat"\n'
            f'stop_timeout = "5s"\n{extra}')


def wait_checkpoint(d: Daemon, count: int, timeout: float = 30.0) -> None:
    path = d.dir / ".supervise" / "checkpoint.json"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            cp = state.read(path)
            if cp and sum(1 for r in cp.instances if r.pid and r.state == "running") == count:
                return
        except state.CheckpointError:
            pass
        time.sleep(0.02)
    raise BenchError("the checkpoint never named every instance running")


def bench_adopt(b: Bench) -> None:
    count = 500
    totals, gaps_max, gaps_med, restarts, exits = [], [], [], [], []
    for run in range(b.args.runs):
        d = Daemon(b, f"adopt{run}", app_config(count))
        before = {i["name"]: i["pid"] for i in d.wait_running(count, timeout=120)["instances"]}
        wait_checkpoint(d, count)
        killed = time.time()
        d.proc.send_signal(signal.SIGKILL)
        d.proc.wait(10)
        b.procs.daemons.remove(d.proc)
        import subprocess
        with open(d.dir / "daemon.log", "ab") as log:
            began = time.monotonic()
            d.proc = subprocess.Popen([PY, "-m", "supervise", "run", "-c", str(d.config)], stdin=subprocess.DEVNULL,
                                      stdout=log, stderr=subprocess.STDOUT, cwd=d.dir, env=b.procs.env())
        b.procs.daemons.append(d.proc)
        answered = None
        heard: dict[str, float] = {}
        while time.monotonic() - began < 60:
            app = d.app_status()
            now = time.time()
            if app is None:
                continue
            answered = answered or now
            for i in app["instances"]:
                if i["heartbeat_age"] is not None and i["name"] not in heard:
                    heard[i["name"]] = now - i["heartbeat_age"]
            if len(heard) == count and all(i["state"] == "running" for i in app["instances"]):
                break
        else:
            raise BenchError(f"only {len(heard)}/{count} adopted instances heard from after 60 s")
        total = time.monotonic() - began
        after = {i["name"]: i["pid"] for i in app["instances"]}
        changed = sum(1 for name, pid in before.items() if after.get(name) != pid)
        gaps = sorted(t - killed for t in heard.values())
        restart = answered - killed
        totals.append(total)
        gaps_max.append(gaps[-1] - restart)
        gaps_med.append(gaps[len(gaps) // 2] - restart)
        restarts.append(restart)
        exits.append(changed)
        print(f"  adopt run {run + 1}: {count} adopted and heard from in {total:.2f}s; {changed} workers replaced; "
              f"daemon back after {restart:.2f}s, heartbeat gap median +{ms(gaps_med[-1])}, "
              f"max +{ms(gaps_max[-1])} beyond that", flush=True)
        d.shutdown()
    b.raw["adopt"] = {"total": totals, "gap_max_beyond_restart": gaps_max, "restart": restarts, "replaced": exits}
    b.rows.append(Row("adopt 500 after kill -9: all running + heard", f"{median(totals):.2f} s", "-",
                      "target < 2 s", median(totals) < 2.0))
    b.rows.append(Row("workers that exited across the crash", str(sum(exits)), "0", "target 0", sum(exits) == 0))
    b.rows.append(Row("heartbeat gap beyond the daemon's restart", f"+{ms(median(gaps_max))} (max)",
                      f"restart {median(restarts):.2f} s", "target < +100 ms", median(gaps_max) < 0.1))


def bench_checkpoint(b: Bench) -> None:
    """One checkpoint of 500 instances, the way the daemon makes one."""
    apps = {"w": AppConfig("w", ("x",), Path("/"), instances=500, readiness=Readiness.HEARTBEAT)}
    config = Config(Path("/c.toml"), SuperviseConfig(b.dir / "cp"), apps, text="x" * 2000)
    core = Core(config, random.Random(0))
    pending = [a for a in core.start(0.0) if isinstance(a, Spawn)]
    for a in pending:
        core.handle(Spawned(a.spawn_id, 10_000 + a.spawn_id), 0.1)
        core.handle(Ready(a.spawn_id), 0.2)
    path = b.dir / "cp" / "checkpoint.json"
    path.parent.mkdir()
    samples = []
    for _ in range(50 if b.args.quick else 200):
        began = time.perf_counter()
        snap = core.snapshot()
        records = tuple(state.InstanceRecord(i["app"], i["index"], i["generation"], i["role"], i["state"],
                                             i["restarts"], pid=10_000 + i["spawn_id"], create_time=1.0e9,
                                             token="f" * 32, log_path="/var/lib/supervise/logs/w.0.log",
                                             cgroup="/sys/fs/cgroup/supervise-1.4026531836/w_0.abcdef",
                                             spawned_at=i["spawned_at"], running_since=i["running_since"])
                        for i in snap["instances"])
        data = state.encode(state.Checkpoint(os.getpid(), time.time(), "/c.toml", config.text, snap["apps"], records))
        state.write(path, data)
        samples.append(time.perf_counter() - began)
    b.raw["checkpoint"] = samples
    print(f"  checkpoint of 500: median {ms(median(samples))}, {len(data) // 1024} KiB", flush=True)
    b.rows.append(Row("one checkpoint of 500 instances", ms(median(samples)), "-",
                      f"{len(data) // 1024} KiB with fsync (target < 5 ms)", median(samples) < 0.005))


def bench_storm(b: Bench) -> None:
    d = Daemon(b, "storm", app_config(50, "backoff = { initial = \"10ms\", max = \"50ms\" }\n"
                                          "crash_loop = { max_restarts = 100000, window = \"1s\" }\n"))
    d.wait_running(50)
    path = d.dir / ".supervise" / "checkpoint.json"
    seconds, kills, writes, last_inode = 3.0, 0, 0, None
    began = time.monotonic()
    import psutil
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
        time.sleep(0.01)
    rate = writes / seconds
    print(f"  storm: {kills} kills in {seconds:g}s ({kills / seconds:.0f}/s) -> {writes} checkpoints "
          f"({rate:.1f}/s)", flush=True)
    b.raw["storm"] = {"kills": kills, "writes": writes, "seconds": seconds}
    d.shutdown()
    b.rows.append(Row("checkpoints during a crash storm", f"{rate:.1f}/s", f"{kills / seconds:.0f} kills/s",
                      "coalesced (target <= 5/s)", rate <= 5.0))


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer runs")
    parser.add_argument("--runs", type=int, help="runs of the adoption figure (default 3, 1 with --quick)")
    parser.add_argument("--only", action="append", choices=FIGURES)
    parser.add_argument("--keep", action="store_true", help="keep the work dir")
    parser.add_argument("--json", metavar="FILE", help="also write every sample here")
    args = parser.parse_args(argv)
    args.runs = args.runs or (1 if args.quick else 3)
    args.only = set(args.only or FIGURES)
    return args


def main(argv: list[str] | None = None) -> int:
    return run_figures("survival", parse_args(argv), [("checkpoint", bench_checkpoint), ("storm", bench_storm),
                                                      ("adopt", bench_adopt)])


if __name__ == "__main__":
    sys.exit(main())
