"""The OS side of supervision: spawn, reap, signal, kill a process tree, sample memory.

Blocking, synchronous functions; the asyncio daemon calls them (the slow ones,
which walk /proc, from a worker thread). The daemon is the one reaper: it
watches each worker's pidfd and calls `reap()` when one is readable or on
SIGCHLD. Nothing else here, and no `subprocess.Popen` object, ever calls
waitpid on a worker.

A worker can hide from a kill in several ways (a new process group, a new
session, a double fork that re-parents it away from the worker); `kill_tree`
closes each of them: the instance's cgroup, its process group, its live
descendants, and orphans re-parented to us (we are a child subreaper) that
still carry the instance's `SUPERVISE_TOKEN`.
"""

from __future__ import annotations

import ctypes
import errno
import os
import re
import secrets
import select
import signal
import subprocess
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import psutil

__all__ = [
    "Cgroups", "Child", "SpawnError", "SpawnSpec", "become_subreaper", "kill_all_descendants",
    "kill_tree", "reap", "rss_of_tree", "send_signal", "spawn",
]

PR_SET_CHILD_SUBREAPER = 36
LOG_FILE_MODE = 0o640
# Put on a Popen object once the child is ours to reap; see `_disarm`.
_DISARMED_RETURNCODE = -(2**31)
# Two process records are the same process when their start times agree.
# Start times are in clock ticks (10 ms); the epoch value also carries the
# boot time, which is whole seconds and can only jump by whole seconds.
_SAME_START = 0.005
# A sweep repeats while it finds processes it has not signalled yet (one
# forked between our listing and our kill); a bound keeps a fork bomb from
# holding us forever (cgroup.kill is the real answer to fork bombs).
_SWEEP_PASSES = 5
_CGROUP_NAME_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]")


class SpawnError(Exception):
    """A worker could not be started; the message says what to fix."""


@dataclass(frozen=True, slots=True)
class SpawnSpec:
    """Everything needed to start one worker process."""

    argv: tuple[str, ...]
    cwd: Path
    env: Mapping[str, str]
    log_path: Path
    name: str  # "web:0"; names the instance's cgroup
    pass_fds: tuple[int, ...] = ()


@dataclass(frozen=True, slots=True)
class Child:
    """A started worker: what it takes to watch, identify and kill it."""

    pid: int
    pidfd: int | None  # owned by the caller, who must keep it open while kill_tree may use it
    cgroup: Path | None
    create_time: float  # psutil.Process.create_time(): tells our process from a reused pid


# -- subreaper, spawn -----------------------------------------------------------------


def become_subreaper() -> bool:
    """Make orphaned descendants re-parent to us instead of to init.

    That way a worker's double-forked grandchildren stay ours to reap and to
    kill. False where prctl(PR_SET_CHILD_SUBREAPER) is unavailable.
    """
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def spawn(spec: SpawnSpec, cgroups: Cgroups | None = None) -> Child:
    """Start a worker in its own session, output appended to `spec.log_path`.

    Raises SpawnError saying what to fix when it cannot be started.
    """
    if not spec.argv:
        raise SpawnError("empty command")
    if not spec.cwd.exists():
        raise SpawnError(f"cwd does not exist: {spec.cwd}")
    if not spec.cwd.is_dir():
        raise SpawnError(f"cwd is not a directory: {spec.cwd}")
    log_fd = _open_log(spec.log_path)
    try:
        # Popen, not fork+exec by hand: without preexec_fn it uses vfork, which
        # keeps spawning fast however big the daemon gets. Output goes to a file,
        # not a pipe, so a worker never blocks on (or dies with) the daemon.
        proc = subprocess.Popen(
            spec.argv, cwd=spec.cwd, env=dict(spec.env),
            stdin=subprocess.DEVNULL, stdout=log_fd, stderr=log_fd,
            close_fds=True, pass_fds=spec.pass_fds,
            start_new_session=True,  # own session and process group: pgid == pid
        )
    except OSError as exc:
        raise SpawnError(_explain_spawn_failure(spec, exc)) from None
    except ValueError as exc:  # a NUL byte in argv or env, a bad pass_fds entry
        raise SpawnError(f"invalid command or environment for {spec.name}: {exc}") from None
    finally:
        os.close(log_fd)
    _disarm(proc)
    pid = proc.pid
    # No other reaper exists, so until we reap it, `pid` is our child (maybe a
    # zombie) and both the pidfd and the start time below are surely its own.
    pidfd = _pidfd_open(pid)
    # Race: between fork and this write the child runs in our cgroup. A child
    # that forks within those microseconds leaves that grandchild behind in
    # ours; the process group and token sweeps still reach it. (clone3 with
    # CLONE_INTO_CGROUP would close this, but Python cannot ask for it.)
    cgroup = cgroups.adopt(pid, spec.name) if cgroups is not None else None
    return Child(pid=pid, pidfd=pidfd, cgroup=cgroup, create_time=_create_time(pid))


