"""Every transition of one instance's state machine, named test_transition_<from>_to_<to>."""

import itertools
import random
import signal
from pathlib import Path

import pytest

from supervise.config.model import AppConfig, BackoffConfig, CrashLoopConfig, Readiness, Restart
from supervise.core.actions import Adopt, KillTree, SendDrain, Signal, Spawn
from supervise.core.instance import (
    BecameReady,
    Context,
    Died,
    ExitReason,
    Forked,
    ForkFailed,
    Halt,
    Instance,
    InvalidTransition,
    Launch,
    MemorySampled,
    ReportedDrained,
    Resumed,
    State,
    TimerFired,
    step,
)
from supervise.core.policy import backoff_bounds

APP = AppConfig(
    "web", ("x",), Path("/"), stop_timeout=5.0, ready_after=0.0,
    backoff=BackoffConfig(initial=1.0, max=8.0, multiplier=2.0, jitter=0.0, reset_after=60.0),
    crash_loop=CrashLoopConfig(max_restarts=3, window=100.0, cooldown=300.0),
)


class Machine:
    """One instance plus a clock, so each test reads as a history."""

    def __init__(self, app: AppConfig = APP) -> None:
        self.app = app
        self.now = 0.0
        self.inst = Instance(app, 0)
        self.ids = itertools.count(1)

    def __call__(self, event, at: float | None = None):
        if at is not None:
            self.now = at
        return step(self.inst, event, Context(self.app, self.now, random.Random(0), self.ids.__next__))

    def spawned(self) -> list:
        """What a spawn of this instance looks like, with the spawn id it now has."""
        return [Spawn(self.inst.spawn_id, self.app, 0)]

    def stop(self, sig: int = signal.SIGTERM) -> list:
        return [SendDrain(self.inst.spawn_id), Signal(self.inst.spawn_id, sig)]

    def kill(self) -> list:
        return [KillTree(self.inst.spawn_id)]

    def running(self, pid: int = 10, at: float | None = None) -> None:
        self(Launch(), at)
        self(Forked(pid))
        assert self.inst.state is State.RUNNING

    @property
    def state(self) -> State:
        return self.inst.state


def test_transition_stopped_to_starting():
    m = Machine(AppConfig("web", ("x",), Path("/"), readiness=Readiness.HEARTBEAT, start_timeout=7.0))
    assert m(Launch()) == m.spawned()
    assert m.state is State.STARTING
    assert m(Forked(10)) == []
    assert m.state is State.STARTING and m.inst.deadline == 7.0


def test_transition_starting_to_running_without_readiness():
    m = Machine()
    m(Launch())
    m(Forked(10))
    assert m.state is State.RUNNING and m.inst.pid == 10 and m.inst.deadline is None


def test_transition_starting_to_running_on_ready():
    m = Machine(AppConfig("web", ("x",), Path("/"), readiness=Readiness.HEARTBEAT))
    m(Launch())
    m(Forked(10))
    m(BecameReady(), at=1.0)
    assert m.state is State.RUNNING and m.inst.running_since == 1.0


def test_transition_starting_to_stopping_on_start_timeout():
    m = Machine(AppConfig("web", ("x",), Path("/"), readiness=Readiness.HEARTBEAT, start_timeout=7.0))
    m(Launch())
    m(Forked(10))
    assert m(TimerFired(), at=7.0) == m.stop()
    assert m.state is State.STOPPING and m.inst.stop_reason is ExitReason.START_TIMEOUT
    m(Died(None, 15), at=7.1)
    assert m.inst.last_exit.reason is ExitReason.START_TIMEOUT
    assert m.state is State.STARTING  # a failed start is restarted: first restart is immediate


def test_transition_running_to_starting_first_crash_is_immediate():
    m = Machine()
    m.running()
    assert m(Died(1, None), at=5.0) == m.spawned()
    assert m.state is State.STARTING
    assert m.inst.last_exit.reason is ExitReason.CRASHED and m.inst.last_exit.code == 1
    assert m.inst.restarts == 1


def test_transition_running_to_backoff_on_second_crash():
    m = Machine()
    m.running()
    m(Died(None, 9), at=1.0)
    m(Forked(11))
    assert m(Died(None, 9), at=2.0) == []
    assert m.state is State.BACKOFF and m.inst.deadline == 3.0  # initial = 1s
    assert m(TimerFired(), at=3.0) == m.spawned()
    assert m.state is State.STARTING and m.inst.restarts == 2


