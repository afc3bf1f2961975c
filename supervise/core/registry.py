"""What every app group shares: spawn ids, deadlines, randomness, the census of states.

Every change of an instance's state goes through ``Registry.step``, which
runs the transition function and keeps the books that depend on it: which
spawn id names which instance (exactly the live ones), when each instance's
deadline falls, how many instances are in each state, and the state event
that tells the world.
"""

from __future__ import annotations

import itertools
import random
from collections import Counter
from collections.abc import Callable

from supervise.core.actions import Action, Publish
from supervise.core.instance import Context, Input, Instance, State, always, never, step
from supervise.core.timers import Timers
from supervise.frozen import frozen


@frozen
class RequestTimeout:
    """A command's timeout among the deadlines, kept apart from instances (request ids are small
    integers, and an app may have any name)."""

    request_id: object


@frozen
class FenceDeadline:
    """When this node must fence unless its lease is renewed first (cluster mode)."""


TimerKey = Instance | RequestTimeout | FenceDeadline


class Registry:
    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.timers: Timers[TimerKey] = Timers()
        self.by_spawn: dict[int, Instance] = {}  # spawn id -> its instance, while its process may live
        self.census: Counter[State] = Counter()  # tracked instances per state
        self.durable_change = False  # since the last checkpoint action
        self.listeners_changed = False  # a listen address may have gone out of use
        self.census_changed = True  # since the summary line was last made
        self.fence_at: float | None = None  # cluster: when this node's lease may be lost (singletons stop)
        self._ids = itertools.count(1)

    def new_spawn_id(self) -> int:
        return next(self._ids)

    def track(self, inst: Instance) -> Instance:
        """Count a new instance in (it starts `stopped`)."""
        self.census[inst.state] += 1
        self.census_changed = True
        return inst

    def untrack(self, inst: Instance) -> None:
        """Forget an instance that is gone for good (its process too)."""
        assert inst.spawn_id is None or inst.spawn_id not in self.by_spawn, f"{inst.name} untracked while live"
        self.census[inst.state] -= 1
        self.census_changed = True
        self.timers.set(inst, None)

    def step(self, inst: Instance, event: Input, now: float, may_disrupt: Callable[[], bool] = always,
             spare_ready: Callable[[], bool] = never) -> list[Action]:
        """Apply `event` to `inst` through the transition function, and keep the books.

        `may_disrupt`: whether the app's disruption budget lets a restart decided on take `inst` down now;
        `spare_ready`: whether a ready spare could take its slot instead of a new process.
        """
        before, before_exit, before_sid = inst.state, inst.last_exit, inst.spawn_id
        ctx = Context(inst.config, now, self.rng, self.new_spawn_id, self.fence_at, may_disrupt, spare_ready)
        actions = step(inst, event, ctx)
        if inst.spawn_id != before_sid:
            if before_sid is not None and self.by_spawn.get(before_sid) is inst:
                del self.by_spawn[before_sid]
            if inst.spawn_id is not None:
                self.by_spawn[inst.spawn_id] = inst
        exited = inst.last_exit is not before_exit
        if inst.state is not before or exited:
            self.census[before] -= 1
            self.census[inst.state] += 1
            self.census_changed = True
            if not inst.wants_spare:  # else its group says it with the promotion: the slot runs on
                actions.append(self.publish(_state_event(inst, before, exited)))
        self.timers.set(inst, inst.deadline)
        return actions

    def publish(self, event: dict[str, object], durable: bool = True) -> Publish:
        """An event for the world; `durable`: it changes what a checkpoint records."""
        self.durable_change |= durable
        return Publish(event)

    def live_count(self) -> int:
        """Instances whose process may be alive: each holds exactly one spawn id until its exit.

        O(1), because a drain asks after every exit (a walk of every
        instance made stopping N instances cost O(N^2)).
        """
        return len(self.by_spawn)


def _state_event(inst: Instance, before: State, exited: bool) -> dict[str, object]:
    event: dict[str, object] = {"type": "state", "name": inst.name, "app": inst.app,
                                "index": None if inst.spare else inst.index,
                                "from": str(before), "to": str(inst.state), "pid": inst.pid,
                                "generation": inst.generation}
    if inst.spare:
        event["role"] = "spare"
    if inst.state is State.STOPPING and before is not State.STOPPING:
        event["reason"] = str(inst.stop_reason)  # why it is taken down: hung, memory, reload, stopped, ...
    if exited and inst.last_exit is not None:
        event["exit"] = inst.last_exit.as_json()
    return event