def _open_log(path: Path) -> int:
    # O_APPEND: every write of every process sharing the fd lands at the end,
    # and copytruncate rotation (logfiles.py) works without reopening.
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        return os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, LOG_FILE_MODE)
    except OSError as exc:
        raise SpawnError(f"cannot open log file {path}: {exc.strerror}") from None


def _disarm(proc: subprocess.Popen) -> None:
    # A Popen whose returncode is None is "still running" to subprocess: when
    # garbage-collected, __del__ appends it to subprocess._active, and the next
    # Popen() anywhere in the process calls waitpid(pid, WNOHANG) on it. That
    # would steal the exit status from our reaper, and the worker's exit would
    # go unreported. A non-None returncode makes every Popen path (poll, wait,
    # __del__) leave the pid alone.
    proc.returncode = _DISARMED_RETURNCODE


def _explain_spawn_failure(spec: SpawnSpec, exc: OSError) -> str:
    command = spec.argv[0]
    if exc.filename is not None and os.fsdecode(exc.filename) == os.fsdecode(spec.cwd):
        return f"cannot enter cwd {spec.cwd}: {exc.strerror}"
    path_var = spec.env.get("PATH", os.defpath)
    found = _resolve(command, spec.cwd, path_var)
    match exc.errno:
        case errno.ENOENT if found is not None:
            return f"interpreter not found for {found} (check its #! line)"
        case errno.ENOENT if "/" in command:
            return f"command not found: {command!r} (no such file; relative paths start at cwd {spec.cwd})"
        case errno.ENOENT:
            return f"command not found: {command!r} (cwd {spec.cwd}, PATH {path_var})"
        case errno.EACCES | errno.EPERM:
            return f"permission denied: {found or command!r} (is it executable? chmod +x; directories searchable?)"
        case errno.ENOTDIR:
            return f"not a directory: a component of {command!r} or of cwd {spec.cwd} is a file"
        case errno.ENOEXEC:
            return f"cannot execute {found or command!r}: not a binary and no #! line"
        case _:
            return f"cannot execute {command!r}: {exc.strerror}"


def _resolve(command: str, cwd: Path, path_var: str) -> str | None:
    """The file exec would have run, if one exists (to tell a missing file from a bad #!)."""
    if "/" in command:
        candidate = cwd / command
        return str(candidate) if candidate.is_file() else None
    for directory in path_var.split(os.pathsep):
        candidate = (cwd / directory) / command
        if candidate.is_file():
            return str(candidate)
    return None


def _pidfd_open(pid: int) -> int | None:
    try:
        return os.pidfd_open(pid)  # always close-on-exec
    except (AttributeError, OSError):
        return None


def _create_time(pid: int) -> float:
    try:
        return psutil.Process(pid).create_time()
    except psutil.Error:
        return 0.0


# -- reaping and signals --------------------------------------------------------------


def reap() -> list[tuple[int, int | None, int | None]]:
    """Collect every exited child, workers and orphans alike: [(pid, exit code, signal)].

    Exactly one of code and signal is set. Never raises.
    """
    reaped: list[tuple[int, int | None, int | None]] = []
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:  # ECHILD: no children at all
            break
        except OSError:
            break
        if pid == 0:  # children exist, none has exited
            break
        if os.WIFEXITED(status):
            reaped.append((pid, os.WEXITSTATUS(status), None))
        elif os.WIFSIGNALED(status):
            reaped.append((pid, None, os.WTERMSIG(status)))
    return reaped


def send_signal(pid: int, sig: int) -> bool:
    """Signal one process; False when it is already gone (ESRCH)."""
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        return False
    return True


