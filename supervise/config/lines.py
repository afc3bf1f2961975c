"""Where each key of a TOML file is written.

tomllib returns values without positions, yet every config error must name
its line. This scans the source once and maps each key path (table headers,
dotted keys, keys of inline tables, items of arrays) to the line it starts
on. It runs only on text tomllib has already accepted, so it never has to
reject anything: it only has to skip strings, comments and values correctly.
"""

from __future__ import annotations

import bisect
import json
import re
import tomllib

Key = tuple[str | int, ...]

_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")
_SPACE = " \t\r"


def key_text(path: Key) -> str:
    """A key path as the user would write it: ``apps."my.app".listen[1]``."""
    text = ""
    for part in path:
        if isinstance(part, int):
            text += f"[{part}]"
        else:
            quoted = part if _BARE_KEY.fullmatch(part) else json.dumps(part, ensure_ascii=False)
            text += f".{quoted}" if text else quoted
    return text


class LineIndex:
    """Key path -> line number (1-based) of one TOML source."""

    def __init__(self, text: str) -> None:
        self._lines = _Scanner(text).run()
        self._text = text

    def source(self, path: Key) -> str | None:
        """The text of the line ``path`` is written on (see line_of)."""
        line = self.line_of(path)
        return None if line is None else self._text.split("\n")[line - 1]

    def line_of(self, path: Key) -> int | None:
        """The line of ``path``, else of its nearest ancestor that is written down."""
        for end in range(len(path), 0, -1):
            line = self._lines.get(tuple(path[:end]))
            if line is not None:
                return line
        return None


class _Scanner:
    """A cursor over valid TOML that records where keys start."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.pos = 0
        self.newlines = [i for i, char in enumerate(text) if char == "\n"]
        self.found: dict[Key, int] = {}

    def run(self) -> dict[Key, int]:
        table: Key = ()
        try:
            while self._skip(newlines=True) < len(self.text):
                if self._peek() == "[":
                    table = self._header()
                else:
                    self._key_value(table)
        except (IndexError, ValueError, RecursionError, tomllib.TOMLDecodeError):
            pass  # a construct this scanner misreads costs line numbers, never the load
        return self.found

    def _peek(self) -> str:
        return self.text[self.pos : self.pos + 1]

    def _skip(self, newlines: bool = False) -> int:
        """Move past spaces and comments (and newlines if asked); return the position."""
        while self.pos < len(self.text):
            char = self.text[self.pos]
            if char == "#":
                end = self.text.find("\n", self.pos)
                self.pos = len(self.text) if end < 0 else end
            elif char in _SPACE or (newlines and char == "\n"):
                self.pos += 1
            else:
                break
        return self.pos

    def _record(self, path: Key, start: int, since: int = 0) -> None:
        """Note ``path`` and its not-yet-seen ancestors below length ``since``."""
        line = bisect.bisect_left(self.newlines, start) + 1
        for end in range(max(since, 1), len(path) + 1):
            self.found.setdefault(path[:end], line)

    def _header(self) -> Key:
        start = self.pos
        brackets = 2 if self.text.startswith("[[", self.pos) else 1
        self.pos += brackets
        path = self._key()
        self._skip()
        self.pos += brackets
        self._record(path, start)
        return path

    def _key_value(self, table: Key) -> None:
        start = self.pos
        path = table + self._key()
        self._record(path, start, since=len(table) + 1)
        self._skip()
        if self._peek() != "=":
            raise ValueError("expected '='")
        self.pos += 1
        self._skip()
        self._value(path)

    def _key(self) -> Key:
        parts: list[str] = []
        while True:
            self._skip()
            parts.append(self._key_part())
            self._skip()
            if self._peek() != ".":
                return tuple(parts)
            self.pos += 1

    def _key_part(self) -> str:
        if self._peek() in "\"'":
            start = self.pos
            self._string()
            raw = self.text[start : self.pos]
            key = tomllib.loads(f"k = {raw}")["k"]
            if not isinstance(key, str):  # cannot happen for a quoted key; said for the type checker's sake
                raise ValueError("expected a key")
            return key
        match = _BARE_KEY.match(self.text, self.pos)
        if match is None:
            raise ValueError("expected a key")
        self.pos = match.end()
        return match.group(0)

    def _value(self, path: Key) -> None:
        char = self._peek()
        if char in "\"'":
            self._string()
        elif char == "{":
            self._inline_table(path)
        elif char == "[":
            self._array(path)
        else:  # number, bool, date: runs to a delimiter (dates may hold a space)
            while self.pos < len(self.text) and self.text[self.pos] not in ",]}#\n":
                self.pos += 1

    def _inline_table(self, path: Key) -> None:
        self.pos += 1
        while self._skip(newlines=True) < len(self.text):
            char = self._peek()
            if char == "}":
                self.pos += 1
                return
            if char == ",":
                self.pos += 1
            else:
                self._key_value(path)

    def _array(self, path: Key) -> None:
        self.pos += 1
        index = 0
        while self._skip(newlines=True) < len(self.text):
            char = self._peek()
            if char in ",]":
                self.pos += 1
                if char == "]":
                    return
                continue
            start = self.pos
            self._record(path + (index,), start, since=len(path) + 1)
            self._value(path + (index,))
            if self.pos == start:
                raise ValueError("stuck in an array")
            index += 1

    def _string(self) -> None:
        """Move past one string of any of TOML's four kinds."""
        quote = self.text[self.pos]
        if self.text.startswith(quote * 3, self.pos):
            end = self._string_end(self.pos + 3, quote * 3, escapes=quote == '"')
            for _ in range(2):  # up to two quotes may sit right before the closing three
                end += self.text.startswith(quote, end)
            self.pos = end
        else:
            self.pos = self._string_end(self.pos + 1, quote, escapes=quote == '"')

    def _string_end(self, pos: int, closing: str, escapes: bool) -> int:
        while not self.text.startswith(closing, pos):
            if pos >= len(self.text):
                raise ValueError("unterminated string")
            pos += 2 if escapes and self.text[pos] == "\\" else 1
        return pos + len(closing)
