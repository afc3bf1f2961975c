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

from supervise.config import AppConfig, Config
from supervise.events import (  # noqa: F401  (re-exported: the core's public vocabulary)
    Action,
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
from supervise.instance import (
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
    Launch,
    MemorySampled,
    ReportedDrained,
    SignalProcess,
    SpawnProcess,
    Started,
    StartFailed,
    State,
    TimerFired,
    step,
)
from supervise.instance import (
    SendDrain as SendDrainEffect,
)
from supervise.policy import CrashLoopBreaker
from supervise.timers import Timers

Key = tuple[str, int]

MEMORY_RECHECK = 0.1
"""Seconds until the next memory sample while an over-limit reading awaits confirmation."""


@dataclass(slots=True)
class _App:
    config: AppConfig
    slots: dict[int, Instance] = field(default_factory=dict)
    target: int = 0


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


class Core:
    def __init__(self, config: Config, rng: random.Random) -> None:
        self.config = config
        self.rng = rng
        self.apps: dict[str, _App] = {
            name: _App(app, target=app.instances) for name, app in config.apps.items()
        }
        self.shutting_down = False
        self._spawn_ids: dict[int, Key] = {}
        self._current_spawn: dict[Key, int] = {}
        self._next_spawn_id = 1
        self._timers = Timers()
        self._waiters: dict[object, _Waiter] = {}
        self._exited = False
        self._waiting: set[str] = set()  # apps whose start waits for their dependencies
        self._draining: set[str] = set()  # apps whose shutdown waits for their dependents

    # -- the public surface -------------------------------------------------------

    def start(self, now: float) -> list[Action]:
        """Bring every app up to its instance count, each after the apps it depends on."""
        self._waiting = set(self.apps)
        return [Publish({"type": "daemon", "event": "started"})] + self._follow_dependencies(now)

    def handle(self, event: Event, now: float) -> list[Action]:
        actions: list[Action] = []
        match event:
            case Spawned(spawn_id=sid, pid=pid):
                actions += self._feed_spawn(sid, Started(pid), now)
            case SpawnFailed(spawn_id=sid, error=error):
                actions += self._feed_spawn(sid, StartFailed(error), now)
            case Exited(spawn_id=sid, code=code, signal=sig):
                actions += self._feed_spawn(sid, Died(code, sig), now, retire=True)
            case Beat(spawn_id=sid, fields=fields):
                self.beat(sid, fields, now)
            case Ready(spawn_id=sid):
                self.beat(sid, None, now)
                actions += self._feed_spawn(sid, BecameReady(), now)
            case Drained(spawn_id=sid):
                self.beat(sid, None, now)
                actions += self._feed_spawn(sid, ReportedDrained(), now)
            case Sampled(rss=rss):
                actions += self._sampled(rss, now)
            case CommandReceived():
                actions += self._command(event, now)
            case ShutdownRequested():
                actions += self._shutdown(now)
            case DeadlineReached():
                actions += self._deadlines(now)
        if self._waiting or self._draining:
            actions += self._follow_dependencies(now)
        actions += self._settle_waiters(now)
        if self.shutting_down and not self._exited and self.live_count() == 0:
            self._exited = True
            actions.append(Publish({"type": "daemon", "event": "stopped"}))
            actions.append(Exit(0))
        return actions

    def next_deadline(self) -> float | None:
        return self._timers.next()

    def live_count(self) -> int:
        return sum(1 for app in self.apps.values() for i in app.slots.values() if i.state in LIVE_STATES)

    def spawn_id_of(self, inst: Instance) -> int | None:
        return self._current_spawn.get((inst.app, inst.index))

    # -- feeding the state machines -------------------------------------------------

    def beat(self, spawn_id: int, fields: dict | None, now: float) -> None:
        """The hot path (thousands a second): no transition, no timer, no action.

        Equivalent to ``handle(Beat(...))``, which can return nothing: the shell
        calls it directly to skip the event queue for the commonest message.
        """
        key = self._spawn_ids.get(spawn_id)
        if key is None:
            return
        inst = self.apps[key[0]].slots[key[1]]
        inst.last_beat = inst.heard_at = now
        if fields is not None:
            inst.fields = fields

    def _sampled(self, rss: dict[int, int | None], now: float) -> list[Action]:
        actions: list[Action] = []
        unconfirmed = False
        for sid, value in rss.items():
            key = self._spawn_ids.get(sid)
            if key is None or value is None or self._current_spawn.get(key) != sid:
                continue
            app = self.apps[key[0]]
            inst = app.slots[key[1]]
            actions += self._feed(app, inst, MemorySampled(value), now)
            unconfirmed |= 0 < inst.over_memory < MEMORY_HYSTERESIS
        if unconfirmed:
            actions.append(Resample(MEMORY_RECHECK))
        return actions

    def _feed(self, app: _App, inst: Instance, event: Input, now: float) -> list[Action]:
        before = inst.state
        before_exit = inst.last_exit
        effects = step(inst, event, Context(app.config, now, self.rng))
        key = (inst.app, inst.index)
        actions = self._carry_out(app, inst, effects)
        exited = inst.last_exit is not before_exit
        if inst.state is not before or exited:
            actions.append(Publish(self._state_event(inst, before, exited)))
        self._timers.set(key, inst.deadline)
        actions += self._retire_if_surplus(app, inst)
        return actions

    def _feed_spawn(self, spawn_id: int, event: Input, now: float, retire: bool = False) -> list[Action]:
        key = self._spawn_ids.get(spawn_id)
        if key is None:
            return []  # an exit or beat from a process we no longer track
        if retire:
            del self._spawn_ids[spawn_id]
        if self._current_spawn.get(key) != spawn_id:
            return []
        if retire:
            del self._current_spawn[key]
        app = self.apps[key[0]]
        return self._feed(app, app.slots[key[1]], event, now)

    def _carry_out(self, app: _App, inst: Instance, effects: Iterable[Effect]) -> list[Action]:
        key = (inst.app, inst.index)
        actions: list[Action] = []
        for effect in effects:
            match effect:
                case SpawnProcess():
                    sid = self._next_spawn_id
                    self._next_spawn_id += 1
                    self._spawn_ids[sid] = key
                    self._current_spawn[key] = sid
                    actions.append(Spawn(sid, app.config, inst.index))
                case SignalProcess(signal=sig):
                    actions.append(Signal(self._current_spawn[key], inst.pid, sig))
                case KillProcess():
                    actions.append(KillTree(self._current_spawn[key], inst.pid))
                case SendDrainEffect():
                    actions.append(SendDrain(self._current_spawn[key]))
        return actions

    def _state_event(self, inst: Instance, before: State, exited: bool) -> dict:
        event = {"type": "state", "name": inst.name, "app": inst.app, "index": inst.index,
                 "from": str(before), "to": str(inst.state), "pid": inst.pid}
        if exited and inst.last_exit is not None:
            event["exit"] = inst.last_exit.as_json()
        return event

    # -- convergence, scaling, removal ----------------------------------------------

    def _converge(self, app: _App, now: float) -> list[Action]:
        actions: list[Action] = []
        for index in range(app.target):
            if index not in app.slots:
                app.slots[index] = Instance(app.config.name, index, CrashLoopBreaker(app.config.crash_loop))
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
        if inst.index >= app.target and inst.state is State.STOPPED:
            del app.slots[inst.index]
            self._timers.set((inst.app, inst.index), None)
            return [Publish({"type": "removed", "name": inst.name, "app": inst.app, "index": inst.index})]
        return []

    def _deadlines(self, now: float) -> list[Action]:
        actions: list[Action] = []
        for key in self._timers.pop_due(now):
            if isinstance(key, _WaiterDeadline):
                waiter = self._waiters.pop(key.request_id, None)
                if waiter is not None:
                    actions.append(Reply(waiter.request_id, False, error=f"{waiter.verb}: timed out; "
                                         + self._describe(waiter.keys)))
                continue
            app = self.apps.get(key[0])
            inst = app.slots.get(key[1]) if app else None
            if inst is not None and inst.deadline is not None and inst.deadline <= now:
                actions += self._feed(app, inst, TimerFired(), now)
        return actions

    def _shutdown(self, now: float) -> list[Action]:
        if self.shutting_down:
            return []
        self.shutting_down = True
        self._waiting.clear()
        self._draining = set(self.apps)
        return [Publish({"type": "daemon", "event": "draining"})] + self._follow_dependencies(now)

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
                    for inst in list(app.slots.values()):
                        actions += self._feed(app, inst, Halt(ExitReason.STOPPED), now)
                    progressed = True
        return actions

    def _app_up(self, name: str) -> bool:
        app = self.apps.get(name)
        return app is None or (len(app.slots) >= app.target
                               and all(i.state is State.RUNNING for i in app.slots.values()))

    def _app_live(self, name: str) -> bool:
        return any(i.state in LIVE_STATES for i in self.apps[name].slots.values())

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
            elif index.isdigit() and int(index) in app.slots:
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
        return [Reply(rid, False, error=f"unknown command {cmd.verb!r}", usage=True)]

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
        spawn_ids = {key: self._current_spawn.get(key) for key in keys}
        actions: list[Action] = []
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
        app.target = cmd.count
        actions = self._converge(app, now)
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
            actions.append(Reply(rid, ok, result=self.status(now, sorted(waiter.keys)) if ok else None,
                                 error=None if ok else message))
        return actions

    def _verdict(self, waiter: _Waiter) -> tuple[bool, str] | None:
        """(ok, why) once every instance a command touched has settled, else None."""
        insts = [self._slot(key) for key in waiter.keys]
        if waiter.verb == "stop":
            if all(i is None or i.state is State.STOPPED for i in insts):
                return True, ""
            return None
        if waiter.verb == "scale":
            app = self.apps[waiter.app]
            if any(i >= app.target for i in app.slots):
                return None
        gave_up = [i for i in insts if i is not None and i.state in (State.FAILED, State.STOPPED)]
        if gave_up:
            return False, self._describe(frozenset((i.app, i.index) for i in gave_up))
        for key, inst in zip(waiter.keys, insts):
            if inst is None or inst.state is not State.RUNNING:
                return None
            if waiter.verb == "restart" and self._current_spawn.get(key) == waiter.spawn_ids.get(key):
                return None
        return True, ""

    def _slot(self, key: Key) -> Instance | None:
        app = self.apps.get(key[0])
        return app.slots.get(key[1]) if app else None

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
                entry = {"name": name, "target": app.target, "instances": rows}
                if name in self._waiting:  # not started yet: its dependencies are not all running
                    entry["waiting_for"] = [d for d in app.config.depends_on if not self._app_up(d)]
                apps.append(entry)
        return {"apps": apps}

    def _instance_json(self, inst: Instance, now: float) -> dict:
        live = inst.state in LIVE_STATES and inst.spawned_at is not None
        return {
            "name": inst.name,
            "index": inst.index,
            "state": str(inst.state),
            "pid": inst.pid,
            "restarts": inst.restarts,
            "uptime": round(now - inst.spawned_at, 3) if live else None,
            "rss": inst.rss if live else None,
            "heartbeat_age": round(now - inst.heard_at, 3) if live and inst.heard_at is not None else None,
            "fields": inst.fields if live else None,
            "last_exit": inst.last_exit.as_json() if inst.last_exit else None,
        }
