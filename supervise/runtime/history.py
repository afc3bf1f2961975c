"""The bounded, numbered history of published events, kept in the state dir across daemon restarts.

Sequence numbers never repeat on a state dir, so a client that saw event N
asks for ``since=N`` and gets exactly what it missed, or learns from
``first`` that older events have been dropped from the bounded history --
also after the daemon was killed and a new one adopted its workers.

Events are held as the JSON that clients receive, not as dicts: a full
history of 10,000 events takes 2.3 MiB that way against 7.6 MiB of dicts,
and nothing ever reads an event back on the daemon's side.

**The file.** With a ``path`` (the daemon gives ``<state_dir>/events.jsonl``)
every event is also appended to it as one line, at once, with one write(2)
and no fsync: the page cache holds it, so a SIGKILLed daemon loses nothing
and the next one goes on numbering from the last event it finds (a power
cut may lose the last few, whose numbers are then given again). An append is
one syscall on a file nobody else writes, about 2 us: measured (medians of 7
interleaved runs of 40,000 events), the history alone went from 171,000 to
129,000 events/s, and with the daemon's log line for each event (what
`_publish` also does) from 48,700 to 42,900 events/s, far above what the
core publishes. When the file holds twice the bound, it is rewritten with
the last 10,000 events (a temp file renamed into place: 3 to 8 ms, once
every 10,000 events, counted in those figures), so it never passes about
4.6 MiB.

**Failures.** A write that fails (a full disk) never stops the daemon: the
event is kept in memory as ever, the failure is counted
(:attr:`History.write_errors`) and logged once, and from then on the whole
history is rewritten, at most once a second, until that works -- which also
heals the gap the failed appends left. Events published meanwhile are lost
to a daemon that dies before that.

**Loading.** A new daemon reads the file back: a torn last line (a daemon
killed mid-write) or a line that is not an event is skipped, never a reason
not to start; only the run of consecutive numbers that ends the file is
kept, so that ``since`` stays an index. A file that needed such repairs is
rewritten clean at once. Lines are checked by their form (``{"seq":N,``
... ``}``, numbers consecutive), not parsed: only this daemon writes the
file, whole lines or a torn last one, and parsing 10,000 events would add
25 ms to every start (the check costs 2 ms; a full file loads in 4 to 9).
"""

from __future__ import annotations

import json
import os
import time
from collections import deque
from itertools import repeat
from pathlib import Path

from supervise.runtime.log import Log

__all__ = ["EVENTS_FILE", "History"]

EVENTS_FILE = "events.jsonl"
"""The history's file in the state dir."""

RETRY_EVERY = 1.0
"""Seconds between two attempts to rewrite a history file that could not be written."""

FILE_MODE = 0o600

_PREFIX = b'{"seq":'


