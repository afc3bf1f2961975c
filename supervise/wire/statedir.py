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

    def log_file(self, app: str, index: int) -> Path:
        return self.logs / f"{app}.{index}.log"

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