def kill_tree(child: Child, token: str | None) -> int:
    """SIGKILL an instance's whole process tree; returns how many processes were signalled.

    Safe when everything is already gone, and never signals a reused pid. It
    walks /proc, so call it off the event loop. `child.pidfd`, when set, must
    stay open until this returns.
    """
    signalled: set[int] = set()
    if child.cgroup is not None:
        signalled |= _kill_cgroup(child.cgroup) or set()
    for _ in range(_SWEEP_PASSES):
        found = (
            _kill_leader(child)
            | _kill_process_group(child)
            | _kill_descendants(child)
            | _kill_token_holders(token)
        )
        if found <= signalled:
            break
        signalled |= found
    return len(signalled)


def kill_all_descendants() -> int:
    """SIGKILL every live descendant of the calling process (shutdown's last sweep)."""
    signalled: set[int] = set()
    for _ in range(_SWEEP_PASSES):
        found = _kill_live(_children(psutil.Process()))
        if found <= signalled:
            break
        signalled |= found
    return len(signalled)


def rss_of_tree(pid: int, create_time: float | None = None) -> int | None:
    """Resident memory in bytes of `pid` plus all its descendants; None when it is gone.

    With `create_time`, a reused pid also counts as gone.
    """
    try:
        root = psutil.Process(pid)
        if create_time is not None and not _same_start(root.create_time(), create_time):
            return None
        total = root.memory_info().rss
    except psutil.Error:
        return None
    for proc in _children(root):
        try:
            total += proc.memory_info().rss
        except psutil.Error:
            pass  # exited while we looked, or a zombie
    return total


def _kill_leader(child: Child) -> set[int]:
    if child.pidfd is not None:
        signalled = _kill_by_pidfd(child.pidfd, child.pid)
        if signalled is not None:
            return signalled
    leader = _process_if_same(child.pid, child.create_time)
    return _kill_live([leader]) if leader is not None else set()


def _kill_by_pidfd(pidfd: int, pid: int) -> set[int] | None:
    """SIGKILL through the pidfd; None when the fd cannot be vouched for."""
    # pidfd_send_signal reaches exactly the process the pidfd was opened on,
    # even if its pid has been reaped and reused. But the fd is the caller's:
    # it could be closed and its number reused meanwhile, so work on a private
    # duplicate and first check (fdinfo "Pid:") that it refers to our pid.
    # A reaped process shows "Pid: -1": the create_time path then finds nothing.
    try:
        fd = os.dup(pidfd)
    except OSError:
        return None
    try:
        if _pidfd_pid(fd) != pid:
            return None
        if _is_zombie(pid):
            return set()
        signal.pidfd_send_signal(fd, signal.SIGKILL)
        return {pid}
    except OSError:  # ESRCH: exited between the check and the signal
        return set()
    finally:
        os.close(fd)


def _pidfd_pid(fd: int) -> int | None:
    try:
        with open(f"/proc/self/fdinfo/{fd}") as info:
            for line in info:
                if line.startswith("Pid:"):
                    return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return None


def _kill_process_group(child: Child) -> set[int]:
    # A worker leads its own session, so its pgid is its pid; killpg reaches
    # every member that did not setsid/setpgid away, even after the leader has
    # died. The kernel does not reuse a number still in use as a pgid, so a
    # group with members left is ours. But once the group is empty and the
    # leader reaped, the number may belong to a new process and its group:
    # skip when a process with that pid exists and is not our worker.
    pgid = child.pid
    if os.path.exists(f"/proc/{pgid}") and _process_if_same(pgid, child.create_time) is None:
        return set()
    members = {pid for pid in psutil.pids() if (_stat(pid) or ("", 0))[1] == pgid}
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        return set()
    return {pid for pid in members if not _is_zombie(pid)}


def _kill_descendants(child: Child) -> set[int]:
    leader = _process_if_same(child.pid, child.create_time)
    return _kill_live(_children(leader)) if leader is not None else set()


def _kill_token_holders(token: str | None) -> set[int]:
    # We are a subreaper: a grandchild that double-forked or setsid'ed away
    # from the worker becomes our child when its parent exits. Its environment
    # (as it was at exec) still holds the token of the spawn it came from.
    if not token:
        return set()
    return _kill_live(proc for proc in _children(psutil.Process()) if _token_of(proc) == token)


def _token_of(proc: psutil.Process) -> str | None:
    try:
        return proc.environ().get("SUPERVISE_TOKEN")
    except psutil.Error:  # AccessDenied, NoSuchProcess, ZombieProcess
        return None


