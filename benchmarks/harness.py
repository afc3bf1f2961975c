"""What every benchmark needs: the datagram inbox, the processes it started, a daemon.

Nothing here measures anything; `foundation.py` does. The rules it keeps:
every process it starts is recorded (daemons, floor workers, and every pid a
worker reports), and `Processes.cleanup` ends all of them by pid, politely
first, SIGKILL as a last resort, whatever went wrong before.
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
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import psutil

HERE = Path(__file__).resolve().parent
WORKER = HERE / "bench_worker.py"
PY = sys.executable  # never the `python3` on PATH: a pyenv shim costs ~65 ms per start
MiB = 1024 * 1024


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
    return statistics.median(values)


def p99(values: list[float]) -> float:
    """Nearest-rank 99th percentile (with 100 samples: the second largest)."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(0.99 * len(ordered)) - 1)]


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f} ms"


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

    def __init__(self, path: Path, on_pid) -> None:
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
        return dict(self.base_env, BENCH_MARKER=self.marker, **extra)

    def saw_pid(self, pid: int) -> None:
        with self._lock:
            self.worker_pids.add(pid)

    def ours(self, pid: int) -> psutil.Process | None:
        try:
            proc = psutil.Process(pid)
            if proc.status() != psutil.STATUS_ZOMBIE and proc.environ().get("BENCH_MARKER") == self.marker:
                return proc
        except psutil.Error:
            pass
        return None

    def leftovers(self, pids) -> list[int]:
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


class Supervised:
    """`supervise run` on a config of one app, `w`, of `instances` bench workers."""

    def __init__(self, root: Path, instances: int, procs: Processes, inbox: Inbox,
                 worker_argv: list[str], extra: str = "", python_args: tuple[str, ...] = ()) -> None:
        self.dir = root
        self.dir.mkdir(parents=True, exist_ok=True)
        self.config = root / "supervise.toml"
        self.instances = instances
        self.procs = procs
        self.python_args = python_args
        self.proc: subprocess.Popen | None = None
        command = ", ".join(json.dumps(part) for part in worker_argv)
        self.config.write_text(
            "[apps.w]\n"
            f"command = [{command}]\n"
            f"instances = {instances}\n"
            f"env = {{ BENCH_SOCK = {json.dumps(inbox.path)} }}\n"
            'stop_timeout = "5s"\n'
            + extra
        )

    def start(self) -> float:
        """Exec the daemon; returns the monotonic time just before the exec."""
        argv = [PY, *self.python_args, "-m", "supervise", "run", "-c", str(self.config)]
        with open(self.dir / "daemon.log", "ab") as log:
            t0 = time.monotonic()
            self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                         cwd=self.dir, env=self.procs.env())
        self.procs.daemons.append(self.proc)
        return t0

    def cli_argv(self, *args: str) -> list[str]:
        return [PY, "-m", "supervise", *args, "-c", str(self.config)]

    def cli(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
        return subprocess.run(self.cli_argv(*args), capture_output=True, text=True, cwd=self.dir,
                              env=self.procs.env(), timeout=timeout, check=False)

    def status(self) -> list[dict]:
        result = self.cli("status", "--json")
        if result.returncode != 0:
            raise BenchError(f"status failed ({result.returncode}): {result.stderr.strip()}")
        return [i for app in json.loads(result.stdout)["apps"] for i in app["instances"]]

    def shutdown(self, timeout: float = 60) -> None:
        result = self.cli("shutdown", timeout=timeout)
        if result.returncode != 0:
            raise BenchError(f"shutdown failed ({result.returncode}): {result.stderr.strip()}")
        self.wait_gone(timeout)

    def wait_gone(self, timeout: float) -> int:
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
        try:
            return "\n".join((self.dir / "daemon.log").read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


# -- the table and the run's end, shared by every benchmark script ---------------------


@dataclass
class Row:
    figure: str
    ours: str
    floor: str
    versus: str  # the comparison with the floor, and the target
    ok: bool | None  # None: information only


def verdict(ok: bool) -> str:
    return "pass" if ok else "MISS"


def print_table(rows: list[Row]) -> None:
    cells = [("figure", "ours", "floor", "vs floor (target)", "result")]
    cells += [(r.figure, r.ours, r.floor, r.versus, "" if r.ok is None else verdict(r.ok)) for r in rows]
    widths = [max(len(c[i]) for c in cells) for i in range(5)]
    print()
    for i, c in enumerate(cells):
        print("  ".join(c[j].ljust(widths[j]) for j in range(5)).rstrip())
        if i == 0:
            print("  ".join("-" * w for w in widths))


def interrupt(signum, frame):
    raise KeyboardInterrupt  # SIGTERM/SIGHUP clean up like Ctrl-C


def run_and_report(b, body, workdir: Path, keep: bool, json_path: str | None) -> int:
    """Run ``body()``, clean up every process whatever happens, print the table; the exit code.

    ``b`` has ``procs``, ``inbox``, ``floor_log``, ``rows`` and ``raw``.
    """
    import shlex
    import shutil

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
        if keep:
            print(f"work dir kept: {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    if b.rows:
        print_table(b.rows)
        print(f"\n(load average at the end: {os.getloadavg()[0]:.2f}; command: "
              f"{shlex.join([Path(PY).name, *sys.argv])})")
    if json_path:
        Path(json_path).write_text(json.dumps({"rows": [r.__dict__ for r in b.rows], "raw": b.raw}, indent=1))
    if code == 0 and any(r.ok is False for r in b.rows):
        code = 1
    return code
