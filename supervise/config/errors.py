"""What is wrong with a config: each problem located by file, line and key path.

Light on purpose (no dataclasses): the CLI imports it to catch a bad config
without importing the loader.
"""

from __future__ import annotations

from collections import namedtuple
from pathlib import Path
from typing import Any

__all__ = ["BadConfig", "ConfigError", "Problem"]


class BadConfig(Exception):
    """A config that cannot be used; the message says where and why."""


class Problem(namedtuple("Problem", "file line key message")):
    """One thing wrong in a config, located so an editor can jump to it."""

    __slots__ = ()
    file: Path
    line: int | None
    key: str
    message: str

    def __str__(self) -> str:
        where = str(self.file) if self.line is None else f"{self.file}:{self.line}"
        return ": ".join(part for part in (where, self.key, self.message) if part)


class ConfigError(BadConfig):
    """Every problem of a config at once, so one edit can fix them all."""

    def __init__(self, problems: list[Problem]) -> None:
        self.problems = list(problems)
        super().__init__("\n".join(map(str, self.problems)))

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.problems,))
