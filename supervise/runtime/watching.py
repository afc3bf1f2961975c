"""The daemon's file watcher, following the config: started, restarted or stopped as `watch` patterns change.

watch.py (and watchfiles) are imported only once some app watches
something: a daemon that watches nothing does not carry them in memory.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import TYPE_CHECKING

from supervise.config.model import Config
from supervise.core import Event, FilesChanged
from supervise.runtime.log import Log

if TYPE_CHECKING:
    from supervise.runtime.watch import Watcher

ARMED_WAIT = 30.0
"""Seconds to wait for the watches to be armed before saying so in the log."""


class Watching:
    def __init__(self, loop: asyncio.AbstractEventLoop, log: Log, report: Callable[[Event], None]) -> None:
        self.loop, self.log, self.report = loop, log, report
        self.watcher: Watcher | None = None
        self._patterns: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] | None = None

    def follow(self, config: Config) -> None:
        """Watch `config`'s patterns from now on; nothing to do if they are the same as before."""
        patterns = {name: (app.watch, app.watch_ignore) for name, app in config.apps.items() if app.watch}
        if patterns == self._patterns:
            return
        self._patterns = patterns
        self.stop()
        if not patterns:
            return
        from supervise.runtime import watch

        self.watcher = watch.Watcher.from_config(config, self._changed_elsewhere, log=self.log)
        if self.watcher is not None:
            self.watcher.start()
            for root in self.watcher.missing_roots:
                self.log.warning("a watched directory does not exist (yet)", root=root)
            self.loop.run_in_executor(None, self._announce, self.watcher)

    def stop(self) -> None:
        if self.watcher is not None:
            self.watcher.stop(timeout=0)  # a daemon thread: it notices within one step, we need not wait
            self.watcher = None

    def _announce(self, watcher: Watcher) -> None:
        """Off the loop: say so once changes are really being seen (the watches are armed)."""
        if watcher.wait_ready(ARMED_WAIT) and watcher is self.watcher:
            self.log.info("watching for changes", roots=list(watcher.roots))

    def _changed_elsewhere(self, apps: frozenset[str], paths: tuple[str, ...]) -> None:
        """Called on the watcher's thread: hand over to the loop."""
        self.loop.call_soon_threadsafe(self.report, FilesChanged(apps, paths))
