"""The supervisor core, sans-IO.

Events arrive in the past tense (a process was spawned, exited, a command
was received, a deadline passed); actions leave in the imperative (spawn,
signal, kill, reply, publish, exit). The core never reads a clock, touches a
process or a socket: ``now`` comes with every event and randomness from an
injected ``random.Random``. That is what lets tests replay thousands of fault
schedules with a fake clock, and keeps policy readable in one place.
"""

from __future__ import annotations

import random
from collections.abc import Iterable
from dataclasses import dataclass, field

from supervise.core import rollout
from supervise.config.model import AppConfig, Config
from supervise.core.events import (  # noqa: F401  (re-exported: the core's public vocabulary)
    Action,
    Adopted,
    Beat,
    CommandReceived,
    DeadlineReached,
    Drained,
    Event,
    Exit,
    Exited,
    KillTree,
    Publish,
    Ready,
    Reply,
    Resample,
    Sampled,
    SendDrain,
    ShutdownRequested,
    Signal,
    Spawn,
    Spawned,
    SpawnFailed,
)
from supervise.core.instance import (
    LIVE_STATES,
    MEMORY_HYSTERESIS,
    BecameReady,
    Context,
    Died,
    Effect,
    ExitReason,
    Halt,
    Input,
    Instance,
    KillProcess,
    LastExit,
    Launch,
    MemorySampled,
    ReplaceFirst,
    ReportedDrained,
    SignalProcess,
    SpawnProcess,
    Started,
    StartFailed,
    State,
    TimerFired,
    step,
)
from supervise.core.instance import (
    SendDrain as SendDrainEffect,
)
from supervise.core.policy import CrashLoopBreaker
from supervise.core.rollout import Rollout
from supervise.core.timers import Timers

Key = tuple[str, int]

MEMORY_RECHECK = 0.1
"""Seconds until the next memory sample while an over-limit reading awaits confirmation."""


@dataclass(slots=True)
class _App:
    config: AppConfig  # what new instances run
    slots: dict[int, Instance] = field(default_factory=dict)  # the serving instance of each index
    target: int = 0
    generation: int = 1  # of the config new instances run
    latest: int = 1  # the highest generation ever started: rollouts count on from here
    successors: dict[int, Instance] = field(default_factory=dict)  # new instances, not yet ready
    purposes: dict[int, ExitReason] = field(default_factory=dict)  # why each successor was started
    retiring: list[Instance] = field(default_factory=list)  # replaced, their processes stopping
    rollout: Rollout | None = None  # the running one, or the last one (for status)
    removed: bool = False  # gone from the config: deleted once nothing is left

    def instances(self) -> Iterable[Instance]:
        """Every instance that may have a process: serving, starting beside, or retiring."""
        yield from self.slots.values()
        yield from self.successors.values()
        yield from self.retiring

    @property
    def rolling(self) -> bool:
        return self.rollout is not None and self.rollout.state == "running"


@dataclass(frozen=True, slots=True)
class _WaiterDeadline:
    """A command's timeout in the timers, kept apart from instance keys (an app
    may well be named "waiter", and request ids are small integers too)."""

    request_id: object


@dataclass(slots=True)
class _Waiter:
    """A command whose reply waits until the instances it touched settle."""

    request_id: object
    verb: str
    keys: frozenset[Key]
    spawn_ids: dict[Key, int | None]  # the spawn each key had when the command came
    app: str | None = None
    generations: dict[str, int] = field(default_factory=dict)  # reload: the rollouts it waits for
    plan: list | None = None  # reload: what it changed


