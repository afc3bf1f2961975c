"""Cluster placement under random fault schedules: a model of etcd and of the nodes, the leader planning.

The model. etcd is a dict slot -> (Assignment, mod_revision) and a revision
that grows by one per write. A node runs the slots assigned to it (if it has
the app's config), is ready ``latency`` ticks after it starts one, and stops
any slot not assigned to it unless it is the ``handoff_from`` of its
assignment. A node hands a process the assignment's fencing token when it
starts it, and again if the token of its assignment changes. A dead node
runs nothing and reports nothing; it may come back, empty.

A schedule is a random setup and ``STEPS`` random steps: node joins, loss,
return, cordon/uncordon, capacity change, app scale change, label and
constraint changes, an app dropped from or added to a node's config, and
ticks (the nodes act on etcd, then the leader (any live node) runs place()
and plan() and applies the writes). Then the faults stop and ``SETTLE``
ticks follow. Checked:

(a) after every step, no two live nodes run one singleton slot;
(b) per slot, every token handed out is >= every one before, and equal only
    when handed to the same node again (strictly increasing across placements);
(c) each tick's target never gives a live node more slots than its capacity
    (no exceptions: a node over capacity sheds, and a shed slot with nowhere
    to go waits);
(d) stability: on every live node, its wanted slots it is eligible for, by
    (singleton first, app, index), keep their node up to its capacity; no
    other move happens without a cause;
(f) each target is sound: only wanted slots; each on an eligible live node or
    staying where it was (dead or ineligible node) for lack of room; a wanted
    slot waits, or stays behind, only when every eligible live node is full;
    every-node slots only on eligible nodes, ``instances`` at most per node;
    and place() is a fixed point of itself;
    each plan's writes are sorted by slot and never rewrite a value as it is;
(e) after ``SETTLE`` fault-free ticks: plan() writes nothing, etcd holds the
    target, each targeted slot whose live node has its config runs there,
    ready, and nowhere else, and nothing else runs. The one handoff that may
    remain: its target cannot run the slot (died, or lost the app's config)
    and there is nowhere else to go, so the node handing off keeps running it
    (ready) until the target can, room appears elsewhere, or it dies itself.

SUPERVISE_PLACEMENT_SCHEDULES sets how many schedules (default 1,000, ~5 s);
SUPERVISE_PLACEMENT_SEED=N replays one. A failure names the seed, the
invariant and the shortest prefix of its steps that fails, step by step.
The last tests plant bugs (capacity ignored, a token reused, singletons
handed off, stability ignored) and show the schedules catch each.
"""

from __future__ import annotations

import os
import random
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace

import pytest

from supervise.core import placement
from supervise.core.placement import (
    CLUSTER,
    EVERY_NODE,
    AppSpec,
    Assignment,
    Delete,
    Node,
    Put,
    Slot,
    SlotReport,
    Write,
    eligible,
    fencing_token,
    per_app,
)

SCHEDULES = int(os.environ.get("SUPERVISE_PLACEMENT_SCHEDULES", "1000"))
ONLY = os.environ.get("SUPERVISE_PLACEMENT_SEED")
STEPS = 60
SETTLE = 12
"""Fault-free ticks by which a schedule must have converged: over 12,000 schedules the slowest took 7 (a
singleton deleted, its holder stopping, it put elsewhere, started, ready after a latency of 2, while a
handoff that had to wait for it runs its course)."""

NAMES = [f"n{i}" for i in range(6)]
APPS = ("agent", "api", "db", "lock", "web")
ZONES = ("a", "b", "c")
KINDS = (["tick"] * 10 + ["join", "lose", "lose", "return", "cordon", "capacity", "scale", "scale",
                          "label", "constraint", "config"])


class Violation(AssertionError):
    def __init__(self, invariant: str, message: str) -> None:
        super().__init__(f"({invariant}) {message}")
        self.invariant = invariant


@dataclass
class Proc:
    token: int
    ready_at: int
    ready: bool = False


