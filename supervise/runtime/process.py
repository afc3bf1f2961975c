"""The OS side of supervision: spawn, reap, signal, tell a process from a reused pid.

Blocking, synchronous functions; the asyncio daemon calls them (the slow ones,
which walk /proc, from a worker thread). The daemon is the one reaper: it
watches each worker's pidfd and calls `reap()` when one is readable or on
SIGCHLD. Nothing else here, and no `subprocess.Popen` object, ever calls
waitpid on a worker.

Killing a whole process tree is killing.py's.
"""

from __future__ import annotations

import ctypes
import dataclasses
import errno
import os
import subprocess
import time
from collections.abc import Collection, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, TypedDict

from supervise.frozen import frozen
from supervise.runtime import identity, limits
from supervise.runtime.cgroups import Cgroups
from supervise.runtime.cgroups import owner_name as cgroups_owner
from supervise.runtime.identity import Identity
from supervise.runtime.limits import raise_nofile

if TYPE_CHECKING:
    import psutil

__all__ = [
    "START_TOLERANCE", "Cgroups", "Child", "Identity", "SpawnError", "SpawnSpec", "become_subreaper", "cgroups_owner",
    "environ_of", "is_zombie", "proc_stat", "process_if_same", "raise_nofile", "reap", "same_process", "send_signal",
    "spawn",
]

PR_SET_CHILD_SUBREAPER = 36
LOG_FILE_MODE = 0o640
# Put on a Popen object once the child is ours to reap; see `_disarm`.
_DISARMED_RETURNCODE = -(2**31)
_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
START_TOLERANCE = 1.5 / _CLOCK_TICKS
"""Two start times (seconds since the epoch) closer than this are of the same process.

The kernel records a start in clock ticks (10 ms); the epoch value adds
the boot time, which is whole seconds. Two readings of one process agree
to the float; a spawn's own start time is computed, not read
(`_start_time`), and can be one tick early. One tick, and half a tick for
rounding: 15 ms. Any wider only lets a reused pid pass for the process.
"""


class SpawnError(Exception):
    """A worker could not be started; the message says what to fix. ``daemon_fault``: the daemon (or the
    system) was out of file descriptors (EMFILE, ENFILE): nothing the worker did, so not its failure."""

    def __init__(self, message: str, daemon_fault: bool = False) -> None:
        super().__init__(message)
        self.daemon_fault = daemon_fault


@frozen
class SpawnSpec:
    """Everything needed to start one worker process."""

    argv: tuple[str, ...]
    cwd: Path
    env: Mapping[str, str]
    output: Path | int  # stdout and stderr: a file appended to, or a descriptor (the daemon's pipe)
    name: str  # "web:0"; names the instance's cgroup
    pass_fds: tuple[int, ...] = ()
    launcher: tuple[str, ...] = ()  # run argv through this (it execs argv); e.g. to set LISTEN_PID
    rlimits: tuple[tuple[int, int, int], ...] = ()  # (resource, soft, hard) to set before argv runs: limits.for_child
    identity: Identity | None = None  # the user, group, supplementary groups to run as; None: the daemon's
    umask: int | None = None  # None: the daemon's

    def run_as(self, user: str | None, group: str | None, keep: Collection[str] = ()) -> SpawnSpec:
        """This spec for a worker run as `user` and `group` (an app's settings, names or ids as text).

        Resolved now, at each spawn: a user deleted since the config was loaded
        is a SpawnError naming it. Given a user, HOME, USER and LOGNAME become
        that user's, except those in `keep` (the app's own env, which wins).
        Nothing changes for the daemon's own uid and gid: see identity.is_own.
        """
        try:
            resolved = identity.resolve(user, group)
        except identity.IdentityError as exc:
            raise SpawnError(f"cannot run {self.name}: {exc}") from None
        if resolved is None or identity.is_own(resolved, os.geteuid(), os.getegid()):
            return self
        env = dict(self.env)
        env.update({key: value for key, value in identity.environment(resolved).items() if key not in keep})
        return dataclasses.replace(self, identity=resolved, env=env)