class Core:
    def __init__(self, config: Config, rng: random.Random) -> None:
        self.config = config
        self.rng = rng
        self.apps: dict[str, _App] = {
            name: _App(app, target=app.instances) for name, app in config.apps.items()
        }
        self.shutting_down = False
        self._spawn_ids: dict[int, Instance] = {}
        self._next_spawn_id = 1
        self._timers = Timers()
        self._waiters: dict[object, _Waiter] = {}
        self._exited = False
        self._waiting: set[str] = set()  # apps whose start waits for their dependencies
        self._draining: set[str] = set()  # apps whose shutdown waits for their dependents
        self._adopted: list[tuple[Instance, Input]] = []  # what start() must still feed them

    # -- the public surface -------------------------------------------------------

    def start(self, now: float) -> list[Action]:
        """Bring every app up to its instance count, each after the apps it depends on."""
        self._waiting = set(self.apps)
        actions: list[Action] = [Publish({"type": "daemon", "event": "started"})]
        for inst, event in self._adopted:  # lost ones restart, interrupted stops carry on
            actions += self._feed(self.apps[inst.app], inst, event, now)
        self._adopted.clear()
        return actions + self._follow_dependencies(now) + self._advance_replacements(now)

    def adopt(self, found: Adopted, now: float) -> int | None:
        """Take over an instance a previous daemon started (call before `start`).

        Returns the spawn id its process now goes by (None: it has none). It
        keeps its restart count and uptime; one whose process died meanwhile
        is restarted by `start` with reason `lost`; one that was being
        replaced or stopped when the daemon died is stopped.
        """
        app = self.apps.get(found.app)
        if app is None:
            return None
        app.latest = max(app.latest, found.generation)
        inst = self._new_instance(app, found.index, generation=found.generation)
        inst.restarts = found.restarts
        if found.last_exit:
            e = found.last_exit
            inst.last_exit = LastExit(ExitReason(e["reason"]), e.get("code"), e.get("signal"), e.get("error"))
        if found.role == "slot" and found.index not in app.slots:
            app.slots[found.index] = inst
        elif found.pid is None:
            return None  # an extra instance whose process is gone: nothing to take over
        else:  # a rollout's new or old instance, cut short by the daemon's death
            inst.retired = True
            app.retiring.append(inst)
            self._adopted.append((inst, Halt(ExitReason.STOPPED)))
        state = State(found.state)
        if found.pid is None:
            if state in LIVE_STATES:  # its process died while no daemon watched
                inst.state = State.RUNNING
                inst.running_since = None if found.running_for is None else now - found.running_for
                self._adopted.append((inst, Died(None, None, lost=True)))
            elif state is not State.STOPPED:  # backoff or failed: try again now
                inst.state, inst.deadline = state, now
                self._timers.set(inst, now)
            return None
        sid = self._next_spawn_id
        self._next_spawn_id += 1
        self._spawn_ids[sid] = inst
        inst.spawn_id, inst.pid = sid, found.pid
        inst.spawned_at = now - found.age
        config = inst.config
        if state is State.STARTING:
            inst.state = State.STARTING
            inst.deadline = now + config.start_timeout
        else:
            inst.state = State.RUNNING
            inst.running_since = now - (found.running_for or 0.0)
            inst.last_beat = now  # a full heartbeat_timeout to reconnect
            inst.deadline = None if config.heartbeat_timeout is None else now + config.heartbeat_timeout
            if state is State.STOPPING and not inst.retired:
                self._adopted.append((inst, Halt(ExitReason.STOPPED)))
        self._timers.set(inst, inst.deadline)
        return sid

    def restore(self, name: str, target: int, generation: int, latest: int) -> None:
        """An app's count and generation as a checkpoint recorded them (a `scale` outlives the daemon)."""
        app = self.apps.get(name)
        if app is not None:
            app.target, app.generation, app.latest = target, generation, max(latest, generation, app.latest)

    def config_of(self, spawn_id: int) -> AppConfig | None:
        inst = self._spawn_ids.get(spawn_id)
        return inst.config if inst is not None else None

    def snapshot(self) -> dict:
        """What a checkpoint records: each app's count and generation, and every
        instance with what the shell cannot know (state, restarts, times in loop time)."""
        apps = {name: {"target": app.target, "generation": app.generation, "latest": app.latest}
                for name, app in self.apps.items() if not app.removed}
        instances = []
        for app in self.apps.values():
            roles = [(i, "slot") for i in app.slots.values()]
            roles += [(i, "successor") for i in app.successors.values()] + [(i, "retiring") for i in app.retiring]
            for inst, role in roles:
                if role != "slot" and inst.spawn_id is None:
                    continue
                instances.append({
                    "app": inst.app, "index": inst.index, "generation": inst.generation, "role": role,
                    "state": str(inst.state), "spawn_id": inst.spawn_id, "restarts": inst.restarts,
                    "spawned_at": inst.spawned_at, "running_since": inst.running_since,
                    "last_exit": inst.last_exit.as_json() if inst.last_exit else None,
                })
        return {"apps": apps, "instances": instances}

    def handle(self, event: Event, now: float) -> list[Action]:
        actions: list[Action] = []
        match event:
            case Spawned(spawn_id=sid, pid=pid):
                actions += self._feed_spawn(sid, Started(pid), now)
            case SpawnFailed(spawn_id=sid, error=error):
                actions += self._feed_spawn(sid, StartFailed(error), now, retire=True)
            case Exited(spawn_id=sid, code=code, signal=sig, lost=lost):
                actions += self._feed_spawn(sid, Died(code, sig, lost), now, retire=True)
            case Beat(spawn_id=sid, fields=fields):
                self.beat(sid, fields, now)
            case Ready(spawn_id=sid):
                self.beat(sid, None, now)
                actions += self._feed_spawn(sid, BecameReady(), now)
            case Drained(spawn_id=sid):
                self.beat(sid, None, now)
                actions += self._feed_spawn(sid, ReportedDrained(), now)
            case Sampled(rss=rss, processes=processes):
                actions += self._sampled(rss, processes or {}, now)
            case CommandReceived():
                actions += self._command(event, now)
            case ShutdownRequested():
                actions += self._shutdown(now)
            case DeadlineReached():
                actions += self._deadlines(now)
        if self._waiting or self._draining:
            actions += self._follow_dependencies(now)
        actions += self._advance_replacements(now)
        actions += self._settle_waiters(now)
        if self.shutting_down and not self._exited and self.live_count() == 0:
            self._exited = True
            actions.append(Publish({"type": "daemon", "event": "stopped"}))
            actions.append(Exit(0))
        return actions

    def next_deadline(self) -> float | None:
        return self._timers.next()

    def live_count(self) -> int:
        """Instances whose process may be alive: each holds exactly one spawn id until its exit.

        O(1), because a drain asks after every exit (a walk of every
        instance made stopping N instances cost O(N^2)).
        """
        return len(self._spawn_ids)

    def counts(self) -> dict[str, int]:
        """Instances per state, and `waiting` apps: the daemon's one-line summary."""
        counts = {str(state): 0 for state in State}
        for app in self.apps.values():
            for inst in app.slots.values():
                counts[str(inst.state)] += 1
        counts["waiting"] = len(self._waiting)
        return counts

    def configs_in_use(self) -> list[AppConfig]:
        """Every config an instance runs or may restart with (the shell keeps their sockets)."""
        configs = []
        for app in self.apps.values():
            configs.append(app.config)
            if app.rollout is not None and app.rolling:
                configs.append(app.rollout.previous)
            configs += [i.config for i in app.instances()]
        return configs

    def spawn_id_of(self, inst: Instance) -> int | None:
        return inst.spawn_id

    # -- feeding the state machines -------------------------------------------------

    def beat(self, spawn_id: int, fields: dict | None, now: float) -> None:
        """The hot path (thousands a second): no transition, no timer, no action.

        Equivalent to ``handle(Beat(...))``, which can return nothing: the shell
        calls it directly to skip the event queue for the commonest message.
        """
        inst = self._spawn_ids.get(spawn_id)
        if inst is None:
            return
        inst.last_beat = inst.heard_at = now
        if fields is not None:
            inst.fields = fields

    def _sampled(self, rss: dict[int, int | None], processes: dict[int, int], now: float) -> list[Action]:
        actions: list[Action] = []
        unconfirmed = False
        for sid, value in rss.items():
            inst = self._spawn_ids.get(sid)
            if inst is None or value is None or inst.spawn_id != sid:
                continue
            actions += self._feed(self.apps[inst.app], inst, MemorySampled(value, processes.get(sid)), now)
            unconfirmed |= 0 < inst.over_memory < MEMORY_HYSTERESIS
        if unconfirmed:
            actions.append(Resample(MEMORY_RECHECK))
        return actions

    def _feed(self, app: _App, inst: Instance, event: Input, now: float) -> list[Action]:
        before = inst.state
        before_exit = inst.last_exit
        effects = step(inst, event, Context(inst.config, now, self.rng))
        actions = self._carry_out(app, inst, effects, now)
        exited = inst.last_exit is not before_exit
        if inst.state is not before or exited:
            actions.append(Publish(self._state_event(inst, before, exited)))
        self._timers.set(inst, inst.deadline)
        actions += self._retire_if_surplus(app, inst)
        return actions

    def _feed_spawn(self, spawn_id: int, event: Input, now: float, retire: bool = False) -> list[Action]:
        inst = self._spawn_ids.get(spawn_id)
        if inst is None:
            return []  # an exit or beat from a process we no longer track
        if retire:
            del self._spawn_ids[spawn_id]
        if inst.spawn_id != spawn_id:
            return []
        if retire:
            inst.spawn_id = None
        return self._feed(self.apps[inst.app], inst, event, now)

    def _carry_out(self, app: _App, inst: Instance, effects: Iterable[Effect], now: float) -> list[Action]:
        actions: list[Action] = []
        for effect in effects:
            match effect:
                case SpawnProcess():
                    sid = self._next_spawn_id
                    self._next_spawn_id += 1
                    self._spawn_ids[sid] = inst
                    inst.spawn_id = sid
                    actions.append(Spawn(sid, inst.config, inst.index))
                case SignalProcess(signal=sig):
                    actions.append(Signal(inst.spawn_id, inst.pid, sig))
                case KillProcess():
                    actions.append(KillTree(inst.spawn_id, inst.pid))
                case SendDrainEffect():
                    actions.append(SendDrain(inst.spawn_id))
                case ReplaceFirst(reason=reason):
                    actions += self._replace_first(app, inst, reason, now)
        return actions

    def _state_event(self, inst: Instance, before: State, exited: bool) -> dict:
        event = {"type": "state", "name": inst.name, "app": inst.app, "index": inst.index,
                 "from": str(before), "to": str(inst.state), "pid": inst.pid, "generation": inst.generation}
        if exited and inst.last_exit is not None:
            event["exit"] = inst.last_exit.as_json()
        return event

    # -- convergence, scaling, removal ----------------------------------------------

    def _converge(self, app: _App, now: float) -> list[Action]:
        actions: list[Action] = []
        for index in range(app.target):
            if index not in app.slots:
                app.slots[index] = self._new_instance(app, index)
                actions += self._feed(app, app.slots[index], Launch(), now)
        for index, inst in sorted(app.slots.items(), reverse=True):  # highest indexes first
            if index < app.target:
                continue
            if inst.state is State.STOPPED:
                actions += self._retire_if_surplus(app, inst)
            else:  # also a stopping one, to cancel a pending restart
                actions += self._feed(app, inst, Halt(ExitReason.STOPPED), now)
        return actions

    def _retire_if_surplus(self, app: _App, inst: Instance) -> list[Action]:
        """A slot above the app's count disappears once its process is gone."""
        if inst.index >= app.target and inst.state is State.STOPPED and app.slots.get(inst.index) is inst:
            del app.slots[inst.index]
            self._timers.set(inst, None)
            return [Publish({"type": "removed", "name": inst.name, "app": inst.app, "index": inst.index})]
        return []

    def _new_instance(self, app: _App, index: int, config: AppConfig | None = None,
                      generation: int | None = None) -> Instance:
        config = config or app.config
        return Instance(config.name, index, CrashLoopBreaker(config.crash_loop), config=config,
                        generation=app.generation if generation is None else generation)

    def _deadlines(self, now: float) -> list[Action]:
        actions: list[Action] = []
        for key in self._timers.pop_due(now):
            if isinstance(key, _WaiterDeadline):
                waiter = self._waiters.pop(key.request_id, None)
                if waiter is not None:
                    actions.append(Reply(waiter.request_id, False, error=f"{waiter.verb}: timed out; "
                                         + self._describe(waiter.keys)))
                continue
            app = self.apps.get(key.app)
            if app is not None and key.deadline is not None and key.deadline <= now:
                actions += self._feed(app, key, TimerFired(), now)
        return actions

    def _shutdown(self, now: float) -> list[Action]:
        if self.shutting_down:
            return []
        self.shutting_down = True
        self._waiting.clear()
        self._draining = set(self.apps)
        actions: list[Action] = [Publish({"type": "daemon", "event": "draining"})]
        for app in self.apps.values():
            actions += self._cancel_replacements(app, "the daemon is shutting down", now, relaunch=False)
        return actions + self._follow_dependencies(now)

    # -- replacements: rollouts and replace-first restarts ---------------------------

    def _replace_first(self, app: _App, inst: Instance, reason: ExitReason, now: float) -> list[Action]:
        """Start a successor beside `inst`, which stops once that one is ready."""
        if app.slots.get(inst.index) is not inst or inst.index in app.successors:
            return []  # a rollout's successor is already on its way for this slot
        return self._start_successor(app, inst.index, inst.config, inst.generation, reason, now)

    def _start_successor(self, app: _App, index: int, config: AppConfig, generation: int, purpose: ExitReason,
                         now: float) -> list[Action]:
        succ = self._new_instance(app, index, config, generation)
        succ.trial = True
        app.successors[index] = succ
        app.purposes[index] = purpose
        return self._feed(app, succ, Launch(), now)

    def _advance_replacements(self, now: float) -> list[Action]:
        """Promote ready successors, drop failed ones, let rollouts take their next steps."""
        actions: list[Action] = []
        for name, app in list(self.apps.items()):
            if not (app.successors or app.retiring or app.rolling or app.removed):
                continue
            progressed = True
            while progressed:
                progressed = False
                for index, succ in list(app.successors.items()):
                    old = app.slots.get(index)
                    if app.purposes[index] is not ExitReason.RELOAD and (old is None or not old.replacing):
                        # The process that asked for a replacement is gone already (it
                        # crashed and was restarted): nothing left to replace.
                        actions += self._drop_successor(app, index, now)
                        progressed = True
                    elif succ.state is State.RUNNING:
                        actions += self._promote(app, index, succ, now)
                        progressed = True
                    elif succ.state is State.STOPPED:  # failed before it was ready
                        actions += self._successor_failed(app, index, succ, now)
                        progressed = True
                for old in [i for i in app.retiring if i.state is State.STOPPED]:
                    app.retiring.remove(old)
                    self._timers.set(old, None)
                    heir = app.slots.get(old.index)
                    if heir is not None and heir.last_exit is not None and heir.last_exit.code is None \
                            and heir.last_exit.signal is None and heir.last_exit.reason is old.stop_reason:
                        heir.last_exit = old.last_exit  # now with the code or signal it ended with
                if app.rolling:
                    progressed |= self._step_rollout(app, now, actions)
            if app.removed and not (app.slots or app.successors or app.retiring):
                del self.apps[name]
                actions.append(Publish({"type": "app", "app": name, "event": "removed"}))
        return actions

    def _promote(self, app: _App, index: int, succ: Instance, now: float) -> list[Action]:
        del app.successors[index]
        purpose = app.purposes.pop(index)
        succ.trial = False
        old = app.slots.get(index)
        app.slots[index] = succ
        actions: list[Action] = []
        if old is not None:
            succ.restarts = old.restarts + 1
            succ.last_exit = old.last_exit if old.state is State.STOPPED else LastExit(purpose)
            if old.state is not State.STOPPED:
                old.retired = True
                app.retiring.append(old)
                actions += self._feed(app, old, Halt(purpose), now)
        r = app.rollout
        if r is not None and r.state == "running" and index in r.active:
            r.active.discard(index)
            r.replaced += 1
        actions.append(Publish({"type": "replaced", "name": succ.name, "app": succ.app, "index": index,
                                "generation": succ.generation, "pid": succ.pid, "reason": str(purpose),
                                "old_pid": old.pid if old is not None else None}))
        return actions

    def _successor_failed(self, app: _App, index: int, succ: Instance, now: float) -> list[Action]:
        del app.successors[index]
        purpose = app.purposes.pop(index)
        self._timers.set(succ, None)
        why = f"{succ.name} of generation {succ.generation} did not become ready: " + self._exit_text(succ)
        old = app.slots.get(index)
        actions: list[Action] = []
        if purpose is ExitReason.RELOAD:
            r = app.rollout
            if r is not None and r.state == "running" and index in r.active:
                r.active.discard(index)
                actions += self._end_rollout(app, "failed", why, now)
            if old is not None and old.state is State.STOPPED and old.stop_reason is ExitReason.RELOAD:
                actions += self._feed(app, old, Launch(), now)  # surge 0: the old one comes back
        elif old is not None and old.replacing and old.state in LIVE_STATES:
            # A replace-first restart whose replacement failed: restart in place instead
            # (unless the process that asked has been replaced meanwhile: replacing is reset).
            actions += self._feed(app, old, Halt(purpose), now)
        return actions

    def _drop_successor(self, app: _App, index: int, now: float) -> list[Action]:
        succ = app.successors.pop(index, None)
        if succ is None:
            return []
        app.purposes.pop(index)
        succ.retired = True
        app.retiring.append(succ)
        old = app.slots.get(index)
        if old is not None:
            old.replacing = False
        return self._feed(app, succ, Halt(ExitReason.STOPPED), now)

    def _step_rollout(self, app: _App, now: float, actions: list[Action]) -> bool:
        r = app.rollout
        progressed = False
        for index in sorted(r.active):  # surge 0: the old one has stopped, start the new one
            old = app.slots.get(index)
            if index not in app.successors and (old is None or old.state not in LIVE_STATES):
                actions += self._start_successor(app, index, r.config, r.generation, ExitReason.RELOAD, now)
                progressed = True
        while len(r.active) < max(r.surge, 1) and r.pending:
            index = r.pending.pop(0)
            old = app.slots.get(index)
            if old is None or index >= app.target or old.generation == r.generation:
                continue  # removed by a scale, or already on the new generation
            if old.state is State.STOPPED:  # stopped by the operator: it stays stopped, on the new generation
                old.config, old.generation = r.config, r.generation
                r.replaced += 1
                r.switched.append(index)
                continue
            r.active.add(index)
            progressed = True
            actions += self._drop_successor(app, index, now)  # a replace-first one, of the old generation
            if r.surge == 0 and old.state in LIVE_STATES:
                actions += self._feed(app, old, Halt(ExitReason.RELOAD), now)
            else:
                actions += self._start_successor(app, index, r.config, r.generation, ExitReason.RELOAD, now)
        if not r.active and not r.pending and not app.retiring:
            actions += self._end_rollout(app, "done", None, now)
            progressed = True
        return progressed

    def _start_rollout(self, app: _App, indexes: Iterable[int], config: AppConfig, cause: str,
                       now: float) -> list[Action]:
        actions = self._cancel_replacements(app, "superseded by a new rollout", now)
        app.latest += 1
        app.rollout = Rollout(app.config.name, app.latest, config, app.config, app.generation, sorted(indexes),
                              cause, now)
        app.config, app.generation = config, app.latest
        actions.append(Publish({"type": "rollout", "app": app.config.name, "event": "started",
                                "generation": app.generation, "total": app.rollout.total, "cause": cause}))
        return actions

    def _end_rollout(self, app: _App, state: str, error: str | None, now: float) -> list[Action]:
        r = app.rollout
        r.state, r.error, r.finished_at = state, error, now
        if state != "done":
            # Instances started from now on run the generation that works.
            app.config, app.generation = r.previous, r.previous_generation
            for index in r.switched:
                inst = app.slots.get(index)
                if inst is not None and inst.state is State.STOPPED and inst.generation == r.generation:
                    inst.config, inst.generation = r.previous, r.previous_generation
        event = {"type": "rollout", "app": r.app, "event": state, "generation": r.generation,
                 "replaced": r.replaced, "total": r.total}
        if error:
            event["error"] = error
        return [Publish(event)]

    def _cancel_replacements(self, app: _App, why: str, now: float, relaunch: bool = True) -> list[Action]:
        """Stop every successor of `app` and its rollout, if one runs; old instances stay."""
        actions: list[Action] = []
        r = app.rollout if app.rolling else None
        for index in list(app.successors):
            actions += self._drop_successor(app, index, now)
        if r is not None:
            for index in sorted(r.active):
                old = app.slots.get(index)
                if (relaunch and old is not None and old.stop_reason is ExitReason.RELOAD
                        and old.state in (State.STOPPING, State.STOPPED)):
                    actions += self._feed(app, old, Launch(), now)  # surge 0: bring the old one back
            r.active.clear()
            actions += self._end_rollout(app, "cancelled", why, now)
        return actions

    # -- depends_on: start after, stop before ---------------------------------------

    def _follow_dependencies(self, now: float) -> list[Action]:
        """Start the apps whose dependencies are all running; in a shutdown, stop the
        apps nothing live depends on any more. Repeats until nothing changes."""
        actions: list[Action] = []
        progressed = True
        while progressed:
            progressed = False
            for name, app in self.apps.items():
                if name in self._waiting and all(self._app_up(dep) for dep in app.config.depends_on):
                    self._waiting.discard(name)
                    actions += self._converge(app, now)
                    progressed = True
                if name in self._draining and not any(
                        self._app_live(other) for other, o in self.apps.items() if name in o.config.depends_on):
                    self._draining.discard(name)
                    for inst in list(app.instances()):
                        actions += self._feed(app, inst, Halt(ExitReason.STOPPED), now)
                    progressed = True
        return actions

    def _app_up(self, name: str) -> bool:
        app = self.apps.get(name)
        return app is None or (len(app.slots) >= app.target
                               and all(i.state is State.RUNNING for i in app.slots.values()))

    def _app_live(self, name: str) -> bool:
        return any(i.state in LIVE_STATES for i in self.apps[name].instances())

    # -- commands -------------------------------------------------------------------

    def _resolve(self, targets: tuple[str, ...]) -> list[Key] | str:
        keys: list[Key] = []
        for target in targets:
            app_name, colon, index = target.partition(":")
            app = self.apps.get(app_name)
            if app is None:
                known = ", ".join(self.apps) or "none"
                return f"no app named {app_name!r} (apps: {known})"
            if not colon:
                keys += [(app_name, i) for i in sorted(app.slots)]
            elif index.isascii() and index.isdigit() and int(index) in app.slots:
                keys.append((app_name, int(index)))
            else:
                return f"no instance {target!r} ({app_name} has {app.target}: indexes 0..{app.target - 1})"
        return list(dict.fromkeys(keys))

    def _command(self, cmd: CommandReceived, now: float) -> list[Action]:
        rid = cmd.request_id
        if cmd.verb == "status":
            keys = self._resolve(cmd.targets) if cmd.targets else None
            if isinstance(keys, str):
                return [Reply(rid, False, error=keys, usage=True)]
            return [Reply(rid, True, result=self.status(now, keys))]
        if cmd.verb == "shutdown":
            live = self.live_count()
            return [Reply(rid, True, result={"draining": live})] + self._shutdown(now)
        if self.shutting_down:
            return [Reply(rid, False, error="the daemon is shutting down")]
        match cmd.verb:
            case "start" | "stop" | "restart":
                keys = self._resolve(cmd.targets)
                if isinstance(keys, str):
                    return [Reply(rid, False, error=keys, usage=True)]
                return self._start_stop(cmd, keys, now)
            case "scale":
                return self._scale(cmd, now)
            case "reload" if cmd.config is not None:
                return self._reload_config(cmd, cmd.config, now)
            case "reload":
                return self._reload(cmd, now)
        return [Reply(rid, False, error=f"unknown command {cmd.verb!r}", usage=True)]

    def _reload(self, cmd: CommandReceived, now: float) -> list[Action]:
        """Roll the named apps (or instances) onto a new generation of the same config."""
        if not cmd.targets:
            return [Reply(cmd.request_id, False, error="reload: name an app, or send the config", usage=True)]
        keys = self._resolve(cmd.targets)
        if isinstance(keys, str):
            return [Reply(cmd.request_id, False, error=keys, usage=True)]
        by_app: dict[str, list[int]] = {}
        for name, index in keys:
            by_app.setdefault(name, []).append(index)
        by_app = {name: [i for i in indexes if i < self.apps[name].target] for name, indexes in by_app.items()}
        plan = [{"app": name, "action": "roll", "instances": indexes, "surge": self.apps[name].config.surge()}
                for name, indexes in by_app.items()]
        if cmd.dry_run:
            return [Reply(cmd.request_id, True, result={"plan": plan, "dry_run": True})]
        actions: list[Action] = []
        for name, indexes in by_app.items():
            app = self.apps[name]
            actions += self._start_rollout(app, indexes, app.config, cmd.cause, now)
        if cmd.request_id is not None:
            generations = {name: self.apps[name].generation for name in by_app}
            self._add_waiter(_Waiter(cmd.request_id, "reload", frozenset(), {}, generations=generations,
                                     plan=plan), cmd.timeout, now)
        return actions

    def _reload_config(self, cmd: CommandReceived, config: Config, now: float) -> list[Action]:
        """Apply a re-read config: start added apps, stop removed ones, scale, roll what changed."""
        current = {name: app.config for name, app in self.apps.items() if not app.removed}
        changes = rollout.diff(current, config.apps)
        plan = [c.as_json() for c in changes]
        if cmd.dry_run:
            return [Reply(cmd.request_id, True, result={"plan": plan, "dry_run": True})]
        self.config = config
        actions: list[Action] = [Publish({"type": "config", "event": "reloaded", "path": str(config.path),
                                          "changes": [c for c in plan if c["action"] != "unchanged"]})]
        generations: dict[str, int] = {}
        keys: set[Key] = set()
        for change in changes:
            new = config.apps.get(change.app)
            app = self.apps.get(change.app)
            if change.action == "stop":
                app.removed = True
                actions += self._cancel_replacements(app, "the app was removed from the config", now,
                                                     relaunch=False)
                app.target = 0
                actions += self._converge(app, now)
            elif change.action == "start" and app is None:
                self.apps[change.app] = _App(new, target=new.instances)
                self._waiting.add(change.app)
                keys |= {(change.app, i) for i in range(new.instances)}
            elif change.action == "start":  # removed a moment ago, still stopping: back it comes
                app.removed = False
                actions += self._start_rollout(app, (), new, "config", now)
                app.target = new.instances
                for inst in list(app.slots.values()):
                    actions += self._feed(app, inst, Launch(), now)
                actions += self._converge(app, now)
                keys |= {(change.app, i) for i in range(new.instances)}
            elif change.action == "roll":
                before = set(app.slots)
                actions += self._start_rollout(app, sorted(app.slots), new, "config", now)
                generations[change.app] = app.generation
                if change.instances is not None:
                    app.target = new.instances
                    actions += self._converge(app, now)
                    keys |= {(change.app, i) for i in set(app.slots) - before}
            elif change.action == "update":
                app.config = new
                if app.rollout is not None and app.rolling:
                    app.rollout.config = new  # the roll in flight carries on with the new settings
                for inst in app.instances():
                    inst.config = new
                if change.instances is not None:
                    before = set(app.slots)
                    actions += self._cancel_replacements(app, "cancelled by a change of instances", now)
                    app.target = new.instances
                    actions += self._converge(app, now)
                    keys |= {(change.app, i) for i in set(app.slots) - before}
        if cmd.request_id is not None:
            self._add_waiter(_Waiter(cmd.request_id, "reload", frozenset(keys), {}, generations=generations,
                                     plan=plan), cmd.timeout, now)
        return actions

    def _start_stop(self, cmd: CommandReceived, keys: list[Key], now: float) -> list[Action]:
        event: Input = {
            "start": Launch(manual=True),
            "stop": Halt(ExitReason.STOPPED),
            "restart": Halt(ExitReason.STOPPED, then_start=True),
        }[cmd.verb]
        if cmd.verb != "stop":
            surplus = [f"{a}:{i}" for a, i in keys if i >= self.apps[a].target]
            if surplus and len(cmd.targets) == 1 and ":" in cmd.targets[0]:
                return [Reply(cmd.request_id, False, error=f"{surplus[0]} is being removed by a scale-down")]
            keys = [(a, i) for a, i in keys if i < self.apps[a].target]
        spawn_ids = {key: self.apps[key[0]].slots[key[1]].spawn_id for key in keys}
        actions: list[Action] = []
        for app_name in dict.fromkeys(a for a, _ in keys):  # the operator's word wins over a rollout
            actions += self._cancel_replacements(self.apps[app_name], f"cancelled by {cmd.verb}", now,
                                                 relaunch=cmd.verb != "stop")
        for app_name, index in keys:
            app = self.apps[app_name]
            actions += self._feed(app, app.slots[index], event, now)
        self._add_waiter(_Waiter(cmd.request_id, cmd.verb, frozenset(keys), spawn_ids), cmd.timeout, now)
        return actions

    def _scale(self, cmd: CommandReceived, now: float) -> list[Action]:
        rid = cmd.request_id
        if len(cmd.targets) != 1 or ":" in cmd.targets[0] or cmd.count is None or cmd.count < 0:
            return [Reply(rid, False, error="usage: scale APP N (N >= 0)", usage=True)]
        app = self.apps.get(cmd.targets[0])
        if app is None:
            return [Reply(rid, False, error=f"no app named {cmd.targets[0]!r} (apps: {', '.join(self.apps)})",
                          usage=True)]
        before = set(app.slots)
        actions = self._cancel_replacements(app, "cancelled by scale", now)
        app.target = cmd.count
        actions += self._converge(app, now)
        keys = frozenset((app.config.name, i) for i in set(app.slots) - before)
        self._add_waiter(_Waiter(rid, "scale", keys, {}, app=app.config.name), cmd.timeout, now)
        return actions + [Publish({"type": "scaled", "app": app.config.name, "instances": app.target})]

    def _add_waiter(self, waiter: _Waiter, timeout: float | None, now: float) -> None:
        self._waiters[waiter.request_id] = waiter
        if timeout is not None:
            self._timers.set(_WaiterDeadline(waiter.request_id), now + timeout)

    def _settle_waiters(self, now: float) -> list[Action]:
        actions: list[Action] = []
        for rid, waiter in list(self._waiters.items()):
            verdict = self._verdict(waiter)
            if verdict is None:
                continue
            del self._waiters[rid]
            self._timers.set(_WaiterDeadline(rid), None)
            ok, message = verdict
            result = None
            if ok and waiter.verb == "reload":
                result = {"plan": waiter.plan, "rollouts": [self.apps[n].rollout.as_json(now)
                                                            for n in waiter.generations if n in self.apps]}
            elif ok:
                result = self.status(now, sorted(waiter.keys))
            actions.append(Reply(rid, ok, result=result, error=None if ok else message))
        return actions

    def _verdict(self, waiter: _Waiter) -> tuple[bool, str] | None:
        """(ok, why) once every instance a command touched has settled, else None."""
        insts = [self._slot(key) for key in waiter.keys]
        if waiter.verb == "reload":
            for name, generation in waiter.generations.items():
                app = self.apps.get(name)
                r = app.rollout if app is not None else None
                if r is None or r.generation != generation:
                    return False, f"{name}: the rollout to generation {generation} was superseded"
                if r.state == "running":
                    return None
                if r.state != "done":
                    return False, f"{name}: rollout to generation {generation} {r.state}: {r.error}"
        if waiter.verb == "stop":
            if all(i is None or i.state is State.STOPPED for i in insts):
                return True, ""
            return None
        if waiter.verb == "scale":
            app = self.apps.get(waiter.app)
            if app is not None and any(i >= app.target for i in app.slots):
                return None
        gave_up = [i for i in insts if i is not None and i.state in (State.FAILED, State.STOPPED)]
        if gave_up:
            return False, self._describe(frozenset((i.app, i.index) for i in gave_up))
        for key, inst in zip(waiter.keys, insts):
            if inst is None or inst.state is not State.RUNNING:
                return None
            if waiter.verb == "restart" and inst.spawn_id == waiter.spawn_ids.get(key):
                return None
        return True, ""

    def _slot(self, key: Key) -> Instance | None:
        app = self.apps.get(key[0])
        return app.slots.get(key[1]) if app else None

    @staticmethod
    def _exit_text(inst: Instance) -> str:
        e = inst.last_exit
        if e is None:
            return "stopped"
        detail = e.error or (f"killed by signal {e.signal}" if e.signal else f"exit code {e.code}")
        return f"{e.reason} ({detail})"

    def _describe(self, keys: frozenset[Key]) -> str:
        parts = []
        for key in sorted(keys):
            inst = self._slot(key)
            if inst is None:
                continue
            text = f"{inst.name} is {inst.state}"
            if inst.last_exit is not None:
                e = inst.last_exit
                detail = e.error or (f"signal {e.signal}" if e.signal else f"exit code {e.code}")
                text += f" (last exit: {e.reason}, {detail})"
            parts.append(text)
        return "; ".join(parts)

    # -- status -----------------------------------------------------------------------

    def status(self, now: float, keys: list[Key] | None = None) -> dict:
        wanted = set(keys) if keys is not None else None
        apps = []
        for name, app in self.apps.items():
            rows = []
            for index in sorted(app.slots):
                if wanted is not None and (name, index) not in wanted:
                    continue
                rows.append(self._instance_json(app.slots[index], now))
            if wanted is None or rows:
                entry = {"name": name, "target": app.target, "generation": app.generation, "instances": rows}
                if app.rollout is not None:
                    entry["rollout"] = app.rollout.as_json(now)
                others = [self._instance_json(i, now) for i in (*app.successors.values(), *app.retiring)
                          if wanted is None or (name, i.index) in wanted]
                if others:  # new instances starting beside old ones, old ones draining
                    entry["replacing"] = others
                if name in self._waiting:  # not started yet: its dependencies are not all running
                    entry["waiting_for"] = [d for d in app.config.depends_on if not self._app_up(d)]
                apps.append(entry)
        return {"apps": apps}

    def _instance_json(self, inst: Instance, now: float) -> dict:
        live = inst.state in LIVE_STATES and inst.spawned_at is not None
        return {
            "name": inst.name,
            "index": inst.index,
            "generation": inst.generation,
            "state": str(inst.state),
            "pid": inst.pid,
            "restarts": inst.restarts,
            "uptime": round(now - inst.spawned_at, 3) if live else None,
            "rss": inst.rss if live else None,
            "heartbeat_age": round(now - inst.heard_at, 3) if live and inst.heard_at is not None else None,
            "fields": inst.fields if live else None,
            "last_exit": inst.last_exit.as_json() if inst.last_exit else None,
        }
