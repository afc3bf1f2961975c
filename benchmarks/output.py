#!/usr/bin/env python3
"""Output benchmark of supervise: the daemon's CPU per MiB of worker output, and the workers' throughput.

    python benchmarks/output.py                          # ours and the floor, 5 rounds
    python benchmarks/output.py --before /tmp/oldtree    # also the daemon of another checkout
    python benchmarks/output.py --quick                  # a smoke check: 2 rounds of 10 MiB
    python benchmarks/output.py --only lines --rounds 3

Each worker's output goes through a pipe the daemon reads and writes to the
instance's log file (supervise/runtime/output.py). Here `--instances` (4)
workers each write `--mib` (50) MiB as fast as they can, then exit 0, in two
shapes: `lines` (100-byte lines, each `print` flushed: one write(2) a line,
the worst case) and `blocks` (64 KiB writes). Three variants alternate in
every round (their order rotates from round to round):

- `ours`: `python -m supervise run` of this checkout, an app of the workers
  (`restart = "never"`, `log_max_size` from `--log-max-size`, 1G: no rotation
  by default);
- `before`: the same config under the daemon of `--before PATH` (run with
  PYTHONPATH=PATH), e.g. the checkout where workers wrote their log files
  themselves;
- `floor`: the same workers Popen'd by this script, stdout and stderr an
  O_APPEND file each, no daemon at all.

Each worker starts, reports `ready` by datagram (AF_UNIX, like bench_worker.py)
and waits for SIGUSR1; the daemon's CPU (utime+stime of all its threads, from
/proc/<pid>/task/*/schedstat) is read once every worker is ready and the daemon
has settled, then every worker gets SIGUSR1 at once. Each reports `done` with
its own CLOCK_MONOTONIC stamps of its first and last write and its CPU time.
The window closes when the log files hold every byte and the daemon has reaped
every worker; the daemon's CPU is read again. Nothing asks the daemon anything
(no `status`) inside the window. One daemon per variant and round serves both
shapes (two apps; the blocks workers wait while the lines workers write).

Figures, medians over the rounds: daemon CPU ms per MiB written; daemon busy
(% of one core over the window: near 100 % means the daemon is the
bottleneck); the daemon's loop sleeps per MiB (voluntary context switches of
its main thread, each an epoll_wait that found nothing ready: few of them mean
the loop always had output waiting, so each read took many lines); worker
throughput (MiB/s of each worker, first to last write); all workers together
(MiB / (signal -> the last byte in the logs)); worker CPU ms per MiB; daemon +
worker CPU ms per MiB. Ratios are medians of the per-round ratios (each round
is one pairing); for CPU, also the median difference in ms/MiB, which is the
figure to quote: the window's fixed part (reaping the workers) is in both.

With rotation on (`--log-max-size 20M`), a daemon that rotates by copying and
truncating loses what is written in between: when no new byte reaches the logs
for 2 s the run goes on and its line says SHORT. Worker log files are removed
after every run (they are large), even with --keep.
"""

from __future__ import annotations

import os
import signal
import sys
import time

LINE = 100  # bytes, newline included
BLOCK = 64 * 1024


def written(shape: str, total: int) -> int:
    """The bytes a worker of `shape` asked for `total` writes: whole lines or blocks."""
    unit = LINE if shape == "lines" else BLOCK
    return total // unit * unit


