"""File watching -> "reload these apps" notifications.

Why it is built this way:

- One daemon thread, off the event loop. watchfiles' Rust side (notify on
  inotify) does the waiting; the thread wakes every ``step`` (50 ms) only to
  check the stop event: about 0.2 % of one core when idle.
- Batching is watchfiles': a batch is handed over once a ``step`` passes with
  no new change (a save is seen 50-100 ms later), or after ``debounce`` for a
  writer that never pauses. One batch, at most one ``on_change``: an atomic
  save (write ``x.tmp``, rename it over ``x``) or a ``git checkout`` of fifty
  files is one reload.
- Directories are watched, never single files: an atomic save replaces the
  inode and a watch on the old one goes deaf. A pattern's root is its leading
  glob-free directory part: ``examples/*.py`` watches ``examples/`` only.
- Matching is a pure function of the path (:class:`WatchFilter`). It is also
  the ``watch_filter``, so a batch of only ignored paths (``.pyc``, ``.git``,
  swap files, worker logs in our state dir) ends there. watchfiles applies it
  after Rust has grouped a batch: ignored writes still cost a wake-up, never a
  call.
- A watch dies with its directory and cannot be set on one that does not
  exist yet: roots are re-checked (inode included) after each batch and every
  ``recheck`` seconds, and the watch re-armed (after one last batch, so what
  was queued is not lost) when one vanished, appeared or was replaced; the
  files of a new root count as changed.
- The thread never dies while not stopped: a failure (inotify limit, a root
  racing away, even a bug) is logged and retried after a pause doubling up
  to ``RETRY_MAX``. Nothing is raised into the daemon.
"""

from __future__ import annotations

import contextlib
import os
import re
import stat
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import TYPE_CHECKING, Any

from supervise.frozen import frozen
from supervise.runtime import log as log_module

if TYPE_CHECKING:
    from supervise.config.model import Config

__all__ = [
    "DEFAULT_IGNORED_DIRS", "DEFAULT_IGNORED_NAMES", "AppPatterns", "OnChange", "WatchFilter", "Watcher",
    "compile_glob", "pattern_root", "watch_roots",
]

OnChange = Callable[[frozenset[str], tuple[str, ...]], None]
"""``on_change(apps, paths)``: called from the watcher thread once per batch."""

DEFAULT_IGNORED_DIRS = frozenset({".git", "__pycache__", ".venv", "venv", "node_modules", ".mypy_cache",
                                  ".pytest_cache", ".hg", ".svn", ".tox", ".idea"})
"""A path with any of these as a component never triggers a reload."""

DEFAULT_IGNORED_NAMES = (
    "*.swp", "*.swo", "*.swx", "*~", ".#*", "#*#", "4913", "*.tmp", "*.part", "*___jb_tmp___",
    "*___jb_old___", ".*.kate-swp", "*.pyc", "*.pyo",
)
"""File names of editor temp files, atomic-save artefacts and bytecode (4913 is vim's probe file)."""

STEP_MS = 50  # a quiet step ends a batch: the latency of a single save
DEBOUNCE_MS = 1_600  # the longest a batch may keep growing under a steady stream of writes
RECHECK = 2.0  # seconds between checks for roots that vanished or appeared
RUST_TIMEOUT_MS = 100  # how long a quiet watcher stays in Rust before Python may re-check its roots
RETRY_FIRST = 0.5  # seconds before re-arming after a failure, doubling ...
RETRY_MAX = 10.0  # ... up to this

_GLOB_CHARS = re.compile(r"[*?\[]")


# -- patterns -----------------------------------------------------------------


def compile_glob(pattern: str) -> str:
    """The regex source matching one path segment against ``pattern`` (``*``, ``?``, ``[...]``)."""
    out, i = [], 0
    while i < len(pattern):
        char = pattern[i]
        if char == "*":
            out.append("[^/]*")
            while pattern[i + 1 : i + 2] == "*":
                i += 1
        elif char == "?":
            out.append("[^/]")
        elif char == "[" and (end := _class_end(pattern, i)) > 0:
            body = pattern[i + 1 : end]
            negate = body[:1] in ("!", "^")
            body = "".join(c if c == "-" else re.escape(c) for c in body[negate:])
            out.append(f"[^/{body}]" if negate else f"[{body}]")
            i = end
        else:
            out.append(re.escape(char))
        i += 1
    return "".join(out)


def _class_end(pattern: str, start: int) -> int:
    """Index of the ``]`` closing the class opened at ``start``, or -1 (then ``[`` is literal)."""
    i = start + 1
    i += pattern[i : i + 1] in ("!", "^")
    i += pattern[i : i + 1] == "]"  # a "]" first in a class is a member, as in fnmatch
    return pattern.find("]", i)


