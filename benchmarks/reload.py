#!/usr/bin/env python3
"""Reload benchmarks of supervise: requests lost and latency during a rolling reload, rollout time, watch latency.

    python benchmarks/reload.py            # the full run, about two minutes
    python benchmarks/reload.py --quick    # a smoke check
    python benchmarks/reload.py --only load --only rollout --only watch

`load`: 8 instances of examples/web.py behind one `listen` socket, a steady
load at a fixed rate from tests/loadgen.py; the p99 of a steady window is the
baseline, measured in the same run right before `supervise reload web`.
`rollout`: 8 instances whose startup takes 200 ms (benchmarks/slow_web.py);
the rollout's duration against the sum of its new instances' own startup
times (spawn to ready, from the daemon's events). `watch`: a watched file is
written; the time to the new generation's first spawn, from the event's
wall-clock stamp. See benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from harness import PY, BenchError, cpu_seconds, median, ms, settle  # noqa: E402
from helpers import free_port  # noqa: E402  (tests/, put on the path by harness)
from loadgen import LoadGenerator  # noqa: E402
from runner import Bench, Options, main, run_selected  # noqa: E402

EXAMPLES = HERE.parent / "examples"
FIGURES = ("load", "rollout", "watch", "idle")


def web_app(port: int, instances: int, command: list[str], extra: str = "") -> str:
    """The config of one app, `web`: `instances` of `command` behind a listen socket on `port`, ready by heartbeat."""
    argv = ", ".join(json.dumps(part) for part in command)
    return (f"[apps.web]\ncommand = [{argv}]\ninstances = {instances}\nreadiness = \"heartbeat\"\n"
            f"listen = [\"127.0.0.1:{port}\"]\nstop_timeout = \"20s\"\nstart_timeout = \"30s\"\n{extra}")


def bench_load(b: Bench) -> None:
    """A rolling reload of 8 under a steady load: failed requests, and p99 against the steady state."""
    rate, clients, steady = b.args.rate, 16, (2.0 if b.args.quick else 4.0)
    failed, p99s, base_p99s, rates = [], [], [], []
    for run in range(b.args.runs):
        port = free_port()
        d = b.started(f"load{run}", web_app(port, 8, [PY, str(EXAMPLES / "web.py")]))
        d.wait_running(8)
        base = LoadGenerator(port, clients=clients, rate=rate, max_seconds=steady).start()
        base.wait_for(int(rate * steady * 0.9), timeout=steady * 5)
        base_result = base.stop()
        load = LoadGenerator(port, clients=clients, rate=rate, max_seconds=120).start()
        load.wait_for(int(rate * 0.5))
        began = time.monotonic()
        reload = d.cli("reload", "web")
        took = time.monotonic() - began
        load.wait_for(int(rate * 0.5))
        result = load.stop()
        if reload.returncode != 0:
            raise BenchError(f"reload failed: {reload.stderr.strip()}")
        failed.append(result.failed + base_result.failed)
        p99s.append(result.percentile(0.99))
        base_p99s.append(base_result.percentile(0.99))
        rates.append(result.rate)
        b.say(f"  load run {run + 1}: reload took {took:.2f}s; during: {result.summary()}; "
              f"steady: {base_result.summary()}")
        d.shutdown()
    ratio = median([p / q for p, q in zip(p99s, base_p99s, strict=True)])
    b.raw["load"] = {"failed": failed, "p99": p99s, "steady_p99": base_p99s, "rate": rates}
    b.add("reload of 8 under load: failed requests", str(sum(failed)), "0",
          f"{sum(failed)} over {b.args.runs} runs at {median(rates):.0f} req/s (target 0)", sum(failed) == 0)
    b.add("reload of 8 under load: p99 latency", ms(median(p99s)), ms(median(base_p99s)),
          f"x{ratio:.2f} of steady state (target <= 2)", ratio <= 2.0)


def bench_rollout(b: Bench) -> None:
    """How long a rollout of 8 takes against its new instances' own startups (from the events)."""
    ratios, durations, sums = [], [], []
    for run in range(b.args.runs):
        port = free_port()
        d = b.started(f"rollout{run}", web_app(port, 8, [PY, str(HERE / "slow_web.py")],
                                               'env = { STARTUP_SECONDS = "0.2" }\n'))
        d.wait_running(8)
        reload = d.cli("reload", "web", "--json")
        if reload.returncode != 0:
            raise BenchError(f"reload failed: {reload.stderr.strip()}")
        rollout = json.loads(reload.stdout)["rollouts"][0]
        starts: dict[int, float] = {}
        startup = []
        for e in d.events():
            if e["type"] != "state" or e.get("generation") != rollout["generation"]:
                continue
            if e["to"] == "starting":
                starts[e["index"]] = e["time"]
            elif e["to"] == "running" and e["index"] in starts:
                startup.append(e["time"] - starts.pop(e["index"]))
        if len(startup) != 8:
            raise BenchError(f"expected 8 new instances in the events, found {len(startup)}")
        durations.append(rollout["duration"])
        sums.append(sum(startup))
        ratios.append(rollout["duration"] / sum(startup))
        b.say(f"  rollout run {run + 1}: {rollout['duration']:.2f}s for 8 instances whose startups sum to "
              f"{sum(startup):.2f}s (x{ratios[-1]:.2f})")
        d.shutdown()
    b.raw["rollout"] = {"duration": durations, "startup_sum": sums}
    ratio = median(ratios)
    b.add("rolling reload of 8 (200 ms startups)", f"{median(durations):.2f} s", f"{median(sums):.2f} s",
          f"x{ratio:.2f} of the startups' sum (target <= 1.5)", ratio <= 1.5)