@dataclass
class Host:
    name: str
    capacity: int
    labels: dict[str, str]
    apps: set[str]
    latency: int
    cordoned: bool = False
    alive: bool = True
    procs: dict[Slot, Proc] = field(default_factory=dict)

    def record(self) -> Node:
        return Node(self.name, self.capacity, dict(self.labels), frozenset(self.apps), self.cordoned)


Step = tuple[str, int, int]
Setup = tuple[list[Host], dict[str, AppSpec]]


def schedule(seed: int) -> tuple[Callable[[], Setup], list[Step]]:
    """The seed's setup (made afresh on each call) and its steps (a kind and two random numbers each)."""
    rng = random.Random(seed)
    hosts = [(name, rng.randint(1, 5), rng.choice(ZONES), rng.choice(("ssd", "hdd")), rng.randint(1, 2))
             for name in NAMES]
    alive = rng.randint(1, 4)
    scale = {"web": rng.randint(1, 6), "api": rng.randint(0, 4), "agent": rng.randint(1, 2)}

    def setup() -> Setup:
        made = [Host(name, cap, {"zone": zone, "disk": disk}, set(APPS), latency, alive=i < alive)
                for i, (name, cap, zone, disk, latency) in enumerate(hosts)]
        apps = {
            "db": AppSpec("db", 1, CLUSTER, singleton=True, constraints={"disk": "ssd"}),
            "lock": AppSpec("lock", 1, CLUSTER, singleton=True),
            "web": AppSpec("web", scale["web"], CLUSTER, spread="zone"),
            "api": AppSpec("api", scale["api"], CLUSTER),
            "agent": AppSpec("agent", scale["agent"], EVERY_NODE),
        }
        return made, apps

    steps = [(rng.choice(KINDS), rng.randrange(1000), rng.randrange(1000)) for _ in range(STEPS)]
    return setup, steps


def pick(items: Sequence[Host], r: int) -> Host | None:
    return items[r % len(items)] if items else None


