"""Cluster mode under failures (points 4-7): node loss, leader loss, a partition, a paused daemon, etcd down.

Timings here are bounds generous enough for a loaded 2-core machine; the tight
figures are benchmarks/cluster.py's. What must hold exactly holds exactly: a
singleton never runs twice at once (from the workers' own activity records),
fencing tokens only grow, and an etcd outage restarts nothing.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from urllib.parse import urlsplit

from helpers import wait_until
from nodes import activity, placement, wait_placed

TTL = 3

APPS = """
[apps.web]
command = {activity}
instances = 4
placement = "cluster"
readiness = "heartbeat"

[apps.lock]
command = {activity}
placement = "cluster"
singleton = true
readiness = "heartbeat"
stop_timeout = "5s"
"""


def assert_never_twice(directory: Path, name: str) -> list[tuple[int, float, float, int, str]]:
    """No two processes of `name` were ever active at once; a placement on another node has a larger
    token (the same placement, resumed on its node after a fence, keeps its token)."""
    runs = activity(directory, name)
    for before, after in zip(runs, runs[1:], strict=False):
        assert after[1] > before[2], f"{name}: pid {after[3]} started {before[2] - after[1]:.3f}s before " \
                                     f"pid {before[3]} stopped"
        assert after[0] > before[0] or (after[0] == before[0] and after[4] == before[4]), \
            f"{name}: token {after[0]} on {after[4]} after {before[0]} on {before[4]}"
    return runs


def nodes_of(make_node, endpoints_of, tmp_path, names=("n1", "n2", "n3"), apps=APPS):
    nodes = [make_node(name, endpoints_of(name), apps.replace("instances = 4", "instances = 0"),
                       activity=tmp_path, lease_ttl=TTL) for name in names]
    wait_until(lambda: sum(n["alive"] for n in nodes[0].cluster()["nodes"]) == len(names), 15,
               message="every node alive")
    assert nodes[0].cli("scale", "web", "4").returncode == 0
    return nodes


def holder(nodes, app="lock"):
    where = wait_placed(nodes, app, 1)
    return next(n for n in nodes if n.name == where[f"{app}:0"])


def events(node) -> list[dict]:
    return [json.loads(line) for line in node.cli("events", "--no-follow").stdout.splitlines()]


def test_node_loss_moves_its_instances_to_the_survivors(make_node, etcd, tmp_path):
    nodes = nodes_of(make_node, lambda _: [etcd.endpoint], tmp_path)
    wait_placed(nodes, "web", 4)
    victim = holder(nodes)
    lost = [name for name, node in placement(nodes).items() if node == victim.name]
    start = time.monotonic()
    victim.kill_node()
    survivors = [n for n in nodes if n is not victim]
    where = wait_until(lambda: (p := placement(survivors)) and all(name in p for name in lost) and p, TTL + 10,
                       interval=0.05, message=f"{lost} running on the survivors")
    took = time.monotonic() - start
    assert took < TTL + 6, f"re-placed after {took:.1f}s"
    assert set(where.values()) <= {n.name for n in survivors}
    assert_never_twice(tmp_path, "lock:0")
    view = survivors[0].cluster()
    assert victim.name not in {n["name"] for n in view["nodes"] if n["alive"]}
    assert any(e.get("event") == "node-lost" and e.get("node") == victim.name for e in events(survivors[0]))


def test_leader_loss_a_new_leader_carries_on(make_node, etcd, tmp_path):
    nodes = nodes_of(make_node, lambda _: [etcd.endpoint], tmp_path)
    wait_placed(nodes, "web", 4)
    leader = next(n for n in nodes if n.name == nodes[0].cluster()["leader"])
    leader.kill_node()
    survivors = [n for n in nodes if n is not leader]
    new = wait_until(lambda: (v := survivors[0].cluster())["leader"] not in (None, leader.name) and v["leader"],
                     TTL + 10, interval=0.05, message="a new leader")
    assert new in {n.name for n in survivors}
    wait_placed(survivors, "web", 4, timeout=TTL + 10)
    wait_placed(survivors, "lock", 1, timeout=TTL + 10)
    assert_never_twice(tmp_path, "lock:0")


def test_a_partitioned_node_fences_its_singleton_before_it_runs_elsewhere(make_node, etcd, tcp_proxy, tmp_path):
    host, port = urlsplit(etcd.endpoint).hostname, urlsplit(etcd.endpoint).port
    proxies = {name: tcp_proxy(host, port) for name in ("n1", "n2", "n3")}
    nodes = nodes_of(make_node, lambda name: [proxies[name].endpoint], tmp_path)
    wait_placed(nodes, "web", 4)
    cut = holder(nodes)
    stale_web = [name for name, node in placement(nodes, "web").items() if node == cut.name]
    proxies[cut.name].cut("blackhole")
    others = [n for n in nodes if n is not cut]
    wait_placed(others, "lock", 1, timeout=TTL + 10)
    assert_never_twice(tmp_path, "lock:0")
    # Cut off, the node goes on running its other cluster instances (static stability)...
    assert set(stale_web) <= set(cut.running_here("web")), "non-singletons keep running while cut off"
    assert any(e.get("event") == "fenced" for e in events(cut))
    # ...and once back, it stops those placed elsewhere meanwhile and steals nothing back.
    proxies[cut.name].restore()
    wait_until(lambda: any(n["name"] == cut.name and n["alive"] for n in others[0].cluster()["nodes"]), TTL + 10,
               interval=0.05, message="the node rejoined")
    final = wait_until(lambda: (p := placement(nodes, "web")) and len(p) == 4 and p, TTL + 10, interval=0.05,
                       message="4 web instances, once each")
    for name in stale_web:
        assert final[name] != cut.name or name not in placement(others, "web")
    assert placement(nodes, "lock")["lock:0"] != cut.name, "the singleton was not stolen back"
    assert_never_twice(tmp_path, "lock:0")


def test_a_paused_daemon_cannot_leave_its_singleton_running(make_node, etcd, tmp_path):
    nodes = nodes_of(make_node, lambda _: [etcd.endpoint], tmp_path, names=("n1", "n2"))
    paused = holder(nodes)
    pid = paused.running_here("lock")["lock:0"]["pid"]
    paused.pause()
    try:
        other = next(n for n in nodes if n is not paused)
        wait_placed([other], "lock", 1, timeout=TTL + 10)
        runs = assert_never_twice(tmp_path, "lock:0")
        assert runs[0][3] == pid and runs[-1][3] != pid
    finally:
        paused.resume()
    # Resumed, the daemon finds its lease gone: it fences (its worker stopped itself already) and rejoins.
    wait_until(lambda: any(e.get("event") in ("fenced", "lease-lost") for e in events(paused)), 10,
               message="the resumed daemon noticed")
    wait_until(lambda: not paused.running_here("lock"), 10, message="no stale singleton on the resumed node")
    assert_never_twice(tmp_path, "lock:0")


def test_etcd_down_restarts_and_moves_nothing_but_fenced_singletons(make_node, etcd, tmp_path):
    nodes = nodes_of(make_node, lambda _: [etcd.endpoint], tmp_path, names=("n1", "n2"))
    wait_placed(nodes, "web", 4)
    wait_placed(nodes, "lock", 1)
    web = {name: (n.name, inst["pid"]) for n in nodes for name, inst in n.running_here("web").items()}
    etcd.kill()
    # Past the lease: singletons fence themselves; everything else runs on where it was.
    wait_until(lambda: not placement(nodes, "lock"), TTL + 5, interval=0.05, message="the singleton fenced")
    deadline = time.monotonic() + TTL + 1
    while time.monotonic() < deadline:  # watching that nothing changes, for longer than a lease
        now = {name: (n.name, inst["pid"]) for n in nodes for name, inst in n.running_here("web").items()}
        assert now == web, "an etcd outage restarted or moved an instance"
        time.sleep(0.2)
    for node in nodes:
        assert not node.cluster()["connected"]
    etcd.restart()
    wait_placed(nodes, "lock", 1, timeout=TTL + 15)
    now = {name: (n.name, inst["pid"]) for n in nodes for name, inst in n.running_here("web").items()}
    assert now == web, "etcd's return restarted or moved a healthy instance"
    assert all(inst["restarts"] == 0 for n in nodes for inst in n.running_here("web").values())
    assert_never_twice(tmp_path, "lock:0")


def test_an_etcd_member_lost_changes_nothing_and_the_cluster_still_acts(make_node, etcd_cluster, tmp_path):
    """Three etcd members, every daemon told of all three: the etcd leader's SIGKILL is a failover for the
    clients (nothing restarts), and afterwards the cluster still re-places a lost node's instances."""
    nodes = nodes_of(make_node, lambda _: etcd_cluster.endpoints, tmp_path)
    wait_placed(nodes, "web", 4)
    wait_placed(nodes, "lock", 1)
    web = {name: (n.name, inst["pid"]) for n in nodes for name, inst in n.running_here("web").items()}
    etcd_cluster.leader().kill()
    wait_until(lambda: etcd_cluster.leader(), 15, message="a new etcd leader")
    wait_until(lambda: all(n.cluster()["connected"] for n in nodes), TTL + 10, interval=0.1,
               message="every node renewing its lease through the members left")
    now = {name: (n.name, inst["pid"]) for n in nodes for name, inst in n.running_here("web").items()}
    assert now == web, "an etcd member's loss restarted or moved an instance"
    victim = next(n for n in nodes if n.running_here("web"))
    lost = list(victim.running_here("web"))
    victim.kill_node()
    survivors = [n for n in nodes if n is not victim]
    # A new etcd leader resets every lease to its full TTL (etcd-io/etcd#9395): up to about 2 x TTL.
    wait_until(lambda: all(name in placement(survivors, "web") for name in lost), 2 * TTL + 10, interval=0.05,
               message=f"{lost} re-placed after the etcd failover")
    assert_never_twice(tmp_path, "lock:0")
