"""The supervisor core, sans-IO: ``handle(event, now) -> actions`` and ``next_deadline()``.

Events arrive in the past tense (a process was spawned, exited, a command
was received, a deadline passed); actions leave in the imperative (spawn,
signal, kill, reply, publish, checkpoint, notify, exit). The core never
reads a clock, touches a process or a socket: ``now`` comes with every
event and randomness from an injected ``random.Random``. That is what lets
tests replay thousands of fault schedules with a fake clock, and keeps
policy readable in one place. The shell reads the core only through
``Core.view``.
"""

from __future__ import annotations

import random
from collections.abc import Mapping

from supervise.config.model import Config
from supervise.core.actions import (
    Action,
    Checkpoint,
    EndChaos,
    Exit,
    ExtendFence,
    Notify,
    ReleaseListeners,
    Reply,
    Resample,
    ServiceState,
    StopStray,
)
from supervise.core.commands import Commands
from supervise.core.events import (
    Adopted,
    AppRecord,
    Assigned,
    Beat,
    Cause,
    ClusterNews,
    CommandReceived,
    DaemonStarted,
    DeadlineReached,
    Drained,
    Event,
    Exited,
    FilesChanged,
    Healthy,
    LeaseLost,
    LeaseRenewed,
    Ready,
    Recovered,
    Role,
    Sampled,
    ShutdownRequested,
    Spawned,
    SpawnFailed,
    Stalled,
    Unhealthy,
    Verb,
)
from supervise.core.fleet import Fleet
from supervise.core.group import AppGroup
from supervise.core.instance import (
    DAEMON_FAULT_RETRY,
    MEMORY_HYSTERESIS,
    BecameReady,
    Died,
    ExitReason,
    Forked,
    ForkFailed,
    Halt,
    Input,
    Instance,
    MemorySampled,
    ProbeFailed,
    ProbePassed,
    ReportedDrained,
    Resumed,
    State,
    TimerFired,
    Unheard,
    record_if_idle,
)
from supervise.core.registry import FenceDeadline, Registry, RequestTimeout
from supervise.core.views import View, summary

MEMORY_RECHECK = 0.1
"""Seconds until the next sample while an over-limit reading awaits confirmation."""

WATCH_PATHS_SHOWN = 5
"""Changed paths named in a watch event; the rest are counted."""


