"""Readiness and liveness probes: when each instance's checks run, and what their results mean.

The daemon's loop runs them all, on one thread, without blocking: each
check is a small callback-driven state machine (probe_checks.py). Per
instance and kind a schedule fires on a fixed grid, the first check soon
after the start (``FIRST_DELAY``), then one every ``interval`` counted from
the grid, so that lateness never accumulates. A check still running (or
still waiting for a slot) when the next is due is not doubled: the next one
starts the moment it ends, and ticks beyond that are dropped, like a
Kubernetes prober's ticker. At most ``max_in_flight`` checks run at once
across all instances; a check waiting for a slot starts its timeout when it
gets one.

What a schedule reports: readiness, ``Ready`` once after ``successes``
passes in a row (and it stops); liveness, ``Unhealthy`` once after
``failures`` failures in a row, then ``Healthy`` when it passes again, and
so on. The last failure's text stays readable for status until a pass.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import math
import os
import time
from collections import deque
from collections.abc import Callable, Mapping
from enum import Enum

from supervise.config.model import AppConfig, Probe, ProbeKind
from supervise.core.events import Event, Healthy, Ready, Unhealthy
from supervise.runtime import log as log_module
from supervise.runtime.probe_checks import Check, Context, InvalidTarget, Pause, Resolver, Target
from supervise.runtime.probe_exec import ExecTarget
from supervise.runtime.probe_net import HttpTarget, TcpTarget, parse_address

__all__ = ["FIRST_DELAY", "Prober"]

FIRST_DELAY = 0.05
"""Seconds from `start_*` to an instance's first check (at most its interval): soon, but after
the process has had a moment to start, so that a fast server is ready at the first look."""
_RESOLUTION = time.get_clock_info("monotonic").resolution
SLACK = 0.05
"""Timer slack (as Linux's timer_slack and systemd's AccuracySec=): every grid starts on a multiple
of this (of interval / 20 for shorter intervals) and a tick or a deadline fires at the next
multiple, so that the checks of instances whose grids lie close together start in one wakeup of
the loop. At 500 instances spread over a 1 s interval this makes 20 wakeups a second instead of
500; each wakeup costs more than a check (on a busy machine, caches gone cold in between), so it
was most of the prober's CPU. The price: an instance's first check comes up to 50 ms later, and
with an interval that is not a multiple of 50 ms every check may; a deadline may fire up to
50 ms after the timeout."""
READ_PAUSE = 0.005
"""Seconds an HTTP check leaves its socket alone after sending (probe_checks.Pause)."""


def _ceil(when: float, step: float) -> float:
    """`when` rounded up to a multiple of `step`; one that is one already, give or take the float
    error of adding intervals up, stays where it is."""
    return math.ceil(when / step - 1e-6) * step


def _target(kind: ProbeKind, rendered: tuple[str, ...], app: AppConfig, env: Mapping[str, str]) -> Target:
    """The probe target of one instance, from its `rendered` templates; `env` is an exec probe's."""
    match kind:
        case ProbeKind.HTTP if len(rendered) == 1:
            return HttpTarget.parse(rendered[0])
        case ProbeKind.TCP if len(rendered) == 1:
            endpoint = parse_address(rendered[0])
            return InvalidTarget(endpoint) if isinstance(endpoint, str) else TcpTarget(endpoint)
        case ProbeKind.EXEC if rendered:
            return ExecTarget(rendered, app.cwd, env)
        case _:
            return InvalidTarget(f"bad {kind} probe target {list(rendered)!r}")


class Kind(Enum):
    READINESS = "readiness"
    LIVENESS = "liveness"


KINDS = tuple(Kind)  # readiness first; iterating the Enum class itself costs ~1 µs more each time