def test_backoff_grows_geometrically_and_caps():
    m = Machine(AppConfig("web", ("x",), Path("/"), ready_after=0.0, backoff=APP.backoff,
                          crash_loop=CrashLoopConfig(max_restarts=100, window=100.0)))
    m.running()
    delays = []
    for k in range(6):
        t = m.now + 0.5
        m(Died(1, None), at=t)
        if m.state is State.BACKOFF:
            delays.append(m.inst.deadline - t)
            m(TimerFired(), at=m.inst.deadline)
        if m.state is State.FAILED:
            break
        m(Forked(20 + k))
    assert delays == [1.0, 2.0, 4.0, 8.0, 8.0]  # first restart immediate, then x2 up to max


def test_backoff_resets_after_healthy_run():
    m = Machine()
    m.running()
    m(Died(1, None), at=1.0)
    m(Forked(11))
    m(Died(1, None), at=2.0)
    assert m.state is State.BACKOFF
    m(TimerFired(), at=3.0)
    m(Forked(12))
    m(Died(1, None), at=3.0 + 60.0)  # ran reset_after: counts as a first crash again
    assert m.state is State.STARTING and m.inst.failures == 1


def test_transition_running_to_failed_on_crash_loop_then_half_open():
    m = Machine()
    m.running()
    for k in range(3):  # max_restarts = 3 restarts allowed in the window
        m(Died(1, None), at=m.now + 0.1)
        if m.state is State.BACKOFF:
            m(TimerFired(), at=m.inst.deadline)
        assert m.state is State.STARTING
        m(Forked(20 + k))
    m(Died(1, None), at=m.now + 0.1)  # the 4th in the window trips the breaker
    assert m.state is State.FAILED
    assert m.inst.deadline == pytest.approx(m.now + 300.0)
    # Half-open: one try after the cooldown; a quick crash opens the breaker again.
    assert m(TimerFired(), at=m.inst.deadline) == m.spawned()
    m(Forked(30))
    m(Died(1, None), at=m.now + 1.0)
    assert m.state is State.FAILED


def test_half_open_try_that_runs_healthy_closes_the_breaker():
    m = Machine()
    m.inst.breaker.trip()
    m.inst.state = State.FAILED
    m(TimerFired(), at=500.0)
    m(Forked(30))
    m(Died(1, None), at=500.0 + 61.0)
    assert m.state is State.STARTING and not m.inst.breaker.half_open


def test_transition_failed_to_starting_on_manual_start():
    m = Machine()
    m.inst.breaker.trip()
    m.inst.state = State.FAILED
    m.inst.failures = 9
    assert m(Launch(manual=True)) == m.spawned()
    assert m.state is State.STARTING and m.inst.failures == 0 and not m.inst.breaker.half_open


def test_transition_backoff_to_stopped_on_stop():
    m = Machine()
    m.running()
    m(Died(1, None), at=1.0)
    m(Forked(11))
    m(Died(1, None), at=1.5)
    assert m.state is State.BACKOFF
    assert m(Halt()) == []
    assert m.state is State.STOPPED and m.inst.deadline is None


def test_transition_running_to_stopping_to_stopped():
    m = Machine()
    m.running()
    assert m(Halt(), at=1.0) == m.stop()
    assert m.state is State.STOPPING and m.inst.deadline == 6.0
    assert m(Died(0, None), at=2.0) == []
    assert m.state is State.STOPPED and m.inst.last_exit.reason is ExitReason.STOPPED


def test_transition_stopping_kill_after_stop_timeout():
    m = Machine()
    m.running()
    m(Halt(), at=1.0)
    assert m(TimerFired(), at=6.0) == m.kill()
    assert m.state is State.STOPPING and m.inst.killed
    m(Died(None, 9), at=6.01)
    assert m.state is State.STOPPED and m.inst.last_exit.signal == 9


def test_transition_stopping_to_starting_on_restart():
    m = Machine()
    m.running()
    m(Halt(then_start=True), at=1.0)
    assert m(Died(0, None), at=1.5) == m.spawned()
    # An operator's restart is counted apart from the supervisor's recoveries (issue 13).
    assert m.state is State.STARTING and m.inst.restarts == 0 and m.inst.operator_restarts == 1


