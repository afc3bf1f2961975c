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
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "tests"))

from harness import PY, BenchError, Inbox, Processes, Row, interrupt, median, ms, run_and_report  # noqa: E402
from loadgen import LoadGenerator  # noqa: E402

EXAMPLES = HERE.parent / "examples"
FIGURES = ("load", "rollout", "watch", "idle")


@dataclass
class Bench:
    args: argparse.Namespace
    dir: Path
    procs: Processes
    inbox: Inbox
    floor_log: int = field(default_factory=lambda: os.open(os.devnull, os.O_WRONLY))
    rows: list[Row] = field(default_factory=list)
    raw: dict = field(default_factory=dict)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Daemon:
    """`supervise run` on one app, `web`, in its own directory."""

    def __init__(self, b: Bench, name: str, app: str) -> None:
        self.b = b
        self.dir = b.dir / name
        self.dir.mkdir()
        self.config = self.dir / "supervise.toml"
        self.config.write_text(app)
        with open(self.dir / "daemon.log", "ab") as log:
            self.proc = subprocess.Popen(
                [PY, "-m", "supervise", "run", "-c", str(self.config)], stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                cwd=self.dir, env=b.procs.env())
        b.procs.daemons.append(self.proc)

    def cli(self, *args: str, timeout: float = 120):
        return subprocess.run([PY, "-m", "supervise", *args, "-c", str(self.config)], capture_output=True,
                              text=True, cwd=self.dir, env=self.b.procs.env(), timeout=timeout)

    def app_status(self) -> dict | None:
        result = self.cli("status", "--json")
        if result.returncode != 0:
            return None
        return json.loads(result.stdout)["apps"][0]

    def wait_running(self, count: int, timeout: float = 60.0, generation: int | None = None) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            app = self.app_status()
            if app and len(app["instances"]) == count and all(
                    i["state"] == "running" and (generation is None or i["generation"] == generation)
                    for i in app["instances"]):
                for i in app["instances"]:
                    self.b.procs.saw_pid(i["pid"])
                return app
            if self.proc.poll() is not None:
                raise BenchError(f"daemon exited: {(self.dir / 'daemon.log').read_text()[-2000:]}")
            time.sleep(0.05)
        raise BenchError(f"{count} instances not running after {timeout}s")

    def events(self) -> list[dict]:
        return [json.loads(line) for line in self.cli("events", "--no-follow").stdout.splitlines()]

    def shutdown(self) -> None:
        self.cli("shutdown")
        self.proc.wait(60)
        self.b.procs.daemons.remove(self.proc)


def web_app(port: int, instances: int, command: list[str], extra: str = "") -> str:
    argv = ", ".join(json.dumps(part) for part in command)
    return (f"[apps.web]\ncommand = [{argv}]\ninstances = {instances}\nreadiness = \"heartbeat\"\n"
            f"listen = [\"127.0.0.1:{port}\"]\nstop_timeout = \"20s\"\nstart_timeout = \"30s\"\n{extra}")


def bench_load(b: Bench) -> None:
    rate, clients, steady = b.args.rate, 16, (2.0 if b.args.quick else 4.0)
    failed, p99s, base_p99s, rates = [], [], [], []
    for run in range(b.args.runs):
        port = free_port()
        d = Daemon(b, f"load{run}", web_app(port, 8, [PY, str(EXAMPLES / "web.py")]))
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
        print(f"  load run {run + 1}: reload took {took:.2f}s; during: {result.summary()}; "
              f"steady: {base_result.summary()}", flush=True)
        d.shutdown()
    ratio = median([p / q for p, q in zip(p99s, base_p99s)])
    b.raw["load"] = {"failed": failed, "p99": p99s, "steady_p99": base_p99s, "rate": rates}
    b.rows.append(Row("reload of 8 under load: failed requests", str(sum(failed)), "0",
                      f"{sum(failed)} over {b.args.runs} runs at {median(rates):.0f} req/s (target 0)",
                      sum(failed) == 0))
    b.rows.append(Row("reload of 8 under load: p99 latency", ms(median(p99s)), ms(median(base_p99s)),
                      f"x{ratio:.2f} of steady state (target <= 2)", ratio <= 2.0))


