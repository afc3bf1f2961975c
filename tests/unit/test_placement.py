"""Cluster placement, by example: place() (the target) and plan() (the writes to etcd)."""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Mapping
from typing import Any

import pytest

from supervise.core.placement import (
    AppSpec,
    Assignment,
    Delete,
    Node,
    Put,
    Slot,
    SlotReport,
    Write,
    fencing_token,
    place,
    plan,
)

ALL = frozenset({"web", "api", "db", "agent", "cron", "aa", "zz"})

Etcd = dict[Slot, tuple[Assignment, int]]
Reports = dict[str, dict[Slot, SlotReport]]


def node(name: str, capacity: int = 10, apps: frozenset[str] = ALL, cordoned: bool = False, **labels: str) -> Node:
    return Node(name, capacity, labels, apps, cordoned)


def app(name: str, instances: int, placement: str = "cluster", **kw: Any) -> AppSpec:
    return AppSpec(name, instances, placement, **kw)


def per_node(result: Mapping[Slot, str], app_name: str | None = None) -> Counter[str]:
    return Counter(n for s, n in result.items() if app_name is None or s.app == app_name)


def slots(app_name: str, n: int) -> list[Slot]:
    return [Slot(app_name, i) for i in range(n)]


def etcd_of(assigned: Mapping[Slot, str], first_revision: int = 10) -> Etcd:
    return {s: (Assignment(n), first_revision + i) for i, (s, n) in enumerate(sorted(assigned.items()))}


def apply(etcd: Etcd, writes: list[Write], revision: int) -> tuple[Etcd, int]:
    """etcd after ``writes``, one revision each; and the last revision."""
    etcd = dict(etcd)
    for w in writes:
        revision += 1
        if isinstance(w, Put):
            etcd[w.slot] = (w.assignment, revision)
        else:
            etcd.pop(w.slot, None)
    return etcd, revision


def running(etcd: Etcd, live: set[str], ready: bool = True) -> Reports:
    """Reports of live nodes that run exactly what is assigned to them (and, ready or not)."""
    reports: Reports = {n: {} for n in live}
    for s, (a, _) in etcd.items():
        if a.node in live:
            reports[a.node][s] = SlotReport(active=True, ready=ready)
    return reports


# -- place(): where slots go ---------------------------------------------------------------------------------------


def test_instances_spread_evenly_over_nodes():
    result = place([node("a"), node("b"), node("c")], [app("web", 9)], {})
    assert sorted(result) == slots("web", 9)
    assert per_node(result) == {"a": 3, "b": 3, "c": 3}


def test_two_apps_share_nodes_evenly():
    result = place([node("a"), node("b")], [app("web", 3), app("api", 3)], {})
    assert sorted(per_node(result).values()) == [3, 3]
    assert set(per_node(result, "api").values()) == {1, 2} and set(per_node(result, "web").values()) == {1, 2}


def test_capacity_is_respected_and_the_rest_waits():
    result = place([node("a", 2), node("b", 1)], [app("web", 5)], {})
    assert sorted(result) == slots("web", 3)
    assert per_node(result) == {"a": 2, "b": 1}


def test_capacity_counts_every_app_together():
    result = place([node("a", 3)], [app("api", 2), app("web", 2)], {})
    assert per_node(result) == {"a": 3} and Slot("web", 1) not in result  # apps by name: api first


def test_zero_or_negative_capacity_takes_nothing():
    assert place([node("a", 0), node("b", -1)], [app("web", 2)], {}) == {}


def test_constraints_must_match_exactly():
    nodes = [node("a", zone="a", disk="ssd"), node("b", zone="b", disk="ssd"), node("c", zone="a")]
    result = place(nodes, [app("db", 4, constraints={"zone": "a", "disk": "ssd"})], {})
    assert per_node(result) == {"a": 4}
    assert place(nodes, [app("db", 1, constraints={"zone": "z"})], {}) == {}


def test_a_node_without_the_apps_config_gets_none_of_it():
    result = place([node("a", apps=frozenset({"api"})), node("b")], [app("web", 4)], {})
    assert per_node(result) == {"b": 4}


def test_spread_by_zone_balances_zones_not_nodes():
    nodes = [node("a1", zone="a"), node("a2", zone="a"), node("a3", zone="a"), node("b1", zone="b")]
    assert per_node(place(nodes, [app("web", 4, spread="zone")], {})) == {"a1": 1, "a2": 1, "b1": 2}
    assert per_node(place(nodes, [app("web", 4)], {})) == {"a1": 1, "a2": 1, "a3": 1, "b1": 1}


