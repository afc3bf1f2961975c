"""Per-instance sd_notify sockets: ``readiness = "notify"`` for servers that speak systemd's protocol.

gunicorn, many Go, Rust and C servers, and shell scripts through
``systemd-notify`` tell their service manager they are ready by sending a
datagram of ``KEY=VALUE`` lines to the AF_UNIX socket named by
``$NOTIFY_SOCKET`` (sd_notify(3)). The daemon plays systemd's part for each
instance with this readiness: every spawn gets a socket of its own, so a
message is attributed by the socket it arrives on, never by parsing who
sent it, and one instance cannot speak for another.

This is not ``sdnotify.py``, which is the daemon's own voice towards systemd;
that module removes systemd's ``NOTIFY_SOCKET`` from what workers inherit,
and the daemon puts this module's address there instead.

    sockets = NotifySockets(loop, state_dir / "notify", on_message, log)
    sockets.accept_pid = lambda spawn_id, pid: pid in tree_of(spawn_id)
    env["NOTIFY_SOCKET"] = sockets.open(spawn_id, "web:0", owner_uid=uid, owner_gid=gid)
    ...
    sockets.close(spawn_id)                         # the spawn is gone
    sockets.reopen(spawn_id, "web:0", old_address)  # adopted after a daemon restart

What a sender can do to the daemon is bounded: a datagram is read whole or
dropped (over 4096 bytes, like systemd), file descriptors passed along
(``systemd-notify``'s ``BARRIER=1``, ``FDSTORE=1``) are closed at once,
garbage is counted and dropped, and a socket is read at most ``BATCH``
datagrams per loop turn, so a flood cannot starve the loop.
"""

from __future__ import annotations

import array
import asyncio
import os
import re
import socket
import stat
import struct
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from supervise.frozen import frozen
from supervise.runtime import log as log_module

__all__ = ["BATCH", "MAX_DATAGRAM", "SUN_PATH_MAX", "NotifyCounters", "NotifyMessage", "NotifySockets",
           "parse_message"]

MAX_DATAGRAM = 4096
"""Longest datagram read; longer ones are dropped whole. systemd's limit (PIPE_BUF), so what
systemd accepts we accept."""

SUN_PATH_MAX = 107
"""Longest filesystem path a client can connect to: sun_path is 108 bytes with its NUL
(libsystemd and most clients insist on the NUL). Longer: an abstract socket instead."""

BATCH = 64
"""Datagrams read from one socket per loop wakeup. add_reader is level-triggered, so
what is left is read on the next turn, after other work had its chance."""

MAX_FDS = 16
"""File descriptors taken (and closed) per datagram; the kernel closes any beyond."""

_UCRED = struct.Struct("3i")  # struct ucred: pid, uid, gid
_ANCILLARY = socket.CMSG_SPACE(_UCRED.size) + socket.CMSG_SPACE(MAX_FDS * array.array("i").itemsize)
_NAME_UNSAFE = re.compile(r"[^A-Za-z0-9_.:-]")
_NAME_MAX = 48


@frozen(kw_only=True)
class NotifyMessage:
    """One datagram's worth of what supervise acts on. Fields not in the datagram keep their defaults.

    ``status`` is None when the datagram had no ``STATUS=``, and ``""`` when it cleared it.
    ``watchdog`` is a ``WATCHDOG=1`` ping (``WATCHDOG=trigger``, systemd's "kill me", is not).
    ``sender_pid`` comes from the kernel (SCM_CREDENTIALS), not from the message: 0 when the
    sender is in a pid namespace we cannot see. ``MAINPID=`` is the sender's claim only.
    """

    ready: bool = False
    status: str | None = None
    watchdog: bool = False
    stopping: bool = False
    reloading: bool = False
    mainpid: int | None = None
    errno: int | None = None
    sender_pid: int = 0

    @property
    def empty(self) -> bool:
        """Nothing supervise acts on (only unknown keys, ``BARRIER=1``, ``READY=0``...)."""
        return not (self.ready or self.watchdog or self.stopping or self.reloading) and \
            self.status is None and self.mainpid is None and self.errno is None


