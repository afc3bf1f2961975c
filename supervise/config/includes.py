"""``[supervise] include``: more files of ``[apps.*]`` tables, merged into the main config in order.

Globs are relative to the main file's directory; each glob's matches are
taken in sorted order, and a file matched twice (or the main file itself,
as ``*.toml`` next to it would) is read once. A glob that matches nothing is
fine: a ``conf.d`` may be empty. Errors in an included file name that file and
its line, each file having its own line index.
"""

from __future__ import annotations

import glob
import os
from pathlib import Path

from supervise.config.errors import ConfigError
from supervise.config.lines import LineIndex
from supervise.config.table import Check, Table
from supervise.config.toml import read_toml

__all__ = ["included"]


def included(check: Check, globs: tuple[str, ...], base: Path) -> tuple[list[Path], list[Table]]:
    """The files ``globs`` match (absolute, in order) and the ``apps`` table of each that reads."""
    files = _matches(check, globs, base)
    tables = []
    for path in files:
        shown = check.shown(path)
        try:
            text, data = read_toml(shown)
        except ConfigError as error:
            check.problems.extend(error.problems)
            continue
        own = check.sibling(shown, LineIndex(text))
        for key in data:
            if key != "apps":
                main = key in ("supervise", "cluster")
                where = f"; [{key}] belongs in the main file, {check.main_file}" if main else ""
                own.report((key,), f"an included file may hold only [apps.*] tables{where}")
        tables.append(Table(own, (), data, None).table("apps", None, " of apps like [apps.web]"))
    return files, tables


def _matches(check: Check, globs: tuple[str, ...], base: Path) -> list[Path]:
    main = Path(os.path.abspath(check.main_file))
    files: list[Path] = []
    for pattern in globs:
        for match in sorted(glob.glob(os.path.join(base, os.path.expanduser(pattern)), recursive=True)):
            path = Path(os.path.abspath(match))
            if path != main and path not in files and path.is_file():
                files.append(path)
    return files
