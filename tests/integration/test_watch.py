"""supervise.watch against real files and a real watcher thread.

Nothing here sleeps to synchronize: a test waits for a callback with a
deadline, and proves that something did NOT trigger by writing it first and a
matching sentinel after it: inotify delivers events in order, so the first
batch that reaches on_change holds the sentinel and nothing of what came
before it.
"""

from __future__ import annotations

import json
import os
import queue
import shutil
import statistics
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from helpers import wait_until

from supervise.config import loader as config
from supervise.runtime import watch
from supervise.runtime.watch import Watcher

DEADLINE = 10.0  # for what must happen; generous for a loaded 2-core machine

Call = tuple[frozenset[str], tuple[str, ...]]


class Calls:
    """on_change for tests: every call queued, with the thread it came from."""

    def __init__(self) -> None:
        self.queue: queue.Queue[Call] = queue.Queue()
        self.threads: set[str] = set()

    def __call__(self, apps: frozenset[str], paths: tuple[str, ...]) -> None:
        self.threads.add(threading.current_thread().name)
        self.queue.put((apps, paths))

    def next(self) -> Call:
        return self.queue.get(timeout=DEADLINE)

    def until(self, app: str) -> list[Call]:
        """Every call up to and including the first one naming ``app``."""
        calls = [self.next()]
        while app not in calls[-1][0]:
            calls.append(self.next())
        return calls

    def until_path(self, path: str) -> Call:
        """The first call holding ``path``: a write the scheduler split in two may give two calls."""
        while path not in (call := self.next())[1]:
            pass
        return call


class Log:
    """A structlog-like logger that keeps what it was given."""

    def __init__(self) -> None:
        self.records: list[tuple[str, str, dict]] = []

    def warning(self, event: str, **fields) -> None:
        self.records.append(("warning", event, fields))

    def error(self, event: str, **fields) -> None:
        self.records.append(("error", event, fields))


Start = Callable[..., tuple[Watcher, Calls]]


@pytest.fixture
def start(tmp_path: Path) -> Iterator[Start]:
    """``start({app: (watch, watch_ignore)}, **options)``: an armed watcher on a real supervise.toml."""
    started: list[Watcher] = []

    def make(apps: dict[str, tuple[list[str], list[str]]], calls: Calls | None = None,
             **options) -> tuple[Watcher, Calls]:
        lines = ['[supervise]', 'state_dir = ".supervise"']
        for name, (patterns, ignore) in apps.items():
            lines += [f"[apps.{name}]", 'command = "true"', f"watch = {json.dumps(patterns)}",
                      f"watch_ignore = {json.dumps(ignore)}"]
        (tmp_path / "supervise.toml").write_text("\n".join(lines) + "\n")
        calls = calls if calls is not None else Calls()
        watcher = Watcher.from_config(config.load(tmp_path / "supervise.toml"), calls, **options)
        assert watcher is not None
        started.append(watcher)
        watcher.start()
        assert watcher.wait_ready(DEADLINE), "the watcher never armed"
        return watcher, calls

    yield make
    for watcher in started:
        watcher.stop(timeout=5)


def write(path: Path, text: str = "x") -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return str(path)


@pytest.fixture
def src(tmp_path: Path) -> Path:
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "app.py").write_text("v1")
    return tmp_path / "src"


def test_modifying_a_watched_file_calls_on_change_from_the_watcher_thread(start, src):
    watcher, calls = start({"web": (["src/*.py"], []), "docs": (["docs/**"], [])})
    path = write(src / "app.py", "v2")
    assert calls.next() == ({"web"}, (path,))
    assert calls.threads == {"supervise-watch"}


def test_deleting_a_watched_file_counts_as_a_change(start, src):
    watcher, calls = start({"web": (["src/*.py"], [])})
    (src / "app.py").unlink()
    assert calls.next() == ({"web"}, (str(src / "app.py"),))


def test_an_atomic_save_is_exactly_one_call(start, src, tmp_path):
    (tmp_path / "flag").mkdir()
    watcher, calls = start({"web": (["src/*.py"], []), "sentinel": (["flag/*"], [])})
    temp = write(src / "app.py.tmp", "v2")
    os.replace(temp, src / "app.py")
    assert calls.next() == ({"web"}, (str(src / "app.py"),))
    # Any second batch for this save would hold events queued before the flag's: it arrives first, or with it.
    write(tmp_path / "flag" / "done")
    later = calls.until("sentinel")
    assert all(str(src / "app.py") not in paths and temp not in paths for _, paths in later), later


@pytest.mark.parametrize("ignored", [
    ["src/__pycache__/app.cpython-311.pyc"],
    [".git/HEAD", ".git/objects/ab/cdef0123", ".git/index.lock"],
    [".supervise/logs/web.0.out", ".supervise/checkpoint.json"],
    ["src/.app.py.swp", "src/4913", "src/app.py~", "node_modules/m/index.js", "src/notes.log"],
])
def test_ignored_changes_produce_no_call(start, src, tmp_path, ignored):
    watcher, calls = start({"web": (["**"], ["*.log"])})
    for name in ignored:
        write(tmp_path / name)
    sentinel = write(src / "sentinel.py")
    apps, paths = calls.next()
    assert (apps, paths) == ({"web"}, (sentinel,))


def test_a_batch_concerning_no_app_produces_no_call(start, src, tmp_path):
    (tmp_path / "flag").mkdir()
    watcher, calls = start({"web": (["src/*.py"], []), "sentinel": (["flag/*"], [])})
    write(src / "README.md")
    write(src / "pkg" / "deep.py")
    flag = write(tmp_path / "flag" / "go")
    assert calls.next() == ({"sentinel"}, (flag,))


