"""When the daemon samples every instance for `status`: often while somebody looks, rarely otherwise.

A real event loop, a real sampler reading this very process from /proc, and the
schedule's constants shrunk so that a minute of the daemon's life takes a second.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from supervise.config.model import AppConfig
from supervise.core import Event, Sampled
from supervise.runtime import chores
from supervise.runtime.process import Child
from supervise.runtime.workers import Worker

DISPLAY, WATCHED, UNWATCHED = 0.05, 0.4, 30.0


@pytest.fixture
def fast(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(chores, "DISPLAY_INTERVAL", DISPLAY)
    monkeypatch.setattr(chores, "WATCHED", WATCHED)
    monkeypatch.setattr(chores, "UNWATCHED_INTERVAL", UNWATCHED)


class Table(list):
    """What Sampling reads of the worker table: its workers, and no cgroups."""

    cgroups = None


def worker() -> Worker:
    app = AppConfig("w", ("x",), Path("/"))  # no max_memory nor max_processes: sampled only for status
    return Worker(1, "w:0", app, Child(os.getpid(), None, None, 0.0), "t", None, "/dev/null")


async def passes_while(sampling: chores.Sampling, reports: list[Event], seconds: float,
                       look_every: float | None = None) -> int:
    """How many passes over the instances the sampler makes in `seconds`, looked at every `look_every`."""
    before = len(reports)
    end = time.monotonic() + seconds
    while (left := end - time.monotonic()) > 0:
        if look_every is not None:
            sampling.looked()
        await asyncio.sleep(min(left, look_every or left))  # the scenario: time passing, looked at or not
    return sum(1 for r in reports[before:] if isinstance(r, Sampled))


@contextlib.asynccontextmanager
async def running(reports: list[Event]) -> AsyncIterator[chores.Sampling]:
    """A Sampling of one instance, its task running (and asleep: its first step ends in its wait)."""
    with ThreadPoolExecutor(1) as executor:
        sampling = chores.Sampling(asyncio.get_running_loop(), Table([worker()]), executor, reports.append)
        task = asyncio.create_task(sampling.run())
        await asyncio.sleep(0)  # a yield, not a wait: the task runs its first step, up to its sleep
        try:
            yield sampling
        finally:
            task.cancel()


async def wait_for_pass(reports: list[Event], count: int, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while sum(1 for r in reports if isinstance(r, Sampled)) < count:
        assert time.monotonic() < deadline, f"no pass within {timeout}s"
        await asyncio.sleep(0.005)


def test_passes_run_often_while_looked_at_and_stop_when_nobody_looks(fast: None) -> None:
    async def scenario() -> None:
        reports: list[Event] = []
        async with running(reports) as sampling:
            assert await passes_while(sampling, reports, 0.3) == 0, "nobody looked: no pass"
            sampling.looked()  # figures older than DISPLAY: a pass at once
            await wait_for_pass(reports, 1, timeout=DISPLAY * 20)
            watched = await passes_while(sampling, reports, 1.0, look_every=0.1)
            assert watched >= 0.5 / DISPLAY, f"{watched} passes in 1 s while looked at every 0.1 s"
            await passes_while(sampling, reports, WATCHED + 0.2)  # the last look ages out (and a pass due then)
            assert await passes_while(sampling, reports, 0.5) == 0, "nobody looks any more: no pass"

    asyncio.run(scenario())


def test_a_look_at_fresh_figures_does_not_leave_the_sampler_asleep_for_the_unwatched_interval(
        fast: None, monkeypatch: pytest.MonkeyPatch) -> None:
    """Nobody looked yet, so the sampler sleeps for UNWATCHED_INTERVAL; a first look while the
    figures are still fresh (a `status` just after the daemon started) must not wait that out."""
    monkeypatch.setattr(chores, "DISPLAY_INTERVAL", 0.3)
    monkeypatch.setattr(chores, "WATCHED", 5.0)  # one look keeps the passes frequent all through the test

    async def scenario() -> None:
        reports: list[Event] = []
        async with running(reports) as sampling:  # asleep for UNWATCHED_INTERVAL: nobody has looked
            sampling.looked()  # the one look, at figures just made
            assert await passes_while(sampling, reports, 1.2) >= 2, "passes every 0.3 s for 5 s"

    asyncio.run(scenario())
