"""Deterministic simulation of the core: random fault schedules on the fake shell, with a fake clock.

Fake processes crash at random, ignore their stop signal, hang (stop
beating), bloat past max_memory, fork past max_processes, answer a drain
request; spawns fail; operators stop, start, restart, scale and reload
(by name, and with changed configs: code that crashes on start, new counts,
settings applied in place, apps added and removed); the daemon itself
dies and a new core adopts what the last checkpoint and the live
processes say. After every event the invariants below are checked, using
only what the core says (actions, published events, replies, its view).

Safety: every live process belongs to exactly one instance and every
instance with a process has exactly one; states agree with processes;
`live_count` is right; a rollout never has more new instances starting
than its surge; code that crashes on start never replaces a working
instance; a backoff delay lies within its bounds; a stop ends within
stop_timeout plus the kill; a hang or memory restart is never taken
against a process that was beating, or on a spike.

Disruption budget: the slots of a local app that a restart the core decided
on (hung, memory, max_processes, a reload's stop-first step) took out of
`running` never number more than its max_unavailable at once (counted
from the state events and the view, not from what the core says of its
budget); a restart held by the budget is said so (a `budget` event, and
`waiting` in status) and only while the app's budget is spent; with
faults stopped, nothing waits.

Liveness: no more than max_restarts automatic restarts in any window
before `failed`; a hung process gets its stop signal within
heartbeat_timeout; a tree over max_memory for the confirming samples is
replaced, and one over max_processes is killed at once (each unless, and
until, the budget holds it); every command is
answered by its timeout; every drain ends; with faults stopped, every app
converges to its count.

Cluster (one schedule in CLUSTER_EVERY): a `[cluster]` with a "cluster" app,
an "every-node" app and a singleton; the fake agent sends random placement
snapshots (`Assigned`: subsets of indexes, held slots, increasing tokens),
renews the lease every TTL/3 (some renewals are skipped, etcd goes away for a
while: the fence deadline passes), loses the lease, publishes news; after a
fence it sends a fresh snapshot before the renewal, as the real agent does.
Checked: nothing of a cluster app starts before the first snapshot; a
singleton never gets a `Spawn` while the node is fenced, and its
`fencing_deadline` is the fence deadline; every `Spawn` of a cluster app has
the token the last snapshot gave its index, and an index's tokens never go
down; a live singleton runs the token of its slot; every renewal extends the
fence of every live singleton; at a fence (deadline passed, or `LeaseLost`)
every singleton process is told to stop at once and is gone within the grace
and the kill; two processes of one singleton never run at once; with faults
stopped, the node runs exactly the slots placed on it (the singleton only
while not fenced), each with its token, and a last fence stops only the
singleton.

KNOWN_BUGS names bugs of the core the schedules step around (or do not check)
for now; test_core_simulation.py checks that each is still there.
"""

from __future__ import annotations

import dataclasses
import random
from dataclasses import dataclass, field
from pathlib import Path

from fakeshell import KILL_LATENCY, FakeShell, Proc, config

from supervise.config.model import (
    AppConfig,
    BackoffConfig,
    ClusterConfig,
    Config,
    CrashLoopConfig,
    MaxUnavailable,
    Placement,
    Readiness,
    Restart,
)
from supervise.core import (
    Action,
    CommandReceived,
    Drained,
    Event,
    Ready,
    Recovered,
    Reply,
    Role,
    Sampled,
    ShutdownRequested,
    Spawn,
    Spawned,
    Verb,
)
from supervise.core.actions import ExtendFence, ScaleCluster
from supervise.core.events import Assigned, ClusterNews, LeaseLost, LeaseRenewed
from supervise.core.instance import MEMORY_HYSTERESIS, State
from supervise.core.policy import backoff_bounds
from supervise.core.views import InstanceSnapshot, Snapshot

BEAT_EVERY = 0.45
SAMPLE_EVERY = 0.5
LIMIT = 1000  # max_memory of the apps that have one
MAX_PROCESSES = 8
EPSILON = 1e-6
CRASH_WINDOW = 30.0
REQUESTED_STOPS = ("stopped", "reload", "fenced")  # reasons of stops asked for, which restart nothing by themselves
DISRUPTIONS = ("hung", "memory", "processes", "reload")  # stops the budget paces (reload: a stop-first step)
BUDGETS = (MaxUnavailable(), MaxUnavailable(1, percent=False), MaxUnavailable(2, percent=False),
           MaxUnavailable(50, percent=True))
CLUSTER_EVERY = 5  # one schedule in this many runs in a cluster
CLUSTER_APPS = ("spread", "agent", "leader")  # placement "cluster", "every-node", and a singleton
KNOWN_BUGS: frozenset[str] = frozenset()
"""Bugs of the core the schedules step around, by name (none now). Found and fixed so far, each still named
in a branch below so that its check can be switched off to look at it again: "fresh-core-singletons",
"stray-singleton-token", "singleton-overlap", "held-successor-token", "cluster-app-removal",
"cluster-depends-on"."""


class InvariantViolated(AssertionError):
    pass


@dataclass(eq=False)
class SimProc(Proc):
    ignores_term: bool = False
    hung: bool = False
    broken: bool = False  # its code crashes at start
    rss: int = 100
    processes: int = 1
    last_beat: float = 0.0
    adopted_at: float = 0.0
    last_stop_signal: float | None = None
    heartbeat_timeout: float | None = None  # as the core that watches it has it
    over: int = 0  # consecutive samples over max_memory delivered to the core
    memory_due: float | None = None  # by then its replacement must be under way
    kill_due: float | None = None  # over max_processes: killed by then
    token: int | None = None  # the fencing token it was spawned with
    may_run_until: float | None = None  # a singleton: its fencing deadline, as spawned or last extended
    token_unknown: bool = False  # adopted without a recorded token: the core does not know it
    fence_due: float | None = None  # a singleton alive at a fence: gone by then


@dataclass
class Restarts:
    """Automatic restarts of one slot since its breaker last closed (by what the events show)."""

    times: list[float] = field(default_factory=list)
    running_since: float | None = None


def broken(app: AppConfig) -> AppConfig:
    return dataclasses.replace(app, command=(*app.command, "--broken"))


def is_broken(app: AppConfig) -> bool:
    return app.command[-1] == "--broken"


