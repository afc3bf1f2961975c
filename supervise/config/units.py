"""The values of supervise.toml: durations, sizes, signals, addresses, commands.

Each converter takes a raw TOML value and returns its final type, or raises
:class:`Invalid` with a message saying what was expected and what was given.
They know nothing about files, lines or key paths: the loader adds those, so
these stay small and can be tested with plain tables of examples.
"""

from __future__ import annotations

import datetime
import ipaddress
import json
import math
import os
import re
import shlex
import signal
import string as _string
import sys
from collections.abc import Callable, Iterable
from enum import StrEnum
from pathlib import Path
from typing import TypeGuard, TypeVar

from supervise.frozen import frozen

T = TypeVar("T")
E = TypeVar("E", bound=StrEnum)

_DURATION_PART = re.compile(r"\s*(\d+(?:\.\d*)?|\.\d+)\s*(ms|s|m|h)\s*")
_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
_SIZE = re.compile(r"\s*(\d+(?:\.\d*)?|\.\d+)\s*(?:([kmgt])(i?b)?|(b))?\s*", re.IGNORECASE)
_SIZE_UNITS = {"": 1, "b": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}
_HOSTNAME = re.compile(r"(?!-)[A-Za-z0-9-]+(?:\.(?!-)[A-Za-z0-9-]+)*\.?")
_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")
_SHOW_LIMIT = 60
_FLOAT_MAX = int(sys.float_info.max)
PLACEHOLDERS = ("app", "instance", "port")

DURATION_EXAMPLES = '"500ms", "10s" or "5m"'
SIZE_EXAMPLES = '"512K", "300M" or "1G"'
LISTEN_EXAMPLES = '"host:port" (like "127.0.0.1:8080" or "[::1]:8080") or "unix:/path"'


class Invalid(ValueError):
    """A value that does not fit.

    ``errors`` holds (sub-path, message) pairs, so one array or table can
    report each bad item at its own key path (``listen[1]``, ``env.PORT``)
    instead of stopping at the first.
    """

    def __init__(self, message: str, at: tuple[str | int, ...] = ()) -> None:
        super().__init__(message)
        self.errors: list[tuple[tuple[str | int, ...], str]] = [(at, message)]

    @classmethod
    def many(cls, errors: list[tuple[tuple[str | int, ...], str]]) -> Invalid:
        error = cls(errors[0][1], errors[0][0])
        error.errors = list(errors)
        return error


def show(value: object) -> str:
    """``value`` as the user would have written it in TOML, cut short if long."""
    text = _show(value)
    return text if len(text) <= _SHOW_LIMIT else text[: _SHOW_LIMIT - 3] + "..."


def _show(value: object) -> str:
    match value:
        case bool():
            return "true" if value else "false"
        case str():
            return json.dumps(value, ensure_ascii=False)
        case list():
            return "[" + ", ".join(map(_show, value)) + "]"
        case dict():
            items = ", ".join(f"{_show_key(key)} = {_show(item)}" for key, item in value.items())
            return "{ " + items + " }" if items else "{}"
        case datetime.date() | datetime.time():  # TOML dates and times (datetime is a date)
            return value.isoformat()
        case _:
            return str(value)


def _show_key(key: str) -> str:
    return key if _BARE_KEY.fullmatch(key) else json.dumps(key, ensure_ascii=False)


def printable(text: str) -> str:
    """``text``, escaped if it holds a newline or another control character: one problem, one line."""
    return text if text.isprintable() else json.dumps(text, ensure_ascii=False)[1:-1]


def expected(what: str, value: object) -> Invalid:
    return Invalid(f"expected {what}, got {show(value)}")


def did_you_mean(word: str, choices: Iterable[str], template: str = '"{}"') -> str:
    """`` (did you mean "x"?)`` when a choice is close to ``word``, else ``""``."""
    import difflib  # only a config with a mistake needs it: not kept in the daemon's memory

    close = difflib.get_close_matches(word, list(choices), n=1)
    return f" (did you mean {template.format(close[0])}?)" if close else ""


