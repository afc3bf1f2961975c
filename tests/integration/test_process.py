"""supervise.runtime.process and supervise.logfiles against real processes, files and cgroups.

Scenarios that need a child subreaper run in a helper process
(fixtures/proc_subreaper_scenario.py): making pytest itself a subreaper would
turn every orphan of every other test into a zombie of pytest.
"""

from __future__ import annotations

import dataclasses
import gc
import json
import os
import select
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import helpers
import psutil
import pytest

from supervise.control import logs
from supervise.runtime import adoption, checkpoint, killing, logfiles, process
from supervise.runtime import cgroups as cgroups_module
from supervise.runtime.process import Cgroups, Child, SpawnError, SpawnSpec

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = Path(__file__).parent / "fixtures"
DOUBLE_FORK = FIXTURES / "proc_double_fork.py"
SCENARIO = FIXTURES / "proc_subreaper_scenario.py"
TIMEOUT = 10.0
PAUSE = "import signal\nwhile True: signal.pause()"

T = TypeVar("T")


def wait_until(predicate: Callable[[], T], timeout: float = TIMEOUT) -> T:
    """The tests' wait_until, at this file's pace (5 ms: it times process exits)."""
    return helpers.wait_until(predicate, timeout, interval=0.005)


def alive(pid: int, create_time: float | None = None) -> bool:
    """Running (a zombie is dead) and, with create_time, the same process."""
    try:
        proc = psutil.Process(pid)
        if create_time is not None and abs(proc.create_time() - create_time) >= process.START_TOLERANCE:
            return False
        return proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


