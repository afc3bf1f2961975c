"""A fake shell for the core: fake processes, a fake clock, and every action carried out.

The core's tests drive it through this one harness: they feed events, let
time pass, and look only at what the core says (its actions, its published
events, its replies, ``core.view``), never at its private state. The
simulation (test_core_simulation.py) subclasses it to add random faults.
"""

from __future__ import annotations

import heapq
import itertools
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from supervise.config.model import AppConfig, Config, SuperviseConfig
from supervise.core import (
    Action,
    Adopt,
    Adopted,
    Checkpoint,
    CommandReceived,
    Core,
    DaemonStarted,
    DeadlineReached,
    EndChaos,
    Event,
    Exit,
    Exited,
    KillTree,
    Notify,
    PromoteSpare,
    Publish,
    Ready,
    Recovered,
    ReleaseListeners,
    Reply,
    Resample,
    SendDrain,
    Signal,
    Spawn,
    Spawned,
    SpawnFailed,
    StopStray,
    Verb,
)
from supervise.core.instance import State
from supervise.core.views import Snapshot

KILL_LATENCY = 0.01
"""A SIGKILLed fake process is gone this long after the kill."""

CHECKPOINT_INTERVAL = 0.25
"""The daemon's: a checkpoint is written at most this often."""


def config(*apps: AppConfig) -> Config:
    return Config(Path("/sim/supervise.toml"), SuperviseConfig(Path("/sim/.supervise")), {a.name: a for a in apps})


def app(name: str = "web", **kw: object) -> AppConfig:
    """An app as the core tests know it: with readiness "none" it is running as soon as it is
    spawned (ready_after 0) unless a test asks for a settle time."""
    kw.setdefault("ready_after", 0.0)
    return AppConfig(name, ("x",), Path("/"), **kw)  # type: ignore[arg-type]


@dataclass(eq=False)
class Proc:
    """A fake worker process."""

    pid: int
    spawn_id: int  # under the core that watches it now
    app: AppConfig
    index: int
    started_at: float
    alive: bool = True
    adopted: bool = False  # started under an earlier core: its exit status is lost
    stray: bool = False  # a StopStray names it: no core tracks it
    ready: bool = False  # said ready (readiness = "heartbeat")
    stop_signalled_at: float | None = None
    drain_asked: bool = False
    killed: bool = False
    spare: bool = False  # a warm spare not promoted yet (index: its number among the spares)
    promoted_at: float | None = None

    @property
    def name(self) -> str:
        return f"{self.app.name}:spare-{self.index}" if self.spare else f"{self.app.name}:{self.index}"


@dataclass(order=True)
class _Item:
    when: float
    seq: int
    run: Callable[[], None] = field(compare=False)