def bench_rollout(b: Bench) -> None:
    ratios, durations, sums = [], [], []
    for run in range(b.args.runs):
        port = free_port()
        d = Daemon(b, f"rollout{run}", web_app(port, 8, [PY, str(HERE / "slow_web.py")],
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
        print(f"  rollout run {run + 1}: {rollout['duration']:.2f}s for 8 instances whose startups sum to "
              f"{sum(startup):.2f}s (x{ratios[-1]:.2f})", flush=True)
        d.shutdown()
    b.raw["rollout"] = {"duration": durations, "startup_sum": sums}
    ratio = median(ratios)
    b.rows.append(Row("rolling reload of 8 (200 ms startups)", f"{median(durations):.2f} s",
                      f"{median(sums):.2f} s", f"x{ratio:.2f} of the startups' sum (target <= 1.5)", ratio <= 1.5))


def bench_watch(b: Bench) -> None:
    latencies = []
    port = free_port()
    d = Daemon(b, "watch", web_app(port, 2, [PY, "app.py"], 'watch = ["app.py"]\n'))
    shutil.copy(EXAMPLES / "web.py", d.dir / "app.py")
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
        print(f"  watch run {run + 1}: save -> first spawn {ms(latencies[-1])}", flush=True)
    d.shutdown()
    b.raw["watch"] = latencies
    b.rows.append(Row("watched file saved -> first new spawn", ms(median(latencies)), "-",
                      f"max {ms(max(latencies))} (target < 300 ms)", median(latencies) < 0.3))


def bench_idle(b: Bench) -> None:
    """CPU of an idle daemon watching a tree, against one that watches nothing, side by side."""
    import psutil

    window = 10.0 if b.args.quick else 30.0
    tree = b.dir / "tree"
    for i in range(200):  # a source tree worth watching
        (tree / f"pkg{i // 20}").mkdir(parents=True, exist_ok=True)
        (tree / f"pkg{i // 20}" / f"mod{i}.py").write_text("x = 1\n")
    command = [PY, "-c", "import signal; from supervise.worker import Heartbeat; Heartbeat.from_env().ready(); "
                         "signal.pause()"]
    watched = Daemon(b, "idle-watch", web_app(free_port(), 1, command,
                                              f'watch = ["{tree}/**/*.py"]\n'))
    plain = Daemon(b, "idle-plain", web_app(free_port(), 1, command))
    watched.wait_running(1)
    plain.wait_running(1)
    time.sleep(2.0)  # let both settle (the watcher arms, the first samples pass)
    procs = {d: psutil.Process(d.proc.pid) for d in (watched, plain)}
    before = {d: sum(p.cpu_times()[:2]) for d, p in procs.items()}
    time.sleep(window)
    used = {d: (sum(p.cpu_times()[:2]) - before[d]) / window * 100 for d, p in procs.items()}
    extra = used[watched] - used[plain]
    print(f"  idle over {window:g}s: watching 200 files {used[watched]:.3f}% of a core, "
          f"watching nothing {used[plain]:.3f}%", flush=True)
    b.raw["idle"] = {"watch": used[watched], "plain": used[plain]}
    for d in (watched, plain):
        d.shutdown()
    b.rows.append(Row("idle daemon CPU, watching 200 files", f"{used[watched]:.3f}%", f"{used[plain]:.3f}%",
                      f"+{extra:.3f}% of a core (target: small)", None))


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer runs")
    parser.add_argument("--runs", type=int, help="runs per figure (default 5, 3 with --quick)")
    parser.add_argument("--rate", type=float, default=400.0, help="requests per second of the load (default 400)")
    parser.add_argument("--only", action="append", choices=FIGURES)
    parser.add_argument("--keep", action="store_true", help="keep the work dir")
    parser.add_argument("--json", metavar="FILE", help="also write every sample here")
    args = parser.parse_args(argv)
    args.runs = args.runs or (3 if args.quick else 5)
    args.only = set(args.only or FIGURES)
    return args


def run_figures(name: str, args: argparse.Namespace, figures: list[tuple[str, object]]) -> int:
    """The shared main of reload.py and survival.py: signals, work dir, cleanup, the table."""
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, interrupt)
    signal.signal(signal.SIGHUP, interrupt)
    workdir = Path(tempfile.mkdtemp(prefix=f"sv-{name}-"))
    procs = Processes(workdir / "pycache")
    b = Bench(args, workdir, procs, Inbox(workdir / "hello.sock", procs.saw_pid))
    print(f"supervise {name} benchmarks: {PY}, {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.2f}, "
          f"work dir {workdir}", flush=True)

    def body() -> None:
        for figure, bench in figures:
            if figure in args.only:
                bench(b)

    return run_and_report(b, body, workdir, args.keep, args.json)


def main(argv: list[str] | None = None) -> int:
    return run_figures("reload", parse_args(argv), [("load", bench_load), ("rollout", bench_rollout),
                                                    ("watch", bench_watch), ("idle", bench_idle)])


if __name__ == "__main__":
    sys.exit(main())
