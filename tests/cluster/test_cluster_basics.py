"""Cluster mode through the contract: joining, placement, one leader, operating it (points 1-3, 8, 9)."""

from __future__ import annotations

import json

from etcdtools import free_port
from helpers import wait_until
from nodes import activity, placement, wait_placed

WEB = """
[apps.web]
command = {activity}
instances = 5
placement = "cluster"
readiness = "heartbeat"
"""


def three(make_node, etcd, apps=WEB, **options):
    """Three joined nodes, then 5 instances of web placed: placed on a one-node cluster, they would stay
    (stable placement), so web starts at 0 and is scaled once every node is in."""
    nodes = [make_node(name, [etcd.endpoint], apps.replace("instances = 5", "instances = 0"), **options)
             for name in ("n1", "n2", "n3")]
    wait_until(lambda: sum(n["alive"] for n in nodes[0].cluster()["nodes"]) == 3, 15, message="3 nodes alive")
    scaled = nodes[0].cli("scale", "web", "5")
    assert scaled.returncode == 0, scaled.stderr
    return nodes


def test_instances_spread_evenly_and_one_leader_is_seen_from_every_node(make_node, etcd, tmp_path):
    nodes = three(make_node, etcd, activity=tmp_path)
    where = wait_placed(nodes, "web", 5)
    counts = sorted(list(where.values()).count(n.name) for n in nodes)
    assert counts == [1, 2, 2], where
    views = [n.cluster() for n in nodes]
    leaders = {v["leader"] for v in views}
    assert len(leaders) == 1 and leaders.pop() in {"n1", "n2", "n3"}
    for view in views:
        assert {n["name"] for n in view["nodes"] if n["alive"]} == {"n1", "n2", "n3"}
        assert {i["name"]: i["node"] for i in view["instances"]} == where
    # Every cluster instance has its fencing token, in its environment and in status.
    tokens = {name: inst["fencing_token"] for n in nodes for name, inst in n.running_here("web").items()}
    assert len(tokens) == 5 and all(isinstance(t, int) and t > 0 for t in tokens.values())
    table = nodes[0].cli("status", "--cluster")
    assert table.returncode == 0 and "NODE" in table.stdout and "web:4" in table.stdout


def test_a_node_that_joins_takes_new_work_and_steals_nothing(make_node, etcd, tmp_path):
    first = [make_node(name, [etcd.endpoint], WEB, activity=tmp_path) for name in ("n1", "n2")]
    before = wait_placed(first, "web", 5)
    pids = {name: inst["pid"] for n in first for name, inst in n.running_here("web").items()}
    third = make_node("n3", [etcd.endpoint], WEB, activity=tmp_path)
    wait_until(lambda: any(n["name"] == "n3" and n["alive"] for n in first[0].cluster()["nodes"]), 10)
    first[0].cli("scale", "web", "6")
    after = wait_placed([*first, third], "web", 6)
    assert {k: v for k, v in after.items() if k in before} == before, "a healthy instance moved"
    assert after["web:5"] in ("n2", "n3"), "the new instance goes to an emptiest node, not the full one"
    still = {name: inst["pid"] for n in first for name, inst in n.running_here("web").items() if name in pids}
    assert still == pids, "no healthy instance was restarted"


def test_capacity_constraints_and_every_node(make_node, etcd, tmp_path):
    apps = """
[apps.agent]
command = {activity}
instances = 2
placement = "every-node"

[apps.zoned]
command = {activity}
instances = 2
placement = "cluster"
constraints = { zone = "a" }

[apps.web]
command = {activity}
instances = 4
placement = "cluster"
constraints = { zone = "b" }
"""
    nodes = [make_node("n1", [etcd.endpoint], apps, activity=tmp_path, capacity=4, labels={"zone": "a"}),
             make_node("n2", [etcd.endpoint], apps, activity=tmp_path, capacity=10, labels={"zone": "b"})]
    agents = wait_placed(nodes, "agent", 4)
    assert sorted(agents.values()) == ["n1", "n1", "n2", "n2"], "every-node: instances on every node"
    assert set(wait_placed(nodes, "zoned", 2).values()) == {"n1"}, "constraints: only zone a"
    assert set(wait_placed(nodes, "web", 4).values()) == {"n2"}, "constraints: only zone b"
    scaled = nodes[0].cli("scale", "zoned", "3")
    assert scaled.returncode == 0, scaled.stderr
    view = wait_until(lambda: (v := nodes[1].cluster()) and v["pending"] and v, 10, message="zoned:2 pending")
    assert [p["name"] for p in view["pending"]] == ["zoned:2"], "n1 is full (capacity 4): it waits"
    assert list(placement(nodes).values()).count("n1") == 4, "capacity 4 respected on n1"
    assert {n["name"]: n["capacity"] for n in view["nodes"]} == {"n1": 4, "n2": 10}
    assert {n["name"]: n["labels"] for n in view["nodes"]} == {"n1": {"zone": "a"}, "n2": {"zone": "b"}}


