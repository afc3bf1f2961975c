"""`supervise logs`: instances' log files merged in time order, filtered by time and pattern; then (-f) new lines.

Reading files directly keeps the daemon out of the data path: output is
there even when the daemon is not. Several instances are prefixed by name.

**Time.** A log file holds the worker's output as it printed it, with no
time on its lines; the daemon's time index beside it (wire/logindex.py) says
when each stretch of bytes was written, to 20 ms. A line's time is when its
first byte was written. With that:

- the lines of several instances are merged in the order they were written
  (to within those 20 ms; equal times keep the instances' order), for the
  first lines and for ``-f`` alike. ``-f`` holds each line back for
  :data:`HOLD` (0.12 s) so that a line another instance wrote just before it,
  not yet in its file, still comes first;
- ``--since`` seeks straight to the first record at or after that time, and
  reads back into the rotated files (``.1``, ``.2``, ...) while they hold
  lines that recent.

A log without an index (written by an older daemon, or by a worker itself)
is shown as before indexes, its last lines, placed among the others at the
file's modification time (no line in it is more recent); ``--since`` cannot
apply to it (a note on stderr says so) beyond skipping it whole when the
file is older. Output an older daemon wrote at the start of a log that this
daemon went on writing (after an upgrade) has no time of its own either: it
is merged as if written just before the first indexed line, and ``--since``
leaves it out. A broken index counts as none.

**Filters.** ``--grep`` is a Python regular expression (``re.search``: use
``(?i)`` for case-insensitive), tried on each line, in the first lines and
in ``-f`` alike; ``-n`` then counts matching lines. ``--since`` takes a
duration back from now (``30s``, ``10m``, ``2h``, ``1d``, ``1h30m``; a bare
number is seconds) or a local time: ``20:15`` or ``20:15:30`` (today's, or
yesterday's if today's is still to come) or a date and time
(``2026-11-30T20:15``, ``2026-11-30 20:15:00``, ``2026-11-30``, with a UTC
offset if you like). With ``--since`` and no ``-n``, every line since then
is shown.
"""

from __future__ import annotations

import heapq
import itertools
import os
import re
import sys
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

from supervise.wire import logindex

# typing.TYPE_CHECKING without importing typing, which nothing else on the CLI's path imports.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import BinaryIO

TAIL_BLOCK = 8192
READ_BLOCK = 1 << 16
FALLBACK_LINES = 20  # a log without an index, under --since: its last lines, as before indexes
FOLLOW_POLL = 0.1  # a user-facing follow loop, like `tail -f`; not synchronization
HOLD = logindex.EVERY + 0.1
"""Seconds `-f` holds a line back before printing it among other instances' lines. A line not
yet read when the files were read at time R has a time after R - HOLD: its index record is at
most EVERY older than its write, and the daemon takes well under 0.1 s from stamping a write to
making it (unless its loop stood still)."""
MAX_PARTIAL = 1 << 16  # bytes without a newline that -f shows as a line anyway

Line = tuple[float, int, int, str]
"""A line of output: (its time, the instance's rank, its number in what was read of the instance, its text)."""


class SinceError(ValueError):
    """A --since value that is neither a duration nor a time."""


def parse_since(text: str, now: float | None = None) -> float:
    """The Unix time `text` names: a duration back from `now`, or a local time (see the module)."""
    import datetime

    from supervise.config.units import Invalid, duration

    now = time.time() if now is None else now
    value = text.strip()
    if re.fullmatch(r"\d+(?:\.\d*)?", value):
        return now - float(value)  # seconds
    days = re.fullmatch(r"(\d+(?:\.\d*)?)\s*d\s*(.*)", value)
    try:
        return now - (float(days[1]) * 86400 + (duration(days[2]) if days[2] else 0.0) if days else duration(value))
    except Invalid:
        pass
    clock = re.fullmatch(r"(\d{1,2}):(\d{2})(?::(\d{2})(\.\d+)?)?", value)
    try:
        if clock:
            at = datetime.datetime.fromtimestamp(now).replace(
                hour=int(clock[1]), minute=int(clock[2]), second=int(clock[3] or 0),
                microsecond=round(float(clock[4] or 0) * 1_000_000))
            when = at.timestamp()
            return when - 86400 if when > now else when  # 23:50 asked at 00:10: yesterday's
        return datetime.datetime.fromisoformat(value).timestamp()  # naive: local time
    except ValueError:
        pass
    raise SinceError(f"expected a duration like 30s, 10m, 2h or 1d, or a local time like 20:15 or "
                     f"2026-11-30T20:15:00, got {text!r}")