def test_restarts_count_recoveries_and_reloads_and_operator_restarts_apart():
    m = Machine()
    m.running()
    m(Died(1, None), at=1.0)  # a crash: the first restart is immediate
    assert m.inst.restarts == 1
    m.running()
    m(Halt(ExitReason.RELOAD, then_start=True), at=2.0)
    m(Died(0, None), at=2.5)
    assert (m.inst.restarts, m.inst.reloads, m.inst.operator_restarts) == (1, 1, 0)
    m.running()
    m(Halt(then_start=True), at=3.0)
    m(Died(0, None), at=3.5)
    assert (m.inst.restarts, m.inst.reloads, m.inst.operator_restarts) == (1, 1, 1)


def test_operator_stop_overrides_a_health_restart():
    m = Machine()
    m.running()
    m(Halt(ExitReason.START_TIMEOUT), at=1.0)
    m(Halt(ExitReason.STOPPED))
    m(Died(0, None), at=1.5)
    assert m.state is State.STOPPED


@pytest.mark.parametrize("policy,code,expected", [
    (Restart.ON_FAILURE, 0, State.STOPPED),
    (Restart.ON_FAILURE, 1, State.STARTING),
    (Restart.NEVER, 1, State.STOPPED),
    (Restart.ALWAYS, 0, State.STARTING),
])
def test_transition_running_by_restart_policy(policy, code, expected):
    m = Machine(AppConfig("web", ("x",), Path("/"), restart=policy, ready_after=0.0))
    m.running()
    m(Died(code, None), at=1.0)
    assert m.state is expected
    assert m.inst.last_exit.reason is (ExitReason.EXITED if code == 0 else ExitReason.CRASHED)


def test_transition_starting_spawn_failure_counts_as_crash():
    m = Machine()
    m(Launch())
    m(ForkFailed("command not found: 'nope'"), at=0.0)
    assert m.state is State.STARTING  # immediate first retry
    m(ForkFailed("command not found: 'nope'"), at=0.0)
    assert m.state is State.BACKOFF
    assert m.inst.last_exit.error == "command not found: 'nope'"


def test_halt_before_spawn_reported_stops_on_started():
    m = Machine()
    m(Launch())
    assert m(Halt()) == []
    assert m.state is State.STOPPING
    assert m(Forked(10), at=1.0) == m.stop()
    assert m.inst.deadline == 6.0


@pytest.mark.parametrize("state,event", [
    (State.STOPPED, Died(0, None)),
    (State.STOPPED, Forked(1)),
    (State.BACKOFF, Died(0, None)),
    (State.RUNNING, Forked(1)),
    (State.FAILED, BecameReady()),
    (State.STOPPED, TimerFired()),
    (State.RUNNING, TimerFired()),
])
def test_invalid_transitions_raise(state, event):
    m = Machine()
    m.inst.state = state
    with pytest.raises(InvalidTransition):
        m(event)


@pytest.mark.parametrize("failures", range(1, 12))
def test_backoff_bounds(failures):
    cfg = BackoffConfig(initial=0.1, max=30.0, multiplier=2.0, jitter=0.2)
    low, high = backoff_bounds(cfg, failures)
    if failures == 1:
        assert (low, high) == (0.0, 0.0)
    else:
        base = min(30.0, 0.1 * 2 ** (failures - 2))
        assert low == pytest.approx(base * 0.8) and high == pytest.approx(min(30.0, base * 1.2))


# -- health: readiness, hangs, memory, drain ---------------------------------------

HEALTHY = AppConfig("web", ("x",), Path("/"), readiness=Readiness.HEARTBEAT, start_timeout=5.0,
                    heartbeat_timeout=2.0, max_memory=1000, stop_timeout=5.0)


def test_transition_running_to_stopping_when_hung():
    m = Machine(HEALTHY)
    m(Launch())
    m(Forked(10))
    m(BecameReady(), at=1.0)
    assert m.inst.deadline == 3.0
    m.inst.last_beat = 2.5  # beats only move last_beat
    assert m(TimerFired(), at=3.0) == []  # lazily re-armed
    assert m.inst.deadline == 4.5 and m.state is State.RUNNING
    assert m(TimerFired(), at=4.5) == m.stop()
    assert m.state is State.STOPPING and m.inst.stop_reason is ExitReason.HUNG
    m(Died(None, 15), at=4.6)
    assert m.inst.last_exit.reason is ExitReason.HUNG
    assert m.state is State.STARTING  # restarted, as a failure: the first one at once


def test_running_without_heartbeat_timeout_has_no_deadline():
    m = Machine(AppConfig("web", ("x",), Path("/"), readiness=Readiness.HEARTBEAT))
    m(Launch())
    m(Forked(10))
    m(BecameReady(), at=1.0)
    assert m.inst.deadline is None
    with pytest.raises(InvalidTransition):
        m(TimerFired())


