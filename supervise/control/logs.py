"""`supervise logs`: the last lines of instances' log files, then (with -f) new ones.

Reading files directly keeps the daemon out of the data path: output is
there even when the daemon is not. Several instances are prefixed by name.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

TAIL_BLOCK = 8192
FOLLOW_POLL = 0.1  # a user-facing follow loop, like `tail -f`; not synchronization


def show(files: list[tuple[str, Path]], lines: int, follow: bool) -> None:
    prefix = len(files) > 1
    width = max((len(name) for name, _ in files), default=0)

    def emit(name: str, line: str) -> None:
        sys.stdout.write(f"{name.ljust(width)} | {line}" if prefix else line)

    offsets: dict[Path, int] = {}
    for name, path in files:
        for line in tail(path, lines):
            emit(name, line if line.endswith("\n") else line + "\n")
        offsets[path] = path.stat().st_size if path.exists() else 0
    sys.stdout.flush()
    if not follow:
        return
    partial: dict[Path, str] = {}
    try:
        while True:
            for name, path in files:
                offsets[path], text = _read_new(path, offsets[path])
                if not text:
                    continue
                text = partial.pop(path, "") + text
                *complete, rest = text.split("\n")
                for line in complete:
                    emit(name, line + "\n")
                if rest:
                    partial[path] = rest
            sys.stdout.flush()
            time.sleep(FOLLOW_POLL)
    except (KeyboardInterrupt, BrokenPipeError):
        return


def _read_new(path: Path, offset: int) -> tuple[int, str]:
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        return 0, ""
    if size < offset:  # rotated (truncated): start again from the top
        offset = 0
    if size == offset:
        return offset, ""
    with path.open("rb") as f:
        f.seek(offset)
        data = f.read(size - offset)
    return offset + len(data), data.decode(errors="replace")


def tail(path: Path, lines: int, block_size: int = TAIL_BLOCK) -> list[str]:
    """The last `lines` lines of `path`, without line endings; [] when it does not exist.

    Reads backwards in blocks, so a huge log costs only what is shown.
    Bytes that are not UTF-8 are replaced, never an error.
    """
    if lines <= 0:
        return []
    try:
        f = open(path, "rb")
    except FileNotFoundError:
        return []
    with f:
        end = f.seek(0, os.SEEK_END)
        start = end
        blocks: list[bytes] = []
        newlines = 0
        # One more newline than lines wanted guarantees the first kept line is whole.
        while start > 0 and newlines <= lines:
            block_end, start = start, max(0, start - block_size)
            f.seek(start)
            blocks.append(f.read(block_end - start))
            newlines += blocks[-1].count(b"\n")
    data = b"".join(reversed(blocks))
    found = data.splitlines()
    if start > 0:
        found = found[1:]  # began mid-line
    return [line.decode("utf-8", errors="replace") for line in found[-lines:]]
