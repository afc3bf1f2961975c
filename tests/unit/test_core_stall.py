"""A stall of the daemon's loop: liveness is judged afresh, nothing else changes (the fake shell)."""

from __future__ import annotations

from fakeshell import FakeShell, app, config

from supervise.config.model import MaxUnavailable, Readiness
from supervise.core.events import DeadlineReached, Stalled


def running(**kw: object) -> FakeShell:
    # No disruption budget: both instances hanging together are both restarted at once here.
    kw.setdefault("max_unavailable", MaxUnavailable(100))
    shell = FakeShell(config(app(instances=2, readiness=Readiness.HEARTBEAT, heartbeat_timeout=1.0, **kw)))
    shell.start()
    shell.ready_all()
    return shell


def test_deadlines_found_late_after_a_stall_hang_nobody() -> None:
    shell = running()
    shell.now += 5.0  # the loop stood still for 5 s: no beat was read
    shell.feed(Stalled(4.0))
    shell.feed(DeadlineReached())
    assert not shell.signalled, "a healthy instance was taken for hung"
    assert [e["seconds"] for e in shell.published("daemon") if e.get("event") == "stalled"] == [4.0]
    shell.advance(1.01)  # still silent a full heartbeat_timeout after the loop ran again: now it is hung
    assert len(shell.signalled) == 2


def test_without_the_stall_the_same_silence_is_a_hang() -> None:
    shell = running()
    shell.now += 5.0
    shell.feed(DeadlineReached())
    assert len(shell.signalled) == 2


def test_a_start_gets_the_stalled_time_back() -> None:
    shell = FakeShell(config(app(instances=1, readiness=Readiness.HEARTBEAT, start_timeout=2.0)))
    shell.start()
    shell.now += 3.0
    shell.feed(Stalled(3.0))
    shell.feed(DeadlineReached())
    assert not shell.signalled, "a ready message may have waited unread: not a failed start"
    shell.advance(2.1)
    assert len(shell.signalled) == 1
