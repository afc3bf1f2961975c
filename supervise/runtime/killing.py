"""Killing an instance's whole process tree, whatever it did to hide.

A worker can hide from a kill in several ways (a new process group, a new
session, a double fork that re-parents it away from the worker); `kill_tree`
closes each of them: the instance's cgroup, its process group, its live
descendants, and orphans re-parented to us (we are a child subreaper) that
still carry the instance's `SUPERVISE_TOKEN`. It walks /proc: call it off
the event loop. A reused pid is never signalled.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Collection, Iterable
from pathlib import Path
from typing import TYPE_CHECKING

from supervise.runtime.cgroups import kill_cgroup
from supervise.runtime.process import Child, environ_of, is_zombie, proc_stat, process_if_same
from supervise.wire import protocol

if TYPE_CHECKING:
    import psutil

__all__ = ["kill_all_descendants", "kill_tree"]

# A sweep repeats while it finds processes it has not signalled yet (one
# forked between our listing and our kill); a bound keeps a fork bomb from
# holding us forever (cgroup.kill is the real answer to fork bombs).
_SWEEP_PASSES = 5


def kill_tree(child: Child, token: str | None, workers: Collection[int] = (), anywhere: bool = False) -> int:
    """SIGKILL an instance's whole process tree; returns how many processes were signalled.

    Safe when everything is already gone, and never signals a reused pid. It
    walks /proc, so call it off the event loop. `workers`: pids of live
    workers, which the token sweep need not read (only orphans can match). `child.pidfd`, when set, must
    stay open until this returns. `anywhere`: look for the token in all of /proc, not only among our
    children (an adopted worker's: its children are not re-parented to us).
    """
    signalled: set[int] = set()
    if child.cgroup is not None:
        in_cgroup = kill_cgroup(child.cgroup)
        if in_cgroup is not None:
            # The cgroup holds every descendant forked after the child was moved
            # in. One forked before that (the daemon descheduled between Popen
            # and the move, a fast binary) is still in its process group or,
            # if it setsid'ed and its parent exited, an orphan of ours with the
            # token: both are cheap to reach, so the full /proc walks are skipped.
            # So is the walk for an adopted worker's token (`anywhere`): its
            # children are in its cgroup too, wherever they were re-parented;
            # a walk per exit made the shutdown of 4,900 adopted workers take 15 s.
            return len(in_cgroup | _kill_process_group(child, count=False) | _kill_token_holders(token, workers))
    if anywhere and token:
        signalled |= kill_leftovers((token,), ())
    for _ in range(_SWEEP_PASSES):
        found = (
            _kill_leader(child)
            | _kill_process_group(child)
            | _kill_descendants(child)
            | _kill_token_holders(token, workers)
        )
        if found <= signalled:
            break
        signalled |= found
    return len(signalled)


def kill_all_descendants() -> int:
    """SIGKILL every live descendant of the calling process (shutdown's last sweep)."""
    import psutil

    signalled: set[int] = set()
    for _ in range(_SWEEP_PASSES):
        found = _kill_live(_children(psutil.Process()))
        if found <= signalled:
            break
        signalled |= found
    return len(signalled)


def _kill_leader(child: Child) -> set[int]:
    if child.pidfd is not None:
        signalled = _kill_by_pidfd(child.pidfd, child.pid)
        if signalled is not None:
            return signalled
    leader = process_if_same(child.pid, child.create_time)
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
        if is_zombie(pid):
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


def _kill_process_group(child: Child, count: bool = True) -> set[int]:
    # A worker leads its own session, so its pgid is its pid; killpg reaches
    # every member that did not setsid/setpgid away, even after the leader has
    # died. The kernel does not reuse a number still in use as a pgid, so a
    # group with members left is ours. But once the group is empty and the
    # leader reaped, the number may belong to a new process and its group:
    # skip when a process with that pid exists and is not our worker.
    import psutil

    pgid = child.pid
    if os.path.exists(f"/proc/{pgid}") and process_if_same(pgid, child.create_time) is None:
        return set()
    # Who is in it takes a walk of all /proc; `count` False (its cgroup has told who was signalled)
    # skips it: a walk per exit made the shutdown of thousands of workers O(N^2).
    members = {pid for pid in psutil.pids() if (proc_stat(pid) or ("", 0, 0))[1] == pgid} if count else set()
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        return set()
    return {pid for pid in members if not is_zombie(pid)}


def _kill_descendants(child: Child) -> set[int]:
    leader = process_if_same(child.pid, child.create_time)
    return _kill_live(_children(leader)) if leader is not None else set()


def _kill_token_holders(token: str | None, skip: Collection[int] = ()) -> set[int]:
    # We are a subreaper: a grandchild that double-forked or setsid'ed away
    # from the worker becomes our child when its parent exits. Its environment
    # (as it was at exec) still holds the token of the spawn it came from.
    if not token:
        return set()
    found: set[int] = set()
    for proc in _direct_children(skip):
        if environ_of(proc.pid).get(protocol.ENV_TOKEN) == token:
            found |= _kill_live([proc, *_children(proc)])
    return found


def _direct_children(skip: Collection[int] = ()) -> list[psutil.Process]:
    """Our children, from /proc/self/task/*/children (one small read per thread,
    where psutil would walk all of /proc); psutil where that file is missing."""
    import psutil

    pids: set[int] = set()
    try:
        for task in os.listdir("/proc/self/task"):
            with open(f"/proc/self/task/{task}/children") as f:
                pids.update(int(pid) for pid in f.read().split())
    except (OSError, ValueError):
        return _children_once(psutil.Process())
    procs = []
    for pid in [pid for pid in pids if pid not in skip]:  # `skip` may be a live view of the table: look up only
        try:
            procs.append(psutil.Process(pid))
        except psutil.Error:
            continue
    return procs


def _children_once(proc: psutil.Process) -> list[psutil.Process]:
    import psutil

    try:
        return proc.children()
    except psutil.Error:
        return []


def _kill_live(procs: Iterable[psutil.Process]) -> set[int]:
    """SIGKILL each process that is still the one listed (not exited, not reused)."""
    import psutil

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
    import psutil

    try:
        return proc.children(recursive=True)
    except psutil.Error:
        return []


def kill_leftovers(tokens: Collection[str], cgroups: Iterable[str]) -> set[int]:
    """Everything that instances whose main process died while no daemon ran left behind: their
    cgroups, and every process carrying one of their tokens (a forked child re-parented away from
    us, to init, is nobody's child here: only its environment still names its spawn).

    One pass over /proc, at start only, before the slots are restarted.
    """
    import psutil

    killed: set[int] = set()
    for path in cgroups:
        killed |= kill_cgroup(Path(path)) or set()
    wanted = set(tokens)
    if not wanted:
        return killed
    me = os.getpid()
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit() or int(entry.name) == me:
            continue
        if environ_of(int(entry.name)).get(protocol.ENV_TOKEN) in wanted:
            try:
                proc = psutil.Process(int(entry.name))
            except psutil.Error:
                continue
            killed |= _kill_live([proc, *_children(proc)])
    return killed

