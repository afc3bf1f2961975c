"""What is fed to one instance's state machine (``instance.step``): its inputs, in the past tense
or the imperative, each a small frozen dataclass the ``match`` of ``step`` names.
"""

from __future__ import annotations

from supervise.core.states import ExitReason, State
from supervise.frozen import frozen

__all__ = [
    "BecameReady", "Died", "ForkFailed", "Forked", "Halt", "Input", "Launch", "MemorySampled", "ProbeFailed",
    "ProbePassed", "Proceed", "RecycleLater", "ReportedDrained", "Resumed", "TimerFired", "Unheard",
]


@frozen
class Launch:
    """Bring the slot up. ``manual`` (an operator's start) also closes the breaker."""

    manual: bool = False


@frozen
class Halt:
    """Take the process down gracefully, for ``reason``; ``then_start`` respawns after.

    ``grace`` shortens ``stop_timeout`` (a fence must finish before the lease can expire).
    """

    reason: ExitReason = ExitReason.STOPPED
    then_start: bool = False
    grace: float | None = None


@frozen
class Forked:
    """The process of the spawn asked for exists now."""

    pid: int


@frozen
class ForkFailed:
    """The spawn failed. ``daemon_fault``: for want of the daemon's own file descriptors (or the
    system's), not through anything of the worker's: retried shortly, never counted against it."""

    error: str
    daemon_fault: bool = False


@frozen
class BecameReady:
    pass


@frozen
class Died:
    code: int | None
    signal: int | None
    lost: bool = False  # no exit status: it was adopted (not our child) or died while no daemon watched


@frozen
class TimerFired:
    pass


@frozen
class ReportedDrained:
    """The worker says it has no work in flight: it may be stopped at once."""


@frozen
class MemorySampled:
    """A sampling pass's figures for the instance's whole process tree."""

    rss: int  # bytes: its cgroup's charge or its processes' PSS (not an RSS sum; the status field's name)
    processes: int | None = None  # how many processes that tree has
    cpu: float | None = None  # CPU % of one core since the last pass
    cpu_seconds: float | None = None  # CPU time so far, never decreasing


@frozen
class Resumed:
    """A fresh instance takes over where a previous daemon's left off (adoption).

    ``pid`` set: its process lives on, to be watched from now on. ``pid``
    None: it died while no daemon watched (if it was live), or it was
    waiting (backoff, failed) and tries again now.
    """

    pid: int | None
    was: State
    age: float = 0.0  # seconds since its process was spawned
    running_for: float | None = None


@frozen
class Unheard:
    """The daemon's own loop stood still for ``seconds``: what a worker said meanwhile waits unread, so
    its silence proves nothing. Liveness is judged afresh from now; a start gets the time back."""

    seconds: float


@frozen
class ProbeFailed:
    """Its liveness probe failed `failures` times in a row (``detail``: the last failure)."""

    detail: str


@frozen
class ProbePassed:
    """Its liveness probe passes again."""


@frozen
class RecycleLater:
    """A max-age recycle's successor did not become ready: this one, which works, serves on and
    is tried again at ``at``."""

    at: float


@frozen
class Proceed:
    """The app's disruption budget has room: the restart this instance is held for goes now, if it
    is still due (a held hung instance that beats again is left alone)."""


Input = (Launch | Halt | Forked | ForkFailed | BecameReady | Died | TimerFired | ReportedDrained | MemorySampled
         | Resumed | Unheard | Proceed | ProbeFailed | ProbePassed | RecycleLater)
