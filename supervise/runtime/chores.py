"""The daemon's periodic duties: sampling process trees, checking log sizes, writing the
checkpoint, and keeping the service manager informed.

Each is paced here, not in the core: the core says *that* something is due
(a ``Resample``, a ``Checkpoint``, a ``Notify``) and these decide *when*
the disk or the socket sees it, coalescing bursts. The slow parts (walking
/proc, rotating a log, fsync) run off the loop, in the daemon's one worker
thread.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable
from concurrent.futures import Executor
from pathlib import Path

from supervise.config.model import Config
from supervise.core import Event, Notify, Sampled, ServiceState, View
from supervise.runtime import checkpoint, logfiles, sampler
from supervise.runtime.log import Log
from supervise.runtime.sdnotify import Notifier
from supervise.runtime.workers import WorkerTable

MEMORY_INTERVAL = 0.5
"""Seconds between samples while some app has max_memory or max_processes."""

DISPLAY_INTERVAL = 5.0
"""Seconds between passes over every instance (memory, CPU % and process count for `status`,
whether or not the app has a limit) while somebody looks: a `status`, a /metrics scrape, `top`
or the dashboard within WATCHED (benchmarks/sampler.py: the daemon's cost with 1,000 instances)."""

UNWATCHED_INTERVAL = 60.0
"""Seconds between those passes while nobody looks: a pass over 4,900 instances cost 7 % of a core
every 5 s (docs/scaling.md), for figures nobody read. A look at figures older than
DISPLAY_INTERVAL starts a pass at once: the next look (a second `status`, the next scrape) is fresh."""

WATCHED = 60.0
"""A look at `status` keeps the passes at DISPLAY_INTERVAL for this long."""

EXACT_INTERVAL = 30.0
"""Seconds between exact passes, which read every tree's PSS afresh (the others estimate an
unchanged tree's from its RSS and page faults: see sampler)."""

LOG_CHECK_INTERVAL = 3.0
"""One stat() per instance on the loop; rotation itself runs off it."""

LOG_CHECK_FLOOD = 0.2
"""The next check, when one found a file over its limit: a flooding worker writes hundreds
of MB a second, and a file may only grow that much between two checks."""

CHECKPOINT_INTERVAL = 0.25
"""Seconds between checkpoints at most: a crash storm is written a few times a second, not per event."""

CHECKPOINT_RETRY = 1.0
"""Seconds before a checkpoint that could not be written is tried again."""

STATUS_INTERVAL = 1.0
"""Seconds between two STATUS= lines to the service manager at most."""


class Sampling:
    """Memory, CPU and process counts of instances' trees, in one pass off the loop.

    Every instance is sampled every DISPLAY_INTERVAL while its figures are
    looked at (``looked``), every UNWATCHED_INTERVAL otherwise; apps with
    max_memory or max_processes also every MEMORY_INTERVAL in between (or
    sooner when the core asks to confirm a reading). One pass every
    EXACT_INTERVAL is exact: it reads every tree's PSS, where the others read
    it only for trees that changed or may have grown near their limit (see
    sampler).
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, workers: WorkerTable, executor: Executor,
                 report: Callable[[Event], None]) -> None:
        self.loop, self.workers, self.executor, self.report = loop, workers, executor, report
        self._now = asyncio.Event()
        self._sampler = sampler.Sampler()
        self._expected: sampler.Measure | None = None
        self._looked_at = float("-inf")
        self._last_full = loop.time()
        self._asked = False  # a look found the figures stale: the next pass is a full one

    def looked(self) -> None:
        """Somebody reads the figures (`status`, /metrics, the dashboard): keep them fresh for a while,
        and if they are stale now, take a pass at once."""
        now = self.loop.time()
        unwatched, self._looked_at = now - self._looked_at >= WATCHED, now
        if now - self._last_full >= DISPLAY_INTERVAL and not self._asked:
            self._asked = True
            self._now.set()
        elif unwatched:
            self._now.set()  # it sleeps for UNWATCHED_INTERVAL: wake it to time its next pass anew

    @property
    def measure(self) -> str:
        """How trees' memory is counted ("cgroup", "pss" or "rss-sum"), for `status --json`.

        The least faithful measure the last pass needed for any tree: "rss-sum"
        means some shared pages are counted more than once. Before a pass has
        measured anything, the one this machine should give (worked out once,
        on first use: the daemon finds its cgroups after creating this).
        """
        if self._sampler.measure is not None:
            return str(self._sampler.measure)
        if self._expected is None:
            cgroups = self.workers.cgroups
            self._expected = sampler.expected_measure(cgroups.root if cgroups is not None else None)
        return str(self._expected)

    def soon(self, after: float) -> None:
        """Sample again `after` seconds from now (the core's ``Resample``)."""
        self.loop.call_later(after, self._now.set)

    def _display_interval(self) -> float:
        return DISPLAY_INTERVAL if self.loop.time() - self._looked_at < WATCHED else UNWATCHED_INTERVAL

    async def run(self) -> None:
        last_exact = self._last_full = self.loop.time()
        while True:
            fast = any(w.app.max_memory is not None or w.app.max_processes is not None for w in self.workers)
            wait = self._display_interval() - (self.loop.time() - self._last_full)
            try:
                await asyncio.wait_for(self._now.wait(), max(0.0, min(MEMORY_INTERVAL, wait) if fast else wait))
            except TimeoutError:
                pass
            self._now.clear()
            now = self.loop.time()
            full = now - self._last_full >= self._display_interval() - 0.01 or self._asked
            self._asked = False
            exact = now - last_exact >= EXACT_INTERVAL - 0.01
            if full:
                self._last_full = now
            if exact:
                last_exact = now
            roots = [sampler.Root(w.spawn_id, w.child.pid, w.child.cgroup, w.app.max_memory) for w in self.workers
                     if full or w.app.max_memory is not None or w.app.max_processes is not None]
            if roots:
                sample = await self.loop.run_in_executor(self.executor, self._sampler.sample, roots, exact)
                self.report(Sampled(sample.memory, sample.processes, sample.cpu, sample.cpu_seconds))


class LogChecks:
    """The log files of workers that write them themselves (adopted from a daemon of an older
    version: the daemon rotates the others as it writes them), stat'ed on the loop
    (microseconds); the big ones rotated off it."""

    def __init__(self, loop: asyncio.AbstractEventLoop, workers: WorkerTable, executor: Executor, log: Log) -> None:
        self.loop, self.workers, self.executor, self.log = loop, workers, executor, log
        self._timer = loop.call_later(LOG_CHECK_INTERVAL, self.check)

    def check(self) -> None:
        big = []
        for worker in self.workers:
            if self.workers.outputs.get(worker.spawn_id) is not None:
                continue
            try:
                if os.stat(worker.log_path).st_size >= worker.app.log_max_size:
                    big.append((worker.log_path, worker.app.log_max_size, worker.app.log_backups))
            except OSError:
                continue
        if big:
            self.loop.run_in_executor(self.executor, self._rotate, big)
        self._timer = self.loop.call_later(LOG_CHECK_FLOOD if big else LOG_CHECK_INTERVAL, self.check)

    def _rotate(self, jobs: list[tuple[str, int, int]]) -> None:
        for path, max_size, backups in jobs:
            try:
                logfiles.rotate_if_needed(Path(path), max_size, backups)
            except OSError as exc:
                self.log.warning("log rotation failed", path=path, error=str(exc))

    def stop(self) -> None:
        self._timer.cancel()


class ServiceManager:
    """The core's ``Notify`` actions to systemd: at once, but a STATUS= line at most once a second;
    and the watchdog fed from the loop itself, so a wedged loop is noticed and restarted."""

    def __init__(self, loop: asyncio.AbstractEventLoop, notifier: Notifier) -> None:
        self.loop, self.notifier = loop, notifier
        self._pending: str | None = None  # a STATUS line held back
        self._timer: asyncio.TimerHandle | None = None
        self._last_status = -STATUS_INTERVAL
        self._watchdog: asyncio.Task[None] | None = None
        if notifier.watchdog_interval:
            self._watchdog = loop.create_task(self._feed_watchdog(notifier.watchdog_interval))

    def notify(self, action: Notify) -> None:
        match action.state:
            case ServiceState.READY:
                self.notifier.ready(action.status)
            case ServiceState.RELOADING:
                self.notifier.reloading(action.status)
            case ServiceState.STOPPING:
                self._pending = None
                self.notifier.stopping(action.status)
            case ServiceState.STATUS:
                self._pending = action.status
                if self._timer is None:
                    delay = max(0.0, self._last_status + STATUS_INTERVAL - self.loop.time())
                    self._timer = self.loop.call_later(delay, self._send_status)

    def _send_status(self) -> None:
        self._timer = None
        if self._pending is not None:
            self._last_status = self.loop.time()
            self.notifier.status(self._pending)
            self._pending = None

    async def _feed_watchdog(self, interval: float) -> None:
        while True:
            self.notifier.watchdog()
            await asyncio.sleep(interval)

    def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        if self._watchdog is not None:
            self._watchdog.cancel()


class Checkpointer:
    """Writes the checkpoint when the core says it is out of date, at most every CHECKPOINT_INTERVAL.

    The record is taken on the loop (which owns the state it describes);
    the write (temp file, fsync, rename, fsync of the directory) is not.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, path: Path, view: View, workers: WorkerTable,
                 config: Callable[[], Config], executor: Executor, log: Log,
                 publish: Callable[[dict[str, object]], object]) -> None:
        self.loop, self.path, self.view, self.workers = loop, path, view, workers
        self.config, self.executor, self.log, self.publish = config, executor, log, publish
        self.failing: str | None = None  # why the last write failed; None once one succeeds
        self._timer: asyncio.TimerHandle | None = None
        self._last = -CHECKPOINT_INTERVAL
        self._records: dict[object, tuple[tuple[object, ...], str]] = {}  # each record's JSON, for the next checkpoint
        self.stopped = False  # the daemon is exiting: nothing more is written
        self.on_write: Callable[[float, bool], None] | None = None  # seconds each write took, and if it did (metrics)

    def soon(self) -> None:
        """Coalesce: at most one checkpoint per CHECKPOINT_INTERVAL, however many are asked for."""
        if self._timer is not None or self.stopped:
            return
        delay = max(0.0, self._last + CHECKPOINT_INTERVAL - self.loop.time())
        self._timer = self.loop.call_later(delay, self._now)

    def _now(self) -> None:
        self._timer = None
        if self.stopped:
            return
        self._last = self.loop.time()
        self.loop.run_in_executor(self.executor, self._store, self.encode())

    def _store(self, data: bytes) -> None:
        """In the worker thread; what came of it (and how long it took) goes back to the loop."""
        started = time.monotonic()
        try:
            checkpoint.write(self.path, data)
        except OSError as exc:
            self.loop.call_soon_threadsafe(self._stored, exc.strerror or str(exc), time.monotonic() - started)
        else:
            self.loop.call_soon_threadsafe(self._stored, None, time.monotonic() - started)

    def _stored(self, error: str | None, seconds: float) -> None:
        """A failing checkpoint is said once, in status and as an event, and so is its recovery:
        until then a daemon restart would adopt workers from an old record, or none."""
        if self.on_write is not None:
            self.on_write(seconds, error is None)
        if error is not None and self.failing is None:
            self.log.warning("cannot write the checkpoint; a daemon restart would not adopt the workers",
                             error=error)
            self.publish({"type": "checkpoint", "event": "failing", "error": error, "path": str(self.path)})
        elif error is None and self.failing is not None:
            self.publish({"type": "checkpoint", "event": "recovered", "error": self.failing, "path": str(self.path)})
        self.failing = error
        if error is not None:  # written again when space returns, not only at the next change
            self.loop.call_later(CHECKPOINT_RETRY, self.soon)

    def write_now(self) -> None:
        """On the loop, at once: the daemon is about to exit and leave its workers to the next one."""
        checkpoint.write(self.path, self.encode())

    def stop(self) -> None:
        self.stopped = True
        if self._timer is not None:
            self._timer.cancel()

    def encode(self) -> bytes:
        snap = self.view.snapshot()
        offset = time.time() - self.loop.time()  # loop time -> wall clock
        config = self.config()
        return checkpoint.encode_live(snap, self.workers, offset, config.path, config.text, self._records)