def test_a_missing_spread_label_is_a_value_of_its_own():
    nodes = [node("a1", zone="a"), node("a2", zone="a"), node("x"), node("y")]
    result = place(nodes, [app("web", 4, spread="zone")], {})
    assert per_node(result) == {"a1": 1, "a2": 1, "x": 1, "y": 1}
    zone_of = {"a1": "a", "a2": "a", "x": "", "y": ""}
    assert Counter(zone_of[n] for n in result.values()) == {"a": 2, "": 2}


def test_ties_go_to_the_lower_load_ratio_then_the_name():
    # b is emptier relative to its capacity; a and c tie on everything but the name.
    current = {Slot("api", 0): "a", Slot("api", 1): "c"}
    result = place([node("a", 4), node("b", 1), node("c", 4)], [app("api", 2), app("web", 2)], current)
    assert result[Slot("web", 0)] == "b" and result[Slot("web", 1)] == "a"


def test_singletons_are_placed_first():
    result = place([node("a", 2)], [app("api", 2), app("zz", 1, singleton=True)], {})
    assert result == {Slot("zz", 0): "a", Slot("api", 0): "a"}


def test_a_singleton_has_only_index_0():
    result = place([node("a"), node("b")], [app("db", 3, singleton=True)], {Slot("db", 1): "a"})
    assert list(result) == [Slot("db", 0)]


def test_adding_a_node_moves_nothing():
    nodes = [node("a"), node("b")]
    apps = [app("web", 6, spread="zone"), app("api", 3), app("agent", 1, "every-node")]
    before = place(nodes, apps, {})
    after = place([*nodes, node("c")], apps, before)
    assert {s: n for s, n in after.items() if s in before} == before
    assert set(after) - set(before) == {Slot("agent", 2)} and after[Slot("agent", 2)] == "c"


def test_losing_a_node_moves_only_its_slots():
    nodes = [node("a"), node("b"), node("c")]
    apps = [app("web", 9), app("api", 3)]
    before = place(nodes, apps, {})
    after = place(nodes[:2], apps, before)
    moved = {s for s in before if after[s] != before[s]}
    assert moved == {s for s, n in before.items() if n == "c"}
    assert set(after.values()) == {"a", "b"} and sorted(after) == sorted(before)


def test_the_dead_nodes_slots_go_where_their_app_is_fewest():
    nodes = [node("a", 10), node("b", 10), node("c", 10)]
    current = {Slot("web", 0): "a", Slot("web", 1): "a", Slot("web", 2): "b", Slot("web", 3): "dead"}
    assert place(nodes, [app("web", 4)], current)[Slot("web", 3)] == "c"


def test_scale_down_drops_the_highest_indexes_and_plan_deletes_them():
    nodes = [node("a"), node("b")]
    before = place(nodes, [app("web", 5)], {})
    after = place(nodes, [app("web", 3)], before)
    assert after == {s: n for s, n in before.items() if s.index < 3}
    writes = plan(nodes, [app("web", 3)], etcd_of(before), running(etcd_of(before), {"a", "b"}))
    assert writes == [Delete(Slot("web", 3)), Delete(Slot("web", 4))]


def test_scale_up_adds_slots_and_keeps_the_others():
    nodes = [node("a"), node("b")]
    before = place(nodes, [app("web", 2)], {})
    after = place(nodes, [app("web", 4)], before)
    assert {s: after[s] for s in before} == before and sorted(after) == slots("web", 4)
    assert per_node(after) == {"a": 2, "b": 2}
    writes = plan(nodes, [app("web", 4)], etcd_of(before), running(etcd_of(before), {"a", "b"}))
    assert writes == [Put(Slot("web", 2), Assignment(after[Slot("web", 2)])),
                      Put(Slot("web", 3), Assignment(after[Slot("web", 3)]))]


def test_an_app_removed_from_the_config_is_deleted():
    current = {Slot("web", 0): "a", Slot("gone", 0): "a"}
    assert place([node("a")], [app("web", 1)], current) == {Slot("web", 0): "a"}
    assert plan([node("a")], [app("web", 1)], etcd_of(current), {}) == [Delete(Slot("gone", 0))]


