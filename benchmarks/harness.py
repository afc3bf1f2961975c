"""What every benchmark needs: the datagram inbox, the processes it started, a daemon.

Nothing here measures a figure; the scripts (foundation.py, health.py,
reload.py, survival.py) do. The rules it keeps: every process a benchmark
starts is recorded (daemons, floor workers, and every pid a worker reports),
and `Processes.cleanup` ends all of them by pid, politely first, SIGKILL as a
last resort, whatever went wrong before. The run itself (common options,
work dir, the table, exit codes) is in `runner.py`.
"""

from __future__ import annotations

import json
import math
import os
import select
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TypeVar

import psutil

HERE = Path(__file__).resolve().parent
# The tests' helpers (wait_until, free_port) and load generator serve here too.
sys.path.insert(0, str(HERE.parent / "tests"))
from helpers import wait_until  # noqa: E402

WORKER = HERE / "bench_worker.py"
PY = sys.executable  # never the `python3` on PATH: a pyenv shim costs ~65 ms per start
MiB = 1024 * 1024
T = TypeVar("T")


def wait_exit(proc: subprocess.Popen, timeout: float) -> int:
    """Popen.wait(timeout), without its polling: that sleeps up to 50 ms between waitpid
    tries, which would add up to 50 ms to every exit timed here. A pidfd is readable the
    moment the process exits. Raises subprocess.TimeoutExpired like Popen.wait."""
    if proc.returncode is not None:
        return proc.returncode
    fd = os.pidfd_open(proc.pid)
    try:
        if not select.select([fd], [], [], max(0.0, timeout))[0]:
            raise subprocess.TimeoutExpired(proc.args, timeout)
    finally:
        os.close(fd)
    return proc.wait()


class BenchError(Exception):
    """The benchmark could not measure what it wanted; the message says why."""


# -- statistics ------------------------------------------------------------------------


def median(values: list[float]) -> float:
    """The figure every script reports: robust to the odd sample a noisy machine spoils."""
    return statistics.median(values)


