"""Who a worker runs as: an app's ``user`` and ``group``, resolved to ids when it is spawned.

Names are looked up at each spawn, not once at load: a user deleted (or
renumbered) since the config was read fails that spawn by name instead of
starting the worker as a stale uid. Switching takes privilege
(CAP_SETUID and CAP_SETGID, in practice root): without it `refusal` says so
before anything is forked. A daemon asked to be who it already is switches
nothing, which keeps its spawns on Popen's vfork fast path (setting any of
user, group or extra_groups makes CPython fork instead).

The daemon opens the worker's log, sockets and output pipe itself and hands
them over as descriptors, so those need no permission of the target user;
what does is in `denied`: the worker's cwd and the program it execs.

Light on purpose: `supervise check` may import it (`refusal`).
"""

from __future__ import annotations

import grp
import os
import pwd
import stat
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

from supervise.frozen import frozen

if TYPE_CHECKING:
    from supervise.config.model import AppConfig

__all__ = [
    "Identity", "IdentityError", "app_uids", "denied", "describe", "environment", "is_own", "privileged", "refusal",
    "resolve",
]

CAP_SETGID = 6
CAP_SETUID = 7
_ACL_XATTR = "system.posix_acl_access"


class IdentityError(Exception):
    """A user or group that names no one (any more); the message names it."""


@frozen
class Identity:
    """The ids a worker gets, and how the config named them (for messages)."""

    uid: int | None  # None: the daemon's (only a group was asked for)
    gid: int
    groups: tuple[int, ...] | None  # supplementary groups (the user's, os.getgrouplist); None: the daemon's
    label: str  # "user www-data", "group web", "user www-data, group web"
    user_name: str | None = None  # the passwd entry's name; None without a user or without an entry
    home: str | None = None


def resolve(user: str | None, group: str | None) -> Identity | None:
    """The ids of `user` and `group` (names, or ids as text); None when neither is given.

    `group` None with a user: the user's primary group. A numeric user with no
    passwd entry needs a group (there is no primary group to default to).
    Raises IdentityError naming what is unknown.
    """
    if user is None and group is None:
        return None
    label = ", ".join(f"{kind} {value}" for kind, value in (("user", user), ("group", group)) if value is not None)
    entry = _passwd(user) if user is not None else None
    if user is not None and entry is None and not user.isdigit():
        raise IdentityError(f"unknown user {user!r}: no such entry in the user database (deleted since the "
                            "config was loaded?)")
    if group is not None:
        gid = _gid(group)
    elif entry is not None:
        gid = entry.pw_gid
    elif user is not None:
        raise IdentityError(f"user {user} has no entry in the user database, so no primary group: set group too")
    else:  # unreachable: one of user and group is set
        raise IdentityError("neither user nor group given")
    if user is None:
        return Identity(uid=None, gid=gid, groups=None, label=label)
    if entry is None:  # a bare uid
        return Identity(uid=int(user), gid=gid, groups=(gid,), label=label)
    groups = tuple(os.getgrouplist(entry.pw_name, gid))
    return Identity(uid=entry.pw_uid, gid=gid, groups=groups, label=label, user_name=entry.pw_name,
                    home=entry.pw_dir)


def _passwd(user: str) -> pwd.struct_passwd | None:
    try:
        return pwd.getpwnam(user)
    except KeyError:
        pass
    if user.isdigit():
        try:
            return pwd.getpwuid(int(user))
        except KeyError:
            return None
    return None


def _gid(group: str) -> int:
    try:
        return grp.getgrnam(group).gr_gid
    except KeyError:
        pass
    if group.isdigit():
        return int(group)  # a gid needs no entry in the group database to be set
    raise IdentityError(f"unknown group {group!r}: no such entry in the group database (deleted since the "
                        "config was loaded?)")


def is_own(identity: Identity, euid: int, egid: int) -> bool:
    """Running as `identity` changes nothing for a daemon of `euid` and `egid`: no switch to make.

    The daemon's own supplementary groups are then kept as they are, even if
    the user database lists others: a non-root daemon cannot set them anyway.
    """
    return identity.uid in (None, euid) and identity.gid == egid


