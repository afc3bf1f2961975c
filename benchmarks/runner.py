"""One run of a benchmark script: its options, its work dir, the figures it adds, the table, the exit code.

Every script (foundation.py, health.py, reload.py, survival.py) ends the
same way, so that their outputs compare and a script is only its figures:
it builds its command line on `Options`, hands `main` a body that takes a
`Bench`, and `main` does the rest. `harness.py` holds the processes it
starts and cleans up.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from harness import PY, BenchError, Inbox, Processes, Supervised, bench_app


@dataclass
class Row:
    """One line of the table: a figure against its floor and its target."""

    figure: str
    ours: str
    floor: str
    versus: str  # the comparison with the floor, and the target
    ok: bool | None  # None: information only


# -- the command line ----------------------------------------------------------------------


class Options:
    """A script's command line: the options every benchmark takes, and the script's own.

    Common: --quick, --only NAME (repeatable, one of the script's figures),
    --json FILE, --keep. `number` adds a count whose default depends on
    --quick, so that "default N, quick M" is said and applied in one place.
    """

    def __init__(self, doc: str, figures: Sequence[str]) -> None:
        self.figures = tuple(figures)
        self._counts: dict[str, tuple[float, float]] = {}
        p = self.parser = argparse.ArgumentParser(description=doc.split("\n\n")[0],
                                                  formatter_class=argparse.RawDescriptionHelpFormatter)
        p.add_argument("--quick", action="store_true", help="fewer runs and samples: a smoke check")
        p.add_argument("--only", action="append", choices=self.figures, metavar="NAME",
                       help=f"run only this figure (repeatable): {', '.join(self.figures)}")
        p.add_argument("--json", metavar="FILE", help="also write every sample to FILE")
        p.add_argument("--keep", action="store_true", help="keep the work dir (configs, logs)")
        # Every run has these; only scripts that call daemon_options() let them be changed.
        p.set_defaults(as_is_env=False, daemon_python_args="")

    def add(self, *names: str, **kwargs: Any) -> None:
        """An option of the script's own (argparse.add_argument)."""
        self.parser.add_argument(*names, **kwargs)

    def number(self, name: str, kind: type[int] | type[float], full: float, quick: float, help: str) -> None:
        """A count (runs, samples, seconds) that defaults to `full`, or `quick` with --quick."""
        self._counts[name.lstrip("-").replace("-", "_")] = (full, quick)
        self.parser.add_argument(name, type=kind, help=f"{help} (default {full:g}, quick {quick:g})")

    def daemon_options(self, python_args_example: str = "-m cProfile -o /tmp/d.prof") -> None:
        """--as-is-env and --daemon-python-args, for scripts whose figures time interpreter starts."""
        self.add("--as-is-env", action="store_true",
                 help="keep PYTHONDONTWRITEBYTECODE as it is (default: bytecode cached in the work dir, warmed "
                      "up first, as after a normal install)")
        self.add("--daemon-python-args", default="", metavar="ARGS",
                 help=f'interpreter options for the daemon, e.g. "{python_args_example}" (profiling)')

    def parse(self, argv: list[str] | None) -> argparse.Namespace:
        """The options, with each count's default for this kind of run and --only as a set."""
        args = self.parser.parse_args(argv)
        for dest, (full, quick) in self._counts.items():
            if not getattr(args, dest):  # not given (or 0): the default for this kind of run
                setattr(args, dest, quick if args.quick else full)
        args.only = set(args.only or self.figures)
        return args


# -- the run ---------------------------------------------------------------------------


@dataclass
class Bench:
    """What a script's figures work with: its options, work dir, processes and inbox, and the
    figures so far. Scripts subclass it for helpers of their own."""

    args: argparse.Namespace
    dir: Path
    procs: Processes
    inbox: Inbox
    rows: list[Row] = field(default_factory=list)
    raw: dict = field(default_factory=dict)
    floor_log: int = -1

    def __post_init__(self) -> None:
        # Floor processes write here, as the daemon's workers write to their log files.
        self.floor_log = os.open(self.dir / "floor.log", os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC)

    def describe(self) -> str:
        """How this run starts processes, for the first line of the output."""
        return "as-is environment" if self.args.as_is_env else "bytecode cached"

    def supervised(self, name: str, config: str, instances: int = 0) -> Supervised:
        """A daemon (not started) on `config`, in the work dir's `name`."""
        return Supervised(self.dir / name, config, self.procs, instances,
                          tuple(shlex.split(self.args.daemon_python_args)))

    def started(self, name: str, config: str) -> Supervised:
        """A daemon on `config`, started (not yet answering)."""
        d = self.supervised(name, config)
        d.start()
        return d

    def daemon(self, name: str, instances: int, worker_argv: list[str], extra: str = "") -> Supervised:
        """A daemon (not started) on one app, `w`, of `instances` workers that report to the inbox."""
        return self.supervised(name, bench_app(worker_argv, instances, self.inbox, extra), instances)

    def popen(self, argv: list[str], **env: str) -> subprocess.Popen:
        """A floor process with what the daemon gives a worker (own session, stdin from
        /dev/null, output to a file, the inbox's path); recorded for cleanup."""
        p = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=self.floor_log, stderr=self.floor_log,
                             env=self.procs.env(BENCH_SOCK=self.inbox.path, **env), cwd=self.dir,
                             close_fds=True, start_new_session=True)
        self.procs.floor.append(p)
        return p

    def warm_up(self, *argvs: list[str], imports: tuple[str, ...] = ()) -> None:
        """Run each kind of process once, so bytecode caches exist before anything is timed."""
        modules = ", ".join(("supervise.cli", "supervise.runtime.daemon", "supervise.runtime.log", "supervise.core",
                             "supervise.runtime.process", *imports, "asyncio", "zmq", "psutil", "structlog",
                             "secrets", "argparse", "json"))
        for argv in ([PY, "-c", f"import {modules}"], [PY, "-m", "supervise", "--help"],
                     [PY, "-S", "-c", "import signal, _socket"], *argvs):
            subprocess.run(argv, stdout=subprocess.DEVNULL, env=self.procs.env(), cwd=self.dir, check=True)

    def add(self, figure: str, ours: str, floor: str, versus: str, ok: bool | None) -> None:
        """A row of the table (ok None: information only)."""
        self.rows.append(Row(figure, ours, floor, versus, ok))

    def say(self, text: str) -> None:
        """Print as we go (flushed: a figure shows the moment it is measured)."""
        print(text, flush=True)


