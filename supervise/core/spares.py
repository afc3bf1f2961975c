"""An app's warm spares (``spares = N``), mixed into its group.

Spares are instances started and ready but idle, outside the slots. A
restart that is due (after a crash, or one the supervisor decides on)
*promotes* a ready spare of the slot's generation into the slot instead of
starting a process: the spare takes the slot's index and history, is told so
(``PromoteSpare``), and a new spare starts behind it. Backoff and the
crash-loop breaker pace promotions exactly as they pace restarts, since they
are the slot's.
"""

from __future__ import annotations

from supervise.core.actions import Action, PromoteSpare
from supervise.core.groupstate import GroupState
from supervise.core.instance import ExitReason, Halt, Instance, LastExit, Launch, State


class SparePool(GroupState):
    """The spares' share of AppGroup's methods (their state is the group's: ``spares``)."""

    __slots__ = ()

    def _spares_wanted(self) -> int:
        """config.spares while the app runs: not while it waits, is stopped or is going away."""
        if not self.config.spares or self.halted or self.removed:
            return 0
        runs = any(inst.state is not State.STOPPED or inst.then_start or inst.wants_spare
                   for index, inst in self.slots.items() if self.wanted(index))
        return self.config.spares if runs else 0

    def _keep_spares(self, now: float) -> list[Action]:
        """Start the missing spares; retire those beyond the count, and (outside a rollout) those of
        an older generation: a new generation's spares run the new generation."""
        wanted = self._spares_wanted()
        actions: list[Action] = []
        for number, spare in list(self.spares.items()):
            if number < wanted and (spare.generation == self.generation or self.rolling):
                continue
            del self.spares[number]
            if spare.state is State.STOPPED:
                self.registry.untrack(spare)
                continue
            spare.retired = True
            self.retiring.append(spare)
            actions += self.feed(spare, Halt(ExitReason.STOPPED), now)
        for number in range(wanted):
            if number not in self.spares:
                self.spares[number] = spare = self.new_spare(number)
                actions += self.feed(spare, Launch(), now)
        return actions

    def restart_spares(self, now: float) -> list[Action]:
        """An operator's `restart APP`: its spares start afresh too, or they would run the code
        the app ran before (a `reload` replaces them as a new generation)."""
        actions: list[Action] = []
        for spare in list(self.spares.values()):
            actions += self.feed(spare, Halt(ExitReason.STOPPED, then_start=True), now)
        return actions

    def _ready_spare(self, inst: Instance) -> Instance | None:
        """The spare that would take `inst`'s slot now: the lowest-numbered running one of the slot's
        generation. None for anything but a wanted slot's own instance with no successor on the way."""
        if (not self.spares or inst.spare or self.slots.get(inst.index) is not inst or inst.index in self.successors
                or not self.wanted(inst.index)):
            return None
        for number in sorted(self.spares):
            spare = self.spares[number]
            if (spare.state is State.RUNNING and spare.generation == inst.generation and spare.held is None
                    and spare.replace_for is None and not spare.retired):
                return spare
        return None

    def _spare_ready_for(self, inst: Instance) -> bool:
        return self._ready_spare(inst) is not None

    def _promote_spare(self, old: Instance, before: State, exited: bool, old_pid: int | None,
                       now: float) -> list[Action]:
        """`old` is stopped, its restart due and counted (``wants_spare``): a ready spare takes its slot.
        `before`: the slot's state before this step, `exited`: its process (`old_pid`) ended in it (its
        state event was not published: the slot goes from `before` to running in one event that says
        it was a promotion, with the exit if there was one)."""
        old.wants_spare = False
        spare = self._ready_spare(old)
        assert spare is not None, f"{old.name}: a spare was promised and is gone"  # asked in this very step
        return self._take_slot(spare, old, old.last_exit.reason if old.last_exit else ExitReason.CRASHED, now,
                               before, exited, old_pid)

    def _relieve_cold_start(self, now: float) -> list[Action]:
        """A spare just became ready: a slot whose restart found none and is still a cold start (its
        new process not ready yet) takes it now, and that process is stopped. Not a new restart (it
        was counted when the cold start began), and never for an operator's start or a rollout's."""
        for inst in self.slots.values():
            exit_ = inst.last_exit
            if (inst.state is State.STARTING and exit_ is not None
                    and exit_.reason not in (ExitReason.STOPPED, ExitReason.RELOAD, ExitReason.FENCED)):
                spare = self._ready_spare(inst)
                if spare is not None:
                    return self._take_slot(spare, inst, exit_.reason, now, counted=True)
        return []

    def _take_slot(self, spare: Instance, old: Instance, reason: ExitReason, now: float,
                   before: State | None = None, exited: bool = False, old_pid: int | None = None,
                   counted: bool = False) -> list[Action]:
        """Promote `spare` into `old`'s slot. The slot's history goes with it (restarts, the backoff's
        failures, the crash-loop breaker), and it counts as running in the slot from now: a
        promoted spare that crashes at once is the slot crashing again. An `old` still running (hung,
        unhealthy, over its memory, due a recycle; or a cold start the spare relieves: `counted`) is
        retired and stopped beside it."""
        del self.spares[spare.index]
        spare_name, index, before = spare.name, old.index, old.state if before is None else before
        old_pid = old.pid if old_pid is None else old_pid
        spare.spare, spare.index, spare.fence = False, index, old.fence
        spare.restarts, spare.reloads, spare.operator_restarts = old.restarts, old.reloads, old.operator_restarts
        spare.failures, spare.breaker, spare.last_exit = old.failures, old.breaker, old.last_exit
        spare.running_since = now
        self.slots[index] = spare
        actions: list[Action] = [PromoteSpare(spare.spawn_id, spare.config, index)] if spare.spawn_id else []
        if old.state is State.STOPPED:  # its process is gone: the restart was counted already
            self.registry.untrack(old)
        else:
            if not counted:  # a restart decided on while it runs: counted here, as the breaker would count it
                spare.restarts += 1
                spare.breaker.record_restart(now)
                if reason in (ExitReason.HUNG, ExitReason.UNHEALTHY):
                    spare.failures += 1
                spare.last_exit = LastExit(reason)
            old.retired, old.replace_for = True, None
            self.retiring.append(old)
            actions += self.feed(old, Halt(ExitReason.STOPPED if counted else reason), now)
        actions.append(self.registry.publish({
            "type": "promoted", "name": spare.name, "app": self.name, "index": index, "spare": spare_name,
            "pid": spare.pid, "old_pid": old_pid, "reason": str(reason), "generation": spare.generation}))
        # The slot runs again: said as any state change is, for whoever follows the slot by its name
        # (after a crash, in this one event, with the exit: the slot was never seen without a process).
        event: dict[str, object] = {
            "type": "state", "name": spare.name, "app": self.name, "index": index, "from": str(before),
            "to": str(spare.state), "pid": spare.pid, "generation": spare.generation, "promoted": spare_name}
        if exited and old.last_exit is not None:
            event["exit"] = old.last_exit.as_json()
        actions.append(self.registry.publish(event))
        return actions