def bench_watch(b: Bench) -> None:
    """A watched file saved -> the new generation's first spawn (the event's stamp)."""
    latencies = []
    port = free_port()
    d = b.supervised("watch", web_app(port, 2, [PY, "app.py"], 'watch = ["app.py"]\n'))
    shutil.copy(EXAMPLES / "web.py", d.dir / "app.py")
    d.start()
    d.wait_running(2)
    for run in range(b.args.runs * 2):
        generation = 2 + run
        saved = time.time()
        (d.dir / "app.py").write_text((EXAMPLES / "web.py").read_text() + f"\n# edit {run}\n")
        d.wait_running(2, generation=generation)
        spawned = [e["time"] for e in d.events()
                   if e["type"] == "state" and e.get("generation") == generation and e["to"] == "starting"]
        if not spawned:
            raise BenchError("no spawn of the new generation in the events")
        latencies.append(min(spawned) - saved)
        b.say(f"  watch run {run + 1}: save -> first spawn {ms(latencies[-1])}")
    d.shutdown()
    b.raw["watch"] = latencies
    b.add("watched file saved -> first new spawn", ms(median(latencies)), "-",
          f"max {ms(max(latencies))} (target < 300 ms)", median(latencies) < 0.3)


def bench_idle(b: Bench) -> None:
    """CPU of an idle daemon watching a tree, against one that watches nothing, side by side."""
    window = 10.0 if b.args.quick else 30.0
    tree = b.dir / "tree"
    for i in range(200):  # a source tree worth watching
        (tree / f"pkg{i // 20}").mkdir(parents=True, exist_ok=True)
        (tree / f"pkg{i // 20}" / f"mod{i}.py").write_text("x = 1\n")
    command = [PY, "-c", "import signal; from supervise.worker import Heartbeat; Heartbeat.from_env().ready(); "
                         "signal.pause()"]
    watched = b.started("idle-watch", web_app(free_port(), 1, command, f'watch = ["{tree}/**/*.py"]\n'))
    plain = b.started("idle-plain", web_app(free_port(), 1, command))
    watched.wait_running(1)
    plain.wait_running(1)
    settle(2.0)  # the watcher arms, the first samples pass
    daemons = (watched, plain)
    before = {d: cpu_seconds(d.proc.pid) for d in daemons}
    time.sleep(window)  # the measurement window: both daemons idle side by side
    used = {d: (cpu_seconds(d.proc.pid) - before[d]) / window * 100 for d in daemons}
    extra = used[watched] - used[plain]
    b.say(f"  idle over {window:g}s: watching 200 files {used[watched]:.3f}% of a core, "
          f"watching nothing {used[plain]:.3f}%")
    b.raw["idle"] = {"watch": used[watched], "plain": used[plain]}
    for d in daemons:
        d.shutdown()
    b.add("idle daemon CPU, watching 200 files", f"{used[watched]:.3f}%", f"{used[plain]:.3f}%",
          f"+{extra:.3f}% of a core (target: small)", None)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The common options, --runs and --rate."""
    opts = Options(__doc__, FIGURES)
    opts.number("--runs", int, 5, 3, "runs per figure")
    opts.add("--rate", type=float, default=400.0, help="requests per second of the load (default 400)")
    return opts.parse(argv)


def run(b: Bench) -> None:
    """The selected figures, in order."""
    run_selected(b, ("load", bench_load), ("rollout", bench_rollout), ("watch", bench_watch), ("idle", bench_idle))


if __name__ == "__main__":
    sys.exit(main("reload", parse_args(None), run))