def parse_message(data: bytes, sender_pid: int = 0) -> NotifyMessage | None:
    """A datagram's lines as a NotifyMessage; None when it is not text (NUL bytes, bad UTF-8).

    Lenient where systemd is: empty lines, lines without ``=`` and unknown keys are
    ignored; the last of a repeated key wins; values are compared exactly (``READY=1``).
    """
    if b"\0" in data:
        return None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return None
    ready = watchdog = stopping = reloading = False
    status: str | None = None
    mainpid: int | None = None
    error: int | None = None
    for line in text.split("\n"):
        key, sep, value = line.partition("=")
        if not sep:
            continue
        match key:
            case "READY":
                ready = value == "1"
            case "WATCHDOG":
                watchdog = value == "1"
            case "STOPPING":
                stopping = value == "1"
            case "RELOADING":
                reloading = value == "1"
            case "STATUS":
                status = value
            case "MAINPID":
                mainpid = _number(value, minimum=1)
            case "ERRNO":
                error = _number(value, minimum=0)
    return NotifyMessage(ready=ready, status=status, watchdog=watchdog, stopping=stopping,
                         reloading=reloading, mainpid=mainpid, errno=error, sender_pid=sender_pid)


@dataclass(slots=True)
class NotifyCounters:
    """Every datagram read lands in exactly one of these (``status --json`` may show them)."""

    accepted: int = 0  # handed to on_message
    rejected: int = 0  # accept_pid said no: from a process outside the instance
    malformed: int = 0  # not text
    oversize: int = 0  # longer than MAX_DATAGRAM, dropped whole
    ignored: int = 0  # well-formed, nothing to act on (BARRIER=1, unknown keys)
    internal_errors: int = 0  # accept_pid or on_message raised: a bug of ours, logged

    def as_json(self) -> dict[str, int]:
        return {"accepted": self.accepted, "rejected": self.rejected, "malformed": self.malformed,
                "oversize": self.oversize, "ignored": self.ignored, "internal_errors": self.internal_errors}


@dataclass(slots=True, eq=False)
class _Bound:
    sock: socket.socket
    name: str
    address: str  # as given to the worker: a path, or @name
    path: Path | None  # the file to unlink on close; None for an abstract socket
    inode: tuple[int, int] | None  # (st_dev, st_ino) of that file when we bound it
    warned: bool = False  # a rejected sender was logged for this spawn


def _accept_all(spawn_id: int, pid: int) -> bool:
    return True