def _absolute(base: str, pattern: str) -> str:
    """``pattern`` as a normalized absolute pattern; relative means relative to ``base``."""
    return os.path.normpath(os.path.join(base, os.path.expanduser(pattern)))


def _path_regex(absolute_pattern: str) -> str:
    """Regex source for an absolute pattern; ``**`` spans directories, a match covers all below it."""
    segments = absolute_pattern.split("/")[1:]
    return "".join("(?:/[^/]+)*" if seg == "**" else "/" + compile_glob(seg) for seg in segments) + "(?:/.*)?"


def _either(sources: Iterable[str]) -> re.Pattern[str] | None:
    sources = list(sources)
    return re.compile("|".join(f"(?:{source})" for source in sources)) if sources else None


def pattern_root(base: str | os.PathLike[str], pattern: str) -> str:
    """The leading glob-free part of ``pattern`` as an absolute path: the directory to watch for it."""
    parts = _absolute(os.fspath(base), pattern).split("/")
    for index, segment in enumerate(parts):
        if _GLOB_CHARS.search(segment):
            return "/".join(parts[:index]) or "/"
    return "/".join(parts) or "/"


def watch_roots(base: str | os.PathLike[str], patterns: Iterable[str]) -> tuple[str, ...]:
    """The directories to watch (recursively) for ``patterns``: de-duplicated, none inside another.

    A glob-free pattern naming an existing file is watched through its
    directory, which survives an atomic save; one naming nothing yet is kept
    as is, so a typo shows up among the missing roots.
    """
    roots = set()
    for pattern in patterns:
        root = pattern_root(base, pattern)
        roots.add(os.path.dirname(root) if os.path.isfile(root) else root)
    return tuple(root for root in sorted(roots) if not any(_inside(root, other) for other in roots if other != root))


def _inside(path: str, directory: str) -> bool:
    """``path`` is ``directory`` or below it."""
    return path == directory or path.startswith(directory.rstrip("/") + "/")


# -- matching -----------------------------------------------------------------

_IGNORED_NAME = re.compile("|".join(compile_glob(name) for name in DEFAULT_IGNORED_NAMES))


@frozen
class AppPatterns:
    """One app's ``watch`` and ``watch_ignore``, compiled to match absolute paths."""

    name: str
    watch: re.Pattern[str] | None
    ignore: re.Pattern[str] | None  # ignore patterns with a "/": anchored paths
    ignore_names: re.Pattern[str] | None  # ignore patterns without: any path component, like .gitignore

    @classmethod
    def compile(cls, name: str, base: str, watch: Iterable[str], ignore: Iterable[str] = ()) -> AppPatterns:
        anchored, names = [], []
        for pattern in ignore:
            bare = pattern.rstrip("/") or pattern
            if "/" in bare:
                anchored.append(_path_regex(_absolute(base, bare)))
            else:
                names.append(compile_glob(bare))
        return cls(name, _either(_path_regex(_absolute(base, p)) for p in watch), _either(anchored), _either(names))

    def matches(self, path: str, components: Iterable[str]) -> bool:
        """``path`` (absolute) is watched and not ignored; ``components`` are the ones below its anchor."""
        if self.watch is None or not self.watch.fullmatch(path):
            return False
        if self.ignore is not None and self.ignore.fullmatch(path):
            return False
        return self.ignore_names is None or not any(self.ignore_names.fullmatch(part) for part in components)