def test_a_lowered_capacity_sheds_the_highest_slots_elsewhere():
    current = {Slot("api", 0): "a", Slot("web", 0): "a", Slot("web", 1): "a"}
    result = place([node("a", 1), node("b", 5)], [app("api", 1), app("web", 2)], current)
    assert result == {Slot("api", 0): "a", Slot("web", 0): "b", Slot("web", 1): "b"}


def test_a_lowered_capacity_keeps_singletons_before_others():
    current = {Slot("api", 0): "a", Slot("db", 0): "a"}
    result = place([node("a", 1), node("b", 5)], [app("api", 1), app("db", 1, singleton=True)], current)
    assert result == {Slot("db", 0): "a", Slot("api", 0): "b"}


def test_shed_slots_with_nowhere_to_go_wait():
    current = {Slot("web", 0): "a", Slot("web", 1): "a", Slot("web", 2): "a"}
    assert place([node("a", 2)], [app("web", 3)], current) == {Slot("web", 0): "a", Slot("web", 1): "a"}


# -- place(): slots with nowhere to go -------------------------------------------------------------------------------


def test_a_dead_nodes_slots_stay_on_it_when_there_is_nowhere_to_go():
    current = {Slot("web", 0): "dead", Slot("web", 1): "a"}
    nodes = [node("a", 1)]
    assert place(nodes, [app("web", 2)], current) == current
    assert plan(nodes, [app("web", 2)], etcd_of(current), running(etcd_of(current), {"a"})) == []


def test_a_cordoned_node_keeps_its_slots_when_there_is_nowhere_to_go():
    current = {Slot("web", 0): "a", Slot("db", 0): "a"}
    apps = [app("web", 1), app("db", 1, singleton=True)]
    assert place([node("a", cordoned=True)], apps, current) == current
    assert place([node("a", cordoned=True), node("b", apps=frozenset({"web"}))], apps, current) == {
        Slot("web", 0): "b", Slot("db", 0): "a"}


def test_a_slot_waiting_on_an_ineligible_node_keeps_its_room_there():
    # web:0 no longer fits a's labels and has nowhere to go: it stays, and a has no room for api:1.
    current = {Slot("web", 0): "a", Slot("api", 0): "a"}
    apps = [app("api", 2), app("web", 1, constraints={"zone": "b"})]
    result = place([node("a", 2, zone="a")], apps, current)
    assert result == current
    # Once b appears, web:0 moves and api:1 takes its room.
    result = place([node("a", 2, zone="a"), node("b", 1, zone="b", apps=frozenset({"web"}))], apps, current)
    assert result == {Slot("api", 0): "a", Slot("api", 1): "a", Slot("web", 0): "b"}


def test_slots_that_must_move_go_before_new_ones():
    current = {Slot("zz", 0): "dead"}
    result = place([node("a", 1)], [app("aa", 1), app("zz", 1)], current)
    assert result == {Slot("zz", 0): "a"}


def test_a_slot_that_moves_frees_room_for_one_that_could_not():
    # api:0 leaves a (constraint) for b; web:0 (dead node, only a may run it) then fits on a.
    nodes = [node("a", 1, zone="a"), node("b", 1, zone="b", apps=frozenset({"api"}))]
    apps = [app("api", 1, constraints={"zone": "b"}), app("web", 1)]
    current = {Slot("api", 0): "a", Slot("web", 0): "dead"}
    result = place(nodes, apps, current)
    assert result == {Slot("api", 0): "b", Slot("web", 0): "a"}
    assert place(nodes, apps, result) == result


# -- place(): every-node ----------------------------------------------------------------------------------------------


def test_every_node_gives_each_eligible_node_its_instances():
    nodes = [node("a"), node("b", apps=frozenset({"web"})), node("c", cordoned=True), node("d")]
    result = place(nodes, [app("agent", 2, "every-node")], {})
    assert result == {Slot("agent", 0): "a", Slot("agent", 1): "a", Slot("agent", 2): "d", Slot("agent", 3): "d"}


def test_every_node_new_node_gets_the_lowest_free_indexes():
    current = {Slot("agent", 0): "a", Slot("agent", 2): "b", Slot("agent", 5): "b"}
    result = place([node("a"), node("b"), node("c")], [app("agent", 1, "every-node")], current)
    assert result == {Slot("agent", 0): "a", Slot("agent", 2): "b", Slot("agent", 1): "c"}