def refusal(name: str, identity: Identity, euid: int, egid: int, privileged: bool) -> str | None:
    """Why a daemon of `euid`/`egid` cannot start instance `name` as `identity`; None when it can.

    Pure, for the config check and for each spawn. `privileged`: the daemon
    holds CAP_SETUID and CAP_SETGID (see `privileged`).
    """
    if privileged or is_own(identity, euid, egid):
        return None
    if euid == 0:
        return (f"cannot run {name} as {identity.label}: the daemon runs as root but without CAP_SETUID and "
                "CAP_SETGID (dropped capabilities? a container run with --cap-drop, or a systemd "
                "CapabilityBoundingSet= without them)")
    return f"cannot run {name} as {identity.label}: the daemon runs as uid {euid}, not root"


def privileged() -> bool:
    """This process may switch users and groups: CAP_SETUID and CAP_SETGID are effective.

    Read from /proc/self/status; where that cannot be read, being root is taken for it.
    """
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("CapEff:"):
                    caps = int(line.split()[1], 16)
                    return bool(caps >> CAP_SETUID & 1 and caps >> CAP_SETGID & 1)
    except (OSError, ValueError, IndexError):
        pass
    return os.geteuid() == 0


def environment(identity: Identity) -> dict[str, str]:
    """HOME, USER and LOGNAME of the user a worker runs as; empty without a user.

    A bare uid (no passwd entry) gets USER and LOGNAME set to the number and HOME
    to "/", as login(1) and Docker do for want of better.
    """
    if identity.uid is None:
        return {}
    name = identity.user_name or str(identity.uid)
    return {"HOME": identity.home or "/", "USER": name, "LOGNAME": name}


def denied(path: Path, identity: Identity, execute: bool = False) -> Path | None:
    """The first component of `path` that `identity` may not pass: a directory it cannot
    search (x) on the way, or `path` itself (searched, or with `execute` run); None when
    every one allows it, or when only an ACL or root could tell.

    A check by mode bits, made in the daemon before it forks: the worker enters
    its cwd (Popen's chdir) while still root, and would otherwise start in a
    directory it cannot look into, failing later on some relative or
    absolute path. A component with an ACL is given the benefit of the doubt:
    only the kernel's own check would tell, and a wrong refusal is worse than a
    late error.
    """
    if identity.uid in (None, 0):
        return None
    path = Path(os.path.abspath(path))
    for component in (*reversed(path.parents), path):
        try:
            st = os.stat(component)
        except OSError:
            return None  # missing or unreadable to the daemon itself: the spawn says so in its own words
        if component == path and execute and not stat.S_ISREG(st.st_mode):
            return None
        if not _allows(st, identity) and not _has_acl(component):
            return component
    return None


def describe(path: Path) -> str:
    """"/srv is mode 0750, owned by root:www": what a refusal by `denied` shows."""
    try:
        st = os.stat(path)
    except OSError as exc:
        return f"{path}: {exc.strerror}"
    return f"{path} is mode {stat.S_IMODE(st.st_mode):04o}, owned by {_user_name(st.st_uid)}:{_group_name(st.st_gid)}"


def _user_name(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def _group_name(gid: int) -> str:
    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return str(gid)


def _allows(st: os.stat_result, identity: Identity) -> bool:
    """The x bit of `identity`'s class (owner, group, other) is set on `st`."""
    groups = {identity.gid, *(identity.groups or ())}
    if st.st_uid == identity.uid:
        return bool(st.st_mode & stat.S_IXUSR)
    if st.st_gid in groups:
        return bool(st.st_mode & stat.S_IXGRP)
    return bool(st.st_mode & stat.S_IXOTH)


def _has_acl(path: Path) -> bool:
    try:
        return _ACL_XATTR in os.listxattr(path)
    except OSError:
        return False


def app_uids(apps: Iterable[AppConfig]) -> frozenset[int]:
    """The uids apps run as, other than the daemon's: they are let in to the heartbeat socket (whose
    uid filter is set once, at the daemon's start: an app given a new user by a reload needs a
    daemon restart for its heartbeats). An unknown user is the spawn's error to report, not this."""
    uids = set()
    for app in apps:
        try:
            who = resolve(app.user, app.group)
        except IdentityError:
            continue
        if who is not None and who.uid is not None and who.uid != os.geteuid():
            uids.add(who.uid)
    return frozenset(uids)