def test_drain_moves_every_instance_ready_first_then_uncordon(make_node, etcd, tmp_path):
    nodes = three(make_node, etcd, activity=tmp_path)
    wait_placed(nodes, "web", 5)
    victim = next(n for n in nodes if n.running_here("web"))
    moved = sorted(victim.running_here("web"))
    drained = victim.cli("cluster", "drain", victim.name, "--timeout", "30")
    assert drained.returncode == 0, drained.stderr
    where = wait_placed(nodes, "web", 5)
    assert victim.name not in where.values()
    view = nodes[0].cluster()
    assert next(n for n in view["nodes"] if n["name"] == victim.name)["cordoned"]
    events = victim.cli("events", "--no-follow")
    kinds = [json.loads(line) for line in events.stdout.splitlines()]
    assert any(e.get("type") == "cluster" and e.get("event") == "cordoned" for e in kinds)
    # The handoff was readiness-gated: no moved instance was ever missing. From the workers' own
    # activity ticks: each slot's new process, elsewhere, ran before the old one's last tick.
    for name in moved:
        runs = activity(tmp_path, name)
        old = [r for r in runs if r[4] == victim.name][-1]
        new = [r for r in runs if r[4] != victim.name and r[1] > old[1]][0]
        assert new[1] < old[2], f"{name}: the old process stopped before its replacement ran"
    undrain = victim.cli("cluster", "uncordon", victim.name)
    assert undrain.returncode == 0, undrain.stderr
    wait_until(lambda: not next(n for n in victim.cluster()["nodes"] if n["name"] == victim.name)["cordoned"], 10)
    bad = victim.cli("cluster", "drain", "nowhere")
    assert bad.returncode == 2 and "no node named 'nowhere'" in bad.stderr


def test_a_daemon_without_etcd_says_so_and_runs_its_local_apps(make_node, tmp_path):
    dead = f"http://127.0.0.1:{free_port()}"
    apps = WEB + """
[apps.local]
command = "sleep 60"
"""
    node = make_node("lonely", [dead], apps, activity=tmp_path)
    node.wait_all_running(1, "local")
    view = wait_until(lambda: (v := node.cluster()) and not v["connected"] and v["error"] and v, 10)
    assert "127.0.0.1" in view["error"]
    table = node.cli("status", "--cluster")
    assert "NOT connected to etcd" in table.stdout
    assert not node.running_here("web"), "nothing is placed without etcd"


def test_not_in_a_cluster(supervisor):
    sup = supervisor('[apps.a]\ncommand = "sleep 60"\n')
    result = sup.cli("status", "--cluster")
    assert result.returncode == 2 and "not in a cluster" in result.stderr


def test_reload_of_a_cluster_app_rolls_node_by_node(make_node, etcd, tmp_path):
    nodes = three(make_node, etcd, activity=tmp_path)
    before = wait_placed(nodes, "web", 5)
    old = {name: inst["pid"] for n in nodes for name, inst in n.running_here("web").items()}
    dry = nodes[2].cli("reload", "web", "--dry-run")
    assert dry.returncode == 0 and "n1, n2, n3" in dry.stdout, dry.stdout + dry.stderr
    result = nodes[2].cli("reload", "web", "--json", "--timeout", "60")
    assert result.returncode == 0, result.stderr
    outcome = json.loads(result.stdout)["rollouts"][0]
    assert [o["node"] for o in outcome["nodes"]] == sorted(set(before.values()))
    assert all(o["state"] == "rolled" for o in outcome["nodes"])
    after = wait_placed(nodes, "web", 5)
    assert after == before, "a rollout replaces in place: nothing moves"
    new = {name: inst["pid"] for n in nodes for name, inst in n.running_here("web").items()}
    assert all(new[name] != old[name] for name in old), "every instance runs a new process"
    # Node by node: each node's new processes all started after the previous node's had (activity files).
    starts: dict[str, list[float]] = {}
    for path in tmp_path.glob("web-*.log"):
        pid = int(path.name.split(".")[1])
        if pid in new.values():
            lines = path.read_text().split("\n")
            starts.setdefault(lines[0].split()[3], []).append(float(lines[1]))
    order = [o["node"] for o in outcome["nodes"]]
    for first, second in zip(order, order[1:], strict=False):
        assert max(starts[first]) < min(starts[second]), f"{second} began rolling before {first} was done"
    events = [json.loads(line) for line in nodes[0].cli("events", "--no-follow").stdout.splitlines()]
    assert any(e.get("type") == "cluster" and e.get("event") == "rolling" for e in events)