def test_every_node_scale_up_keeps_indexes_and_fills_the_lowest_free():
    current = {Slot("agent", 0): "a", Slot("agent", 1): "b"}
    result = place([node("a"), node("b")], [app("agent", 2, "every-node")], current)
    assert result == {Slot("agent", 0): "a", Slot("agent", 2): "a", Slot("agent", 1): "b", Slot("agent", 3): "b"}


def test_every_node_slots_of_a_dead_node_are_deleted_not_moved():
    current = {Slot("agent", 0): "a", Slot("agent", 1): "dead"}
    nodes = [node("a")]
    assert place(nodes, [app("agent", 1, "every-node")], current) == {Slot("agent", 0): "a"}
    writes = plan(nodes, [app("agent", 1, "every-node")], etcd_of(current), running(etcd_of(current), {"a"}))
    assert writes == [Delete(Slot("agent", 1))]


def test_every_node_respects_capacity():
    current = {Slot("web", 0): "a"}
    result = place([node("a", 2), node("b", 5)], [app("agent", 3, "every-node"), app("web", 1)], current)
    assert per_node(result, "agent") == {"a": 1, "b": 3} and result[Slot("web", 0)] == "a"


# -- plan(): writes ------------------------------------------------------------------------------------------------


def test_plan_puts_new_slots_and_writes_nothing_once_they_are_there():
    nodes, apps = [node("a"), node("b")], [app("web", 2), app("agent", 1, "every-node")]
    writes = plan(nodes, apps, {}, {})
    assert [type(w) for w in writes] == [Put] * 4 and writes == sorted(writes, key=lambda w: w.slot)
    etcd, _ = apply({}, writes, 100)
    assert plan(nodes, apps, etcd, running(etcd, {"a", "b"})) == []
    assert plan(nodes, apps, etcd, {}) == []  # not running yet: still nothing to write


def test_cordon_hands_off_and_completes_once_the_target_is_ready():
    apps = [app("web", 1)]
    etcd: Etcd = {Slot("web", 0): (Assignment("a"), 7)}
    nodes = [node("a", cordoned=True), node("b")]
    reports: Reports = {"a": {Slot("web", 0): SlotReport(True, True)}, "b": {}}
    writes = plan(nodes, apps, etcd, reports)
    assert writes == [Put(Slot("web", 0), Assignment("b", token=None, handoff_from="a"))]
    etcd, revision = apply(etcd, writes, 20)
    assert plan(nodes, apps, etcd, reports) == []  # b has not started it: a keeps running it
    reports["b"] = {Slot("web", 0): SlotReport(True, False)}
    assert plan(nodes, apps, etcd, reports) == []  # started, not ready
    reports["b"] = {Slot("web", 0): SlotReport(True, True)}
    writes = plan(nodes, apps, etcd, reports)
    assert writes == [Put(Slot("web", 0), Assignment("b", token=21))]  # the handoff's revision, carried
    etcd, _ = apply(etcd, writes, revision)
    assert fencing_token(*etcd[Slot("web", 0)]) == 21
    assert plan(nodes, apps, etcd, {"a": {}, "b": reports["b"]}) == []


def test_a_handoff_ends_when_the_old_node_stops_running_the_slot():
    etcd: Etcd = {Slot("web", 0): (Assignment("b", handoff_from="a"), 30)}
    nodes = [node("a", cordoned=True), node("b")]
    assert plan(nodes, [app("web", 1)], etcd, {"a": {}, "b": {}}) == [Put(Slot("web", 0), Assignment("b", token=30))]
    assert plan(nodes[1:], [app("web", 1)], etcd, {"b": {}}) == [Put(Slot("web", 0), Assignment("b", token=30))]


def test_a_handoff_whose_target_dies_is_placed_again_from_the_original_node():
    etcd: Etcd = {Slot("web", 0): (Assignment("b", handoff_from="a"), 30)}
    nodes = [node("a", cordoned=True), node("c")]
    reports: Reports = {"a": {Slot("web", 0): SlotReport(True, True)}, "c": {}}
    assert plan(nodes, [app("web", 1)], etcd, reports) == [
        Put(Slot("web", 0), Assignment("c", token=None, handoff_from="a"))]
    reports["a"] = {}  # the original stopped it meanwhile: a plain move
    assert plan(nodes, [app("web", 1)], etcd, reports) == [Put(Slot("web", 0), Assignment("c"))]


