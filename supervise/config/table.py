"""The loader's reading tools: a problem collector per file, and typed reads of one TOML table.

A config may span files (``[supervise] include``, ``env_file``): each file has
its own :class:`Check` (its own line index), and all of them share one list of
problems and one of warnings, so everything is reported at once.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import fields
from pathlib import Path
from typing import Any

from supervise.config import units as units
from supervise.config.errors import Problem
from supervise.config.lines import Key, LineIndex, key_text
from supervise.config.model import AppConfig
from supervise.config.units import Invalid, did_you_mean

__all__ = ["ABSENT", "Apps", "Check", "Table", "keys"]


class Check:
    """Collects the problems (and warnings) of one file, each located by its key path."""

    def __init__(self, file: Path, lines: LineIndex, main: Check | None = None) -> None:
        self.file = file
        self.lines = lines
        self.main_file: Path = file if main is None else main.main_file
        self.problems: list[Problem] = [] if main is None else main.problems
        self.warnings: list[Problem] = [] if main is None else main.warnings

    def sibling(self, file: Path, lines: LineIndex) -> Check:
        """The Check of another file of the same config: its problems go to the same lists."""
        return Check(file, lines, self)

    def shown(self, path: Path) -> Path:
        """How to name the absolute ``path`` in a message: under the main file's directory as the
        user named it (``conf.d/a.toml`` for ``-c supervise.toml``), else absolute."""
        base = Path(os.path.abspath(self.main_file)).parent
        return self.main_file.parent / os.path.relpath(path, base) if path.is_relative_to(base) else path

    def add(self, problem: Problem) -> None:
        """A problem located elsewhere than by a key of this file (a line of an env file)."""
        self.problems.append(problem)

    def where(self, path: Key) -> str:
        """``file:line`` of ``path``, for a message that points to another place."""
        line = self.lines.line_of(path)
        return str(self.file) if line is None else f"{self.file}:{line}"

    def report(self, path: Key, message: str) -> None:
        self.problems.append(Problem(self.file, self.lines.line_of(path), key_text(path), message))

    def warn(self, path: Key, message: str) -> None:
        """Something that works but is likely not what was meant: `supervise check` prints it."""
        self.warnings.append(Problem(self.file, self.lines.line_of(path), key_text(path), message))


class Table:
    """One TOML table being read: typed gets, unknown keys reported up front.

    ``hints`` gives an unknown key a message of its own instead of a "did you mean" (the
    names other supervisors use for a setting, pointing to ours).
    """

    def __init__(self, check: Check, path: Key, raw: Any, known: tuple[str, ...] | None,
                 hints: Mapping[str, str] | None = None) -> None:
        self.check, self.path = check, path
        self.raw: dict[str, Any] = raw if isinstance(raw, dict) else {}
        self.bad: set[str] = set()
        if known is not None:
            for key in self.raw:
                if key in known:
                    continue
                hint = hints.get(key) if hints is not None else None
                message = f"unknown key: {hint}" if hint else "unknown key" + did_you_mean(key, known)
                check.report(path + (key,), message)

    def report(self, at: Key, message: str) -> None:
        """A problem at ``at`` below this table."""
        self.check.report(self.path + at, message)

    def warn(self, at: Key, message: str) -> None:
        self.check.warn(self.path + at, message)

    def get(self, key: str, convert: Callable[[Any], Any], default: Any = None) -> Any:
        """The converted value of ``key``, or ``default`` if absent or invalid."""
        if key not in self.raw:
            return default
        try:
            return convert(self.raw[key])
        except Invalid as error:
            self.bad.add(key)
            for at, message in error.errors:
                self.check.report(self.path + (key, *at), message)
            return default

    def read(self, converters: dict[str, Callable[[Any], Any]]) -> dict[str, Any]:
        """The valid values among ``converters``' keys, ready to pass as kwargs."""
        values = {key: self.get(key, convert, ABSENT) for key, convert in converters.items()}
        return {key: value for key, value in values.items() if value is not ABSENT}

    def table(self, key: str, known: tuple[str, ...] | None, example: str = "") -> Table:
        """The sub-table ``key`` (empty when absent or not a table)."""
        raw = self.raw.get(key, {})
        if not isinstance(raw, dict):
            self.bad.add(key)
            self.check.report(self.path + (key,), units.expected(f"a table{example}", raw).args[0])
        return Table(self.check, self.path + (key,), raw, known)


class Apps:
    """The apps of the main file and of its includes: each reports into the file it is written in."""

    def __init__(self) -> None:
        self.raw: dict[str, Any] = {}  # name -> its raw table, in order: main file first, then includes
        self.tables: dict[str, Table] = {}  # name -> the [apps] table (of its file) it is written in
        self.configs: dict[str, AppConfig] = {}  # those valid enough to build

    def report(self, name: str, at: Key, message: str) -> None:
        self.tables[name].report((name, *at), message)


ABSENT = object()


def keys(cls: type, *skip: str) -> tuple[str, ...]:
    """The config keys of a model dataclass: its fields but ``skip``."""
    return tuple(f.name for f in fields(cls) if f.name not in skip)
