"""One app's instances: its slots, the new ones starting beside them, the old ones stopping.

An app group converges on its instance count and carries out replacements:
rollouts (a new generation, slot by slot) and replace-first restarts (a
memory restart that starts the replacement before it stops the old one).
A replacement is a *successor*: a new instance on trial beside the slot's
serving one; once ready it is promoted into the slot and the old one
*retires* (drained, stopped, then forgotten). A successor that fails before
it is ready is dropped, and a rollout it belonged to fails: the slots not
yet replaced keep the old generation.

The group also keeps the app's disruption budget (budget.py) and its warm
spares (spares.py): each a mixin of methods over the group's own state.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from functools import partial

from supervise.config.model import AppConfig
from supervise.core.actions import Action
from supervise.core.budget import DisruptionBudget
from supervise.core.events import Cause
from supervise.core.instance import (
    LIVE_STATES,
    RECYCLE_RETRY,
    Died,
    ExitReason,
    ForkFailed,
    Halt,
    Input,
    Instance,
    LastExit,
    Launch,
    RecycleLater,
    State,
    never,
)
from supervise.core.registry import Registry
from supervise.core.rollout import Rollout, RolloutState
from supervise.core.spares import SparePool


@dataclass(slots=True, eq=False)
class AppGroup(DisruptionBudget, SparePool):
    config: AppConfig  # what new instances run
    registry: Registry
    target: int = 0
    generation: int = 1  # of the config new instances run
    latest: int = 1  # the highest generation ever started: rollouts count on from here
    slots: dict[int, Instance] = field(default_factory=dict)  # the serving instance of each index
    successors: dict[int, Instance] = field(default_factory=dict)  # new instances, not yet ready
    purposes: dict[int, ExitReason] = field(default_factory=dict)  # why each successor was started
    retiring: list[Instance] = field(default_factory=list)  # replaced, their processes stopping
    rollout: Rollout | None = None  # the running one, or the last one (for status)
    removed: bool = False  # gone from the config: deleted once nothing is left
    abandoned: dict[int, tuple[AppConfig, int]] = field(default_factory=dict)  # failed generation -> what works
    leaving: set[int] = field(default_factory=set)  # slots a scale-down is taking away
    deferred: set[int] = field(default_factory=set)  # singleton slots to start once their other process is gone
    # Cluster apps: the slots the leader placed here (index -> fencing token); None until the
    # first snapshot arrives (what runs, adopted, keeps running). `held`: moved elsewhere, kept
    # running here until the new node has them ready, never started here.
    assigned: dict[int, int] | None = None
    held: frozenset[int] = frozenset()
    waiting: list[Instance] = field(default_factory=list)  # restarts held by the disruption budget, oldest first
    spares: dict[int, Instance] = field(default_factory=dict)  # warm spares by number, 0 .. config.spares - 1
    halted: bool = False  # stopped for good (a shutdown): no spare comes back

    @property
    def name(self) -> str:
        return self.config.name

    def instances(self) -> Iterator[Instance]:
        """Every instance that may have a process: serving, starting beside, or retiring."""
        yield from self.slots.values()
        yield from self.successors.values()
        yield from self.retiring
        yield from self.spares.values()

    @property
    def rolling(self) -> bool:
        return self.rollout is not None and self.rollout.running

    @property
    def busy(self) -> bool:
        """Anything for ``advance`` to do."""
        return bool(self.successors or self.retiring or self.rolling or self.removed or self.deferred
                    or self.waiting or self.spares or self.config.spares)

    def up(self) -> bool:
        """Every slot is there and running (none due a restart the budget holds): apps that depend on
        this one may start."""
        return all(index in self.slots for index in self.wanted_indexes()) and all(
            i.state is State.RUNNING and i.held is None for i in self.slots.values())

    def wanted(self, index: int) -> bool:
        """Slot `index` belongs here: below the count, or (a cluster app) placed or held here."""
        if self.removed:
            return False
        if not self.config.clustered:
            return index < self.target
        if self.assigned is None:
            return index in self.slots
        return index in self.assigned or index in self.held

    def wanted_indexes(self) -> Iterable[int]:
        """The slots to start when missing (a held one is never started here)."""
        if self.removed:
            return ()
        if not self.config.clustered:
            return range(self.target)
        return sorted(self.assigned or ())

    def live(self) -> bool:
        return any(i.state in LIVE_STATES for i in self.instances())

    def new_instance(self, index: int, config: AppConfig | None = None, generation: int | None = None) -> Instance:
        inst = Instance(config or self.config, index, self.generation if generation is None else generation)
        inst.fence = (self.assigned or {}).get(index)
        if inst.fence is None and index in self.slots:  # a held slot: the token it was placed here with
            inst.fence = self.slots[index].fence
        return self.registry.track(inst)

    def new_spare(self, number: int) -> Instance:
        return self.registry.track(Instance(self.config, number, self.generation, spare=True))

    # -- feeding one instance -------------------------------------------------------

    def feed(self, inst: Instance, event: Input, now: float) -> list[Action]:
        if inst.generation in self.abandoned and (inst.spawn_id is None or isinstance(event, Died | ForkFailed)):
            self._leave_abandoned(inst)  # its process is gone (or going): its next start runs what works
        asked_replacement = inst.replace_for is None
        held, before, before_exit, before_pid = inst.held, inst.state, inst.last_exit, inst.pid
        spare_ready = partial(self._spare_ready_for, inst) if self.spares else never
        actions = self.registry.step(inst, event, now, self._budget_for(inst), spare_ready)
        if asked_replacement and inst.replace_for is not None:
            actions += self._replace_first(inst, inst.replace_for, now)
        if inst.held is not held:
            actions.append(self._hold_changed(inst, held))
        if inst.wants_spare:
            actions += self._promote_spare(inst, before, inst.last_exit is not before_exit, before_pid, now)
        elif inst.spare and before is State.STARTING and inst.state is State.RUNNING:
            actions += self._relieve_cold_start(now)
        return actions + self._retire_if_surplus(inst)

    def _leave_abandoned(self, inst: Instance) -> None:
        """An instance of a failed rollout's generation goes back to what works: its next start,
        even the immediate one after a crash, runs that."""
        inst.config, inst.generation = self.abandoned[inst.generation]

    def halt_all(self, now: float) -> list[Action]:
        self.halted = True
        actions: list[Action] = []
        for inst in list(self.instances()):
            actions += self.feed(inst, Halt(ExitReason.STOPPED), now)
        return actions

    # -- convergence, scaling --------------------------------------------------------

    def converge(self, now: float) -> list[Action]:
        """Start the slots missing below the target; stop those above it, highest first.

        A slot a scale-down was taking away comes back when a scale-up reaches it again.
        """
        actions: list[Action] = []
        for index in self.wanted_indexes():
            if index not in self.slots:
                self.slots[index] = self.new_instance(index)
                actions += self.launch(self.slots[index], now)
            elif index in self.leaving:
                self.leaving.discard(index)
                actions += self.launch(self.slots[index], now)
        for index, inst in sorted(self.slots.items(), reverse=True):
            if self.wanted(index):
                continue
            self.leaving.add(index)
            if inst.state is State.STOPPED:
                actions += self._retire_if_surplus(inst)
            else:  # also a stopping one, to cancel a pending restart
                actions += self.feed(inst, Halt(ExitReason.STOPPED), now)
        return actions + self._keep_spares(now)

    def launch(self, inst: Instance, now: float) -> list[Action]:
        """Start `inst`; a singleton's waits until no other process of its slot lives (a rollout's
        new one still stopping, a duplicate found at adoption): never two at once."""
        if self.config.singleton and self._others_live(inst):
            self.deferred.add(inst.index)
            return []
        return self.feed(inst, Launch(), now)

    def operate(self, inst: Instance, event: Launch | Halt, now: float) -> list[Action]:
        """An operator's start, stop or restart; a singleton's start waits for its slot's other process."""
        starts = isinstance(event, Launch) or (event.then_start and inst.state not in LIVE_STATES)
        if starts and self.config.singleton and self._others_live(inst):
            self.deferred.add(inst.index)
            return []
        return self.feed(inst, event, now)

    def _others_live(self, inst: Instance) -> bool:
        return any(other is not inst and other.index == inst.index and other.state in LIVE_STATES
                   for other in self.instances())

    def _launch_deferred(self, now: float) -> list[Action]:
        actions: list[Action] = []
        for index in sorted(self.deferred):
            inst = self.slots.get(index)
            if inst is None or not self.wanted(index):
                self.deferred.discard(index)
            elif not self._others_live(inst):
                self.deferred.discard(index)
                actions += self.feed(inst, Launch(), now)
        return actions

    def _retire_if_surplus(self, inst: Instance) -> list[Action]:
        """A slot above the app's count disappears once its process is gone."""
        if not self.wanted(inst.index) and inst.state is State.STOPPED and self.slots.get(inst.index) is inst:
            del self.slots[inst.index]
            self.leaving.discard(inst.index)
            self.registry.untrack(inst)
            return [self.registry.publish({"type": "removed", "name": inst.name, "app": inst.app,
                                           "index": inst.index})]
        return []

    # -- cluster: what the leader placed here, fencing --------------------------------

    def assign(self, slots: Mapping[int, int], held: frozenset[int], now: float, start: bool = True) -> list[Action]:
        """Run exactly the slots placed here (and keep the held ones): start the new, stop the
        ones moved away. A live singleton whose slot now carries another fencing token was
        placed anew: its process holds a stale token, so it restarts with the new one. Any
        other instance keeps running (what runs, runs on) and takes the new token at its next start."""
        actions: list[Action] = []
        self.assigned, self.held, self.target = dict(slots), held, len(slots)
        for index, token in slots.items():
            for inst in (self.slots.get(index), self.successors.get(index)):
                if inst is None or inst.fence == token:
                    continue
                stale, inst.fence = inst.fence is not None, token
                if stale and inst.state in LIVE_STATES and self.config.singleton:
                    actions += self.feed(inst, Halt(ExitReason.FENCED, then_start=True), now)
        return actions + self.converge(now) if start else actions

    def fence(self, grace: float, now: float) -> list[Action]:
        """This node may have lost its lease: every instance stops, killed after `grace` at most,
        and nothing starts again until a new snapshot is applied."""
        self.assigned, self.held, self.target = {}, frozenset(), 0
        actions = self.cancel_replacements("fenced: this node's lease may be lost", now, relaunch=False)
        for inst in list(self.instances()):
            actions += self.feed(inst, Halt(ExitReason.FENCED, grace=grace), now)
        return actions + self.converge(now)

    # -- replacements ------------------------------------------------------------------

    def _replace_first(self, inst: Instance, reason: ExitReason, now: float) -> list[Action]:
        """Promote a ready spare into `inst`'s slot, or start a successor beside `inst`; `inst`
        stops once the new one serves."""
        if self.slots.get(inst.index) is not inst or inst.index in self.successors:
            return []  # a rollout's successor is already on its way for this slot
        spare = self._ready_spare(inst)
        if spare is not None:
            return self._take_slot(spare, inst, reason, now)
        if reason in (ExitReason.HUNG, ExitReason.UNHEALTHY) or (reason is ExitReason.MEMORY
                                                                 and not inst.config.listen):
            inst.replace_for = None  # asked for a spare that is not there after all: in place, as without one
            return self.feed(inst, Halt(reason), now)
        return self._start_successor(inst.index, inst.config, inst.generation, reason, now)

    def _start_successor(self, index: int, config: AppConfig, generation: int, purpose: ExitReason,
                         now: float) -> list[Action]:
        succ = self.new_instance(index, config, generation)
        succ.trial = True
        self.successors[index] = succ
        self.purposes[index] = purpose
        return self.feed(succ, Launch(), now)

    def advance(self, now: float) -> list[Action]:
        """Promote ready successors, drop failed ones, let a rollout take its next steps."""
        actions: list[Action] = []
        progressed = True
        while progressed:
            progressed = False
            for index, succ in list(self.successors.items()):
                old = self.slots.get(index)
                if not self.wanted(index) or (self.purposes[index] is not ExitReason.RELOAD
                                            and (old is None or old.replace_for is None)):
                    # The slot is being scaled away, or the process that asked for a replacement
                    # is gone already (it crashed and was restarted): nothing left to replace.
                    actions += self._drop_successor(index, now)
                    progressed = True
                elif succ.state is State.RUNNING:
                    actions += self._promote(index, succ, now)
                    progressed = True
                elif succ.state is State.STOPPED:  # failed before it was ready
                    actions += self._successor_failed(index, succ, now)
                    progressed = True
            for old in [i for i in self.retiring if i.state is State.STOPPED]:
                self.retiring.remove(old)
                self.registry.untrack(old)
                heir = None if old.spare else self.slots.get(old.index)
                if heir is not None and heir.last_exit is not None and heir.last_exit.code is None \
                        and heir.last_exit.signal is None and heir.last_exit.reason is old.stop_reason:
                    heir.last_exit = old.last_exit  # now with the code or signal it ended with
            if self.waiting:
                actions += self._release_held(now)
            if self.rolling:
                progressed |= self._step_rollout(now, actions)
        if self.deferred:
            actions += self._launch_deferred(now)
        if self.spares or self.config.spares:
            actions += self._keep_spares(now)
        return actions

    def _promote(self, index: int, succ: Instance, now: float) -> list[Action]:
        del self.successors[index]
        purpose = self.purposes.pop(index)
        succ.trial = False
        old = self.slots.get(index)
        self.slots[index] = succ
        actions: list[Action] = []
        if old is not None:
            succ.restarts, succ.reloads = old.restarts, old.reloads
            succ.operator_restarts = old.operator_restarts
            if purpose is ExitReason.RELOAD:
                succ.reloads += 1  # a rollout's new generation
            else:
                succ.restarts += 1  # a replace-first recovery (memory)
            succ.last_exit = old.last_exit if old.state is State.STOPPED else LastExit(purpose)
            if old.state is State.STOPPED:
                self.registry.untrack(old)
            else:
                old.retired = True
                self.retiring.append(old)
                actions += self.feed(old, Halt(purpose), now)
        r = self.rollout
        if r is not None and r.running and index in r.active:
            r.active.discard(index)
            r.replaced += 1
        actions.append(self.registry.publish({
            "type": "replaced", "name": succ.name, "app": succ.app, "index": index, "generation": succ.generation,
            "pid": succ.pid, "reason": str(purpose), "old_pid": old.pid if old is not None else None}))
        return actions

    def _successor_failed(self, index: int, succ: Instance, now: float) -> list[Action]:
        del self.successors[index]
        purpose = self.purposes.pop(index)
        self.registry.untrack(succ)
        why = f"{succ.name} of generation {succ.generation} did not become ready: " + _exit_text(succ)
        old = self.slots.get(index)
        actions: list[Action] = []
        if purpose is ExitReason.RELOAD:
            r = self.rollout
            if r is not None and r.running and index in r.active:
                r.active.discard(index)
                actions += self.end_rollout(RolloutState.FAILED, why, now)
            if old is not None and old.state is State.STOPPED and old.stop_reason is ExitReason.RELOAD:
                actions += self.feed(old, Launch(), now)  # surge 0: the old one comes back
        elif old is not None and old.replace_for is ExitReason.MAX_AGE and old.state in LIVE_STATES:
            # A recycle whose successor failed: the old one works, so it serves on; tried again later.
            max_age = old.config.max_age or RECYCLE_RETRY
            actions += self.feed(old, RecycleLater(now + min(RECYCLE_RETRY, max_age)), now)
        elif old is not None and old.replace_for is not None and old.state in LIVE_STATES:
            # A replace-first restart whose replacement failed: restart in place instead
            # (unless the process that asked has been replaced meanwhile: replace_for is reset).
            actions += self.feed(old, Halt(purpose), now)
        return actions

    def _drop_successor(self, index: int, now: float) -> list[Action]:
        succ = self.successors.pop(index, None)
        if succ is None:
            return []
        self.purposes.pop(index)
        succ.retired = True
        self.retiring.append(succ)
        old = self.slots.get(index)
        if old is not None:
            old.replace_for = None
        return self.feed(succ, Halt(ExitReason.STOPPED), now)

    # -- rollouts ----------------------------------------------------------------------

    def start_rollout(self, indexes: Iterable[int], config: AppConfig, cause: Cause, now: float) -> list[Action]:
        actions = self.cancel_replacements("superseded by a new rollout", now)
        self.latest += 1
        self.rollout = Rollout(self.name, self.latest, config, self.config, self.generation, sorted(indexes),
                               cause, now)
        self.config, self.generation = config, self.latest
        actions.append(self.registry.publish({"type": "rollout", "app": self.name, "event": "started",
                                              "generation": self.generation, "total": self.rollout.total,
                                              "cause": str(cause)}))
        return actions

    def _step_rollout(self, now: float, actions: list[Action]) -> bool:
        r = self.rollout
        assert r is not None
        progressed = False
        for index in sorted(r.active):  # surge 0: the old one has stopped, start the new one
            old = self.slots.get(index)
            if not self.wanted(index):  # taken away meanwhile (a cluster slot placed elsewhere)
                r.active.discard(index)
                progressed = True
                continue
            if index not in self.successors and (old is None or old.state not in LIVE_STATES):
                actions += self._start_successor(index, r.config, r.generation, ExitReason.RELOAD, now)
                progressed = True
        while len(r.active) < max(r.surge, 1) and r.pending:
            if r.surge == 0 and not self._may_stop_next(r, actions):
                break  # the budget is spent: the next slot waits until one comes back
            index = r.pending.pop(0)
            old = self.slots.get(index)
            if old is None or not self.wanted(index) or index in self.held or old.generation == r.generation:
                continue  # removed by a scale, or already on the new generation
            if old.state is State.STOPPED:  # stopped by the operator: it stays stopped, on the new generation
                old.config, old.generation = r.config, r.generation
                r.replaced += 1
                continue
            r.active.add(index)
            progressed = True
            actions += self._drop_successor(index, now)  # a replace-first one, of the old generation
            if r.surge == 0:  # the old one must be gone first, and not come back from a backoff
                actions += self.feed(old, Halt(ExitReason.RELOAD), now)
            else:
                actions += self._start_successor(index, r.config, r.generation, ExitReason.RELOAD, now)
        if not r.active and not r.pending and not self.retiring:
            actions += self.end_rollout(RolloutState.DONE, None, now)
            progressed = True
        return progressed

    def _may_stop_next(self, r: Rollout, actions: list[Action]) -> bool:
        """A stop-first step (surge 0) takes its slot out of service: it goes if the budget has room,
        or (first) a pending slot that is out of service already, whose replacement loses nothing.
        A wait and its end are published (and shown in the rollout's status)."""
        free = next((i for i in r.pending if not self._serving(i)), None)
        if free is not None:
            r.pending.remove(free)
            r.pending.insert(0, free)
        go = free is not None or self.config.max_unavailable.unlimited or self.unavailable() < self.budget()
        if go != (r.waiting is None):  # starts or ends waiting
            index = r.pending[0]
            r.waiting = None if go else "budget"
            actions.append(self._budget_event("released" if go else "held", f"{self.name}:{index}", index,
                                              ExitReason.RELOAD, None))
        return go

    def _serving(self, index: int) -> bool:
        """Slot `index` serves now, and stopping it would take it out of service."""
        inst = self.slots.get(index)
        return (inst is not None and inst.state is State.RUNNING and self.wanted(index)
                and not self.disrupted(index))

    def end_rollout(self, state: RolloutState, error: str | None, now: float) -> list[Action]:
        r = self.rollout
        assert r is not None
        r.state, r.error, r.finished_at, r.waiting = state, error, now, None
        self.registry.listeners_changed = True  # the old generation's addresses may be unused now
        if state is not RolloutState.DONE:
            # Instances started from now on run the generation that works: the app's new ones,
            # and those of the abandoned generation (a stopped one moved to it, a slot added by a
            # scale during the rollout) when they next start.
            self.config, self.generation = r.previous, r.previous_generation
            self.abandoned[r.generation] = (r.previous, r.previous_generation)
            for inst in self.slots.values():
                if inst.generation in self.abandoned and inst.spawn_id is None:
                    self._leave_abandoned(inst)
        event: dict[str, object] = {"type": "rollout", "app": r.app, "event": str(state),
                                    "generation": r.generation, "replaced": r.replaced, "total": r.total}
        if error:
            event["error"] = error
        return [self.registry.publish(event)]

    def cancel_replacements(self, why: str, now: float, relaunch: bool = True) -> list[Action]:
        """Stop every successor and the rollout, if one runs; old instances stay."""
        actions: list[Action] = []
        r = self.rollout if self.rolling else None
        for index in list(self.successors):
            actions += self._drop_successor(index, now)
        if r is not None:
            for index in sorted(r.active):
                old = self.slots.get(index)
                if (relaunch and old is not None and old.stop_reason is ExitReason.RELOAD
                        and old.state in (State.STOPPING, State.STOPPED)):
                    actions += self.launch(old, now)  # surge 0: bring the old one back
            r.active.clear()
            actions += self.end_rollout(RolloutState.CANCELLED, why, now)
        return actions

    def configs_in_use(self) -> Iterator[AppConfig]:
        """Every config an instance runs or may restart with (the shell keeps their sockets)."""
        yield self.config
        if self.rollout is not None and self.rolling:
            yield self.rollout.previous
        for inst in self.instances():
            yield inst.config


def _exit_text(inst: Instance) -> str:
    return "stopped" if inst.last_exit is None else inst.last_exit.describe()
