"""Telling systemd how the daemon is doing: the sd_notify(3) protocol, without libsystemd.

Under a ``Type=notify`` unit, systemd considers the service started only when
it says ``READY=1``, shows its ``STATUS=`` line in ``systemctl status``, and
with ``WatchdogSec=`` kills and restarts it when ``WATCHDOG=1`` pings stop
(a wedged event loop, not only a dead process). The protocol is small enough
to speak directly: one datagram of ``KEY=VALUE`` lines to the AF_UNIX socket
named by ``$NOTIFY_SOCKET``, so supervise takes no dependency for it.

Two rules shape this module:

- Notifying must never hurt the daemon. A send never blocks (systemd busy or
  gone must not stall the event loop that supervises workers) and never
  raises; the first failure is logged, later ones are dropped silently.
- The daemon's notification variables are for the daemon alone.
  ``unset_environment`` removes them from the environment workers inherit:
  with ``NOTIFY_SOCKET`` a worker that speaks sd_notify (many servers do
  when they see it) would tell systemd that *the service* is ready, stopping
  or reloading, and with ``WATCHDOG_USEC`` it might ping the daemon's
  watchdog and hide a hung daemon.

    notifier = Notifier.from_env(os.environ, log=log)   # None when not run by systemd
    unset_environment(os.environ)                       # before any worker is spawned
    ...
    notifier.ready("9 running, 0 starting, 0 failed")
    notifier.watchdog()                                 # every notifier.watchdog_interval seconds
    notifier.stopping()
"""

from __future__ import annotations

import errno
import os
import socket
import time
from collections.abc import Mapping, MutableMapping
from types import TracebackType
from typing import Protocol

__all__ = ["ENVIRONMENT", "Notifier", "unset_environment"]

# What systemd sets for a notify service; none of it may reach a worker.
ENVIRONMENT = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")

# systemd reads notifications into a buffer of PIPE_BUF (4096) bytes and drops
# longer ones, so the only free-form field is capped well below that.
STATUS_MAX_BYTES = 1024


class Warner(Protocol):
    """The one thing a notifier needs from a logger (structlog's and logging's both have it)."""

    def warning(self, event: str, /) -> object: ...


