"""An operator's commands, and their replies.

A command acts at once (feeds the instances it names, starts a rollout,
changes an app's count) and its reply waits until what it touched has
settled: the instances running (or stopped), the rollout done. The reply
says which instance gave up and why, or that the command timed out.
"""

from __future__ import annotations

import signal as signals
from dataclasses import dataclass, field

from supervise.config.model import AppConfig, Config
from supervise.core import rollout
from supervise.core.actions import Action, Reply, ScaleCluster, Signal, SignalTree
from supervise.core.events import Cause, CommandReceived, Verb
from supervise.core.fleet import Fleet, Key
from supervise.core.group import AppGroup
from supervise.core.instance import LIVE_STATES, ExitReason, Halt, Instance, Launch, State
from supervise.core.registry import RequestTimeout
from supervise.core.rollout import ChangeAction, RolloutState
from supervise.core.views import status

OPERATOR_INPUT: dict[Verb, Launch | Halt] = {
    Verb.START: Launch(manual=True),
    Verb.STOP: Halt(ExitReason.STOPPED),
    Verb.RESTART: Halt(ExitReason.STOPPED, then_start=True),
}


@dataclass(slots=True)
class Waiter:
    """A command whose reply waits until the instances it touched settle."""

    request_id: object
    verb: Verb
    keys: frozenset[Key]
    spawn_ids: dict[Key, int | None] = field(default_factory=dict)  # restart: the spawn each key had
    since: float | None = None  # start, restart: when it was asked (a process spawned since is its doing)
    app: str | None = None  # scale: the app scaled
    generations: dict[str, int] = field(default_factory=dict)  # reload: the rollouts it waits for
    plan: list[dict[str, object]] | None = None  # reload: what it changed


