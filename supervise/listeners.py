"""Listening sockets the daemon binds once and hands to every instance (systemd's protocol).

Bound by the daemon, a socket outlives every worker: while instances die
and restart, the kernel's accept queue holds new connections instead of
refusing them. Workers receive them as fds 3, 4, ... with LISTEN_FDS,
LISTEN_PID and LISTEN_FDNAMES, so stock servers that accept systemd sockets
work unchanged.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import socket
import sys
from pathlib import Path

FIRST_FD = 3  # SD_LISTEN_FDS_START
HIGH_FD = 100  # where the daemon keeps its copies, clear of the 3.. a worker receives them at
BACKLOG = 1024


class ListenError(Exception):
    """A listen address could not be bound; the message names it and says why."""


_PYTHON_WRAPPER = """
import os, sys
fds = [int(fd) for fd in sys.argv[1].split(",")]
for target, fd in enumerate(fds, 3):
    os.dup2(fd, target)
    os.close(fd)
os.environ["LISTEN_PID"] = str(os.getpid())
os.execvp(sys.argv[2], sys.argv[2:])
"""


class Listeners:
    """The daemon's bound sockets, by address as written in the config."""

    def __init__(self) -> None:
        self._socks: dict[str, socket.socket] = {}
        self._fds: dict[str, int] = {}
        # bash, not sh: dash (Debian's sh) cannot redirect fds above 9.
        self._bash = shutil.which("bash")

    def bind(self, address: str) -> None:
        if address in self._socks:
            return
        try:
            sock = _bind(address)
        except OSError as exc:
            raise ListenError(f"cannot listen on {address}: {exc.strerror or exc}") from None
        # A duplicate at fd >= 100 is what workers get: the wrapper moves it
        # to 3.. without ever overwriting another source fd on the way.
        self._fds[address] = fcntl.fcntl(sock.fileno(), fcntl.F_DUPFD_CLOEXEC, HIGH_FD)
        self._socks[address] = sock

    def fds(self, addresses: tuple[str, ...]) -> tuple[int, ...]:
        return tuple(self._fds[a] for a in addresses)

    def close(self) -> None:
        self.close_unused(set())

    def close_unused(self, keep: set[str]) -> list[str]:
        """Close every socket whose address is not in `keep` (a reload moved an app
        elsewhere): a bound socket nobody accepts on would queue clients forever."""
        closed = [address for address in self._socks if address not in keep]
        for address in closed:
            os.close(self._fds.pop(address))
            self._socks.pop(address).close()
            if address.startswith("unix:/"):
                Path(address[5:]).unlink(missing_ok=True)
        return closed


    def launcher(self, fds: tuple[int, ...]) -> tuple[str, ...]:
        """What to run the command through (it follows as arguments) so that
        LISTEN_PID is the worker's own pid.

        systemd sets LISTEN_PID after fork; Popen cannot (a preexec_fn would
        disable vfork), so bash does it: `$$` is its pid, which exec keeps.
        The same exec moves each passed fd to 3, 4, ... and closes the
        originals. Without bash, a Python one-liner does the same, slower.
        """
        if self._bash is None:
            return (sys.executable, "-c", _PYTHON_WRAPPER, ",".join(map(str, fds)))
        moves = " ".join(f"{FIRST_FD + i}<&{fd} {fd}<&-" for i, fd in enumerate(fds))
        script = f'LISTEN_PID=$$; export LISTEN_PID; exec "$@" {moves}'
        return (self._bash, "-c", script, "supervise-launcher")


def environment(addresses: tuple[str, ...]) -> dict[str, str]:
    # Names may not contain ':' (the separator): "127.0.0.1:8080" -> "127.0.0.1_8080".
    names = ":".join(a.replace(":", "_") for a in addresses)
    return {"LISTEN_FDS": str(len(addresses)), "LISTEN_FDNAMES": names}


def _bind(address: str) -> socket.socket:
    if address.startswith("unix:"):
        path = address[5:]
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        if path.startswith("@"):
            path = "\0" + path[1:]  # Linux abstract namespace
        else:
            Path(path).unlink(missing_ok=True)  # a stale socket file from an earlier daemon
        sock.bind(path)
    else:
        host, _, port = address.rpartition(":")
        host = host.strip("[]")
        family, kind, proto, _, sockaddr = socket.getaddrinfo(host, int(port), type=socket.SOCK_STREAM)[0]
        sock = socket.socket(family, kind, proto)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(sockaddr)
    sock.listen(BACKLOG)
    return sock
