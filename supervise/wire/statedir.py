"""The state dir: the rendezvous of a daemon and its clients.

The daemon holds an exclusive lock on it for its whole life and serves its
sockets there; a client finds both by path. Both sides use this module, so
it imports nothing heavy.
"""

from __future__ import annotations

import fcntl
import os
import struct
from pathlib import Path

# struct flock on Linux: short l_type, short l_whence, off_t l_start, off_t l_len, pid_t l_pid
_FLOCK = "hhqqi4x"  # native alignment adds the padding after l_whence


class StatePaths:
    """Where the daemon keeps its lock, sockets and logs."""

    __slots__ = ("root",)

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    @property
    def lock(self) -> Path:
        return self.root / "daemon.lock"

    @property
    def control_socket(self) -> Path:
        return self.root / "control.sock"

    @property
    def heartbeat_socket(self) -> Path:
        return self.root / "heartbeat.sock"

    @property
    def checkpoint(self) -> Path:
        return self.root / "checkpoint.json"

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    def log_file(self, app: str, index: int, spare: bool = False) -> Path:
        """An instance's log; a spare's (``app.spare-N.log``) holds what it wrote before its promotion."""
        return self.logs / (f"{app}.spare-{index}.log" if spare else f"{app}.{index}.log")

    def lock_holder(self) -> int | None:
        """The pid of the live daemon holding this state dir, or None.

        F_GETLK asks the kernel who holds the lock without taking it, so a CLI
        probing at the moment a daemon starts can never make it fail to lock.
        """
        try:
            fd = os.open(self.lock, os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            return None
        try:
            query = struct.pack(_FLOCK, fcntl.F_WRLCK, os.SEEK_SET, 0, 0, 0)
            answer = fcntl.fcntl(fd, fcntl.F_GETLK, query)
            l_type, _, _, _, l_pid = struct.unpack(_FLOCK, answer)
            return None if l_type == fcntl.F_UNLCK else l_pid
        except OSError:
            return None
        finally:
            os.close(fd)


class AlreadyRunning(Exception):
    """Another daemon holds the state dir."""


def lock(paths: StatePaths) -> int:
    """Hold an exclusive POSIX lock on the state dir for the daemon's whole life.

    A lock, not a pid file: the kernel drops it when the daemon dies however
    it dies, so a stale file never blocks a restart, and the CLI can ask
    (F_GETLK) whether a daemon is alive without taking the lock itself.
    """
    paths.root.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(paths.root, 0o700)
    fd = os.open(paths.lock, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        holder = paths.lock_holder()
        os.close(fd)
        who = f"pid {holder}" if holder else "a process outside this pid namespace"
        raise AlreadyRunning(
            f"another supervise daemon ({who}) is running on {paths.root}; "
            "use `supervise status` to talk to it or `supervise shutdown` to stop it"
        ) from None
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()}\n".encode())
    return fd