def test_memory_over_limit_needs_consecutive_samples():
    m = Machine(HEALTHY)
    m(Launch())
    m(Forked(10))
    m(BecameReady(), at=1.0)
    assert m(MemorySampled(2000)) == [] and m.inst.over_memory == 1
    assert m(MemorySampled(500)) == [] and m.inst.over_memory == 0  # a spike does not count
    m(MemorySampled(2000))
    m(MemorySampled(2000))
    assert m.state is State.RUNNING and m.inst.rss == 2000
    assert m(MemorySampled(2000), at=2.0) == m.stop()
    assert m.inst.stop_reason is ExitReason.MEMORY
    m(Died(0, None), at=2.1)
    assert m.inst.last_exit.reason is ExitReason.MEMORY and m.state is State.STARTING


def test_reported_drained_shortens_the_stop():
    m = Machine(HEALTHY)
    m(Launch())
    m(Forked(10))
    m(BecameReady(), at=1.0)
    m(Halt(), at=2.0)
    assert m.inst.deadline == 7.0
    m(ReportedDrained(), at=2.1)
    assert m.inst.deadline == pytest.approx(2.6)
    assert m(ReportedDrained(), at=2.2) == []
    assert m(TimerFired(), at=2.6) == m.kill()


def test_drained_while_running_is_ignored():
    m = Machine(HEALTHY)
    m(Launch())
    m(Forked(10))
    m(BecameReady(), at=1.0)
    assert m(ReportedDrained()) == [] and m.state is State.RUNNING


def test_memory_restarts_do_not_grow_the_backoff():
    m = Machine(HEALTHY)
    m(Launch())
    for k in range(3):
        m(Forked(10 + k))
        m(BecameReady(), at=m.now + 1.0)
        for _ in range(3):
            m(MemorySampled(2000))
        m(Died(0, None), at=m.now + 0.1)
        assert m.state is State.STARTING and m.inst.last_exit.reason is ExitReason.MEMORY
    assert m.inst.failures == 0 and m.inst.restarts == 3


# -- adoption: an instance resumed where a previous daemon left it --------------------


def test_transition_stopped_to_running_when_resumed_with_a_live_process():
    m = Machine(HEALTHY)
    m.inst.restarts = 2  # the history the core restores from the record, before the transition
    actions = m(Resumed(4321, State.RUNNING, age=30.0, running_for=20.0), at=100.0)
    assert actions == [Adopt(m.inst.spawn_id, 4321, HEALTHY, 0)]
    assert m.state is State.RUNNING and m.inst.pid == 4321 and m.inst.restarts == 2
    assert m.inst.spawned_at == 70.0 and m.inst.running_since == 80.0
    assert m.inst.deadline == 102.0  # a full heartbeat_timeout to reconnect


def test_transition_stopped_to_starting_when_resumed_while_starting():
    m = Machine(HEALTHY)
    m(Resumed(4321, State.STARTING, age=1.0), at=10.0)
    assert m.state is State.STARTING and m.inst.deadline == 15.0  # start_timeout from now


def test_transition_stopped_to_starting_when_the_process_died_unwatched():
    m = Machine()
    assert m(Resumed(None, State.RUNNING, running_for=5.0), at=10.0) == m.spawned()
    assert m.state is State.STARTING and m.inst.last_exit.reason is ExitReason.LOST
    assert m.inst.failures == 1  # lost counts as a failure


def test_transition_stopped_to_backoff_when_resumed_in_backoff_goes_on_backing_off():
    m = Machine()
    m.inst.failures = 3
    assert m(Resumed(None, State.BACKOFF), at=10.0) == []
    assert m.state is State.BACKOFF and m.inst.deadline == 12.0  # the third failure's delay: 2 x initial
    assert m(TimerFired(), at=12.0) == m.spawned()


def test_transition_stopped_to_failed_when_resumed_failed_is_the_half_open_try():
    m = Machine()
    m.inst.failures = 5
    m(Resumed(None, State.FAILED), at=10.0)
    assert m.state is State.FAILED and m.inst.deadline == 10.0
    m(TimerFired(), at=10.0)
    m(Forked(20))
    m(Died(1, None), at=11.0)
    assert m.state is State.FAILED  # a quick crash of the half-open try opens the breaker again


def test_resumed_twice_is_an_invalid_transition():
    m = Machine()
    m(Resumed(4321, State.RUNNING))
    with pytest.raises(InvalidTransition):
        m(Resumed(4321, State.RUNNING))
