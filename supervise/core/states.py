"""An instance's states, the reasons it exits, and how its last exit is told: the words the core,
its views and the checkpoint share.
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import StrEnum

from supervise.frozen import frozen
from supervise.wire.protocol import describe_exit

__all__ = ["FAILURE_REASONS", "LIVE_STATES", "ExitReason", "InvalidTransition", "LastExit", "State"]


class State(StrEnum):
    STARTING = "starting"
    RUNNING = "running"
    STOPPING = "stopping"
    STOPPED = "stopped"
    BACKOFF = "backoff"
    FAILED = "failed"


LIVE_STATES = frozenset({State.STARTING, State.RUNNING, State.STOPPING})
"""States in which a process may exist for the slot."""


class ExitReason(StrEnum):
    CRASHED = "crashed"
    EXITED = "exited"
    HUNG = "hung"
    UNHEALTHY = "unhealthy"  # its liveness probe failed `failures` times in a row
    MEMORY = "memory"
    PROCESSES = "processes"
    START_TIMEOUT = "start-timeout"
    RELOAD = "reload"
    STOPPED = "stopped"
    LOST = "lost"
    FENCED = "fenced"  # a cluster instance whose node lost its lease (or whose slot moved away)
    MAX_AGE = "max-age"  # recycled after max_age (+ jitter), its successor ready first


FAILURE_REASONS = frozenset(
    {ExitReason.CRASHED, ExitReason.HUNG, ExitReason.UNHEALTHY, ExitReason.MEMORY, ExitReason.PROCESSES,
     ExitReason.START_TIMEOUT, ExitReason.LOST}
)
"""Exits that count towards backoff and the crash-loop breaker."""


class InvalidTransition(Exception):
    pass


@frozen
class LastExit:
    reason: ExitReason
    code: int | None = None
    signal: int | None = None
    error: str | None = None  # why a spawn failed, when it did

    def as_json(self) -> dict[str, object]:
        out: dict[str, object] = {"reason": str(self.reason), "code": self.code, "signal": self.signal}
        if self.error:
            out["error"] = self.error
        return out

    @classmethod
    def from_json(cls, data: Mapping[str, object]) -> LastExit:
        """From ``as_json``'s shape (a checkpoint's); ValueError/TypeError for anything else."""
        code, sig, error = data.get("code"), data.get("signal"), data.get("error")
        if not all(v is None or (isinstance(v, int) and not isinstance(v, bool)) for v in (code, sig)):
            raise TypeError(f"exit code and signal must be integers, got {code!r}, {sig!r}")
        return cls(ExitReason(str(data["reason"])), code, sig, None if error is None else str(error))  # type: ignore[arg-type]  # checked above

    def describe(self) -> str:
        """One wording for people, shared with the CLI's table: ``crashed (exit code 1)``."""
        return describe_exit(self.as_json())
