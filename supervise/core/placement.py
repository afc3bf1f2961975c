"""Cluster placement as data: which node runs which slot, and the etcd writes that get it there.

The leader calls ``place()`` for the target (slot -> node) and ``plan()`` for
the writes that move etcd towards it; every node runs the slots assigned to
it. Both are pure: no I/O, no clock, no randomness, and the same answer for
the same input whatever order it comes in.

``place()`` in brief (the rules, precisely, are in its docstring):

* a slot stays where it is while its node is alive, eligible and within
  capacity; adding a node moves nothing;
* slots that must move (their node is dead, ineligible or over capacity) are
  placed before new slots, singletons first, then apps by name, slots by
  index; a slot with nowhere to go stays on its old node (static stability)
  and a new one waits (absent from the result);
* the node for a slot: fewest of the app on the spread label's value, then
  fewest of the app on the node, then lowest load ratio, then name;
* the result is a fixed point: ``place(n, a, place(n, a, c)) == place(n, a, c)``.

``plan()`` turns the difference into writes: a non-singleton leaving a live
node that runs it is handed off (the old node keeps it until the new one is
ready); a singleton is stopped before it starts anywhere else; fencing
tokens only ever grow, per slot.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field

from supervise.frozen import frozen

CLUSTER = "cluster"
EVERY_NODE = "every-node"


@frozen
class Node:
    """A live node, as its record in etcd describes it."""

    name: str
    capacity: int  # max instances (all cluster apps together) it may run
    labels: Mapping[str, str]  # e.g. {"zone": "a"}
    apps: frozenset[str]  # cluster apps whose config this node has (it can only run those)
    cordoned: bool = False  # takes no new work; its slots move elsewhere (drain)


@frozen
class AppSpec:
    """What placement needs of a cluster app (``placement`` is "cluster" or "every-node")."""

    name: str
    instances: int  # "cluster": in all; "every-node": on each node. A singleton has 1
    placement: str
    singleton: bool = False
    constraints: Mapping[str, str] = field(default_factory=dict)  # node labels that must match exactly
    spread: str | None = None  # a label key: spread instances evenly over its values


@dataclass(frozen=True, slots=True, order=True)
class Slot:
    """Instance ``index`` of ``app``, cluster-wide (``app:index``)."""

    app: str
    index: int


@frozen
class Assignment:
    """An assignment's value in etcd."""

    node: str
    token: int | None = None  # fencing token carried forward; None: the key's mod_revision
    handoff_from: str | None = None  # keeps running the slot until ``node`` reports it ready


@frozen
class SlotReport:
    """What a live node says of one slot it runs."""

    active: bool  # a process is alive for this slot on that node
    ready: bool  # running and ready


@frozen
class Put:
    slot: Slot
    assignment: Assignment


@frozen
class Delete:
    slot: Slot


Write = Put | Delete


def fencing_token(assignment: Assignment, mod_revision: int) -> int:
    """The token a node gives the process of this assignment: carried forward, or the write's revision."""
    return assignment.token if assignment.token is not None else mod_revision


def eligible(node: Node, app: AppSpec) -> bool:
    """May ``node`` take slots of ``app``: not cordoned, has its config, matches its constraints."""
    return (not node.cordoned and app.name in node.apps
            and all(node.labels.get(key) == value for key, value in app.constraints.items()))


def per_app(app: AppSpec) -> int:
    """Slots of ``app``: in all ("cluster") or per eligible node ("every-node")."""
    return 1 if app.singleton else max(app.instances, 0)


def _index_by_name(nodes: Sequence[Node], apps: Sequence[AppSpec]) -> tuple[dict[str, Node], dict[str, AppSpec]]:
    by_node: dict[str, Node] = {}
    for node in nodes:
        if node.name in by_node:
            raise ValueError(f"two nodes named {node.name!r}")
        by_node[node.name] = node
    by_app: dict[str, AppSpec] = {}
    for app in apps:
        if app.name in by_app:
            raise ValueError(f"two apps named {app.name!r}")
        if app.placement not in (CLUSTER, EVERY_NODE):
            raise ValueError(f"app {app.name!r}: placement {app.placement!r} is neither {CLUSTER!r} nor {EVERY_NODE!r}")
        by_app[app.name] = app
    return by_node, by_app


