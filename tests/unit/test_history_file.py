"""The event history's file: it survives a daemon restart, repairs what a crash tore, never fails the daemon."""

from __future__ import annotations

import errno
import json
import os
from pathlib import Path
from typing import Any

import pytest

from supervise.runtime import history as history_module
from supervise.runtime.history import History


class Recorder:
    def __init__(self) -> None:
        self.records: list[tuple[str, str, dict[str, Any]]] = []

    def info(self, event: str, **fields: Any) -> None:
        self.records.append(("info", event, fields))

    def warning(self, event: str, **fields: Any) -> None:
        self.records.append(("warning", event, fields))

    def error(self, event: str, **fields: Any) -> None:
        self.records.append(("error", event, fields))


def publish(history: History, count: int, start: int = 0) -> None:
    for i in range(start, start + count):
        history.append({"type": "state", "name": f"web:{i}"}, 1000.0 + i)


def seqs(history: History, since: int = 0) -> list[int]:
    return [json.loads(raw)["seq"] for raw in history.since(since)]


def test_a_new_history_on_the_same_file_goes_on_numbering(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    first = History(path=path)
    publish(first, 5)
    first.close()
    second = History(path=path)
    assert (second.first_seq, second.last_seq) == (1, 5)
    assert second.since(3) == [json.dumps({"seq": n, "time": 1000.0 + n - 1, "type": "state", "name": f"web:{n - 1}"},
                                          separators=(",", ":")).encode() for n in (4, 5)]
    publish(second, 2, start=5)
    assert seqs(second, 4) == [5, 6, 7]
    second.close()
    assert seqs(History(path=path)) == list(range(1, 8))


def test_the_file_is_compacted_to_the_bound(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    history = History(limit=10, path=path)
    publish(history, 55)
    lines = path.read_bytes().splitlines()
    assert 10 <= len(lines) <= 20  # rewritten with the last 10 once it holds 20
    assert json.loads(lines[-1])["seq"] == 55
    history.close()
    again = History(limit=10, path=path)
    assert (again.first_seq, again.last_seq) == (46, 55)
    assert not path.with_name(f".{path.name}.tmp").exists()


def test_a_longer_file_than_the_bound_keeps_the_last_ones(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    history = History(limit=100, path=path)
    publish(history, 150)
    history.close()
    small = History(limit=10, path=path)
    assert (small.first_seq, small.last_seq) == (141, 150)


@pytest.mark.parametrize(("damage", "last"), [
    (lambda data: data + b'{"seq":6,"time":1.0,"type":"sta', 5),  # a daemon killed mid-write
    (lambda data: data[:-1], 5),  # only the last newline missing: the event is whole, it stays
    (lambda data: data[:-2], 4),  # the last line torn: it goes (its number is given again)
    (lambda data: data + b"\0\0\0\0\n", 5),  # a power cut's zeroed block
    (lambda data: data + b"garbage\n", 5),
    (lambda data: b"garbage\n" + data, 5),  # before the run that is kept
])
def test_a_torn_or_damaged_file_never_stops_a_start(tmp_path: Path, damage, last: int) -> None:
    path = tmp_path / "events.jsonl"
    history = History(path=path)
    publish(history, 5)
    history.close()
    path.write_bytes(damage(path.read_bytes()))
    log = Recorder()
    again = History(path=path, log=log)
    assert again.last_seq == last and seqs(again) == list(range(1, last + 1))
    assert [level for level, _, _ in log.records] == ["warning"]
    publish(again, 1, start=100)
    again.close()
    # Rewritten clean: every line an event, numbered on.
    assert [json.loads(line)["seq"] for line in path.read_bytes().splitlines()] == list(range(1, last + 2))


def test_a_gap_keeps_only_the_run_that_ends_the_file(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    lines = [json.dumps({"seq": n, "time": 1.0, "type": "x"}, separators=(",", ":")) for n in (1, 2, 3, 7, 8, 9)]
    path.write_text("\n".join(lines) + "\n")
    log = Recorder()
    history = History(path=path, log=log)
    assert (history.first_seq, history.last_seq) == (7, 9)
    assert [level for level, _, _ in log.records] == ["warning"]
    history.close()


def test_an_unreadable_file_is_a_warning_not_a_failure(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    path.mkdir()  # not a file: read and rename both fail
    log = Recorder()
    history = History(path=path, log=log)
    publish(history, 3)
    assert seqs(history) == [1, 2, 3]
    assert history.failing and history.write_errors >= 1
    assert any(level == "warning" and "cannot write" in event for level, event, _ in log.records)


def test_a_full_disk_is_counted_logged_once_and_healed_by_a_rewrite(tmp_path: Path, monkeypatch) -> None:
    path = tmp_path / "events.jsonl"
    log = Recorder()
    history = History(path=path, log=log)
    publish(history, 3)
    real_write = os.write
    full = {"on": True}

    def write(fd: int, data: bytes) -> int:
        if full["on"]:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_write(fd, data)

    monkeypatch.setattr(history_module.os, "write", write)
    publish(history, 5, start=3)  # none of these reaches the file; nothing raises
    assert seqs(history) == list(range(1, 9)), "the history itself is whole"
    assert history.failing == os.strerror(errno.ENOSPC) and history.write_errors >= 1
    warnings = [r for r in log.records if r[0] == "warning"]
    assert len(warnings) == 1 and warnings[0][2]["error"] == os.strerror(errno.ENOSPC)
    full["on"] = False
    monkeypatch.setattr(history_module, "RETRY_EVERY", 0.0)
    history._retry_at = 0.0  # the retry is due (a second later, in the daemon)
    publish(history, 1, start=8)
    assert history.failing is None
    assert [r[1] for r in log.records if r[0] == "info"] == ["the event history file is written again"]
    publish(history, 1, start=9)
    history.close()
    # No gap: the rewrite put back what the failed appends could not write.
    assert [json.loads(line)["seq"] for line in path.read_bytes().splitlines()] == list(range(1, 11))


def test_a_torn_append_is_healed_too(tmp_path: Path, monkeypatch) -> None:
    path = tmp_path / "events.jsonl"
    history = History(path=path)
    publish(history, 2)
    real_write = os.write
    torn = {"once": True}

    def write(fd: int, data: bytes) -> int:
        if torn.pop("once", False):
            return real_write(fd, data[:7])  # the disk had room for 7 bytes
        return real_write(fd, data)

    monkeypatch.setattr(history_module.os, "write", write)
    history._retry_at = 0.0
    publish(history, 1, start=2)
    assert history.failing is not None
    monkeypatch.setattr(history_module.time, "monotonic", lambda: 1e12)  # the retry is due
    publish(history, 1, start=3)
    history.close()
    assert [json.loads(line)["seq"] for line in path.read_bytes().splitlines()] == [1, 2, 3, 4]


def test_nothing_is_written_after_close(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    history = History(path=path)
    publish(history, 2)
    history.close()
    publish(history, 2, start=2)
    assert seqs(history) == [1, 2, 3, 4]
    assert len(path.read_bytes().splitlines()) == 2