class FakeShell:
    def __init__(self, cfg: Config, seed: int = 0) -> None:
        self.config = cfg
        self.seed = seed
        self.core = Core(cfg, random.Random(seed))
        self.now = 0.0
        self.procs: dict[int, Proc] = {}  # by pid, dead ones too
        self.alive: dict[int, Proc] = {}  # by pid, the live ones (a stray being stopped too)
        self.by_spawn: dict[int, Proc] = {}  # the current core's spawn ids
        self.spawns: list[Spawn] = []
        self.signalled: list[int] = []  # spawn ids given a stop signal or killed
        self.replies: dict[object, Reply] = {}
        self.events: list[dict[str, object]] = []
        self.notified: list[Notify] = []
        self.released: list[frozenset[str]] = []
        self.chaos_ended = 0
        self.exit_code: int | None = None
        self.checkpoint: Snapshot | None = None  # as of the last Checkpoint action taken
        self.checkpoint_rate = 1.0  # how often a Checkpoint action is written (below 1: stale ones)
        self.rng = random.Random(seed)  # the shell's own randomness, apart from the core's
        self._pids = itertools.count(1000)
        self._requests = itertools.count(1)
        self._queue: list[_Item] = []
        self._seq = itertools.count()
        self._dispatching = False
        self._checkpoint_due: float | None = None
        self._checkpoint_last = -CHECKPOINT_INTERVAL
        self._pending: list[Event] = []  # events that arose while actions were carried out

    # -- driving the core --------------------------------------------------------------

    def start(self) -> list[Action]:
        return self.feed(DaemonStarted())

    def feed(self, event: Event) -> list[Action]:
        """Handle `event` and carry out its actions; returns them.

        As in the daemon, events that arise while actions are carried out
        (a spawn reporting its pid) wait until the whole batch is done, so
        the core sees them in the order they happened.
        """
        if self._dispatching:
            self._pending.append(event)
            return []
        self._dispatching = True
        try:
            actions = self.core.handle(event, self.now)
            self.carry_out(actions)
            changed = bool(actions)
            while self._pending:
                more = self.core.handle(self._pending.pop(0), self.now)
                self.carry_out(more)
                changed |= bool(more)
        finally:
            self._dispatching = False
            self._pending.clear()
        self.after_feed(event, changed)
        return actions

    def after_feed(self, event: Event, changed: bool) -> None:
        """A hook, once every action an outside event set off is carried out: the
        simulation checks its invariants here. `changed`: the core asked for anything at
        all (an event that sets off no action changes no state anyone can see)."""

    def carry_out(self, actions: list[Action]) -> None:
        for action in actions:
            match action:
                case Spawn():
                    self.spawns.append(action)
                    self.on_spawn(action)
                case Adopt(spawn_id=sid, pid=pid):
                    proc = self.procs[pid]
                    assert proc.alive, f"adopted {proc.name}, whose process is dead"
                    proc.spawn_id, proc.adopted = sid, True
                    self.by_spawn[sid] = proc
                case Signal(spawn_id=sid, signal=sig):
                    proc = self.by_spawn[sid]
                    assert proc.alive, f"signalled {proc.name}, whose process the core knows is dead"
                    self.signalled.append(sid)
                    if proc.stop_signalled_at is None:
                        proc.stop_signalled_at = self.now
                    self.on_stop_signal(proc, sig)
                case KillTree(spawn_id=sid):
                    proc = self.by_spawn[sid]
                    self.signalled.append(sid)
                    proc.killed = True
                    self.at(self.now + KILL_LATENCY, lambda p=proc: self.exit_process(p, None, 9))
                case PromoteSpare(spawn_id=sid, index=index):
                    proc = self.by_spawn[sid]
                    # (An adopted one may have been promoted already, under a core that died before its
                    # checkpoint said so: the real worker then keeps the slot it took first, and its
                    # beats under that name are rejected until it is restarted as hung.)
                    assert proc.alive and (proc.spare or proc.adopted), f"promoted {proc.name}, not a live spare"
                    proc.spare, proc.index, proc.promoted_at = False, index, self.now
                case SendDrain(spawn_id=sid):
                    self.by_spawn[sid].drain_asked = True
                    self.on_drain(self.by_spawn[sid])
                case StopStray(pid=pid):
                    proc = self.procs[pid]
                    proc.stray = True
                    self.at(self.now + KILL_LATENCY, lambda p=proc: self.exit_process(p, None, 15))
                case Reply():
                    self.replies[action.request_id] = action
                case Publish(event=published):
                    self.events.append(published)
                    self.on_publish(published)
                case Checkpoint():
                    self._checkpoint_soon()
                case Notify():
                    self.notified.append(action)
                case ReleaseListeners(keep=keep):
                    self.released.append(keep)
                case EndChaos():
                    self.chaos_ended += 1
                case Exit(code=code):
                    self.exit_code = code
                case Resample(after=after):
                    self.on_resample(after)

    def _checkpoint_soon(self) -> None:
        """As the daemon does: at most one checkpoint per CHECKPOINT_INTERVAL, written a little
        later (and, below checkpoint_rate, sometimes not at all: a write that failed)."""
        if self._checkpoint_due is not None:
            return
        self._checkpoint_due = max(self.now, self._checkpoint_last + CHECKPOINT_INTERVAL)
        core = self.core

        def write() -> None:
            self._checkpoint_due = None
            self._checkpoint_last = self.now
            if core is self.core and self.rng.random() < self.checkpoint_rate:
                self.checkpoint = core.view.snapshot()
        self.at(self._checkpoint_due, write)

    # -- hooks the simulation overrides ---------------------------------------------------

    def on_spawn(self, action: Spawn) -> None:
        """Start a fake process and report it at once."""
        proc = Proc(next(self._pids), action.spawn_id, action.app, action.index, self.now, spare=action.spare)
        self.add(proc)
        self.feed(Spawned(action.spawn_id, proc.pid))

    def add(self, proc: Proc) -> None:
        self.procs[proc.pid] = self.alive[proc.pid] = self.by_spawn[proc.spawn_id] = proc

    def fail_spawn(self, action: Spawn, error: str = "simulated exec failure") -> None:
        self.feed(SpawnFailed(action.spawn_id, error))

    def on_stop_signal(self, proc: Proc, sig: int) -> None:
        """By default a process stays until the test makes it exit."""

    def on_drain(self, proc: Proc) -> None:
        pass

    def on_publish(self, event: dict[str, object]) -> None:
        pass

    def on_resample(self, after: float) -> None:
        pass

    # -- processes ------------------------------------------------------------------------

    def exit_process(self, proc: Proc, code: int | None, sig: int | None) -> None:
        """The fake process ends; the core hears of it at once, if one watches it."""
        if not proc.alive:
            return
        proc.alive = False
        del self.alive[proc.pid]
        if proc.stray:
            return
        if self.by_spawn.get(proc.spawn_id) is proc:
            lost = proc.adopted
            self.feed(Exited(proc.spawn_id, None if lost else code, None if lost else sig, lost=lost))

    def exit(self, spawn_id: int, code: int | None = 0, sig: int | None = None) -> None:
        self.exit_process(self.by_spawn[spawn_id], code, sig)

    def ready(self, spawn_id: int) -> None:
        self.by_spawn[spawn_id].ready = True
        self.feed(Ready(spawn_id))

    def ready_all(self) -> None:
        """Every starting instance says it is ready."""
        starting = {i.spawn_id for i in self.core.view.snapshot().instances if i.state is State.STARTING}
        for sid in sorted(starting):
            proc = self.by_spawn.get(sid)
            if proc is not None and proc.alive:
                self.ready(sid)

    def live(self) -> list[Proc]:
        return [p for p in self.alive.values() if not p.stray]

    # -- time ---------------------------------------------------------------------------------

    def at(self, when: float, run: Callable[[], None]) -> None:
        heapq.heappush(self._queue, _Item(when, next(self._seq), run))

    def advance_to(self, when: float) -> None:
        """Run every scheduled occurrence and core deadline up to ``when``, in time order."""
        while True:
            deadline = self.core.next_deadline()
            scheduled = self._queue[0].when if self._queue else None
            candidates = [t for t in (deadline, scheduled) if t is not None and t <= when]
            if not candidates:
                break
            self.now = max(self.now, min(candidates))
            if scheduled is not None and scheduled <= self.now:
                heapq.heappop(self._queue).run()
            else:
                self.feed(DeadlineReached())
        self.now = max(self.now, when)

    def advance(self, seconds: float) -> None:
        self.advance_to(self.now + seconds)

    # -- commands and what the core shows --------------------------------------------------

    def command(self, verb: Verb | str, *targets: str, timeout: float | None = 60.0, **kw: object) -> object:
        rid = ("r", next(self._requests))
        self.feed(CommandReceived(rid, Verb(verb), tuple(targets), timeout=timeout, **kw))  # type: ignore[arg-type]
        return rid

    def status(self) -> dict[str, dict[str, object]]:
        """`status --json`'s apps, by name."""
        return {a["name"]: a for a in self.core.view.status(self.now)["apps"]}  # type: ignore[index, union-attr]

    def slots(self, name: str = "web") -> list[dict[str, object]]:
        """The app's active instances in `status`, by index."""
        return [i for i in self.status()[name]["instances"] if i["role"] != "spare"]  # type: ignore[attr-defined, index]

    def spares(self, name: str = "web") -> list[dict[str, object]]:
        """The app's warm spares in `status`."""
        return [i for i in self.status()[name]["instances"] if i["role"] == "spare"]  # type: ignore[attr-defined, index]

    def slot_sids(self, name: str = "web") -> list[int]:
        """The spawn ids of an app's serving instances, by index (None: no process)."""
        return [self._sid_of(i["pid"]) for i in self.slots(name)]  # type: ignore[misc]

    def _sid_of(self, pid: int | None) -> int | None:
        proc = self.procs.get(pid) if pid is not None else None
        return proc.spawn_id if proc is not None else None

    def published(self, kind: str) -> list[dict[str, object]]:
        return [e for e in self.events if e["type"] == kind]

    # -- the daemon dies, another takes over ------------------------------------------------

    def restart_daemon(self, cfg: Config | None = None) -> None:
        """The core is lost; a new one adopts what the last checkpoint and the live processes say.

        As the real shell does: each checkpointed instance with its process if that still
        runs, and live processes no checkpoint names (spawned after it) as strays.
        """
        if cfg is not None:
            self.config = cfg
        snapshot, self.checkpoint = self.checkpoint, None
        self._checkpoint_due = None
        self.core = Core(self.config, random.Random(self.rng.random()))
        self.by_spawn.clear()
        named: set[int] = set()
        by_old_spawn = {p.spawn_id: p for p in self.procs.values() if p.alive and not p.stray}
        adopted = []
        for i in snapshot.instances if snapshot is not None else ():
            proc = by_old_spawn.get(i.spawn_id) if i.spawn_id is not None else None
            if proc is not None:
                named.add(proc.pid)
            adopted.append(Adopted(i.app, i.index, i.generation, i.state, proc.pid if proc else None, i.restarts,
                                   i.failures, age=self.now - (i.spawned_at or self.now),
                                   running_for=None if i.running_since is None else self.now - i.running_since,
                                   role=i.role, last_exit=i.last_exit))
        for proc in self.live():
            if proc.pid not in named:
                adopted.append(Adopted(proc.app.name, proc.index, None, State.RUNNING, proc.pid,
                                       age=self.now - proc.started_at, running_for=0.0))
        for proc in self.live():
            proc.spawn_id = -proc.pid  # known to no core until an Adopt names it
        apps = dict(snapshot.apps) if snapshot is not None else {}
        self.feed(Recovered(apps, tuple(adopted)))
        self.feed(DaemonStarted())


