"""``listen`` entries: an address string, or a table of the address and how its socket is set up.

The socket options follow systemd's socket units (``NoDelay=``, ``Backlog=``,
``ReusePort=``, ``SocketMode=``, ``SocketUser=``, ``SocketGroup=``); a plain
string gets :class:`ListenOptions`' defaults. An option that cannot apply to
the address (a mode on a TCP socket, TCP_NODELAY on a unix one) is an error
rather than ignored: it says the author expected something that will not happen.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

from supervise.config import runas, units
from supervise.config.model import ListenOptions
from supervise.config.table import Table
from supervise.config.units import LISTEN_EXAMPLES, Invalid, UnixAddress, did_you_mean

__all__ = ["entries", "read"]

Entry = tuple[str, ListenOptions | None]
KEYS = ("address", "nodelay", "backlog", "reuseport", "mode", "owner", "group")
_TCP_ONLY = ("nodelay", "reuseport")
_FILE_ONLY = ("mode", "owner", "group")  # a unix socket's file: not TCP, not an abstract name
_CONVERT: dict[str, Callable[[Any], Any]] = {
    "nodelay": units.boolean,
    "backlog": partial(units.integer, lo=1, hi=65535),
    "reuseport": units.boolean,
    "mode": runas.mode,
    "owner": runas.user_name,
    "group": runas.group_name,
}


def read(table: Table, base: Path) -> tuple[Entry, ...]:
    """The app's ``listen`` entries, a mode written as a decimal integer refused."""
    found: tuple[Entry, ...] = table.get("listen", partial(entries, base), ())
    raw = table.raw.get("listen")
    for index, item in enumerate(raw if found and isinstance(raw, list) else []):
        if isinstance(item, dict):
            runas.check_decimal(table.check, table.path + ("listen", index, "mode"), item.get("mode"))
    return found


def entries(base: Path, value: Any) -> tuple[Entry, ...]:
    """Each entry's address (made absolute if a relative unix path) and its options (None: a plain string)."""
    return units.array_of(partial(_entry, base), "addresses")(value)


def _entry(base: Path, value: Any) -> Entry:
    if isinstance(value, str):
        return units.listen_address(base, value), None
    if not isinstance(value, dict):
        raise units.expected(f'an address {LISTEN_EXAMPLES} or a table like {{ address = "127.0.0.1:8080", '
                             "backlog = 4096 }", value)
    errors: list[tuple[tuple[str | int, ...], str]] = []
    address: str | None = None
    if "address" not in value:
        errors.append(((), 'missing address, like { address = "127.0.0.1:8080", nodelay = true }'))
    else:
        try:
            address = units.listen_address(base, value["address"])
        except Invalid as error:
            errors += [(("address", *at), message) for at, message in error.errors]
    parsed = units.parse_listen_address(address) if address is not None else None
    options: dict[str, Any] = {}
    for key, item in value.items():
        if key == "address":
            continue
        if key not in _CONVERT:
            errors.append(((key,), f"unknown key{did_you_mean(key, KEYS)}; a listen table has {', '.join(KEYS)}"))
            continue
        if problem := _misplaced(key, parsed):
            errors.append(((key,), problem))
            continue
        try:
            options[key] = _CONVERT[key](item)
        except Invalid as error:
            errors += [((key, *at), message) for at, message in error.errors]
    if errors:
        raise Invalid.many(errors)
    assert address is not None  # else "missing address" above
    return address, ListenOptions(**options)


def _misplaced(key: str, address: units.ListenAddress | None) -> str | None:
    """Why ``key`` cannot apply to ``address``, if it cannot."""
    if address is None:
        return None
    unix = isinstance(address, UnixAddress)
    if key in _TCP_ONLY and unix:
        return f"{key} is for TCP sockets only, not a unix: one"
    if key in _FILE_ONLY and not unix:
        return f"{key} is for unix: sockets only (a TCP socket has no file)"
    if key in _FILE_ONLY and isinstance(address, UnixAddress) and address.abstract:
        return f'{key} is for unix: sockets on a path; an abstract one ("unix:@name") has no file'
    return None
