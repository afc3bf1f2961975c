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

from supervise.config.units import Invalid, ListenAddress, TcpAddress, UnixAddress, parse_listen_address

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
        """Bind and listen on `address` (as written in the config), once; ListenError says why not."""
        if address in self._socks:
            return
        try:
            sock = _bind(parse_listen_address(address))
        except Invalid as exc:  # from a checkpoint, say: the config checks its own
            raise ListenError(f"cannot listen on {address}: {exc}") from None
        except OSError as exc:
            raise ListenError(f"cannot listen on {address}: {exc.strerror or exc}") from None
        # A duplicate at fd >= 100 is what workers get: the wrapper moves it
        # to 3.. without ever overwriting another source fd on the way.
        self._fds[address] = fcntl.fcntl(sock.fileno(), fcntl.F_DUPFD_CLOEXEC, HIGH_FD)
        self._socks[address] = sock

    def take_over(self, pidfd: int, pid: int, addresses: tuple[str, ...]) -> list[str]:
        """Copy the sockets of `addresses` out of a live worker a previous daemon started.

        Those sockets are still open in the workers (fds 3, 4, ...), with
        their accept queues; binding the addresses again would fail, or with
        SO_REUSEPORT split the traffic between two queues. pidfd_getfd
        (Linux 5.6) duplicates the very socket instead. Returns the addresses
        taken; the others are bound afresh by the caller.
        """
        taken = []
        for position, address in enumerate(addresses):
            if address in self._socks:
                continue
            try:
                wanted = parse_listen_address(address)
            except Invalid:  # a damaged checkpoint: nothing to look for
                continue
            sock = _socket_of(pidfd, pid, wanted, FIRST_FD + position)
            if sock is not None:
                self._fds[address] = fcntl.fcntl(sock.fileno(), fcntl.F_DUPFD_CLOEXEC, HIGH_FD)
                self._socks[address] = sock
                taken.append(address)
        return taken

    def fds(self, addresses: tuple[str, ...]) -> tuple[int, ...]:
        """The daemon's copies of the bound sockets, in the order a worker gets them (3, 4, ...)."""
        return tuple(self._fds[a] for a in addresses)

    def close(self, unlink: bool = True) -> None:
        """Close every socket; `unlink=False` leaves unix socket files to the workers that still serve on them."""
        self.close_unused(set(), unlink)

    def close_unused(self, keep: set[str], unlink: bool = True) -> list[str]:
        """Close every socket whose address is not in `keep` (a reload moved an app
        elsewhere): a bound socket nobody accepts on would queue clients forever."""
        closed = [address for address in self._socks if address not in keep]
        for address in closed:
            os.close(self._fds.pop(address))
            self._socks.pop(address).close()
            if unlink:
                _unlink_socket_file(address)
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
    """LISTEN_FDS and LISTEN_FDNAMES for a worker given `addresses` (LISTEN_PID: see `launcher`)."""
    # Names may not contain ':' (the separator): "127.0.0.1:8080" -> "127.0.0.1_8080".
    names = ":".join(a.replace(":", "_") for a in addresses)
    return {"LISTEN_FDS": str(len(addresses)), "LISTEN_FDNAMES": names}


def _bind(address: ListenAddress) -> socket.socket:
    sockaddr: str | tuple[object, ...]  # a path, or what getaddrinfo gave for the family
    if isinstance(address, UnixAddress):
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sockaddr = address.sockaddr
        if not address.abstract:
            Path(address.path).unlink(missing_ok=True)  # a stale socket file from an earlier daemon
    else:
        family, kind, proto, _, sockaddr = socket.getaddrinfo(address.host, address.port,
                                                              type=socket.SOCK_STREAM)[0]
        sock = socket.socket(family, kind, proto)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(sockaddr)
        sock.listen(BACKLOG)
    except OSError:
        sock.close()  # now, not whenever it is collected: a reload may retry a port in use
        raise
    return sock


def _unlink_socket_file(address: str) -> None:
    try:
        parsed = parse_listen_address(address)
    except Invalid:
        return
    if isinstance(parsed, UnixAddress) and not parsed.abstract:
        Path(parsed.path).unlink(missing_ok=True)


def _pidfd_getfd(pidfd: int, fd: int) -> int | None:
    """A duplicate of another process's `fd` (needs ptrace rights over it); None when refused."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    new = libc.syscall(438, pidfd, fd, 0)  # SYS_pidfd_getfd: 438 on every architecture's unified table
    return new if new >= 0 else None


def _socket_of(pidfd: int, pid: int, address: ListenAddress, expected_fd: int) -> socket.socket | None:
    """The listening socket for `address` among `pid`'s fds, the expected one first."""
    try:
        others = sorted(int(fd) for fd in os.listdir(f"/proc/{pid}/fd") if int(fd) != expected_fd)
    except (OSError, ValueError):
        others = []
    for fd in (expected_fd, *others):
        new = _pidfd_getfd(pidfd, fd)
        if new is None:
            continue
        try:
            sock = socket.socket(fileno=new)
        except OSError:
            os.close(new)
            continue
        if _serves(sock, address):
            sock.set_inheritable(False)
            return sock
        sock.close()
    return None


def _serves(sock: socket.socket, address: ListenAddress) -> bool:
    """`sock` is listening on `address`."""
    try:
        if not sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN):
            return False
        name = sock.getsockname()
    except OSError:
        return False
    match address:
        case UnixAddress():
            if isinstance(name, bytes):  # an abstract name that is not valid UTF-8
                name = os.fsdecode(name)
            return isinstance(name, str) and name == address.sockaddr
        case TcpAddress(host, port):
            if not isinstance(name, tuple) or name[1] != port:
                return False
            try:
                wanted_ip = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][4][0]
            except OSError:
                return False
            return bool(name[0] == wanted_ip)