def worker(shape: str, total: int) -> None:
    """Say ready, wait for SIGUSR1, write `total` bytes to stdout in `shape`, say done, exit 0.

    Runs as ``python -S output.py --worker SHAPE BYTES``: builtins only, nothing from supervise.
    """
    import _socket

    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR1})  # before `ready`: the go is never lost
    path = os.environ["BENCH_SOCK"]
    sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_DGRAM)
    sock.sendto(f"{os.getpid()} {time.monotonic()!r} ready {shape}".encode(), path)
    signal.sigwait({signal.SIGUSR1})
    c0, t0 = time.process_time(), time.monotonic()
    if shape == "lines":
        line = "x" * (LINE - 1)
        for _ in range(total // LINE):
            print(line, flush=True)
    else:
        block = b"x" * BLOCK
        write = sys.stdout.buffer.write
        for _ in range(total // BLOCK):
            write(block)
        sys.stdout.buffer.flush()
    t1, c1 = time.monotonic(), time.process_time()
    sock.sendto(f"{os.getpid()} {t1!r} done {shape} {t0!r} {c1 - c0!r}".encode(), path)


if __name__ == "__main__" and sys.argv[1:2] == ["--worker"]:
    worker(sys.argv[2], int(sys.argv[3]))
    sys.exit(0)

import argparse  # noqa: E402
import json  # noqa: E402
import shutil  # noqa: E402
import subprocess  # noqa: E402
from dataclasses import asdict, dataclass  # noqa: E402
from pathlib import Path  # noqa: E402

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from harness import (  # noqa: E402
    PY,
    BenchError,
    Hello,
    MiB,
    Processes,
    Supervised,
    cpu_seconds,
    median,
    settle,
    wait_exit,
    wait_for,
)
from runner import Bench, Options, main  # noqa: E402

FIGURES = ("lines", "blocks")
SHAPE_LABEL = {"lines": "100 B lines, flushed", "blocks": "64 KiB blocks"}
THIS = Path(__file__).resolve()
STABLE = 2.0  # seconds without a new byte in the logs: what is missing will not come


@dataclass
class Sample:
    """One shape under one variant in one round."""

    variant: str
    shape: str
    round: int
    mib: float  # written by all workers together
    daemon_cpu: float | None  # seconds over the window; None for the floor
    daemon_cpu_stat: float | None  # the same from /proc/<pid>/stat (10 ms ticks, exited threads too)
    wakeups: int | None  # voluntary context switches of the daemon's main thread (its loop's sleeps)
    window: float  # seconds: SIGUSR1 -> every byte in the logs, every worker reaped
    to_logged: float  # seconds: SIGUSR1 -> every byte in the logs
    worker_rates: list[float]  # MiB/s of each worker, first to last write
    worker_cpu: float  # seconds, all workers together
    logged: int  # bytes in the log files
    expected: int

    @property
    def ms_per_mib(self) -> float | None:
        return None if self.daemon_cpu is None else self.daemon_cpu * 1000 / self.mib

    @property
    def busy(self) -> float | None:
        return None if self.daemon_cpu is None else self.daemon_cpu / self.window * 100

    @property
    def wakeups_per_mib(self) -> float | None:
        return None if self.wakeups is None else self.wakeups / self.mib

    @property
    def worker_rate(self) -> float:
        return median(self.worker_rates)

    @property
    def together(self) -> float:
        return self.mib / self.to_logged

    @property
    def worker_ms_per_mib(self) -> float:
        return self.worker_cpu * 1000 / self.mib

    @property
    def total_ms_per_mib(self) -> float:
        return self.worker_ms_per_mib + (self.ms_per_mib or 0.0)


class Daemon(Supervised):
    """`supervise run` of a given checkout: PYTHONPATH names it, for the daemon and its CLI."""

    def __init__(self, root: Path, config: str, procs: Processes, pythonpath: str) -> None:
        super().__init__(root, config, procs)
        self.pythonpath = pythonpath

    def env(self) -> dict[str, str]:
        return self.procs.env(PYTHONPATH=self.pythonpath)

    def start(self) -> float:
        argv = [PY, "-m", "supervise", "run", "-c", str(self.config)]
        with open(self.dir / "daemon.log", "ab") as log:
            t0 = time.monotonic()
            self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                         cwd=self.dir, env=self.env())
        self.procs.daemons.append(self.proc)
        return t0

    def cli(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
        return subprocess.run(self.cli_argv(*args), capture_output=True, text=True, cwd=self.dir,
                              env=self.env(), timeout=timeout, check=False)


class OutputBench(Bench):
    """A run of the output figures."""

    @property
    def shapes(self) -> list[str]:
        return [s for s in FIGURES if s in self.args.only]

    @property
    def nbytes(self) -> int:
        return int(self.args.mib * MiB)

    def describe(self) -> str:
        return (f"{self.args.instances} workers x {self.args.mib:g} MiB, {self.args.rounds} rounds, "
                f"{super().describe()}")

    def worker_argv(self, shape: str) -> list[str]:
        return [PY, "-S", str(THIS), "--worker", shape, str(self.nbytes)]

    def config(self) -> str:
        parts = ['[supervise]\nstate_dir = "state"\n']
        for shape in self.shapes:
            command = ", ".join(json.dumps(part) for part in self.worker_argv(shape))
            parts.append(f"[apps.{shape}]\n"
                         f"command = [{command}]\n"
                         f"instances = {self.args.instances}\n"
                         'restart = "never"\n'
                         f"env = {{ BENCH_SOCK = {json.dumps(self.inbox.path)} }}\n"
                         f"log_max_size = {json.dumps(self.args.log_max_size)}\n"
                         'stop_timeout = "5s"\n')
        return "\n".join(parts)

    def timeout(self) -> float:
        """For one shape's writes: generous (2 CPUs shared with others write 200 MiB of lines in ~5 s)."""
        return 60 + self.args.instances * self.args.mib


# -- reading a process -----------------------------------------------------------------


def stat_cpu(pid: int) -> float:
    """utime+stime of the whole process from /proc/<pid>/stat (exited threads included; 10 ms ticks)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main_thread_sleeps(pid: int) -> int:
    """Voluntary context switches of the main thread (the event loop's): each one a sleep in epoll_wait
    that found nothing ready (or a blocked write). A loop that always has output waiting never sleeps."""
    with open(f"/proc/{pid}/task/{pid}/status") as f:
        for line in f:
            if line.startswith("voluntary_ctxt_switches:"):
                return int(line.split()[1])
    raise BenchError(f"no voluntary_ctxt_switches in /proc/{pid}/task/{pid}/status")


def log_bytes(paths: list[Path]) -> int:
    """Bytes in the log files and their rotated copies."""
    total = 0
    for path in paths:
        for p in path.parent.glob(path.name + "*"):
            try:
                total += p.stat().st_size
            except FileNotFoundError:
                pass  # rotated away between glob and stat: counted under its new name, or dropped
    return total


def gone(pid: int) -> bool:
    """The process has exited and been reaped (by the daemon)."""
    return not os.path.exists(f"/proc/{pid}")


# -- one measurement ---------------------------------------------------------------------


def measure(b: OutputBench, variant: str, shape: str, rnd: int, readies: list[Hello], logs: list[Path],
            daemon: Daemon | None, reap) -> Sample:
    """SIGUSR1 to the ready workers of `shape`; wait for their bytes in `logs` and their end (`reap`)."""
    k = b.args.instances
    pids = [h.pid for h in readies]
    for pid in pids:
        if b.procs.ours(pid) is None:
            raise BenchError(f"{variant} {shape}: worker {pid} is gone before the start")
    dpid = daemon.proc.pid if daemon is not None else None
    if dpid is not None:
        c0, s0, w0 = cpu_seconds(dpid), stat_cpu(dpid), main_thread_sleeps(dpid)
    t_go = time.monotonic()
    for pid in pids:
        os.kill(pid, signal.SIGUSR1)
    dones = b.inbox.take(k, b.timeout(), f"{variant} {shape} workers done")
    expected = k * written(shape, b.nbytes)

    last = [-1, time.monotonic()]  # size, since when

    def logged() -> bool:
        """Every byte is in the logs; or none came for STABLE seconds (a copytruncate rotation loses
        what is written between its copy and its truncate: the sample shows SHORT)."""
        if daemon is not None:
            daemon.check_running()
        size, now = log_bytes(logs), time.monotonic()
        if size >= expected:
            return True
        if size != last[0]:
            last[:] = [size, now]
        return now - last[1] >= STABLE
    wait_for(logged, 120, f"{variant} {shape}: {expected} bytes in the logs", interval=0.005)
    t_logged = time.monotonic()
    reap(pids)
    t_end = time.monotonic()
    if dpid is not None:
        settle(0.05)  # what the daemon does on the exits (events, state) lands in the window
        c1, s1, w1 = cpu_seconds(dpid), stat_cpu(dpid), main_thread_sleeps(dpid)
    rates, cpu = [], 0.0
    per_worker = written(shape, b.nbytes) / MiB
    for d in dones:
        _, _, t0, used = d.name.split()
        rates.append(per_worker / (d.stamp - float(t0)))
        cpu += float(used)
    return Sample(variant, shape, rnd, k * per_worker,
                  None if dpid is None else c1 - c0, None if dpid is None else s1 - s0,
                  None if dpid is None else w1 - w0,
                  t_end - t_go, t_logged - t_go, rates, cpu, log_bytes(logs), expected)


def take_ready(b: OutputBench, count: int, what: str) -> dict[str, list[Hello]]:
    """The next `count` ready reports, by shape."""
    by_shape: dict[str, list[Hello]] = {s: [] for s in b.shapes}
    for h in b.inbox.take(count, 120, what):
        kind, shape = h.name.split()
        if kind != "ready" or shape not in by_shape:
            raise BenchError(f"unexpected report {h.name!r} from {h.pid} while waiting for {what}")
        by_shape[shape].append(h)
    return by_shape


def run_daemon(b: OutputBench, variant: str, pythonpath: str, rnd: int) -> list[Sample]:
    """One daemon of `pythonpath`'s supervise with both apps; each shape measured in turn."""
    k = b.args.instances
    d = Daemon(b.dir / f"{variant}{rnd}", b.config(), b.procs, pythonpath)
    logs_dir = d.dir / "state" / "logs"
    d.start()
    samples = []
    try:
        readies = take_ready(b, k * len(b.shapes), f"{variant} workers ready")
        d.wait_running(k * len(b.shapes))  # the daemon answers, every spawn is done
        for shape in b.shapes:
            settle(0.3)  # the daemon's after-start work (first samples, status calls) is over
            logs = [logs_dir / f"{shape}.{i}.log" for i in range(k)]

            def reap(pids: list[int]) -> None:
                wait_for(lambda: all(gone(p) for p in pids), 30, f"{variant} workers reaped", interval=0.005)
            samples.append(measure(b, variant, shape, rnd, readies[shape], logs, d, reap))
            say(b, samples[-1])
        d.shutdown()
    finally:
        shutil.rmtree(logs_dir, ignore_errors=True)
    return samples


def run_floor(b: OutputBench, rnd: int) -> list[Sample]:
    """The same workers without a daemon: Popen'd with stdout and stderr an O_APPEND file each."""
    k = b.args.instances
    logs_dir = b.dir / f"floor{rnd}" / "logs"
    logs_dir.mkdir(parents=True)
    samples = []
    try:
        for shape in b.shapes:
            procs = []
            logs = [logs_dir / f"{shape}.{i}.log" for i in range(k)]
            for i, path in enumerate(logs):
                fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o640)
                try:
                    p = subprocess.Popen(b.worker_argv(shape), stdin=subprocess.DEVNULL, stdout=fd, stderr=fd,
                                         env=b.procs.env(BENCH_SOCK=b.inbox.path, SUPERVISE_NAME=f"{shape}:{i}"),
                                         cwd=logs_dir.parent, close_fds=True, start_new_session=True)
                finally:
                    os.close(fd)
                b.procs.floor.append(p)
                procs.append(p)
            readies = take_ready(b, k, "floor workers ready")[shape]
            settle(0.3)  # as for the daemon

            def reap(pids: list[int], procs: list[subprocess.Popen] = procs) -> None:
                for p in procs:
                    if wait_exit(p, 30) != 0:
                        raise BenchError(f"floor worker {p.pid} exited {p.returncode}")
                b.procs.floor = [p for p in b.procs.floor if p not in procs]
            samples.append(measure(b, "floor", shape, rnd, readies, logs, None, reap))
            say(b, samples[-1])
    finally:
        shutil.rmtree(logs_dir, ignore_errors=True)
    return samples


def say(b: OutputBench, s: Sample) -> None:
    daemon = ("no daemon" if s.daemon_cpu is None else
              f"daemon {s.daemon_cpu * 1000:.0f} ms CPU = {s.ms_per_mib:.2f} ms/MiB, busy {s.busy:.0f}%, "
              f"{s.wakeups_per_mib:.1f} sleeps/MiB")
    short = "" if s.logged >= s.expected else f"; SHORT: {s.logged}/{s.expected} bytes"
    extra = "" if s.logged == s.expected else f"; log has {s.logged - s.expected:+d} bytes"
    b.say(f"  round {s.round + 1} {s.variant:<6} {s.shape:<6}: {daemon}; workers {s.worker_rate:.1f} MiB/s each, "
          f"{s.together:.1f} MiB/s together ({s.to_logged:.2f}s to the last byte), "
          f"worker CPU {s.worker_ms_per_mib:.2f} ms/MiB{short or extra}")


# -- the run --------------------------------------------------------------------------------


def which(b: OutputBench, pythonpath: str) -> str:
    """Where `supervise` is imported from with this PYTHONPATH, and whether its daemon pipes output
    (also the bytecode warm-up of that checkout)."""
    code = ("import importlib.util, supervise, supervise.runtime.daemon, supervise.cli; "
            "print(supervise.__file__, importlib.util.find_spec('supervise.runtime.output') is not None)")
    result = subprocess.run([PY, "-c", code], capture_output=True, text=True, cwd=b.dir,
                            env=b.procs.env(PYTHONPATH=pythonpath), check=False, timeout=120)
    if result.returncode != 0:
        raise BenchError(f"cannot import supervise with PYTHONPATH={pythonpath}: {result.stderr.strip()}")
    path, pipes = result.stdout.split()
    return f"{Path(path).parent.parent} ({'output through the daemon' if pipes == 'True' else 'workers write files'})"


def body(b: OutputBench) -> None:
    variants: list[tuple[str, str | None]] = [("ours", str(HERE.parent))]
    if b.args.before:
        variants.append(("before", str(Path(b.args.before).resolve())))
    variants.append(("floor", None))
    for name, path in variants:
        if path is not None:
            b.say(f"{name}: {which(b, path)}")
    b.say(f"log_max_size = {b.args.log_max_size!r}; each round: " + ", ".join(n for n, _ in variants)
          + " (rotated)")
    samples: list[Sample] = []
    for rnd in range(b.args.rounds):
        shift = rnd % len(variants)
        for name, path in variants[shift:] + variants[:shift]:
            samples += run_floor(b, rnd) if path is None else run_daemon(b, name, path, rnd)
            b.raw["samples"] = [dict(asdict(s), ms_per_mib=s.ms_per_mib) for s in samples]
    print_summary(b, samples, [n for n, _ in variants])


# -- the summary --------------------------------------------------------------------------


FIGURES_SHOWN: list[tuple[str, str, str]] = [
    # (title, Sample attribute, format)
    ("daemon CPU per MiB", "ms_per_mib", "{:.2f} ms"),
    ("daemon busy (% of a core)", "busy", "{:.0f}%"),
    ("daemon loop sleeps per MiB", "wakeups_per_mib", "{:.1f}"),
    ("worker MiB/s (each)", "worker_rate", "{:.1f}"),
    ("all workers MiB/s", "together", "{:.1f}"),
    ("worker CPU per MiB", "worker_ms_per_mib", "{:.2f} ms"),
    ("daemon + worker CPU per MiB", "total_ms_per_mib", "{:.2f} ms"),
]


def ratio_text(pairs: list[tuple[float, float]], difference: bool) -> str:
    """The median of the per-round ratios a/b; with the median difference a-b when asked (for CPU)."""
    ratios = [a / c for a, c in pairs if c > 0]
    text = f"x{median(ratios):.2f}" if ratios else "-"
    if difference and pairs:
        text += f" ({median([a - c for a, c in pairs]):+.2f})"
    return text


def print_summary(b: OutputBench, samples: list[Sample], variants: list[str]) -> None:
    """Medians per variant, and ours against before and the floor, paired by round."""
    def value(s: Sample, attr: str) -> float | None:
        return getattr(s, attr)

    others = [v for v in variants if v != "ours"]
    header = ["shape", "figure", *variants, *(f"ours/{v}" for v in others)]
    cells = [header]
    for shape in b.shapes:
        by = {(s.variant, s.round): s for s in samples if s.shape == shape}
        for i, (title, attr, fmt) in enumerate(FIGURES_SHOWN):
            row = [SHAPE_LABEL[shape] if i == 0 else "", title]
            for v in variants:
                vals = [x for s in by.values() if s.variant == v and (x := value(s, attr)) is not None]
                row.append(fmt.format(median(vals)) if vals else "-")
            for v in others:
                pairs = []
                for rnd in range(b.args.rounds):
                    ours, other = by.get(("ours", rnd)), by.get((v, rnd))
                    if ours and other:
                        a, c = value(ours, attr), value(other, attr)
                        if a is not None and c is not None:
                            pairs.append((a, c))
                row.append(ratio_text(pairs, attr.endswith("ms_per_mib")) if pairs else "-")
            cells.append(row)
    widths = [max(len(c[j]) for c in cells) for j in range(len(header))]
    print(f"\nmedians over {b.args.rounds} rounds; {b.args.instances} workers x {b.args.mib:g} MiB each; "
          "ratios: median of the per-round ratios (CPU: and the median difference in ms/MiB)")
    for i, c in enumerate(cells):
        print("  ".join(c[j].ljust(widths[j]) for j in range(len(c))).rstrip())
        if i == 0:
            print("  ".join("-" * w for w in widths))
    print(f"(load average at the end: {os.getloadavg()[0]:.2f}; {os.cpu_count()} CPUs)")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    opts = Options(__doc__, FIGURES)
    opts.number("--rounds", int, 5, 2, "rounds; each runs every variant once")
    opts.number("--instances", int, 4, 4, "workers per shape")
    opts.number("--mib", float, 50, 10, "MiB each worker writes")
    opts.add("--before", metavar="PATH", help="also the daemon of this checkout (PYTHONPATH=PATH)")
    opts.add("--log-max-size", default="1G", metavar="SIZE",
             help='the apps\' log_max_size (default "1G": no rotation; "50M" is supervise\'s default)')
    return opts.parse(argv)


if __name__ == "__main__":
    sys.exit(main("output", parse_args(None), body, OutputBench))
