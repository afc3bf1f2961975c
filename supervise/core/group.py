"""One app's instances: its slots, the new ones starting beside them, the old ones stopping.

An app group converges on its instance count and carries out replacements:
rollouts (a new generation, slot by slot) and replace-first restarts (a
memory restart that starts the replacement before it stops the old one).
A replacement is a *successor*: a new instance on trial beside the slot's
serving one; once ready it is promoted into the slot and the old one
*retires* (drained, stopped, then forgotten). A successor that fails before
it is ready is dropped, and a rollout it belonged to fails: the slots not
yet replaced keep the old generation.

An app with ``spares`` also keeps that many *warm spares*: instances started
and ready but idle, outside the slots. A restart that is due (after a crash,
or one the supervisor decides on) *promotes* a ready spare of the slot's
generation into the slot instead of starting a process: the spare takes the
slot's index and history, is told so (``PromoteSpare``), and a new spare
starts behind it. Backoff and the crash-loop breaker pace promotions exactly
as they pace restarts, since they are the slot's.

The group also keeps the app's disruption budget (``max_unavailable``): the
restarts the supervisor decides on (hung, memory, max_processes) and a
rollout's stop-first steps may have at most that many slots *disrupted* at
once (see ``disrupted``); the others are held, their processes left running,
and go oldest first as the disrupted slots come back.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from functools import partial

from supervise.config.model import AppConfig
from supervise.core.actions import Action, PromoteSpare
from supervise.core.events import Cause
from supervise.core.instance import (
    DISRUPTIONS,
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
    Proceed,
    RecycleLater,
    State,
    never,
)
from supervise.core.registry import Registry
from supervise.core.rollout import Rollout, RolloutState


@dataclass(slots=True, eq=False)
class AppGroup:
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
        held, before, before_exit = inst.held, inst.state, inst.last_exit
        spare_ready = partial(self._spare_ready_for, inst) if self.spares else never
        actions = self.registry.step(inst, event, now, self._budget_for(inst), spare_ready)
        if asked_replacement and inst.replace_for is not None:
            actions += self._replace_first(inst, inst.replace_for, now)
        if inst.held is not held:
            actions.append(self._hold_changed(inst, held))
        if inst.wants_spare:
            actions += self._promote_spare(inst, before, inst.last_exit is not before_exit, now)
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

    # -- the disruption budget ----------------------------------------------------------

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
        self.waiting = [i for i in self.waiting if i.held is not None]
        return actions

    def budget_json(self) -> dict[str, object]:
        """The app's budget in `status --json`: its size, what uses it, what waits for it."""
        return {"max_unavailable": self.budget(), "setting": str(self.config.max_unavailable),
                "unavailable": self.unavailable(), "waiting": len(self.waiting)}

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

    # -- warm spares -------------------------------------------------------------------

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

    def _promote_spare(self, old: Instance, before: State, exited: bool, now: float) -> list[Action]:
        """`old` is stopped, its restart due and counted (``wants_spare``): a ready spare takes its slot.
        `before`: the slot's state before this step, `exited`: its process ended in it (its state event
        was not published: the slot goes from `before` to running in one event that says it was a
        promotion, with the exit if there was one)."""
        old.wants_spare = False
        spare = self._ready_spare(old)
        assert spare is not None, f"{old.name}: a spare was promised and is gone"  # asked in this very step
        return self._take_slot(spare, old, old.last_exit.reason if old.last_exit else ExitReason.CRASHED, now,
                               before, exited)

    def _take_slot(self, spare: Instance, old: Instance, reason: ExitReason, now: float,
                   before: State | None = None, exited: bool = False) -> list[Action]:
        """Promote `spare` into `old`'s slot. The slot's history goes with it (restarts, the backoff's
        failures, the crash-loop breaker), and it counts as running in the slot from now: a
        promoted spare that crashes at once is the slot crashing again. An `old` still running (hung,
        unhealthy, over its memory, due a recycle) is retired and stopped beside it."""
        del self.spares[spare.index]
        spare_name, index, before = spare.name, old.index, old.state if before is None else before
        spare.spare, spare.index, spare.fence = False, index, old.fence
        spare.restarts, spare.reloads, spare.operator_restarts = old.restarts, old.reloads, old.operator_restarts
        spare.failures, spare.breaker, spare.last_exit = old.failures, old.breaker, old.last_exit
        spare.running_since = now
        self.slots[index] = spare
        actions: list[Action] = [PromoteSpare(spare.spawn_id, spare.config, index)] if spare.spawn_id else []
        if old.state is State.STOPPED:  # its process is gone: the restart was counted already
            self.registry.untrack(old)
        else:  # a restart decided on while it runs: counted here, as the breaker would count it
            spare.restarts += 1
            spare.breaker.record_restart(now)
            if reason in (ExitReason.HUNG, ExitReason.UNHEALTHY):
                spare.failures += 1
            spare.last_exit = LastExit(reason)
            old.retired, old.replace_for = True, None
            self.retiring.append(old)
            actions += self.feed(old, Halt(reason), now)
        actions.append(self.registry.publish({
            "type": "promoted", "name": spare.name, "app": self.name, "index": index, "spare": spare_name,
            "pid": spare.pid, "old_pid": old.pid, "reason": str(reason), "generation": spare.generation}))
        # The slot runs again: said as any state change is, for whoever follows the slot by its name
        # (after a crash, in this one event, with the exit: the slot was never seen without a process).
        event: dict[str, object] = {
            "type": "state", "name": spare.name, "app": self.name, "index": index, "from": str(before),
            "to": str(spare.state), "pid": spare.pid, "generation": spare.generation, "promoted": spare_name}
        if exited and old.last_exit is not None:
            event["exit"] = old.last_exit.as_json()
        actions.append(self.registry.publish(event))
        return actions

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
