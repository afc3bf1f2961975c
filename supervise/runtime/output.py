"""Worker output: a pipe per instance, read by the daemon, written to the instance's log file.

A worker that inherited its log file wrote it itself, so a full disk made its
own `print` fail with ENOSPC and crash it: the supervisor turned a full disk
into a crash loop. Through a pipe the worker's writes never fail for want of
space; the daemon writes the log file and, when it cannot, drops the lines,
counts them and says so (an ``output``/``dropping`` event, ``log_dropped``
in ``status --json``), and writes again as soon as space returns
(``output``/``resumed``).

The pipe must outlive the daemon, or a crashed daemon would break every
worker's stdout (EPIPE, SIGPIPE). So the worker holds a read end of its own
pipe too, as an extra descriptor it never reads: while no daemon runs, its
writes fill the pipe's buffer (64 KiB) and then wait; the next daemon opens
the pipe again through ``/proc/<pid>/fd/1`` (any process may open a pipe it
can see there) and the worker goes on. That descriptor sits above fd
``3 + len(listen sockets)``, where the listen launcher cannot overwrite it.

Beside each log file the daemon keeps its time index (wire/logindex.py: at
which byte the output of each moment begins, a 16-byte record per write that
comes 20 ms or more after the last one, written before the bytes it
describes), renamed along with the log when it is rotated. It is what `logs
--since` seeks with and what `logs APP` merges instances by; it is a help,
not a duty: one that cannot be opened or written is left aside (the log
goes on), and readers treat a log without one as they did before indexes.
It is created at the first write, not at the spawn: a spawn creates one file.

Only the MAX_OPEN_LOGS most recently written logs (and their indexes) are
held open; the others are opened again at their next write. See there why.
"""

from __future__ import annotations

import asyncio
import errno
import fcntl
import os
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from supervise.runtime import limits, logfiles
from supervise.runtime.fdwatch import FdWatch
from supervise.wire import logindex

__all__ = ["READ_CHUNK", "Output", "Outputs", "log_fd_for"]

READ_CHUNK = 1 << 16
"""Bytes read per read(): a pipe's whole default buffer."""

MAX_READS_PER_WAKE = 16
"""Reads per readable callback at most: a flooding worker cannot hold the loop for long."""

REOPEN_EVERY = 1.0
"""Seconds between attempts to open a log file that could not be opened."""

LOG_FILE_MODE = 0o640

MAX_OPEN_LOGS = limits.MAX_OPEN_LOGS
"""Log files held open at once (each with its index): the most recently written. Thousands of
instances would otherwise hold two descriptors each for logs most of them rarely write, and
descriptors cost twice: every spawn's fork copies the daemon's whole descriptor table (measured
here: 0.17 ms per Popen with none open, 1.1 ms with 10,000), and they cap how many instances a
daemon can run (limits.instance_capacity). An existing log opens again in microseconds."""


@dataclass(slots=True)
class Output:
    """One instance's output: the daemon's read end of its pipe and the log file it goes to."""

    name: str
    app: str
    read_fd: int
    log_path: str  # not a Path: ~1 KiB less for each instance (a str is shared with the worker table's)
    max_size: int = 0  # rotate the log at this size (0: never)
    backups: int = 0  # rotated copies kept
    log_fd: int | None = None
    size: int = 0  # of the log file, as we wrote it
    dropped_lines: int = 0
    dropped_bytes: int = 0
    failing: str | None = None  # the error while lines are dropped; None while they are written
    _dropped_since: int = 0  # lines dropped in the current failing stretch
    _retry_open_at: float = 0.0
    _partial: bool = False  # the last byte read (written or dropped) did not end a line
    _file_partial: bool = False  # the last byte written to the log did not end a line
    index_fd: int | None = None  # the log's time index (wire/logindex.py); None: not kept
    index_size: int = 0  # bytes of whole records in it
    _indexed_at: float = float("-inf")  # loop time of its last record
    _index_tried: bool = False  # opening the index was tried for the log file now open


def log_fd_for(path: str | Path) -> int:
    """The log file opened for appending (created with its directory if need be)."""
    flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC
    try:
        return os.open(path, flags, LOG_FILE_MODE)
    except FileNotFoundError:  # the first spawn, or the logs dir was removed meanwhile
        os.makedirs(os.path.dirname(path), exist_ok=True)
        return os.open(path, flags, LOG_FILE_MODE)


