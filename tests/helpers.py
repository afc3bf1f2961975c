"""Shared test helpers: waiting on conditions, and a real daemon in a temp dir."""

from __future__ import annotations

import json
import os
import random
import re
import signal
import socket
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import psutil

WORKERS = Path(__file__).parent / "integration" / "workers"

T = TypeVar("T")


CI_ENV = "SUPERVISE_CI"
"""Set by .ci/run, which installs every tool the tests need: there, a missing one fails its tests."""


def external_tool(*names: str, why: str) -> str:
    """The path of the first of `names` on PATH (etcd, chromium, promtool: not pip's to install).

    Missing, its tests fail under .ci/run (which installs it) and are skipped elsewhere, saying what
    to install: the README's test command must run on a machine with nothing but Python and pip.
    """
    import shutil

    import pytest

    for name in names:
        path = shutil.which(name)
        if path is not None:
            return path
    message = f"{names[0]} is not installed ({why})"
    if os.environ.get(CI_ENV):
        pytest.fail(message + ": .ci/run should have installed it")
    pytest.skip(message)
    raise AssertionError("unreachable")  # pytest.skip raises


class _PortPicker:
    """Hands out loopback ports that were free a moment ago, never the same one twice in a run.

    ``bind(0)`` draws from the kernel's ephemeral range, so two calls can return
    the same port once the first probe socket is closed (CI once started an etcd
    cluster whose members shared a peer port), and any outgoing connection may
    take the port before the test binds it. So ports come from below the
    ephemeral range, in order from a random start, and each is checked free.
    """

    def __init__(self) -> None:
        low = 32768
        try:
            low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            pass
        self.low = 10000 if low > 20000 else 1024
        self.high = low - 1 if low > 20000 else 65535
        self.next = random.randint(self.low, self.high)
        self.given: set[int] = set()

    def __call__(self, count: int = 1) -> int:
        """The first of ``count`` consecutive free ports (instances use port + index)."""
        for _ in range(self.high - self.low + 1):
            base = self.next
            self.next = base + 1 if base + count <= self.high else self.low
            run = range(base, base + count)
            if base + count - 1 > self.high or any(p in self.given or not self._bindable(p) for p in run):
                continue
            self.given.update(run)
            self.next = base + count if base + count <= self.high else self.low
            return base
        raise RuntimeError(f"no run of {count} free loopback ports left")

    @staticmethod
    def _bindable(port: int) -> bool:
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                return False
        return True


free_port = _PortPicker()


def wait_until(predicate: Callable[[], T], timeout: float = 10.0, interval: float = 0.01, message: str = "",
               error: type[BaseException] = AssertionError) -> T:
    """Poll ``predicate`` until it returns something truthy, and return that.

    A test waits for a condition, never for a fixed time: a sleep long enough
    for a loaded CI machine wastes time everywhere else, and a shorter one is
    flaky. After ``timeout`` seconds it raises ``error`` (AssertionError, so
    that pytest reports a failure; a script run as its own process may want
    SystemExit, a benchmark its own error) naming ``message`` or the predicate.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise error(f"timed out after {timeout:g}s waiting for {message or predicate}")
        time.sleep(interval)


def file_text(path: Path, timeout: float = 10.0) -> str:
    """The text of `path` (stripped) once it exists and says something.

    For what another process writes some time after it starts (a worker's
    first output, a pid file, a report): absent, or still empty, means "not yet".
    """
    def text() -> str:
        try:
            return path.read_text().strip()
        except FileNotFoundError:
            return ""
    return wait_until(text, timeout, message=f"{path} to have content")


def gone(pid: int) -> bool:
    """No such process, or only its zombie. (pid_exists then Process(pid) races with the exit.)"""
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def zombie_children(proc: psutil.Process) -> list[int]:
    """Pids of `proc`'s children that have exited and not been reaped (ignoring any reaped meanwhile)."""
    zombies = []
    for child in proc.children():
        try:
            if child.status() == psutil.STATUS_ZOMBIE:
                zombies.append(child.pid)
        except psutil.NoSuchProcess:
            continue
    return zombies


def marked_processes(marker: str) -> list[psutil.Process]:
    """Every live process whose environment carries this test's marker."""
    found = []
    for proc in psutil.process_iter():
        try:
            if proc.environ().get("SUPERVISE_TEST_MARKER") == marker and proc.status() != psutil.STATUS_ZOMBIE:
                found.append(proc)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    return found


