"""Deterministic simulation of the core: random fault schedules with a fake clock.

A small simulated OS plays the shell's part: it carries out the core's
actions on fake processes that crash at random, ignore their stop signal at
random, die when killed, become ready late or never, stop beating (hang),
and bloat past their memory limit. After every step the invariants of the issue
are checked; at the end, with faults and commands stopped, every app must
converge to its instance count.
"""

from __future__ import annotations

import heapq
import random
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from supervise.config.model import AppConfig, BackoffConfig, Config, CrashLoopConfig, Readiness, Restart, SuperviseConfig
from supervise.core import (
    Beat,
    CommandReceived,
    Core,
    DeadlineReached,
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
from supervise.core.instance import LIVE_STATES, MEMORY_HYSTERESIS, ExitReason, State
from supervise.core.policy import backoff_bounds

KILL_LATENCY = 0.01  # a SIGKILLed fake process is gone this long after the kill
BEAT_EVERY = 0.45
SAMPLE_EVERY = 0.5
LIMIT = 1000


@dataclass
class FakeProcess:
    pid: int
    spawn_id: int
    key: tuple[str, int]
    ignores_term: bool
    owner: object = None  # the core's Instance this process was spawned for
    alive: bool = True
    stop_signalled_at: float | None = None
    hung: bool = False
    last_beat: float = 0.0
    beat_before_stop: float = 0.0
    samples_before_stop: list = field(default_factory=list)
    rss: int = 100
    samples: list = field(default_factory=list)  # rss values reported to the core


@dataclass(order=True)
class Scheduled:
    when: float
    seq: int
    what: str = field(compare=False)
    arg: object = field(compare=False, default=None)


class Simulation:
    def __init__(self, seed: int, apps: dict[str, AppConfig]) -> None:
        self.rng = random.Random(seed)
        self.config = Config(Path("/sim/supervise.toml"), SuperviseConfig(Path("/sim/.supervise")), apps)
        self.core = Core(self.config, random.Random(seed + 1))
        self.now = 0.0
        self.queue: list[Scheduled] = []
        self.seq = 0
        self.procs: dict[int, FakeProcess] = {}
        self.next_pid = 100
        self.faults = True
        self.exited_code: int | None = None
        self.replies: dict[object, Reply] = {}
        self.events: list[dict] = []
        self.spawn_fail_rate = 0.05
        self.sent: list[object] = []
        self.broken: set[tuple[str, int]] = set()  # (app, generation) whose code crashes at start

    # -- the fake OS ----------------------------------------------------------------

    def at(self, when: float, what: str, arg: object = None) -> None:
        self.seq += 1
        heapq.heappush(self.queue, Scheduled(when, self.seq, what, arg))

    def carry_out(self, actions: list) -> None:
        for action in actions:
            match action:
                case Spawn(spawn_id=sid, app=app, index=index):
                    if self.faults and self.rng.random() < self.spawn_fail_rate:
                        self.feed(SpawnFailed(sid, "simulated exec failure"))
                        continue
                    key = (app.name, index)
                    owner = self.core._spawn_ids[sid]
                    live = [p for p in self.procs.values() if p.alive and p.owner is owner]
                    assert not live, f"two live processes for one instance of {key}: {live} and a new spawn"
                    pid = self.next_pid
                    self.next_pid += 1
                    proc = FakeProcess(pid, sid, key, ignores_term=self.faults and self.rng.random() < 0.2,
                                       owner=owner, last_beat=self.now)
                    self.procs[pid] = proc
                    self.feed(Spawned(sid, pid))
                    if (app.name, owner.generation) in self.broken:
                        self.at(self.now + self.rng.uniform(0.01, 0.3), "exit", (pid, 1, None))
                    elif app.readiness == "heartbeat":
                        late = self.faults and self.rng.random() < 0.1
                        ready_in = app.start_timeout * 1.5 if late else self.rng.uniform(0.01, 0.5)
                        self.at(self.now + ready_in, "ready", pid)
                    self.at(self.now + BEAT_EVERY, "beat", pid)
                case Signal(pid=pid):
                    proc = self.procs[pid]
                    assert proc.alive, "signalled a process the core knows is dead"
                    owner = proc.owner
                    app_state = self.core.apps[owner.app]
                    if owner.stop_reason is ExitReason.RELOAD and owner.config.surge() > 0:
                        # Surge: an old instance is drained only once its successor serves.
                        heir = app_state.slots.get(owner.index)
                        assert heir is not owner and heir.state is State.RUNNING, \
                            f"{owner.name} stopped for a reload before its replacement was ready"
                    if proc.stop_signalled_at is None:
                        proc.stop_signalled_at = self.now
                        proc.beat_before_stop = proc.last_beat
                        proc.samples_before_stop = list(proc.samples)
                    if not proc.ignores_term:
                        self.at(self.now + self.rng.uniform(0, 2.0), "exit", (pid, 0, None))
                case KillTree(pid=pid):
                    self.at(self.now + KILL_LATENCY, "exit", (pid, None, 9))
                case Reply():
                    self.replies[action.request_id] = action
                case Publish(event=event):
                    self.events.append(event)
                    if event["type"] == "replaced":
                        assert (event["app"], event["generation"]) not in self.broken, \
                            "an instance of code that crashes on start replaced a working one"
                case Exit(code=code):
                    self.exited_code = code
                case SendDrain() | Resample():
                    pass

    def feed(self, event) -> None:
        self.carry_out(self.core.handle(event, self.now))
        self.check_invariants()

    def process_exit(self, pid: int, code, sig) -> None:
        proc = self.procs[pid]
        if not proc.alive:
            return
        proc.alive = False
        if proc.stop_signalled_at is not None:
            inst = proc.owner
            app = inst.config
            if inst.stop_reason is ExitReason.HUNG:
                assert proc.stop_signalled_at - proc.beat_before_stop >= app.heartbeat_timeout - 1e-9, \
                    "declared hung while it was beating"
            if inst.stop_reason is ExitReason.MEMORY:
                # The decision needs that many readings over the limit in a row (with
                # replace-first, the stop itself comes later, once the successor is ready).
                over = "".join("x" if r > LIMIT else "." for r in proc.samples_before_stop)
                assert "x" * MEMORY_HYSTERESIS in over, "memory restart on a spike"
            assert self.now <= proc.stop_signalled_at + app.stop_timeout + KILL_LATENCY + 1e-9, \
                "a stop did not end within stop_timeout plus the kill"
        self.feed(Exited(proc.spawn_id, code, sig))

    # -- the schedule ---------------------------------------------------------------

    def random_fault(self) -> None:
        live = [p for p in self.procs.values() if p.alive]
        roll = self.rng.random()
        if roll < 0.4 and live:
            victim = self.rng.choice(live)
            code, sig = self.rng.choice([(1, None), (0, None), (None, 9), (None, 11)])
            self.process_exit(victim.pid, code, sig)
        elif roll < 0.5 and live:
            self.rng.choice(live).hung = True  # stops beating: a deadlock, SIGSTOP
        elif roll < 0.6 and live:
            victim = self.rng.choice(live)
            victim.rss = self.rng.choice([LIMIT * 2, LIMIT // 2])  # bloats, or settles
        else:
            self.random_command()

    def random_command(self) -> None:
        app = self.rng.choice(list(self.config.apps))
        verb = self.rng.choice(["stop", "start", "restart", "scale", "status", "reload", "reload"])
        self.seq += 1
        rid = ("cmd", self.seq)
        if verb == "reload":
            target = app if self.rng.random() < 0.8 else f"{app}:{self.rng.randint(0, 3)}"
            cmd = CommandReceived(rid, "reload", (target,), timeout=30.0)
            self.sent.append(rid)
            broken = self.rng.random() < 0.3
            if broken:  # the new code crashes on start: the rollout must fail, the old ones serve on
                self.broken.add((app, self.core.apps[app].latest + 1))
            self.feed(cmd)
            reply = self.replies.get(rid)
            if reply is not None and not reply.ok:
                assert "no instance" in reply.error or "rollout to generation" in reply.error, reply.error
            return
        if verb == "scale":
            cmd = CommandReceived(rid, "scale", (app,), count=self.rng.randint(0, 4), timeout=30.0)
            self.sent.append(rid)
            self.feed(cmd)
            return
        else:
            target = app if self.rng.random() < 0.5 else f"{app}:{self.rng.randint(0, 3)}"
            cmd = CommandReceived(rid, verb, (target,), timeout=30.0)
        self.sent.append(rid)
        self.feed(cmd)

    def advance_to(self, when: float) -> None:
        """Run every scheduled exit and core deadline up to ``when``, in time order."""
        while True:
            deadline = self.core.next_deadline()
            scheduled = self.queue[0].when if self.queue else None
            candidates = [t for t in (deadline, scheduled) if t is not None and t <= when]
            if not candidates:
                break
            self.now = max(self.now, min(candidates))
            if scheduled is not None and scheduled <= self.now:
                self.run_item(heapq.heappop(self.queue))
            else:
                self.feed(DeadlineReached())
        self.now = max(self.now, when)

    def run_item(self, item: Scheduled) -> None:
        if item.what == "exit":
            self.process_exit(*item.arg)
            return
        if item.what == "sample":
            live = [p for p in self.procs.values() if p.alive]
            for proc in live:
                proc.samples.append(proc.rss)
            self.feed(Sampled({p.spawn_id: p.rss for p in live}))
            self.at(self.now + SAMPLE_EVERY, "sample")
            return
        proc = self.procs[item.arg]
        if not proc.alive or proc.hung:
            return
        if item.what == "ready":
            proc.last_beat = self.now
            self.feed(Ready(proc.spawn_id))
        elif item.what == "beat":
            proc.last_beat = self.now
            self.feed(Beat(proc.spawn_id, {"inflight": self.rng.randint(0, 5)}))
            self.at(self.now + BEAT_EVERY, "beat", proc.pid)

    # -- invariants -----------------------------------------------------------------

    def check_invariants(self) -> None:
        live_by_owner: dict[int, int] = {}
        for proc in self.procs.values():
            if proc.alive:
                live_by_owner[id(proc.owner)] = live_by_owner.get(id(proc.owner), 0) + 1
        assert all(n == 1 for n in live_by_owner.values()), "two live processes for one instance"
        tracked = {id(i) for app in self.core.apps.values() for i in app.instances()}
        assert set(live_by_owner) <= tracked, "a live process the core no longer tracks"
        in_live_states = sum(1 for app in self.core.apps.values() for i in app.instances() if i.state in LIVE_STATES)
        assert self.core.live_count() == in_live_states, "live_count disagrees with the instances' states"
        for app in self.core.apps.values():
            rolling = sum(1 for p in app.purposes.values() if p is ExitReason.RELOAD)
            assert rolling <= max(app.config.surge(), 1), "surge exceeded"
            assert all(i.trial for i in app.successors.values())
            assert not any(i.trial for i in app.slots.values()), "an unready instance was promoted"
            for inst in app.instances():
                if inst.state in (State.BACKOFF, State.FAILED, State.STOPPED):
                    assert id(inst) not in live_by_owner, f"{inst.name} is {inst.state} but its process lives"
                if inst.state is State.RUNNING:
                    assert live_by_owner.get(id(inst)) == 1, f"{inst.name} is running without a process"
            for inst in app.slots.values():
                if inst.state is State.BACKOFF:
                    low, high = backoff_bounds(app.config.backoff, inst.failures)
                    assert low - 1e-9 <= inst.last_delay <= high + 1e-9, "backoff delay out of bounds"
                    assert 0 < inst.deadline - self.now <= high + 1e-9

    def converged(self) -> bool:
        for app in self.core.apps.values():
            if len(app.slots) != app.target or app.successors or app.retiring or app.rolling:
                return False
            if any(i.state is not State.RUNNING for i in app.slots.values()):
                return False
        return True


def make_apps(rng: random.Random) -> dict[str, AppConfig]:
    apps = {}
    for name in ("web", "worker"):
        health = name == "web"
        apps[name] = AppConfig(
            name, ("x",), Path("/"), instances=rng.randint(1, 4),
            readiness=Readiness.HEARTBEAT if health else Readiness.NONE, start_timeout=2.0,
            heartbeat_timeout=rng.choice([1.0, 2.0]) if health else None,
            max_memory=LIMIT if health else None,
            restart=rng.choice([Restart.ALWAYS, Restart.ALWAYS, Restart.ON_FAILURE]),
            stop_timeout=rng.choice([0.5, 2.0, 5.0]),
            backoff=BackoffConfig(initial=0.1, max=rng.choice([1.0, 5.0]), multiplier=2.0, jitter=0.3,
                                  reset_after=10.0),
            crash_loop=CrashLoopConfig(max_restarts=rng.randint(2, 8), window=30.0, cooldown=20.0),
            # listen: memory restarts start the replacement first
            listen=("127.0.0.1:8080",) if health and rng.random() < 0.5 else (),
            reload_surge=rng.choice([None, 0, 1, 2]),
        )
    return apps


def run_schedule(seed: int, steps: int = 60) -> Simulation:
    rng = random.Random(seed)
    sim = Simulation(seed, make_apps(rng))
    sim.carry_out(sim.core.start(sim.now))
    sim.at(SAMPLE_EVERY, "sample")
    sim.check_invariants()
    for _ in range(steps):
        sim.advance_to(sim.now + rng.expovariate(4.0))
        sim.random_fault()
    # Faults stop; an operator starts everything once (clearing crash loops and
    # stops), and the system must settle at every app's count.
    sim.faults = False
    sim.broken.clear()  # the operator fixed the code
    for proc in sim.procs.values():
        proc.ignores_term = False
        proc.rss = min(proc.rss, LIMIT // 2)
        if proc.alive and proc.hung:  # continued (SIGCONT): it beats again
            proc.hung = False
            sim.at(sim.now, "beat", proc.pid)
    for name in sim.config.apps:
        sim.feed(CommandReceived(("final", name), "start", (name,), timeout=600.0))
    sim.advance_to(sim.now + 60.0)  # > cooldown + the longest backoff + a stop
    assert sim.converged(), f"seed {seed}: did not converge: " + repr(sim.core.status(sim.now))
    for name in sim.config.apps:
        # A fault still in flight when the operator typed `start` (a late
        # readiness, a hang) can legitimately trip the breaker again; the
        # reply must then say which instance failed and why.
        reply = sim.replies[("final", name)]
        assert reply.ok or (" is failed (last exit: " in reply.error), reply.error
    return sim


@pytest.mark.parametrize("block", range(20))
def test_random_fault_schedules(block):
    for seed in range(block * 100, block * 100 + 100):  # 2,000 schedules in all
        run_schedule(seed)


@pytest.mark.parametrize("seed", range(50))
def test_shutdown_after_random_faults_exits_with_nothing_alive(seed):
    rng = random.Random(seed)
    sim = Simulation(seed, make_apps(rng))
    sim.carry_out(sim.core.start(sim.now))
    for _ in range(30):
        sim.advance_to(sim.now + rng.expovariate(4.0))
        sim.random_fault()
    sim.feed(ShutdownRequested())
    sim.advance_to(sim.now + 60.0)
    assert sim.exited_code == 0
    assert not [p for p in sim.procs.values() if p.alive]
    assert sim.events[-1] == {"type": "daemon", "event": "stopped"}


@pytest.mark.parametrize("seed", range(10))
def test_every_command_gets_a_reply(seed):
    sim = run_schedule(seed, steps=200)
    assert len(sim.sent) > 20
    missing = [rid for rid in sim.sent if rid not in sim.replies]
    assert not missing, f"commands never answered: {missing}"
