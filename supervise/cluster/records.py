"""What a cluster keeps in etcd: the keys under ``/supervise/<cluster>/`` and their JSON.

    nodes/<node>          lease-bound   {"node", "capacity", "labels", "apps", "host", "pid"}  a live node
    leader                lease-bound   {"node"}  whoever created it leads; its create_revision is the term
    cordon/<node>         persistent    {"at"}    takes no new work, its slots move elsewhere
    assign/<app>/<index>  persistent    {"node", "token"?, "from"?}  where a slot runs (placement.Assignment)
    status/<node>         lease-bound   {"node", "instances": {"app:index": {...}}}  what a node runs
    scale/<app>           persistent    {"instances"}  `supervise scale` of a cluster app
    rollout/<app>         persistent    {"generation", "order"}  `supervise reload APP`: nodes roll in this order

Lease-bound keys vanish with their node: liveness is etcd's lease, nothing
of ours. ``ClusterView`` is one node's copy of all of it, kept by the watch;
it decodes defensively, since any client of the etcd may write there.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from supervise.core.placement import AppSpec, Assignment, Node, Slot, SlotReport, fencing_token, per_app
from supervise.frozen import frozen

NO_LIMIT = 1_000_000
"""A node's capacity when [cluster] sets none."""


def prefix(cluster: str) -> str:
    return f"/supervise/{cluster}/"


def encode(value: Mapping[str, object]) -> bytes:
    return json.dumps(value, separators=(",", ":"), sort_keys=True).encode()


def assignment_value(a: Assignment) -> bytes:
    body: dict[str, object] = {"node": a.node}
    if a.token is not None:
        body["token"] = a.token
    if a.handoff_from is not None:
        body["from"] = a.handoff_from
    return encode(body)


@dataclass(slots=True)
class NodeRecord:
    node: Node
    lease: int
    host: str = ""
    pid: int = 0


@dataclass(slots=True)
class InstanceReport:
    """One cluster instance as the node running it reported it."""

    state: str
    pid: int | None
    token: int | None
    ready: bool
    active: bool
    restarts: int = 0


@frozen
class Rolled:
    """A node's part in a cluster-wide rollout of one app: done (ok or not) up to ``generation``."""

    generation: int
    ok: bool
    error: str | None = None

    def as_json(self) -> dict[str, object]:
        return {"generation": self.generation, "ok": self.ok, "error": self.error}