class NotifySockets:
    """The daemon's receiving end of every ``readiness = "notify"`` instance's ``NOTIFY_SOCKET``.

    All methods run on the event loop's thread. ``on_message(spawn_id, message)`` is
    called there for each accepted datagram that says something (see NotifyMessage).
    ``accept_pid(spawn_id, sender_pid)`` decides whether a datagram's sender belongs to
    the instance (default: everyone); the lead sets it to a process-tree check. Rejected
    datagrams are counted, and the first per spawn logged.

    ``directory`` is created if missing and set to mode 0711: other users may reach a
    socket whose name they know (their instance's, through NOTIFY_SOCKET) but not list them.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, directory: Path,
                 on_message: Callable[[int, NotifyMessage], None], log: log_module.Log | None = None,
                 accept_pid: Callable[[int, int], bool] | None = None) -> None:
        self.loop = loop
        self.directory = Path(directory)
        self.on_message = on_message
        self.accept_pid: Callable[[int, int], bool] = accept_pid or _accept_all
        self.counters = NotifyCounters()
        self._log = log if log is not None else log_module.default()
        self._bug = log_module.BugLog(self._log, "notify message dropped: internal error", clock=loop.time)
        self._bound: dict[int, _Bound] = {}
        self.directory.mkdir(mode=0o711, parents=True, exist_ok=True)
        os.chmod(self.directory, 0o711)  # mkdir's mode is cut by the umask; an existing one may be 0700

    def __contains__(self, spawn_id: int) -> bool:
        return spawn_id in self._bound

    def __len__(self) -> int:
        return len(self._bound)

    def address(self, spawn_id: int) -> str | None:
        """The NOTIFY_SOCKET value of an open spawn, for the checkpoint."""
        bound = self._bound.get(spawn_id)
        return bound.address if bound is not None else None

    def open(self, spawn_id: int, name: str, owner_uid: int | None = None, owner_gid: int | None = None) -> str:
        """A new socket for this spawn; returns the NOTIFY_SOCKET value for its environment.

        ``<directory>/<name>.<spawn_id>.sock``, mode 0600, owned by ``owner_uid``/``owner_gid``
        when given (a sender needs write permission to connect). When that path is longer
        than SUN_PATH_MAX: an abstract socket ``@supervise-<random>`` (no permissions: any
        local process can send to it, so only accept_pid stands between it and the
        instance). Replaces an earlier socket of the same spawn. Raises OSError.
        """
        self.close(spawn_id)
        path = self.directory / f"{_file_name(name)}.{spawn_id}.sock"
        if _fits(path) and _fits(_temporary(path)):
            sock, inode = _bind_file(path, owner_uid, owner_gid)
            return self._register(spawn_id, _Bound(sock, name, str(path), path, inode))
        for attempt in range(3):  # a random name taken already is vanishingly rare: retry, then give up
            # os.urandom, as secrets.token_hex does, without the OpenSSL that secrets loads via hmac.
            address = f"@supervise-{os.urandom(12).hex()}"
            try:
                sock = _bind_abstract(address)
            except OSError:
                if attempt == 2:
                    raise
                continue
            return self._register(spawn_id, _Bound(sock, name, address, None, None))
        raise AssertionError("unreachable")

    def reopen(self, spawn_id: int, name: str, address: str, owner_uid: int | None = None,
               owner_gid: int | None = None) -> str:
        """Bind ``address`` (from an adopted worker's environment) again, for this spawn.

        Messages sent while no daemon listened are lost (the sender got ECONNREFUSED).
        A path must be a ``*.sock`` directly inside ``directory``: a stale socket file there
        is replaced, anything else refused (ValueError), so a checkpoint cannot make us
        unlink an arbitrary file. Raises OSError when the address cannot be bound (an
        abstract name taken by another process). Returns ``address``.
        """
        self.close(spawn_id)
        if address.startswith("@"):
            return self._register(spawn_id, _Bound(_bind_abstract(address), name, address, None, None))
        path = Path(address)
        if (not path.is_absolute() or path.suffix != ".sock" or path.name.startswith(".")
                or os.path.realpath(path.parent) != os.path.realpath(self.directory)):
            raise ValueError(f"{name}: NOTIFY_SOCKET={address!r} is not a socket of {self.directory}")
        try:
            if not stat.S_ISSOCK(os.lstat(path).st_mode):
                raise ValueError(f"{name}: {address} exists and is not a socket; not replacing it")
        except FileNotFoundError:
            pass
        sock, inode = _bind_file(path, owner_uid, owner_gid)
        return self._register(spawn_id, _Bound(sock, name, address, path, inode))

    def close(self, spawn_id: int) -> None:
        """Stop reading this spawn's socket, close it and unlink its file. Unknown spawns: nothing."""
        bound = self._bound.pop(spawn_id, None)
        if bound is not None:
            self._close(bound, unlink=True)

    def close_all(self, unlink: bool = True) -> None:
        """Close every socket; ``unlink=False`` leaves the files (a daemon handing over to its
        successor, which will ``reopen`` them)."""
        bounds, self._bound = self._bound, {}
        for bound in bounds.values():
            self._close(bound, unlink=unlink)

    def _register(self, spawn_id: int, bound: _Bound) -> str:
        self._bound[spawn_id] = bound
        self.loop.add_reader(bound.sock.fileno(), self._on_readable, spawn_id, bound)
        return bound.address

    def _close(self, bound: _Bound, unlink: bool) -> None:
        self.loop.remove_reader(bound.sock.fileno())
        bound.sock.close()
        if unlink and bound.path is not None and bound.inode is not None:
            _unlink_if(bound.path, bound.inode)

    def _on_readable(self, spawn_id: int, bound: _Bound) -> None:
        for _ in range(BATCH):
            if self._bound.get(spawn_id) is not bound:
                return  # closed or replaced, maybe by on_message itself
            try:
                data, ancillary, flags, _ = bound.sock.recvmsg(MAX_DATAGRAM, _ANCILLARY, socket.MSG_CMSG_CLOEXEC)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as error:  # not expected on a bound datagram socket; never into the loop
                self.counters.internal_errors += 1
                self._bug(error, name=bound.name)
                return
            sender_pid = _take_ancillary(ancillary)
            if flags & socket.MSG_TRUNC:
                self.counters.oversize += 1
                continue
            self._handle(spawn_id, bound, data, sender_pid)

    def _handle(self, spawn_id: int, bound: _Bound, data: bytes, sender_pid: int) -> None:
        counters = self.counters
        try:
            if not self.accept_pid(spawn_id, sender_pid):
                counters.rejected += 1
                if not bound.warned:
                    bound.warned = True
                    self._log.warning(f"{bound.name}: notify message from a process outside the instance "
                                      "dropped (further ones are only counted)", pid=sender_pid)
                return
            message = parse_message(data, sender_pid)
            if message is None:
                counters.malformed += 1
            elif message.empty:
                counters.ignored += 1
            else:
                self.on_message(spawn_id, message)
                counters.accepted += 1  # once handled: one that raised counts as an internal error only
        except Exception as error:  # noqa: BLE001  (a bug of ours costs this one message, never the loop; logged)
            counters.internal_errors += 1
            self._bug(error, name=bound.name)


def _new_socket() -> socket.socket:
    # SOCK_CLOEXEC: no worker inherits another instance's socket (atomic, unlike a later fcntl).
    # Non-blocking: reads happen on the event loop. SO_PASSCRED before bind, so that every
    # datagram, the first included, carries the sender's pid (SCM_CREDENTIALS) for accept_pid.
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
    try:
        sock.setblocking(False)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
    except BaseException:
        sock.close()
        raise
    return sock


def _bind_file(path: Path, owner_uid: int | None, owner_gid: int | None) -> tuple[socket.socket, tuple[int, int]]:
    """A socket bound at ``path`` with its final mode and owner from the first moment it is there.

    bind() creates the file with the daemon's umask and owner. So it binds a temporary
    name, fixes mode and owner, and renames it into place: rename() is atomic and
    replaces a stale file, and connect() resolves the path to the inode, which the
    bound socket keeps across the rename.
    """
    sock = _new_socket()
    temporary = _temporary(path)
    try:
        sock.bind(str(temporary))
        os.chmod(temporary, 0o600)
        if owner_uid is not None or owner_gid is not None:
            os.chown(temporary, -1 if owner_uid is None else owner_uid, -1 if owner_gid is None else owner_gid)
        info = os.lstat(temporary)
        os.replace(temporary, path)
    except BaseException:
        sock.close()
        _unlink_if(temporary, None)
        raise
    return sock, (info.st_dev, info.st_ino)


def _bind_abstract(address: str) -> socket.socket:
    # Linux's abstract namespace: "@name" in NOTIFY_SOCKET is "\0name" in sun_path, as
    # libsystemd, gunicorn and sdnotify.py write it. No file, so nothing to unlink or chown.
    sock = _new_socket()
    try:
        sock.bind("\0" + address[1:])
    except BaseException:
        sock.close()
        raise
    return sock


def _take_ancillary(ancillary: list[tuple[int, int, bytes]]) -> int:
    """The sender's pid from SCM_CREDENTIALS (0 without), closing any passed descriptors.

    systemd-notify sends ``BARRIER=1`` with a pipe's end and waits until the receiver
    closes it; FDSTORE=1 passes descriptors to keep. We keep none: closing them at once
    releases the barrier and leaks nothing.
    """
    pid = 0
    for level, kind, data in ancillary:
        if level != socket.SOL_SOCKET:
            continue
        if kind == socket.SCM_CREDENTIALS and len(data) >= _UCRED.size:
            pid = _UCRED.unpack_from(data)[0]
        elif kind == socket.SCM_RIGHTS:
            fds = array.array("i")
            fds.frombytes(data[:len(data) - len(data) % fds.itemsize])
            for fd in fds:
                try:
                    os.close(fd)
                except OSError:
                    pass  # not ours to worry about: it is gone either way
    return pid


def _unlink_if(path: Path, inode: tuple[int, int] | None) -> None:
    """Unlink ``path`` if it is still the file we made (``inode``; None: whatever it is)."""
    try:
        if inode is not None:
            info = os.lstat(path)
            if (info.st_dev, info.st_ino) != inode:
                return  # replaced since (a later open, another daemon): not ours any more
        os.unlink(path)
    except FileNotFoundError:
        pass


def _file_name(name: str) -> str:
    safe = _NAME_UNSAFE.sub("_", name)[:_NAME_MAX]
    return "_" + safe[1:] if safe.startswith(".") else safe or "_"


def _temporary(path: Path) -> Path:
    return path.with_name(f".{os.urandom(4).hex()}.tmp")


def _fits(path: Path) -> bool:
    return len(os.fsencode(path)) <= SUN_PATH_MAX


def _number(value: str, minimum: int) -> int | None:
    if not (value.isascii() and value.isdigit()) or len(value) > 19:
        return None
    number = int(value)
    return number if number >= minimum else None
