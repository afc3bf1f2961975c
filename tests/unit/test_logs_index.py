"""Log time indexes: the daemon writes them beside each log and rotates them with it; `logs` reads them
to merge instances in time order, to seek to --since, and to follow in order (real files in tmp_path)."""

from __future__ import annotations

import asyncio
import datetime
import os
import re
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from looping import pump

from supervise.control import logs
from supervise.runtime import logfiles, output
from supervise.wire import logindex
from supervise.wire.logindex import index_path


def records(log: Path) -> list[tuple[int, float]]:
    index = logindex.read(index_path(log))
    assert index is not None
    return list(zip(index.offsets, index.times, strict=True))


def write_log(log: Path, lines: list[tuple[float, str]], append: bool = False) -> None:
    """Lines with the times they were 'written' at: a record for each, as the daemon would write."""
    with open(log, "ab" if append else "wb") as f, open(index_path(log), "ab" if append else "wb") as idx:
        for when, text in lines:
            idx.write(logindex.encode(f.tell(), when))
            f.write(text.encode() + b"\n")


# -- the format ------------------------------------------------------------------------------

def test_an_index_reads_back_and_answers_where_and_when(tmp_path: Path) -> None:
    log = tmp_path / "web.0.log"
    assert index_path(log) == tmp_path / ".web.0.log.idx"
    assert logindex.read(index_path(log)) is None
    index_path(log).write_bytes(logindex.encode(0, 10.0) + logindex.encode(50, 20.0) + logindex.encode(90, 30.0)
                                + b"torn")
    index = logindex.read(index_path(log))
    assert index is not None and index.offsets == [0, 50, 90] and index.times == [10.0, 20.0, 30.0]
    assert [index.time_at(o) for o in (0, 49, 50, 89, 90, 10**9)] == [10.0, 10.0, 20.0, 20.0, 30.0, 30.0]
    assert [index.offset_since(t) for t in (0.0, 10.0, 10.5, 30.0, 30.5)] == [0, 0, 50, 90, None]
    index_path(log).write_bytes(logindex.encode(50, 1.0) + logindex.encode(10, 2.0))  # goes backwards: not valid
    assert logindex.read(index_path(log)) is None


def test_bytes_before_the_first_record_take_its_time() -> None:
    index = logindex.Index()
    assert index.time_at(5) is None
    index.extend(logindex.encode(100, 7.0))
    assert index.time_at(5) == 7.0


# -- the writer (the daemon's Outputs) ---------------------------------------------------------

def attached(loop: asyncio.AbstractEventLoop, log: Path,
             rotate: tuple[int, int] = (0, 0)) -> tuple[output.Outputs, int]:
    outputs = output.Outputs(loop, lambda event: None)
    read_fd, write_fd = os.pipe2(os.O_CLOEXEC)
    outputs.attach(1, "web:0", "web", read_fd, log, rotate)
    return outputs, write_fd


def test_the_daemon_indexes_each_write_before_making_it(tmp_path: Path, loop, monkeypatch) -> None:
    monkeypatch.setattr(logindex, "EVERY", 0.0)  # a record for every write (20 ms apart in the daemon)
    log = tmp_path / "logs" / "web.0.log"
    outputs, w = attached(loop, log)
    before = time.time()
    os.write(w, b"one\n")
    pump(loop, lambda: log.exists() and log.read_bytes() == b"one\n")
    os.write(w, b"two\nthree\n")
    pump(loop, lambda: log.read_bytes() == b"one\ntwo\nthree\n")
    after = time.time()
    found = records(log)
    assert [offset for offset, _ in found] == [0, 4]
    assert before <= found[0][1] <= found[1][1] <= after
    outputs.close_all()
    os.close(w)


def test_writes_closer_than_the_granularity_share_a_record(tmp_path: Path, loop) -> None:
    log = tmp_path / "web.0.log"
    outputs, w = attached(loop, log)
    os.write(w, b"one\n")
    pump(loop, lambda: log.exists() and log.read_bytes() == b"one\n")
    os.write(w, b"two\n")
    pump(loop, lambda: log.read_bytes() == b"one\ntwo\n")
    found = records(log)
    assert found[0][0] == 0 and len(found) in (1, 2)  # 2 only if the second came 20 ms or more later
    outputs.close_all()
    os.close(w)


