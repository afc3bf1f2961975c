"""What an app runs and how many: ``command`` with ``shell``, shell syntax that would be passed
literally, and ``instances`` as a count or per CPU.

A string ``command`` is split into words like a shell would, but no shell
runs it: ``$VAR``, ``|``, ``>`` or ``*.py`` reach the program as they are
written. An app whose command needs a shell crash-loops without one, so
the loader warns of such syntax, and ``shell = true`` runs the string
through ``/bin/sh -c``.
"""

from __future__ import annotations

import os
import re
from typing import Any

from supervise.config import units as units
from supervise.config.units import Invalid, show

__all__ = ["command", "cpus", "instances", "shell_syntax"]

_MAX = re.compile(r"max(?:-(\d{1,6}))?")
_SHELLS = {"sh", "bash", "dash", "zsh", "ksh", "ash", "busybox"}  # a command run by one of these is its business
_BUILTINS = {"exec", "cd", "export", "source", "."}  # shell builtins: no program of that name to execve()
_ASSIGNMENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*=")
_OPERATORS = {
    "&&": "&& (and-then)", "||": "|| (or-else)", ";": "; (a command separator)", "|": "| (a pipe)",
    "&": "& (run in the background)", ">": "> (a redirection)", "<": "< (a redirection)",
}


def command(value: Any, shell: bool) -> tuple[str, ...]:
    """The argv template; with ``shell``, the one string /bin/sh -c will run, not split."""
    if not shell:
        return units.command(value)
    if not isinstance(value, str):
        raise Invalid("with shell = true, command is one string for /bin/sh -c, not an array: write it as "
                      'the shell line, like command = "exec python3 w.py > out.log"')
    text = units.string(value)
    if "\0" in text:
        raise Invalid(f"a command cannot contain a NUL character, got {show(text)}")
    try:
        units.placeholders(text)
    except Invalid as error:
        raise Invalid(f"{error}; in a shell command write $VAR, or ${{{{VAR}}}} for ${{VAR}}") from None
    return (text,)


def cpus() -> int:
    """The CPUs this process may run on (its affinity mask, as a container's cpuset limits it)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        return os.cpu_count() or 1


def instances(value: Any) -> int:
    """A count >= 0, ``"max"`` (one per CPU) or ``"max-N"`` (N fewer, at least 1)."""
    if not isinstance(value, str):
        return units.integer(value)
    match = _MAX.fullmatch(value.strip().lower())
    if match is None:
        raise units.expected('an integer >= 0, "max" (one per CPU) or "max-N" (N fewer than the CPUs)', value)
    return max(1, cpus() - int(match[1] or 0))


def shell_syntax(text: str) -> str | None:
    """The first construct of ``text`` a shell would act on but a plain split leaves as it is, described;
    None when there is none. Quoted text counts as the shell sees it ($ still expands in double quotes).
    A command that runs a shell itself (``sh -c "..."``) has none: its shell reads the rest."""
    words = _words(text)
    first = "".join(char for char, _ in words[0]) if words else ""
    if os.path.basename(first) in _SHELLS:
        return None
    if first in _BUILTINS:
        return f"{first} (a shell builtin)"
    if _ASSIGNMENT.match(first) and words[0][0][1] == "":
        return f"{first.split('=')[0]}=... before the program (a variable assignment: use env, or env_file)"
    for word in words:
        written = "".join(char for char, _ in word)
        for index, (char, quote) in enumerate(word):
            if quote == "'":
                continue
            following = "".join(c for c, _ in word[index + 1 :])
            if found := _expansion(char, following):
                return found
            if quote == '"':
                continue
            if char in "&|;<>":
                pair = char + following[:1]
                return _OPERATORS[pair] if pair in _OPERATORS else _OPERATORS[char]
            if char in "*?" and "://" not in written and "=" not in written:
                return f"{char} (a file name pattern)"
            if char == "~" and index == 0:
                return "~ (the home directory)"
    return None


def _expansion(char: str, following: str) -> str | None:
    if char == "`":
        return "`...` (command substitution)"
    if char != "$":
        return None
    if following.startswith("("):
        return "$(...) (command substitution)"
    if following.startswith("{"):
        return "${...} (a variable)"
    if name := re.match(r"[A-Za-z_][A-Za-z0-9_]*", following):
        return f"${name[0]} (a variable)"
    return None


def _words(text: str) -> list[list[tuple[str, str]]]:
    """``text`` split as sh would, each character with the quote it stood in ("", "'" or '"');
    an escaped character counts as single-quoted (literal)."""
    words: list[list[tuple[str, str]]] = []
    word: list[tuple[str, str]] | None = None
    quote = ""
    index = 0
    while index < len(text):
        char = text[index]
        index += 1
        if quote == "'" and char != "'":
            word = _append(words, word, char, "'")
        elif char == quote:
            quote = ""
        elif char == "\\" and index < len(text) and (not quote or text[index] in '$`"\\'):
            word = _append(words, word, text[index], "'")
            index += 1
        elif not quote and char in "'\"":
            quote = char
            word = word if word is not None else _start(words)
        elif not quote and char.isspace():
            word = None
        else:
            word = _append(words, word, char, quote)
    return words


def _start(words: list[list[tuple[str, str]]]) -> list[tuple[str, str]]:
    words.append([])
    return words[-1]


def _append(words: list[list[tuple[str, str]]], word: list[tuple[str, str]] | None, char: str,
            quote: str) -> list[tuple[str, str]]:
    word = word if word is not None else _start(words)
    word.append((char, quote))
    return word