class BeatingShell(FakeShell):
    """Fake workers that say ready `ready_after` after their spawn (unless their index is in
    `never_ready`), then beat every `beat` until their spawn id is in `paused`, and exit
    `exit_after` after their stop signal (unless `exit_on_stop` is off)."""

    def __init__(self, cfg: Config, ready_after: float, beat: float, exit_after: float) -> None:
        super().__init__(cfg)
        self.ready_after, self.beat_every, self.exit_after = ready_after, beat, exit_after
        self.paused: set[int] = set()  # spawn ids that no longer beat (hung)
        self.never_ready: set[int] = set()  # indexes whose new workers never say ready
        self.exit_on_stop = True

    def on_spawn(self, action: Spawn) -> None:
        super().on_spawn(action)
        proc = self.by_spawn[action.spawn_id]
        if action.index not in self.never_ready:
            self.at(self.now + self.ready_after, lambda: self._ready(proc))

    def _ready(self, proc: Proc) -> None:
        if proc.alive and self.by_spawn.get(proc.spawn_id) is proc:
            self.ready(proc.spawn_id)
            self._beat(proc)

    def _beat(self, proc: Proc) -> None:
        if proc.alive and proc.spawn_id not in self.paused:
            self.core.beat(proc.spawn_id, None, self.now)
            self.at(self.now + self.beat_every, lambda: self._beat(proc))

    def on_stop_signal(self, proc: Proc, sig: int) -> None:
        if self.exit_on_stop:
            self.at(self.now + self.exit_after, lambda: self.exit_process(proc, 0, None))