class Outputs:
    """Every instance's output pipe, keyed by spawn id; on the loop's thread only."""

    def __init__(self, loop: asyncio.AbstractEventLoop, publish: Callable[[dict[str, object]], object]) -> None:
        self.loop = loop
        self.publish = publish
        self._by_spawn: dict[int, Output] = {}
        self._pipes = FdWatch(loop)  # every output pipe's read end
        self._held: OrderedDict[int, Output] = OrderedDict()  # id -> an output whose log is open, last written last

    def get(self, spawn_id: int) -> Output | None:
        return self._by_spawn.get(spawn_id)

    # -- opening -----------------------------------------------------------------------

    @staticmethod
    def pipe(above: int) -> tuple[int, int]:
        """A new pipe for a worker: (read end, write end), both close-on-exec, the read end
        numbered above `above` so that moving passed sockets to 3, 4, ... cannot overwrite it."""
        read_fd, write_fd = os.pipe2(os.O_CLOEXEC)
        if read_fd <= above:
            moved = fcntl.fcntl(read_fd, fcntl.F_DUPFD_CLOEXEC, above + 1)
            os.close(read_fd)
            read_fd = moved
        return read_fd, write_fd

    def attach(self, spawn_id: int, name: str, app: str, read_fd: int, log_path: str | Path,
               rotate: tuple[int, int] = (0, 0)) -> Output:
        """Start reading `read_fd` (ours: it is closed with the output) into `log_path`, rotated
        at `rotate` = (max size, backups)."""
        os.set_blocking(read_fd, False)
        # The log is opened (created) at the first write, as a released one is: a spawn makes no file,
        # which at 5,000 instances cost 0.2-0.5 ms a spawn, and a worker that prints nothing has none.
        out = Output(name, app, read_fd, os.fspath(log_path), *rotate)
        self._by_spawn[spawn_id] = out
        self._pipes.add(read_fd, self._readable, spawn_id)
        return out

    def reattach(self, spawn_id: int, name: str, app: str, pid: int, log_path: str | Path,
                 rotate: tuple[int, int] = (0, 0)) -> Output | None:
        """A previous daemon's worker: open its output pipe again through /proc. None when its
        stdout is not a pipe (a worker of a daemon that wrote files: it still does) or is gone."""
        read_fd = reopen_pipe(pid)
        if read_fd is None:
            return None
        return self.attach(spawn_id, name, app, read_fd, log_path, rotate)

    def retarget(self, spawn_id: int, name: str, log_path: str | Path) -> None:
        """A promoted spare: what it wrote so far stays in the spare's log, what it writes from now on
        goes to its slot's (appended after the slot's earlier processes', as a restart's would)."""
        out, log_path = self._by_spawn.get(spawn_id), os.fspath(log_path)
        if out is None or out.log_path == log_path:
            return
        try:
            while data := os.read(out.read_fd, READ_CHUNK):
                self._write(out, data)
        except OSError:  # BlockingIOError: the pipe is empty
            pass
        self._release(out)
        out.name, out.log_path, out._file_partial = name, log_path, False
        self._open_log(out)

    def _open_log(self, out: Output) -> None:
        """Open (or create) the log; its index is opened at the next write. The least recently
        written log beyond MAX_OPEN_LOGS is closed to make room."""
        try:
            out.log_fd = log_fd_for(out.log_path)
            out.size = os.fstat(out.log_fd).st_size
        except OSError as exc:
            out.log_fd = None
            out._retry_open_at = self.loop.time() + REOPEN_EVERY
            self._failing(out, f"cannot open {out.log_path}: {exc.strerror or exc}")
            return
        out._index_tried = False
        self._held[id(out)] = out
        if len(self._held) > MAX_OPEN_LOGS:
            _, oldest = self._held.popitem(last=False)
            self._release(oldest)

    def _release(self, out: Output) -> None:
        """Close the log and its index (reopened at the next write, as when they were never open)."""
        self._held.pop(id(out), None)
        if out.log_fd is not None:
            os.close(out.log_fd)
            out.log_fd = None
        self._close_index(out)

    @staticmethod
    def _open_index(out: Output) -> None:
        """The log's index, opened to append; one left by a crash mid-record loses that record,
        and one that describes more than the log holds (the log was removed) starts again."""
        Outputs._close_index(out)
        out._indexed_at = float("-inf")
        out._index_tried = True
        try:
            fd = os.open(logindex.index_path(Path(out.log_path)), os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC,
                         LOG_FILE_MODE)
        except OSError:
            return
        try:
            size = os.fstat(fd).st_size
            whole = size - size % logindex.RECORD.size
            if whole:
                last, _ = logindex.RECORD.unpack(os.pread(fd, logindex.RECORD.size, whole - logindex.RECORD.size))
                if last > out.size:
                    whole = 0
            if whole != size:
                os.ftruncate(fd, whole)
        except OSError:
            os.close(fd)
            return
        out.index_fd, out.index_size = fd, whole

    def _index(self, out: Output) -> None:
        """A record for the bytes about to be written at the end of the log, unless the last one
        is recent enough to cover them; before them, so that a reader never finds bytes without one."""
        now = self.loop.time()
        if now - out._indexed_at < logindex.EVERY or out.index_fd is None:
            return
        out._indexed_at = now
        record = logindex.encode(out.size, time.time())
        try:
            written = os.write(out.index_fd, record)
        except OSError:  # a full disk: this record is lost, not the index (nothing torn)
            return
        if written == len(record):
            out.index_size += written
            return
        try:  # a torn record would shift every later one: cut it off, or give the index up
            os.ftruncate(out.index_fd, out.index_size)
        except OSError:
            self._close_index(out)

    @staticmethod
    def _close_index(out: Output) -> None:
        if out.index_fd is not None:
            os.close(out.index_fd)
            out.index_fd = None

    # -- reading, writing ----------------------------------------------------------------

    def _readable(self, spawn_id: int) -> None:
        out = self._by_spawn.get(spawn_id)
        if out is None:
            return
        for _ in range(MAX_READS_PER_WAKE):
            try:
                data = os.read(out.read_fd, READ_CHUNK)
            except BlockingIOError:
                return
            except OSError:
                data = b""
            if not data:  # every writer is gone (a worker that closed its stdout keeps running)
                self.close(spawn_id)
                return
            self._write(out, data)
            if len(data) < READ_CHUNK:
                return

    def _write(self, out: Output, data: bytes) -> None:
        if out.log_fd is None and self.loop.time() >= out._retry_open_at:
            self._open_log(out)
        if out.log_fd is None:
            self._drop(out, data)
            return
        self._held.move_to_end(id(out))
        if out.failing is not None:
            # Resume at a line boundary: the rest of a line whose start was dropped goes too.
            if out._partial:
                cut = data.find(b"\n") + 1
                self._drop(out, data[:cut] if cut else data)
                if not cut:
                    return
                data = data[cut:]
            # The log itself says how much is missing, where it is missing.
            notice = f"[supervise: {out._dropped_since} lines of output dropped: {out.failing}]\n"
            if not self._append(out, (b"\n" if out._file_partial else b"") + notice.encode(), ours=True):
                self._drop(out, data)
                return
            self._resumed(out)
        self._append(out, data)

    def _append(self, out: Output, data: bytes, ours: bool = False) -> bool:
        """Write all of `data` to the log; on failure drop what was not written (counted unless it
        is `ours`), say so, and return False."""
        assert out.log_fd is not None
        if out.index_fd is None and not out._index_tried:
            self._open_index(out)
        if out.index_fd is not None:
            self._index(out)
        view = memoryview(data)
        try:
            while view:
                view = view[os.write(out.log_fd, view):]
        except OSError as exc:
            written = len(data) - len(view)
            out.size += written  # the index's offsets are taken from it
            if written:
                out._file_partial = data[written - 1] != 0x0A
            if not ours:
                self._drop(out, bytes(view))
            self._failing(out, exc.strerror or str(exc))
            if exc.errno == errno.EBADF:
                self._held.pop(id(out), None)
                out.log_fd = None
            return False
        if data:
            out._file_partial = data[-1] != 0x0A
            if not ours:
                out._partial = out._file_partial
            out.size += len(data)
            if 0 < out.max_size <= out.size:
                self._rotate(out)
        return True

    def _rotate(self, out: Output) -> None:
        """Rename the log aside and start a new one: we hold the only descriptor that writes
        it, so nothing is copied and no line is lost (copytruncate lost what came meanwhile)."""
        assert out.log_fd is not None
        try:
            logfiles.shift(Path(out.log_path), out.backups)
        except OSError as exc:
            self.publish({"type": "output", "event": "rotation-failed", "name": out.name, "app": out.app,
                          "error": exc.strerror or str(exc), "path": str(out.log_path)})
            out.max_size *= 2  # not again at every write: at twice the size, unless it works then
            return
        self._release(out)
        self._open_log(out)

    @staticmethod
    def _drop(out: Output, data: bytes) -> None:
        lines = data.count(b"\n")
        out.dropped_lines += lines
        out._dropped_since += lines
        out.dropped_bytes += len(data)
        if data:
            out._partial = not data.endswith(b"\n")

    def _failing(self, out: Output, error: str) -> None:
        if out.failing is None:
            out.failing = error
            self.publish({"type": "output", "event": "dropping", "name": out.name, "app": out.app,
                          "error": error, "path": str(out.log_path)})

    def _resumed(self, out: Output) -> None:
        self.publish({"type": "output", "event": "resumed", "name": out.name, "app": out.app,
                      "dropped_lines": out._dropped_since, "error": out.failing, "path": str(out.log_path)})
        out.failing = None
        out._dropped_since = 0

    # -- closing -----------------------------------------------------------------------

    def close(self, spawn_id: int) -> None:
        """Write what the pipe still holds (a dying worker's last words), then let it go."""
        out = self._by_spawn.pop(spawn_id, None)
        if out is None:
            return
        self._pipes.remove(out.read_fd)
        try:
            while data := os.read(out.read_fd, READ_CHUNK):
                self._write(out, data)
        except OSError:  # BlockingIOError: nothing more for now; any writer left is being swept
            pass
        os.close(out.read_fd)
        self._release(out)

    def close_all(self) -> None:
        for spawn_id in list(self._by_spawn):
            self.close(spawn_id)


def reopen_pipe(pid: int) -> int | None:
    """A new read end, non-blocking, of the pipe `pid` writes its output to; None if there is none.

    Opening ``/proc/<pid>/fd/N`` of a pipe opens the pipe itself, like a FIFO, for
    anyone allowed to see it (no ptrace rights needed, unlike pidfd_getfd).
    """
    for fd in (1, 2):  # the worker's own copy of the read end need not be found: its stdout is the pipe
        link = f"/proc/{pid}/fd/{fd}"
        try:
            if not os.readlink(link).startswith("pipe:"):
                continue
            return os.open(link, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError:
            continue
    return None