class _Placer:
    """The books of one ``place()`` call: load per node, instances per app per node and per spread value."""

    __slots__ = ("apps", "rank", "eligible", "capacity", "load", "on_node", "on_value", "value", "result")

    def __init__(self, nodes: dict[str, Node], apps: dict[str, AppSpec]) -> None:
        self.apps = apps
        ordered = sorted(apps.values(), key=lambda a: (not a.singleton, a.name))
        self.rank = {app.name: rank for rank, app in enumerate(ordered)}
        names = sorted(nodes)
        self.eligible = {app.name: [n for n in names if eligible(nodes[n], app)] for app in ordered}
        self.capacity = {name: max(node.capacity, 0) for name, node in nodes.items()}
        self.load = dict.fromkeys(names, 0)
        self.on_node: dict[str, dict[str, int]] = {app: {} for app in apps}
        self.on_value: dict[str, dict[str, int]] = {app: {} for app in apps}
        # The spread label's value of each node, per app that spreads ("" when the node lacks it).
        self.value: dict[str, dict[str, str]] = {
            app.name: {n: nodes[n].labels.get(app.spread, "") for n in names}
            for app in ordered if app.spread is not None}
        self.result: dict[Slot, str] = {}

    def priority(self, slot: Slot) -> tuple[int, int]:
        return self.rank[slot.app], slot.index

    def assign(self, slot: Slot, node: str) -> None:
        self.result[slot] = node
        self.load[node] += 1
        counts = self.on_node[slot.app]
        counts[node] = counts.get(node, 0) + 1
        values = self.value.get(slot.app)
        if values is not None:
            by_value = self.on_value[slot.app]
            by_value[values[node]] = by_value.get(values[node], 0) + 1

    def choose(self, app: str) -> str | None:
        """The best eligible node with room for one more slot of ``app``, or None."""
        load, capacity, counts = self.load, self.capacity, self.on_node[app]
        values = self.value.get(app)
        by_value = self.on_value[app]
        best: str | None = None
        best_key: tuple[int, int, float] | None = None
        for node in self.eligible[app]:  # by name: the first of equals wins
            used, room = load[node], capacity[node]
            if used >= room:
                continue
            key = (by_value.get(values[node], 0) if values is not None else 0, counts.get(node, 0), used / room)
            if best_key is None or key < best_key:
                best, best_key = node, key
        return best


def place(nodes: Sequence[Node], apps: Sequence[AppSpec], current: Mapping[Slot, str]) -> dict[Slot, str]:
    """The target node of every slot that should have one.

    ``nodes`` are the live nodes; ``current`` is where slots are assigned now
    (possibly to dead nodes). A node is eligible for an app when it is not
    cordoned, has the app's config and matches its constraints.

    1. Slots wanted: "cluster" apps have indexes ``0..instances-1`` (a
       singleton only 0); an "every-node" app has ``instances`` slots on each
       eligible node: a node keeps the lowest of the indexes it has, and its
       other slots, and those on dead or ineligible nodes, are dropped.
    2. A wanted slot on a live node stays there if the node is eligible; one
       on an ineligible live node holds its place there until it moves. A
       node over capacity keeps, in order, its eligible slots then those
       waiting to move, each by (singleton first, app, index), and sheds the
       rest.
    3. Slots that must move (node dead, ineligible, or shed) go, in that
       order, to the best eligible node with room. One with nowhere to go
       stays on its dead or ineligible node; a shed one waits (is absent).
       Moving frees room, so the ones left are tried again until none moves.
    4. New slots, in the same order, go to the best eligible node with room,
       or wait. "every-node": nodes by name, each given the lowest free indexes.

    The best node: fewest of the app on the spread label's value (a missing
    label counts as ""), then fewest of the app on the node, then lowest
    load/capacity, then name. A live node never ends up with more slots than
    its capacity.
    """
    by_node, by_app = _index_by_name(nodes, apps)
    books = _Placer(by_node, by_app)

    # 1-2: where each wanted slot is now, per live node (eligible or not), or on a dead node.
    here: dict[str, list[tuple[bool, tuple[int, int], Slot]]] = {name: [] for name in by_node}
    every: dict[str, dict[str, list[int]]] = {}
    dead: dict[Slot, str] = {}
    eligible_sets = {app: set(names) for app, names in books.eligible.items()}
    for slot, node in current.items():
        app = by_app.get(slot.app)
        if app is None or slot.index < 0:
            continue
        if app.placement == EVERY_NODE:
            if node in eligible_sets[app.name]:
                every.setdefault(app.name, {}).setdefault(node, []).append(slot.index)
        elif slot.index < per_app(app):
            if node in by_node:
                here[node].append((node not in eligible_sets[app.name], books.priority(slot), slot))
            else:
                dead[slot] = node
    for app_name, per_node in every.items():
        keep = per_app(by_app[app_name])
        for node, indexes in per_node.items():
            for index in sorted(indexes)[:keep]:
                slot = Slot(app_name, index)
                here[node].append((False, books.priority(slot), slot))

    movers: list[Slot] = list(dead)
    holding: dict[Slot, str] = {}  # slot -> the ineligible live node it holds room on until it moves
    for node in sorted(here):
        entries = sorted(here[node])
        room = books.capacity[node]
        for waiting, _, slot in entries[:room]:
            if waiting:
                holding[slot] = node
                books.load[node] += 1
                movers.append(slot)
            else:
                books.assign(slot, node)
        for _, _, slot in entries[room:]:
            if by_app[slot.app].placement == CLUSTER:
                movers.append(slot)

    # 3: slots that must move, until a round frees no room.
    left = sorted(movers, key=books.priority)
    while left:
        freed = False
        stuck: list[Slot] = []
        for slot in left:
            target = books.choose(slot.app)
            if target is None:
                stuck.append(slot)
                continue
            old = holding.pop(slot, None)
            if old is not None:
                books.load[old] -= 1
                freed = True
            books.assign(slot, target)
        left = stuck
        if not freed:
            break
    for slot in left:
        if slot in holding:
            books.result[slot] = holding[slot]  # its room is already counted
        elif slot in dead:
            books.result[slot] = dead[slot]  # static stability: if the node comes back, nothing restarts

    # 4: new slots.
    tried = set(movers)
    for app_name in sorted(by_app, key=lambda name: books.rank[name]):
        app = by_app[app_name]
        count = per_app(app)
        if app.placement == CLUSTER:
            for index in range(count):
                slot = Slot(app_name, index)
                if slot in books.result or slot in tried:
                    continue
                target = books.choose(app_name)
                if target is not None:
                    books.assign(slot, target)
        else:
            _place_every_node(books, app_name, count)
    return books.result


