"""ClusterView: the node's copy of the cluster, decoded defensively (anyone with access to the etcd may write
under the prefix): a record that does not decode counts as absent, and is counted."""

from __future__ import annotations

import json

from supervise.cluster.records import NO_LIMIT, ClusterView, assignment_value
from supervise.core.placement import Assignment, Slot


def put(view: ClusterView, key: str, value: object, create: int = 1, mod: int = 1, lease: int = 0) -> None:
    raw = value if isinstance(value, bytes) else json.dumps(value).encode()
    view.put(key, raw, create, mod, lease)


def test_records_decode_into_the_view() -> None:
    view = ClusterView()
    put(view, "cordon/b", {"at": 1})
    put(view, "nodes/a", {"node": "a", "capacity": 3, "labels": {"zone": "x"}, "apps": ["web"]}, lease=7)
    put(view, "nodes/b", {"node": "b", "capacity": None, "labels": {}, "apps": ["web"]}, lease=8)
    put(view, "leader", {"node": "a"}, create=42, lease=7)
    view.put("assign/web/0", assignment_value(Assignment("a")), 50, 50, 0)
    view.put("assign/web/1", assignment_value(Assignment("b", token=44, handoff_from="a")), 51, 60, 0)
    put(view, "status/a", {"node": "a", "instances": {"web:0": {"state": "running", "pid": 10, "token": 50,
                                                                "ready": True, "active": True}},
                           "rolled": {"web": {"generation": 2, "ok": True}}})
    put(view, "scale/web", {"instances": 5})
    put(view, "rollout/web", {"generation": 2, "order": ["a", "b"]})
    assert view.ignored == 0
    assert view.nodes["a"].node.capacity == 3 and view.nodes["b"].node.capacity == NO_LIMIT
    assert view.nodes["b"].node.cordoned and not view.nodes["a"].node.cordoned
    assert (view.leader, view.term, view.leader_lease) == ("a", 42, 7)
    assert view.placed_on("a") == ({"web": {0: 50}}, {"web": frozenset({1})})
    assert view.placed_on("b") == ({"web": {1: 44}}, {})
    assert view.reports()["a"][Slot("web", 0)].ready
    assert view.scales == {"web": 5} and view.rollouts == {"web": (2, ("a", "b"))}
    assert view.rolled["a"]["web"].generation == 2
    view.delete("cordon/b")
    assert not view.nodes["b"].node.cordoned
    view.delete("nodes/a")
    view.delete("leader")
    assert "a" not in view.nodes and view.leader is None
    assert "a" not in view.reports(), "a dead node's report does not count"


def test_garbage_under_the_prefix_counts_as_absent() -> None:
    view = ClusterView()
    put(view, "assign/web/0", {"node": "a"})
    for key, value in [("assign/web/0", b"\xff not json"), ("nodes/a", {"labels": "zone=a"}),
                       ("assign/web/x", {"node": "a"}), ("assign/web/1", {"token": 3}),
                       ("status/a", {"instances": {"web:zero": {}}}), ("scale/web", {"instances": -1}),
                       ("scale/db", {"instances": True}), ("leader", {}), ("something/else", {}),
                       ("rollout/web", {"generation": "x", "order": []}), ("nodes/b", [1, 2])]:
        put(view, key, value)
    assert view.ignored == 11
    assert view.assignments == {} and view.nodes == {} and view.scales == {} and view.leader is None
    assert view.status == {} and view.rollouts == {}


def test_a_rollout_goes_node_by_node_and_stops_at_a_failure() -> None:
    view = ClusterView()
    for name in ("a", "b", "c"):
        put(view, f"nodes/{name}", {"node": name, "apps": ["web"]})
    order = ("a", "b", "c")
    outcome, done = view.rollout_outcome("web", 2, order)
    assert not done and [o["state"] for o in outcome] == ["waiting"] * 3
    put(view, "status/a", {"node": "a", "instances": {}, "rolled": {"web": {"generation": 2, "ok": True}}})
    view.delete("nodes/b")  # lost meanwhile: skipped, not waited for
    outcome, done = view.rollout_outcome("web", 2, order)
    assert [o["state"] for o in outcome] == ["rolled", "lost", "waiting"] and not done
    put(view, "status/c", {"node": "c", "instances": {}, "rolled": {"web": {"generation": 2, "ok": False,
                                                                            "error": "not ready"}}})
    assert view.rollout_outcome("web", 2, order) == (
        [{"node": "a", "state": "rolled", "error": None}, {"node": "b", "state": "lost", "error": None},
         {"node": "c", "state": "failed", "error": "not ready"}], True)
    put(view, "status/a", {"node": "a", "instances": {}, "rolled": {"web": {"generation": 2, "ok": False}}})
    outcome, done = view.rollout_outcome("web", 2, order)
    assert done and len(outcome) == 1, "the nodes after a failure never roll"


def test_the_status_of_a_view() -> None:
    from supervise.core.placement import AppSpec

    view = ClusterView()
    put(view, "nodes/a", {"node": "a", "capacity": 2, "labels": {"zone": "x"}, "apps": ["web"]})
    put(view, "leader", {"node": "a"}, create=3)
    view.put("assign/web/0", assignment_value(Assignment("a")), 9, 9, 0)
    view.put("assign/web/1", assignment_value(Assignment("gone")), 10, 10, 0)
    seen = view.as_status("a", [AppSpec("web", 3, "cluster")])
    assert [(n["name"], n["alive"], n["leader"], n["instances"], n["self"]) for n in seen["nodes"]] == [
        ("a", True, True, 1, True), ("gone", False, False, 1, False)]
    assert [(i["name"], i["node"], i["token"], i["state"]) for i in seen["instances"]] == [
        ("web:0", "a", 9, "pending"), ("web:1", "gone", 10, "lost")]
    assert seen["pending"] == [{"name": "web:2", "app": "web", "index": 2}]
