"""Binding the daemon's ipc sockets (control, heartbeats) so that only our own user gets in.

Both live in the state dir, which the daemon holds the lock of, and both get
the same three locks on the door: the socket file is owner-only from the
instant it exists (and then 0600), the directory is 0700,
and the socket checks each peer's uid (SO_PEERCRED) besides, which holds even
if those modes are loosened by mistake.
"""

from __future__ import annotations

import os
from pathlib import Path

import zmq

__all__ = ["SOCKET_MODE", "allow_own_uid", "bind_ipc"]

SOCKET_MODE = 0o600


def bind_ipc(sock: zmq.Socket, path: Path, others: frozenset[int] = frozenset()) -> None:
    """Bind `sock` at ``ipc://<path>``, for our own user (and root) only, and the uids `others`.

    `others` are the users apps run as (``user = ...``): the heartbeat socket
    must let their workers in. The file is then 0666, and the peer uid check
    (with each spawn's token, for heartbeats) is what keeps everyone else out.

    Any file already at `path` is removed first: the caller holds the state
    dir's lock, so a socket file found there was left by a daemon that died.
    Raises zmq.ZMQError when the bind fails (e.g. a path too long for a
    unix socket).
    """
    allow_own_uid(sock, others)
    path.unlink(missing_ok=True)
    # libzmq creates the file in bind(), with the modes of the umask: a umask
    # of 077 makes it owner-only from its first instant, where a chmod after
    # bind would leave a window. The umask is process-wide, so a file another
    # thread creates meanwhile (a log backup) may come out stricter than
    # asked: harmless, and only for these few microseconds at startup.
    old_umask = os.umask(0o077)
    try:
        sock.bind(f"ipc://{path}")
    finally:
        os.umask(old_umask)
    os.chmod(path, SOCKET_MODE if not others else 0o666)  # not the 0700 the umask gave: a socket has no use for x


def allow_own_uid(sock: zmq.Socket, others: frozenset[int] = frozenset()) -> None:
    """Accept ipc connections only from our own user (and root), by the peer's SO_PEERCRED.

    Call before bind: libzmq applies the filter to the connections its
    listener accepts.
    """
    for uid in {os.getuid(), 0, *others}:
        try:
            sock.setsockopt(zmq.IPC_FILTER_UID, uid)
        except (zmq.ZMQError, AttributeError):  # a libzmq built without it: the file modes remain
            return