def _place_every_node(books: _Placer, app: str, count: int) -> None:
    used = {slot.index for slot in books.result if slot.app == app}
    free = _free_indexes(used)
    counts = books.on_node[app]
    for node in books.eligible[app]:
        while counts.get(node, 0) < count and books.load[node] < books.capacity[node]:
            books.assign(Slot(app, next(free)), node)


def _free_indexes(used: set[int]) -> Iterator[int]:
    index = 0
    while True:
        if index not in used:
            yield index
        index += 1


def plan(nodes: Sequence[Node], apps: Sequence[AppSpec], assignments: Mapping[Slot, tuple[Assignment, int]],
         reports: Mapping[str, Mapping[Slot, SlotReport]]) -> list[Write]:
    """The writes that move etcd's ``assignments`` (slot -> (value, mod_revision)) towards ``place()``'s target.

    ``reports`` is what each live node says it runs (a report from a node not
    in ``nodes`` is ignored: its lease is gone and it fenced itself).

    * A slot leaving the target: Delete.
    * A new slot: Put on its target; a singleton only once no live node other
      than the target reports it active.
    * A singleton moving off a live node: Delete first (the holder stops);
      placed again, as new, once no other live node reports it active. Off a
      dead node: Put on the target at once (if no other live node runs it).
    * Any other slot moving off a live node that reports it active: Put with
      ``handoff_from`` that node (the original one, if a handoff is under way
      and it still runs the slot), which keeps running it; otherwise a plain
      Put. Both with ``token=None``: the new token is the write's revision.
    * A handoff under way ends, with the token carried forward, once the new
      node reports the slot ready or the old one no longer runs it.
    * Anything else: no write. The writes come sorted by slot.
    """
    target = place(nodes, apps, {slot: value.node for slot, (value, _) in assignments.items()})
    live = {node.name for node in nodes}
    active: dict[Slot, set[str]] = {}
    ready: dict[Slot, set[str]] = {}
    for name, slots in reports.items():
        if name not in live:
            continue
        for slot, report in slots.items():
            if report.active:
                active.setdefault(slot, set()).add(name)
            if report.ready:
                ready.setdefault(slot, set()).add(name)
    singletons = {app.name for app in apps if app.singleton}
    nobody: set[str] = set()
    writes: list[Write] = []
    for slot in sorted(assignments.keys() | target.keys()):
        to = target.get(slot)
        held = assignments.get(slot)
        running = active.get(slot, nobody)
        singleton = slot.app in singletons
        if to is None:
            writes.append(Delete(slot))
        elif held is None:
            if not (singleton and running - {to}):
                writes.append(Put(slot, Assignment(to)))
        else:
            value, revision = held
            if value.node == to:
                if value.handoff_from is not None and (
                        singleton or to in ready.get(slot, nobody) or value.handoff_from not in running):
                    writes.append(Put(slot, Assignment(to, token=fencing_token(value, revision))))
            elif singleton:
                if value.node in live:
                    writes.append(Delete(slot))
                elif not running - {to}:
                    writes.append(Put(slot, Assignment(to)))
            else:
                # The node that keeps running it meanwhile: the original one of a handoff under way, if it still does.
                source = next((n for n in (value.handoff_from, value.node) if n != to and n in running), None)
                writes.append(Put(slot, Assignment(to, handoff_from=source)))
    return writes