@frozen
class Child:
    """A started worker: what it takes to watch, identify and kill it."""

    pid: int
    pidfd: int | None  # owned by the caller, who must keep it open while kill_tree may use it
    cgroup: str | None  # a str, not a Path: a Path costs ~1 KiB more, held for each instance
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
    """Start a worker in its own session, its output to `spec.output`.

    Raises SpawnError saying what to fix when it cannot be started.
    """
    if not spec.argv:
        raise SpawnError("empty command")
    if not spec.cwd.exists():
        raise SpawnError(f"cwd does not exist: {spec.cwd}")
    if not spec.cwd.is_dir():
        raise SpawnError(f"cwd is not a directory: {spec.cwd}")
    # Limits last: the listen launcher moves passed fds down to 3, 4, ... before a lower nofile applies.
    launcher = spec.launcher + limits.launcher(spec.rlimits)
    command = _resolve(spec.argv[0], spec.cwd, spec.env.get("PATH", os.defpath))
    if launcher and command is None:
        # Through a launcher a missing command would only show as its exit 127: say it here.
        raise SpawnError(_explain_spawn_failure(spec, FileNotFoundError(errno.ENOENT, "not found")))
    if spec.identity is not None:
        _check_identity(spec, spec.identity, launcher[:1], command)
    ids = _popen_ids(spec.identity)
    owned = isinstance(spec.output, Path)
    log_fd = _open_log(spec.output) if isinstance(spec.output, Path) else spec.output
    forked_after = time.clock_gettime(time.CLOCK_BOOTTIME)
    try:
        # Popen, not fork+exec by hand: without preexec_fn it uses vfork, which
        # keeps spawning fast however big the daemon gets. Setting user, group or
        # extra_groups turns vfork off (CPython's _posixsubprocess.c: the child
        # would setuid while sharing the parent's memory); umask does not.
        proc = subprocess.Popen(
            launcher + spec.argv, cwd=spec.cwd, env=dict(spec.env),
            stdin=subprocess.DEVNULL, stdout=log_fd, stderr=log_fd,
            close_fds=True, pass_fds=spec.pass_fds,
            start_new_session=True,  # own session and process group: pgid == pid
            umask=-1 if spec.umask is None else spec.umask,
            **ids,
        )
    except OSError as exc:
        raise SpawnError(_explain_spawn_failure(spec, exc), exc.errno in (errno.EMFILE, errno.ENFILE)) from None
    except ValueError as exc:  # a NUL byte in argv or env, a bad pass_fds entry
        raise SpawnError(f"invalid command or environment for {spec.name}: {exc}") from None
    finally:
        if owned:
            os.close(log_fd)
    returned = time.clock_gettime(time.CLOCK_BOOTTIME)
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
    return Child(pid=pid, pidfd=pidfd, cgroup=None if cgroup is None else str(cgroup),
                 create_time=_start_time(pid, forked_after, returned))


class _Ids(TypedDict, total=False):
    user: int
    group: int
    extra_groups: list[int]


def _popen_ids(who: Identity | None) -> _Ids:
    """Popen's user, group and extra_groups for `who`: only those that change something, since
    any one of them costs the vfork fast path."""
    ids: _Ids = {}
    if who is None:
        return ids
    ids["group"] = who.gid
    if who.uid is not None:
        ids["user"] = who.uid
    if who.groups is not None:
        ids["extra_groups"] = list(who.groups)
    return ids


def _check_identity(spec: SpawnSpec, who: Identity, launcher: tuple[str, ...], command: str | None) -> None:
    """Refuse, saying why, a spawn as `who` that cannot work: no privilege to switch (checked at
    each spawn: the daemon's euid or capabilities may have changed since the config check), a
    cwd or a program the user cannot reach."""
    refused = identity.refusal(spec.name, who, os.geteuid(), os.getegid(), identity.privileged())
    if refused is not None:
        raise SpawnError(refused)
    blocked = identity.denied(spec.cwd, who)
    if blocked is not None:
        raise SpawnError(f"cannot run {spec.name} as {who.label}: it cannot enter cwd {spec.cwd} "
                         f"({identity.describe(blocked)}; it needs x there)")
    programs = [(program, "launcher") for program in launcher] + [(command, "command")]
    for program, what in programs:
        if program is None:  # not found: Popen (or the check before a launcher) says so
            continue
        blocked = identity.denied(Path(program), who, execute=True)
        if blocked is not None:
            raise SpawnError(f"cannot run {spec.name} as {who.label}: it cannot execute the {what} {program} "
                             f"({identity.describe(blocked)}; it needs x there)")


def _open_log(path: Path) -> int:
    # O_APPEND: every write of every process sharing the fd lands at the end,
    # and copytruncate rotation (logfiles.py) works without reopening.
    flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC
    try:
        try:
            return os.open(path, flags, LOG_FILE_MODE)
        except FileNotFoundError:  # the first spawn, or the logs dir was removed meanwhile
            path.parent.mkdir(parents=True, exist_ok=True)
            return os.open(path, flags, LOG_FILE_MODE)
    except OSError as exc:
        what = f"cannot open log file {path}: {exc.strerror}"
        daemon_fault = exc.errno in (errno.EMFILE, errno.ENFILE)
        raise SpawnError(limits.describe_out_of_fds(exc, what) or what, daemon_fault) from None


def _disarm(proc: subprocess.Popen[bytes]) -> None:
    # A Popen whose returncode is None is "still running" to subprocess: when
    # garbage-collected, __del__ appends it to subprocess._active, and the next
    # Popen() anywhere in the process calls waitpid(pid, WNOHANG) on it. That
    # would steal the exit status from our reaper, and the worker's exit would
    # go unreported. A non-None returncode makes every Popen path (poll, wait,
    # __del__) leave the pid alone.
    proc.returncode = _DISARMED_RETURNCODE