def show(files: list[tuple[str, Path]], lines: int | None, follow: bool, since: float | None = None,
         grep: re.Pattern[str] | None = None) -> None:
    """The last `lines` lines (None: all) of the files, merged in time order, only those since
    `since` and matching `grep`; then, with `follow`, new lines as they come, until interrupted."""
    prefix = len(files) > 1
    width = max((len(name) for name, _ in files), default=0)
    names = [name for name, _ in files]

    def emit(rank: int, text: str) -> None:
        sys.stdout.write(f"{names[rank].ljust(width)} | {text}\n" if prefix else text + "\n")

    started = time.time()  # before any file is read
    tracked = [Tracked(rank, path) for rank, (_, path) in enumerate(files)]
    try:
        parts = [t.first_lines(lines, since, grep, follow) for t in tracked]
        for t in tracked:
            if since is not None and t.file is not None and not t.index and t.size and t.mtime >= since:
                print(f"supervise: {names[t.rank]}: its log has no time index (written by an older daemon): "
                      f"--since cannot apply to it; its last lines follow", file=sys.stderr)
        merged: Iterable[Line] = heapq.merge(*parts)
        if lines is not None:
            merged = deque(merged, maxlen=lines)
        held: list[Line] = []
        for line in merged:
            if follow and prefix and line[0] > started - HOLD:
                held.append(line)  # its neighbours from other instances may not be in their files yet
            else:
                emit(line[1], line[3])
        sys.stdout.flush()
        if follow:
            _follow(tracked, held, grep, emit, hold=HOLD if prefix else 0.0)
    except KeyboardInterrupt:
        return
    except BrokenPipeError:
        if not follow:
            raise
    finally:
        for t in tracked:
            t.close()


def _follow(tracked: list[Tracked], held: list[Line], grep: re.Pattern[str] | None,
            emit: Callable[[int, str], None], hold: float) -> None:
    """Read every file on; print lines once older than `hold` as of the last read, in time order."""
    while True:
        read_at = time.time()  # before reading: whatever comes later is timed after read_at - HOLD
        for t in tracked:
            held.extend(t.new_lines(read_at, grep))
        if held:
            held.sort()
            cut = next((i for i, line in enumerate(held) if line[0] > read_at - hold), len(held)) if hold else \
                len(held)
            for line in held[:cut]:
                emit(line[1], line[3])
            del held[:cut]
            sys.stdout.flush()
        time.sleep(FOLLOW_POLL)