def test_moving_off_a_live_node_that_does_not_run_the_slot_is_a_plain_put():
    etcd: Etcd = {Slot("web", 0): (Assignment("a", token=3), 9)}
    nodes = [node("a", cordoned=True), node("b")]
    assert plan(nodes, [app("web", 1)], etcd, {"a": {}, "b": {}}) == [Put(Slot("web", 0), Assignment("b"))]


def test_a_dead_nodes_slot_moves_at_once_with_a_new_token():
    etcd: Etcd = {Slot("web", 0): (Assignment("dead", token=3), 9)}
    assert plan([node("b")], [app("web", 1)], etcd, {"b": {}}) == [Put(Slot("web", 0), Assignment("b"))]


def test_a_singleton_stops_before_it_starts_elsewhere():
    apps = [app("db", 1, singleton=True)]
    nodes = [node("a", cordoned=True), node("b")]
    etcd: Etcd = {Slot("db", 0): (Assignment("a"), 5)}
    reports: Reports = {"a": {Slot("db", 0): SlotReport(True, True)}, "b": {}}
    writes = plan(nodes, apps, etcd, reports)
    assert writes == [Delete(Slot("db", 0))]  # no handoff: never two at once
    etcd, revision = apply(etcd, writes, 10)
    assert plan(nodes, apps, etcd, reports) == []  # a still runs it: wait
    reports["a"] = {}
    writes = plan(nodes, apps, etcd, reports)
    assert writes == [Put(Slot("db", 0), Assignment("b"))]
    etcd, _ = apply(etcd, writes, revision)
    assert fencing_token(*etcd[Slot("db", 0)]) == 12


def test_a_singleton_is_deleted_first_even_if_its_live_holder_does_not_report_it():
    etcd: Etcd = {Slot("db", 0): (Assignment("a"), 5)}
    nodes = [node("a", apps=frozenset({"web"})), node("b")]
    assert plan(nodes, [app("db", 1, singleton=True)], etcd, {"a": {}, "b": {}}) == [Delete(Slot("db", 0))]


def test_a_singleton_on_a_dead_node_moves_at_once():
    etcd: Etcd = {Slot("db", 0): (Assignment("dead"), 5)}
    reports: Reports = {"b": {}, "dead": {Slot("db", 0): SlotReport(True, True)}}  # not live: ignored
    assert plan([node("b")], [app("db", 1, singleton=True)], etcd, reports) == [Put(Slot("db", 0), Assignment("b"))]


def test_a_new_singleton_waits_while_another_live_node_runs_it():
    nodes, apps = [node("a"), node("b")], [app("db", 1, singleton=True)]
    assert place(nodes, apps, {}) == {Slot("db", 0): "a"}
    assert plan(nodes, apps, {}, {"a": {}, "b": {Slot("db", 0): SlotReport(True, False)}}) == []
    assert plan(nodes, apps, {}, {"a": {Slot("db", 0): SlotReport(True, False)}, "b": {}}) == [
        Put(Slot("db", 0), Assignment("a"))]


def test_tokens_are_carried_forward_by_tidying_writes_and_renewed_by_moves():
    assert fencing_token(Assignment("a"), 17) == 17
    assert fencing_token(Assignment("a", token=4), 17) == 4
    # A tidying write carries the explicit token, or the old revision.
    etcd: Etcd = {Slot("web", 0): (Assignment("b", token=4, handoff_from="a"), 40),
                  Slot("web", 1): (Assignment("b", handoff_from="a"), 41)}
    nodes = [node("a"), node("b")]
    ready: Reports = {"a": {}, "b": {Slot("web", 0): SlotReport(True, True), Slot("web", 1): SlotReport(True, True)}}
    assert plan(nodes, [app("web", 2)], etcd, ready) == [
        Put(Slot("web", 0), Assignment("b", token=4)), Put(Slot("web", 1), Assignment("b", token=41))]
    # Every move leaves the token to the write's revision: larger than any before.
    etcd = {Slot("web", 0): (Assignment("gone", token=4), 40)}
    (write,) = plan([node("b")], [app("web", 1)], etcd, {})
    assert isinstance(write, Put) and write.assignment.token is None


