"""Rolling replacement as data: what a rollout has left to do, and what a new config changes.

A rollout replaces an app's instances slot by slot: the new generation's
instance starts beside the old one (up to `surge` at once), and only once it
is ready is the old one drained and stopped. With a surge of 0 (instances
that bind their own port) the old one stops first and comes back if its
replacement fails. A replacement that fails to become ready stops the
rollout: the slots not yet replaced keep the old generation, so a broken
release never takes an app down. The core drives these steps; this module
only holds their state and the config diff, both pure.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum

from supervise.config.model import AppConfig
from supervise.core.events import Cause
from supervise.frozen import frozen

PROCESS_FIELDS = ("command", "cwd", "env", "listen", "port", "heartbeat_timeout", "user", "group", "umask", "shell",
                  "readiness")
"""Keys that change what a running process was given (its ids, its umask, its NOTIFY_SOCKET, how
its command is run): changing one rolls the app (env_file's values are part of env).
The others (restart policy, timeouts, limits, watch, ...) apply to running
instances in place."""


class RolloutState(StrEnum):
    RUNNING = "running"
    DONE = "done"  # every slot replaced
    FAILED = "failed"  # a new instance did not become ready: the rest keep the old generation
    CANCELLED = "cancelled"  # an operator's command, a newer rollout or the shutdown came first


@dataclass(slots=True)
class Rollout:
    app: str
    generation: int
    config: AppConfig  # the new generation's
    previous: AppConfig  # restored if the rollout fails, for instances started later
    previous_generation: int
    pending: list[int]  # slots still to replace, in order
    cause: Cause = Cause.RELOAD
    started_at: float = 0.0
    active: set[int] = field(default_factory=set)  # slots being replaced now
    total: int = 0
    replaced: int = 0
    state: RolloutState = RolloutState.RUNNING
    error: str | None = None
    finished_at: float | None = None
    waiting: str | None = None  # "budget": the next stop-first step waits for the app's disruption budget

    def __post_init__(self) -> None:
        self.total = len(self.pending)

    @property
    def surge(self) -> int:
        return self.config.surge()

    @property
    def running(self) -> bool:
        return self.state is RolloutState.RUNNING

    def as_json(self, now: float) -> dict[str, object]:
        end = self.finished_at if self.finished_at is not None else now
        return {"app": self.app, "generation": self.generation, "state": str(self.state),
                "cause": str(self.cause), "replaced": self.replaced, "total": self.total, "error": self.error,
                "duration": round(end - self.started_at, 3),
                **({"waiting": self.waiting} if self.waiting is not None else {})}


class ChangeAction(StrEnum):
    """What a config reload does to one app."""

    START = "start"  # added: start its instances
    STOP = "stop"  # removed: stop them and forget the app
    ROLL = "roll"  # a key its processes were given changed: replace them one by one
    UPDATE = "update"  # other keys changed: apply in place, and scale if the count changed
    UNCHANGED = "unchanged"


@frozen
class Change:
    """One app's part of a config reload."""

    app: str
    action: ChangeAction
    instances: tuple[int, int] | None = None  # (before, after) when the count changes
    fields: tuple[str, ...] = ()  # the keys that differ

    def as_json(self) -> dict[str, object]:
        out: dict[str, object] = {"app": self.app, "action": str(self.action)}
        if self.instances is not None:
            out["instances"] = list(self.instances)
        if self.fields:
            out["fields"] = list(self.fields)
        return out


def diff(old: Mapping[str, AppConfig], new: Mapping[str, AppConfig]) -> list[Change]:
    """What applying `new` over `old` does to each app, in `new`'s order, removed apps last."""
    changes: list[Change] = []
    for name, after in new.items():
        before = old.get(name)
        if before is None:
            changes.append(Change(name, ChangeAction.START, (0, after.instances)))
            continue
        fields = tuple(f.name for f in dataclasses.fields(AppConfig)
                       if f.name not in ("name", "instances") and getattr(before, f.name) != getattr(after, f.name))
        count = (before.instances, after.instances) if before.instances != after.instances else None
        if any(f in PROCESS_FIELDS for f in fields):
            action = ChangeAction.ROLL
        elif fields or count:
            action = ChangeAction.UPDATE
        else:
            action = ChangeAction.UNCHANGED
        changes.append(Change(name, action, count, fields))
    for name, before in old.items():
        if name not in new:
            changes.append(Change(name, ChangeAction.STOP, (before.instances, 0)))
    return changes