def _kill_live(procs: Iterable[psutil.Process]) -> set[int]:
    """SIGKILL each process that is still the one listed (not exited, not reused)."""
    signalled: set[int] = set()
    for proc in procs:
        try:
            # send_signal checks that the pid still has the start time psutil
            # saw when it listed the process, so a reused pid is left alone.
            if proc.status() != psutil.STATUS_ZOMBIE:
                proc.send_signal(signal.SIGKILL)
                signalled.add(proc.pid)
        except psutil.Error:
            pass
    return signalled


def _children(proc: psutil.Process) -> list[psutil.Process]:
    try:
        return proc.children(recursive=True)
    except psutil.Error:
        return []


def _process_if_same(pid: int, create_time: float) -> psutil.Process | None:
    """The process `pid` if it is the one started at `create_time`, else None."""
    try:
        proc = psutil.Process(pid)
        return proc if _same_start(proc.create_time(), create_time) else None
    except psutil.Error:
        return None


def _same_start(a: float, b: float) -> bool:
    return abs(a - b) < _SAME_START


def _stat(pid: int) -> tuple[str, int] | None:
    """(state, pgrp) from /proc/<pid>/stat; None when the process is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except OSError:
        return None
    # comm (field 2) may contain spaces and parentheses: split after the last ')'.
    fields = data[data.rfind(b")") + 2:].split()
    try:
        return fields[0].decode(), int(fields[2])
    except (IndexError, ValueError):
        return None


def _is_zombie(pid: int) -> bool:
    stat = _stat(pid)
    return stat is not None and stat[0] == "Z"


# -- cgroups --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Cgroups:
    """Per-instance cgroup v2 leaves under a directory owned by this daemon.

    A cgroup is the one container a process cannot leave by forking or
    setsid, and `cgroup.kill` kills everything in it atomically, so with
    cgroups `kill_tree` cannot miss a descendant. Each spawn gets a fresh
    leaf: a sweep still pending for an old instance must never hit its
    replacement.
    """

    root: Path  # <our cgroup>/supervise-<owner>

    @classmethod
    def detect(cls, owner: str) -> Cgroups | None:
        """Create our directory in the cgroup2 hierarchy; None when there is none we may write."""
        found = _own_cgroup_dir()
        if found is None:
            return None
        mount_point, own = found
        dirname = "supervise-" + _CGROUP_NAME_UNSAFE.sub("_", owner)
        # Our own cgroup first; a sibling (in our parent) when ours refuses
        # children, e.g. a subtree delegated read-only. Never above the mount.
        for parent in (own, own.parent) if own != mount_point else (own,):
            root = parent / dirname
            try:
                root.mkdir(exist_ok=True)
            except OSError:
                continue
            if os.access(root / "cgroup.procs", os.W_OK):
                return cls(root)
            _rmdir_quietly(root)
        return None

    def create(self, name: str) -> Path | None:
        """A new, empty leaf for one spawn of instance `name`; None on failure.

        Empty leaves of earlier spawns of `name` are removed first, so leaves
        do not pile up however often an instance restarts. (A sweep still
        pending for one of them finds no directory and does nothing.)
        """
        base = _CGROUP_NAME_UNSAFE.sub("_", name)
        for old in self.root.glob(f"{base}.*"):
            _rmdir_tree(old)
        for _ in range(8):
            path = self.root / f"{base}.{secrets.token_hex(3)}"
            try:
                path.mkdir()
                return path
            except FileExistsError:
                continue
            except OSError:
                return None
        return None

    def adopt(self, pid: int, name: str) -> Path | None:
        """Move `pid` into a new leaf for `name`; None (and no leaf) when that fails."""
        path = self.create(name)
        if path is None:
            return None
        try:
            _write(path / "cgroup.procs", str(pid))
        except OSError:
            # EBUSY (domain controllers enabled above us), ESRCH, EACCES: go without.
            self.remove(path)
            return None
        return path

    def kill(self, path: Path) -> bool:
        """SIGKILL everything in the cgroup at `path`; False when it could not be done."""
        return _kill_cgroup(path) is not None

    def remove(self, path: Path) -> None:
        """Remove the cgroup at `path` (and any sub-cgroups) if it is empty; never raises."""
        if self.root in path.parents:
            _rmdir_tree(path)

    def close(self, timeout: float = 1.0) -> None:
        """Remove our directory at daemon exit, waiting up to `timeout` for killed leaves to empty.

        Never raises; a leaf whose processes are still alive then is left behind.
        """
        deadline = time.monotonic() + timeout
        for leaf in self.root.iterdir() if self.root.is_dir() else ():
            if leaf.is_dir():
                _wait_unpopulated(leaf, deadline)
        _rmdir_tree(self.root)


def _own_cgroup_dir() -> tuple[Path, Path] | None:
    """(cgroup2 mount point, our cgroup's directory), from /proc/self/cgroup and mountinfo."""
    try:
        with open("/proc/self/cgroup") as f:
            own = next(line[3:].rstrip("\n") for line in f if line.startswith("0::"))
        with open("/proc/self/mountinfo") as f:
            mounts = [line.split() for line in f]
    except (OSError, StopIteration):
        return None
    if own.endswith(" (deleted)") or "/.." in own:
        return None  # our cgroup is gone, or outside our cgroup namespace
    best: tuple[Path, Path] | None = None
    best_root = ""
    for fields in mounts:
        sep = fields.index("-") if "-" in fields else -1
        if sep < 0 or fields[sep + 1] != "cgroup2":
            continue
        # mountinfo escapes space, tab, newline and backslash as octal (\040).
        mount_root, mount_point = (f.encode().decode("unicode_escape") for f in fields[3:5])
        rel = _relative(own, mount_root)
        if rel is not None and (best is None or len(mount_root) > len(best_root)):
            best, best_root = (Path(mount_point), Path(mount_point) / rel), mount_root
    return best if best is not None and best[1].is_dir() else None


def _relative(path: str, root: str) -> str | None:
    if root == "/":
        return path.lstrip("/")
    if path == root or path.startswith(root + "/"):
        return path[len(root):].lstrip("/")
    return None


def _kill_cgroup(path: Path) -> set[int] | None:
    """SIGKILL all of a cgroup and its sub-cgroups; the pids it held, or None on failure."""
    if not path.is_dir():
        return None
    pids = _cgroup_pids(path)
    try:
        # cgroup.kill (Linux 5.14+) kills the whole subtree atomically: a
        # process forking at that moment cannot slip out.
        _write(path / "cgroup.kill", "1")
        return pids
    except FileNotFoundError:
        pass
    except OSError:
        return None
    return _kill_cgroup_by_pids(path)


def _kill_cgroup_by_pids(path: Path) -> set[int] | None:
    # Older kernels: freeze (so nothing forks while we list), SIGKILL every
    # pid, thaw. Frozen tasks still die of SIGKILL once thawed.
    frozen = _try_write(path / "cgroup.freeze", "1")
    signalled: set[int] = set()
    try:
        for _ in range(_SWEEP_PASSES):
            pids = _cgroup_pids(path) - signalled
            if not pids:
                break
            for pid in pids:
                if send_signal(pid, signal.SIGKILL):
                    signalled.add(pid)
    finally:
        if frozen:
            _try_write(path / "cgroup.freeze", "0")
    return signalled if path.is_dir() else None


def _cgroup_pids(path: Path) -> set[int]:
    pids: set[int] = set()
    for dirpath, _, _ in os.walk(path):
        try:
            pids.update(int(line) for line in Path(dirpath, "cgroup.procs").read_text().split())
        except (OSError, ValueError):
            pass
    return pids


def _write(path: Path, text: str) -> None:
    # One write(2) on the control file: cgroupfs acts on each write call.
    fd = os.open(path, os.O_WRONLY)
    try:
        os.write(fd, text.encode())
    finally:
        os.close(fd)


def _try_write(path: Path, text: str) -> bool:
    try:
        _write(path, text)
        return True
    except OSError:
        return False


def _wait_unpopulated(path: Path, deadline: float) -> None:
    # cgroup.events says "populated 0" once the last process has exited, and
    # kernfs wakes poll() with POLLPRI on every change of it: no busy loop.
    try:
        fd = os.open(path / "cgroup.events", os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return
    try:
        poller = select.poll()
        poller.register(fd, select.POLLPRI)
        while b"populated 1" in os.pread(fd, 4096, 0):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            poller.poll(remaining * 1000)
    except OSError:
        return
    finally:
        os.close(fd)


def _rmdir_tree(path: Path) -> None:
    # Deepest first: a cgroup with sub-cgroups cannot be removed. Only the
    # directories are removed; their interface files vanish with them.
    for dirpath, _, _ in os.walk(path, topdown=False):
        _rmdir_quietly(Path(dirpath))


def _rmdir_quietly(path: Path) -> None:
    try:
        path.rmdir()
    except OSError:  # EBUSY: still populated; ENOENT: already gone
        pass