class Tracked:
    """One instance's log file (and, for --since, its rotated ones), read forward with its index."""

    def __init__(self, rank: int, path: Path) -> None:
        self.rank, self.path = rank, path
        self._numbers = itertools.count()
        self.file = _open(path)
        stat = os.fstat(self.file.fileno()) if self.file is not None else None
        self.size = stat.st_size if stat is not None else 0
        self.mtime = stat.st_mtime if stat is not None else 0.0
        # Empty: no record (yet); None: an index that is not this log's. Read after the log's
        # size is taken: it then has a record for every byte up to there.
        self.index: logindex.Index | None = logindex.Index()
        self._index_file: BinaryIO | None = None
        if self.file is not None:
            self._read_index()
        self.pos = 0  # where -f reads on
        self._partial = b""  # the start of a line -f has not seen the end of

    def close(self) -> None:
        for f in (self.file, self._index_file):
            if f is not None:
                f.close()

    # -- the first lines ---------------------------------------------------------------------

    def first_lines(self, lines: int | None, since: float | None, grep: re.Pattern[str] | None,
                    follow: bool) -> Iterator[Line]:
        """The lines `logs` shows of this instance before following, in file order."""
        if self.file is None:
            return iter(())
        # -f goes on from the end of the last whole line: one still being written is shown whole, later.
        end = self.pos = _last_line_end(self.file, self.size) if follow else self.size
        if since is not None and not self.index:  # as before indexes, unless not written to since then
            if self.mtime < since:
                return iter(())
            since, lines = None, FALLBACK_LINES if lines is None else lines
        if since is not None and self.index:
            found: Iterator[Line] = (line for part in (*self._backups_since(since),
                                                       self._lines_since(self.file, self.index, since, end))
                                     for line in part)
        elif grep is None and lines is not None:
            found = self._lines(self.file, self.index, _tail_offset(self.file, lines, end), end)
        else:
            found = self._lines(self.file, self.index, 0, end)
        if grep is not None:
            found = (line for line in found if grep.search(line[3]))
        if lines is not None:
            found = iter(deque(found, maxlen=lines))
        return found

    def _backups_since(self, since: float) -> list[Iterator[Line]]:
        """The rotated files with lines since `since`, oldest first, as far back as they are indexed."""
        found = []
        for number in range(1, 1000):
            path = self.path.with_name(f"{self.path.name}.{number}")
            index = logindex.read(logindex.index_path(path))
            f = _open(path) if index else None
            if f is None or index is None:
                break
            if index.times[-1] < since and os.fstat(f.fileno()).st_mtime < since:
                f.close()
                break
            found.append(_closing(self._lines_since(f, index, since, os.fstat(f.fileno()).st_size), f))
            if index.times[0] < since:
                break  # the time asked for is in this one
        return found[::-1]

    def _lines_since(self, f: BinaryIO, index: logindex.Index, since: float, end: int) -> Iterator[Line]:
        start = index.offset_since(since)
        return iter(()) if start is None else self._lines(f, index, start, end)

    def _lines(self, f: BinaryIO, index: logindex.Index | None, start: int, end: int) -> Iterator[Line]:
        """The lines between the byte offsets `start` and `end` (a last one without a newline too)."""
        fallback = os.fstat(f.fileno()).st_mtime  # without an index: no line is more recent
        f.seek(start)
        position = start  # of the first byte of `rest`
        rest = b""
        while position + len(rest) < end:
            block = f.read(min(READ_BLOCK, end - position - len(rest)))
            if not block:
                break
            *whole, tail = (rest + block).split(b"\n")
            for raw in whole:
                yield self._line(index, position, raw, fallback)
                position += len(raw) + 1
            rest = tail
        if rest:
            yield self._line(index, position, rest, fallback)

    def _line(self, index: logindex.Index | None, offset: int, raw: bytes, fallback: float) -> Line:
        when = index.time_at(offset) if index else None
        return (fallback if when is None else when, self.rank, next(self._numbers),
                raw.removesuffix(b"\r").decode("utf-8", errors="replace"))

    # -- following ---------------------------------------------------------------------------

    def new_lines(self, read_at: float, grep: re.Pattern[str] | None) -> list[Line]:
        """The whole lines written since the last call; a rotated file is read to its end, then the
        new one from its start. A line with no index time is taken as written at `read_at`."""
        if self.file is None:
            self._reopen()
            if self.file is None:
                return []
        found = self._read_on(read_at)
        try:
            rotated = os.stat(self.path).st_ino != os.fstat(self.file.fileno()).st_ino
        except FileNotFoundError:
            rotated = True
        if rotated:  # what the daemon wrote before renaming it is in the old file still
            found += self._read_on(read_at, final=True)
            self.close()
            self._reopen()
            if self.file is not None:
                found += self._read_on(read_at)
        return [line for line in found if grep.search(line[3])] if grep is not None else found

    def _reopen(self) -> None:
        self.file = _open(self.path)
        self.pos, self._partial = 0, b""
        self.index = logindex.Index()
        self._index_file = _open(logindex.index_path(self.path))

    def _read_on(self, read_at: float, final: bool = False) -> list[Line]:
        assert self.file is not None
        if os.fstat(self.file.fileno()).st_size < self.pos:  # truncated (an old worker's log, copytruncate)
            self.pos, self._partial = 0, b""
        self.file.seek(self.pos)
        data = self.file.read()
        self._read_index()  # after the log: a record precedes the bytes it describes
        if not data and not (final and self._partial):
            return []
        offset = self.pos - len(self._partial)
        self.pos += len(data)
        *whole, self._partial = (self._partial + data).split(b"\n")
        if final or len(self._partial) > MAX_PARTIAL:
            whole.append(self._partial)
            self._partial = b""
        found = []
        for raw in whole:
            found.append(self._line(self.index, offset, raw, read_at))
            offset += len(raw) + 1
        return found

    def _read_index(self) -> None:
        """Read the records added to the index since the last call."""
        if self.index is None:
            return  # not this log's (it went backwards): lines are timed as they are read
        if self._index_file is None:
            self._index_file = _open(logindex.index_path(self.path))
            if self._index_file is None:
                return
        data = self._index_file.read()
        whole = len(data) - len(data) % logindex.RECORD.size
        if whole < len(data):
            self._index_file.seek(whole - len(data), os.SEEK_CUR)  # half a record: read it again next time
        if not self.index.extend(data[:whole]):
            self.index = None
            self._index_file.close()
            self._index_file = None


def _open(path: Path) -> BinaryIO | None:
    try:
        return open(path, "rb")
    except OSError:
        return None


def _closing(lines: Iterator[Line], f: BinaryIO) -> Iterator[Line]:
    try:
        yield from lines
    finally:
        f.close()


def _last_line_end(f: BinaryIO, size: int) -> int:
    """The offset just after the last newline before `size` (0 if there is none)."""
    position = size
    while position > 0:
        start = max(0, position - TAIL_BLOCK)
        f.seek(start)
        found = f.read(position - start).rfind(b"\n")
        if found >= 0:
            return start + found + 1
        position = start
    return 0


def _tail_offset(f: BinaryIO, lines: int, end: int, block_size: int = TAIL_BLOCK) -> int:
    """Where the last `lines` lines before `end` begin (a last line without a newline counts).

    Reads backwards in blocks, so a huge log costs only what is shown.
    """
    if lines <= 0:
        return end
    start, newlines = end, 0
    while start > 0:
        block_end, start = start, max(0, start - block_size)
        f.seek(start)
        block = f.read(block_end - start)
        if block_end == end and block.endswith(b"\n"):
            block = block[:-1]  # the last newline ends the last line: no line starts after it
        count = block.count(b"\n")
        if newlines + count >= lines:
            cut = len(block)
            for _ in range(lines - newlines):  # the lines-th newline from the end
                cut = block.rfind(b"\n", 0, cut)
            return start + cut + 1
        newlines += count
    return 0


def tail(path: Path, lines: int, block_size: int = TAIL_BLOCK) -> list[str]:
    """The last `lines` lines of `path`, without line endings; [] when it does not exist.

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
        f.seek(_tail_offset(f, lines, end, block_size))
        data = f.read(end)
    return [line.decode("utf-8", errors="replace") for line in data.splitlines()]
