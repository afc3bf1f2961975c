"""Per-instance cgroup v2 leaves: the one container a process cannot fork or setsid out of.

Detected, never assumed: where no writable cgroup2 hierarchy exists the
daemon goes without, and killing.kill_tree falls back to process groups and
the token sweep.
"""

from __future__ import annotations

import os
import re
import select
import signal
import time
from collections.abc import Iterable
from pathlib import Path

from supervise.frozen import frozen

__all__ = ["Cgroups", "cgroup_pids", "kill_cgroup", "owner_name"]

_CGROUP_NAME_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]")
_SWEEP_PASSES = 5


@frozen
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
                cgroups = cls(root)
                cgroups.remove_stale()
                return cgroups
            _rmdir_quietly(root)
        return None

    def create(self, name: str) -> Path | None:
        """A new, empty leaf for one spawn of instance `name`; None on failure.

        The caller removes a leaf once its spawn has exited and been swept
        (`remove`), and `close` takes whatever is left, so leaves do not pile
        up; no directory listing here, which would make spawning N instances
        cost O(N^2).
        """
        base = _CGROUP_NAME_UNSAFE.sub("_", name)
        for _ in range(8):
            path = self.root / f"{base}.{os.urandom(3).hex()}"
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
        # What it forked before the move (a shell starting a helper in its
        # first microseconds) is still outside: bring it in, so that memory
        # sampling and the kill see the whole tree through the cgroup. Forks
        # after the move land inside by themselves.
        for early in _early_descendants(pid):
            try:
                _write(path / "cgroup.procs", str(early))
            except OSError:
                continue  # exited meanwhile; the kill's process-group sweep covers the rest
        return path

    def remove(self, path: str | Path) -> None:
        """Remove the cgroup at `path` (and any sub-cgroups) if it is empty; never raises.

        A leaf of an earlier daemon's directory (an adopted worker's) goes too,
        and that directory with its last leaf."""
        path = Path(path)
        if self.root in path.parents:
            _rmdir_tree(path)
        elif self._earlier(path.parent):
            _rmdir_tree(path)
            _rmdir_quietly(path.parent)

    def remove_emptied(self, paths: Iterable[str | Path], timeout: float = 1.0) -> None:
        """Remove cgroups just killed (the shutdown's adopted workers'), waiting up to `timeout` in all
        for their processes to be gone; never raises (one still populated then is left to the next
        daemon's ``remove_stale``)."""
        deadline = time.monotonic() + timeout
        for path in paths:
            _wait_unpopulated(Path(path), deadline)
            self.remove(path)

    def remove_stale(self) -> None:
        """Remove what earlier daemons (killed, or exited keeping their workers) left that is empty now;
        a directory still holding an adopted worker stays until it is empty."""
        try:
            siblings = list(self.root.parent.iterdir())
        except OSError:
            return
        namespace = _pid_namespace()
        for sibling in siblings:
            pid, _, ns = sibling.name.removeprefix("supervise-").partition(".")
            # Only those of daemons that are gone: a live one may be between creating a leaf and
            # using it. Whether one is gone can be told only from the same pid namespace.
            if self._earlier(sibling) and pid.isdigit() and ns == namespace and not os.path.exists(f"/proc/{pid}"):
                _rmdir_tree(sibling)

    def _earlier(self, path: Path) -> bool:
        return path.parent == self.root.parent and path.name.startswith("supervise-") and path != self.root

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


def kill_cgroup(path: str | Path) -> set[int] | None:
    """SIGKILL all of a cgroup and its sub-cgroups; the pids it held, or None on failure."""
    path = Path(path)
    if not path.is_dir():
        return None
    pids = cgroup_pids(path)
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
            pids = cgroup_pids(path) - signalled
            if not pids:
                break
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGKILL)
                    signalled.add(pid)
                except ProcessLookupError:
                    pass
    finally:
        if frozen:
            _try_write(path / "cgroup.freeze", "0")
    return signalled if path.is_dir() else None


def cgroup_pids(path: str | Path) -> set[int]:
    """Every process in the cgroup at `path` and the cgroups below it (empty where unreadable)."""
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


def owner_name() -> str:
    """Our cgroup directory's name: pid and pid namespace, so that two daemons that are each
    PID 1 of their own container never share one, and a stale one is told from a live one."""
    return f"{os.getpid()}.{_pid_namespace()}"


def _pid_namespace() -> str:
    try:
        return str(os.stat("/proc/self/ns/pid").st_ino)
    except OSError:
        return "0"


def _early_descendants(pid: int, limit: int = 64) -> list[int]:
    """Descendants of `pid` by the kernel's children lists, breadth first, at most `limit`."""
    found: list[int] = []
    queue = [pid]
    while queue and len(found) < limit:
        parent = queue.pop(0)
        try:
            tasks = os.listdir(f"/proc/{parent}/task")
        except OSError:
            continue
        for task in tasks:
            try:
                with open(f"/proc/{parent}/task/{task}/children") as f:
                    children = [int(c) for c in f.read().split()]
            except (OSError, ValueError):
                continue
            found += children
            queue += children
    return found[:limit]

