"""Where things live in a state dir, and whether a daemon holds it.

Shared by the daemon and the CLI, so it imports nothing heavy.
"""

from __future__ import annotations

import fcntl
import os
import re
import struct
from pathlib import Path

# struct flock on Linux: short l_type, short l_whence, off_t l_start, off_t l_len, pid_t l_pid
_FLOCK = "hhqqi4x"  # native alignment adds the padding after l_whence


DEFAULT_STATE_DIR = ".supervise"
_SECTION = re.compile(r"^\s*\[\s*([^\]]*?)\s*\]\s*(#.*)?$")
_STATE_DIR = re.compile(r'^\s*state_dir\s*=\s*"([^"\\]*)"\s*(#.*)?$')


class BadConfig(Exception):
    """Base of config errors, so the CLI can catch them without importing the loader."""


def locate_state_dir(config: str | os.PathLike[str]) -> Path:
    """The state dir of the daemon started with ``config``, found cheaply.

    Every control command needs this before anything else, and the full
    loader (tomllib, validation) costs more than the whole command should. A
    plain ``state_dir = "..."`` under ``[supervise]``, or none at all, is read
    here; anything fancier goes to ``config.locate_state_dir``.
    """
    try:
        text = Path(config).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        text = None
    if text is not None:
        found = _scan_state_dir(text)
        if found is not None:
            base = Path(os.path.abspath(config)).parent
            return Path(os.path.abspath(base / os.path.expanduser(found)))
    from supervise.config import locate_state_dir as full

    return full(config)


def _scan_state_dir(text: str) -> str | None:
    if "state_dir" not in text:
        return DEFAULT_STATE_DIR
    section, value = None, None
    for line in text.splitlines():
        if (header := _SECTION.match(line)) is not None:
            section = header.group(1)
        elif "state_dir" in line:
            match = _STATE_DIR.match(line)
            if match is None or section != "supervise" or value is not None:
                return None  # a form this scanner does not read: let tomllib decide
            value = match.group(1)
    return value or (DEFAULT_STATE_DIR if value is None else None)


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