def kill_marked(marker: str) -> list[int]:
    """SIGKILL every live process carrying `marker`; returns their pids (what a test left behind)."""
    leftovers = marked_processes(marker)
    for proc in leftovers:
        try:
            proc.kill()
        except psutil.NoSuchProcess:
            pass
    return [p.pid for p in leftovers]


_APP_TABLE = re.compile(r"^\[apps\.([A-Za-z0-9_.-]+?)\]\s*$")


def settled_at_once(text: str) -> str:
    """The config with ``ready_after = 0`` in each app table that says nothing of readiness.

    The default ready_after (1 s: an app with readiness = "none" is `starting` that long) would add
    a second to every start and restart the tests wait for. Tests of what it does write it (or a
    readiness) in their config; the rest mean "running once spawned", as before it existed.
    Only the tables of this text (not subtables like [apps.web.backoff], not included files).
    """
    lines = text.split("\n")
    headers = [i for i, line in enumerate(lines) if line.strip().startswith("[")]
    ends = []  # where to add the line: after each such table's last line, so no line above it moves
    for n, i in enumerate(headers):
        if not _APP_TABLE.match(lines[i].strip()) or lines[i].strip().count(".") != 1:
            continue
        end = headers[n + 1] if n + 1 < len(headers) else len(lines)
        if not re.search(r"^\s*(ready_after|readiness)\s*=", "\n".join(lines[i + 1:end]), flags=re.M):
            ends.append(end)
    out = list(lines)
    for end in reversed(ends):
        out.insert(end, "ready_after = 0")
    return "\n".join(out)


class Supervisor:
    """A daemon on a config in a temp dir, driven through the real CLI."""

    def __init__(self, tmp: Path, config: str) -> None:
        self.dir = tmp
        self.config = tmp / "supervise.toml"
        self.config.write_text(settled_at_once(textwrap.dedent(config).replace("{python}", sys.executable)
                                               .replace("{workers}", str(WORKERS))))
        self.marker = uuid.uuid4().hex
        self.env = dict(os.environ, SUPERVISE_TEST_MARKER=self.marker, PYTHONUNBUFFERED="1")
        self.proc: subprocess.Popen | None = None
        self.log = tmp / "daemon.log"

    def start(self, wait: bool = True) -> Supervisor:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "supervise", "run", "-c", str(self.config)],
            stdout=self.log.open("ab"), stderr=subprocess.STDOUT, env=self.env, cwd=self.dir,
        )
        if wait:
            wait_until(lambda: self.cli("status").returncode == 0 or self.proc.poll() is not None,
                       timeout=15, message="the daemon to answer")
            assert self.proc.poll() is None, f"daemon exited early:\n{self.log.read_text()}"
        return self

    def cli(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "supervise", *args, "-c", str(self.config)],
            capture_output=True, text=True, env=self.env, cwd=self.dir, timeout=timeout,
        )

    def status(self, *targets: str) -> dict[str, dict]:
        """Instances by name, from `status --json`."""
        result = self.cli("status", "--json", *targets)
        assert result.returncode == 0, result.stderr
        data = json.loads(result.stdout)
        return {inst["name"]: inst for app in data["apps"] for inst in app["instances"]}

    def wait_all_running(self, count: int | None = None, *targets: str, timeout: float = 30.0) -> dict[str, dict]:
        """Instances by name (of `targets`, or all), once every one is running and, given
        `count`, there are that many: the steady state a test starts from or returns to."""
        def check() -> dict[str, dict] | None:
            status = self.status(*targets)
            if (count is None or len(status) == count) and all(i["state"] == "running" for i in status.values()):
                return status
            return None
        what = " ".join(targets) or "every app"
        return wait_until(check, timeout, interval=0.05, message=f"{count or 'all'} instances of {what} running")

    def wait_state(self, name: str, state: str, timeout: float = 10.0, **conditions) -> dict:
        def check():
            inst = self.status().get(name)
            if inst and inst["state"] == state and all(inst.get(k) == v for k, v in conditions.items()):
                return inst
            return None
        return wait_until(check, timeout, interval=0.02, message=f"{name} to be {state} {conditions}")

    def stop_daemon(self, timeout: float = 30.0) -> int:
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else 0
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)

    def cleanup(self) -> list[int]:
        """Stop the daemon and kill anything it left; returns the pids that were left."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return kill_marked(self.marker)