def test_an_idle_cluster_writes_nothing():
    nodes = [node("a", 3, zone="a"), node("b", 3, zone="b"), node("c", 3, zone="a")]
    apps = [app("web", 4, spread="zone"), app("db", 1, singleton=True), app("agent", 1, "every-node")]
    etcd, _ = apply({}, plan(nodes, apps, {}, {}), 0)
    assert plan(nodes, apps, etcd, running(etcd, {"a", "b", "c"})) == []


def test_plan_is_idempotent_once_its_writes_are_applied():
    """After each round's writes, planning again with the same reports writes nothing."""
    rng = random.Random(7)
    nodes = [node(f"n{i}", rng.randint(2, 5), zone="ab"[i % 2]) for i in range(5)]
    apps = [app("web", 6, spread="zone"), app("api", 3), app("db", 1, singleton=True),
            app("agent", 1, "every-node"), app("cron", 2, constraints={"zone": "b"})]
    etcd, revision = apply({}, plan(nodes, apps, {}, {}), 0)
    live = {n.name for n in nodes}
    changes = [
        lambda ns: [n for n in ns if n.name != "n1"],  # a node dies
        lambda ns: [Node(n.name, n.capacity, n.labels, n.apps, n.name == "n2") for n in ns],  # cordon
        lambda ns: [Node(n.name, 1, n.labels, n.apps, n.cordoned) for n in ns],  # capacity down
    ]
    for change in changes:
        nodes = change(nodes)
        live = {n.name for n in nodes}
        for _ in range(6):
            reports = running(etcd, live)
            for s, (a, _) in etcd.items():  # the old nodes of handoffs still run theirs
                if a.handoff_from in live:
                    reports[a.handoff_from][s] = SlotReport(True, True)
            writes = plan(nodes, apps, etcd, reports)
            etcd, revision = apply(etcd, writes, revision)
            again = plan(nodes, apps, etcd, reports)
            # The one second step there may be: a singleton deleted off a node that did not run it goes on.
            deleted = {w.slot for w in writes if isinstance(w, Delete)}
            assert all(isinstance(w, Put) and w.slot in deleted and w.slot.app == "db" for w in again), again
            etcd, revision = apply(etcd, again, revision)
        assert plan(nodes, apps, etcd, running(etcd, live)) == []


def test_ordering_of_the_input_does_not_matter():
    rng = random.Random(3)
    nodes = [node(f"n{i}", rng.randint(1, 6), zone="abc"[i % 3], disk="ssd" if i % 2 else "hdd") for i in range(8)]
    apps = [app("web", 10, spread="zone"), app("api", 7), app("db", 1, singleton=True, constraints={"disk": "ssd"}),
            app("agent", 1, "every-node"), app("cron", 3, constraints={"zone": "a"})]
    current = {Slot("web", i): f"n{rng.randrange(10)}" for i in range(12)}
    current |= {Slot("agent", i): f"n{i % 9}" for i in range(9)}
    expected = place(nodes, apps, current)
    etcd = etcd_of(current)
    reports = running(etcd, {n.name for n in nodes})
    expected_writes = plan(nodes, apps, etcd, reports)
    for _ in range(20):
        shuffled_nodes, shuffled_apps, items = list(nodes), list(apps), list(current.items())
        rng.shuffle(shuffled_nodes)
        rng.shuffle(shuffled_apps)
        rng.shuffle(items)
        assert place(shuffled_nodes, shuffled_apps, dict(items)) == expected
        etcd_items = list(etcd.items())
        rng.shuffle(etcd_items)
        assert plan(shuffled_nodes, shuffled_apps, dict(etcd_items), reports) == expected_writes


def test_place_is_a_fixed_point():
    nodes = [node("a", 2, zone="a"), node("b", 3, zone="b", cordoned=True), node("c", 1)]
    apps = [app("web", 5, spread="zone"), app("db", 1, singleton=True), app("agent", 1, "every-node")]
    current = {Slot("web", 0): "b", Slot("web", 1): "dead", Slot("web", 4): "a", Slot("db", 0): "b"}
    once = place(nodes, apps, current)
    assert place(nodes, apps, once) == once


def test_two_nodes_or_apps_of_one_name_are_refused():
    with pytest.raises(ValueError, match="two nodes"):
        place([node("a"), node("a")], [], {})
    with pytest.raises(ValueError, match="two apps"):
        place([], [app("web", 1), app("web", 2)], {})
    with pytest.raises(ValueError, match="placement"):
        place([], [app("web", 1, "local")], {})