def is_int(value: object) -> TypeGuard[int]:
    """True for TOML integers; ``True`` is an int to Python but never to a user."""
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value: object) -> TypeGuard[int | float]:
    return is_int(value) or isinstance(value, float)


def integer(value: object, lo: int = 0, hi: int | None = None) -> int:
    what = f"an integer >= {lo}" if hi is None else f"an integer from {lo} to {hi}"
    if not is_int(value) or value < lo or (hi is not None and value > hi):
        raise expected(what, value)
    return value


def number(value: object, lo: float, hi: float | None = None) -> float:
    what = f"a number >= {lo:g}" if hi is None else f"a number from {lo:g} to {hi:g}"
    if not is_number(value) or not lo <= value <= (math.inf if hi is None else hi) or _too_big(value):
        raise expected(what, value)
    return float(value)


def _too_big(value: int | float) -> bool:
    """An integer float() cannot take (OverflowError)."""
    return is_int(value) and abs(value) > _FLOAT_MAX


def boolean(value: object) -> bool:
    if not isinstance(value, bool):
        raise expected("true or false", value)
    return value


def string(value: object) -> str:
    if not isinstance(value, str) or not value:
        raise expected("a non-empty string", value)
    return value


def path_text(value: object) -> str:
    """A non-empty string fit to be a path: no OS call takes one with a NUL in it."""
    text = string(value)
    if "\0" in text:
        raise Invalid(f"a path cannot contain a NUL character, got {show(text)}")
    return text


def choice(value: object, kind: type[E], fold_case: bool = False) -> E:
    """A member of the StrEnum ``kind``, with a did-you-mean for near misses."""
    names = [member.value for member in kind]
    text = value.lower() if fold_case and isinstance(value, str) else value
    if isinstance(text, str) and text in names:
        return kind(text)
    hint = did_you_mean(text, names) if isinstance(text, str) else ""
    raise Invalid(f"expected one of {', '.join(map(show, names))}, got {show(value)}{hint}")


def array_of(item: Callable[[object], T], what: str) -> Callable[[object], tuple[T, ...]]:
    """A converter for arrays that reports every bad item, each at its index."""

    def convert(value: object) -> tuple[T, ...]:
        if not isinstance(value, list):
            raise expected(f"an array of {what}", value)
        results, errors = [], []
        for index, raw in enumerate(value):
            try:
                results.append(item(raw))
            except Invalid as error:
                errors += [((index, *at), message) for at, message in error.errors]
        if errors:
            raise Invalid.many(errors)
        return tuple(results)

    return convert


def duration(value: object, positive: bool = False) -> float:
    """Seconds from a number or a string like "500ms", "1.5s", "2m30s", "1h"."""
    seconds = _parse_duration(value)
    if seconds is None or not math.isfinite(seconds):
        raise expected(f"a duration like {DURATION_EXAMPLES}", value)
    if seconds < 0 or (positive and seconds == 0):
        raise expected(f"a duration {'> 0' if positive else '>= 0'}", value)
    return seconds


def _parse_duration(value: object) -> float | None:
    if is_number(value):
        return math.inf if _too_big(value) else float(value)
    if not isinstance(value, str):
        return None
    text = value.lower()
    parts = list(_DURATION_PART.finditer(text))
    if not parts or "".join(part.group(0) for part in parts) != text:
        return None
    return sum(float(part[1]) * _DURATION_UNITS[part[2]] for part in parts)


def size(value: object, positive: bool = False) -> int:
    """Bytes from an integer or a string like "100B", "512K", "300M", "300MiB", "1G"."""
    amount = _parse_size(value)
    if amount is None:
        raise expected(f"a size like {SIZE_EXAMPLES}", value)
    if amount < 0 or (positive and amount == 0):
        raise expected(f"a size {'> 0' if positive else '>= 0'}", value)
    return amount