@dataclass(slots=True)
class ClusterView:
    """Everything under the cluster's prefix, decoded; ``revision`` is etcd's as of the last change seen."""

    revision: int = 0
    nodes: dict[str, NodeRecord] = field(default_factory=dict)
    leader: str | None = None
    term: int = 0  # create_revision of the leader key
    leader_lease: int = 0
    cordoned: set[str] = field(default_factory=set)
    assignments: dict[Slot, tuple[Assignment, int]] = field(default_factory=dict)
    status: dict[str, dict[Slot, InstanceReport]] = field(default_factory=dict)
    scales: dict[str, int] = field(default_factory=dict)
    rollouts: dict[str, tuple[int, tuple[str, ...]]] = field(default_factory=dict)  # app -> (generation, order)
    rolled: dict[str, dict[str, Rolled]] = field(default_factory=dict)  # node -> app -> its last rollout
    ignored: int = 0  # keys under the prefix that did not decode

    def put(self, key: str, value: bytes, create_revision: int, mod_revision: int, lease: int) -> None:
        try:
            self._put(key.split("/"), json.loads(value), create_revision, mod_revision, lease)
        except (ValueError, TypeError, KeyError, AttributeError):
            self.ignored += 1
            self.delete(key)  # a record we cannot read counts as absent

    def _put(self, parts: list[str], body: dict[str, object], create_rev: int, mod_rev: int, lease: int) -> None:
        match parts:
            case ["nodes", name]:
                labels = body.get("labels") or {}
                apps = body.get("apps") or []
                if not isinstance(labels, dict) or not isinstance(apps, list):
                    raise ValueError(name)
                capacity = body.get("capacity")
                node = Node(name, NO_LIMIT if capacity is None else _int(capacity),
                            {str(k): str(v) for k, v in labels.items()}, frozenset(str(a) for a in apps),
                            cordoned=name in self.cordoned)
                self.nodes[name] = NodeRecord(node, lease, str(body.get("host", "")), _int(body.get("pid", 0)))
            case ["leader"]:
                self.leader, self.term, self.leader_lease = str(body["node"]), create_rev, lease
            case ["cordon", name]:
                self.cordoned.add(name)
                self._recordon(name)
            case ["assign", app, index]:
                token, source = body.get("token"), body.get("from")
                a = Assignment(str(body["node"]), None if token is None else _int(token),
                               None if source is None else str(source))
                self.assignments[Slot(app, _int(index))] = (a, mod_rev)
            case ["status", name]:
                instances = body.get("instances") or {}
                if not isinstance(instances, dict):
                    raise ValueError(name)
                self.status[name] = {_slot(n): _report(r) for n, r in instances.items()}
                rolled = body.get("rolled") or {}
                if not isinstance(rolled, dict):
                    raise ValueError(name)
                self.rolled[name] = {str(app): _rolled(r) for app, r in rolled.items()}
            case ["scale", app]:
                self.scales[app] = _int(body["instances"])
            case ["rollout", app]:
                order = body.get("order") or []
                if not isinstance(order, list):
                    raise ValueError(app)
                self.rollouts[app] = (_int(body["generation"]), tuple(str(n) for n in order))
            case _:
                self.ignored += 1

    def delete(self, key: str) -> None:
        match key.split("/"):
            case ["nodes", name]:
                self.nodes.pop(name, None)
            case ["leader"]:
                self.leader, self.term, self.leader_lease = None, 0, 0
            case ["cordon", name]:
                self.cordoned.discard(name)
                self._recordon(name)
            case ["assign", app, index] if index.isdigit():
                self.assignments.pop(Slot(app, int(index)), None)
            case ["status", name]:
                self.status.pop(name, None)
                self.rolled.pop(name, None)
            case ["scale", app]:
                self.scales.pop(app, None)
            case ["rollout", app]:
                self.rollouts.pop(app, None)

    def _recordon(self, name: str) -> None:
        record = self.nodes.get(name)
        if record is not None:
            n = record.node
            record.node = Node(n.name, n.capacity, n.labels, n.apps, cordoned=name in self.cordoned)

    def live_nodes(self) -> list[Node]:
        return [record.node for record in self.nodes.values()]

    def as_status(self, me: str, specs: Iterable[AppSpec]) -> dict[str, object]:
        """What ``status --cluster`` shows of this copy: the nodes (a dead one while slots still name
        it), where each slot runs with what its node reports, and the slots no node has (`specs`:
        the apps as the leader would place them)."""
        counts = Counter(a.node for a, _ in self.assignments.values())
        nodes = []
        for name in sorted(set(self.nodes) | set(counts) | self.cordoned):
            record = self.nodes.get(name)
            node = record.node if record else None
            nodes.append({
                "name": name, "alive": record is not None, "leader": name == self.leader,
                "cordoned": name in self.cordoned,
                "capacity": None if node is None or node.capacity >= NO_LIMIT else node.capacity,
                "labels": dict(node.labels) if node else {}, "apps": sorted(node.apps) if node else [],
                "instances": counts[name], "host": record.host if record else None, "self": name == me})
        instances = []
        for slot, (a, mod_rev) in sorted(self.assignments.items()):
            report = self.status.get(a.node, {}).get(slot)
            instances.append({
                "name": f"{slot.app}:{slot.index}", "app": slot.app, "index": slot.index, "node": a.node,
                "token": fencing_token(a, mod_rev), "handoff_from": a.handoff_from,
                "state": report.state if report else ("lost" if a.node not in self.nodes else "pending"),
                "pid": report.pid if report else None, "restarts": report.restarts if report else 0})
        pending = [{"name": f"{spec.name}:{index}", "app": spec.name, "index": index}
                   for spec in specs if spec.placement == "cluster" for index in range(per_app(spec))
                   if Slot(spec.name, index) not in self.assignments]
        return {"leader": self.leader, "revision": self.revision, "nodes": nodes, "instances": instances,
                "pending": pending}

    def rollout_outcome(self, app: str, generation: int,
                        order: tuple[str, ...]) -> tuple[list[dict[str, object]], bool]:
        """Each node's part in rollout `generation` of `app`, in `order`; done once every live node has
        rolled, or one failed (the nodes after it never roll)."""
        outcome: list[dict[str, object]] = []
        done = True
        for node in order:
            r = self.rolled.get(node, {}).get(app)
            if r is not None and r.generation >= generation:
                outcome.append({"node": node, "state": "rolled" if r.ok else "failed", "error": r.error})
                if not r.ok:
                    return outcome, True
            elif node not in self.nodes:
                outcome.append({"node": node, "state": "lost", "error": None})
            else:
                outcome.append({"node": node, "state": "waiting", "error": None})
                done = False
        return outcome, done

    def reports(self) -> dict[str, dict[Slot, SlotReport]]:
        """What each live node says it runs, as placement reads it."""
        return {node: {slot: SlotReport(r.active, r.ready) for slot, r in slots.items()}
                for node, slots in self.status.items() if node in self.nodes}

    def placed_on(self, node: str) -> tuple[dict[str, dict[int, int]], dict[str, frozenset[int]]]:
        """The slots assigned to `node` (app -> index -> fencing token) and those it holds for a handoff."""
        slots: dict[str, dict[int, int]] = {}
        held: dict[str, set[int]] = {}
        for slot, (a, mod_rev) in self.assignments.items():
            if a.node == node:
                slots.setdefault(slot.app, {})[slot.index] = fencing_token(a, mod_rev)
            elif a.handoff_from == node:
                held.setdefault(slot.app, set()).add(slot.index)
        return slots, {app: frozenset(indexes) for app, indexes in held.items()}


def _int(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise TypeError(value)
    number = int(value)
    if number < 0:
        raise ValueError(value)
    return number


def _slot(name: str) -> Slot:
    app, _, index = name.rpartition(":")
    return Slot(app, _int(index))


def _report(raw: object) -> InstanceReport:
    if not isinstance(raw, dict):
        raise TypeError(raw)
    pid, token = raw.get("pid"), raw.get("token")
    return InstanceReport(str(raw.get("state", "")), None if pid is None else _int(pid),
                          None if token is None else _int(token), bool(raw.get("ready")), bool(raw.get("active")),
                          _int(raw.get("restarts", 0)))


def _rolled(raw: object) -> Rolled:
    if not isinstance(raw, dict):
        raise TypeError(raw)
    error = raw.get("error")
    return Rolled(_int(raw["generation"]), bool(raw.get("ok")), None if error is None else str(error))


def report_json(r: InstanceReport) -> dict[str, object]:
    return {"state": r.state, "pid": r.pid, "token": r.token, "ready": r.ready, "active": r.active,
            "restarts": r.restarts}