def test_rotation_takes_the_index_along_and_starts_a_new_one(tmp_path: Path, loop, monkeypatch) -> None:
    monkeypatch.setattr(logindex, "EVERY", 0.0)
    log = tmp_path / "web.0.log"
    outputs, w = attached(loop, log, rotate=(10, 2))
    os.write(w, b"0123456789ab\n")  # past 10 bytes: rotated after this write
    pump(loop, lambda: (tmp_path / "web.0.log.1").exists())
    os.write(w, b"next\n")
    pump(loop, lambda: log.exists() and log.read_bytes() == b"next\n")
    assert [offset for offset, _ in records(tmp_path / "web.0.log.1")] == [0]
    assert [offset for offset, _ in records(log)] == [0]
    assert records(tmp_path / "web.0.log.1")[0][1] <= records(log)[0][1]
    outputs.close_all()
    os.close(w)


def test_a_stale_or_torn_index_is_cut_back_when_the_log_is_opened(tmp_path: Path, loop, monkeypatch) -> None:
    monkeypatch.setattr(logindex, "EVERY", 0.0)
    log = tmp_path / "web.0.log"
    log.write_bytes(b"old\n")
    index_path(log).write_bytes(logindex.encode(0, 1.0) + b"half a record")
    outputs, w = attached(loop, log)
    assert index_path(log).stat().st_size > logindex.RECORD.size  # opened at the first write, not the spawn
    os.write(w, b"more\n")
    pump(loop, lambda: log.read_bytes() == b"old\nmore\n")
    assert [offset for offset, _ in records(log)] == [0, 4]  # the torn record is gone, the next follows
    outputs.close_all()
    os.close(w)
    index_path(log).write_bytes(logindex.encode(0, 1.0) + logindex.encode(900, 2.0))  # more than the log holds
    outputs, w = attached(loop, log)
    os.write(w, b"new\n")
    pump(loop, lambda: log.read_bytes() == b"old\nmore\nnew\n")
    assert [offset for offset, _ in records(log)] == [9]  # started again: the old records were another log's
    outputs.close_all()
    os.close(w)


def test_a_log_whose_index_cannot_be_kept_is_written_all_the_same(tmp_path: Path, loop) -> None:
    log = tmp_path / "web.0.log"
    index_path(log).mkdir()  # cannot be opened as a file
    outputs, w = attached(loop, log)
    os.write(w, b"still here\n")
    pump(loop, lambda: log.exists() and log.read_bytes() == b"still here\n")
    outputs.close_all()
    os.close(w)


def test_only_the_most_recently_written_logs_are_held_open(tmp_path: Path, loop, monkeypatch) -> None:
    """Beyond MAX_OPEN_LOGS, the log least recently written is closed, and opened again (with its index)
    at its next write: no line is lost or misplaced, the index goes on, and the descriptors stay bounded."""
    monkeypatch.setattr(logindex, "EVERY", 0.0)
    monkeypatch.setattr(output, "MAX_OPEN_LOGS", 3)
    outputs = output.Outputs(loop, lambda event: None)
    logs_dir = tmp_path / "logs"
    writers = []
    for i in range(8):
        read_fd, write_fd = os.pipe2(os.O_CLOEXEC)
        outputs.attach(i, f"w:{i}", "w", read_fd, logs_dir / f"w.{i}.log")
        writers.append(write_fd)
    # A spawn creates no file: the log and its index are made at the first write.
    assert not logs_dir.exists() or not any(logs_dir.iterdir())

    def open_logs() -> set[str]:
        found = set()
        for fd in os.listdir("/proc/self/fd"):
            try:
                target = os.readlink(f"/proc/self/fd/{fd}")
            except OSError:
                continue
            if target.startswith(str(logs_dir)):
                found.add(os.path.basename(target))
        return found

    expected = {i: b"" for i in range(8)}
    for round_ in range(3):
        for i in (0, 5, 1, 7, 2, 6, 3, 4):
            line = f"round {round_} from {i}\n".encode()
            os.write(writers[i], line)
            expected[i] += line
            log_file = logs_dir / f"w.{i}.log"
            pump(loop, lambda f=log_file, i=i: f.exists() and f.read_bytes() == expected[i])
            held = open_logs()
            assert len([name for name in held if name.endswith(".log")]) <= 3, held
            assert f"w.{i}.log" in held and f".w.{i}.log.idx" in held, held
    for i in range(8):
        log = logs_dir / f"w.{i}.log"
        assert log.read_bytes() == expected[i]
        offsets = [offset for offset, _ in records(log)]
        assert offsets == sorted(set(offsets)) and offsets[0] == 0, (i, offsets)
        assert set(offsets) <= {0, *[expected[i].index(b"round %d" % r) for r in (1, 2)]}, (i, offsets)
    outputs.close_all()
    assert open_logs() == set()
    for w in writers:
        os.close(w)


