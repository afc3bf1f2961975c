"""``env_file``: environment files in dotenv syntax, read at load (so a reload re-reads them).

The syntax, the common ground of python-dotenv, docker compose and systemd's
``EnvironmentFile=``: ``KEY=VALUE`` lines, an optional ``export`` before the
key, ``#`` comments and blank lines; a value in single quotes is literal, one
in double quotes takes ``\\n \\t \\r \\" \\\\`` escapes (both may span lines),
an unquoted one is trimmed and loses a trailing `` #comment``. Nothing is
expanded: ``$HOME`` stays ``$HOME``, as systemd leaves it.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from supervise.config import units as units
from supervise.config.errors import Problem
from supervise.config.lines import key_text
from supervise.config.table import Table
from supervise.config.units import printable

__all__ = ["env_files", "parse"]

_ASSIGNMENT = re.compile(r"[ \t]*(?:export[ \t]+)?([^=]*?)[ \t]*=[ \t]*")
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", '"': '"', "\\": "\\"}


class _Bad(Exception):
    def __init__(self, line: int, message: str) -> None:
        super().__init__(message)
        self.line, self.message = line, message


def parse(text: str) -> tuple[dict[str, str], list[tuple[int, str]]]:
    """The variables of ``text`` in order (a later one wins), and (line, message) for each bad line."""
    values: dict[str, str] = {}
    errors: list[tuple[int, str]] = []
    lines = text.replace("\r\n", "\n").split("\n")
    index = 0
    while index < len(lines):
        line = lines[index]
        number = index + 1
        index += 1
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        match = _ASSIGNMENT.match(line)
        if match is None:
            errors.append((number, f"expected KEY=VALUE, got {units.show(stripped)}"))
            continue
        name = match[1]
        if not _NAME.fullmatch(name):
            errors.append((number, f"not a valid environment name: {units.show(name)} "
                                   "(letters, digits and _, not starting with a digit)"))
            continue
        try:
            value, index = _value(lines, index - 1, match.end())
        except _Bad as bad:
            errors.append((bad.line, bad.message))
            continue
        if "\0" in value:
            errors.append((number, f"{name}: a value cannot contain a NUL character"))
            continue
        values[name] = value
    return values, errors


def _value(lines: list[str], index: int, start: int) -> tuple[str, int]:
    """The value starting at ``lines[index][start:]``, and the index of the line after it."""
    rest = lines[index][start:]
    if rest[:1] in ("'", '"'):
        return _quoted(lines, index, start)
    comment = re.search(r"\s#", rest)
    return (rest[: comment.start()] if comment else rest).strip(), index + 1


def _quoted(lines: list[str], index: int, start: int) -> tuple[str, int]:
    quote = lines[index][start]
    first = index
    text, pos, out = lines[index], start + 1, []
    while True:
        if pos >= len(text):  # the value goes on on the next line
            index += 1
            if index >= len(lines):
                raise _Bad(first + 1, f"no closing {quote} for the value that starts here")
            out.append("\n")
            text, pos = lines[index], 0
            continue
        char = text[pos]
        if char == quote:
            break
        if char == "\\" and quote == '"' and pos + 1 < len(text):
            escaped = text[pos + 1]
            out.append(_ESCAPES.get(escaped, "\\" + escaped))
            pos += 2
            continue
        out.append(char)
        pos += 1
    after = text[pos + 1 :].strip()
    if after and not after.startswith("#"):
        raise _Bad(index + 1, f"unexpected text after the closing {quote}: {units.show(after)}")
    return "".join(out), index + 1


def env_files(table: Table, base: Path) -> tuple[Path | None, dict[str, str]]:
    """The app's ``env_file`` (one path or an array, relative to ``base``) read and merged in order,
    a later file winning; and the first path, for AppConfig.env_file. A problem in a file names
    that file and its line."""
    raw = table.raw.get("env_file")
    paths: tuple[Path, ...] = table.get("env_file", _paths(base), ())
    values: dict[str, str] = {}
    for index, path in enumerate(paths):
        at: tuple[str | int, ...] = ("env_file", index) if isinstance(raw, list) else ("env_file",)
        text = _read(table, at, path)
        if text is None:
            continue
        parsed, errors = parse(text)
        for line, message in errors:
            table.check.add(Problem(table.check.shown(path), line, key_text(table.path + at), message))
        values.update(parsed)
    return (paths[0] if paths else None), values


def _paths(base: Path) -> Callable[[Any], tuple[Path, ...]]:
    def convert(value: Any) -> tuple[Path, ...]:
        if isinstance(value, str):
            return (units.absolute(base, units.path_text(value)),)
        if not isinstance(value, list) or not value:
            raise units.expected('a path or an array of paths, like ".env" or [".env", ".env.local"]', value)
        return tuple(units.absolute(base, path) for path in units.array_of(units.path_text, "paths")(value))

    return convert


def _read(table: Table, at: tuple[str | int, ...], path: Path) -> str | None:
    name = printable(str(table.check.shown(path)))
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        table.report(at, f"no such file: {name}")
        return None
    except IsADirectoryError:
        table.report(at, f"is a directory, not an env file: {name}")
        return None
    except OSError as error:
        table.report(at, f"cannot read {name}: {error.strerror}")
        return None
    try:
        return data.decode("utf-8").removeprefix("\ufeff")
    except UnicodeDecodeError as error:
        table.check.add(Problem(table.check.shown(path), data.count(b"\n", 0, error.start) + 1,
                                key_text(table.path + at), "not UTF-8 text"))
        return None
