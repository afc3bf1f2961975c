"""Per-instance log files: size-based rotation.

The daemon writes each log itself (output.py) and rotates it by renaming:
`shift`. A worker adopted from a daemon of an older version still writes
straight into its log file through a descriptor it inherited, which the
daemon can neither reopen nor ask the worker to; that one is rotated by
copying and truncating in place: `rotate_if_needed`.

Each log the daemon writes has a hidden time index beside it
(wire/logindex.py); rotation renames it with its log (`web.0.log.1` gets
`.web.0.log.1.idx`), and a log that arrives without one (written by an older
daemon) leaves no stale index of another file under its new name.
"""

from __future__ import annotations

import os
from pathlib import Path

from supervise.wire.logindex import index_path

__all__ = ["in_progress", "rotate_if_needed", "shift"]

COPY_CHUNK = 1 << 20
BACKUP_MODE = 0o640


def rotate_if_needed(path: Path, max_size: int, backups: int) -> bool:
    """Rotate `path` by copytruncate once it has reached `max_size` bytes; True if rotated.

    Backups are `path.1` (newest) to `path.<backups>` (oldest); the oldest is
    dropped. A file found at more than twice `max_size` keeps only its last
    `max_size` bytes: a worker that floods its output between two checks
    cannot fill the disk with it.
    `backups == 0` just truncates. A missing file or a `max_size`
    of 0 or less means nothing to do.

    The copy reads until end of file, so what the worker appends while we
    copy is kept. A line written between that last read and the truncate is
    lost: the window is two syscalls wide, the price of not being able to
    reopen the worker's descriptor. Because the worker's descriptor is
    O_APPEND, its next write after the truncate lands at offset 0 (no hole).
    """
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        return False
    if max_size <= 0 or size < max_size:
        return False
    if backups <= 0:
        os.truncate(path, 0)
        _drop_index(path)
        return True
    # Copied aside first and renamed into place last: a reader never finds a
    # backup half written, and `path.1` is missing only between two renames.
    fresh = in_progress(path)
    _copy_then_truncate(path, fresh, max_size)
    for index in range(backups - 1, 0, -1):
        older = _backup(path, index)
        if older.exists():
            _replace(older, _backup(path, index + 1))  # replaces (drops) the oldest
    os.replace(fresh, _backup(path, 1))
    _drop_index(_backup(path, 1))  # what a worker writes itself has no index: none may linger
    _drop_index(path)
    return True


def shift(path: Path, backups: int) -> None:
    """Move `path` to `path.1`, `path.1` to `path.2`, ..., dropping the oldest beyond `backups`;
    with no backups, just empty it. The caller then opens `path` afresh.

    `path` never goes missing, not even for an instant: the log becomes `path.1`
    through a hard link, and an empty file is renamed over it. A `tail -F`, a
    `logs -f` or a script that stats the log between two syscalls finds either
    the old file or the new one. Where hard links are refused (some FUSE or
    FAT mounts), a plain rename does, with that instant of absence.
    """
    if backups <= 0:
        _replace(_fresh_beside(path), path)
        return
    for index in range(backups - 1, 0, -1):
        older = _backup(path, index)
        if older.exists():
            _replace(older, _backup(path, index + 1))  # replaces (drops) the oldest
    newest = _backup(path, 1)
    staged = in_progress(path)
    staged.unlink(missing_ok=True)
    try:
        os.link(path, staged)
    except OSError:
        _replace(path, newest)
        return
    _replace(staged, newest)
    try:
        index_path(path).rename(index_path(newest))  # the index goes with the log it describes
    except FileNotFoundError:
        pass
    os.replace(_fresh_beside(path), path)


def _fresh_beside(path: Path) -> Path:
    """An empty file with `path`'s mode, under the hidden name, ready to be renamed over `path`."""
    fresh = in_progress(path)
    try:
        mode = os.stat(path).st_mode & 0o7777
    except FileNotFoundError:
        mode = BACKUP_MODE
    os.close(os.open(fresh, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, mode))
    return fresh


def in_progress(path: Path) -> Path:
    """Where the next backup of `path` is written before it is renamed into place.

    A hidden name, not `path` plus a suffix: a listing of the log and its
    backups (``<name>*``, a `logs` glob, a shell's ``ls``) never shows this
    half-written copy. A copy left by a daemon killed mid-rotation is
    overwritten by the next rotation.
    """
    return path.with_name(f".{path.name}.rotating")


def _replace(src: Path, dst: Path) -> None:
    """Rename the log `src` to `dst`, and its index with it (or drop `dst`'s: it was another file's).
    The index first: a reader that finds the log at `dst` then finds its index there too."""
    try:
        os.replace(index_path(src), index_path(dst))
    except FileNotFoundError:
        _drop_index(dst)
    os.replace(src, dst)


def _drop_index(path: Path) -> None:
    index_path(path).unlink(missing_ok=True)


def _backup(path: Path, index: int) -> Path:
    return path.with_name(f"{path.name}.{index}")


def _copy_then_truncate(src_path: Path, dst_path: Path, keep: int) -> None:
    """Copy the file, then truncate it. Past twice `keep` bytes only the last `keep` are
    copied: what ordinary growth between two checks adds is kept whole, but a flood
    must not turn into a backup as big as the disk."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC
    with open(src_path, "rb") as src, open(os.open(dst_path, flags, BACKUP_MODE), "wb") as dst:
        size = os.fstat(src.fileno()).st_size
        if size > 2 * keep:
            src.seek(size - keep)
            src.readline()  # start the backup at a line boundary
        while chunk := src.read(COPY_CHUNK):  # until EOF, so bytes appended meanwhile are copied too
            dst.write(chunk)
            if dst.tell() > 3 * keep:  # a writer outpacing the copy: stop chasing it
                break
        # Right after the last read, before flushing our copy: as little time
        # as possible for a line to slip in between and be lost.
        os.truncate(src_path, 0)