# -- rotation of indexes (logfiles) -------------------------------------------------------------

def test_shift_renames_each_index_with_its_log(tmp_path: Path) -> None:
    log = tmp_path / "web.0.log"
    write_log(log, [(1.0, "current")])
    write_log(tmp_path / "web.0.log.1", [(0.5, "older")])
    (tmp_path / "web.0.log.2").write_text("oldest, no index\n")  # written by an older daemon
    index_path(tmp_path / "web.0.log.3").write_bytes(logindex.encode(0, 0.1))  # a stale index of nothing
    logfiles.shift(log, backups=3)
    assert log.read_bytes() == b"" and not index_path(log).exists()  # a fresh log, not yet indexed
    assert (tmp_path / "web.0.log.1").read_text() == "current\n" and records(tmp_path / "web.0.log.1") == [(0, 1.0)]
    assert records(tmp_path / "web.0.log.2") == [(0, 0.5)]
    assert (tmp_path / "web.0.log.3").read_text() == "oldest, no index\n"
    assert not index_path(tmp_path / "web.0.log.3").exists(), "no index of another file under its name"


def test_shift_without_backups_empties_the_log_and_removes_its_index(tmp_path: Path) -> None:
    log = tmp_path / "web.0.log"
    write_log(log, [(1.0, "x")])
    logfiles.shift(log, backups=0)
    assert log.read_bytes() == b"" and not index_path(log).exists()


def test_copytruncate_leaves_no_index_that_would_lie(tmp_path: Path) -> None:
    log = tmp_path / "web.0.log"
    write_log(log, [(1.0, "x" * 200)])
    assert logfiles.rotate_if_needed(log, max_size=100, backups=1)
    assert not index_path(log).exists() and not index_path(tmp_path / "web.0.log.1").exists()


# -- reading: merge, -n, --since, --grep --------------------------------------------------------

def run_show(capsys, files: list[tuple[str, Path]], lines: int | None = None, since: float | None = None,
             grep: str | None = None) -> tuple[list[str], str]:
    logs.show(files, lines=lines, follow=False, since=since, grep=re.compile(grep) if grep else None)
    out = capsys.readouterr()
    return out.out.splitlines(), out.err


@pytest.fixture
def two(tmp_path: Path) -> list[tuple[str, Path]]:
    a, b = tmp_path / "app.0.log", tmp_path / "app.1.log"
    write_log(a, [(100.0, "a1"), (102.0, "a2"), (104.0, "a3"), (106.0, "a4")])
    write_log(b, [(101.0, "b1"), (103.0, "b2"), (104.0, "b3"), (107.0, "b4")])
    return [("app:0", a), ("app:1", b)]


def test_instances_are_merged_in_time_order(capsys, two) -> None:
    out, _ = run_show(capsys, two)
    assert out == ["app:0 | a1", "app:1 | b1", "app:0 | a2", "app:1 | b2", "app:0 | a3", "app:1 | b3",
                   "app:0 | a4", "app:1 | b4"]  # equal times (104): the instances' order


def test_n_counts_lines_across_instances(capsys, two) -> None:
    out, _ = run_show(capsys, two, lines=3)
    assert out == ["app:1 | b3", "app:0 | a4", "app:1 | b4"]


def test_since_seeks_to_the_time(capsys, two) -> None:
    out, _ = run_show(capsys, two, since=103.5)
    assert out == ["app:0 | a3", "app:1 | b3", "app:0 | a4", "app:1 | b4"]
    out, _ = run_show(capsys, two, since=103.5, lines=1)
    assert out == ["app:1 | b4"]
    assert run_show(capsys, two, since=200.0) == ([], "")


def test_since_reads_back_into_rotated_files(tmp_path: Path, capsys) -> None:
    log = tmp_path / "web.0.log"
    write_log(tmp_path / "web.0.log.2", [(10.0, "r2-1"), (20.0, "r2-2")])
    write_log(tmp_path / "web.0.log.1", [(30.0, "r1-1"), (40.0, "r1-2")])
    write_log(log, [(50.0, "c1"), (60.0, "c2")])
    assert run_show(capsys, [("web:0", log)], since=15.0)[0] == ["r2-2", "r1-1", "r1-2", "c1", "c2"]
    assert run_show(capsys, [("web:0", log)], since=35.0)[0] == ["r1-2", "c1", "c2"]
    assert run_show(capsys, [("web:0", log)], since=55.0)[0] == ["c2"]
    # Without --since, only the current file, as ever.
    assert run_show(capsys, [("web:0", log)], lines=20)[0] == ["c1", "c2"]


