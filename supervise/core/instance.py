"""One instance's state machine: its states, why it exited, and every legal transition.

``step`` is the whole table: a ``match`` on (state, input). Anything not
listed is a bug in the caller and raises :class:`InvalidTransition`. It
returns the core's own actions (spawn, signal, kill, drain), addressed by
spawn id, so there is one vocabulary from here to the shell.
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from supervise.config.model import AppConfig, Readiness
from supervise.core.actions import Action, Adopt, KillTree, SendDrain, Signal, Spawn
from supervise.core.inputs import (
    BecameReady,
    Died,
    Forked,
    ForkFailed,
    Halt,
    Input,
    Launch,
    MemorySampled,
    ProbeFailed,
    ProbePassed,
    Proceed,
    RecycleLater,
    ReportedDrained,
    Resumed,
    TimerFired,
    Unheard,
)
from supervise.core.policy import CrashLoopBreaker, backoff_delay, should_restart
from supervise.core.states import FAILURE_REASONS, LIVE_STATES, ExitReason, InvalidTransition, LastExit, State
from supervise.frozen import frozen

# The states (states.py) and the inputs (inputs.py) are named here too: this module is where
# the core and its tests meet the state machine.
__all__ = [
    "DISRUPTIONS", "FAILURE_REASONS", "LIVE_STATES", "BecameReady", "Context", "Died", "ExitReason", "ForkFailed",
    "Forked", "Halt", "Input", "Instance", "InvalidTransition", "LastExit", "Launch", "MemorySampled", "ProbeFailed",
    "ProbePassed", "Proceed", "RecycleLater", "ReportedDrained", "Resumed", "State", "TimerFired", "Unheard",
    "never", "record_if_idle", "step",
]


DISRUPTIONS = (ExitReason.PROCESSES, ExitReason.HUNG, ExitReason.UNHEALTHY, ExitReason.MEMORY, ExitReason.MAX_AGE)
"""Restarts the supervisor decides on while the process still runs: the disruption budget
(``max_unavailable``) paces them. Crashes are not paced: that instance is gone already.
Most urgent first: one held for two reasons goes for the first (a fork bomb is killed, not
drained; a hung one is not replaced first, it serves nothing)."""

MEMORY_HYSTERESIS = 3
"""Consecutive samples over max_memory before a restart: a brief spike does not kill."""

RECYCLE_RETRY = 60.0
"""Seconds before a max-age recycle whose successor failed is tried again (at most max_age):
the old instance works, so it serves on meanwhile."""

DRAINED_GRACE = 0.5
"""After reporting drained, a stopping worker gets this long to exit on its own before the kill."""

DAEMON_FAULT_RETRY = 1.0
"""Seconds before a spawn that failed for want of the daemon's file descriptors is tried again.
Fixed, not the worker's backoff: the worker did nothing wrong, and descriptors come back as soon as
another worker exits or a client disconnects; a second is quick to recover and slow to spin."""

HELD_RECHECK = 0.5
"""A hung instance held by the budget is looked at again every this fraction of heartbeat_timeout:
one that beats again meanwhile is no longer due a restart (and status stops saying it waits)."""


@dataclass(slots=True, eq=False)  # identity: the core keys timers and spawns by the object
class Instance:
    config: AppConfig  # what it runs (and restarts with); the core passes it to step as Context.app
    index: int
    generation: int = 1
    breaker: CrashLoopBreaker = field(default_factory=CrashLoopBreaker)
    spawn_id: int | None = None  # of its current process; older ids are stale
    trial: bool = False  # a rollout's new instance: a failure removes it instead of restarting it
    retired: bool = False  # replaced: once its process is gone it is dropped, never restarted
    replace_for: ExitReason | None = None  # a replace-first restart asked (and under way), for this reason
    state: State = State.STOPPED
    pid: int | None = None
    spawned_at: float | None = None
    running_since: float | None = None
    deadline: float | None = None
    restarts: int = 0  # recoveries the supervisor decided on: after a crash, an exit, hung, memory, processes, ...
    reloads: int = 0  # replacements by a rollout (reload, a changed config): a new generation, not a recovery
    operator_restarts: int = 0  # starts and restarts an operator asked for, of a process that had run
    failures: int = 0  # consecutive unhealthy runs, drives backoff
    last_exit: LastExit | None = None
    stop_reason: ExitReason = ExitReason.STOPPED
    then_start: bool = False
    killed: bool = False
    last_beat: float | None = None  # drives hang detection
    heard_at: float | None = None  # the last message from the worker itself
    fields: Mapping[str, object] | None = None  # status fields from its last beat
    rss: int | None = None  # bytes, its tree's memory as last sampled (PSS or cgroup charge: see MemorySampled)
    processes: int | None = None  # its tree's process count, as last sampled
    cpu: float | None = None  # its tree's CPU % of one core, as last sampled
    cpu_seconds: float | None = None  # its tree's CPU time, as last sampled
    over_memory: int = 0  # consecutive samples over max_memory
    fence: int | None = None  # a cluster instance's fencing token: its next spawn gets it
    stop_by: float | None = None  # a Halt's grace as a deadline, kept for a process whose spawn is not reported yet
    spawned_fence: int | None = None  # the token its current process was given
    held: ExitReason | None = None  # a restart decided on (DISRUPTIONS) that waits for the app's disruption budget
    held_since: float | None = None
    unhealthy: str | None = None  # its liveness probe's last failure, while it fails
    recycle_at: float | None = None  # max_age: when it is replaced (successor first)
    spare: bool = False  # a warm spare: `index` numbers it among the app's spares until it is promoted
    wants_spare: bool = False  # its restart is due and a ready spare takes the slot (the group promotes it)

    @property
    def app(self) -> str:
        return self.config.name

    @property
    def name(self) -> str:
        return f"{self.config.name}:spare-{self.index}" if self.spare else f"{self.config.name}:{self.index}"


def _counter() -> Callable[[], int]:
    return itertools.count(1).__next__


def always() -> bool:
    """A disruption budget that always has room: an instance alone, outside any app (the tests of ``step``)."""
    return True


def never() -> bool:
    """No spare to promote: an app without spares, or an instance alone (the tests of ``step``)."""
    return False


@frozen
class Context:
    app: AppConfig
    now: float
    rng: random.Random
    new_spawn_id: Callable[[], int] = field(default_factory=_counter)  # the core's: ids are unique per core
    fence_at: float | None = None  # a singleton started now must stop by then unless the lease is renewed
    # Whether the app's disruption budget lets a restart the supervisor decides on take this instance
    # down now (asked only when one is due: it counts the app's instances).
    may_disrupt: Callable[[], bool] = always
    # Whether a ready spare of the app could take this instance's slot now (asked only when a
    # restart is due): the restart then promotes it instead of starting a process.
    spare_ready: Callable[[], bool] = never


def step(inst: Instance, event: Input, ctx: Context) -> list[Action]:
    """Apply one input to ``inst`` in place and return what must be done."""
    match inst.state, event:
        case (State.STOPPED | State.BACKOFF | State.FAILED), Launch(manual=manual):
            if manual or inst.state is State.STOPPED:
                inst.breaker.close()
                inst.failures = 0
            if inst.state is not State.STOPPED:
                if manual:
                    inst.operator_restarts += 1  # `start` of one in backoff or failed
                else:
                    inst.restarts += 1
            return _spawn(inst, ctx)
        case (State.STARTING | State.RUNNING), Launch():
            return []
        case State.STOPPING, Launch():
            inst.then_start = True
            return []

        case State.STARTING, Forked(pid=pid):
            inst.pid = pid
            if ctx.app.readiness is Readiness.NONE and ctx.app.ready_after > 0:
                # Ready once it has stayed up ready_after: code that crashes on start fails its
                # `start` or its rollout instead of counting as up (supervisord's startsecs).
                inst.deadline = ctx.now + ctx.app.ready_after
                return []
            if ctx.app.readiness is Readiness.NONE:
                return _become_running(inst, ctx)
            inst.deadline = ctx.now + ctx.app.start_timeout
            return []
        case State.STOPPING, Forked(pid=pid):
            # Halted before the spawn was reported: deliver the stop now.
            inst.pid = pid
            inst.deadline = ctx.now + ctx.app.stop_timeout
            if inst.stop_by is not None:
                inst.deadline = max(ctx.now, min(inst.deadline, inst.stop_by))
            return _stop_signal(inst, ctx)

        case State.STARTING, ForkFailed(error=error, daemon_fault=True) if not inst.retired:
            return _retry_spawn(inst, error, ctx)
        case State.STARTING, ForkFailed(error=error):
            return _after_exit(inst, LastExit(ExitReason.CRASHED, error=error), ctx)
        case State.STOPPING, ForkFailed(error=error):
            return _after_requested_stop(inst, LastExit(inst.stop_reason, error=error), ctx)

        case State.STARTING, BecameReady():
            return _become_running(inst, ctx)
        case (State.RUNNING | State.STOPPING), BecameReady():
            return []

        case (State.STARTING | State.RUNNING), Died(code=code, signal=sig, lost=lost):
            reason = ExitReason.LOST if lost else ExitReason.EXITED if code == 0 else ExitReason.CRASHED
            return _after_exit(inst, LastExit(reason, code, sig), ctx)
        case State.STOPPING, Died(code=code, signal=sig):
            return _after_requested_stop(inst, LastExit(inst.stop_reason, code, sig), ctx)

        case (State.STARTING | State.RUNNING), Halt(reason=reason, then_start=then_start, grace=grace):
            _unhold(inst)
            inst.state = State.STOPPING
            inst.stop_reason = reason
            inst.then_start = then_start
            inst.killed = False
            inst.stop_by = None if grace is None else ctx.now + grace
            if inst.pid is None:
                inst.deadline = None
                return []
            inst.deadline = ctx.now + _grace(ctx.app.stop_timeout, grace)
            return _stop_signal(inst, ctx)
        case State.STOPPING, Halt(reason=reason, then_start=then_start, grace=grace):
            if reason not in FAILURE_REASONS and inst.stop_reason is not ExitReason.FENCED:
                inst.stop_reason = reason  # an operator's stop, or a rollout's, overrides a health restart
            inst.then_start = then_start
            if grace is not None:
                inst.stop_by = ctx.now + grace if inst.stop_by is None else min(inst.stop_by, ctx.now + grace)
                if inst.deadline is not None and not inst.killed:
                    inst.deadline = min(inst.deadline, ctx.now + grace)
            return []
        case (State.STOPPED | State.BACKOFF | State.FAILED), Halt(reason=reason, then_start=then_start):
            inst.deadline = None
            inst.stop_reason = reason
            if then_start and reason is ExitReason.RELOAD and inst.state is not State.STOPPED:
                inst.reloads += 1  # a rollout's restart of one in backoff or failed
                inst.state = State.STOPPED
                return step(inst, Launch(manual=True), ctx)
            if then_start:
                return step(inst, Launch(manual=True), ctx)
            inst.state = State.STOPPED
            return []

        case State.RUNNING, Unheard():
            inst.last_beat = ctx.now  # a full heartbeat_timeout from the moment the loop runs again
            timeout = ctx.app.heartbeat_timeout
            if timeout is not None and inst.deadline is not None:
                inst.deadline = _running_deadline(inst, max(inst.deadline, ctx.now + timeout))
            return []
        case State.STARTING, Unheard(seconds=seconds):
            if inst.deadline is not None:  # a ready message may wait unread: the stall does not count
                inst.deadline += seconds
            return []
        case _, Unheard():
            return []  # stops, backoffs and cooldowns are not judged on what a worker said

        case State.STARTING, TimerFired() if ctx.app.readiness is Readiness.NONE:
            return _become_running(inst, ctx)  # stayed up through ready_after
        case State.STARTING, TimerFired():
            # Not ready within start_timeout: a failed start, taken down gracefully.
            return step(inst, Halt(ExitReason.START_TIMEOUT), ctx)
        case State.RUNNING, TimerFired() if _recycle_due(inst, ctx):
            inst.deadline = _running_deadline(inst, _heartbeat_due(inst, ctx), recycle=False)
            return _disrupt(inst, ExitReason.MAX_AGE, ctx)
        case State.RUNNING, TimerFired() if ctx.app.heartbeat_timeout is not None:
            # Beats only move last_beat; the deadline is re-armed lazily here, so
            # a beat costs no timer work and the check still fires on time.
            due = _heard(inst, ctx) + ctx.app.heartbeat_timeout
            if ctx.now < due:
                inst.deadline = _running_deadline(inst, due)
                _unhold(inst, ExitReason.HUNG)  # it beats again: no longer hung
                return []
            if inst.held is ExitReason.HUNG:  # still silent: it waits on (the group releases it when there is room)
                inst.deadline = _running_deadline(inst, ctx.now + ctx.app.heartbeat_timeout * HELD_RECHECK)
                return []
            return _disrupt(inst, ExitReason.HUNG, ctx)
        case State.RUNNING, TimerFired() if ctx.app.max_age is not None:
            inst.deadline = _running_deadline(inst, None)  # a recycle held or under way: looked at again later
            return []

        case (State.STARTING | State.RUNNING), ProbeFailed(detail=detail):
            first = inst.unhealthy is None
            inst.unhealthy = detail
            if inst.state is State.RUNNING and (first or inst.held is not None):
                return _disrupt(inst, ExitReason.UNHEALTHY, ctx)
            return []
        case _, ProbeFailed(detail=detail):
            inst.unhealthy = detail
            return []
        case _, ProbePassed():
            inst.unhealthy = None
            _unhold(inst, ExitReason.UNHEALTHY)
            return []
        case State.RUNNING, RecycleLater(at=at):
            inst.replace_for = None
            inst.recycle_at = at
            inst.deadline = _running_deadline(inst, _heartbeat_due(inst, ctx))
            return []
        case _, RecycleLater():
            return []

        case State.STOPPING, ReportedDrained():
            if not inst.killed and inst.deadline is not None:
                inst.deadline = min(inst.deadline, ctx.now + DRAINED_GRACE)
            return []
        case _, ReportedDrained():
            return []  # nobody asked: nothing to act on

        case (State.STARTING | State.RUNNING), MemorySampled(processes=count) if (
                count is not None and ctx.app.max_processes is not None and count > ctx.app.max_processes):
            # A fork bomb, or a leak of processes: killed (within the disruption budget).
            _record_sample(inst, event)
            return _disrupt(inst, ExitReason.PROCESSES, ctx)
        case (State.STARTING | State.RUNNING), MemorySampled(rss=rss, processes=count):
            held = inst.held
            _record_sample(inst, event)
            actions = _memory_sampled(inst, rss, count, ctx)
            if held not in (None, ExitReason.HUNG) and inst.held is None and _overdue(inst, ctx):
                return _disrupt(inst, ExitReason.HUNG, ctx)  # back within its limits, but hung meanwhile
            return actions
        case _, MemorySampled():
            _record_sample(inst, event)
            return []
        case State.STOPPING, TimerFired():
            inst.deadline = None
            inst.killed = True
            return _kill(inst)
        case State.BACKOFF, TimerFired():
            inst.restarts += 1
            return _restart(inst, ctx)
        case State.FAILED, TimerFired():
            inst.restarts += 1
            return _restart(inst, ctx)  # the half-open try

        case State.STOPPED, Resumed(pid=pid, was=was) if inst.spawn_id is None:
            if pid is not None:
                return _reattach(inst, pid, event, ctx)
            if was in LIVE_STATES:  # its process died while no daemon watched
                inst.running_since = None if event.running_for is None else ctx.now - event.running_for
                return _after_exit(inst, LastExit(ExitReason.LOST), ctx)
            if was is State.BACKOFF:  # waiting to try again: a fresh delay, where its failures left it
                inst.state = State.BACKOFF
                inst.deadline = ctx.now + backoff_delay(ctx.app.backoff, inst.failures, ctx.rng)
            elif was is State.FAILED:  # its cooldown's start is unknown: the half-open try now
                inst.breaker.trip()
                inst.state, inst.deadline = State.FAILED, ctx.now
            return []

        case (State.STARTING | State.RUNNING), Proceed() if inst.held is not None:
            return _proceed(inst, inst.held, ctx)
        case _, Proceed():
            return []  # nothing held (any more): nothing to do

        case _:
            raise InvalidTransition(f"{inst.name}: {type(event).__name__} in state {inst.state}")


def _grace(stop_timeout: float, grace: float | None) -> float:
    return stop_timeout if grace is None else min(stop_timeout, grace)


def _stop_signal(inst: Instance, ctx: Context) -> list[Action]:
    assert inst.spawn_id is not None
    return [SendDrain(inst.spawn_id), Signal(inst.spawn_id, ctx.app.stop_signal)]


def _kill(inst: Instance) -> list[Action]:
    assert inst.spawn_id is not None
    return [KillTree(inst.spawn_id)]


def record_if_idle(inst: Instance, sample: MemorySampled, app: AppConfig) -> bool:
    """A sample with nothing to decide (the app has no max_memory nor max_processes, no restart is
    held): recorded for `status` without a step, for a pass over every instance every few seconds
    (what ``step`` would do with it, at a fifth of the cost). False: it must go through ``step``."""
    if app.max_memory is not None or app.max_processes is not None or inst.held is not None:
        return False
    _record_sample(inst, sample)
    inst.over_memory = 0
    return True


def _record_sample(inst: Instance, sample: MemorySampled) -> None:
    """What `status` shows of the last pass (a figure a pass left out keeps its last value)."""
    inst.rss = sample.rss
    if sample.processes is not None:
        inst.processes = sample.processes
    if sample.cpu is not None:
        inst.cpu = sample.cpu
    if sample.cpu_seconds is not None:
        inst.cpu_seconds = sample.cpu_seconds


def _memory_sampled(inst: Instance, rss: int, count: int | None, ctx: Context) -> list[Action]:
    """A sample within max_processes: the memory check, confirmed over MEMORY_HYSTERESIS samples."""
    if count is not None:
        _unhold(inst, ExitReason.PROCESSES)  # back within max_processes (the case before did not match)
    limit = ctx.app.max_memory
    if limit is None or rss <= limit:
        inst.over_memory = 0
        _unhold(inst, ExitReason.MEMORY)
        return []
    inst.over_memory += 1
    if inst.over_memory < MEMORY_HYSTERESIS or inst.replace_for is not None:
        return []
    return _disrupt(inst, ExitReason.MEMORY, ctx)


def _overdue(inst: Instance, ctx: Context) -> bool:
    """A running instance silent for heartbeat_timeout: hung."""
    timeout = ctx.app.heartbeat_timeout
    return (inst.state is State.RUNNING and inst.replace_for is None and timeout is not None
            and ctx.now >= _heard(inst, ctx) + timeout)


def _disrupt(inst: Instance, reason: ExitReason, ctx: Context) -> list[Action]:
    """A restart the supervisor decides on (one of DISRUPTIONS): taken now if the app's disruption
    budget has room, else held, the process left running, until the group releases it (``Proceed``)
    or the instance recovers."""
    if not ctx.may_disrupt():
        if inst.held is None or DISRUPTIONS.index(reason) < DISRUPTIONS.index(inst.held):
            inst.held = reason
            inst.held_since = ctx.now if inst.held_since is None else inst.held_since
        if reason is ExitReason.HUNG and ctx.app.heartbeat_timeout is not None:
            inst.deadline = ctx.now + ctx.app.heartbeat_timeout * HELD_RECHECK  # (its due time has passed)
        return []
    if inst.held is not None and DISRUPTIONS.index(inst.held) < DISRUPTIONS.index(reason):
        reason = inst.held  # the most urgent of what is due
    _unhold(inst)
    if reason is not ExitReason.PROCESSES and _spare_at_once(inst, ctx):
        # A ready spare takes the slot now, and this one stops beside it: the group sees
        # replace_for set and promotes the spare (as it would start a successor).
        inst.replace_for = reason
        return []
    match reason:
        case ExitReason.HUNG | ExitReason.UNHEALTHY:
            return step(inst, Halt(reason), ctx)  # it serves nothing (well): no replacement first
        case ExitReason.PROCESSES:
            # No grace: a fork bomb would only grow. The whole tree goes.
            inst.state = State.STOPPING
            inst.stop_reason = ExitReason.PROCESSES
            inst.then_start = False
            inst.killed = True
            inst.deadline = None
            return _kill(inst)
    if reason is ExitReason.MAX_AGE:
        if inst.state is State.RUNNING and not inst.trial and not inst.spare and ctx.app.surge() > 0:
            inst.replace_for = ExitReason.MAX_AGE  # successor first: the recycle takes nothing out of service
            return []
        # One that cannot have a successor beside it (a fixed {port}, a singleton): stopped, then started.
        return step(inst, Halt(ExitReason.MAX_AGE, then_start=True), ctx)
    if ctx.app.listen and inst.state is State.RUNNING and not inst.trial and not inst.spare and not ctx.app.singleton:
        # Start the replacement first (the shared sockets let two serve one slot for a
        # moment): the core sees replace_for set and starts a successor, then stops this.
        inst.replace_for = ExitReason.MEMORY
        return []
    return step(inst, Halt(ExitReason.MEMORY), ctx)


def _spare_at_once(inst: Instance, ctx: Context) -> bool:
    """A restart decided on while the process still runs may promote a spare before this one has
    stopped: unless the instances bind their own {port} (the old one holds it until it exits: the
    spare is promoted then), or the crash-loop breaker would refuse this restart."""
    if inst.spare or inst.trial or inst.state is not State.RUNNING:
        return False
    if ctx.app.port is not None and not ctx.app.listen:
        return False
    return inst.breaker.allows_restart(ctx.app.crash_loop, ctx.now) and ctx.spare_ready()


def _proceed(inst: Instance, reason: ExitReason, ctx: Context) -> list[Action]:
    """The budget has room for the restart `inst` is held for: it goes, unless a hung one beats again.
    One held for memory but hung by now goes as hung: it serves nothing, so no replacement first."""
    if reason in (ExitReason.MEMORY, ExitReason.MAX_AGE) and _overdue(inst, ctx):
        reason = ExitReason.HUNG
    elif reason is ExitReason.HUNG and inst.state is State.RUNNING and not _overdue(inst, ctx):
        _unhold(inst)  # it beats again
        inst.deadline = _running_deadline(inst, _heartbeat_due(inst, ctx))
        return []
    elif reason is ExitReason.UNHEALTHY and inst.unhealthy is None:
        _unhold(inst)  # its probe passes again
        return []
    return _disrupt(inst, reason, ctx)


def _unhold(inst: Instance, reason: ExitReason | None = None) -> None:
    """The restart `inst` was held for (of `reason`, or any) is no longer waiting."""
    if inst.held is not None and (reason is None or inst.held is reason):
        inst.held = inst.held_since = None


def _heartbeat_due(inst: Instance, ctx: Context) -> float | None:
    timeout = ctx.app.heartbeat_timeout
    return None if timeout is None else _heard(inst, ctx) + timeout


def _recycle_due(inst: Instance, ctx: Context) -> bool:
    """max_age has passed, and no recycle (nor any other replacement) is held or under way."""
    return (inst.recycle_at is not None and ctx.now >= inst.recycle_at and inst.replace_for is None
            and inst.held is None and not inst.trial)


def _running_deadline(inst: Instance, due: float | None, recycle: bool = True) -> float | None:
    """A running instance's one timer: its heartbeat check or its recycle, whichever comes first
    (a recycle under way or held is not timed again: ``recycle`` False, or replace_for/held set)."""
    if recycle and inst.recycle_at is not None and inst.replace_for is None and inst.held is None:
        return inst.recycle_at if due is None else min(due, inst.recycle_at)
    return due


def _heard(inst: Instance, ctx: Context) -> float:
    """When the instance last showed it lives: its last beat, or when it became ready."""
    heard = inst.last_beat if inst.last_beat is not None else inst.running_since  # 0.0 is a time too
    return heard if heard is not None else ctx.now


def _retry_spawn(inst: Instance, error: str, ctx: Context) -> list[Action]:
    """The daemon could not start the process for want of its own descriptors: not the worker's
    failure. No backoff step, no crash-loop count, no restart policy: a fixed short wait, then again."""
    inst.last_exit = LastExit(ExitReason.CRASHED, error=error)
    inst.pid = inst.spawn_id = inst.running_since = None
    inst.state = State.BACKOFF
    inst.deadline = ctx.now + DAEMON_FAULT_RETRY
    return []


def _reattach(inst: Instance, pid: int, resumed: Resumed, ctx: Context) -> list[Action]:
    """Watch a live process a previous daemon started, from the state it was in."""
    inst.spawn_id = ctx.new_spawn_id()
    inst.pid = pid
    inst.spawned_at = ctx.now - resumed.age
    if resumed.was is State.STARTING:
        inst.state = State.STARTING
        inst.deadline = ctx.now + ctx.app.start_timeout
    else:  # running; one that was stopping is told to stop again by the core
        inst.state = State.RUNNING
        inst.running_since = ctx.now - (resumed.running_for or 0.0)
        inst.last_beat = ctx.now  # a full heartbeat_timeout to reconnect
        inst.recycle_at = _recycle_time(inst, ctx)
        inst.deadline = _running_deadline(inst, _heartbeat_due(inst, ctx))
    return [Adopt(inst.spawn_id, pid, ctx.app, inst.index, inst.spare)]


def _restart(inst: Instance, ctx: Context) -> list[Action]:
    """A restart the supervisor decided on (paced by backoff and the breaker as always): a ready
    spare takes the slot when there is one, else a new process starts. The instance is left
    stopped with ``wants_spare`` set, and its group promotes the spare in its place."""
    if not inst.spare and not inst.trial and ctx.spare_ready():
        inst.state = State.STOPPED
        inst.deadline = None
        inst.wants_spare = True
        return []
    return _spawn(inst, ctx)


def _spawn(inst: Instance, ctx: Context) -> list[Action]:
    inst.state = State.STARTING
    inst.pid = None
    inst.spawned_at = ctx.now
    inst.running_since = None
    inst.deadline = None
    inst.then_start = False
    inst.killed = False
    inst.last_beat = inst.heard_at = inst.fields = inst.rss = inst.processes = inst.cpu = inst.cpu_seconds = None
    inst.over_memory = 0
    inst.replace_for = None
    inst.stop_by = None
    inst.unhealthy = inst.recycle_at = None
    inst.wants_spare = False
    _unhold(inst)
    inst.spawn_id = ctx.new_spawn_id()
    inst.spawned_fence = inst.fence
    return [Spawn(inst.spawn_id, ctx.app, inst.index, inst.fence, ctx.fence_at if ctx.app.singleton else None,
                  inst.spare)]


def _become_running(inst: Instance, ctx: Context) -> list[Action]:
    inst.state = State.RUNNING
    inst.running_since = ctx.now
    inst.last_beat = ctx.now
    inst.recycle_at = _recycle_time(inst, ctx)
    inst.deadline = _running_deadline(inst, _heartbeat_due(inst, ctx))
    return []


def _recycle_time(inst: Instance, ctx: Context) -> float | None:
    """max_age after its spawn, plus its own share of the jitter: instances started together
    (a whole app at boot, a rollout) are not all recycled in the same minute."""
    if ctx.app.max_age is None:
        return None
    born = inst.spawned_at if inst.spawned_at is not None else ctx.now
    return born + ctx.app.max_age + ctx.rng.uniform(0.0, ctx.app.max_age_jitter)


def _ran_healthy(inst: Instance, ctx: Context) -> bool:
    if inst.running_since is None:
        return False
    return ctx.now - inst.running_since >= ctx.app.backoff.reset_after


def _after_exit(inst: Instance, last_exit: LastExit, ctx: Context) -> list[Action]:
    """The process is gone without being asked to, or a health check took it down."""
    inst.last_exit = last_exit
    inst.pid = None
    _unhold(inst)
    healthy = _ran_healthy(inst, ctx)
    inst.running_since = None
    inst.deadline = None
    inst.spawn_id = None
    if healthy:
        inst.failures = 0
        inst.breaker.close()
    if inst.trial or inst.retired:  # the rollout (or replacement) decides what follows
        inst.state = State.STOPPED
        return []
    if not should_restart(ctx.app.restart, clean_exit=last_exit.reason is ExitReason.EXITED):
        inst.state = State.STOPPED
        return []
    if last_exit.reason in FAILURE_REASONS and last_exit.reason is not ExitReason.MEMORY:
        # A memory restart recycles a worker that was doing its job (a slow
        # leak): no growing backoff, as with PM2's max_memory_restart. It
        # still counts towards the crash-loop breaker, which catches a worker
        # that bloats the moment it starts.
        inst.failures += 1
    if not inst.breaker.allows_restart(ctx.app.crash_loop, ctx.now):
        inst.breaker.trip()
        inst.state = State.FAILED
        inst.deadline = ctx.now + ctx.app.crash_loop.cooldown
        return []
    inst.breaker.record_restart(ctx.now)
    delay = backoff_delay(ctx.app.backoff, inst.failures, ctx.rng)
    if delay <= 0:
        inst.restarts += 1
        return _restart(inst, ctx)
    inst.state = State.BACKOFF
    inst.deadline = ctx.now + delay
    return []


def _count_restart(inst: Instance, reason: ExitReason) -> None:
    """A restart after a stop asked for (``then_start``): counted by who asked."""
    if reason is ExitReason.RELOAD:
        inst.reloads += 1
    elif reason is ExitReason.STOPPED:
        inst.operator_restarts += 1  # `restart`
    else:
        inst.restarts += 1  # the supervisor's own (a fence, ...)


def _after_requested_stop(inst: Instance, last_exit: LastExit, ctx: Context) -> list[Action]:
    """The process is gone after a stop we asked for."""
    inst.last_exit = last_exit
    then_start = inst.then_start and not inst.retired
    if last_exit.reason in FAILURE_REASONS and not inst.retired:  # hung, memory, start-timeout: health restarts
        return _after_exit(inst, last_exit, ctx)
    inst.pid = None
    inst.spawn_id = None
    inst.running_since = None
    inst.deadline = None
    if then_start:
        _count_restart(inst, last_exit.reason)
        return _spawn(inst, ctx)
    inst.state = State.STOPPED
    return []
