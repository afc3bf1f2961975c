"""Where things live in a state dir, and whether a daemon holds it.

Shared by the daemon and the CLI, so it imports nothing heavy.
"""

from __future__ import annotations

import fcntl
import os
import struct
from dataclasses import dataclass
from pathlib import Path

# struct flock on Linux: short l_type, short l_whence, off_t l_start, off_t l_len, pid_t l_pid
_FLOCK = "hhqqi4x"  # native alignment adds the padding after l_whence


@dataclass(frozen=True, slots=True)
class StatePaths:
    root: Path

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