@frozen
class WatchFilter:
    """Which apps a changed path concerns: a pure function of the path.

    An instance is also a watchfiles ``watch_filter``: ``filter(change, path)``
    is true when the path concerns at least one app.
    """

    base: str  # the config file's directory; relative patterns start here
    apps: tuple[AppPatterns, ...]
    patterns: tuple[str, ...]  # every app's watch patterns, for the roots
    state_dir: str | None  # never a reason to reload: the daemon writes logs there
    anchors: tuple[str, ...]  # the base and the roots outside it, deepest first

    @classmethod
    def build(cls, base: str | os.PathLike[str], apps: Mapping[str, tuple[Iterable[str], Iterable[str]]],
              state_dir: str | os.PathLike[str] | None = None) -> WatchFilter:
        """From ``{app: (watch, watch_ignore)}``; apps without patterns are left out."""
        base = os.path.abspath(base)
        compiled: list[AppPatterns] = []
        patterns: list[str] = []
        for name, (watch, ignore) in apps.items():
            if watch := tuple(watch):
                compiled.append(AppPatterns.compile(name, base, watch, tuple(ignore)))
                patterns.extend(watch)
        outside = {root for p in patterns if not _inside(root := pattern_root(base, p), base)}
        anchors = tuple(sorted({base, *outside}, key=len, reverse=True))
        state = None if state_dir is None else os.path.abspath(state_dir)
        return cls(base, tuple(compiled), tuple(patterns), state, anchors)

    @classmethod
    def from_config(cls, config: Config) -> WatchFilter:
        """For every app's ``watch`` and ``watch_ignore``, relative to the config file's directory."""
        apps = {name: (app.watch, app.watch_ignore) for name, app in config.apps.items()}
        return cls.build(config.path.parent, apps, config.supervise.state_dir)

    def __call__(self, change: object, path: str) -> bool:
        """The watchfiles ``watch_filter`` contract: keep ``path`` when it concerns some app."""
        return bool(self.apps_for(path))

    def components(self, path: str) -> list[str]:
        """The components of ``path`` below the config dir (or below its root, for one outside)."""
        for anchor in self.anchors:
            if _inside(path, anchor):
                return path[len(anchor) :].strip("/").split("/")
        return [os.path.basename(path)]

    def ignored(self, path: str) -> bool:
        """Ignored for every app: the state dir, tool and VCS directories, temp and swap files."""
        if self.state_dir is not None and _inside(path, self.state_dir):
            return True
        components = self.components(path)
        return not DEFAULT_IGNORED_DIRS.isdisjoint(components) or bool(_IGNORED_NAME.fullmatch(components[-1]))

    def apps_for(self, path: str) -> frozenset[str]:
        """The names of the apps that ``path`` (absolute) concerns."""
        path = os.path.normpath(path)
        if self.ignored(path):
            return frozenset()
        components = self.components(path)
        return frozenset(app.name for app in self.apps if app.matches(path, components))

    def batch(self, paths: Iterable[str]) -> tuple[frozenset[str], tuple[str, ...]]:
        """The apps a batch of changed paths concerns, and the paths that concern some app (sorted)."""
        apps: set[str] = set()
        kept = []
        for path in sorted(set(paths)):
            if found := self.apps_for(path):
                apps |= found
                kept.append(path)
        return frozenset(apps), tuple(kept)


# -- the thread ---------------------------------------------------------------


@frozen
class _StopProbe:
    """The ``stop_event`` given to watchfiles.

    Rust calls ``is_set()`` after every step, and only once its watches are
    in place, so the first call also tells us the watcher is armed: changes
    made from then on are seen. ``on_armed`` runs before that is announced.
    """

    stop: threading.Event
    armed: threading.Event
    on_armed: Callable[[], None] | None = None

    def is_set(self) -> bool:
        if not self.armed.is_set():
            if self.on_armed is not None:
                self.on_armed()
            self.armed.set()
        return self.stop.is_set()


def _identities(roots: Iterable[str]) -> dict[str, tuple[int, int]]:
    """(device, inode) of each root that is a directory now: a root replaced under our feet has a new one."""
    found = {}
    for root in roots:
        try:
            status = os.stat(root)
        except OSError:
            continue
        if stat.S_ISDIR(status.st_mode):
            found[root] = (status.st_dev, status.st_ino)
    return found


def _files_below(roots: Iterable[str]) -> Iterator[str]:
    for root in roots:
        for directory, subdirectories, files in os.walk(root):
            subdirectories[:] = [name for name in subdirectories if name not in DEFAULT_IGNORED_DIRS]
            yield from (os.path.join(directory, name) for name in files)