class Core:
    def __init__(self, config: Config, rng: random.Random) -> None:
        self._registry = Registry(rng)
        self._fleet = Fleet(config, self._registry)
        self._commands = Commands(self._fleet)
        self.view = View(self._fleet)
        self._deferred: list[tuple[AppGroup, Instance, Input]] = []  # adopted: what DaemonStarted feeds them
        self._said_ready = False
        self._status_line = ""
        self._waiting_seen = -1  # how many apps waited when the summary line was last made
        self._exited = False
        # Cluster: the last snapshot of what the leader placed here, and whether the node is
        # fenced (no lease known good: its singletons may not run). A node starts fenced.
        self._assigned: Assigned | None = None
        self._fenced = True
        self._fence_grace = config.cluster.fence_margin / 2 if config.cluster is not None else 0.0
        self._node = config.cluster.node if config.cluster is not None else None

    @property
    def shutting_down(self) -> bool:
        return self._fleet.shutting_down

    def handle(self, event: Event, now: float) -> list[Action]:
        actions: list[Action] = []
        fence_at = self._registry.fence_at
        if fence_at is not None and now >= fence_at:
            # Before anything else: a daemon resumed from a pause past its lease acts on that first.
            actions += self._fence(now, "the lease was not renewed in time")
        match event:
            case Spawned(spawn_id=sid, pid=pid):
                actions += self._feed_spawn(sid, Forked(pid), now)
            case SpawnFailed(spawn_id=sid, error=error, daemon_fault=fault):
                actions += self._spawn_failed(sid, error, fault, now)
            case Exited(spawn_id=sid, code=code, signal=sig, lost=lost):
                actions += self._feed_spawn(sid, Died(code, sig, lost), now)
            case Beat(spawn_id=sid, fields=fields):
                self.beat(sid, fields, now)
            case Ready(spawn_id=sid):
                self.beat(sid, None, now)
                actions += self._feed_spawn(sid, BecameReady(), now)
            case Drained(spawn_id=sid):
                self.beat(sid, None, now)
                actions += self._feed_spawn(sid, ReportedDrained(), now)
            case Unhealthy(spawn_id=sid, detail=detail):
                actions += self._feed_spawn(sid, ProbeFailed(detail), now)
            case Healthy(spawn_id=sid):
                actions += self._feed_spawn(sid, ProbePassed(), now)
            case Sampled(rss=rss, processes=processes, cpu=cpu, cpu_seconds=cpu_seconds):
                actions += self._sampled(rss, processes or {}, cpu or {}, cpu_seconds or {}, now)
            case CommandReceived(verb=Verb.SHUTDOWN, request_id=rid):
                actions += [Reply(rid, True, result={"draining": self._registry.live_count()}),
                            *self._shutdown(now)]
            case CommandReceived(verb=Verb.RELOAD, config=config, dry_run=False, cause=cause) \
                    if config is not None and cause is not Cause.CONFIG and not self.shutting_down:
                # A service manager is told of a reload of the file while it is applied.
                actions.append(Notify(ServiceState.RELOADING, self._summary()))
                actions += self._commands.handle(event, now)
                actions.append(Notify(ServiceState.READY, self._summary()))
            case CommandReceived():
                actions += self._commands.handle(event, now)
            case FilesChanged(apps=apps, paths=paths):
                actions += self._files_changed(apps, paths, now)
            case ShutdownRequested():
                actions += self._shutdown(now)
            case DeadlineReached():
                actions += self._deadlines(now)
            case Recovered(apps=apps, instances=instances):
                actions += self._recover(apps, instances, now)
            case DaemonStarted():
                actions += self._start(now)
            case Assigned():
                actions += self._apply_assignment(event, now)
            case LeaseRenewed(fence_at=fence_at):
                actions += self._renewed(fence_at, now)
            case LeaseLost():
                actions += self._fence(now, "etcd says the lease is gone")
            case Stalled(seconds=seconds):
                actions += self._stalled(seconds, now)
            case ClusterNews(event=news):
                actions.append(self._registry.publish({"type": "cluster", **news}, durable=False))
        return actions + self._follow_through(now)

    def next_deadline(self) -> float | None:
        return self._registry.timers.next()

    def beat(self, spawn_id: int, fields: Mapping[str, object] | None, now: float) -> None:
        """The hot path (thousands a second): no transition, no timer, no action.

        Equivalent to ``handle(Beat(...))``, which returns nothing: the shell
        calls it directly to skip the event queue for the commonest message.
        """
        inst = self._registry.by_spawn.get(spawn_id)
        if inst is None:
            return
        inst.last_beat = inst.heard_at = now
        if fields is not None:
            inst.fields = fields

    # -- after every event ----------------------------------------------------------

    def _follow_through(self, now: float) -> list[Action]:
        """What every event may have set off: dependants starting, replacements moving on,
        commands settling, and what the shell must be told."""
        fleet = self._fleet
        # Each app's own business first (a held restart or a rollout's step may take it out of
        # service this very event): only then is it judged up for the apps that depend on it.
        actions = fleet.advance(now)
        if fleet.waiting or fleet.draining:
            actions += fleet.follow_dependencies(now)
        actions += self._commands.settle(now)
        if self._registry.listeners_changed:
            self._registry.listeners_changed = False
            actions.append(ReleaseListeners(fleet.listen_addresses()))
        if self.shutting_down:
            if not self._exited and self._registry.live_count() == 0:
                self._exited = True
                actions += [self._registry.publish({"type": "daemon", "event": "stopped"}, durable=False), Exit(0)]
            return actions
        if self._registry.durable_change:
            self._registry.durable_change = False
            actions.append(Checkpoint())
        if not self._registry.census_changed and len(fleet.waiting) == self._waiting_seen:
            return actions  # the summary line cannot have changed: no need to make it again
        self._registry.census_changed, self._waiting_seen = False, len(fleet.waiting)
        line = self._summary()
        if line != self._status_line:
            self._status_line = line
            census = self._registry.census
            if not self._said_ready and not census[State.STARTING] and not fleet.waiting:
                self._said_ready = True
                actions.append(Notify(ServiceState.READY, line))
            else:
                actions.append(Notify(ServiceState.STATUS, line))
        return actions

    def _summary(self) -> str:
        return summary(self._registry.census, len(self._fleet.waiting))

    # -- feeding the state machines -------------------------------------------------

    def _feed_spawn(self, spawn_id: int, event: Input, now: float) -> list[Action]:
        inst = self._registry.by_spawn.get(spawn_id)
        if inst is None:
            return []  # an exit or beat from a process we no longer track
        return self._fleet.groups[inst.app].feed(inst, event, now)

    def _spawn_failed(self, spawn_id: int, error: str, daemon_fault: bool, now: float) -> list[Action]:
        """A spawn failed; one the daemon itself is to blame for is said so, and tried again shortly."""
        inst = self._registry.by_spawn.get(spawn_id)
        if inst is None:
            return []
        actions = self._fleet.groups[inst.app].feed(inst, ForkFailed(error, daemon_fault), now)
        if daemon_fault:
            retry = inst.state is State.BACKOFF and inst.deadline == now + DAEMON_FAULT_RETRY
            actions.insert(0, self._registry.publish({
                "type": "daemon", "event": "spawn-failed", "name": inst.name, "app": inst.app, "error": error,
                "retry_in": DAEMON_FAULT_RETRY if retry else None}, durable=False))
        return actions

    def _sampled(self, rss: Mapping[int, int | None], processes: Mapping[int, int], cpu: Mapping[int, float],
                 cpu_seconds: Mapping[int, float], now: float) -> list[Action]:
        actions: list[Action] = []
        unconfirmed = False
        for sid, value in rss.items():
            inst = self._registry.by_spawn.get(sid)
            if inst is None or value is None:
                continue
            sample = MemorySampled(value, processes.get(sid), cpu.get(sid), cpu_seconds.get(sid))
            if not record_if_idle(inst, sample, inst.config):
                actions += self._fleet.groups[inst.app].feed(inst, sample, now)
            unconfirmed |= 0 < inst.over_memory < MEMORY_HYSTERESIS
        if unconfirmed:
            actions.append(Resample(MEMORY_RECHECK))
        return actions

    def _deadlines(self, now: float) -> list[Action]:
        actions: list[Action] = []
        for key in self._registry.timers.pop_due(now):
            if isinstance(key, RequestTimeout):
                actions += self._commands.timed_out(key.request_id)
                continue
            if isinstance(key, FenceDeadline):
                continue  # handle() fenced before it came here
            group = self._fleet.groups.get(key.app)
            if group is not None and key.deadline is not None and key.deadline <= now:
                actions += group.feed(key, TimerFired(), now)
        return actions

    def _files_changed(self, apps: frozenset[str], paths: tuple[str, ...], now: float) -> list[Action]:
        live = sorted(app for app in apps if app in self._fleet.groups)
        if self.shutting_down or not live:
            return []
        event = {"type": "watch", "event": "changed", "apps": live, "paths": list(paths[:WATCH_PATHS_SHOWN]),
                 "more": max(0, len(paths) - WATCH_PATHS_SHOWN)}
        reload = CommandReceived(None, Verb.RELOAD, tuple(live), cause=Cause.WATCH)
        return [self._registry.publish(event, durable=False), *self._commands.handle(reload, now)]

    def _stalled(self, seconds: float, now: float) -> list[Action]:
        """The loop stood still: nobody is hung for silence it could not hear. (A fence is not
        liveness: it still fires, and first.)"""
        actions: list[Action] = [self._registry.publish({"type": "daemon", "event": "stalled",
                                                         "seconds": round(seconds, 3)}, durable=False)]
        for group in list(self._fleet):
            for inst in list(group.instances()):
                actions += group.feed(inst, Unheard(seconds), now)
        return actions

    # -- cluster: placement and fencing ---------------------------------------------

    def _cluster_groups(self, singletons: bool | None = None) -> list[AppGroup]:
        return [g for g in self._fleet if g.config.clustered and not g.removed
                and (singletons is None or g.config.singleton == singletons)]

    def _singleton_groups(self) -> list[AppGroup]:
        """Every singleton app, a removed one still stopping too: fencing is about processes."""
        return [g for g in self._fleet if g.config.singleton]

    def _apply_assignment(self, event: Assigned, now: float) -> list[Action]:
        """Run what the leader placed here. A fenced node keeps its singletons stopped: it takes
        them back only with the snapshot that comes with its lease's renewal."""
        self._assigned = event
        if self.shutting_down:
            return []
        actions: list[Action] = []
        for group in self._cluster_groups():
            if group.config.singleton and self._fenced:
                continue
            actions += group.assign(event.slots.get(group.name, {}), event.held.get(group.name, frozenset()), now,
                                    start=group.name not in self._fleet.waiting)
        return actions

    def _renewed(self, fence_at: float, now: float) -> list[Action]:
        was_fenced, self._fenced = self._fenced, False
        self._registry.fence_at = fence_at
        self._registry.timers.set(FenceDeadline(), fence_at)
        actions: list[Action] = []
        if was_fenced and self._assigned is not None and not self.shutting_down:
            for group in self._cluster_groups(singletons=True):
                actions += group.assign(self._assigned.slots.get(group.name, {}),
                                        self._assigned.held.get(group.name, frozenset()), now,
                                        start=group.name not in self._fleet.waiting)
        live = tuple(inst.spawn_id for group in self._singleton_groups()
                     for inst in group.instances() if inst.spawn_id is not None)
        if live:
            actions.append(ExtendFence(live, fence_at))
        return actions

    def _fence(self, now: float, why: str) -> list[Action]:
        """This node may have lost its lease: its singletons stop now, killed within half the
        fence margin, so they are gone before etcd can give the slot to another node. The
        other cluster instances keep running (static stability) until a snapshot moves them."""
        self._registry.fence_at = None
        self._registry.timers.set(FenceDeadline(), None)
        if self._fenced:
            return []
        self._fenced = True
        actions: list[Action] = []
        stopped: list[str] = []
        for group in self._singleton_groups():
            stopped += [inst.name for inst in group.instances() if inst.spawn_id is not None]
            actions += group.fence(self._fence_grace, now)
        event: dict[str, object] = {"type": "cluster", "event": "fenced", "node": self._node, "why": why,
                                    "stopped": stopped}
        return [self._registry.publish(event, durable=False), *actions]

    # -- the daemon's life: start, shutdown ------------------------------------------

    def _start(self, now: float) -> list[Action]:
        """Bring every app up to its count, each after the apps it depends on; adopted
        instances whose processes died meanwhile restart, interrupted stops carry on.

        An app with adopted instances was started by the previous daemon: it does not
        wait for its dependencies again, it only makes up its count.
        """
        fleet = self._fleet
        fleet.waiting = {name for name, group in fleet.groups.items() if not group.slots}
        actions: list[Action] = [self._registry.publish({"type": "daemon", "event": "started"}, durable=False)]
        for group, inst, event in self._deferred:
            if group.config.clustered and isinstance(event, Resumed) and group.slots.get(inst.index) is inst:
                # Its process died while no daemon watched: the slot may run elsewhere by now.
                # Only the cluster's next snapshot may start it again.
                del group.slots[inst.index]
                self._registry.untrack(inst)
                continue
            actions += group.feed(inst, event, now)
        self._deferred.clear()
        for group in fleet:
            actions += fleet.converge(group, now)
        # A new daemon holds no lease yet: singletons it adopted stop until it does (the cluster may
        # place them elsewhere meanwhile). The first renewal's snapshot starts them again.
        adopted = [inst.name for group in self._singleton_groups() for inst in group.instances()
                   if inst.spawn_id is not None]
        if adopted:
            for group in self._singleton_groups():
                actions += group.fence(self._fence_grace, now)
            actions.append(self._registry.publish({"type": "cluster", "event": "fenced", "node": self._node,
                                                   "why": "adopted by a daemon that holds no lease yet",
                                                   "stopped": adopted}, durable=False))
        return actions

    def _shutdown(self, now: float) -> list[Action]:
        fleet = self._fleet
        if fleet.shutting_down:
            return []
        fleet.shutting_down = True
        fleet.waiting.clear()
        fleet.draining = set(fleet.groups)
        actions: list[Action] = [self._registry.publish({"type": "daemon", "event": "draining"}, durable=False),
                                 EndChaos(), Notify(ServiceState.STOPPING, self._summary())]
        for group in fleet:
            actions += group.cancel_replacements("the daemon is shutting down", now, relaunch=False)
        return actions

    # -- adoption: what a previous daemon left ------------------------------------------

    def _recover(self, apps: Mapping[str, AppRecord], found: tuple[Adopted, ...], now: float) -> list[Action]:
        """Take over the instances a previous daemon left: the live ones are watched at once
        (``Adopt``), the rest wait for ``DaemonStarted``. A live one no app claims is stopped."""
        for name, record in apps.items():
            group = self._fleet.groups.get(name)
            if group is not None:
                group.target, group.generation = record.target, record.generation
                group.latest = max(record.latest, record.generation, group.latest)
        actions: list[Action] = []
        for adopted in found:
            actions += self._adopt(adopted, now)
        return actions

    def _adopt(self, found: Adopted, now: float) -> list[Action]:
        group = self._fleet.groups.get(found.app)
        name = f"{found.app}:spare-{found.index}" if found.role is Role.SPARE else f"{found.app}:{found.index}"
        if group is None:
            return [] if found.pid is None else [StopStray(found.pid, name)]
        generation = group.generation if found.generation is None else found.generation
        group.latest = max(group.latest, generation)
        slot = found.role is Role.SLOT and found.index not in group.slots
        if not slot and found.pid is None:
            return []  # an extra instance whose process is gone: nothing to take over
        inst = group.new_instance(found.index, generation=generation)
        inst.spare = found.role is Role.SPARE
        # A spare is kept as one while the app still wants it, of the generation it runs now; any
        # other goes (a new spare starts in its place).
        spare = (inst.spare and found.index < group.config.spares and found.index not in group.spares
                 and generation == group.generation and found.state in (State.STARTING, State.RUNNING))
        # Its history, as recorded: counts and the last exit are data, not a change of state.
        inst.restarts, inst.failures, inst.last_exit = found.restarts, found.failures, found.last_exit
        inst.reloads, inst.operator_restarts = found.reloads, found.operator_restarts
        inst.fence = inst.spawned_fence = found.fence
        if slot:
            group.slots[found.index] = inst
        elif spare:
            group.spares[found.index] = inst
        else:  # a rollout's new or old instance cut short by the daemon's death, or a duplicate: it stops
            inst.retired = True
            group.retiring.append(inst)
        resumed = Resumed(found.pid, found.state, found.age, found.running_for)
        if found.pid is None:
            self._deferred.append((group, inst, resumed))
            return []
        actions = group.feed(inst, resumed, now)
        if inst.retired or found.state is State.STOPPING:
            self._deferred.append((group, inst, Halt(ExitReason.STOPPED)))
        return actions
