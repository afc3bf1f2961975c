"""Who an app runs as: ``user``, ``group``, ``umask``; and the user, group and mode values that
``listen`` tables share with them.

Names are looked up at load, so a typo fails `supervise check` and not the
first spawn; numeric ids are taken as they are (chown(2) needs no entry in
the user database). Switching to another user needs root: a daemon that is
not root refuses the config instead of failing every spawn.
"""

from __future__ import annotations

import grp
import os
import pwd
import re
from collections.abc import Callable
from typing import Any

from supervise.config import units as units
from supervise.config.lines import Key
from supervise.config.table import Check, Table
from supervise.config.units import Invalid, show

__all__ = ["check_decimal", "group_name", "mode", "run_as", "umask", "user_name"]

_OCTAL = re.compile(r"(?:0o)?([0-7]{3,4})")


def user_name(value: Any) -> str:
    """A user that exists, by name, or a numeric uid (as text)."""
    return _name(value, "user", pwd.getpwnam)


def group_name(value: Any) -> str:
    """A group that exists, by name, or a numeric gid (as text)."""
    return _name(value, "group", grp.getgrnam)


def _name(value: Any, what: str, lookup: Callable[[str], object]) -> str:
    if units.is_int(value) and 0 <= value < 2**32:
        return str(value)
    if not isinstance(value, str) or not value:
        raise units.expected(f"a {what} name or a numeric id", value)
    if value.isascii() and value.isdigit():
        if int(value) >= 2**32:
            raise units.expected(f"a numeric {what} id below 2**32", value)
        return value
    try:
        lookup(value)
    except (KeyError, ValueError):  # ValueError: a NUL in the name
        raise Invalid(f"no such {what}: {show(value)}") from None
    return value


def _permissions(value: Any, what: str) -> int:
    """Permission bits from ``"0660"``, ``"660"``, ``"0o660"`` or an integer (TOML's 0o660)."""
    if units.is_int(value) and 0 <= value <= 0o777:
        return value
    match = _OCTAL.fullmatch(value.strip()) if isinstance(value, str) else None
    if match is not None and int(match[1], 8) <= 0o777:
        return int(match[1], 8)
    hint = ""
    if units.is_int(value) and re.fullmatch(r"[0-7]{3,4}", str(value)):
        hint = f" ({value} is a decimal number here: write 0o{value} or \"{value:04d}\")"
    raise Invalid(f"expected {what}, got {show(value)}{hint}")


def mode(value: Any) -> int:
    return _permissions(value, 'permission bits like "0660" or 0o660')


def umask(value: Any) -> int:
    return _permissions(value, 'a umask like "0022" or 0o022')


def check_decimal(check: Check, path: Key, value: Any) -> None:
    """Refuse permission bits written as a decimal TOML integer (``umask = 22`` is 0o26, not 0o22).

    The parsed value cannot tell ``22`` from ``0o26``, so the line is read: only a plain decimal
    literal of 8 or more is refused (below 8 both bases agree)."""
    if not units.is_int(value) or value < 8:
        return
    key = str(path[-1])
    line = check.lines.source(path) or ""
    if not re.search(rf"(?<![\w.\"'-]){re.escape(key)}[ \t]*=[ \t]*\+?[1-9][0-9_]*(?![\w.])", line):
        return
    octal = str(value)
    written = f'0o{octal} or "{octal:0>4}"' if set(octal) <= set("01234567") else '0o022 or "0022"'
    check.report(path, f"{key} = {value} is a decimal number (0o{value:o} in octal): permission bits are written "
                       f"in octal, like {written}")


def run_as(table: Table) -> dict[str, Any]:
    """``user``, ``group`` and ``umask`` of an app, ready for AppConfig, and a problem for each
    that this daemon cannot honour."""
    values = table.read({"user": user_name, "group": group_name, "umask": umask})
    if "umask" in values:
        check_decimal(table.check, table.path + ("umask",), table.raw["umask"])
    user, group = values.get("user"), values.get("group")
    if user is not None and group is None and user.isdigit() and _uid_entry(int(user)) is None:
        table.report(("user",), f"uid {user} has no entry in the user database, so no primary group: set group too")
    if os.geteuid() == 0:
        return values
    me = _describe(os.geteuid(), _uid_entry)
    if user is not None and _uid(user) != os.geteuid():
        table.report(("user",), f"running as {show(user)} needs the daemon to run as root (it runs as {me}); "
                                "leave user out to run the app as the daemon's own user")
    if group is not None and _gid(group) != os.getegid():
        table.report(("group",), f"running as group {show(group)} needs the daemon to run as root (its group is "
                                 f"{_describe(os.getegid(), _gid_entry)}); leave group out")
    return values


def _uid(user: str) -> int:
    return int(user) if user.isdigit() else pwd.getpwnam(user).pw_uid


def _gid(group: str) -> int:
    return int(group) if group.isdigit() else grp.getgrnam(group).gr_gid


def _uid_entry(uid: int) -> str | None:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return None


def _gid_entry(gid: int) -> str | None:
    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return None


def _describe(number: int, entry: Callable[[int], str | None]) -> str:
    name = entry(number)
    return f'{number} ("{name}")' if name else str(number)
