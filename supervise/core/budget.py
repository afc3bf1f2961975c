"""An app's disruption budget (``max_unavailable``), mixed into its group.

The restarts the supervisor decides on (hung, memory, max_processes) and a
rollout's stop-first steps may have at most that many slots *disrupted* at
once (see ``disrupted``); the others are held, their processes left running,
and go oldest first as the disrupted slots come back.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

from supervise.core.actions import Action
from supervise.core.groupstate import GroupState
from supervise.core.instance import DISRUPTIONS, ExitReason, Instance, Proceed, State


class DisruptionBudget(GroupState):
    """The budget's share of AppGroup's methods (its state is the group's: ``waiting``)."""

    __slots__ = ()

    def budget(self) -> int:
        """How many slots the restarts the supervisor decides on may have disrupted at once."""
        return self.config.max_unavailable.of(self.target)

    def disrupted(self, index: int) -> bool:
        """Slot `index` counts against the budget: it is wanted, and out of service though it is meant
        to serve, or being replaced beside (a memory restart's replacement first: that still doubles
        the slot's memory and work, and the budget paces them as reload_surge paces a rollout).

        Out of service: its instance is starting (not ready yet), in backoff, failed (a crash loop's
        cooldown), stopping for any reason but an operator's plain stop or a fence, or stopped while
        a rollout replaces it (surge 0) or a singleton waits to start. Not: running, a stop the
        operator asked for, a stop that stays (restart policy), a slot a scale-down takes away.
        A held instance still runs: it is not out of service until its restart goes.
        """
        inst = self.slots.get(index)
        if inst is None or not self.wanted(index):
            return False
        if index in self.successors and self.purposes[index] is not ExitReason.RELOAD:
            return True
        match inst.state:
            case State.RUNNING:
                return False
            case State.STOPPING:
                return inst.then_start or inst.stop_reason not in (ExitReason.STOPPED, ExitReason.FENCED)
            case State.STOPPED:
                r = self.rollout
                return index in self.deferred or (r is not None and r.running and index in r.active)
        return True  # starting, backoff, failed

    def unavailable(self) -> int:
        """How many slots are disrupted now (O(slots): asked only when a restart is due or held)."""
        return sum(1 for index in self.slots if self.disrupted(index))

    def may_disrupt(self, inst: Instance) -> bool:
        """Whether a restart the supervisor decides on may take `inst` down now.

        Free when it takes nothing more out of service: `inst` serves no wanted slot (a new one
        starting beside, an old one retiring, one a scale-down takes away), or its slot is
        disrupted already. Otherwise only while fewer than the budget are disrupted.
        """
        if self.slots.get(inst.index) is not inst or inst.state is not State.RUNNING:
            return True
        if self.config.max_unavailable.unlimited or not self.wanted(inst.index) or self.disrupted(inst.index):
            return True
        return self.unavailable() < self.budget()

    def _budget_for(self, inst: Instance) -> Callable[[], bool]:
        return partial(self.may_disrupt, inst)

    def _hold_changed(self, inst: Instance, before: ExitReason | None) -> Action:
        """Keep the queue of held restarts, and tell the world: held, released (it goes now),
        recovered (no longer due) or dropped (the instance stopped or exited meanwhile)."""
        if before is None:
            self.waiting.append(inst)
            return self._budget_event("held", inst.name, inst.index, inst.held, inst.pid)
        if inst.held is not None:  # held now for a more urgent reason: its place in the queue stays
            return self._budget_event("held", inst.name, inst.index, inst.held, inst.pid)
        if inst in self.waiting:
            self.waiting.remove(inst)
        if inst.replace_for is not None or (inst.state is State.STOPPING and inst.stop_reason in DISRUPTIONS):
            outcome = "released"
        elif inst.state in (State.STARTING, State.RUNNING):
            outcome = "recovered"
        else:
            outcome = "dropped"
        return self._budget_event(outcome, inst.name, inst.index, before, inst.pid)

    def _budget_event(self, event: str, name: str, index: int, reason: ExitReason | None,
                      pid: int | None) -> Action:
        return self.registry.publish({
            "type": "budget", "event": event, "app": self.name, "name": name, "index": index,
            "reason": None if reason is None else str(reason), "pid": pid, "unavailable": self.unavailable(),
            "max_unavailable": self.budget()}, durable=False)

    def _release_held(self, now: float) -> list[Action]:
        """Let held restarts go, oldest first, while the budget has room (each that goes takes a
        unit; one that recovered meanwhile takes none)."""
        actions: list[Action] = []
        room = self.budget() - self.unavailable()
        for inst in list(self.waiting):
            if room <= 0:
                break
            if inst not in self.waiting:
                continue
            actions += self.feed(inst, Proceed(), now)
            if inst.held is not None:
                break  # no room after all (the budget is the instance's own to judge)
            if self.disrupted(inst.index):
                room -= 1
        self.waiting[:] = [i for i in self.waiting if i.held is not None]
        return actions

    def budget_json(self) -> dict[str, object]:
        """The app's budget in `status --json`: its size, what uses it, what waits for it."""
        return {"max_unavailable": self.budget(), "setting": str(self.config.max_unavailable),
                "unavailable": self.unavailable(), "waiting": len(self.waiting)}