class History:
    """The last `limit` published events, numbered from 1, for `supervise events` and its followers.

    With `path`, also kept in that file (see the module): loaded from it now,
    appended to as events come.
    """

    def __init__(self, limit: int = 10_000, path: Path | None = None, log: Log | None = None) -> None:
        self._events: deque[bytes] = deque(maxlen=limit)
        self.limit = limit
        self.last_seq = 0
        self.path = path
        self.log = log
        self.write_errors = 0  # failed appends and rewrites, and events not appended while failing
        self.failing: str | None = None  # why the file cannot be written now; None while it can
        self._fd: int | None = None
        self._lines = 0  # lines in the file: past twice the limit, it is rewritten
        self._retry_at = 0.0
        if path is not None:
            if self._load(path):
                self._open(path)
            else:
                self._rewrite()

    def append(self, event: dict[str, object], wall_time: float) -> bytes:
        """Number and stamp `event`, keep it, and return it encoded (for live followers)."""
        self.last_seq += 1
        stamped = {"seq": self.last_seq, "time": round(wall_time, 6), **event}
        encoded = json.dumps(stamped, separators=(",", ":")).encode()
        self._events.append(encoded)
        if self.path is not None:
            self._persist(encoded)
        return encoded

    def since(self, seq: int) -> list[bytes]:
        """Encoded events numbered above ``seq`` that are still held, oldest first."""
        if seq >= self.last_seq:
            return []
        start = max(0, seq + 1 - self.first_seq)
        return list(self._events)[start:]

    @property
    def first_seq(self) -> int:
        # Numbers are consecutive and the deque drops from the left.
        return self.last_seq - len(self._events) + 1

    def close(self) -> None:
        """Stop writing the file (events published after this are kept in memory only)."""
        self.path = None
        self._close_fd()

    def _close_fd(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    # -- the file --------------------------------------------------------------------------

    def _persist(self, encoded: bytes) -> None:
        if self._fd is None or self._lines >= 2 * self.limit:
            if self._fd is not None or time.monotonic() >= self._retry_at:
                self._rewrite()  # the new event is in the deque already
            else:
                self.write_errors += 1
            return
        line = encoded + b"\n"
        try:
            written = os.write(self._fd, line)
            if written != len(line):  # a full disk took part of it: the line is torn
                raise OSError(28, os.strerror(28))
        except OSError as exc:
            self._failed(exc)
            return
        self._lines += 1

    def _rewrite(self) -> None:
        """The file from scratch with the events held: a temp file renamed over it."""
        assert self.path is not None
        temp = self.path.with_name(f".{self.path.name}.tmp")
        try:
            fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, FILE_MODE)
            try:
                view = memoryview(b"".join(e + b"\n" for e in self._events))
                while view:
                    view = view[os.write(fd, view):]
            finally:
                os.close(fd)
            os.replace(temp, self.path)
        except OSError as exc:
            try:
                temp.unlink(missing_ok=True)
            except OSError:
                pass
            self._failed(exc)
            return
        self._close_fd()
        self._lines = len(self._events)
        if self._open(self.path) and self.failing is not None:
            if self.log is not None:
                self.log.info("the event history file is written again", path=str(self.path),
                              failed_writes=self.write_errors)
            self.failing = None

    def _open(self, path: Path) -> bool:
        try:
            self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, FILE_MODE)
        except OSError as exc:
            self._failed(exc)
            return False
        return True

    def _failed(self, exc: OSError) -> None:
        self.write_errors += 1
        self._close_fd()  # from now on only whole rewrites, which also heal the gap
        self._retry_at = time.monotonic() + RETRY_EVERY
        if self.failing is None:
            self.failing = exc.strerror or str(exc)
            if self.log is not None:
                self.log.warning("cannot write the event history file; events are kept in memory, and the "
                                 "file is written again once it can be", path=str(self.path), error=self.failing)

    def _load(self, path: Path) -> bool:
        """Read the history back; False if the file needs rewriting (it had a torn or bad line)."""
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            return True
        except OSError as exc:
            if self.log is not None:
                self.log.warning("cannot read the event history file; numbering starts again",
                                 path=str(path), error=exc.strerror or str(exc))
            return False
        lines = data.split(b"\n")
        torn = lines.pop()  # b"" when the file ends with a newline
        if torn and _seq_of(torn) is not None and _valid([torn]):
            lines.append(torn)  # only its newline is missing
        clean = not torn
        kept = lines[-self.limit:]
        bad = 0
        if not _consecutive(kept):  # the common case costs no loop in Python: 2 ms for 10,000 events
            kept, bad = [], 0
            expect: int | None = None
            for raw in reversed(lines):
                if len(kept) == self.limit:
                    break
                seq = _seq_of(raw)
                if seq is None:
                    bad += 1
                    continue
                if expect is not None and seq != expect:
                    bad += 1  # a gap or a step back: only the run that ends the file is kept
                    break
                kept.append(raw)
                expect = seq - 1
            kept.reverse()
        self._events.extend(kept)
        self.last_seq = (_seq_of(kept[-1]) or 0) if kept else 0
        self._lines = len(lines)
        if (bad or not clean) and self.log is not None:
            self.log.warning("the event history file had lines that are not events (a torn write?): skipped",
                             path=str(path), skipped=bad + (not clean), kept=len(kept), last_seq=self.last_seq)
        return clean and not bad


def _seq_of(raw: bytes) -> int | None:
    """The sequence number an encoded event starts with; None if the line is not one of ours."""
    if not (raw.startswith(_PREFIX) and raw.endswith(b"}")):
        return None
    digits = raw[len(_PREFIX):raw.find(b",", len(_PREFIX))]
    return int(digits) if digits.isdigit() else None


def _valid(lines: list[bytes]) -> bool:
    try:
        return all(isinstance(json.loads(line), dict) for line in lines)
    except ValueError:
        return False


def _consecutive(lines: list[bytes]) -> bool:
    """Every line is one of ours, numbered one more than the line before (checked at C speed)."""
    if not lines:
        return True
    first, last = _seq_of(lines[0]), _seq_of(lines[-1])
    return (first is not None and last is not None and last - first + 1 == len(lines)
            and all(map(bytes.startswith, lines, repeat(_PREFIX))) and all(map(bytes.endswith, lines, repeat(b"}"))))
