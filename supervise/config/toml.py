"""A TOML file's text and data, every failure a ConfigError naming the file and line.

Shared by the loader and by locate (which needs only the state dir, and
reads the file with this when its own scanner cannot).
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Any

from supervise.config.errors import ConfigError, Problem

__all__ = ["parse_toml", "read_toml"]


def read_toml(file: Path) -> tuple[str, dict[str, Any]]:
    """The text and parsed TOML of ``file``; any failure is a ConfigError."""

    def fail(message: str, line: int | None = None) -> ConfigError:
        return ConfigError([Problem(file, line, "", message)])

    try:
        data = file.read_bytes()
    except FileNotFoundError:
        raise fail("no such file") from None
    except IsADirectoryError:
        raise fail("is a directory, not a config file") from None
    except OSError as error:
        raise fail(f"cannot read: {error.strerror}") from None
    try:
        text = data.decode("utf-8").removeprefix("\ufeff")
    except UnicodeDecodeError as error:
        raise fail("not UTF-8 text", data.count(b"\n", 0, error.start) + 1) from None
    return text, parse_toml(file, text)


def parse_toml(file: Path, text: str) -> dict[str, Any]:
    """``tomllib.loads(text)``; any failure is a ConfigError."""
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        message, line = _toml_error(str(error), text)
    except RecursionError:
        message, line = "arrays or inline tables nested too deeply", None
    except ValueError:  # tomllib's int() of more digits than sys.get_int_max_str_digits() (4300)
        message, line = "an integer of more than 4300 digits", None
    raise ConfigError([Problem(file, line, "", f"invalid TOML: {message}")])


def _toml_error(message: str, text: str) -> tuple[str, int | None]:
    """Split tomllib's "Invalid value (at line 3, column 7)" into message and line."""
    message = message[:1].lower() + message[1:]
    if match := re.search(r" \(at line (\d+), column (\d+)\)$", message):
        return f"{message[: match.start()]} (column {match[2]})", int(match[1])
    if message.endswith(" (at end of document)"):
        return message.removesuffix(" (at end of document)") + " at end of file", text.count("\n") + 1
    return message, None