def _parse_size(value: object) -> int | None:
    if is_int(value):
        return value
    match = _SIZE.fullmatch(value) if isinstance(value, str) else None
    if match is None:
        return None
    number_text, prefix, suffix, _ = match.groups()
    amount = float(number_text) * _SIZE_UNITS[(prefix or "").lower()]
    return int(amount) if math.isfinite(amount) else None


def stop_signal(value: object) -> signal.Signals:
    """A real signal from "SIGTERM", "TERM", "term" or its number."""
    if is_int(value):
        try:
            return signal.Signals(value)
        except ValueError:
            pass
    elif isinstance(value, str):
        name = value.strip().upper()
        name = name if name.startswith("SIG") else "SIG" + name
        if name in signal.Signals.__members__:
            return signal.Signals[name]
        hint = did_you_mean(name[3:], [known[3:] for known in signal.Signals.__members__], '"SIG{}"')
        raise Invalid(f'expected a signal like "SIGTERM" or a number, got {show(value)}{hint}')
    raise expected('a signal like "SIGTERM" or a number', value)


def absolute(base: Path, text: str) -> Path:
    """``text`` as an absolute, normalized path; relative means relative to ``base``."""
    return Path(os.path.abspath(base / os.path.expanduser(text)))


def directory(base: Path, value: object) -> Path:
    """An existing directory, relative to ``base``: a typo fails at load, not at spawn."""
    path = absolute(base, path_text(value))
    try:
        is_dir = path.is_dir()
    except OSError as error:  # pathlib swallows only ENOENT and its kind, not ENAMETOOLONG or EACCES
        raise Invalid(f"cannot use {printable(str(path))}: {error.strerror}") from None
    if not is_dir:
        raise Invalid(f"{'not a directory' if path.exists() else 'no such directory'}: {printable(str(path))}")
    return path


def listen_address(base: Path, value: object) -> str:
    """Check "host:port", "[v6]:port", "unix:/path" or "unix:@name" (see `parse_listen_address`).

    The daemon binds these itself, so a typo must fail at `check` time and
    not at the first restart. A relative unix socket path is made absolute
    against ``base`` (the config's directory), like every other path.
    """
    if not isinstance(value, str):
        raise expected(f"an address {LISTEN_EXAMPLES}", value)
    address = parse_listen_address(value)
    if isinstance(address, UnixAddress) and not address.abstract:
        return f"unix:{absolute(base, address.path)}"
    return value


@frozen
class TcpAddress:
    """A TCP listen address: ``host`` as written, an IPv6 address without its brackets."""

    host: str
    port: int


@frozen
class UnixAddress:
    """A unix socket listen address: ``path`` as written after "unix:"."""

    path: str  # "@name": a name in Linux's abstract namespace, no file

    @property
    def abstract(self) -> bool:
        return self.path.startswith("@")

    @property
    def sockaddr(self) -> str:
        """The address to bind(2), and what getsockname() gives back: "@" spelled as the NUL it stands for."""
        return "\0" + self.path[1:] if self.abstract else self.path


ListenAddress = TcpAddress | UnixAddress
"""A ``listen`` entry taken apart, for whoever binds it or looks for it among open sockets."""