def test_grep_filters_before_n_counts(capsys, two) -> None:
    out, _ = run_show(capsys, two, grep=r"[ab][13]$")
    assert out == ["app:0 | a1", "app:1 | b1", "app:0 | a3", "app:1 | b3"]
    out, _ = run_show(capsys, two, grep=r"^b", lines=2)
    assert out == ["app:1 | b3", "app:1 | b4"]
    out, _ = run_show(capsys, two, grep=r"(?i)A4", since=100.0)
    assert out == ["app:0 | a4"]


def test_a_log_without_an_index_falls_back_to_its_last_lines(tmp_path: Path, capsys, two) -> None:
    old = tmp_path / "old.0.log"
    old.write_text("".join(f"old {i}\n" for i in range(30)))
    os.utime(old, (105.0, 105.0))  # no line in it is more recent than its modification time
    files = [*two, ("old:0", old)]
    out, _ = run_show(capsys, files, lines=3)
    assert out == ["old:0 | old 29", "app:0 | a4", "app:1 | b4"]  # its lines placed at its mtime, 105
    out, err = run_show(capsys, files, since=103.5)
    assert "old:0: its log has no time index" in err
    assert [line for line in out if line.startswith("old:0")] == [f"old:0 | old {i}" for i in range(10, 30)]
    out, err = run_show(capsys, files, since=106.5)  # older than that: nothing of it, no note
    assert out == ["app:1 | b4"] and err == ""


def test_lines_an_older_daemon_wrote_before_the_index_began(tmp_path: Path, capsys) -> None:
    log = tmp_path / "web.0.log"
    log.write_text("before the upgrade\n")
    write_log(log, [(50.0, "after")], append=True)  # the index's first record is past them
    assert run_show(capsys, [("web:0", log)], lines=5)[0] == ["before the upgrade", "after"]
    assert run_show(capsys, [("web:0", log)], since=10.0)[0] == ["after"]  # --since leaves them out


def test_bytes_that_are_not_utf8_and_crlf_and_a_last_line_without_newline(tmp_path: Path, capsys) -> None:
    log = tmp_path / "web.0.log"
    log.write_bytes(b"\xff bad\r\nok\r\nno newline")
    index_path(log).write_bytes(logindex.encode(0, 5.0))
    assert run_show(capsys, [("web:0", log)], lines=5)[0] == ["\ufffd bad", "ok", "no newline"]
    assert run_show(capsys, [("web:0", log)], lines=1)[0] == ["no newline"]


@pytest.mark.parametrize("content", [b"", b"\n", b"a", b"a\n", b"a\nb", b"a\nb\n", b"\n\n\n", b"x\r\ny\r\n",
                                     b"".join(b"line %d\n" % i for i in range(50)), b"long" * 100 + b"\nend"])
@pytest.mark.parametrize("block", [1, 3, 4096])
def test_the_tail_offset_matches_splitting_the_whole_file(tmp_path: Path, content: bytes, block: int) -> None:
    def split(data: bytes) -> list[bytes]:
        parts = data.split(b"\n")
        return parts[:-1] if parts[-1] == b"" else parts

    path = tmp_path / "f"
    path.write_bytes(content)
    with open(path, "rb") as f:
        for n in (0, 1, 2, 5, 100):
            f.seek(logs._tail_offset(f, n, len(content), block))
            assert split(f.read()) == (split(content)[-n:] if n else []), n


# -- --since values --------------------------------------------------------------------------

NOW = datetime.datetime(2026, 11, 30, 20, 31, 5).timestamp()


@pytest.mark.parametrize(("text", "ago"), [
    ("30s", 30), ("10m", 600), ("2h", 7200), ("1d", 86400), ("1h30m", 5400), ("1d2h", 93600), ("90", 90),
    ("500ms", 0.5), (" 2m ", 120),
])
def test_since_as_a_duration(text: str, ago: float) -> None:
    assert logs.parse_since(text, NOW) == pytest.approx(NOW - ago)


@pytest.mark.parametrize(("text", "when"), [
    ("20:15", datetime.datetime(2026, 11, 30, 20, 15)),
    ("20:15:30", datetime.datetime(2026, 11, 30, 20, 15, 30)),
    ("8:05", datetime.datetime(2026, 11, 30, 8, 5)),
    ("23:50", datetime.datetime(2026, 11, 29, 23, 50)),  # today's is still to come: yesterday's
    ("2026-11-30T20:15:00", datetime.datetime(2026, 11, 30, 20, 15)),
    ("2026-11-30 20:15", datetime.datetime(2026, 11, 30, 20, 15)),
    ("2026-11-29", datetime.datetime(2026, 11, 29)),
])
def test_since_as_a_local_time(text: str, when: datetime.datetime) -> None:
    assert logs.parse_since(text, NOW) == pytest.approx(when.timestamp())


