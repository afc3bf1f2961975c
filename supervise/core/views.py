"""Read-only views of the core: `status --json`, the checkpoint's snapshot, the one-line summary.

Nothing here changes state; the shell reads the core only through
:class:`View`, and status replies are built here too.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from typing import NamedTuple

from supervise.core.events import AppRecord, Role
from supervise.core.fleet import Fleet, Key
from supervise.core.instance import LIVE_STATES, Instance, LastExit, State
from supervise.frozen import frozen


def status(fleet: Fleet, now: float, keys: Iterable[Key] | None = None) -> dict[str, object]:
    """`status --json`'s apps (the shell adds its own ``daemon`` section)."""
    wanted = set(keys) if keys is not None else None
    apps = []
    for name, group in fleet.groups.items():
        rows = [instance_json(group.slots[index], now, "active") for index in sorted(group.slots)
                if wanted is None or (name, index) in wanted]
        if wanted is not None and not rows:
            continue
        if group.spares and len(rows) == len(group.slots):  # the whole app: its spares too
            rows += [instance_json(group.spares[n], now, "spare") for n in sorted(group.spares)]
        entry: dict[str, object] = {"name": name, "target": group.target, "generation": group.generation,
                                    "instances": rows, "budget": group.budget_json()}
        if group.rollout is not None:
            entry["rollout"] = group.rollout.as_json(now)
        others = [instance_json(i, now, role)
                  for role, insts in (("new", group.successors.values()), ("old", group.retiring)) for i in insts
                  if wanted is None or (name, i.index) in wanted]
        if others:  # new instances starting beside old ones, old ones draining
            entry["replacing"] = others
        if name in fleet.waiting:  # not started yet: its dependencies are not all up
            entry["waiting_for"] = fleet.waiting_for(name)
        apps.append(entry)
    return {"apps": apps}


def instance_json(inst: Instance, now: float, role: str) -> dict[str, object]:
    live = inst.state in LIVE_STATES and inst.spawned_at is not None
    return {
        "name": inst.name,
        "index": None if inst.spare else inst.index,
        "generation": inst.generation,
        "state": str(inst.state),
        "pid": inst.pid,
        "restarts": inst.restarts,
        "reloads": inst.reloads,
        "operator_restarts": inst.operator_restarts,
        "uptime": round(now - inst.spawned_at, 3) if live and inst.spawned_at is not None else None,
        "rss": inst.rss if live else None,
        "cpu": inst.cpu if live else None,
        "cpu_seconds": inst.cpu_seconds if live else None,
        "processes": inst.processes if live else None,
        "heartbeat_age": round(now - inst.heard_at, 3) if live and inst.heard_at is not None else None,
        "fields": inst.fields if live else None,
        "last_exit": inst.last_exit.as_json() if inst.last_exit else None,
        **({"fencing_token": inst.spawned_fence} if inst.spawned_fence is not None else {}),
        **({"unhealthy": inst.unhealthy} if inst.unhealthy is not None and live else {}),  # liveness failing
        **({"recycle_in": round(inst.recycle_at - now, 3)} if inst.recycle_at is not None and live else {}),
        **_waiting(inst, now),
        "role": role,
    }


def _waiting(inst: Instance, now: float) -> dict[str, object]:
    """A restart decided on that waits for the app's disruption budget: what for, and how long so far."""
    if inst.held is None:
        return {}
    since = inst.held_since if inst.held_since is not None else now
    return {"waiting": "budget", "waiting_reason": str(inst.held), "waiting_age": round(now - since, 3)}


class InstanceSnapshot(NamedTuple):
    """One instance as a checkpoint records it (times in loop time). A tuple, not a dataclass:
    a checkpoint makes one per instance, on the loop, and compares it with the last one to
    reuse the record's JSON (4,900 frozen dataclasses took 10 ms to make and as long again to
    hash). `snapshot` makes them with tuple.__new__, in this field order."""

    app: str
    index: int  # type: ignore[assignment]  # (shadows tuple.index, which nothing here calls)
    generation: int
    role: Role
    state: State
    spawn_id: int | None
    restarts: int
    failures: int  # consecutive failed runs: where backoff stands
    spawned_at: float | None
    running_since: float | None
    last_exit: LastExit | None
    fence: int | None = None  # a cluster instance's fencing token
    reloads: int = 0
    operator_restarts: int = 0


@frozen
class Snapshot:
    """What a checkpoint records of the core: each app's count and generation, every instance."""

    apps: Mapping[str, AppRecord]
    instances: tuple[InstanceSnapshot, ...]


def snapshot(fleet: Fleet) -> Snapshot:
    """What the shell cannot know of itself: each app's count and generation, and every
    instance's state, restarts and times."""
    apps = {name: AppRecord(g.target, g.generation, g.latest) for name, g in fleet.groups.items() if not g.removed}
    instances: list[InstanceSnapshot] = []
    new, add = tuple.__new__, instances.append  # a NamedTuple's own __new__ is a Python call: 3x slower, per instance
    for group in fleet.groups.values():
        for role, members in ((Role.SLOT, group.slots.values()), (Role.SUCCESSOR, group.successors.values()),
                              (Role.RETIRING, group.retiring), (Role.SPARE, group.spares.values())):
            for inst in members:
                if role is not Role.SLOT and inst.spawn_id is None:
                    continue
                add(new(InstanceSnapshot, (inst.app, inst.index, inst.generation, role, inst.state, inst.spawn_id,
                                           inst.restarts, inst.failures, inst.spawned_at, inst.running_since,
                                           inst.last_exit, inst.spawned_fence, inst.reloads, inst.operator_restarts)))
    return Snapshot(apps, tuple(instances))


def summary(census: Counter[State], waiting: int) -> str:
    """The one line a service manager shows (``systemctl status``)."""
    text = (f"{census[State.RUNNING]} running, {census[State.STARTING]} starting, {census[State.BACKOFF]} in backoff, "
            f"{census[State.FAILED]} failed, {census[State.STOPPED]} stopped")
    return text + (f", {waiting} apps waiting for dependencies" if waiting else "")


class View:
    """What the shell may read of the core, and nothing it could change."""

    __slots__ = ("_fleet",)

    def __init__(self, fleet: Fleet) -> None:
        self._fleet = fleet

    @property
    def shutting_down(self) -> bool:
        return self._fleet.shutting_down

    def snapshot(self) -> Snapshot:
        return snapshot(self._fleet)

    def status(self, now: float) -> dict[str, object]:
        return status(self._fleet, now)

    def live_count(self) -> int:
        return self._fleet.registry.live_count()

    def cluster_instances(self) -> list[ClusterInstance]:
        """This node's cluster instances (the serving one of each slot), for its status record in etcd."""
        return [ClusterInstance(i.name, i.app, str(i.state), i.pid, i.spawned_fence, i.restarts)
                for g in self._fleet.groups.values() if g.config.clustered for i in g.slots.values()]


@frozen
class ClusterInstance:
    name: str
    app: str
    state: str
    pid: int | None
    fence: int | None
    restarts: int
