"""The time index of a log file: at which byte the output of each moment begins.

The daemon writes every instance's log file itself (runtime/output.py), as
raw as the worker printed it; a log line carries no time. So that `supervise
logs --since` can seek and `logs APP` can merge instances in time order, the
daemon keeps beside each log file a hidden sidecar, ``.<log name>.idx``
(``logs/.web.0.log.idx``, ``logs/.web.0.log.1.idx`` for a backup), of
fixed-size records: ``(offset, time)``, the log's byte offset where a write
began and the wall clock (Unix seconds) when it was made.

A record is added when a write comes :data:`EVERY` (20 ms) or more after the
last record, so the output between two records was written within 20 ms
of the first one's time: a line's time is that of the last record at or
before its first byte. That bounds the index at 50 records (800 bytes) a
second for a chatty instance; a quiet one gets a record per line it prints
(16 bytes per line).

The record is written *before* the bytes it describes, so a reader that
reads the log and then the index finds a record for every byte it read.
Records are never rewritten; the index is renamed with its log when the log
is rotated (runtime/logfiles.py). A log file without an index was written by
an older daemon (or by a worker itself): readers fall back to what they did
before indexes.

This module is the format, shared by the writer (the daemon) and the reader
(`supervise logs`, control/logs.py); it does no I/O but reading an index.
"""

from __future__ import annotations

import struct
from bisect import bisect_left, bisect_right
from pathlib import Path

__all__ = ["EVERY", "RECORD", "Index", "encode", "index_path", "read"]

RECORD = struct.Struct("<Qd")
"""One record: the log's byte offset (unsigned 64-bit) and the Unix time (a double), little-endian."""

EVERY = 0.02
"""Seconds: a write this long or longer after the last record gets a record of its own."""


def index_path(log: Path) -> Path:
    """The sidecar index of the log file `log`: hidden, in the same directory."""
    return log.with_name(f".{log.name}.idx")


def encode(offset: int, when: float) -> bytes:
    return RECORD.pack(offset, when)


class Index:
    """The records of one index, in order: offsets never decrease (a reader checks it)."""

    __slots__ = ("offsets", "times")

    def __init__(self) -> None:
        self.offsets: list[int] = []
        self.times: list[float] = []

    def __len__(self) -> int:
        return len(self.offsets)

    def extend(self, data: bytes) -> bool:
        """Add the whole records in `data` (a multiple of RECORD.size); False, adding none of the
        rest, at the first that goes backwards: not this log's index (a stale one)."""
        last = self.offsets[-1] if self.offsets else 0
        for offset, when in RECORD.iter_unpack(data):
            if offset < last:
                return False
            self.offsets.append(offset)
            self.times.append(when)
            last = offset
        return True

    def time_at(self, offset: int) -> float | None:
        """When the byte at `offset` was written: the time of the last record at or before it;
        for bytes before the first record (written before the index began), the first record's
        time, which they precede; None without records."""
        if not self.offsets:
            return None
        i = bisect_right(self.offsets, offset) - 1
        return self.times[max(i, 0)]

    def offset_since(self, when: float) -> int | None:
        """The offset of the first record made at or after `when` (None: none was); the clock is
        taken to run forward (a step back of the wall clock makes this approximate)."""
        i = bisect_left(self.times, when)
        return self.offsets[i] if i < len(self.offsets) else None


def read(path: Path) -> Index | None:
    """The index at `path`, or None if there is none, it cannot be read, or it is not consistent
    (its offsets go backwards). A torn last record is left out. Records may lie beyond the end of
    the log as it was when it was read: they describe bytes written since."""
    try:
        data = path.read_bytes()
    except OSError:
        return None
    index = Index()
    if not index.extend(data[:len(data) - len(data) % RECORD.size]):
        return None
    return index
