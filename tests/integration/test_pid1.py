"""`supervise run` as PID 1 of a container: a new pid namespace made by unshare(1).

    unshare --pid --fork --mount-proc python -m supervise run -c CONFIG

The daemon is the namespace's init (its /proc, remounted, shows only the
namespace). Everything is observed from outside: psutil on the host's /proc,
where the namespace's processes appear with host pids, and the CLI, which
reaches the daemon through the ipc socket in the state dir on the shared
filesystem. Two things are special about PID 1 and checked here: every
orphan in the namespace becomes its child, so it must reap them; and the
kernel drops any signal for which it has no handler, so SIGTERM and SIGINT
drain only because the daemon installed handlers.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import uuid
from pathlib import Path

import psutil
import pytest
from helpers import WORKERS, file_text, kill_marked, marked_processes, wait_until, zombie_children

UNSHARE = ("--pid", "--fork", "--mount-proc")


@pytest.fixture(scope="module")
def unshare() -> str:
    """The unshare binary, once proven able to make a pid namespace here. Fails, never skips: CI has it."""
    path = shutil.which("unshare")
    if path is None:
        pytest.fail("unshare(1) is not installed (Debian: apt-get install util-linux); "
                    "the PID 1 tests need it to make a pid namespace")
    probe = subprocess.run([path, *UNSHARE, sys.executable, "-c", "import os; print(os.getpid())"],
                           capture_output=True, text=True, timeout=30)
    if probe.returncode != 0 or probe.stdout.strip() != "1":
        pytest.fail(f"`unshare {' '.join(UNSHARE)}` cannot make a pid namespace here (it needs root or "
                    f"CAP_SYS_ADMIN, and a kernel and seccomp profile that allow CLONE_NEWPID|CLONE_NEWNS): "
                    f"exit {probe.returncode}, stdout {probe.stdout.strip()!r}, stderr {probe.stderr.strip()!r}")
    return path


class Container:
    """A daemon as PID 1 of its own pid namespace, seen and driven from the host."""

    def __init__(self, unshare: str, tmp: Path, config: str) -> None:
        self.unshare_bin = unshare
        self.dir = tmp
        self.config = tmp / "supervise.toml"
        self.config.write_text(textwrap.dedent(config).replace("{python}", sys.executable)
                               .replace("{workers}", str(WORKERS)).replace("{tmp}", str(tmp)))
        self.marker = uuid.uuid4().hex
        self.env = dict(os.environ, SUPERVISE_TEST_MARKER=self.marker, PYTHONUNBUFFERED="1")
        self.log = tmp / "daemon.log"  # stderr: the daemon's own log, and errors
        self.stdout = tmp / "daemon.out"
        self.unshare: subprocess.Popen | None = None
        self.init: psutil.Process | None = None  # the daemon: the namespace's PID 1, by host pid

    def start(self, find_init: bool = True) -> Container:
        """Start unshare and find the daemon (its only child); no waiting for the daemon to answer."""
        with self.log.open("ab") as log, self.stdout.open("ab") as out:
            self.unshare = subprocess.Popen(
                [self.unshare_bin, *UNSHARE, sys.executable, "-m", "supervise", "run", "-c", str(self.config)],
                stdout=out, stderr=log, stdin=subprocess.DEVNULL, env=self.env, cwd=self.dir,
                start_new_session=True,  # its own process group, killed whole in cleanup
            )
        if find_init:
            self.init = wait_until(self._find_init, timeout=10, message="unshare to fork the namespace's init")
        return self

    def _find_init(self) -> psutil.Process | None:
        try:
            children = psutil.Process(self.unshare.pid).children()
        except psutil.NoSuchProcess:
            children = []
        if not children and self.unshare.poll() is not None:
            raise AssertionError(f"unshare exited {self.unshare.returncode} before forking:\n{self.output()}")
        return children[0] if children else None

    def wait_answering(self) -> None:
        wait_until(lambda: self.unshare.poll() is not None or self.cli("status").returncode == 0,
                   timeout=15, message="the daemon to answer `status`")
        assert self.unshare.poll() is None, f"the daemon exited early:\n{self.output()}"

    def exit_status(self, timeout: float = 15) -> int:
        """unshare's exit status, which is the daemon's (unshare --fork passes it on)."""
        try:
            return self.unshare.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"the daemon (PID 1) still runs after {timeout}s:\n{self.output()}") from None

    def output(self) -> str:
        """What the daemon (and unshare) wrote to stderr."""
        return self.log.read_text(errors="replace")

    def nspid(self, proc: psutil.Process) -> list[int]:
        """NSpid of a process: its pid in each pid namespace, outermost first."""
        for line in Path(f"/proc/{proc.pid}/status").read_text().splitlines():
            if line.startswith("NSpid:"):
                return [int(p) for p in line.split()[1:]]
        raise AssertionError(f"no NSpid line for {proc.pid}")

    def cli(self, *args: str, timeout: float = 30) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "supervise", *args, "-c", str(self.config)],
                              capture_output=True, text=True, env=self.env, cwd=self.dir, timeout=timeout)

    def status(self) -> dict[str, dict]:
        result = self.cli("status", "--json")
        assert result.returncode == 0, f"status from the host failed ({result.returncode}): {result.stderr}"
        return {i["name"]: i for app in json.loads(result.stdout)["apps"] for i in app["instances"]}

    def wait_running(self, names: list[str]) -> dict[str, dict]:
        def check():
            status = self.status()
            return all(status.get(n, {}).get("state") == "running" for n in names) and status
        return wait_until(check, timeout=15, interval=0.02, message=f"{names} running")

    def zombie_children(self) -> list[int]:
        """Host pids of the daemon's children that have exited and not been reaped."""
        return zombie_children(self.init)

    def cleanup(self) -> list[int]:
        """Kill whatever is left, however the test ended; returns the pids that were left."""
        if self.unshare is None:
            return []
        if self.init is None:
            try:
                self.init = self._find_init()
            except AssertionError:
                pass
        if self.init is not None:
            try:  # the same process still (create time checked)? SIGKILL of a namespace's init kills it all
                self.init.send_signal(signal.SIGKILL)
            except psutil.NoSuchProcess:
                pass
        try:  # unshare reaps the init and exits with its status; else it goes with its process group
            self.unshare.wait(5 if self.init is not None else 0)
        except subprocess.TimeoutExpired:
            try:
                os.killpg(self.unshare.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.unshare.wait(30)
        try:  # the kernel kills the rest of a namespace when its init dies, but not in the same instant
            wait_until(lambda: not marked_processes(self.marker), timeout=5)
            return []
        except AssertionError:
            return kill_marked(self.marker)


@pytest.fixture
def container(unshare, tmp_path):
    """Factory: ``container(config_text)`` gives a started daemon as PID 1; all is killed after."""
    made: list[Container] = []

    def make(config: str, find_init: bool = True) -> Container:
        box = Container(unshare, tmp_path, config)
        made.append(box)
        return box.start(find_init)

    yield make
    leaked = [pid for box in made for pid in box.cleanup()]
    assert not leaked, f"processes left behind after the test: {leaked}"


def test_daemon_is_pid_1_and_reaps_orphaned_zombies(container, tmp_path):
    report = tmp_path / "orphans.json"
    box = container(f"""
    [apps.orphans]
    command = ["{{python}}", "{{workers}}/pid1_orphans.py", "{report}", "5", "20"]
    stop_timeout = "5s"

    [apps.idle]
    command = ["{{python}}", "{{workers}}/pid1_drain.py", "{tmp_path / 'idle.txt'}"]
    stop_timeout = "5s"
    """)
    assert box.nspid(box.init) == [box.init.pid, 1], "the daemon is not PID 1 of a child pid namespace"
    box.wait_answering()

    done = json.loads(file_text(report, timeout=15))  # the worker made 100 orphans and saw them exit
    assert done["orphans"] == 100
    # Inside the namespace, their parent was the daemon, as PID 1: nothing else reaps them.
    assert done["orphan_ppids"] == [1] and done["ppid"] == 1, done
    wait_until(lambda: not box.zombie_children(), timeout=5,
               message="the daemon (PID 1) to reap every orphaned zombie")

    # The CLI on the host talks to this daemon; it reports pids as the namespace sees them.
    status = box.wait_running(["orphans:0", "idle:0"])
    inner = {box.nspid(c)[-1]: c.pid for c in box.init.children()}
    assert status["orphans:0"]["pid"] == done["pid"] and done["pid"] in inner
    assert status["idle:0"]["pid"] in inner
    assert set(inner) == {status["orphans:0"]["pid"], status["idle:0"]["pid"]}  # nothing else is left
    assert json.loads(box.cli("status", "--json").stdout)["daemon"]["pid"] == 1


@pytest.mark.parametrize("how", ["SIGTERM", "SIGINT", "shutdown"])
def test_drain_stops_every_worker_and_exits_zero(container, tmp_path, how):
    notes = tmp_path / "notes.txt"
    box = container(f"""
    [supervise]
    log_format = "json"

    [apps.drain]
    command = ["{{python}}", "{{workers}}/pid1_drain.py", "{notes}"]
    instances = 3
    stop_timeout = "5s"
    """)
    box.wait_answering()
    names = [f"drain:{i}" for i in range(3)]
    status = box.wait_running(names)
    wait_until(lambda: notes.exists() and notes.read_text().count("up ") == 3, message="3 workers up")
    workers = {box.nspid(c)[-1]: c for c in box.init.children()}
    assert sorted(workers) == sorted(status[n]["pid"] for n in names)

    if how == "shutdown":
        result = box.cli("shutdown")
        assert result.returncode == 0, f"shutdown from the host: {result.returncode} {result.stderr}"
    else:  # PID 1 gets only the signals it has handlers for: this proves they are installed
        box.init.send_signal(getattr(signal, how))
    assert box.exit_status() == 0, box.output()

    lines = notes.read_text().splitlines()
    stopped = sorted(line.split()[1] for line in lines if line.startswith("term "))
    assert stopped == names, f"not every worker got its stop signal and exited by itself: {lines}"
    records = [json.loads(line) for line in box.output().splitlines() if line.strip()]
    exits = {r["event"].split()[0]: r["exit"] for r in records if r["event"].endswith("stopping -> stopped")}
    assert exits == {name: {"reason": "stopped", "code": 0, "signal": None} for name in names}, records
    events = [r["event"] for r in records]
    assert "daemon stopped" in events and "killed leftover descendants" not in events, events
    for proc in workers.values():
        assert not proc.is_running()
    assert box.cli("status").returncode == 3  # the CLI on the host knows there is no daemon now


def test_invalid_config_exits_2_with_file_and_line(container):
    box = container("""
    [apps.bad]
    command = ["{python}", "{workers}/pid1_drain.py", "/dev/null"]
    instnces = 2
    """, find_init=False)
    assert box.exit_status() == 2, box.output()
    err = box.output()
    assert f"{box.config}:4: apps.bad.instnces: unknown key" in err, err
    assert 'did you mean "instances"' in err, err
    assert box.stdout.read_text() == ""