class Procs:
    """Spawns workers and guarantees they (and any pids noted) are gone after the test."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.known: list[tuple[int, float | None]] = []
        self.children: list[Child] = []
        self.reaped: dict[int, tuple[int | None, int | None]] = {}

    def spawn(self, *argv: str, env: dict[str, str] | None = None, cwd: Path | None = None,
              cgroups: Cgroups | None = None, name: str = "test:0", log: Path | None = None,
              pass_fds: tuple[int, ...] = ()) -> Child:
        spec = SpawnSpec(argv=argv, cwd=cwd or self.tmp, env=env if env is not None else dict(os.environ),
                         output=log or self.tmp / "logs" / "test.log", name=name, pass_fds=pass_fds)
        child = process.spawn(spec, cgroups)
        self.children.append(child)
        self.note(child.pid, child.create_time)
        return child

    def python(self, code: str, **kwargs) -> Child:
        return self.spawn(sys.executable, "-c", code, **kwargs)

    def note(self, pid: int, create_time: float | None = None) -> None:
        if create_time is None:
            try:
                create_time = psutil.Process(pid).create_time()
            except psutil.Error:
                return
        self.known.append((pid, create_time))

    def reap_until(self, pid: int) -> tuple[int | None, int | None]:
        def done() -> bool:
            self.reaped.update((p, (code, sig)) for p, code, sig in process.reap())
            return pid in self.reaped
        wait_until(done)
        return self.reaped[pid]

    def wait_exit(self, child: Child) -> tuple[int | None, int | None]:
        assert child.pidfd is not None
        readable, _, _ = select.select([child.pidfd], [], [], TIMEOUT)
        assert readable, "pidfd did not become readable"
        return self.reap_until(child.pid)

    def cleanup(self) -> None:
        for pid, create_time in self.known:
            if alive(pid, create_time):
                os.kill(pid, signal.SIGKILL)
        for child in self.children:
            try:
                os.waitpid(child.pid, 0)  # only our direct children; SIGKILLed above
            except ChildProcessError:
                pass  # already reaped by the test
            if child.pidfd is not None:
                os.close(child.pidfd)
        wait_until(lambda: not any(alive(pid, ct) for pid, ct in self.known))


@pytest.fixture
def procs(tmp_path: Path) -> Iterator[Procs]:
    tracker = Procs(tmp_path)
    try:
        yield tracker
    finally:
        tracker.cleanup()


@pytest.fixture
def cgroups() -> Iterator[Cgroups]:
    found = Cgroups.detect(f"test-{os.getpid()}")
    if found is None:
        pytest.skip("no writable cgroup2 hierarchy here (Cgroups.detect() returned None)")
    try:
        yield found
    finally:
        found.close()


def run_scenario(mode: str, workdir: Path) -> dict:
    """Run a subreaper scenario in its own process; kill whatever it leaves behind."""
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    try:
        out = subprocess.run([sys.executable, str(SCENARIO), mode, str(workdir)], env=env,
                             capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        return json.loads(out.stdout)
    finally:
        for pidfile in workdir.glob("*.pid"):
            pid = int(pidfile.read_text())
            try:
                proc = psutil.Process(pid)
                if str(DOUBLE_FORK) in proc.cmdline():  # never a reused pid
                    proc.kill()
            except (psutil.Error, ValueError):
                pass


# -- spawn ------------------------------------------------------------------------------


def test_spawn_appends_stdout_and_stderr_to_one_log_file(procs: Procs, tmp_path: Path) -> None:
    log = tmp_path / "deep" / "dir" / "web-0.log"
    code = "import sys\nprint('to stdout', flush=True)\nprint('to stderr', file=sys.stderr, flush=True)"
    for _ in range(2):
        assert procs.wait_exit(procs.python(code, log=log)) == (0, None)
    assert log.read_text().splitlines() == ["to stdout", "to stderr"] * 2


def test_spawn_applies_env_and_cwd(procs: Procs, tmp_path: Path) -> None:
    workdir = tmp_path / "work"
    workdir.mkdir()
    code = "import os\nprint(os.getcwd(), os.environ['SUPERVISE_NAME'], os.environ.get('ONLY_HERE'))"
    env = {"PATH": os.environ["PATH"], "SUPERVISE_NAME": "web:0"}
    child = procs.python(code, env=env, cwd=workdir)
    procs.wait_exit(child)
    assert (tmp_path / "logs" / "test.log").read_text().split() == [str(workdir), "web:0", "None"]


def test_spawn_gives_each_worker_its_own_session_and_devnull_stdin(procs: Procs) -> None:
    child = procs.python("import sys\nprint(repr(sys.stdin.read()), flush=True)\n" + PAUSE)
    assert os.getsid(child.pid) == child.pid
    assert os.getpgid(child.pid) == child.pid
    wait_until(lambda: (procs.tmp / "logs" / "test.log").read_text() == "''\n")


def test_spawn_passes_listed_fds_only(procs: Procs) -> None:
    r, w = os.pipe()
    try:
        child = procs.python(f"import os\nos.write({w}, b'hello')", pass_fds=(w,))
        assert procs.wait_exit(child) == (0, None)
        os.close(w)
        assert os.read(r, 100) == b"hello"
    finally:
        os.close(r)
        try:
            os.close(w)
        except OSError:
            pass


def test_spawn_of_missing_command_names_it(procs: Procs) -> None:
    with pytest.raises(SpawnError, match=r"command not found: 'pythn-does-not-exist' \(cwd .*, PATH "):
        procs.spawn("pythn-does-not-exist", "-V")


def test_spawn_of_missing_cwd_says_so(procs: Procs, tmp_path: Path) -> None:
    with pytest.raises(SpawnError, match="cwd does not exist: .*nowhere"):
        procs.spawn(sys.executable, "-V", cwd=tmp_path / "nowhere")


def test_spawn_of_non_executable_file_says_permission_denied(procs: Procs, tmp_path: Path) -> None:
    script = tmp_path / "run.sh"
    script.write_text("#!/bin/sh\necho hi\n")
    script.chmod(0o644)
    with pytest.raises(SpawnError, match=r"permission denied: .*run\.sh.*chmod \+x"):
        procs.spawn("./run.sh")


def test_spawn_of_script_with_missing_interpreter_points_at_shebang(procs: Procs, tmp_path: Path) -> None:
    script = tmp_path / "run.sh"
    script.write_text("#!/no/such/interpreter\n")
    script.chmod(0o755)
    with pytest.raises(SpawnError, match=r"interpreter not found for .*run\.sh \(check its #! line\)"):
        procs.spawn("./run.sh")


def test_spawn_with_nul_byte_in_argv_is_a_spawn_error(procs: Procs) -> None:
    with pytest.raises(SpawnError, match="invalid command or environment for test:0: embedded null byte"):
        procs.spawn(sys.executable, "-c", "pass\0")


def test_spawn_computes_the_start_time_psutil_reads(procs: Procs) -> None:
    # The daemon identifies its workers by start time without reading /proc
    # at spawn; the computed value must agree with what the kernel recorded.
    children = [procs.spawn("sleep", "30") for _ in range(40)]
    for child in children:
        assert abs(psutil.Process(child.pid).create_time() - child.create_time) < process.START_TOLERANCE


def test_a_spawn_slower_than_a_tick_reads_its_start_time(procs: Procs) -> None:
    # Descheduled between the clock reading and the fork (500 workers starting on 2 cores
    # did it, by 60 ms), a computed start time would be early by that much, and an adopting
    # daemon would take the live worker for a stranger. Past one tick, the value is read.
    child = procs.spawn("sleep", "30")
    real = psutil.Process(child.pid).create_time()
    now = time.clock_gettime(time.CLOCK_BOOTTIME)
    assert process._start_time(child.pid, now - 1.0, now) == real  # a second between: read, exact
    computed = process._start_time(child.pid, now - 1.0, now - 1.0 + 0.001)  # within a tick: computed
    assert abs(computed - (real - 1.0)) < process.START_TOLERANCE


def test_a_start_time_read_from_proc_survives_a_command_name_with_parentheses(procs: Procs, tmp_path: Path) -> None:
    # Read without psutil (whose import a daemon otherwise never needs): the name in /proc/<pid>/stat is
    # "(...)" and may itself hold ") (", so the fields are counted from the last parenthesis.
    odd = tmp_path / "a) b (c"
    shutil.copy(shutil.which("sleep") or "/bin/sleep", odd)
    child = procs.spawn(str(odd), "30")
    now = time.clock_gettime(time.CLOCK_BOOTTIME)
    assert process._start_time(child.pid, now - 1.0, now) == psutil.Process(child.pid).create_time()


def test_spawned_child_is_never_reaped_by_subprocess(procs: Procs) -> None:
    # The Popen object inside spawn() is garbage; a later Popen must not reap our worker.
    child = procs.python("raise SystemExit(5)")
    readable, _, _ = select.select([child.pidfd], [], [], TIMEOUT)
    assert readable
    gc.collect()
    subprocess.run([sys.executable, "-c", "pass"], check=True)
    assert procs.reap_until(child.pid) == (5, None)


# -- exit detection and reaping ----------------------------------------------------------


def test_reap_decodes_exit_code(procs: Procs) -> None:
    assert procs.wait_exit(procs.python("raise SystemExit(3)")) == (3, None)


def test_reap_decodes_signal(procs: Procs) -> None:
    child = procs.python(PAUSE)
    assert process.send_signal(child.pid, signal.SIGKILL)
    assert procs.wait_exit(child) == (None, signal.SIGKILL)
    assert not process.send_signal(child.pid, 0)  # reaped: gone


def test_reap_without_children_returns_empty_list() -> None:
    # In a fresh process: pytest may have children of other tests to reap.
    code = "from supervise.runtime import process; assert process.reap() == []"
    assert subprocess.run([sys.executable, "-c", code], env=dict(os.environ, PYTHONPATH=str(ROOT))).returncode == 0


def test_pidfd_becomes_readable_when_the_child_exits(procs: Procs) -> None:
    child = procs.python(PAUSE)
    assert child.pidfd is not None
    assert select.select([child.pidfd], [], [], 0)[0] == []  # running: not readable
    process.send_signal(child.pid, signal.SIGTERM)
    assert select.select([child.pidfd], [], [], TIMEOUT)[0] == [child.pidfd]
    assert procs.reap_until(child.pid) == (None, signal.SIGTERM)


def test_reap_collects_orphaned_grandchild_as_subreaper(tmp_path: Path) -> None:
    result = run_scenario("orphan", tmp_path)
    assert result["reaped"] == [7, None]


def test_become_subreaper_is_available_here() -> None:
    # In a throwaway process: pytest itself must not become a subreaper.
    code = "from supervise.runtime import process\nraise SystemExit(0 if process.become_subreaper() else 1)"
    assert subprocess.run([sys.executable, "-c", code], env=dict(os.environ, PYTHONPATH=str(ROOT))).returncode == 0


# -- kill_tree ------------------------------------------------------------------------------


def test_kill_tree_without_cgroup_kills_double_forked_grandchild(tmp_path: Path) -> None:
    result = run_scenario("kill-tree", tmp_path)
    assert result["survived_without_token"], "the grandchild escaped group and tree: only the token finds it"
    assert result["with_token"] >= 1
    assert result["reaped"] == {str(result["worker"]): [None, 9], str(result["grandchild"]): [None, 9]}
    assert not alive(result["worker"]) and not alive(result["grandchild"])


def test_kill_tree_with_cgroup_kills_double_forked_grandchild(procs: Procs, cgroups: Cgroups, tmp_path: Path) -> None:
    pidfile = tmp_path / "grandchild.pid"
    child = procs.spawn(sys.executable, str(DOUBLE_FORK), str(pidfile), cgroups=cgroups, name="web:0",
                        env={**os.environ, "PROC_WAIT_CGROUP": "/web_0."})
    assert isinstance(child.cgroup, str)  # not a Path: ~1 KiB less for each instance held
    leaf = Path(child.cgroup)
    assert leaf.parent == cgroups.root and leaf.name.startswith("web_0.")
    gpid = int(wait_until(lambda: pidfile.exists() and pidfile.read_text()))
    procs.note(gpid)
    procs_in_cgroup = {int(p) for p in (leaf / "cgroup.procs").read_text().split()}
    assert {child.pid, gpid} <= procs_in_cgroup
    assert os.getsid(gpid) != child.pid  # escaped the worker's session: only the cgroup holds it
    # No token: the cgroup alone must find the grandchild.
    assert killing.kill_tree(child, None) >= 2
    wait_until(lambda: not alive(child.pid) and not alive(gpid))
    assert procs.wait_exit(child) == (None, signal.SIGKILL)

    def removed() -> bool:
        cgroups.remove(leaf)
        return not leaf.exists()
    wait_until(removed)


def test_cgroups_kill_and_pid_fallback(procs: Procs, cgroups: Cgroups) -> None:
    first = procs.python(PAUSE, cgroups=cgroups, name="a:0")
    second = procs.python(PAUSE, cgroups=cgroups, name="a:0")
    assert first.cgroup is not None and second.cgroup is not None
    assert first.cgroup != second.cgroup  # a fresh leaf per spawn
    assert cgroups_module.kill_cgroup(first.cgroup) == {first.pid}
    assert procs.wait_exit(first) == (None, signal.SIGKILL)
    # The path for kernels without cgroup.kill: signal every pid listed.
    assert cgroups_module._kill_cgroup_by_pids(Path(second.cgroup)) == {second.pid}
    assert procs.wait_exit(second) == (None, signal.SIGKILL)
    assert cgroups_module.kill_cgroup(cgroups.root / "missing") is None


def test_cgroups_each_spawn_gets_a_fresh_leaf_and_remove_drops_it(cgroups: Cgroups) -> None:
    first = cgroups.create("x:1")
    second = cgroups.create("x:1")
    assert first is not None and second is not None and first != second
    assert first.is_dir() and second.is_dir()
    cgroups.remove(first)
    assert not first.exists() and second.is_dir()


def test_cgroups_close_waits_for_killed_leaves_then_removes_owner_dir(procs: Procs, cgroups: Cgroups) -> None:
    assert cgroups.create("x:1") is not None
    child = procs.python(PAUSE, cgroups=cgroups, name="x:2")
    assert child.cgroup is not None
    assert cgroups_module.kill_cgroup(child.cgroup) == {child.pid}
    cgroups.close()  # the SIGKILLed worker may not have exited yet: close waits for it
    assert not cgroups.root.exists()
    assert procs.wait_exit(child) == (None, signal.SIGKILL)


def test_kill_tree_never_signals_a_pid_with_another_create_time(procs: Procs) -> None:
    child = procs.python(PAUSE)
    impostor = Child(pid=child.pid, pidfd=None, cgroup=None, create_time=child.create_time - 100)
    assert killing.kill_tree(impostor, "not-its-token") == 0
    assert alive(child.pid, child.create_time)


def test_kill_tree_kills_group_members_after_the_leader_died(procs: Procs, tmp_path: Path) -> None:
    # A member of the worker's process group outlives the leader; killpg still reaches it.
    pidfile = tmp_path / "member.pid"
    code = (f"import os, subprocess, sys\n"
            f"p = subprocess.Popen([sys.executable, '-c', {PAUSE!r}])\n"
            f"open({str(pidfile)!r}, 'w').write(str(p.pid))\n"
            f"os._exit(0)")
    child = procs.python(code)
    assert procs.wait_exit(child) == (0, None)
    member = int(wait_until(lambda: pidfile.exists() and pidfile.read_text()))
    procs.note(member)
    assert os.getpgid(member) == child.pid
    assert killing.kill_tree(child, None) == 1
    wait_until(lambda: not alive(member))


def test_kill_tree_when_everything_is_gone(procs: Procs, tmp_path: Path) -> None:
    child = procs.python("pass")
    procs.wait_exit(child)
    assert killing.kill_tree(child, "token") == 0  # pidfd refers to a reaped process
    gone = Child(pid=child.pid, pidfd=None, cgroup=str(tmp_path / "no-cgroup"), create_time=child.create_time)
    assert killing.kill_tree(gone, None) == 0


def test_kill_all_descendants(tmp_path: Path) -> None:
    result = run_scenario("descendants", tmp_path)
    assert result["count"] == 4
    assert result["left"] == []
    assert not any(alive(pid) for pid in result["pids"])


# -- identifying processes ------------------------------------------------------------------


def test_same_process_tells_the_worker_from_another_start_time_and_from_its_zombie(procs: Procs) -> None:
    child = procs.python(PAUSE)
    assert process.same_process(child.pid, child.create_time)
    assert not process.same_process(child.pid, child.create_time - 2 * process.START_TOLERANCE)
    assert not process.same_process(child.pid, child.create_time + 1.0)  # a boot time a second off
    assert process.send_signal(child.pid, signal.SIGKILL)
    assert select.select([child.pidfd], [], [], TIMEOUT)[0]  # exited, not reaped yet: a zombie
    assert not process.same_process(child.pid, child.create_time)
    procs.reap_until(child.pid)
    assert not process.same_process(child.pid, child.create_time)


def test_the_start_tolerance_is_one_clock_tick_and_a_margin() -> None:
    # One tick is what a computed start time may be early by (see the spawn test above);
    # two would let a pid reused 20 ms later pass for the process.
    tick = 1 / os.sysconf("SC_CLK_TCK")
    assert tick < process.START_TOLERANCE < 2 * tick


def test_environ_of_reads_what_a_process_was_started_with(procs: Procs) -> None:
    env = {"PATH": os.environ.get("PATH", os.defpath), "SUPERVISE_TOKEN": "tok-1", "ODD": "a=b=c", "EMPTY": ""}
    child = procs.python(PAUSE, env=env)
    found = wait_until(lambda: process.environ_of(child.pid) or None)
    assert {key: found.get(key) for key in env} == env
    process.send_signal(child.pid, signal.SIGKILL)
    assert select.select([child.pidfd], [], [], TIMEOUT)[0]
    assert process.environ_of(child.pid) == {}  # a zombie has no environment left
    pid_max = int(Path("/proc/sys/kernel/pid_max").read_text())
    assert process.environ_of(pid_max + 1) == {}  # no such process


def test_a_checkpoint_record_is_trusted_only_for_the_very_process(procs: Procs) -> None:
    env = {"PATH": os.environ.get("PATH", os.defpath), "SUPERVISE_TOKEN": "tok-2"}
    child = procs.python(PAUSE, env=env)
    wait_until(lambda: process.environ_of(child.pid))
    record = checkpoint.InstanceRecord(app="web", index=0, generation=1, role="slot", state="running", restarts=0,
                                       pid=child.pid, create_time=child.create_time, token="tok-2")
    assert adoption.still_running(record)
    assert not adoption.still_running(dataclasses.replace(record, token="another spawn's"))
    assert not adoption.still_running(dataclasses.replace(record, create_time=child.create_time - 1))
    assert not adoption.still_running(dataclasses.replace(record, create_time=None))


def test_find_strays_finds_session_leaders_of_this_state_dir_only(procs: Procs, tmp_path: Path) -> None:
    endpoint = f"ipc://{tmp_path}/heartbeat.sock"
    env = {"PATH": os.environ.get("PATH", os.defpath), "SUPERVISE_HEARTBEAT": endpoint, "SUPERVISE_TOKEN": "tok-3",
           "SUPERVISE_APP": "web", "SUPERVISE_INSTANCE": "2"}
    # The worker's child inherits its environment but not its session: not a worker.
    code = f"import subprocess, sys\nsubprocess.Popen([sys.executable, '-c', {PAUSE!r}])\n{PAUSE}"
    worker = procs.python(code, env=env)
    other = procs.python(PAUSE, env={**env, "SUPERVISE_HEARTBEAT": "ipc:///elsewhere/heartbeat.sock"})
    wait_until(lambda: len(psutil.Process(worker.pid).children()) == 1)
    procs.note(psutil.Process(worker.pid).children()[0].pid)
    strays = adoption.find_strays(endpoint, known={other.pid})
    assert [(s.pid, s.app, s.index, s.token) for s in strays] == [(worker.pid, "web", 2, "tok-3")]
    assert abs(strays[0].create_time - worker.create_time) < process.START_TOLERANCE
    assert adoption.find_strays(endpoint, known={worker.pid}) == []


# -- log files ------------------------------------------------------------------------------


def test_rotate_keeps_backups_newest_first(tmp_path: Path) -> None:
    log = tmp_path / "web-0.log"
    for generation in range(4):
        log.write_bytes(f"generation {generation}\n".encode() * 10)
        assert logfiles.rotate_if_needed(log, max_size=100, backups=2)
        assert log.stat().st_size == 0
    assert (tmp_path / "web-0.log.1").read_text().splitlines()[0] == "generation 3"
    assert (tmp_path / "web-0.log.2").read_text().splitlines()[0] == "generation 2"
    assert not (tmp_path / "web-0.log.3").exists()


def test_rotate_only_at_max_size(tmp_path: Path) -> None:
    log = tmp_path / "a.log"
    assert not logfiles.rotate_if_needed(log, 10, 3)  # missing
    log.write_bytes(b"123456789")
    assert not logfiles.rotate_if_needed(log, 10, 3)
    log.write_bytes(b"1234567890")
    assert logfiles.rotate_if_needed(log, 10, 3)
    assert (tmp_path / "a.log.1").read_bytes() == b"1234567890"


def test_rotate_with_zero_backups_just_truncates(tmp_path: Path) -> None:
    log = tmp_path / "a.log"
    log.write_bytes(b"x" * 100)
    assert logfiles.rotate_if_needed(log, 10, 0)
    assert log.read_bytes() == b""
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.log"]


def test_rotate_under_an_open_append_writer(tmp_path: Path) -> None:
    log = tmp_path / "a.log"
    fd = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
    try:
        os.write(fd, b"before\n" * 20)
        assert logfiles.rotate_if_needed(log, 100, 1)
        os.write(fd, b"after\n")
    finally:
        os.close(fd)
    assert log.read_bytes() == b"after\n"  # written at offset 0: no hole
    assert (tmp_path / "a.log.1").read_bytes() == b"before\n" * 20  # under twice the limit: all kept


def test_rotating_a_flood_keeps_only_the_last_max_size_bytes(tmp_path: Path) -> None:
    log = tmp_path / "a.log"
    log.write_bytes(b"".join(b"line %05d\n" % i for i in range(1000)))  # 11,000 bytes
    assert logfiles.rotate_if_needed(log, 1000, 2)
    backup = (tmp_path / "a.log.1").read_bytes()
    assert len(backup) <= 1000 and backup.endswith(b"line 00999\n") and backup.startswith(b"line ")
    assert log.read_bytes() == b""


def test_a_listing_of_the_log_and_its_backups_never_shows_a_rotation_in_progress(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    log = tmp_path / "a.log"
    for index in (1, 2):
        (tmp_path / f"a.log.{index}").write_bytes(b"older\n")
    log.write_bytes(b"x" * 100)
    listings: list[set[str]] = []
    copies: list[bool] = []
    replace = os.replace

    def replace_and_look(src: Path, dst: Path) -> None:
        # What `logs`, a glob or `ls` would list at each step of the rotation (the hidden time
        # indexes move beside their logs: not a step of their own).
        if not str(src).endswith(".idx"):
            listings.append({p.name for p in tmp_path.glob("a.log*")})
            copies.append(logfiles.in_progress(log).exists())
        replace(src, dst)

    monkeypatch.setattr(logfiles.os, "replace", replace_and_look)
    assert logfiles.rotate_if_needed(log, max_size=100, backups=3)
    monkeypatch.undo()
    assert len(listings) == 3 and all(copies)  # two backups moved, then the new one: the copy was there
    assert all(listing <= {"a.log", "a.log.1", "a.log.2", "a.log.3"} for listing in listings), listings
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.log", "a.log.1", "a.log.2", "a.log.3"]


def test_a_copy_left_by_a_rotation_cut_short_is_overwritten(tmp_path: Path) -> None:
    log = tmp_path / "a.log"
    logfiles.in_progress(log).write_bytes(b"half a copy from a daemon that was killed" * 10)
    log.write_bytes(b"fresh\n" * 20)
    assert logfiles.rotate_if_needed(log, max_size=100, backups=1)
    assert (tmp_path / "a.log.1").read_bytes() == b"fresh\n" * 20
    assert not logfiles.in_progress(log).exists()


def test_shifting_the_log_the_daemon_writes_never_leaves_it_missing(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    log = tmp_path / "a.log"
    (tmp_path / "a.log.1").write_bytes(b"older\n")
    (tmp_path / ".a.log.idx").write_bytes(b"index of a.log")
    log.write_bytes(b"current\n")
    os.chmod(log, 0o604)
    missing: list[str] = []
    replace = os.replace

    def replace_and_look(src: Path, dst: Path) -> None:
        replace(src, dst)
        if not log.exists():  # what a `tail -F` or a stat between two syscalls would meet
            missing.append(f"{Path(src).name} -> {Path(dst).name}")

    monkeypatch.setattr(logfiles.os, "replace", replace_and_look)
    logfiles.shift(log, backups=2)
    monkeypatch.undo()
    assert not missing, missing
    assert log.read_bytes() == b"" and (log.stat().st_mode & 0o777) == 0o604
    assert (tmp_path / "a.log.1").read_bytes() == b"current\n"
    assert (tmp_path / "a.log.2").read_bytes() == b"older\n"
    assert (tmp_path / ".a.log.1.idx").read_bytes() == b"index of a.log"  # moved with its log
    assert sorted(p.name for p in tmp_path.iterdir()) == [".a.log.1.idx", "a.log", "a.log.1", "a.log.2"]
    logfiles.shift(log, backups=0)
    assert log.read_bytes() == b"" and sorted(p.name for p in tmp_path.iterdir()) == [
        ".a.log.1.idx", "a.log", "a.log.1", "a.log.2"]


def test_tail_returns_last_lines(tmp_path: Path) -> None:
    log = tmp_path / "a.log"
    assert logs.tail(log, 5) == []
    log.write_text("".join(f"line {i}\n" for i in range(10_000)))
    assert logs.tail(log, 3) == ["line 9997", "line 9998", "line 9999"]
    assert logs.tail(log, 3, block_size=4) == ["line 9997", "line 9998", "line 9999"]
    assert logs.tail(log, 0) == []
    assert len(logs.tail(log, 20_000)) == 10_000


def test_tail_without_final_newline_and_with_crlf(tmp_path: Path) -> None:
    log = tmp_path / "a.log"
    log.write_bytes(b"one\r\ntwo\r\nthree")
    assert logs.tail(log, 2) == ["two", "three"]
    assert logs.tail(log, 2, block_size=3) == ["two", "three"]
    assert logs.tail(log, 10) == ["one", "two", "three"]
    log.write_bytes(b"\xff bad\nok\n")
    assert logs.tail(log, 2) == ["\ufffd bad", "ok"]