class World:
    def __init__(self, setup: Setup) -> None:
        hosts, self.apps = setup
        self.hosts = {h.name: h for h in hosts}
        self.etcd: dict[Slot, tuple[Assignment, int]] = {}
        self.revision = 0
        self.now = 0
        self.granted: dict[Slot, tuple[int, str]] = {}  # the highest token handed out, and to whom
        self.log: list[str] = []
        self.seen = {h.name for h in self.live()}  # names that have been alive: "join" brings up another

    # -- the world -----------------------------------------------------------------------------------------------

    def live(self) -> list[Host]:
        return [h for h in self.hosts.values() if h.alive]

    def nodes(self) -> list[Node]:
        return [h.record() for h in self.live()]

    def step(self, kind: str, r: int, s: int) -> None:
        live, dead = self.live(), [h for h in self.hosts.values() if not h.alive]
        if kind == "tick":
            self.tick()
            return
        what = f"{kind}: no node to do it to"
        if kind in ("join", "return"):
            # join: a node never seen; return: one that died. Either way it comes up empty.
            pool = [h for h in dead if h.name not in self.seen] if kind == "join" else \
                   [h for h in dead if h.name in self.seen]
            host = pick(pool, r)
            if host:
                host.alive, host.procs = True, {}
                what = f"{kind} {host.name}"
        elif kind == "lose":
            host = pick(live, r)
            if host:
                host.alive, host.procs = False, {}
                what = f"lose {host.name}"
        elif kind == "cordon":
            host = pick(live, r)
            if host:
                host.cordoned = not host.cordoned
                what = f"{'cordon' if host.cordoned else 'uncordon'} {host.name}"
        elif kind == "capacity":
            host = pick(live, r)
            if host:
                host.capacity = s % 6
                what = f"capacity {host.name} {host.capacity}"
        elif kind == "scale":
            name = ("web", "api", "agent")[r % 3]
            count = s % (3 if name == "agent" else 7)
            self.apps[name] = replace(self.apps[name], instances=count)
            what = f"scale {name} {count}"
        elif kind == "label":
            host = pick(live, r)
            if host:
                if s % 2:
                    host.labels["zone"] = ZONES[s // 2 % 3]
                else:
                    host.labels["disk"] = "hdd" if host.labels["disk"] == "ssd" else "ssd"
                what = f"label {host.name} {host.labels}"
        elif kind == "constraint":
            name = ("web", "api", "db")[r % 3]
            options: list[dict[str, str]] = [{}, {"zone": ZONES[s % 3]}, {"disk": "ssd"}]
            self.apps[name] = replace(self.apps[name], constraints=options[s % 3])
            what = f"constraint {name} {options[s % 3]}"
        elif kind == "config":
            host = pick(live, r)
            if host:
                name = APPS[s % len(APPS)]
                host.apps ^= {name}
                what = f"config {host.name} {'+' if name in host.apps else '-'}{name}"
        self.seen |= {h.name for h in self.live()}
        self.log.append(what)
        self.check_running()

    def tick(self) -> list[Write]:
        self.now += 1
        self.log.append(f"tick {self.now}")
        for host in self.live():
            self.progress(host)
        self.check_running()
        writes: list[Write] = []
        if self.live():
            nodes, apps = self.nodes(), list(self.apps.values())
            current = {slot: a.node for slot, (a, _) in self.etcd.items()}
            target = placement.place(nodes, apps, current)
            self.check_target(nodes, apps, current, target)
            writes = placement.plan(nodes, apps, self.etcd, self.reports())
            self.check_writes(writes)
            self.apply(writes)
        self.log[-1] += ": " + (", ".join(map(show, writes)) or "no writes")
        return writes

    def progress(self, host: Host) -> None:
        """One tick of a node: stop what is not its own, refresh tokens, become ready, start what is."""
        for slot, proc in list(host.procs.items()):
            held = self.etcd.get(slot)
            mine = held is not None and held[0].node == host.name and slot.app in host.apps
            keeps = held is not None and held[0].handoff_from == host.name and slot.app in host.apps
            if not (mine or keeps):
                del host.procs[slot]
                continue
            if mine and held is not None and fencing_token(*held) != proc.token:
                proc.token = self.hand_out(slot, host.name, fencing_token(*held))
            if self.now >= proc.ready_at:
                proc.ready = True
        for slot, (a, revision) in sorted(self.etcd.items()):
            if a.node == host.name and slot not in host.procs and slot.app in host.apps:
                token = self.hand_out(slot, host.name, fencing_token(a, revision))
                host.procs[slot] = Proc(token, self.now + host.latency)

    def hand_out(self, slot: Slot, node: str, token: int) -> int:
        last = self.granted.get(slot)
        if last is not None and (token < last[0] or (token == last[0] and node != last[1])):
            raise Violation("b", f"{node} got token {token} for {show_slot(slot)}; {last[1]} had {last[0]} before")
        if last is None or token > last[0]:
            self.granted[slot] = (token, node)
        return token

    def reports(self) -> dict[str, dict[Slot, SlotReport]]:
        return {h.name: {s: SlotReport(True, p.ready) for s, p in h.procs.items()} for h in self.live()}

    def apply(self, writes: list[Write]) -> None:
        for w in writes:
            self.revision += 1
            if isinstance(w, Put):
                self.etcd[w.slot] = (w.assignment, self.revision)
            else:
                self.etcd.pop(w.slot, None)

    # -- the checks ------------------------------------------------------------------------------------------------

    def check_running(self) -> None:
        """(a) never two live nodes running one singleton slot."""
        singletons = {a.name for a in self.apps.values() if a.singleton}
        runs = Counter(s for h in self.live() for s in h.procs if s.app in singletons)
        for slot, count in runs.items():
            if count > 1:
                where = sorted(h.name for h in self.live() if slot in h.procs)
                raise Violation("a", f"singleton {show_slot(slot)} runs on {where} at once")

    def check_target(self, nodes: list[Node], apps: list[AppSpec], current: Mapping[Slot, str],
                     target: Mapping[Slot, str]) -> None:
        by_node = {n.name: n for n in nodes}
        by_app = {a.name: a for a in apps}
        load = Counter(target.values())
        # (c) capacity
        for n in nodes:
            if load[n.name] > max(n.capacity, 0):
                raise Violation("c", f"{n.name} has {load[n.name]} slots for a capacity of {n.capacity}: "
                                     f"{placed(target)}")
        # (d) stability
        for n in nodes:
            mine = sorted((slot for slot, where in current.items() if where == n.name and self.wanted_here(
                slot, n, by_app, current)), key=lambda s: (not by_app[s.app].singleton, s.app, s.index))
            for slot in mine[:max(n.capacity, 0)]:
                if target.get(slot) != n.name:
                    raise Violation("d", f"{show_slot(slot)} left {n.name} (alive, eligible, within capacity) "
                                         f"for {target.get(slot)}")
        # (f) soundness
        full = {name for name, n in by_node.items() if load[name] >= n.capacity}
        for app in apps:
            room = [n for n in nodes if eligible(n, app) and n.name not in full]
            if app.placement == EVERY_NODE:
                counts = Counter(where for slot, where in target.items() if slot.app == app.name)
                for where, count in counts.items():
                    if where not in by_node or not eligible(by_node[where], app) or count > per_app(app):
                        raise Violation("f", f"{app.name}: {count} every-node slots on {where}")
                short = [n.name for n in room if counts[n.name] < per_app(app)]
                if short:
                    raise Violation("f", f"{app.name}: {short} have room but fewer than {per_app(app)}")
                continue
            for index in range(per_app(app)):
                slot = Slot(app.name, index)
                where = target.get(slot)
                if where is not None and where in by_node and eligible(by_node[where], app):
                    continue
                if where is not None and current.get(slot) != where:
                    raise Violation("f", f"{show_slot(slot)} put on {where}, dead or ineligible")
                if room:
                    raise Violation("f", f"{show_slot(slot)} {'waits' if where is None else f'stays on {where}'} "
                                         f"though {[n.name for n in room]} have room")
        for slot in target:
            app = by_app.get(slot.app)
            if app is None or slot.index < 0 or (app.placement == CLUSTER and slot.index >= per_app(app)):
                raise Violation("f", f"{show_slot(slot)} is not wanted")
        again = placement.place(nodes, apps, target)
        if again != target:
            raise Violation("f", f"place() is not a fixed point: {diff(target, again)}")

    def wanted_here(self, slot: Slot, node: Node, by_app: Mapping[str, AppSpec], current: Mapping[Slot, str]) -> bool:
        """Is ``slot``, on ``node`` now, one the node is eligible for and still wanted there."""
        app = by_app.get(slot.app)
        if app is None or slot.index < 0 or not eligible(node, app):
            return False
        if app.placement == CLUSTER:
            return slot.index < per_app(app)
        indexes = sorted(s.index for s, where in current.items() if s.app == app.name and where == node.name)
        return slot.index in indexes[:per_app(app)]

    def check_writes(self, writes: list[Write]) -> None:
        if [w.slot for w in writes] != sorted(w.slot for w in writes) or len({w.slot for w in writes}) < len(writes):
            raise Violation("f", f"writes not sorted by slot, or two for one slot: {writes}")
        for w in writes:
            held = self.etcd.get(w.slot)
            if isinstance(w, Put) and held is not None and held[0] == w.assignment:
                raise Violation("f", f"rewrites {show(w)} as it is")
            if isinstance(w, Delete) and held is None:
                raise Violation("f", f"deletes {show_slot(w.slot)}, which is not there")

    def check_converged(self) -> None:
        """(e) after the faults: nothing to write, etcd is the target, each slot runs where it should, only there."""
        if not self.live():
            return
        nodes, apps = self.nodes(), list(self.apps.values())
        writes = placement.plan(nodes, apps, self.etcd, self.reports())
        if writes:
            raise Violation("e", f"still writing after {SETTLE} quiet ticks: {[show(w) for w in writes]}")
        target = placement.place(nodes, apps, {slot: a.node for slot, (a, _) in self.etcd.items()})
        held = {slot: a.node for slot, (a, _) in self.etcd.items()}
        if held != target:
            raise Violation("e", f"etcd is not the target: {diff(target, held)}")
        for slot, where in target.items():
            # Who runs it: its node; or, if that cannot (dead, or without the app's config) and there is nowhere
            # else to go, the node handing off to it.
            a = self.etcd[slot][0]
            host = self.hosts[where]
            if a.handoff_from is not None and (host.alive and slot.app in host.apps
                                               or not self.hosts[a.handoff_from].alive):
                raise Violation("e", f"a handoff of {show_slot(slot)} to {where} from {a.handoff_from} lingers")
            runner = self.hosts[a.handoff_from] if a.handoff_from is not None else host
            if runner.alive and slot.app in runner.apps and (slot not in runner.procs or not runner.procs[slot].ready):
                raise Violation("e", f"{show_slot(slot)} is not running and ready on {runner.name}")
            others = [h.name for h in self.live() if h is not runner and slot in h.procs]
            if others:
                raise Violation("e", f"{show_slot(slot)} runs on {others}, targeted at {where}")
        for host in self.live():
            for slot in host.procs:
                if slot not in target:
                    raise Violation("e", f"{host.name} runs {show_slot(slot)}, which has no target")
        for app in apps:
            active = sum(1 for h in self.live() for s in h.procs if s.app == app.name)
            if app.placement == CLUSTER and active > per_app(app):
                raise Violation("e", f"{active} of {app.name} run, for {per_app(app)}")


def show_slot(slot: Slot) -> str:
    return f"{slot.app}:{slot.index}"


def show(w: Write) -> str:
    if isinstance(w, Delete):
        return f"-{show_slot(w.slot)}"
    a = w.assignment
    return (f"{show_slot(w.slot)}->{a.node}" + (f" token={a.token}" if a.token is not None else "")
            + (f" from={a.handoff_from}" if a.handoff_from else ""))


def placed(target: Mapping[Slot, str]) -> str:
    return " ".join(f"{show_slot(s)}@{n}" for s, n in sorted(target.items()))


def describe(setup: Setup) -> str:
    hosts, apps = setup
    lines = [f"  {h.name}: capacity {h.capacity} {h.labels} latency {h.latency} {'alive' if h.alive else 'down'}"
             for h in hosts]
    lines += [f"  {a.name}: {a.instances} {a.placement}" + (" singleton" if a.singleton else "")
              + (f" constraints {dict(a.constraints)}" if a.constraints else "")
              + (f" spread {a.spread}" if a.spread else "") for a in apps.values()]
    return "\n".join(lines)


def diff(a: Mapping[Slot, str], b: Mapping[Slot, str]) -> str:
    return ", ".join(f"{show_slot(s)}: {a.get(s)} vs {b.get(s)}"
                     for s in sorted(a.keys() | b.keys()) if a.get(s) != b.get(s))


def run(setup: Setup, steps: Sequence[Step]) -> World:
    world = World(setup)
    for kind, r, s in steps:
        world.step(kind, r, s)
    for _ in range(SETTLE):
        world.tick()
    world.check_converged()
    return world


def run_seed(seed: int) -> World:
    setup, steps = schedule(seed)
    return run(setup(), steps)


def shortest_failure(seed: int) -> tuple[int, World, AssertionError]:
    """The fewest of the seed's steps after which (with the quiet ticks) it fails, the world and the failure."""
    setup, steps = schedule(seed)
    for k in range(len(steps) + 1):
        world = World(setup())
        try:
            for kind, r, s in steps[:k]:
                world.step(kind, r, s)
            for _ in range(SETTLE):
                world.tick()
            world.check_converged()
        except AssertionError as exc:
            return k, world, exc
    raise AssertionError(f"seed {seed} fails, but no prefix of it does")


def explain(seed: int, exc: AssertionError) -> str:
    k, world, first = shortest_failure(seed)
    steps = "\n".join(f"  {line}" for line in world.log)
    return (f"seed {seed}: {exc}\nshortest failing prefix: {k} of {STEPS} steps, then {SETTLE} quiet ticks; "
            f"it fails with: {first}\nsetup:\n{describe(schedule(seed)[0]())}\nsteps:\n{steps}\n"
            f"replay: SUPERVISE_PLACEMENT_SEED={seed} pytest {__file__}")


def seeds() -> Iterator[int]:
    yield from ([int(ONLY)] if ONLY else range(SCHEDULES))


BLOCKS = 8


@pytest.mark.parametrize("block", range(BLOCKS))
def test_random_fault_schedules(block: int) -> None:
    for seed in list(seeds())[block::BLOCKS]:
        try:
            run_seed(seed)
        except AssertionError as exc:
            raise AssertionError(explain(seed, exc)) from None


def test_the_schedules_do_move_things():
    """The schedules are not idle: slots move by handoff and by stop-then-start, and tokens renew."""
    handoffs = deletes = grants = 0
    for seed in range(40):
        setup, steps = schedule(seed)
        world = World(setup())
        for kind, r, s in steps:
            if kind == "tick":
                writes = world.tick()
                handoffs += sum(1 for w in writes if isinstance(w, Put) and w.assignment.handoff_from)
                deletes += sum(1 for w in writes if isinstance(w, Delete) and w.slot.app in ("db", "lock"))
            else:
                world.step(kind, r, s)
        grants += len(world.granted)
    assert handoffs > 20 and deletes > 10 and grants > 200, (handoffs, deletes, grants)


# -- planted bugs: each is caught ----------------------------------------------------------------------------------

REAL_PLACE, REAL_PLAN = placement.place, placement.plan


def ignores_capacity(nodes: Sequence[Node], apps: Sequence[AppSpec], current: Mapping[Slot, str]) -> dict[Slot, str]:
    return REAL_PLACE([replace(n, capacity=1000) for n in nodes], apps, current)


def ignores_current(nodes: Sequence[Node], apps: Sequence[AppSpec], current: Mapping[Slot, str]) -> dict[Slot, str]:
    return REAL_PLACE(nodes, apps, {})


def reuses_tokens(nodes: Sequence[Node], apps: Sequence[AppSpec], assignments: Mapping[Slot, tuple[Assignment, int]],
                  reports: Mapping[str, Mapping[Slot, SlotReport]]) -> list[Write]:
    """A move that carries the old token forward, instead of taking the write's revision."""
    writes = REAL_PLAN(nodes, apps, assignments, reports)
    return [replace(w, assignment=replace(w.assignment, token=fencing_token(*assignments[w.slot])))
            if isinstance(w, Put) and w.slot in assignments and assignments[w.slot][0].node != w.assignment.node
            else w for w in writes]


def hands_off_singletons(nodes: Sequence[Node], apps: Sequence[AppSpec],
                         assignments: Mapping[Slot, tuple[Assignment, int]],
                         reports: Mapping[str, Mapping[Slot, SlotReport]]) -> list[Write]:
    """Singletons moved like any slot: started on the new node while the old one still runs them."""
    return REAL_PLAN(nodes, [replace(a, singleton=False) for a in apps], assignments, reports)


@pytest.mark.parametrize(("name", "invariant", "mutant"), [
    ("place", "c", ignores_capacity),
    ("place", "d", ignores_current),
    ("plan", "b", reuses_tokens),
    ("plan", "a", hands_off_singletons),
])
def test_a_planted_bug_is_caught(monkeypatch: pytest.MonkeyPatch, name: str, invariant: str, mutant: object) -> None:
    monkeypatch.setattr(placement, name, mutant)
    found: list[str] = []
    for seed in range(100):
        try:
            run_seed(seed)
        except Violation as exc:
            found.append(exc.invariant)
            if exc.invariant == invariant:
                return
    pytest.fail(f"planted bug in {name}() not caught as ({invariant}) in 100 schedules; caught as {found}")