def p99(values: list[float]) -> float:
    """Nearest-rank 99th percentile (with 100 samples: the second largest)."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(0.99 * len(ordered)) - 1)]


def ms(seconds: float) -> str:
    """Seconds as the milliseconds every table shows."""
    return f"{seconds * 1000:.1f} ms"


def settle(seconds: float) -> None:
    """A pause between steps, so one step's after-effects (exits, reaping, sweeps, memory
    being freed) do not land in the next step's figure. Not synchronization: every wait
    for a result waits on the result itself."""
    time.sleep(seconds)


def wait_for(predicate: Callable[[], T], timeout: float, what: str, interval: float = 0.05) -> T:
    """The tests' wait_until, failing the benchmark (BenchError, so it is reported and
    cleaned up like any failed measurement) rather than raising AssertionError."""
    return wait_until(predicate, timeout, interval, what, error=BenchError)


# -- CPU and memory of a process -------------------------------------------------------


def cpu_seconds(pid: int) -> float:
    """CPU time of all of a process's live threads, in nanosecond resolution where
    /proc/<pid>/task/*/schedstat exists (utime/stime count 10 ms ticks: too coarse
    for 0.1 % over 30 s), else psutil's. A thread that exits between two readings
    takes its time with it: fine for the long-lived daemons and sinks measured here."""
    total, found = 0, False
    try:
        for tid in os.listdir(f"/proc/{pid}/task"):
            try:
                with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                    total += int(f.read().split()[0])
                    found = True
            except (OSError, ValueError, IndexError):
                continue  # the thread exited while we listed them
    except OSError:
        pass  # no /proc/<pid>/task: psutil below
    if found:
        return total / 1e9
    times = psutil.Process(pid).cpu_times()
    return times.user + times.system


def usage(pid: int, until: Callable[[], bool]) -> tuple[float, int]:
    """(CPU % of one core, largest RSS in bytes) of process `pid` from now until `until()` is true.

    `until` does the waiting between samples (up to about a second a call: a
    sleep, or waiting for a helper's line), so RSS is sampled at that pace.
    """
    proc = psutil.Process(pid)
    c0, w0 = cpu_seconds(pid), time.monotonic()
    rss = proc.memory_info().rss
    while not until():
        rss = max(rss, proc.memory_info().rss)
    c1, w1 = cpu_seconds(pid), time.monotonic()
    rss = max(rss, proc.memory_info().rss)
    return max(0.0, (c1 - c0) / (w1 - w0) * 100), rss


def for_seconds(seconds: float) -> Callable[[], bool]:
    """An `until` for `usage`: true once `seconds` have passed, sleeping up to a second a call."""
    end = time.monotonic() + seconds

    def until() -> bool:
        left = end - time.monotonic()
        if left <= 0:
            return True
        time.sleep(min(1.0, left))  # the sampling interval, not synchronization
        return False

    return until


# -- the inbox workers report to ------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Hello:
    """A worker's first datagram: who it is and when (its CLOCK_MONOTONIC) it started."""

    pid: int
    stamp: float
    name: str
    arrived: float


class Inbox:
    """An AF_UNIX SOCK_DGRAM socket the workers send their first datagram to.

    A thread drains it at once (the kernel queues only net.unix.max_dgram_qlen
    datagrams, often 10, and a sender blocks beyond that), so the measured
    stamp, taken by the worker before it sends, is never held up by us.
    """

    _QUIT = b"quit"

    def __init__(self, path: Path, on_pid: Callable[[int], None]) -> None:
        self.path = str(path)
        self._on_pid = on_pid
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 * MiB)
        self._sock.bind(self.path)
        self._cond = threading.Condition()
        self._items: list[Hello] = []
        self._thread = threading.Thread(target=self._run, name="inbox", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            try:
                data = self._sock.recv(512)
            except OSError:
                return
            arrived = time.monotonic()
            if data == self._QUIT:
                return
            try:
                pid, stamp, name = data.decode().split(" ", 2)
                hello = Hello(int(pid), float(stamp), name, arrived)
            except ValueError:
                continue
            self._on_pid(hello.pid)
            with self._cond:
                self._items.append(hello)
                self._cond.notify_all()

    def take(self, count: int, timeout: float, what: str) -> list[Hello]:
        """The next `count` datagrams, in arrival order; BenchError after `timeout` seconds."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while len(self._items) < count:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise BenchError(f"timed out after {timeout:g}s waiting for {what} "
                                     f"({len(self._items)}/{count} workers reported)")
                self._cond.wait(remaining)
            taken, self._items = self._items[:count], self._items[count:]
        return taken

    def clear(self) -> list[Hello]:
        """Drop (and return) what arrived so far: reports of a step that is over."""
        with self._cond:
            taken, self._items = self._items, []
        return taken

    def close(self) -> None:
        if self._thread.is_alive():
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
                try:
                    s.sendto(self._QUIT, self.path)
                except OSError:
                    pass
            self._thread.join(2)
        self._sock.close()


# -- every process we start -----------------------------------------------------------


class Processes:
    """Everything this run started, so that cleanup can end it by pid.

    Every process carries BENCH_MARKER in its environment (workers inherit it
    from the daemon), so a pid is signalled only while it is still ours.
    """

    def __init__(self, pycache: Path | None = None) -> None:
        self.marker = uuid.uuid4().hex
        self.base_env = dict(os.environ)
        if pycache is not None:
            # Bytecode caching on, in a directory of ours: without it (an
            # environment with PYTHONDONTWRITEBYTECODE=1 and no __pycache__ in
            # the source tree) every CLI call and daemon start recompiles supervise.
            self.base_env.pop("PYTHONDONTWRITEBYTECODE", None)
            self.base_env["PYTHONPYCACHEPREFIX"] = str(pycache)
        self.daemons: list[subprocess.Popen] = []
        self.floor: list[subprocess.Popen] = []
        self.worker_pids: set[int] = set()
        self._lock = threading.Lock()

    def env(self, **extra: str) -> dict[str, str]:
        """The environment of every process we start: it carries our marker."""
        return dict(self.base_env, BENCH_MARKER=self.marker, **extra)

    def saw_pid(self, pid: int) -> None:
        """Record a worker's pid (from a report or a status), so cleanup can end it."""
        with self._lock:
            self.worker_pids.add(pid)

    def ours(self, pid: int) -> psutil.Process | None:
        """The process, while it is alive and still carries our marker (a pid may be reused)."""
        try:
            proc = psutil.Process(pid)
            if proc.status() != psutil.STATUS_ZOMBIE and proc.environ().get("BENCH_MARKER") == self.marker:
                return proc
        except psutil.Error:
            pass
        return None

    def leftovers(self, pids: Iterable[int]) -> list[int]:
        """Those of `pids` still running as ours."""
        return [pid for pid in pids if self.ours(pid) is not None]

    def stop_floor(self, procs: list[subprocess.Popen], timeout: float = 10) -> list[int]:
        """SIGTERM floor processes (workers exit 0 at once) and reap them; returns the pids
        that needed a SIGKILL after `timeout` seconds."""
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        killed = []
        deadline = time.monotonic() + timeout
        for p in procs:
            try:
                wait_exit(p, deadline - time.monotonic())
            except subprocess.TimeoutExpired:
                p.kill()
                killed.append(p.pid)
                p.wait()
        done = set(procs)
        self.floor = [p for p in self.floor if p not in done]
        return killed

    def cleanup(self) -> list[int]:
        """End everything still running; returns the pids that needed a SIGKILL."""
        killed = self.stop_floor(list(self.floor), timeout=5)
        for d in self.daemons:
            if d.poll() is not None:
                continue
            try:  # know its workers before it goes, in case it has to be killed
                for child in psutil.Process(d.pid).children(recursive=True):
                    self.saw_pid(child.pid)
            except psutil.Error:
                pass
            d.send_signal(signal.SIGTERM)  # the daemon's drain: it stops its workers
            try:
                d.wait(30)
            except subprocess.TimeoutExpired:
                d.kill()
                killed.append(d.pid)
                d.wait()
        self.daemons = []
        with self._lock:
            pids = set(self.worker_pids)
        # Last resort, for a worker that started but never reported: any process
        # carrying this run's marker (the marker, not a name, so nothing else is hit).
        for proc in psutil.process_iter():
            if proc.pid != os.getpid() and self.ours(proc.pid) is not None:
                pids.add(proc.pid)
        for pid in sorted(pids):
            proc = self.ours(pid)
            if proc is not None:
                try:
                    proc.kill()
                    killed.append(pid)
                except psutil.Error:
                    pass
        return killed


# -- a supervise daemon on a generated config -----------------------------------------


def bench_app(worker_argv: list[str], instances: int, inbox: Inbox, extra: str = "") -> str:
    """The config of one app, `w`: `instances` of the worker, reporting to `inbox`."""
    command = ", ".join(json.dumps(part) for part in worker_argv)
    return ("[apps.w]\n"
            f"command = [{command}]\n"
            f"instances = {instances}\n"
            f"env = {{ BENCH_SOCK = {json.dumps(inbox.path)} }}\n"
            'stop_timeout = "5s"\n'
            + extra)


class Supervised:
    """`supervise run` on a config of ours, in its own directory, driven through the real CLI.

    The CLI is what an operator runs, so what it costs is part of every figure
    that goes through it.
    """

    def __init__(self, root: Path, config: str, procs: Processes, instances: int = 0,
                 python_args: tuple[str, ...] = ()) -> None:
        self.dir = root
        self.dir.mkdir(parents=True, exist_ok=True)
        self.config = root / "supervise.toml"
        self.config.write_text(config)
        self.instances = instances
        self.procs = procs
        self.python_args = python_args
        self.proc: subprocess.Popen | None = None

    def start(self) -> float:
        """Exec the daemon; returns the monotonic time just before the exec."""
        argv = [PY, *self.python_args, "-m", "supervise", "run", "-c", str(self.config)]
        with open(self.dir / "daemon.log", "ab") as log:
            t0 = time.monotonic()
            self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                         cwd=self.dir, env=self.procs.env())
        self.procs.daemons.append(self.proc)
        return t0

    def check_running(self) -> None:
        """BenchError, with the end of its log, if the daemon has exited: no use waiting for it."""
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise BenchError(f"the daemon exited ({self.proc.returncode}):\n{self.log_tail()}")

    def kill(self) -> None:
        """SIGKILL the daemon (its workers live on) and reap it: a daemon crash."""
        assert self.proc is not None
        self.proc.kill()
        self.wait_gone(10)

    def cli_argv(self, *args: str) -> list[str]:
        return [PY, "-m", "supervise", *args, "-c", str(self.config)]

    def cli(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
        return subprocess.run(self.cli_argv(*args), capture_output=True, text=True, cwd=self.dir,
                              env=self.procs.env(), timeout=timeout, check=False)

    def try_status(self) -> list[dict] | None:
        """Every instance from `status --json`; None while the daemon does not answer."""
        result = self.cli("status", "--json")
        return self._instances(result) if result.returncode == 0 else None

    def status(self) -> list[dict]:
        """Every instance from `status --json`; BenchError if the daemon does not answer."""
        result = self.cli("status", "--json")
        if result.returncode != 0:
            raise BenchError(f"status failed ({result.returncode}): {result.stderr.strip()}")
        return self._instances(result)

    @staticmethod
    def _instances(result: subprocess.CompletedProcess) -> list[dict]:
        return [i for app in json.loads(result.stdout)["apps"] for i in app["instances"]]

    def wait_running(self, count: int, timeout: float = 60.0, generation: int | None = None) -> list[dict]:
        """The instances, once `count` are all running (of `generation`, if given); their pids are recorded."""
        def check() -> list[dict] | None:
            self.check_running()
            instances = self.try_status()
            if instances is None or len(instances) != count or not all(
                    i["state"] == "running" and (generation is None or i["generation"] == generation)
                    for i in instances):
                return None
            for i in instances:
                self.procs.saw_pid(i["pid"])
            return instances
        return wait_for(check, timeout, f"{count} instances running")

    def wait_checkpoint(self, count: int, timeout: float = 30.0) -> None:
        """Until the checkpoint names `count` running instances: what a new daemon will adopt."""
        from supervise.runtime import checkpoint  # only the benchmarks that adopt need it

        path = self.dir / ".supervise" / "checkpoint.json"

        def check() -> bool:
            try:
                cp = checkpoint.read(path)
            except checkpoint.CheckpointError:
                return False  # being replaced right now
            return bool(cp) and sum(1 for r in cp.instances if r.pid and r.state == "running") == count

        wait_for(check, timeout, f"the checkpoint to name {count} instances running", interval=0.02)

    def events(self) -> list[dict]:
        """The daemon's event history (`events --no-follow`)."""
        return [json.loads(line) for line in self.cli("events", "--no-follow").stdout.splitlines()]

    def shutdown(self, timeout: float = 60) -> None:
        """`supervise shutdown`, then wait until the daemon is gone."""
        result = self.cli("shutdown", timeout=timeout)
        if result.returncode != 0:
            raise BenchError(f"shutdown failed ({result.returncode}): {result.stderr.strip()}")
        self.wait_gone(timeout)

    def wait_gone(self, timeout: float) -> int:
        """The daemon's exit status, once it has exited (reaped, and no longer ours to clean up)."""
        assert self.proc is not None
        code = wait_exit(self.proc, timeout)
        self.procs.daemons = [d for d in self.procs.daemons if d is not self.proc]
        return code

    def log_times(self) -> list[tuple[float, str]]:
        """(wall-clock time, message) of each line of the daemon's console log; best effort."""
        out = []
        try:
            lines = (self.dir / "daemon.log").read_text(errors="replace").splitlines()
        except OSError:
            return out
        for line in lines:
            stamp, _, rest = line.partition(" ")
            try:
                when = datetime.fromisoformat(stamp.rstrip("Z"))
            except ValueError:
                continue
            if stamp.endswith("Z") or when.tzinfo is not None:
                when = when.replace(tzinfo=when.tzinfo or UTC)
            out.append((when.timestamp(), rest.split("]", 1)[-1].strip()))
        return out

    def log_tail(self, lines: int = 15) -> str:
        """The end of the daemon's log, for an error message."""
        try:
            return "\n".join((self.dir / "daemon.log").read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""