def _explain_spawn_failure(spec: SpawnSpec, exc: OSError) -> str:
    command = spec.argv[0]
    # Popen's pipe in the daemon, or a copy of the daemon's table in the child before exec: the daemon's fault.
    out_of_fds = limits.describe_out_of_fds(exc, f"cannot start {command!r}: {exc.strerror}")
    if out_of_fds is not None:
        return out_of_fds
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
        case errno.EACCES | errno.EPERM if spec.identity is not None:
            return (f"permission denied for {spec.identity.label}: {found or command!r} (is it executable by "
                    "that user? chmod +x; directories searchable?)")
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


def _start_time(pid: int, forked_after: float, returned: float) -> float:
    """The start time psutil reports for our child `pid`, forked between CLOCK_BOOTTIME
    `forked_after` and `returned`.

    Computed, not read, when it can be: right after exec a new process is
    mapping its libraries, and reading its /proc/<pid>/stat waits for that
    (up to milliseconds on a busy machine), once per spawn on the event
    loop. The kernel stamps a fork with CLOCK_BOOTTIME in clock ticks;
    psutil adds the boot time of /proc/stat. When Popen returned within a
    tick, the fork's tick is ours or the next: `START_TOLERANCE` allows that.
    When it took longer (the daemon was descheduled in between: seen at
    60 ms with 500 workers starting on 2 cores), the fork may lie anywhere
    in that gap, and the value is read instead: computed, it would make an
    adopting daemon take the live worker for a stranger and start another.
    """
    if returned - forked_after < 1 / _CLOCK_TICKS:
        return int(forked_after * _CLOCK_TICKS) / _CLOCK_TICKS + boot_time()
    try:  # psutil's create_time(), without importing psutil (a daemon that never needs it saves its memory)
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
        return int(data[data.rindex(b")") + 2:].split()[19]) / _CLOCK_TICKS + boot_time()
    except (OSError, ValueError, IndexError):  # gone already: its exit is reported; nothing will compare this
        return int(forked_after * _CLOCK_TICKS) / _CLOCK_TICKS + boot_time()


def boot_time() -> float:
    """The boot time psutil adds to a process's start ticks: ``btime`` of /proc/stat, read as
    psutil 7 reads it (each time: a stepped wall clock moves it), so that a start time computed
    here compares equal with one read through psutil. Not psutil's own: importing it would make
    every daemon's first spawn wait some 20 ms for it."""
    with open("/proc/stat", "rb") as f:
        for line in f:
            if line.startswith(b"btime"):
                return float(line.strip().split()[1])
    raise RuntimeError("line 'btime' not found in /proc/stat")


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


# -- identifying processes ------------------------------------------------------------


def same_process(pid: int, create_time: float) -> bool:
    """`pid` is the process that started at `create_time`, and it has not exited.

    A pid alone can be reused by any process once its owner is reaped; the
    start time cannot (see START_TOLERANCE). A zombie has exited already.
    """
    import psutil

    proc = process_if_same(pid, create_time)
    if proc is None:
        return False
    try:
        return proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def process_if_same(pid: int, create_time: float) -> psutil.Process | None:
    """The process `pid` if it is the one started at `create_time` (zombie or not), else None."""
    import psutil

    try:
        proc = psutil.Process(pid)
        return proc if abs(proc.create_time() - create_time) < START_TOLERANCE else None
    except psutil.Error:
        return None


def environ_of(pid: int) -> dict[str, str]:
    """The environment `pid` was started with (as it was at exec); empty when unreadable.

    Read from /proc/<pid>/environ directly: one read, no psutil.Process.
    Unreadable means gone, another user's (EACCES) or a zombie (empty file).
    Bytes that are not UTF-8 are replaced: callers compare with our own
    ASCII tokens and names.
    """
    try:
        with open(f"/proc/{pid}/environ", "rb") as f:
            data = f.read()
    except OSError:
        return {}
    env = {}
    for item in data.split(b"\0"):
        key, sep, value = item.partition(b"=")
        if sep:
            env[key.decode(errors="replace")] = value.decode(errors="replace")
    return env


def proc_stat(pid: int) -> tuple[str, int, int] | None:
    """(state, pgrp, session) from /proc/<pid>/stat; None when the process is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except OSError:
        return None
    # comm (field 2) may contain spaces and parentheses: split after the last ')'.
    fields = data[data.rfind(b")") + 2:].split()
    try:
        return fields[0].decode(), int(fields[2]), int(fields[3])
    except (IndexError, ValueError):
        return None


def is_zombie(pid: int) -> bool:
    stat = proc_stat(pid)
    return stat is not None and stat[0] == "Z"