B = TypeVar("B", bound=Bench)


def run_selected(b: B, *named: tuple[str, Callable[[B], object]]) -> None:
    """Each of the named figures that --only selected, in this order."""
    for name, bench in named:
        if name in b.args.only:
            bench(b)


def interrupt(signum: int, frame: object) -> None:
    """SIGTERM and SIGHUP clean up like Ctrl-C."""
    raise KeyboardInterrupt


def handle_signals() -> None:
    """Ctrl-C, SIGTERM and SIGHUP all stop the run through KeyboardInterrupt, so that the
    cleanup runs (even when we were started with SIGINT ignored)."""
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, interrupt)
    signal.signal(signal.SIGHUP, interrupt)


def main(name: str, args: argparse.Namespace, body: Callable[[B], object], bench: type[B] = Bench) -> int:
    """Run `body` on a fresh Bench in a fresh work dir; clean up and report (see run_and_report)."""
    handle_signals()
    workdir = Path(tempfile.mkdtemp(prefix=f"sv-{name}-"))
    procs = Processes(None if args.as_is_env else workdir / "pycache")
    b = bench(args, workdir, procs, Inbox(workdir / "hello.sock", procs.saw_pid))
    print(f"supervise {name} benchmarks: {PY} ({b.describe()}), {os.cpu_count()} CPUs, "
          f"load {os.getloadavg()[0]:.2f}, work dir {workdir}", flush=True)
    return run_and_report(b, lambda: body(b))


def run_and_report(b: Bench, body: Callable[[], object]) -> int:
    """Run ``body()``, clean up every process whatever happens, print the table; the exit code:
    0, 1 if a target is missed or a measurement failed, 130 if interrupted."""
    code = 0
    try:
        body()
    except KeyboardInterrupt:
        print("\ninterrupted; cleaning up", file=sys.stderr)
        code = 130
    except (BenchError, subprocess.TimeoutExpired) as exc:
        print(f"\nbenchmark failed: {exc}", file=sys.stderr)
        code = 1
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not cut the cleanup short
        killed = b.procs.cleanup()
        b.inbox.close()
        os.close(b.floor_log)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        if killed:
            print(f"cleanup had to SIGKILL {len(killed)} processes: {killed[:20]}", file=sys.stderr)
        if b.args.keep:
            print(f"work dir kept: {b.dir}")
        else:
            shutil.rmtree(b.dir, ignore_errors=True)
    if b.rows:
        print_table(b.rows)
        print(f"\n(load average at the end: {os.getloadavg()[0]:.2f}; command: "
              f"{shlex.join([Path(PY).name, *sys.argv])})")
    if b.args.json:
        Path(b.args.json).write_text(json.dumps({"rows": [r.__dict__ for r in b.rows], "raw": b.raw}, indent=1))
    if code == 0 and any(r.ok is False for r in b.rows):
        code = 1
    return code


def verdict(ok: bool) -> str:
    """MISS in capitals: the word to find in a long output."""
    return "pass" if ok else "MISS"


def print_table(rows: list[Row]) -> None:
    """The figures in aligned columns, so runs can be compared by eye."""
    cells = [("figure", "ours", "floor", "vs floor (target)", "result")]
    cells += [(r.figure, r.ours, r.floor, r.versus, "" if r.ok is None else verdict(r.ok)) for r in rows]
    widths = [max(len(c[i]) for c in cells) for i in range(5)]
    print()
    for i, c in enumerate(cells):
        print("  ".join(c[j].ljust(widths[j]) for j in range(5)).rstrip())
        if i == 0:
            print("  ".join("-" * w for w in widths))