class Notifier:
    """The daemon's side of systemd's notification socket.

    Build it with ``from_env``. Every method sends one datagram and returns at
    once: the socket is non-blocking, and an error (socket gone, systemd's
    queue full, message refused) is logged once through ``log`` and otherwise
    ignored. Not thread-safe: meant to be called from the event loop's thread.
    """

    def __init__(self, address: str, *, pid: int, watchdog_usec: int | None = None,
                 log: Warner | None = None) -> None:
        """``address`` as in ``$NOTIFY_SOCKET``: an absolute path, or ``@name`` for
        a name in Linux's abstract socket namespace."""
        if not address.startswith(("/", "@")):
            raise ValueError(f"NOTIFY_SOCKET must be an absolute path or @name, got {address!r}")
        self.address = address
        self.pid = pid
        self.watchdog_usec = watchdog_usec
        self._sockaddr = "\0" + address[1:] if address.startswith("@") else address
        self._log = log
        self._sock: socket.socket | None = None
        self._warned = False
        self._closed = False

    @classmethod
    def from_env(cls, environ: Mapping[str, str] = os.environ, pid: int | None = None,
                 log: Warner | None = None) -> Notifier | None:
        """A notifier for the socket in ``environ``, or None when not started by systemd
        (``NOTIFY_SOCKET`` unset or empty, or an address kind this client does not
        speak, e.g. systemd 254's ``vsock:``, which is logged).

        The watchdog is on when ``WATCHDOG_USEC`` is a positive integer and
        ``WATCHDOG_PID`` is unset or names ``pid`` (our own by default): systemd
        sets the latter when the watchdog is meant for a different process.
        """
        address = environ.get("NOTIFY_SOCKET", "")
        if not address:
            return None
        if not address.startswith(("/", "@")):
            if log is not None:
                log.warning(f"NOTIFY_SOCKET={address!r} is not a unix socket path or @name; "
                            "not notifying systemd (a Type=notify unit will time out)")
            return None
        pid = os.getpid() if pid is None else pid
        return cls(address, pid=pid, watchdog_usec=_watchdog_usec(environ, pid), log=log)

    @property
    def watchdog_interval(self) -> float | None:
        """Seconds between ``WATCHDOG=1`` pings (half the timeout, as sd_watchdog_enabled(3)
        recommends), or None when systemd expects none."""
        return None if self.watchdog_usec is None else self.watchdog_usec / 2_000_000

    def ready(self, status: str | None = None) -> None:
        """Start-up is complete. Also names our pid as the main one (``MAINPID=``)."""
        self._send(["READY=1", *_status(status), f"MAINPID={self.pid}"])

    def status(self, text: str) -> None:
        """A one-line summary for ``systemctl status``; newlines become spaces."""
        self._send(_status(text))

    def stopping(self, status: str | None = None) -> None:
        """The daemon has begun to drain and will exit."""
        self._send(["STOPPING=1", *_status(status)])

    def reloading(self, status: str | None = None) -> None:
        """A configuration reload has begun; ``ready_again`` must follow when it is done.

        ``MONOTONIC_USEC`` (CLOCK_MONOTONIC, in µs) lets systemd 253+ match this
        message to the ``systemctl reload`` it sent SIGHUP for under
        ``Type=notify-reload``; older versions ignore it.
        """
        usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        self._send(["RELOADING=1", f"MONOTONIC_USEC={usec}", *_status(status)])

    def ready_again(self, status: str | None = None) -> None:
        """The reload announced by ``reloading`` is done (applied or rejected)."""
        self._send(["READY=1", *_status(status)])

    def watchdog(self) -> None:
        """The daemon is alive and its loop is turning."""
        self._send(["WATCHDOG=1"])

    def close(self) -> None:
        """Close the socket; later calls do nothing."""
        self._closed = True
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def __enter__(self) -> Notifier:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Notifier({self.address!r}, pid={self.pid}, watchdog_usec={self.watchdog_usec})"

    def _send(self, lines: list[str]) -> None:
        if self._closed or not lines:
            return
        message = "".join(f"{line}\n" for line in lines).encode()
        try:
            if self._sock is None:
                self._sock = _socket()
            # sendto, not connect + send: the path is resolved on every message,
            # so a notification socket re-created by a re-executed systemd
            # (same path, new inode) keeps working.
            self._sock.sendto(message, self._sockaddr)
        except OSError as exc:
            self._warn_once(exc)

    def _warn_once(self, exc: OSError) -> None:
        if self._warned or self._log is None:
            return
        self._warned = True
        if exc.errno in (errno.EAGAIN, errno.EWOULDBLOCK, errno.ENOBUFS):
            why = "its queue is full, the notification was dropped"
        else:
            why = exc.strerror or str(exc)
        self._log.warning(f"cannot notify systemd through NOTIFY_SOCKET={self.address}: {why} "
                          "(further failures are not logged)")


def unset_environment(environ: MutableMapping[str, str]) -> None:
    """Remove systemd's notification variables (``ENVIRONMENT``) from ``environ``.

    Call it on the environment workers inherit, after ``Notifier.from_env``
    has read it: only the daemon may speak for the service.
    """
    for name in ENVIRONMENT:
        environ.pop(name, None)


def _socket() -> socket.socket:
    # SOCK_CLOEXEC: a worker spawned while the socket is open must not inherit
    # it (Python sets it anyway since PEP 446; the flag makes it atomic).
    # Non-blocking: when systemd's receive queue is full, sendto fails with
    # EAGAIN instead of stalling the event loop until systemd catches up.
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | getattr(socket, "SOCK_CLOEXEC", 0))
    sock.setblocking(False)
    return sock


def _status(text: str | None) -> list[str]:
    if text is None:
        return []
    line = " ".join(text.splitlines()).strip()
    raw = line.encode()
    if len(raw) > STATUS_MAX_BYTES:
        line = raw[:STATUS_MAX_BYTES].decode(errors="ignore")
    return [f"STATUS={line}"]


def _watchdog_usec(environ: Mapping[str, str], pid: int) -> int | None:
    watchdog_pid = environ.get("WATCHDOG_PID", "")
    if watchdog_pid and not (watchdog_pid.isdigit() and int(watchdog_pid) == pid):
        return None
    usec = environ.get("WATCHDOG_USEC", "")
    if not usec.isdigit() or int(usec) <= 0:
        return None
    return int(usec)