class Watcher:
    """Watches the roots of a :class:`WatchFilter` in a daemon thread.

    ``on_change(apps, paths)`` is called from that thread once per batch of
    changes that concerns at least one app, never with an empty set.
    """

    def __init__(self, filter: WatchFilter, on_change: OnChange, *, log: log_module.Log | None = None,
                 step_ms: int = STEP_MS, debounce_ms: int = DEBOUNCE_MS, recheck: float = RECHECK,
                 force_polling: bool | None = None) -> None:
        self.filter = filter
        self.roots = watch_roots(filter.base, filter.patterns)
        self.missing_roots = tuple(root for root in self.roots if not os.path.isdir(root))
        self._on_change = on_change
        self._log = log if log is not None else log_module.default()
        self._options: dict[str, Any] = dict(step=step_ms, debounce=debounce_ms, force_polling=force_polling,
                                             rust_timeout=RUST_TIMEOUT_MS)
        self._recheck = recheck
        self._stop = threading.Event()
        self._armed = threading.Event()
        self._thread: threading.Thread | None = None
        self._watching: dict[str, tuple[int, int]] | None = None  # the roots of the current session

    @classmethod
    def from_config(cls, config: Config, on_change: OnChange, *, log: log_module.Log | None = None,
                    **options: Any) -> Watcher | None:
        """A watcher for every app's ``watch`` patterns; None when no app has any."""
        watch_filter = WatchFilter.from_config(config)
        return cls(watch_filter, on_change, log=log, **options) if watch_filter.apps else None

    @property
    def running(self) -> bool:
        """The thread is alive (started and not yet stopped)."""
        return self._thread is not None and self._thread.is_alive()

    def start(self) -> None:
        """Start the watching thread (once); returns at once, see :meth:`wait_ready`."""
        if self._thread is not None:
            raise RuntimeError("a Watcher starts only once")
        self._thread = threading.Thread(target=self._run, name="supervise-watch", daemon=True)
        self._thread.start()

    def wait_ready(self, timeout: float) -> bool:
        """Wait until changes are being seen (watches armed); False if ``timeout`` passed first
        (or every root is missing)."""
        return self._armed.wait(timeout)

    def stop(self, timeout: float = 1.0) -> None:
        """Stop the thread; it notices within one step (50 ms) and is joined for at most ``timeout``."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def _run(self) -> None:
        failures = 0
        while not self._stop.is_set():
            try:
                self._session()
                failures = 0
            except Exception as error:  # noqa: BLE001  (this thread must outlive anything; logged, then retried)
                failures = 1 if self._armed.is_set() else failures + 1
                delay = min(RETRY_MAX, RETRY_FIRST * 2 ** min(failures - 1, 8))
                self._log.error("file watcher failed, retrying", error=f"{type(error).__name__}: {error}",
                                retry_in=delay, failures=failures, **_traceback_unless_os(error))
                self._stop.wait(delay)
            finally:
                self._armed.clear()

    def _session(self) -> None:
        """Watch the roots that exist until stopped, or until one vanishes, appears or is replaced."""
        roots, present, appeared = self._take_roots()
        if not present:
            self._stop.wait(self._recheck)
            return
        # What a new root holds was written while nothing watched it: it counts as changed, once armed.
        on_armed = (lambda: self._deliver(_files_below(appeared))) if appeared else None
        stop = _StopProbe(self._stop, self._armed, on_armed)
        import watchfiles  # ~3 MiB: only a daemon that watches something pays for it

        batches = watchfiles.watch(*present, watch_filter=self.filter, stop_event=stop, yield_on_timeout=True,
                                   raise_interrupt=False, **self._options)
        with contextlib.closing(batches):  # closes the Rust watcher now, not whenever the generator is collected
            next_check = time.monotonic() + self._recheck
            for changes in batches:
                self._deliver(path for _, path in changes)
                if changes or time.monotonic() >= next_check:
                    if watch_roots(self.filter.base, self.filter.patterns) != roots or _identities(roots) != present:
                        # One more batch first: what was queued before we noticed is not lost with this watcher.
                        self._deliver(path for _, path in next(batches, set()))
                        return
                    next_check = time.monotonic() + self._recheck

    def _take_roots(self) -> tuple[tuple[str, ...], dict[str, tuple[int, int]], list[str]]:
        """The roots now, those present (with their identity), and those new since the last session."""
        roots = watch_roots(self.filter.base, self.filter.patterns)
        present = _identities(roots)
        previous, self._watching = self._watching, present
        for root in sorted(previous.keys() - present.keys() if previous is not None else ()):
            self._log.warning("watched directory is gone; watching the rest", root=root)
        self.roots, self.missing_roots = roots, tuple(root for root in roots if root not in present)
        if previous is None:
            return roots, present, []
        return roots, present, [root for root, identity in present.items() if previous.get(root) != identity]

    def _deliver(self, paths: Iterable[str]) -> None:
        apps, kept = self.filter.batch(paths)
        if not apps:
            return
        try:
            self._on_change(apps, kept)
        except Exception as error:  # noqa: BLE001  (a bug in the daemon's callback must not end the watching; logged)
            self._log.error("file change callback failed", error=f"{type(error).__name__}: {error}",
                            apps=sorted(apps), exc_info=error)


def _traceback_unless_os(error: Exception) -> dict[str, Exception]:
    """An OSError (an inotify limit, a root racing away) is the machine's state, said in its
    message; anything else (watchfiles' RuntimeErrors, a bug of ours) needs its traceback."""
    return {} if isinstance(error, OSError) else {"exc_info": error}
