"""Listening sockets the daemon binds once and hands to every instance (systemd's protocol).

Bound by the daemon, a socket outlives every worker: while instances die
and restart, the kernel's accept queue holds new connections instead of
refusing them. Workers receive them as fds 3, 4, ... with LISTEN_FDS,
LISTEN_PID and LISTEN_FDNAMES, so stock servers that accept systemd sockets
work unchanged.

Each socket is set up by its ListenOptions (systemd's socket-unit settings):
TCP_NODELAY, the accept queue's length, SO_REUSEPORT, and a unix socket
file's mode and owner. A reload that changes them applies what the kernel
lets change on a live socket; see `Listeners.bind`.
"""

from __future__ import annotations

import errno
import fcntl
import grp
import os
import pwd
import shutil
import socket
import sys
from pathlib import Path

from supervise.config.model import ListenOptions
from supervise.config.units import Invalid, ListenAddress, TcpAddress, UnixAddress, parse_listen_address

FIRST_FD = 3  # SD_LISTEN_FDS_START
HIGH_FD = 100  # where the daemon keeps its copies, clear of the 3.. a worker receives them at
DEFAULT = ListenOptions()
BACKLOG = DEFAULT.backlog
UNIX_MODE = 0o666  # a unix socket file's mode when `mode` is not given: systemd's SocketMode= default


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
        self._options: dict[str, ListenOptions | None] = {}  # as applied; None: taken over, not known
        # bash, not sh: dash (Debian's sh) cannot redirect fds above 9.
        self._bash = shutil.which("bash")

    def bind(self, address: str, options: ListenOptions = DEFAULT) -> list[str]:
        """Bind and listen on `address` (as written in the config) set up by `options`, once;
        ListenError says why not.

        Bound already (a respawn, a reload, a socket taken over), with other options: what
        can change on a live socket is applied to it — TCP_NODELAY (for connections accepted
        from then on), the backlog (listen() again), a unix socket file's mode and owner. What
        cannot is returned, one sentence each, for the log: SO_REUSEPORT is fixed once a
        socket is bound, so changing it takes removing the address from the config, a reload,
        then adding it back. A ListenError on a live socket leaves it as it was.
        """
        if address in self._socks and self._options[address] == options:
            return []  # every spawn passes here: nothing to do, nothing to parse
        try:
            parsed = parse_listen_address(address)
        except Invalid as exc:  # from a checkpoint, say: the config checks its own
            raise ListenError(f"cannot listen on {address}: {exc}") from None
        if address in self._socks:
            notes = _update(self._socks[address], address, parsed, options)
            self._options[address] = options
            return notes
        try:
            sock = _bind(address, parsed, options)
        except OSError as exc:
            raise ListenError(f"cannot listen on {address}: {exc.strerror or exc}") from None
        # A duplicate at fd >= 100 is what workers get: the wrapper moves it
        # to 3.. without ever overwriting another source fd on the way.
        self._fds[address] = fcntl.fcntl(sock.fileno(), fcntl.F_DUPFD_CLOEXEC, HIGH_FD)
        self._socks[address] = sock
        self._options[address] = options
        return []

    def take_over(self, pidfd: int, pid: int, addresses: tuple[str, ...]) -> list[str]:
        """Copy the sockets of `addresses` out of a live worker a previous daemon started.

        Those sockets are still open in the workers (fds 3, 4, ...), with
        their accept queues; binding the addresses again would fail, or with
        SO_REUSEPORT split the traffic between two queues. pidfd_getfd
        (Linux 5.6) duplicates the very socket instead. Returns the addresses
        taken; the others are bound afresh by the caller.

        A socket taken over keeps the options it was bound with; the next
        `bind` of its address applies the config's as on a reload (its
        SO_REUSEPORT, read from the socket, cannot change).
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
                self._options[address] = None
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
            self._options.pop(address, None)
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


def _bind(text: str, address: ListenAddress, options: ListenOptions) -> socket.socket:
    """A new socket listening on `address`, set up by `options`; ListenError or OSError when not."""
    if isinstance(address, UnixAddress):
        return _bind_unix(text, address, options)
    family, kind, proto, _, sockaddr = socket.getaddrinfo(address.host, address.port, type=socket.SOCK_STREAM)[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if options.reuseport:  # before bind(): it is what lets several sockets bind one port
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        # On the listener: Linux copies it to every socket accept() returns, so
        # a worker's connections have it without the worker knowing.
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, int(options.nodelay))
        sock.bind(sockaddr)
        sock.listen(options.backlog)
    except OSError:
        sock.close()  # now, not whenever it is collected: a reload may retry a port in use
        raise
    return sock


def _bind_unix(text: str, address: UnixAddress, options: ListenOptions) -> socket.socket:
    uid, gid = _owner(text, options)  # an unknown user: refused before anything is made
    mode = UNIX_MODE if options.mode is None else options.mode
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    made = False
    try:
        if not address.abstract:
            Path(address.path).unlink(missing_ok=True)  # a stale socket file from an earlier daemon
            # bind() creates the file with the socket inode's mode less the umask: set
            # first, it keeps the file from ever being more open than `mode`, whatever the
            # daemon's umask; the chmod after bind() then adds what the umask took away.
            os.fchmod(sock.fileno(), mode)
        sock.bind(address.sockaddr)
        made = not address.abstract
        if made:
            _set_file(text, address.path, mode, uid, gid)
        # listen() last: until then a connect() is refused, so nobody gets in
        # through the file before its owner and mode are final.
        sock.listen(options.backlog)
    except BaseException:
        sock.close()
        if made:
            Path(address.path).unlink(missing_ok=True)
        raise
    return sock


def _update(sock: socket.socket, text: str, address: ListenAddress, options: ListenOptions) -> list[str]:
    """Apply `options` to a socket already listening on `address`; what cannot change, as sentences."""
    notes = []
    try:
        if isinstance(address, UnixAddress):
            if not address.abstract:
                mode = UNIX_MODE if options.mode is None else options.mode
                _set_file(text, address.path, mode, *_owner(text, options))
        else:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, int(options.nodelay))
            reuseport = bool(sock.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT))
            if reuseport != options.reuseport:
                notes.append(f"{text}: reuseport stays {'on' if reuseport else 'off'}: a bound socket cannot "
                             f"change it; remove the address from the config, reload, then add it back")
        # Linux takes listen() again on a listening socket as a new backlog for its queue.
        sock.listen(options.backlog)
    except OSError as exc:
        raise ListenError(f"cannot listen on {text}: {exc.strerror or exc}") from None
    return notes


def _owner(text: str, options: ListenOptions) -> tuple[int, int]:
    """The uid and gid a unix socket file gets (-1: left as created), from names or numbers.

    As systemd's SocketUser=: an owner without a group gives the owner's primary group.
    """
    uid = gid = -1
    if options.owner is not None:
        try:
            entry = pwd.getpwnam(options.owner)
            uid, gid = entry.pw_uid, entry.pw_gid
        except KeyError:
            if not options.owner.isascii() or not options.owner.isdigit():
                raise ListenError(f"cannot listen on {text}: owner {options.owner!r}: no such user") from None
            uid = int(options.owner)
            gid = _primary_group(uid)
    if options.group is not None:
        try:
            gid = grp.getgrnam(options.group).gr_gid
        except KeyError:
            if not options.group.isascii() or not options.group.isdigit():
                raise ListenError(f"cannot listen on {text}: group {options.group!r}: no such group") from None
            gid = int(options.group)
    return uid, gid


def _primary_group(uid: int) -> int:
    try:
        return pwd.getpwuid(uid).pw_gid
    except KeyError:  # a uid with no passwd entry (a container's): its group stays as created
        return -1


def _set_file(text: str, path: str, mode: int, uid: int, gid: int) -> None:
    """Give the socket file its owner, then its mode (chown first: it may clear mode bits)."""
    if uid != -1 or gid != -1:
        try:
            os.chown(path, uid, gid)
        except OSError as exc:
            whom = ", ".join(f"{key} {value}" for key, value in (("uid", uid), ("gid", gid)) if value != -1)
            hint = " (only root may give a file away)" if exc.errno == errno.EPERM and os.geteuid() != 0 else ""
            raise ListenError(f"cannot listen on {text}: cannot give the socket file to {whom}: "
                              f"{exc.strerror or exc}{hint}") from None
    os.chmod(path, mode)


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