class Commands:
    def __init__(self, fleet: Fleet) -> None:
        self.fleet = fleet
        self.waiters: dict[object, Waiter] = {}

    def handle(self, cmd: CommandReceived, now: float) -> list[Action]:
        """Every verb but shutdown, which the core itself carries out."""
        rid = cmd.request_id
        if cmd.verb is Verb.STATUS:
            keys = self.fleet.resolve(cmd.targets) if cmd.targets else None
            if isinstance(keys, str):
                return [Reply(rid, False, error=keys, usage=True)]
            return [Reply(rid, True, result=status(self.fleet, now, keys))]
        if self.fleet.shutting_down:
            return [Reply(rid, False, error="the daemon is shutting down")]
        match cmd.verb:
            case Verb.START | Verb.STOP | Verb.RESTART:
                keys = self.fleet.resolve(cmd.targets)
                if isinstance(keys, str):
                    return [Reply(rid, False, error=keys, usage=True)]
                return self._start_stop(cmd, keys, now)
            case Verb.SCALE:
                return self._scale(cmd, now)
            case Verb.RELOAD if cmd.config is not None:
                return self._reload_config(cmd, cmd.config, now)
            case Verb.RELOAD:
                return self._reload(cmd, now)
            case Verb.SIGNAL:
                return self._signal(cmd)
        return [Reply(rid, False, error=f"unknown command {cmd.verb!r}", usage=True)]

    # -- the verbs ---------------------------------------------------------------------

    def _start_stop(self, cmd: CommandReceived, keys: list[Key], now: float) -> list[Action]:
        groups = self.fleet.groups
        if cmd.verb is not Verb.STOP:
            surplus = [f"{a}:{i}" for a, i in keys if not groups[a].wanted(i)]
            if surplus and len(cmd.targets) == 1 and ":" in cmd.targets[0]:
                return [Reply(cmd.request_id, False, error=f"{surplus[0]} is being removed by a scale-down")]
            keys = [(a, i) for a, i in keys if groups[a].wanted(i)]
        spawn_ids = {key: groups[key[0]].slots[key[1]].spawn_id for key in keys}
        actions: list[Action] = []
        for app_name in dict.fromkeys(a for a, _ in keys):  # the operator's word wins over a rollout
            actions += groups[app_name].cancel_replacements(f"cancelled by {cmd.verb}", now,
                                                            relaunch=cmd.verb is not Verb.STOP)
        for app_name, index in keys:
            group = groups[app_name]
            actions += group.operate(group.slots[index], OPERATOR_INPUT[cmd.verb], now)
        if cmd.verb is Verb.RESTART:  # a whole app restarted: its spares too (stop and start follow the slots)
            for app_name in dict.fromkeys(t for t in cmd.targets if ":" not in t and t in groups):
                actions += groups[app_name].restart_spares(now)
        self._add_waiter(Waiter(cmd.request_id, cmd.verb, frozenset(keys), spawn_ids, since=now), cmd.timeout, now)
        return actions

    def _scale(self, cmd: CommandReceived, now: float) -> list[Action]:
        rid = cmd.request_id
        if len(cmd.targets) != 1 or ":" in cmd.targets[0] or cmd.count is None or cmd.count < 0:
            return [Reply(rid, False, error="usage: scale APP N (N >= 0)", usage=True)]
        group = self.fleet.groups.get(cmd.targets[0])
        if group is None:
            known = ", ".join(self.fleet.groups)
            return [Reply(rid, False, error=f"no app named {cmd.targets[0]!r} (apps: {known})", usage=True)]
        if group.config.singleton:
            return [Reply(rid, False, error=f"{group.name} is a singleton: it runs exactly one instance "
                                            "cluster-wide", usage=True)]
        if group.config.clustered:  # the leader places the new count: the shell records it in etcd
            return [ScaleCluster(rid, group.name, cmd.count)]
        before = set(group.slots)
        actions = group.cancel_replacements("cancelled by scale", now)
        group.target = cmd.count
        actions += self.fleet.converge(group, now)
        keys = frozenset((group.name, i) for i in set(group.slots) - before)
        self._add_waiter(Waiter(rid, Verb.SCALE, keys, app=group.name), cmd.timeout, now)
        return actions + [self.fleet.registry.publish({"type": "scaled", "app": group.name,
                                                       "instances": group.target})]

    def _signal(self, cmd: CommandReceived) -> list[Action]:
        """Send a signal to each named live instance's main process (or tree); the reply says to whom, at once.

        What the worker makes of it is its own business: an exit it causes is
        an exit like any other (SIGKILL is a crash, restarted per the policy).
        """
        rid = cmd.request_id
        if cmd.signal is None:
            return [Reply(rid, False, error="signal: the request names no signal (its signal field)", usage=True)]
        name = _signal_name(cmd.signal)
        if name is None:
            return [Reply(rid, False, error=f"signal: no signal numbered {cmd.signal}", usage=True)]
        if not cmd.targets:
            return [Reply(rid, False, error="signal: name an app or an instance", usage=True)]
        keys = self.fleet.resolve(cmd.targets)
        if isinstance(keys, str):
            return [Reply(rid, False, error=keys, usage=True)]
        signalled: list[dict[str, object]] = []
        skipped: list[dict[str, object]] = []
        actions: list[Action] = []
        for key in keys:
            inst = self.fleet.slot(key)
            if inst is None:
                continue
            if inst.state in LIVE_STATES and inst.pid is not None and inst.spawn_id is not None:
                actions.append(SignalTree(inst.spawn_id, cmd.signal) if cmd.tree else Signal(inst.spawn_id, cmd.signal))
                signalled.append({"name": inst.name, "pid": inst.pid})
            else:
                skipped.append({"name": inst.name, "state": str(inst.state)})
        if not signalled:
            what = ", ".join(f"{s['name']} is {s['state']}" for s in skipped) or "no instances"
            return [Reply(rid, False, error=f"signal: no live process to send {name} to ({what})")]
        result: dict[str, object] = {"signal": name, "number": cmd.signal, "tree": cmd.tree,
                                     "signalled": signalled, "skipped": skipped}
        if warning := SIGNAL_WARNINGS.get(cmd.signal):
            result["warning"] = warning
        event = {"type": "signal", "signal": name, "tree": cmd.tree, "names": [s["name"] for s in signalled]}
        return actions + [self.fleet.registry.publish(event, durable=False), Reply(rid, True, result=result)]

    def _reload(self, cmd: CommandReceived, now: float) -> list[Action]:
        """Roll the named apps (or instances) onto a new generation of the same config."""
        if not cmd.targets:
            return [Reply(cmd.request_id, False, error="reload: name an app, or send the config", usage=True)]
        keys = self.fleet.resolve(cmd.targets)
        if isinstance(keys, str):
            return [Reply(cmd.request_id, False, error=keys, usage=True)]
        groups = self.fleet.groups
        by_app: dict[str, list[int]] = {}
        for name, index in keys:
            if groups[name].wanted(index):
                by_app.setdefault(name, []).append(index)
            else:
                by_app.setdefault(name, [])
        plan: list[dict[str, object]] = [
            {"app": name, "action": str(ChangeAction.ROLL), "instances": indexes,
             "surge": groups[name].config.surge()} for name, indexes in by_app.items()]
        if cmd.dry_run:
            return [Reply(cmd.request_id, True, result={"plan": plan, "dry_run": True})]
        actions: list[Action] = []
        for name, indexes in by_app.items():
            actions += groups[name].start_rollout(indexes, groups[name].config, cmd.cause, now)
        if cmd.request_id is not None:
            generations = {name: groups[name].generation for name in by_app}
            self._add_waiter(Waiter(cmd.request_id, Verb.RELOAD, frozenset(), generations=generations, plan=plan),
                             cmd.timeout, now)
        return actions

    def _reload_config(self, cmd: CommandReceived, config: Config, now: float) -> list[Action]:
        """Apply a re-read config: start added apps, stop removed ones, scale, roll what changed."""
        fleet = self.fleet
        current = {name: g.config for name, g in fleet.groups.items() if not g.removed}
        changes = rollout.diff(current, config.apps)
        plan = [c.as_json() for c in changes]
        if cmd.dry_run:
            return [Reply(cmd.request_id, True, result={"plan": plan, "dry_run": True})]
        fleet.config = config
        fleet.registry.listeners_changed = True
        actions: list[Action] = [fleet.registry.publish({
            "type": "config", "event": "reloaded", "path": str(config.path),
            "changes": [c for c in plan if c["action"] != ChangeAction.UNCHANGED]})]
        generations: dict[str, int] = {}
        keys: set[Key] = set()
        for change in changes:
            new = config.apps.get(change.app)
            group = fleet.groups.get(change.app)
            if change.action is ChangeAction.START and group is None:
                assert new is not None
                fleet.add(new)
                fleet.waiting.add(change.app)
                keys |= {(change.app, i) for i in range(new.instances)}
                continue
            assert group is not None
            before = set(group.slots)
            match change.action:
                case ChangeAction.STOP:
                    group.removed = True
                    actions += group.cancel_replacements("the app was removed from the config", now,
                                                         relaunch=False)
                    group.target = 0
                    actions += self.fleet.converge(group, now)
                case ChangeAction.START:  # removed a moment ago, still stopping: back it comes
                    assert new is not None
                    group.removed = False
                    actions += group.start_rollout((), new, Cause.CONFIG, now)
                    group.target = _count(group, new)
                    for inst in list(group.slots.values()):  # all stopping: they come back on the new config
                        inst.config, inst.generation = new, group.generation
                        actions += group.feed(inst, Launch(), now)
                    actions += self.fleet.converge(group, now)
                    keys |= {(change.app, i) for i in range(new.instances)}
                case ChangeAction.ROLL:
                    assert new is not None
                    actions += group.start_rollout(sorted(group.slots), new, Cause.CONFIG, now)
                    generations[change.app] = group.generation
                    if change.instances is not None:
                        group.target = _count(group, new)
                        actions += self.fleet.converge(group, now)
                        keys |= {(change.app, i) for i in set(group.slots) - before}
                case ChangeAction.UPDATE:
                    assert new is not None
                    group.config = new
                    if group.rollout is not None and group.rolling:
                        group.rollout.config = new  # the roll in flight carries on with the new settings
                    for inst in group.instances():
                        inst.config = new
                    if change.instances is not None:
                        actions += group.cancel_replacements("cancelled by a change of instances", now)
                        group.target = _count(group, new)
                        actions += self.fleet.converge(group, now)
                        keys |= {(change.app, i) for i in set(group.slots) - before}
        if cmd.request_id is not None:
            self._add_waiter(Waiter(cmd.request_id, Verb.RELOAD, frozenset(keys), generations=generations,
                                    plan=plan), cmd.timeout, now)
        return actions

    # -- replies -------------------------------------------------------------------------

    def _add_waiter(self, waiter: Waiter, timeout: float | None, now: float) -> None:
        self.waiters[waiter.request_id] = waiter
        if timeout is not None:
            self.fleet.registry.timers.set(RequestTimeout(waiter.request_id), now + timeout)

    def timed_out(self, request_id: object) -> list[Action]:
        waiter = self.waiters.pop(request_id, None)
        if waiter is None:
            return []
        return [Reply(waiter.request_id, False, error=f"{waiter.verb}: timed out; " + self._describe(waiter.keys))]

    def settle(self, now: float) -> list[Action]:
        """Reply to every command whose instances have settled."""
        actions: list[Action] = []
        for rid, waiter in list(self.waiters.items()):
            verdict = self._verdict(waiter)
            if verdict is None:
                continue
            del self.waiters[rid]
            self.fleet.registry.timers.set(RequestTimeout(rid), None)
            ok, message = verdict
            result: object = None
            if ok and waiter.verb is Verb.RELOAD:
                rollouts = [g.rollout for n in waiter.generations if (g := self.fleet.groups.get(n)) is not None]
                result = {"plan": waiter.plan, "rollouts": [r.as_json(now) for r in rollouts if r is not None]}
            elif ok:
                result = status(self.fleet, now, sorted(waiter.keys))
            actions.append(Reply(rid, ok, result=result, error=None if ok else message))
        return actions

    def _verdict(self, waiter: Waiter) -> tuple[bool, str] | None:
        """(ok, why) once every instance a command touched has settled, else None."""
        fleet = self.fleet
        keys = sorted(waiter.keys)
        insts = [fleet.slot(key) for key in keys]
        if waiter.verb is Verb.RELOAD:
            for name, generation in waiter.generations.items():
                group = fleet.groups.get(name)
                r = group.rollout if group is not None else None
                if r is None or r.generation != generation:
                    return False, f"{name}: the rollout to generation {generation} was superseded"
                if r.state is RolloutState.RUNNING:
                    return None
                if r.state is not RolloutState.DONE:
                    return False, f"{name}: rollout to generation {generation} {r.state}: {r.error}"
        if waiter.verb is Verb.STOP:
            if all(i is None or i.state is State.STOPPED for i in insts):
                return True, ""
            return None
        if waiter.verb is Verb.SCALE and waiter.app is not None:
            group = fleet.groups.get(waiter.app)
            if group is not None and any(not group.wanted(i) for i in group.slots):
                return None
        # A start or restart whose process died before it was ready has failed, and says so at once
        # (it goes on trying in backoff): the operator learns now, not after the breaker trips. Only a
        # process spawned since the command: one in backoff for an earlier death is still to be started.
        gave_up = [i for i in insts if i is not None and (self._gave_up(i) or self._died_since(i, waiter.since))]
        if gave_up:
            return False, self._describe(frozenset((i.app, i.index) for i in gave_up))
        for key, inst in zip(keys, insts, strict=True):
            if inst is None:
                continue  # removed meanwhile (a scale-down): nothing left to wait for
            if inst.state is not State.RUNNING:
                return None
            if waiter.verb is Verb.RESTART and inst.spawn_id == waiter.spawn_ids.get(key):
                return None
        return True, ""

    @staticmethod
    def _died_since(inst: Instance, since: float | None) -> bool:
        return (since is not None and inst.state is State.BACKOFF and inst.spawned_at is not None
                and inst.spawned_at >= since)

    def _gave_up(self, inst: Instance) -> bool:
        """Failed, or stopped for good: not stopped a moment by a rollout that replaces it (surge 0)."""
        if inst.state is State.FAILED:
            return True
        if inst.state is not State.STOPPED:
            return False
        group = self.fleet.groups.get(inst.app)
        if group is not None and inst.index in group.deferred:
            return False  # a singleton's start, waiting for its slot's other process to be gone
        rollout = group.rollout if group is not None and group.rolling else None
        return rollout is None or inst.index not in rollout.active

    def _describe(self, keys: frozenset[Key]) -> str:
        parts = []
        for key in sorted(keys):
            inst = self.fleet.slot(key)
            if inst is None:
                continue
            text = f"{inst.name} is {inst.state}"
            if inst.last_exit is not None:
                text += f" (last exit: {inst.last_exit.describe()})"
            parts.append(text)
        return "; ".join(parts)


SIGNAL_WARNINGS: dict[int, str] = {
    signals.SIGKILL: "SIGKILL cannot be handled: the instance dies, its exit counts as a crash, and it is "
                     "restarted as its restart policy says",
    signals.SIGSTOP: "SIGSTOP freezes the process until it gets SIGCONT: it stops beating, so an app with a "
                     "heartbeat_timeout restarts it as hung",
}
"""Signals whose effect an operator may not expect; the reply carries the warning."""


def _signal_name(number: int) -> str | None:
    """SIGHUP for 1; SIGRTMIN+3 for a real-time signal; None for a number that is no signal."""
    try:
        return signals.Signals(number).name
    except ValueError:
        pass
    low, high = signals.SIGRTMIN, signals.SIGRTMAX
    return f"SIGRTMIN+{number - low}" if low < number < high else None


def _count(group: AppGroup, new: AppConfig) -> int:
    """The app's new local count; a cluster app's is the leader's to place (what is here stays)."""
    return group.target if new.clustered or group.config.clustered else new.instances