def test_since_with_a_utc_offset() -> None:
    assert logs.parse_since("2026-11-30T20:15:00+00:00", NOW) == datetime.datetime(
        2026, 11, 30, 20, 15, tzinfo=datetime.UTC).timestamp()


@pytest.mark.parametrize("text", ["", "yesterday", "25:00", "10x", "-5m", "20:61", "2026-13-01"])
def test_since_that_is_neither_says_what_it_expects(text: str) -> None:
    with pytest.raises(logs.SinceError, match="expected a duration like 30s"):
        logs.parse_since(text, NOW)


# -- following --------------------------------------------------------------------------------

class Script:
    """time.time and time.sleep for `logs -f`: each sleep advances the clock and does the next step."""

    def __init__(self, start: float, steps: list[Callable[[], None]]) -> None:
        self.now, self.steps = start, list(steps)

    def time(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds
        if not self.steps:
            raise KeyboardInterrupt  # the user's Ctrl-C: `logs -f` returns
        self.steps.pop(0)()


def follow(capsys, monkeypatch, files: list[tuple[str, Path]], script: Script, lines: int = 10) -> list[str]:
    monkeypatch.setattr(logs.time, "time", script.time)
    monkeypatch.setattr(logs.time, "sleep", script.sleep)
    logs.show(files, lines=lines, follow=True)
    return capsys.readouterr().out.splitlines()


def test_follow_holds_lines_back_so_a_late_earlier_line_still_comes_first(tmp_path, capsys, monkeypatch) -> None:
    a, b = tmp_path / "app.0.log", tmp_path / "app.1.log"
    write_log(a, [(990.0, "a1")])
    write_log(b, [(991.0, "b1")])
    script = Script(1000.0, [
        lambda: write_log(b, [(1000.05, "b2")], append=True),  # read at 1000.1: too recent to print yet
        lambda: write_log(a, [(1000.04, "a2")], append=True),  # written before b2, read after it
        lambda: None,
    ])
    out = follow(capsys, monkeypatch, [("app:0", a), ("app:1", b)], script)
    assert out == ["app:0 | a1", "app:1 | b1", "app:0 | a2", "app:1 | b2"]


def test_follow_of_one_instance_prints_at_once_and_waits_for_whole_lines(tmp_path, capsys, monkeypatch) -> None:
    log = tmp_path / "web.0.log"
    write_log(log, [(990.0, "first")])
    with open(log, "ab") as f:
        f.write(b"half")  # still being written: not shown until its newline comes

    def finish() -> None:
        with open(log, "ab") as f:
            f.write(b" and half\n")

    script = Script(1000.0, [lambda: None, finish])
    assert follow(capsys, monkeypatch, [("web:0", log)], script) == ["first", "half and half"]


def test_follow_goes_on_across_a_rotation_without_losing_a_line(tmp_path, capsys, monkeypatch) -> None:
    log = tmp_path / "web.0.log"
    write_log(log, [(990.0, "one")])

    def last_words_then_rotate() -> None:
        write_log(log, [(995.0, "two")], append=True)  # written just before the rename
        logfiles.shift(log, backups=2)
        write_log(log, [(996.0, "three")])

    script = Script(1000.0, [last_words_then_rotate, lambda: write_log(log, [(997.0, "four")], append=True)])
    assert follow(capsys, monkeypatch, [("web:0", log)], script) == ["one", "two", "three", "four"]


def test_follow_waits_for_a_log_that_does_not_exist_yet(tmp_path, capsys, monkeypatch) -> None:
    log = tmp_path / "web.0.log"
    script = Script(1000.0, [lambda: None, lambda: write_log(log, [(1000.1, "hello")])])
    assert follow(capsys, monkeypatch, [("web:0", log)], script) == ["hello"]


def test_follow_filters_with_grep(tmp_path, capsys, monkeypatch) -> None:
    log = tmp_path / "web.0.log"
    write_log(log, [(990.0, "keep 1"), (991.0, "drop 2")])
    script = Script(1000.0, [lambda: write_log(log, [(1000.0, "drop 3"), (1000.0, "keep 4")], append=True)])
    monkeypatch.setattr(logs.time, "time", script.time)
    monkeypatch.setattr(logs.time, "sleep", script.sleep)
    logs.show([("web:0", log)], lines=10, follow=True, grep=re.compile("keep"))
    assert capsys.readouterr().out.splitlines() == ["keep 1", "keep 4"]
