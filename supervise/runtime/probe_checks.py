"""What every probe check shares: the contracts between the prober and a check, and the loop-side helpers.

A check is one run of one probe (probe_net.py: HTTP and TCP; probe_exec.py:
exec), a small callback-driven state machine on a non-blocking socket or on
pipes: no task, no future, no stream object. That is what keeps 500
instances probed every second at 3-4 % of a core (benchmarks/probes.py),
where a task per instance with asyncio.open_connection costs about 20 %. A check
ends exactly once, by calling ``done(None)`` (passed) or ``done(reason)``;
``expire()`` ends it as timed out, ``cancel()`` silently. Nothing in a check
raises into the loop: every error becomes the failure's reason.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable
from typing import Any, Protocol

from supervise.frozen import frozen

__all__ = ["Check", "Context", "Done", "InvalidTarget", "Pause", "Resolver", "Target", "first_line", "seconds"]

Done = Callable[[str | None], None]
"""How a check ends: ``None`` when it passed, else why it failed."""

REASON_LIMIT = 200  # characters of a line of output or of a response quoted in a reason


class Check(Protocol):
    """One check under way. The prober owns its deadline: at `timeout` after the start it calls
    `expire`, which ends the check as timed out; `cancel` ends it without a word."""

    def cancel(self) -> None: ...

    def expire(self) -> None: ...


class Target(Protocol):
    """A probe's rendered target, parsed once per instance; `start` runs one check of it."""

    def start(self, ctx: Context, timeout: float, done: Done) -> Check: ...


def seconds(value: float) -> str:
    return f"{value:g}s"


def first_line(data: bytes) -> str:
    for line in data.decode(errors="replace").splitlines():
        if line.strip():
            return line.strip()[:REASON_LIMIT]
    return ""


class Resolver:
    """Host names to addresses, in the loop's default executor: one lookup per name at a time, shared by
    every check that wants it. A check that times out leaves its lookup running; were each check to
    start its own, a DNS outage would queue a thread job per instance per interval, without end."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._pending: dict[tuple[str, int], asyncio.Future[Any]] = {}

    def lookup(self, host: str, port: int) -> asyncio.Future[Any]:
        key = (host, port)
        future = self._pending.get(key)
        if future is None:
            future = self._loop.run_in_executor(None, socket.getaddrinfo, host, port, 0, socket.SOCK_STREAM)
            self._pending[key] = future
            future.add_done_callback(lambda done: self._looked_up(key, done))
        return future

    def _looked_up(self, key: tuple[str, int], future: asyncio.Future[Any]) -> None:
        self._pending.pop(key, None)
        if not future.cancelled():
            future.exception()  # retrieved here: a lookup whose checks all timed out is no loop error


class Pause:
    """Runs what is deferred `delay` after the first of a batch, all in one wakeup of the loop.

    An HTTP check reads its response this way rather than watching its socket
    at once: on loopback the answer is there within a millisecond, and at 500
    instances (grids spread over the interval, ticks coalesced by SLACK) the
    loop would otherwise wake once per response. A wakeup costs about as much
    as a check's own work (a loop iteration, the syscalls, caches gone cold
    in between): this saves about a sixth of the prober's CPU. A response not
    there by then is waited for on its socket as usual.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, delay: float) -> None:
        self._loop = loop
        self._delay = delay
        self._due: list[Callable[[], None]] = []
        self._timer: asyncio.TimerHandle | None = None

    def defer(self, callback: Callable[[], None]) -> None:
        self._due.append(callback)
        if self._timer is None:
            self._timer = self._loop.call_later(self._delay, self._run)

    def _run(self) -> None:
        self._timer = None
        due, self._due = self._due, []
        for callback in due:
            callback()  # a check's own callback: guarded, never raises


@frozen
class Context:
    """What every check shares: the loop, the host name resolver, the read pause."""

    loop: asyncio.AbstractEventLoop
    resolver: Resolver
    pause: Pause


@frozen
class InvalidTarget:
    """A target that cannot be probed as written: every check fails, saying why."""

    reason: str

    def start(self, ctx: Context, timeout: float, done: Done) -> Check:
        done(self.reason)
        return _NOTHING


class _Nothing:
    def cancel(self) -> None:
        pass

    def expire(self) -> None:
        pass


_NOTHING = _Nothing()