class _Schedule:
    """One instance's probe of one kind: its grid, the check in flight, and the run of results."""

    __slots__ = ("spawn_id", "kind", "probe", "target", "slack", "due", "check", "attempt", "busy", "queued",
                 "overdue", "closed", "passes", "fails", "unhealthy", "failure")

    def __init__(self, spawn_id: int, kind: Kind, probe: Probe, target: Target) -> None:
        self.spawn_id = spawn_id
        self.kind = kind
        self.probe = probe
        self.target = target
        self.slack = max(min(SLACK, probe.interval / 20), 0.001)  # the loader refuses an interval of 0
        self.due = 0.0  # when the next tick is due (the grid)
        self.check: Check | None = None
        self.attempt = 0  # numbers the checks, so that a stale `done` is ignored
        self.busy = False  # a check is running or waiting for a slot
        self.queued = False  # ... waiting for a slot
        self.overdue = False  # a tick came while busy: check again as soon as this one ends
        self.closed = False
        self.passes = 0  # in a row
        self.fails = 0  # in a row
        self.unhealthy = False  # liveness: Unhealthy reported, no Healthy since
        self.failure: str | None = None  # the last check's reason, while it has not passed since


class Prober:
    """Runs every instance's readiness and liveness probes in the daemon's loop.

    `report` takes the Ready, Unhealthy and Healthy events (the daemon's
    dispatch); `env` is the environment exec probes inherit (the daemon's,
    as workers do; None: this process's), under the app's `env` and the
    SUPERVISE_APP / SUPERVISE_INSTANCE / SUPERVISE_NAME of the instance.
    Exec probes need the daemon's reaper to collect their shell (see
    probe_checks): their exit status never depends on it.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, report: Callable[[Event], None], log: log_module.Log,
                 max_in_flight: int = 64, env: Mapping[str, str] | None = None) -> None:
        self.loop = loop
        self.report = report
        self.log = log
        self.max_in_flight = max(1, max_in_flight)
        self.env = dict(os.environ if env is None else env)
        self._ctx = Context(loop, Resolver(loop), Pause(loop, READ_PAUSE))
        self._bug = log_module.BugLog(log, "probe error: internal error", clock=loop.time)
        self._schedules: dict[tuple[int, Kind], _Schedule] = {}
        self._in_flight = 0
        self._waiting: deque[_Schedule] = deque()  # busy schedules waiting for a slot, oldest first
        self._starting = False  # in _release's loop: a check ending at once must not recurse into it
        # Every tick and every check's deadline, in one heap of tuples behind one loop timer: a
        # TimerHandle each would cost two asyncio handles and Python-level heap comparisons per
        # check, a third of the prober's CPU at 500 instances. An entry that no longer applies (a
        # forgotten schedule's tick, a finished check's deadline) is dropped when it comes up.
        self._heap: list[tuple[float, int, bool, _Schedule, int]] = []  # (when, seq, is tick, schedule, attempt)
        self._seq = itertools.count()
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = float("inf")

    # -- the API ---------------------------------------------------------------------------

    def start_readiness(self, spawn_id: int, app: AppConfig, index: int) -> bool:
        """Probe instance `index` of `app` until its readiness probe passes `successes` times in a
        row, then report Ready once. False (and nothing started) when the app has no readiness probe."""
        return self._start(spawn_id, Kind.READINESS, app.readiness_probe, app, index)

    def start_liveness(self, spawn_id: int, app: AppConfig, index: int) -> bool:
        """Probe it until forgotten: Unhealthy after `failures` failures in a row, Healthy when it passes
        again. False (and nothing started) when the app has no liveness probe."""
        return self._start(spawn_id, Kind.LIVENESS, app.liveness, app, index)

    def forget(self, spawn_id: int) -> None:
        """Stop every probe of the spawn: timers cancelled, a connection closed, an exec probe's process group
        killed."""
        for kind in Kind:
            schedule = self._schedules.pop((spawn_id, kind), None)
            if schedule is not None:
                self._stop(schedule)

    def close(self) -> None:
        """Forget every spawn."""
        for spawn_id in {spawn_id for spawn_id, _ in self._schedules}:
            self.forget(spawn_id)
        self._heap.clear()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
            self._timer_at = float("inf")

    def last_failure(self, spawn_id: int) -> str | None:
        """Why the spawn's last check failed (readiness first, while it runs), for status; None when
        its last checks passed or it has no probes."""
        if not self._schedules:  # no probe runs: status asks this of every instance
            return None
        for kind in KINDS:
            schedule = self._schedules.get((spawn_id, kind))
            if schedule is not None and schedule.failure is not None:
                return schedule.failure
        return None

    def probing(self, spawn_id: int) -> bool:
        """Some probe of the spawn is still scheduled (readiness until Ready, liveness until forgotten)."""
        return any((spawn_id, kind) in self._schedules for kind in KINDS)

    @property
    def in_flight(self) -> int:
        """Checks running right now (at most `max_in_flight`)."""
        return self._in_flight

    # -- schedules -------------------------------------------------------------------------

    def _start(self, spawn_id: int, kind: Kind, probe: Probe | None, app: AppConfig, index: int) -> bool:
        if probe is None:
            return False
        old = self._schedules.pop((spawn_id, kind), None)
        if old is not None:
            self._stop(old)
        env: Mapping[str, str] = {}
        if probe.kind is ProbeKind.EXEC:
            env = {**self.env, **app.env, "SUPERVISE_APP": app.name, "SUPERVISE_INSTANCE": str(index),
                   "SUPERVISE_NAME": f"{app.name}:{index}"}
        try:
            target = _target(probe.kind, probe.render(app.name, index, app.port), app, env)
        except (KeyError, IndexError, ValueError) as exc:  # a template naming what is not there ({port} without port)
            target = InvalidTarget(f"bad probe target {list(probe.target)!r}: {exc!r}")
        schedule = _Schedule(spawn_id, kind, probe, target)
        self._schedules[spawn_id, kind] = schedule
        # The grid starts on a multiple of the slack: with an interval that is one too (1 s, 10 s), every
        # tick then falls on one, and is not made late by up to a slack to meet the others.
        schedule.due = _ceil(self.loop.time() + min(probe.interval, FIRST_DELAY), schedule.slack)
        self._at(schedule.due, True, schedule, 0)
        return True

    def _stop(self, schedule: _Schedule) -> None:
        schedule.closed = True  # its entries in the heap are dropped when they come up
        if schedule.busy and not schedule.queued:  # running: end it, and give its slot on
            schedule.busy = False
            check, schedule.check = schedule.check, None
            if check is not None:
                try:
                    check.cancel()
                except Exception as exc:  # noqa: BLE001 - a bug of ours must not stop the forgetting
                    self._bug(exc, spawn_id=schedule.spawn_id)
            self._release()
        # A queued one stays in _waiting, skipped there as closed.

    # -- timers ------------------------------------------------------------------------------

    def _at(self, when: float, tick: bool, schedule: _Schedule, attempt: int) -> None:
        if tick:  # a deadline is kept to the letter: it only wakes the loop for a check that hangs
            when = _ceil(when, schedule.slack)
        heapq.heappush(self._heap, (when, next(self._seq), tick, schedule, attempt))
        if when < self._timer_at:
            self._arm(when)

    def _arm(self, when: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer = self.loop.call_at(when, self._fire)
        self._timer_at = when

    def _fire(self) -> None:
        self._timer = None
        self._timer_at = float("-inf")  # no arming by _at while the due entries run: done below
        heap = self._heap
        now = self.loop.time() + _RESOLUTION
        try:
            while heap and heap[0][0] <= now:
                _, _, tick, schedule, attempt = heapq.heappop(heap)
                if schedule.closed:
                    continue
                try:
                    if tick:
                        self._tick(schedule, now)
                    elif not self._stale(tick, schedule, attempt):
                        self._expire(schedule)
                except Exception as exc:  # noqa: BLE001 - a bug of ours must not stop every probe's timers
                    self._bug(exc, spawn_id=schedule.spawn_id)
            while heap and self._stale(*heap[0][2:]):  # no wakeup for nothing
                heapq.heappop(heap)
        finally:
            self._timer_at = float("inf")
            if heap:
                self._arm(heap[0][0])

    @staticmethod
    def _stale(tick: bool, schedule: _Schedule, attempt: int) -> bool:
        """A forgotten schedule's tick, or the deadline of a check that has ended."""
        return schedule.closed or (not tick and (schedule.attempt != attempt or not schedule.busy or schedule.queued))

    def _expire(self, schedule: _Schedule) -> None:
        check = schedule.check
        if check is not None:
            check.expire()

    # -- checks --------------------------------------------------------------------------------

    def _tick(self, schedule: _Schedule, now: float) -> None:
        interval = max(schedule.probe.interval, schedule.slack)
        schedule.due += interval
        if schedule.due <= now:  # the loop was held up past whole ticks: the next point of the grid
            schedule.due += interval * ((now - schedule.due) // interval + 1)
        self._at(schedule.due, True, schedule, 0)
        if schedule.busy:
            schedule.overdue = True
        else:
            self._begin(schedule)

    def _begin(self, schedule: _Schedule) -> None:
        schedule.busy = True
        if self._in_flight < self.max_in_flight and not self._waiting:
            self._run(schedule)
        else:
            schedule.queued = True
            self._waiting.append(schedule)
            self._release(0)

    def _release(self, freed: int = 1) -> None:
        """`freed` slots came free: start waiting checks in their place, oldest first."""
        self._in_flight -= freed
        if self._starting:
            return  # the loop below, further up the stack, goes on with the queue
        self._starting = True
        try:
            while self._waiting and self._in_flight < self.max_in_flight:
                schedule = self._waiting.popleft()
                if not schedule.closed:
                    schedule.queued = False
                    self._run(schedule)
        finally:
            self._starting = False

    def _run(self, schedule: _Schedule) -> None:
        """Start one check now; its timeout starts now too."""
        self._in_flight += 1
        schedule.attempt += 1
        attempt = schedule.attempt
        schedule.check = None
        try:
            check = schedule.target.start(self._ctx, schedule.probe.timeout,
                                          lambda reason: self._finished(schedule, attempt, reason))
        except Exception as exc:  # noqa: BLE001 - a probe never raises into the loop: it fails, saying why
            self._bug(exc, spawn_id=schedule.spawn_id)
            self._finished(schedule, attempt, f"probe error: {type(exc).__name__}: {exc}")
            return
        if schedule.busy and schedule.attempt == attempt:  # not ended already, in start()
            schedule.check = check
            self._at(self.loop.time() + schedule.probe.timeout, False, schedule, attempt)

    def _finished(self, schedule: _Schedule, attempt: int, reason: str | None) -> None:
        if schedule.closed or attempt != schedule.attempt or not schedule.busy:
            return  # cancelled by forget(), which gave the slot on itself
        schedule.busy = False
        schedule.check = None
        try:
            self._record(schedule, reason)
        except Exception as exc:  # noqa: BLE001 - a bug of ours (or of report) must not stop the probes
            self._bug(exc, spawn_id=schedule.spawn_id)
        if schedule.overdue and not schedule.closed:
            schedule.overdue = False
            self._begin(schedule)
        self._release()

    def _record(self, schedule: _Schedule, reason: str | None) -> None:
        """Count the result; report last, since the report may forget or restart this very schedule."""
        probe = schedule.probe
        event: Event | None = None
        if reason is None:
            schedule.failure = None
            schedule.fails = 0
            schedule.passes += 1
            if schedule.kind is Kind.READINESS and schedule.passes >= probe.successes:
                self._drop(schedule)
                event = Ready(schedule.spawn_id)
            elif schedule.kind is Kind.LIVENESS and schedule.unhealthy:
                schedule.unhealthy = False
                event = Healthy(schedule.spawn_id)
        else:
            schedule.failure = reason
            schedule.passes = 0
            schedule.fails += 1
            if schedule.kind is Kind.LIVENESS and schedule.fails >= probe.failures and not schedule.unhealthy:
                schedule.unhealthy = True
                event = Unhealthy(schedule.spawn_id, reason)
        if event is not None:
            self.report(event)

    def _drop(self, schedule: _Schedule) -> None:
        if self._schedules.get((schedule.spawn_id, schedule.kind)) is schedule:
            del self._schedules[schedule.spawn_id, schedule.kind]
        self._stop(schedule)