class Simulation(FakeShell):
    def __init__(self, seed: int, cfg: Config, known_bugs: frozenset[str] = KNOWN_BUGS) -> None:
        super().__init__(cfg, seed)
        self.known_bugs = known_bugs
        self.faults = True
        self.spawn_fail_rate = 0.05
        self.checkpoint_rate = 0.9  # some checkpoints are lost: adoption then finds strays
        self.history: list[str] = []  # the schedule so far, to print when an invariant fails
        self.sent: dict[object, float] = {}  # request id -> reply due by
        self.awaiting: dict[object, float] = {}  # the same, for those not answered yet
        self.restarts: dict[str, Restarts] = {}
        self.backoff_since: dict[str, tuple[float, float, float]] = {}  # name -> (since, low, high)
        self.commanded_at: float | None = None  # when the operator last sent a command
        # Apps waiting for their dependencies, as of the last check; before the start, every app that has any.
        self.waiting: dict[str, object] = {n: a.depends_on for n, a in cfg.apps.items() if a.depends_on}
        self.maybe_waiting = True  # some app may wait (after a start, a restart, an app added)
        self.draining = False
        self.states: dict[int, State] = {}  # by spawn id, as of the last check
        self.instances: tuple[InstanceSnapshot, ...] = ()  # as of the last check
        self.tracked: dict[int, Proc] = {}  # live processes by spawn id, as of the last check
        self.stop_timeouts = {name: a.stop_timeout for name, a in cfg.apps.items()}  # the longest each app had
        self.max_restarts = {name: a.crash_loop.max_restarts for name, a in cfg.apps.items()}  # the highest
        # Cluster: the fake agent's side (what the leader placed here, the lease) ...
        self.cluster: ClusterConfig | None = cfg.cluster
        self.grace = cfg.cluster.fence_margin / 2 if cfg.cluster is not None else 0.0
        self.placed: dict[str, dict[int, int]] = {}  # the leader's snapshot for this node: app -> index -> token
        self.held: dict[str, frozenset[int]] = {}
        self.last_token = 0  # tokens come from etcd revisions: they only grow
        self.etcd_down_until = 0.0  # no renewal before then
        self.skip_renewals = 0  # a pause: that many renewals do not happen
        self.spawned_tokens: dict[tuple[str, int], int] = {}  # the highest token each slot was spawned with
        self.first_core = True  # no daemon restart yet: nothing was adopted
        self.events_at_exit: int | None = None  # how many events were published when the daemon exited
        self.adopting = False
        self._recorded_fences: list[int | None] | None = None  # of the checkpoint being adopted
        # The budget: processes whose restart the core holds (pid -> reason), and the slots of each local app a
        # restart decided on took out of service (app -> slot name -> spawn id), until they run again.
        self.budget_held: dict[int, str] = {}
        self.disrupted: dict[str, dict[str, int]] = {}
        self._reset_core_model()

    def _reset_core_model(self) -> None:
        """... and what the current core has been told: a new core has had no snapshot and no lease."""
        self.core_assigned = False
        self.core_tokens: dict[tuple[str, int], int] = {}  # the last token the core was given for each slot
        self.core_slots: dict[str, set[int]] = {}  # the slots of the last snapshot
        self.fence_at: float | None = None  # of the last renewal; None: fenced
        self.core_renewed = False  # this core has had a renewal: it is bound by fencing

    def note(self, text: str) -> None:
        self.history.append(f"{self.now:8.3f} {text}")

    # -- the fake OS -------------------------------------------------------------------

    def on_spawn(self, action: Spawn) -> None:
        if self.maybe_waiting:  # the core has decided: its status now is what it acts on
            app = self.status().get(action.app.name, {})
            self.check("waiting_for" not in app, f"{action.app.name} spawned while it waits for its dependencies")
        self._check_spawn(action)
        if self.faults and self.rng.random() < self.spawn_fail_rate:
            self.fail_spawn(action)
            return
        proc = SimProc(next(self._pids), action.spawn_id, action.app, action.index, self.now,
                       ignores_term=self.faults and self.rng.random() < 0.2, broken=is_broken(action.app),
                       last_beat=self.now, heartbeat_timeout=action.app.heartbeat_timeout,
                       token=action.fencing_token, may_run_until=action.fencing_deadline, spare=action.spare)
        self.add(proc)
        self.feed(Spawned(action.spawn_id, proc.pid))
        if proc.broken:
            self.at(self.now + self.rng.uniform(0.01, 0.3), lambda: self.exit_process(proc, 1, None))
        elif action.app.readiness is Readiness.HEARTBEAT:
            late = self.faults and self.rng.random() < 0.1
            delay = action.app.start_timeout * 1.5 if late else self.rng.uniform(0.01, 0.5)
            self.at(self.now + delay, lambda: self._ready(proc))
        self.at(self.now + BEAT_EVERY, lambda: self._beat(proc))

    def _ready(self, proc: SimProc) -> None:
        if proc.alive and not proc.hung and not proc.stray and self.by_spawn.get(proc.spawn_id) is proc:
            proc.ready, proc.last_beat = True, self.now
            self.feed(Ready(proc.spawn_id))

    def _beat(self, proc: SimProc) -> None:
        if not proc.alive or proc.hung:
            return
        if self.by_spawn.get(proc.spawn_id) is proc:
            proc.last_beat = self.now
            # The hot path, as the shell takes it: equivalent to handle(Beat), which acts on nothing.
            self.core.beat(proc.spawn_id, {"inflight": 1}, self.now)
        self.at(self.now + BEAT_EVERY, lambda: self._beat(proc))

    def on_stop_signal(self, proc: Proc, sig: int) -> None:
        assert isinstance(proc, SimProc)
        proc.last_stop_signal = self.now
        healthy = self.states.get(proc.spawn_id) is State.RUNNING and not proc.hung and not proc.over
        roles = {i.spawn_id: i.role for i in self.core.view.snapshot().instances} if self.draining else {}
        if healthy and roles.get(proc.spawn_id) is Role.SLOT:
            # The drain stops a serving instance only once nothing that needs it runs (a health
            # check may stop an unhealthy one any time: that is not the drain's order).
            dependents = {n for n, a in self.config.apps.items() if proc.app.name in a.depends_on}
            alive = sorted(p.name for p in self.live() if p.app.name in dependents)
            self.check(not alive, f"{proc.name} stopped while {alive}, which depend on it, still run")
        if not proc.ignores_term:
            self.at(self.now + self.rng.uniform(0, 2.0), lambda: self.exit_process(proc, 0, None))

    def on_drain(self, proc: Proc) -> None:
        if self.rng.random() < 0.5 and not proc.hung:  # type: ignore[attr-defined]
            # It finishes its in-flight work and says so; the core then stops it at once.
            self.at(self.now + self.rng.uniform(0, 0.3), lambda: self._drained(proc))

    def _drained(self, proc: Proc) -> None:
        if proc.alive and self.by_spawn.get(proc.spawn_id) is proc:
            self.feed(Drained(proc.spawn_id))

    def on_resample(self, after: float) -> None:
        self.at(self.now + after, lambda: self.sample(reschedule=False))

    def sample(self, reschedule: bool = True) -> None:
        live = [p for p in self.live() if isinstance(p, SimProc) and self.by_spawn.get(p.spawn_id) is p]
        rss = {p.spawn_id: p.rss for p in live}
        processes = {p.spawn_id: p.processes for p in live}
        for p in live:
            if self.states.get(p.spawn_id) not in (State.STARTING, State.RUNNING):
                p.over = 0
                continue
            limit = p.app.max_processes
            if limit is not None and p.processes > limit and p.kill_due is None:
                p.kill_due = self.now + EPSILON
            if p.app.max_memory is not None and p.rss > p.app.max_memory:
                p.over += 1
                if p.over >= MEMORY_HYSTERESIS and p.memory_due is None:
                    # Replaced first (a successor must be ready or fail) or stopped now.
                    p.memory_due = self.now + p.app.start_timeout + _max_stop(self, p) + KILL_LATENCY + 1.0
            else:
                p.over = 0
        self.feed(Sampled(rss, processes))
        if reschedule:
            self.at(self.now + SAMPLE_EVERY, self.sample)

    # -- what the core publishes --------------------------------------------------------

    def on_publish(self, event: dict[str, object]) -> None:
        kind = event["type"]
        if kind == "replaced":
            proc = self.procs.get(event["pid"])  # type: ignore[arg-type]
            self.check(proc is not None and not proc.broken,  # type: ignore[union-attr]
                       f"code that crashes on start replaced a working {event['name']}")
            self.check(proc is not None and (proc.ready or proc.app.readiness is Readiness.NONE),
                       f"{event['name']} promoted before it was ready")
            self.restarts.pop(str(event["name"]), None)  # a new instance in the slot: a new breaker
        elif kind == "state":
            self._state_event(event)
            self._disruption(event)
        elif kind == "budget":
            self._budget_event(event)

    def _disruption(self, event: dict[str, object]) -> None:
        """A serving instance of a local app taken out of running by a restart the core decided on."""
        if event["from"] != "running" or event["to"] != "stopping" or event.get("reason") not in DISRUPTIONS:
            return
        cfg = self.config.apps.get(str(event["app"]))
        proc = self.procs.get(event["pid"])  # type: ignore[arg-type]
        if cfg is None or cfg.clustered or proc is None:
            return
        roles = {i.spawn_id: i.role for i in self.core.view.snapshot().instances}
        if roles.get(proc.spawn_id) is Role.SLOT:
            self.disrupted.setdefault(cfg.name, {})[str(event["name"])] = proc.spawn_id

    def _budget_event(self, event: dict[str, object]) -> None:
        """A restart held, or no longer: the held ones are excused their deadlines until released."""
        what, pid = event["event"], event["pid"]
        self.note(f"budget: {event['name']} {what} ({event['reason']}, {event['unavailable']} of "
                  f"{event['max_unavailable']} out)")
        if what == "held":
            self.check(event["unavailable"] >= event["max_unavailable"],  # type: ignore[operator]
                       f"{event['name']} held with room in the budget: {event}")
            cfg, target = self.config.apps.get(str(event["app"])), self._target(str(event["app"]))
            if cfg is not None and not cfg.clustered and target is not None:
                self.check(event["max_unavailable"] == cfg.max_unavailable.of(target),
                           f"{event['app']}: a budget of {event['max_unavailable']}, its max_unavailable "
                           f"{cfg.max_unavailable} of {target} instances is {cfg.max_unavailable.of(target)}")
            if pid is not None:
                self.budget_held[pid] = str(event["reason"])  # type: ignore[index]
            return
        if pid is None:
            return
        self.budget_held.pop(pid, None)  # type: ignore[call-overload]
        proc = self.procs.get(pid)  # type: ignore[arg-type]
        if not isinstance(proc, SimProc):
            return
        if what == "released" and proc.memory_due is not None:  # its deadlines run from now
            proc.memory_due = self.now + proc.app.start_timeout + _max_stop(self, proc) + KILL_LATENCY + 1.0
        else:  # recovered; or dropped: stopped by other means (an operator's stop), its stop's bound applies
            proc.memory_due = proc.kill_due = None

    def _target(self, app: str) -> int | None:
        record = self.core.view.snapshot().apps.get(app)
        return None if record is None else record.target

    def _state_event(self, event: dict[str, object]) -> None:
        name, before, after = str(event["name"]), event["from"], event["to"]
        # A spare promoted into the slot: the slot's restart, in one event (from the slot's state to running).
        promoted = event.get("promoted") is not None
        if promoted:
            self.restarts.pop(str(event["promoted"]), None)  # the next spare of that number is a new instance
        track = self.restarts.setdefault(name, Restarts())
        exit_ = event.get("exit")
        if exit_ is not None and track.running_since is not None:
            cfg = self.config.apps.get(name.partition(":")[0])
            if cfg is not None and self.now - track.running_since >= cfg.backoff.reset_after:
                track.times.clear()  # a healthy run closes the breaker
        if after == "running":
            track.running_since = self.now
        if before in ("stopped", "failed") and not promoted:
            track.times.clear()  # a launch from stopped, or the half-open try, starts afresh
        if exit_ is not None and after != "running":
            track.running_since = None
        restarted = after in ("starting", "backoff") or promoted
        if before == "failed" and promoted:
            track.times.clear()  # the half-open try
        elif promoted and exit_ is None:  # after a backoff: the restart counted at the exit
            restarted = False
        if isinstance(exit_, dict) and exit_["reason"] not in REQUESTED_STOPS and restarted:
            # The instance may run an older config than the file's (a failed rollout): the most
            # any config of the app allowed is the bound; all use the same window.
            limit = self.max_restarts.get(name.partition(":")[0], 0)
            track.times.append(self.now)
            window = [t for t in track.times if t > self.now - CRASH_WINDOW]
            self.check(len(window) <= limit, f"{name}: {len(window)} automatic restarts in {CRASH_WINDOW}s, "
                                             f"more than max_restarts = {limit}, and not failed")
        if isinstance(exit_, dict) and exit_["reason"] not in REQUESTED_STOPS and (after == "starting" or promoted):
            failures = self._failures(name, State.RUNNING if promoted else State.STARTING)
            self.check(failures is None or failures <= 1,  # backoff_bounds: only the first restart is at once
                       f"{name} restarted at once after {failures} failures in a row: no backoff")
        if after == "backoff":
            self.backoff_since[name] = (self.now, *self._backoff_bounds(name))
        elif before == "backoff":
            since, low, high = self.backoff_since.pop(name, (self.now, 0.0, 1e9))
            if (after == "starting" or promoted) and self.commanded_at != self.now:  # not an operator's start
                waited = self.now - since
                self.check(low - EPSILON <= waited <= high + EPSILON,
                           f"{name}: backoff of {waited:.3f}s outside [{low:.3f}, {high:.3f}]")

    def _failures(self, name: str, state: State) -> int | None:
        """Consecutive failures of the slot `name` in `state`, as the core's view says."""
        app_name, _, index = name.partition(":")
        if not index.isdigit():
            return None  # a spare: its own backoff, not a slot's
        slot = [i for i in self.core.view.snapshot().instances
                if i.app == app_name and i.index == int(index) and i.state is state and i.role is Role.SLOT]
        return slot[0].failures if slot else None

    def _backoff_bounds(self, name: str) -> tuple[float, float]:
        cfg = self.config.apps.get(name.partition(":")[0])
        failures = self._failures(name, State.BACKOFF)
        if cfg is None or failures is None:
            return 0.0, 1e9
        return backoff_bounds(cfg.backoff, failures)

    # -- invariants ---------------------------------------------------------------------

    def check(self, ok: bool, message: str) -> None:
        if not ok:
            raise InvariantViolated(f"seed {self.seed} at t={self.now:.3f}: {message}\n"
                                    "last steps:\n" + "\n".join(self.history[-25:]))

    def after_feed(self, event: Event, changed: bool) -> None:
        if changed or not self.instances:
            self.check_invariants()
        else:  # nothing changed: only what time alone can break
            self._check_health(self.instances, self.tracked)
            self._check_replies()
            if self.cluster is not None:
                self._check_cluster()

    def check_invariants(self) -> None:
        view = self.core.view
        snapshot = view.snapshot()
        instances = self.instances = snapshot.instances
        live: dict[int, Proc] = {}
        for p in self.alive.values():
            if not p.stray:
                self.check(self.by_spawn.get(p.spawn_id) is p, f"a live process no core tracks: {p.name}")
                live[p.spawn_id] = p
        self.states = {i.spawn_id: i.state for i in instances if i.spawn_id is not None}
        self.check(len(self.states) == sum(1 for i in instances if i.spawn_id is not None),
                   "two instances share a spawn id")
        self.check(live.keys() == self.states.keys(),
                   f"processes and instances disagree: live {sorted(live)} vs tracked {sorted(self.states)}")
        self.check(view.live_count() == len(self.states), "live_count disagrees with the instances that have a process")
        for inst in instances:
            if inst.state in (State.BACKOFF, State.FAILED, State.STOPPED):
                self.check(inst.spawn_id is None, f"{inst.app}:{inst.index} is {inst.state} with a process")
            elif inst.state is State.RUNNING:
                self.check(inst.spawn_id is not None, f"{inst.app}:{inst.index} is running without a process")
        self.tracked = live
        if self.maybe_waiting:
            self._check_dependencies()
        self._check_surge(snapshot)
        self._check_budget(snapshot)
        self._check_health(instances, live)
        self._check_replies()
        if self.cluster is not None:
            self._check_cluster()

    def _check_replies(self) -> None:
        for rid in [rid for rid in self.awaiting if rid in self.replies]:
            del self.awaiting[rid]
        if self.awaiting:
            rid, due = min(self.awaiting.items(), key=lambda item: item[1])
            self.check(self.now <= due + EPSILON, f"command {rid} not answered by {due}")

    def _check_dependencies(self) -> None:
        """An app that stops waiting starts only once every app it depends on is up (a drain
        ends all waiting, and starts nothing)."""
        if self.draining:
            self.waiting, self.maybe_waiting = {}, False
            return
        status = self.status()
        waiting = {name: app["waiting_for"] for name, app in status.items() if "waiting_for" in app}
        for name in set(self.waiting) - set(waiting):
            cfg = self.config.apps.get(name)
            down = [d for d in (cfg.depends_on if cfg else ()) if d in status and not _up(status[d])]
            self.check(name not in status or not down, f"{name} started before {down} were up")
        self.waiting = waiting
        self.maybe_waiting = bool(waiting)

    def _check_surge(self, snapshot: Snapshot) -> None:
        """A rollout's new instances (the app's generation, beside a slot of an older one) within surge."""
        successors = [i for i in snapshot.instances if i.role is Role.SUCCESSOR]
        if not successors:
            return
        slots = {(i.app, i.index): i.generation for i in snapshot.instances if i.role is Role.SLOT}
        for name, record in snapshot.apps.items():
            new = [i for i in successors if i.app == name and i.generation == record.generation
                   and slots.get((name, i.index), record.generation) < record.generation]
            cfg = self.config.apps.get(name)
            if cfg is not None:
                self.check(len(new) <= max(cfg.surge(), 1), f"{name}: {len(new)} new instances at once, past surge")

    def _check_budget(self, snapshot: Snapshot) -> None:
        """The slots a restart decided on took out of service, of each local app: within its budget."""
        if self.draining or not self.disrupted:
            return
        slots = {f"{i.app}:{i.index}": i for i in snapshot.instances if i.role is Role.SLOT}
        for name, out in list(self.disrupted.items()):
            for slot in [s for s in out if s not in slots or slots[s].state in (State.RUNNING, State.STOPPED)]:
                del out[slot]  # serving again (or stopped for good, or gone): no longer out
            cfg, record = self.config.apps.get(name), snapshot.apps.get(name)
            if not out or cfg is None or record is None:
                self.disrupted.pop(name, None)
                continue
            budget = cfg.max_unavailable.of(record.target)
            self.check(len(out) <= budget, f"{name}: {sorted(out)} out of service by restarts decided on at once, "
                                           f"past max_unavailable {cfg.max_unavailable} (= {budget})")

    def _check_health(self, instances: tuple[InstanceSnapshot, ...], live: dict[int, Proc]) -> None:
        states = {i.spawn_id: i for i in instances if i.spawn_id is not None}
        for sid, proc in live.items():
            assert isinstance(proc, SimProc)
            if proc.pid in self.budget_held:
                continue  # its restart waits for the budget (checked to be spent when it was held)
            inst = states[sid]
            timeout = proc.heartbeat_timeout
            signalled = proc.last_stop_signal is not None or proc.killed
            if proc.hung and inst.state is State.RUNNING and timeout is not None and not signalled:
                due = max(proc.last_beat, inst.running_since or 0.0, proc.adopted_at) + timeout
                self.check(self.now <= due + EPSILON,
                           f"{proc.name} hung (last beat {proc.last_beat:.3f}) and not stopped by {due:.3f}")
            if proc.memory_due is not None and not signalled:
                self.check(self.now <= proc.memory_due, f"{proc.name} over max_memory and never replaced")
            if proc.kill_due is not None and not proc.killed:
                self.check(self.now <= proc.kill_due, f"{proc.name} over max_processes and not killed")

    def exit_process(self, proc: Proc, code: int | None, sig: int | None) -> None:
        if proc.alive and isinstance(proc, SimProc) and proc.last_stop_signal is not None and not proc.stray:
            if self.by_spawn.get(proc.spawn_id) is proc:
                bound = proc.last_stop_signal + _max_stop(self, proc) + KILL_LATENCY
                self.check(self.now <= bound + EPSILON, f"{proc.name}: a stop took past stop_timeout and the kill")
        super().exit_process(proc, code, sig)

    # -- cluster: what the core must do with the lease and the snapshots ------------------------

    def _check_spawn(self, action: Spawn) -> None:
        app, key = action.app, (action.app.name, action.index)
        name = f"{app.name}:{action.index}"
        if not app.clustered:
            self.check(action.fencing_token is None and action.fencing_deadline is None,
                       f"{name}, of a local app, spawned with a fencing token or deadline")
            return
        if self.first_core:  # no daemon restart yet, nothing adopted: only a snapshot starts anything
            self.check(self.core_assigned, f"{name} spawned before the node's first snapshot")
        if not app.singleton:
            self.check(action.fencing_deadline is None, f"{name}, not a singleton, spawned with a fence deadline")
        elif not self.core_renewed and "fresh-core-singletons" in self.known_bugs:
            return  # an adopted one, restarted by a core that never had a lease, with the token it had
        else:
            self.check(not self._fenced(), f"{name}, a singleton, spawned while the node is fenced")
            self.check(action.fencing_deadline == self.fence_at,
                       f"{name} spawned with fencing_deadline {action.fencing_deadline}, fence at {self.fence_at}")
        token = self.core_tokens.get(key)
        if "held-successor-token" in self.known_bugs and action.index not in self.core_slots.get(app.name, ()):
            token = None
        if token is not None:  # (before the new core's first snapshot: the token its checkpoint recorded)
            self.check(action.fencing_token == token,
                       f"{name} spawned with token {action.fencing_token}, placed with {token}")
            self.check(token >= self.spawned_tokens.get(key, 0),
                       f"{name} spawned with token {token}, after a spawn with {self.spawned_tokens.get(key)}")
            self.spawned_tokens[key] = token

    def _singletons(self) -> list[SimProc]:
        """The live singleton processes the current core watches."""
        return [p for p in self.alive.values() if isinstance(p, SimProc) and p.app.singleton and not p.stray
                and self.by_spawn.get(p.spawn_id) is p]

    def _fenced(self) -> bool:
        """Whether the node is fenced now; a fence deadline that has passed is noted as a fence."""
        if self.fence_at is not None and self.now >= self.fence_at:
            at, self.fence_at = self.fence_at, None
            self.note(f"the fence deadline {at:.3f} has passed")
            self._fence_obligations(at)
        return self.fence_at is None

    def _fence_obligations(self, at: float) -> None:
        """Every singleton alive at a fence at `at`: told to stop at once, gone after the grace and the kill."""
        due = at + self.grace + KILL_LATENCY
        for p in self._singletons():
            p.fence_due = due if p.fence_due is None else min(p.fence_due, due)

    def _check_cluster(self) -> None:
        fenced = self._fenced()
        seen: set[tuple[str, int]] = set()
        for p in self._singletons():
            key = (p.app.name, p.index)
            stopping = p.last_stop_signal is not None or p.killed
            if p.fence_due is not None:
                self.check(stopping or self.adopting, f"{p.name}, a singleton, not told to stop at the fence")
                self.check(self.now <= p.fence_due + EPSILON,
                           f"{p.name}, a singleton, alive past the fence's grace and the kill ({p.fence_due:.3f})")
            if "singleton-overlap" not in self.known_bugs:
                self.check(key not in seen, f"two processes of the singleton {p.name} at once")
            seen.add(key)
            if fenced or stopping or p.index not in self.core_slots.get(p.app.name, ()):
                continue
            if (p.token_unknown or p.token is None) and "stray-singleton-token" in self.known_bugs:
                continue  # (one spawned without a token: by a new core before its first snapshot)
            self.check(p.token == self.core_tokens[key],
                       f"{p.name}, a singleton, runs token {p.token}; its slot has {self.core_tokens[key]}")

    # -- cluster: the fake agent ----------------------------------------------------------------

    def carry_out(self, actions: list[Action]) -> None:
        super().carry_out(actions)
        if self.exit_code is not None and self.events_at_exit is None:
            self.events_at_exit = len(self.events)
        for action in actions:
            if isinstance(action, ScaleCluster):  # the shell records it in etcd, then replies
                cfg = self.config.apps.get(action.app)
                self.check(cfg is not None and cfg.clustered, f"ScaleCluster of {action.app}, not a cluster app")
                self.replies[action.request_id] = Reply(action.request_id, True, result={
                    "app": action.app, "instances": action.count, "cluster": True})

    def feed(self, event: Event) -> list[Action]:
        if isinstance(event, Recovered) and self._recorded_fences is not None:
            event = self._with_tokens(event, self._recorded_fences)
            self.adopting = True  # until DaemonStarted, which tells the adopted ones that were stopping
            try:
                return super().feed(event)
            finally:
                self.adopting = False
        return super().feed(event)

    def _with_tokens(self, event: Recovered, fences: list[int | None]) -> Recovered:
        """As the real shell: each checkpointed instance with the token recorded; a worker no
        checkpoint names (found by its environment) without one."""
        found = []
        for n, adopted in enumerate(event.instances):
            if n < len(fences):
                adopted = dataclasses.replace(adopted, fence=fences[n])
            elif adopted.pid is not None:
                proc = self.procs[adopted.pid]
                assert isinstance(proc, SimProc)
                proc.token_unknown = True
            found.append(adopted)
        return Recovered(event.apps, tuple(found))

    def new_token(self) -> int:
        self.last_token += 1
        return self.last_token

    def replan(self) -> None:
        """The leader places slots anew: some move away (some held here a while), some get new tokens."""
        rng = self.rng
        placed: dict[str, dict[int, int]] = {}
        held: dict[str, frozenset[int]] = {}
        for name in CLUSTER_APPS:
            cfg = self.config.apps.get(name)
            if cfg is None:
                continue
            old = self.placed.get(name, {})
            if cfg.singleton:
                indexes = [0] if rng.random() < 0.75 else []
            elif cfg.placement is Placement.EVERY_NODE and rng.random() < 0.7:
                indexes = list(range(cfg.instances))
            else:
                indexes = [i for i in range(cfg.instances) if rng.random() < 0.6]
            placed[name] = {i: old[i] if i in old and rng.random() < 0.8 else self.new_token() for i in indexes}
            if self.faults and not cfg.singleton:
                kept = frozenset(i for i in (set(old) | self.held.get(name, frozenset())) - set(indexes)
                                 if rng.random() < 0.4)
                if kept:
                    held[name] = kept
        self.placed, self.held = placed, held

    def assign(self, replan: bool = True) -> None:
        if replan:
            self.replan()
        slots = {name: dict(s) for name, s in self.placed.items()}
        self.core_assigned = True
        self.core_slots = {name: set(s) for name, s in slots.items()}
        self.core_tokens.update({(name, i): token for name, s in slots.items() for i, token in s.items()})
        self.note(f"assigned {slots}" + (f" held {dict(self.held)}" if self.held else ""))
        self.feed(Assigned(slots, dict(self.held)))

    def renew_tick(self) -> None:
        """The agent's keep-alive, every TTL/3: unless etcd is away or the daemon paused."""
        assert self.cluster is not None
        self.at(self.now + self.cluster.lease_ttl / 3, self.renew_tick)
        if self.now < self.etcd_down_until:
            return
        if self.skip_renewals > 0:
            self.skip_renewals -= 1
            self.note("a renewal is late")
            return
        self.renew()

    def renew(self) -> None:
        assert self.cluster is not None
        if self._fenced() or not self.core_assigned:
            # After a fence the agent reads etcd again and sends that before the renewal.
            self.assign(replan=self.faults and self.rng.random() < 0.5)
        fence_at = self.now + self.cluster.lease_ttl - self.cluster.fence_margin
        self.fence_at, self.core_renewed = fence_at, True
        self.note(f"lease renewed: fence at {fence_at:.3f}")
        actions = self.feed(LeaseRenewed(fence_at))
        extended = [a for a in actions if isinstance(a, ExtendFence)]
        self.check(all(a.until == fence_at for a in extended), f"a renewal until {fence_at} extended {extended}")
        told = {sid for a in extended for sid in a.spawn_ids}
        for p in self._singletons():
            if p.spawn_id in told:
                p.may_run_until = fence_at
            # (one spawned by this very renewal, say after a failed spawn, has the deadline already)
            self.check(p.may_run_until == fence_at, f"a renewal did not extend the fence of {p.name} "
                                                    f"(told {sorted(told)}, it has {p.spawn_id})")

    def lease_lost(self) -> None:
        if not self._fenced():
            self.fence_at = None
            self._fence_obligations(self.now)
        elif not self.core_renewed and "fresh-core-singletons" not in self.known_bugs:
            self._fence_obligations(self.now)  # a new daemon's adopted singletons: fenced all the same
        self.note("lease lost")
        self.feed(LeaseLost())

    def random_cluster_step(self) -> None:
        assert self.cluster is not None
        roll = self.rng.random()
        if roll < 0.5:
            self.assign()
        elif roll < 0.6:
            if self.now >= self.etcd_down_until:  # etcd says so: it answers
                self.lease_lost()
        elif roll < 0.75:
            self.etcd_down_until = max(self.etcd_down_until,
                                       self.now + self.rng.uniform(0.5, 2.0 * self.cluster.lease_ttl))
            self.note(f"etcd unreachable until {self.etcd_down_until:.3f}")
        elif roll < 0.9:
            self.skip_renewals = self.rng.randint(1, 3)
            self.note(f"the daemon pauses: {self.skip_renewals} renewals late")
        else:
            news = {"event": "node-lost", "node": f"n{self.rng.randint(2, 5)}"}
            before = len(self.events)
            self.feed(ClusterNews(news))
            self.check({"type": "cluster", **news} in self.events[before:], "cluster news not published")

    # -- the schedule ---------------------------------------------------------------------

    def random_step(self) -> None:
        live = [p for p in self.live() if isinstance(p, SimProc)]
        roll = self.rng.random()
        if roll < 0.3 and live:
            victim = self.rng.choice(live)
            code, sig = self.rng.choice([(1, None), (0, None), (None, 9), (None, 11)])
            self.note(f"{victim.name} exits {code} {sig}")
            self.exit_process(victim, code, sig)
        elif roll < 0.38 and live:
            victim = self.rng.choice(live)
            self.note(f"{victim.name} hangs")
            victim.hung = True
        elif roll < 0.46 and live:
            victim = self.rng.choice(live)
            victim.rss = self.rng.choice([LIMIT * 2, LIMIT // 2])
            self.note(f"{victim.name} rss {victim.rss}")
        elif roll < 0.5 and live:
            victim = self.rng.choice(live)
            victim.processes = self.rng.choice([MAX_PROCESSES * 4, 2])
            self.note(f"{victim.name} processes {victim.processes}")
        elif roll < 0.53:
            self.note("the daemon dies; a new one adopts")
            self.restart_daemon()
        elif roll < 0.6:
            self.random_reload_config()
        else:
            self.random_command()

    def restart_daemon(self, cfg: Config | None = None) -> None:
        for proc in self.live():
            assert isinstance(proc, SimProc)
            proc.adopted_at, proc.over, proc.memory_due, proc.kill_due = self.now, 0, None, None
            proc.last_stop_signal = None  # what the dead daemon asked is not the new one's to answer for
            current = self.config.apps.get(proc.app.name)  # a new core watches it with the config of now
            proc.heartbeat_timeout = current.heartbeat_timeout if current else None
        self.restarts.clear()
        self.backoff_since.clear()
        self.budget_held.clear()  # a new core holds nothing: what is still due it finds again
        self.disrupted.clear()
        self.maybe_waiting, self.waiting = True, {}  # an app with adopted instances is started already
        self.sent = {rid: due for rid, due in self.sent.items() if rid in self.replies}  # died unanswered
        self.awaiting.clear()
        self.first_core = False
        if self.cluster is not None:
            self._recorded_fences = [i.fence for i in self.checkpoint.instances] if self.checkpoint else []
            self._reset_core_model()
            for proc in self.live():
                # A singleton told to fence whose daemon dies meanwhile stops by itself: the heartbeat
                # client's guard exits it at the fence deadline, which no new daemon could know.
                due = proc.fence_due  # type: ignore[attr-defined]
                if due is not None:
                    self.at(max(self.now, due - self.grace - KILL_LATENCY),
                            lambda p=proc: self.exit_process(p, 75, None))
        super().restart_daemon(cfg)
        self._recorded_fences = None
        if self.cluster is not None and self.now >= self.etcd_down_until:
            self.renew()  # the new daemon's agent joins at once: a snapshot, then its lease

    def send(self, cmd: CommandReceived) -> None:
        self.commanded_at = self.now
        # An operator's word changes what counts (a stop overrides a hang's, a scale the budget): start over.
        touched = set(cmd.config.apps) | set(self.disrupted) if cmd.config is not None else \
            {t.partition(":")[0] for t in cmd.targets}
        for name in touched:
            self.disrupted.pop(name, None)
        for name, a in (cmd.config.apps.items() if cmd.config is not None else ()):
            self.stop_timeouts[name] = max(self.stop_timeouts.get(name, 0.0), a.stop_timeout)
            self.max_restarts[name] = max(self.max_restarts.get(name, 0), a.crash_loop.max_restarts)
        if cmd.verb in (Verb.START, Verb.RESTART):  # an operator's start closes the breaker
            for name in list(self.restarts):
                if name in cmd.targets or name.partition(":")[0] in cmd.targets:
                    del self.restarts[name]
        if cmd.timeout is not None:
            self.sent[cmd.request_id] = self.awaiting[cmd.request_id] = self.now + cmd.timeout
        self.note(f"{cmd.verb} {' '.join(cmd.targets)}" + (" (config)" if cmd.config else ""))
        self.feed(cmd)

    def random_command(self) -> None:
        apps = list(self.config.apps)
        if not apps:
            return
        name = self.rng.choice(apps)
        verb = self.rng.choice([Verb.STOP, Verb.START, Verb.RESTART, Verb.SCALE, Verb.STATUS, Verb.RELOAD])
        target = name if self.rng.random() < 0.6 else f"{name}:{self.rng.randint(0, 3)}"
        rid = ("cmd", next(self._requests))
        if verb is Verb.SCALE:
            self.send(CommandReceived(rid, verb, (name,), count=self.rng.randint(0, 4), timeout=30.0))
        else:
            self.send(CommandReceived(rid, verb, (target,), timeout=30.0))
        reply = self.replies.get(rid)
        if verb is Verb.RELOAD and reply is not None and not reply.ok:
            self.check("no instance" in str(reply.error) or "rollout to generation" in str(reply.error),
                       f"reload failed oddly: {reply.error}")

    def random_reload_config(self) -> None:
        """A changed config: new code (maybe broken), new counts, settings in place, apps added or removed."""
        apps = dict(self.config.apps)
        name = self.rng.choice(["web", "worker", "db", *(CLUSTER_APPS if self.cluster is not None else ())])
        change = self.rng.random()
        clustered = name in CLUSTER_APPS
        if name not in apps:
            apps[name] = make_cluster_app(self.rng, name, self.known_bugs) if clustered else \
                make_app(self.rng, name, deps=())
        elif change < 0.3:
            fresh = dataclasses.replace(apps[name], command=("x", f"v{self.rng.randint(2, 99)}"))
            apps[name] = broken(fresh) if self.rng.random() < 0.3 else fresh
        elif change < 0.55:
            if not apps[name].singleton:  # a singleton runs exactly 1
                apps[name] = dataclasses.replace(apps[name], instances=self.rng.randint(0, 4))
        elif change < 0.8 or (clustered and "cluster-app-removal" in self.known_bugs):
            apps[name] = dataclasses.replace(apps[name], stop_timeout=self.rng.choice([0.5, 2.0, 5.0]),
                                             crash_loop=dataclasses.replace(apps[name].crash_loop,
                                                                            max_restarts=self.rng.randint(2, 8)))
        elif len(apps) > 1:
            del apps[name]
            for other, cfg in list(apps.items()):  # nothing may depend on a removed app
                apps[other] = dataclasses.replace(cfg, depends_on=tuple(d for d in cfg.depends_on if d != name))
        self.maybe_waiting = True  # an app added waits for its dependencies
        status = self.status()
        self.waiting.update({n: a.depends_on for n, a in apps.items() if n not in status and a.depends_on})
        self.config = dataclasses.replace(self.config, apps=apps)
        self.send(CommandReceived(("config", next(self._requests)), Verb.RELOAD, config=self.config,
                                  timeout=120.0))


def _max_stop(sim: Simulation, proc: Proc) -> float:
    """A stop may use the stop_timeout the process was started with, or any one applied in place since."""
    return max(proc.app.stop_timeout, sim.stop_timeouts.get(proc.app.name, 0.0))


def make_app(rng: random.Random, name: str, deps: tuple[str, ...]) -> AppConfig:
    health = name == "web"
    return AppConfig(
        name, ("x", "v1"), Path("/"), instances=rng.randint(1, 3),
        readiness=Readiness.HEARTBEAT if health or rng.random() < 0.3 else Readiness.NONE, start_timeout=2.0,
        heartbeat_timeout=rng.choice([1.0, 2.0]) if health else None,
        max_memory=LIMIT if health or rng.random() < 0.3 else None,
        max_processes=MAX_PROCESSES if rng.random() < 0.3 else None,
        restart=rng.choice([Restart.ALWAYS, Restart.ALWAYS, Restart.ON_FAILURE]),
        stop_timeout=rng.choice([0.5, 2.0, 5.0]),
        backoff=BackoffConfig(initial=0.1, max=rng.choice([1.0, 5.0]), multiplier=2.0, jitter=0.3, reset_after=10.0),
        crash_loop=CrashLoopConfig(max_restarts=rng.randint(2, 8), window=CRASH_WINDOW, cooldown=20.0),
        listen=("127.0.0.1:8080",) if health and rng.random() < 0.5 else (),  # memory restarts start a successor
        reload_surge=rng.choice([None, 0, 1, 2]),
        depends_on=deps,
        max_unavailable=rng.choice(BUDGETS),
        ready_after=rng.choice([0.5, 1.0]),  # longer than a broken start lives: ready_after 0 cannot tell
        max_age=rng.choice([None, None, 15.0, 40.0]),
        max_age_jitter=rng.choice([0.0, 5.0]),
        # Warm spares (they need heartbeat readiness), drawn from a generator of their own so that
        # every other draw of every schedule stays as it was (the mutants' seeds were found with them).
        spares=random.Random(hash(rng.getstate()[1])).choice([0, 0, 1, 2]) if health else 0,
    )


def make_cluster_app(rng: random.Random, name: str, known_bugs: frozenset[str],
                     local: tuple[str, ...] = ()) -> AppConfig:
    """A cluster app: `spread` (placement "cluster"), `agent` ("every-node") or `leader` (a singleton)."""
    deps = () if "cluster-depends-on" in known_bugs else tuple(d for d in local if rng.random() < 0.3)
    # No max_age: a recycle may be under way whenever the placement is checked.
    app = dataclasses.replace(make_app(rng, name, deps), max_age=None)
    if name == "leader":
        return dataclasses.replace(app, placement=Placement.CLUSTER, singleton=True, instances=1)
    if name == "agent":
        return dataclasses.replace(app, placement=Placement.EVERY_NODE, instances=1)
    return dataclasses.replace(app, placement=Placement.CLUSTER, instances=3)


def clustered(seed: int) -> bool:
    """One schedule in CLUSTER_EVERY runs in a cluster; odd and even ones (the mutants' runner drains the odd)."""
    return seed % (2 * CLUSTER_EVERY) in (CLUSTER_EVERY, CLUSTER_EVERY + 1)


def make_config(rng: random.Random, cluster: bool = False, known_bugs: frozenset[str] = KNOWN_BUGS) -> Config:
    """Two or three apps, with a random acyclic depends_on graph among them (and, in a cluster, the
    cluster apps, which no app may depend on)."""
    names = ["db", "worker", "web"][: rng.randint(2, 3)]
    apps = []
    for i, name in enumerate(names):
        deps = tuple(d for d in names[:i] if rng.random() < 0.5)
        apps.append(make_app(rng, name, deps))
    if not cluster:
        return config(*apps)
    apps += [make_cluster_app(rng, name, known_bugs, tuple(names)) for name in CLUSTER_APPS]
    return dataclasses.replace(config(*apps), cluster=ClusterConfig(
        etcd=("127.0.0.1:1",), node="sim", lease_ttl=rng.choice([2, 3, 5, 10])))


def faults(seed: int, steps: int, known_bugs: frozenset[str] = KNOWN_BUGS) -> Simulation:
    """A daemon started on a random config, then `steps` random faults and commands."""
    rng = random.Random(seed)
    sim = Simulation(seed, make_config(rng, clustered(seed), known_bugs), known_bugs)
    sim.start()
    sim.at(SAMPLE_EVERY, sim.sample)
    if sim.cluster is not None:
        sim.at(rng.uniform(0.0, 1.0), sim.renew_tick)  # the agent joins: a first snapshot, then the lease
    for _ in range(steps):
        sim.advance(rng.expovariate(4.0))
        if sim.cluster is not None and rng.random() < 0.3:
            sim.random_cluster_step()
        else:
            sim.random_step()
    return sim


def run_schedule(seed: int, steps: int = 30, known_bugs: frozenset[str] = KNOWN_BUGS) -> Simulation:
    """Random faults and commands for `steps` steps, then faults stop and everything must converge."""
    sim = faults(seed, steps, known_bugs)
    settle(sim)
    return sim


def shortest_failure(seed: int, steps: int = 30, known_bugs: frozenset[str] = KNOWN_BUGS) -> str:
    """The failure of schedule `seed` cut to its shortest failing prefix (a schedule's first k
    steps are the same whatever its length), with that history: what to read first."""
    for k in range(steps + 1):
        try:
            run_schedule(seed, k, known_bugs)
        except AssertionError as exc:
            return f"the first {k} of its {steps} steps are enough to fail:\n{exc}"
    return "no prefix fails alone: only the whole schedule does (see its last steps above)"


def settle(sim: Simulation) -> None:
    """Faults stop; an operator starts everything once (clearing crash loops and stops); the system
    must settle at every app's count, every command answered."""
    sim.faults = False
    sim.note("faults stop")
    for proc in sim.live():
        assert isinstance(proc, SimProc)
        proc.ignores_term = False
        proc.rss, proc.processes = min(proc.rss, LIMIT // 2), 1
        if proc.hung:  # continued (SIGCONT): it beats again
            proc.hung = False
            sim.at(sim.now, lambda p=proc: sim._beat(p))
    for name in sim.config.apps:
        sim.send(CommandReceived(("final", name), Verb.START, (name,), timeout=600.0))
    if sim.cluster is not None:  # etcd is back for good: a last placement (no hand-over), the lease renewed
        sim.etcd_down_until, sim.skip_renewals = 0.0, 0
        sim.assign()  # (after the starts, which end every rollout)
        sim.renew()
    # The operator also fixes the code (after the starts, which would cancel its rollout).
    fixed = {n: dataclasses.replace(a, command=("x", "fixed")) for n, a in sim.config.apps.items()}
    sim.config = dataclasses.replace(sim.config, apps=fixed)
    sim.send(CommandReceived(("fix",), Verb.RELOAD, config=sim.config, timeout=600.0))
    # Until settled: a crash loop's cooldown (20 s) + the longest backoff + a stop, at most.
    for _ in range(60):
        sim.advance(1.0)
        if not sim.awaiting and converged(sim):
            break
    status = sim.status()
    for name in sim.config.apps:
        app = status.get(name)
        sim.check(app is not None, f"{name} missing after the config says it exists")
        assert app is not None
        sim.check(_settled(sim, app) and not (isinstance(app.get("rollout"), dict) and
                                               app["rollout"]["state"] == "running"),  # type: ignore[index]
                  f"{name} did not converge: {app}")
        sim.check(not [r["name"] for r in app["instances"] if "waiting" in r],  # type: ignore[attr-defined]
                  f"{name}: restarts still held at the end: {app}")
        reply = sim.replies.get(("final", name))
        # A fault still in flight when `start` was typed (a late readiness, a hang) can trip
        # the breaker again, or the code (fixed only after) crash again before it is ready; the
        # reply must then say which instance failed and why.
        sim.check(reply is not None and (reply.ok or " is failed (last exit: " in str(reply.error)
                                         or " is backoff (last exit: " in str(reply.error)),
                  f"final start of {name}: {reply}")
    extra = sorted(set(status) - set(sim.config.apps))
    sim.check(not extra, f"apps removed from the config still there: {extra}")
    if sim.cluster is not None:
        _check_placement(sim, fenced=False)
        if sim.rng.random() < 0.5:
            _last_fence(sim)


def _check_placement(sim: Simulation, fenced: bool) -> None:
    """The node runs exactly the slots placed on it, each with its token (all were spawned after
    the last snapshot: the fixed code rolled them); a singleton only while not fenced."""
    status = sim.status()
    for name, slots in sim.placed.items():
        if name not in status:
            continue
        expected = {} if fenced and sim.config.apps[name].singleton else slots
        running = {r["index"]: r.get("fencing_token") for r in status[name]["instances"]  # type: ignore[union-attr]
                   if r["state"] == "running"}
        sim.check(running == expected and len(status[name]["instances"]) == len(expected),  # type: ignore[arg-type]
                  f"{name} runs {running} (of {status[name]['instances']}); placed here: {expected}")


def _last_fence(sim: Simulation) -> None:
    """etcd goes away for good: at the fence deadline the singleton stops, within the grace and the
    kill; nothing else is touched."""
    assert sim.fence_at is not None
    sim.note("etcd goes away for good")
    sim.etcd_down_until = float("inf")
    def steady(p: SimProc) -> bool:  # a process nothing but a fence could replace (max_age recycles on its own)
        return not p.app.singleton and p.app.max_age is None

    others = {p.pid for p in sim.live() if steady(p)}
    sim.advance_to(sim.fence_at + sim.grace + KILL_LATENCY + EPSILON)
    sim.check(not [p for p in sim.live() if p.app.singleton], "a singleton still alive after the last fence")
    sim.check({p.pid for p in sim.live() if steady(p)} == others, "a fence touched more than singletons")
    _check_placement(sim, fenced=True)


def _up(app: dict[str, object]) -> bool:
    """Every instance of its count running (its spares do not count: they serve nothing yet)."""
    rows = [r for r in app["instances"] if r["role"] != "spare"]  # type: ignore[attr-defined]
    return len(rows) >= app["target"] and all(r["state"] == "running" for r in rows)  # type: ignore[operator]


def converged(sim: Simulation) -> bool:
    status = sim.status()
    return set(status) == set(sim.config.apps) and all(_settled(sim, app) for app in status.values())


def _settled(sim: Simulation, app: dict[str, object]) -> bool:
    """Its count of instances and of spares, every one running, nothing being replaced."""
    rows = app["instances"]
    assert isinstance(rows, list)
    active = [r for r in rows if r["role"] != "spare"]
    spares = [r for r in rows if r["role"] == "spare"]
    cfg = sim.config.apps.get(str(app["name"]))
    wanted_spares = cfg.spares if cfg is not None and app["target"] else 0
    return (len(active) == app["target"] and len(spares) == wanted_spares
            and all(r["state"] == "running" for r in rows) and "replacing" not in app)


def run_shutdown(seed: int, steps: int = 20, known_bugs: frozenset[str] = KNOWN_BUGS) -> Simulation:
    """Random faults, then a drain: every process gone and exit 0, in bounded time."""
    sim = faults(seed, steps, known_bugs)
    sim.note("shutdown")
    sim.draining = True
    sim.feed(ShutdownRequested())
    # Each layer of depends_on drains in turn: at most stop_timeout and the kill per layer.
    sim.advance(len(sim.config.apps) * (5.0 + KILL_LATENCY) + 1.0)
    sim.check(sim.exit_code == 0, "the drain did not end")
    sim.check(not sim.live(), f"processes alive after the drain: {[p.name for p in sim.live()]}")
    before_exit = sim.events[:sim.events_at_exit]  # (a fence may follow: the daemon is gone, its timer is not)
    sim.check(before_exit[-1:] == [{"type": "daemon", "event": "stopped"}], "no stopped event last")
    sim.check(sim.chaos_ended >= 1, "chaos was not ended when the drain began")
    return sim