def test_stop_returns_quickly_and_the_thread_is_gone(start, src):
    watcher, calls = start({"web": (["src/*.py"], [])})
    assert watcher.running
    began = time.monotonic()
    watcher.stop()
    assert time.monotonic() - began < 2.0
    assert not watcher.running
    assert "supervise-watch" not in {thread.name for thread in threading.enumerate()}


def test_a_missing_root_is_listed_and_the_others_still_work(start, src, tmp_path):
    watcher, calls = start({"web": (["src/*.py"], []), "ghost": (["ghost/*.py"], [])}, recheck=0.2)
    assert watcher.missing_roots == (str(tmp_path / "ghost"),)
    path = write(src / "app.py", "v2")
    assert calls.next() == ({"web"}, (path,))
    # Once it exists, it is watched too.
    (tmp_path / "ghost").mkdir()
    wait_until(lambda: not watcher.missing_roots, DEADLINE, message="the new root to be picked up")
    assert watcher.wait_ready(DEADLINE)
    ghost = write(tmp_path / "ghost" / "boo.py")
    assert calls.until_path(ghost) == ({"ghost"}, (ghost,))


def test_the_files_of_a_root_that_appears_count_as_changed(start, src, tmp_path):
    watcher, calls = start({"web": (["src/*.py"], []), "ghost": (["ghost/*.py"], [])}, recheck=0.2)
    staged = write(tmp_path / "staging" / "boo.py")
    write(tmp_path / "staging" / "__pycache__" / "boo.cpython-311.pyc")
    os.rename(Path(staged).parent, tmp_path / "ghost")  # appears with its files, none of them seen being written
    assert calls.next() == ({"ghost"}, (str(tmp_path / "ghost" / "boo.py"),))


def test_a_root_deleted_and_recreated_is_watched_again(start, src, tmp_path):
    log = Log()
    watcher, calls = start({"web": (["src/*.py"], [])}, recheck=0.2, log=log)
    shutil.rmtree(src)
    assert calls.next() == ({"web"}, (str(src / "app.py"),))
    wait_until(lambda: watcher.missing_roots == (str(src),), DEADLINE, message="the root to be missing")
    assert ("warning", "watched directory is gone; watching the rest", {"root": str(src)}) in log.records
    src.mkdir()
    wait_until(lambda: not watcher.missing_roots, DEADLINE, message="the root to be back")
    assert watcher.wait_ready(DEADLINE)
    path = write(src / "new.py")
    assert calls.until_path(path) == ({"web"}, (path,))


def test_a_failing_watch_is_logged_and_retried(start, src, monkeypatch):
    import watchfiles

    real = watchfiles.watch
    failures = iter([OSError(28, "inotify watch limit reached")])

    def flaky(*args, **kwargs):
        for error in failures:
            raise error
        return real(*args, **kwargs)

    monkeypatch.setattr(watchfiles, "watch", flaky)
    log = Log()
    watcher, calls = start({"web": (["src/*.py"], [])}, log=log)
    assert [(level, event) for level, event, _ in log.records] == [("error", "file watcher failed, retrying")]
    assert log.records[0][2]["retry_in"] == watch.RETRY_FIRST
    assert "exc_info" not in log.records[0][2]  # the machine's state, said in the message: no traceback
    path = write(src / "app.py", "v2")
    assert calls.next() == ({"web"}, (path,))


def test_a_bug_in_the_watching_is_logged_with_its_traceback_and_retried(start, src, monkeypatch):
    import watchfiles

    real = watchfiles.watch
    failures = iter([TypeError("a bug of ours")])

    def buggy(*args, **kwargs):
        for error in failures:
            raise error
        return real(*args, **kwargs)

    monkeypatch.setattr(watchfiles, "watch", buggy)
    log = Log()
    watcher, calls = start({"web": (["src/*.py"], [])}, log=log)
    [(level, event, fields)] = log.records
    assert (level, event) == ("error", "file watcher failed, retrying")
    assert isinstance(fields["exc_info"], TypeError) and fields["exc_info"].__traceback__ is not None
    path = write(src / "app.py", "v2")
    assert calls.next() == ({"web"}, (path,))


def test_a_failing_callback_is_logged_and_watching_goes_on(start, src):
    class Failing(Calls):
        def __call__(self, apps: frozenset[str], paths: tuple[str, ...]) -> None:
            super().__call__(apps, paths)
            if any(path.endswith("boom.py") for path in paths):
                raise RuntimeError("daemon bug")

    log = Log()
    watcher, calls = start({"web": (["src/*.py"], [])}, calls=Failing(), log=log)
    boom = write(src / "boom.py")
    assert calls.next() == ({"web"}, (boom,))
    fine = write(src / "fine.py")
    assert calls.until_path(fine) == ({"web"}, (fine,))
    assert log.records[0][:2] == ("error", "file change callback failed")
    assert isinstance(log.records[0][2]["exc_info"], RuntimeError)  # a bug: logged with its traceback
    assert watcher.running


def test_latency_from_write_to_callback(start, src):
    watcher, calls = start({"web": (["src/*.py"], [])})
    latencies = []
    for index in range(10):
        path = src / f"m{index}.py"
        began = time.monotonic()
        calls.until_path(write(path))
        latencies.append(time.monotonic() - began)
    assert statistics.median(latencies) < 1.0, latencies  # ~0.1 s when idle; the bound only catches breakage