def parse_listen_address(text: str) -> ListenAddress:
    """Take a listen address apart: "host:port", "[v6]:port", "unix:/path" or "unix:@name".

    The one reader of the syntax: the config check and the daemon's binding
    and matching of sockets all go through it. Raises Invalid saying what is
    wrong. A unix path is kept as written (relative stays relative).
    """
    if text.startswith("unix:"):
        socket_path = text.removeprefix("unix:")
        if not socket_path:
            raise expected('a socket path after "unix:"', text)
        if "\0" in socket_path and not socket_path.startswith("@"):  # "@": Linux's abstract namespace
            raise Invalid(f"a socket path cannot contain a NUL character, got {show(text)}")
        return UnixAddress(socket_path)
    host, colon, port = text.rpartition(":")
    if not colon or not host or not port.isascii() or not port.isdigit():
        raise expected(f"an address {LISTEN_EXAMPLES}", text)
    if len(port) > 5 or int(port) > 65535:  # int() refuses more than 4300 digits
        raise expected("a port from 0 to 65535", text)
    if not _valid_host(host):
        raise expected("an IPv4 address, [IPv6] address or host name before the port", text)
    return TcpAddress(host[1:-1] if host.startswith("[") else host, int(port))


def _valid_host(host: str) -> bool:
    try:
        if host.startswith("[") and host.endswith("]"):
            ipaddress.IPv6Address(host[1:-1])
        elif re.fullmatch(r"[0-9.]+", host):
            ipaddress.IPv4Address(host)
        else:
            return _HOSTNAME.fullmatch(host) is not None
    except ValueError:
        return False
    return True


def env(value: object) -> dict[str, str]:
    """Environment strings; numbers and booleans are written as TOML spells them."""
    if not isinstance(value, dict):
        raise expected('a table like { MODE = "prod" }', value)
    result: dict[str, str] = {}
    errors: list[tuple[tuple[str | int, ...], str]] = []
    for key, item in value.items():
        if not key or "=" in key or "\0" in key:
            errors.append(((key,), 'environment names may not be empty or contain "="'))
        elif isinstance(item, str | int | float) and "\0" not in str(item):
            result[key] = show(item) if isinstance(item, bool) else str(item)
        else:
            errors.append(((key,), expected("a string, number or boolean", item).args[0]))
    if errors:
        raise Invalid.many(errors)
    return result


def command(value: object) -> tuple[str, ...]:
    """The argv template: a shell-split string or an array of strings."""
    if isinstance(value, str):
        try:
            argv = shlex.split(value)
        except ValueError as error:
            raise Invalid(f"cannot split into words: {error}") from None
        if not argv:
            raise expected("a non-empty command", value)
        try:
            return array_of(_template, "strings")(argv)
        except Invalid as error:  # words of a string have no key path of their own
            raise Invalid.many([((), message) for _, message in error.errors]) from None
    if isinstance(value, list) and value:
        return array_of(_template, "strings")(value)
    raise expected("a command string or a non-empty array of strings", value)


def _template(value: object) -> str:
    text = string(value)
    if "\0" in text:  # execve() takes no NUL: refuse it at check time, not at spawn
        raise Invalid(f"a command cannot contain a NUL character, got {show(text)}")
    placeholders(text)
    return text


def placeholders(part: str) -> set[str]:
    """The placeholders ``part`` uses; any other one, or a stray brace, is Invalid."""
    try:
        names = {name for _, name, _, _ in _string.Formatter().parse(part) if name is not None}
    except ValueError:
        raise Invalid(f"stray brace in {show(part)} (write {{{{ or }}}} for a literal one)") from None
    for _, name, spec, _ in _string.Formatter().parse(part):
        if name is not None and re.search(r"\d{5}", spec or ""):  # "{port:>999999999999}": a MemoryError
            raise Invalid(f"format width or precision past 9999 in {show(part)}")
    for name in names:
        if re.split(r"[.\[]", name)[0] not in PLACEHOLDERS:
            hint = did_you_mean(name, PLACEHOLDERS, template="{{{}}}")
            known = "use {app}, {instance} or {port}"
            raise Invalid(f"unknown placeholder {{{printable(name)}}} in {show(part)}{hint}; {known}")
    try:
        part.format(app="app", instance=0, port=1)
    except (ValueError, LookupError, AttributeError, TypeError) as error:
        raise Invalid(f"bad template {show(part)}: {printable(str(error))}") from None
    return names
