"""Cluster mode in the core of one node: placement snapshots (Assigned), the lease (LeaseRenewed,
LeaseLost, the fence deadline) and fencing of singletons, tokens, scale, news, drain and adoption.

Most tests drive the core through the fake shell (fake clock, fake processes that stay until told to
exit); a few feed a bare ``Core`` where the order of the returned actions is the point.
"""

from __future__ import annotations

import dataclasses
import random
import signal
from collections.abc import Iterator
from contextlib import contextmanager

from fakeshell import KILL_LATENCY, FakeShell, app, config

from supervise.config.model import AppConfig, ClusterConfig, Config, Placement, Readiness
from supervise.core import (
    Action,
    Adopt,
    Adopted,
    AppRecord,
    CommandReceived,
    Core,
    DaemonStarted,
    DeadlineReached,
    Exited,
    KillTree,
    Publish,
    Recovered,
    Reply,
    ShutdownRequested,
    Signal,
    Spawn,
    Spawned,
    Verb,
)
from supervise.core.actions import ExtendFence, ScaleCluster
from supervise.core.events import Assigned, ClusterNews, LeaseLost, LeaseRenewed
from supervise.core.instance import State

CLUSTER = ClusterConfig(etcd=("127.0.0.1:1",), lease_ttl=5, node="n1")
GRACE = CLUSTER.fence_margin / 2  # a fenced singleton is killed this long after its stop signal at most


def leader(**kw: object) -> AppConfig:
    return app("leader", placement=Placement.CLUSTER, singleton=True, **kw)


def spread(**kw: object) -> AppConfig:
    kw.setdefault("instances", 3)
    return app("spread", placement=Placement.CLUSTER, **kw)


def agent(**kw: object) -> AppConfig:
    kw.setdefault("instances", 2)
    return app("agent", placement=Placement.EVERY_NODE, **kw)


def cluster_config(*apps: AppConfig) -> Config:
    return dataclasses.replace(config(*apps), cluster=CLUSTER)


def assigned(held: dict[str, set[int]] | None = None, **slots: dict[int, int]) -> Assigned:
    return Assigned(slots, {name: frozenset(indexes) for name, indexes in (held or {}).items()})


class ClusterShell(FakeShell):
    """The fake shell, also keeping the cluster's actions (the fake shell itself ignores them)."""

    def __init__(self, cfg: Config, seed: int = 0) -> None:
        super().__init__(cfg, seed)
        self.extended: list[ExtendFence] = []
        self.scaled: list[ScaleCluster] = []

    def carry_out(self, actions: list[Action]) -> None:
        super().carry_out(actions)
        for action in actions:
            if isinstance(action, ExtendFence):
                self.extended.append(action)
            elif isinstance(action, ScaleCluster):
                self.scaled.append(action)

    def spawned(self, name: str, since: int = 0) -> list[Spawn]:
        return [s for s in self.spawns[since:] if s.app.name == name]

    def live_names(self) -> list[str]:
        return sorted(p.name for p in self.live())

    def sid(self, name: str) -> int:
        """The spawn id of the live process of instance `name` (app:index)."""
        [proc] = [p for p in self.live() if p.name == name]
        return proc.spawn_id

    def indexes(self, app_name: str) -> list[int]:
        return [int(i["index"]) for i in self.slots(app_name)]  # type: ignore[call-overload]

    def exit_stopped(self) -> None:
        """Every process that was asked to stop exits."""
        for proc in list(self.live()):
            if proc.stop_signalled_at is not None:
                self.exit_process(proc, 0, None)


def running(*apps: AppConfig, fence_at: float | None = 4.0, **slots: dict[int, int]) -> ClusterShell:
    """A started node with `slots` assigned (and its lease renewed until `fence_at`, unless None)."""
    shell = ClusterShell(cluster_config(*apps))
    shell.start()
    shell.feed(assigned(**slots))
    if fence_at is not None:
        shell.feed(LeaseRenewed(fence_at))
    return shell


# -- placement ----------------------------------------------------------------------------


def test_nothing_of_a_cluster_app_starts_before_the_first_assigned():
    shell = ClusterShell(cluster_config(app("web"), spread(), agent(), leader()))
    shell.start()
    shell.feed(LeaseRenewed(100.0))
    shell.advance(30.0)
    assert [s.app.name for s in shell.spawns] == ["web"]
    assert all(shell.slots(name) == [] for name in ("spread", "agent", "leader"))
    assert shell.status()["web"]["instances"][0]["state"] == "running"  # type: ignore[index]


def test_assigned_starts_exactly_the_placed_indexes_with_their_tokens():
    shell = ClusterShell(cluster_config(app("web"), spread(), agent()))
    shell.start()
    shell.feed(assigned(spread={0: 11, 2: 12}, agent={1: 13}))
    assert {(s.app.name, s.index, s.fencing_token, s.fencing_deadline) for s in shell.spawns[1:]} == {
        ("spread", 0, 11, None), ("spread", 2, 12, None), ("agent", 1, 13, None)}
    assert shell.spawns[0].fencing_token is None  # a local app has none
    assert shell.indexes("spread") == [0, 2] and shell.indexes("agent") == [1]
    assert [i["fencing_token"] for i in shell.slots("spread")] == [11, 12]
    assert "fencing_token" not in shell.slots("web")[0]
    assert shell.status()["spread"]["target"] == 2


def test_assigned_stops_the_slots_moved_away_and_forgets_them_once_gone():
    shell = running(spread(), agent(), fence_at=None, spread={0: 1, 1: 2, 2: 3}, agent={0: 4, 1: 5})
    before = {p.name: p.spawn_id for p in shell.live()}
    mark = len(shell.spawns)
    shell.feed(assigned(spread={1: 2}))  # agent is absent: nothing of it here any more
    stopping = {n for n, sid in before.items() if sid in shell.signalled}
    assert stopping == {"spread:0", "spread:2", "agent:0", "agent:1"}
    assert shell.spawns[mark:] == []
    shell.exit_stopped()
    assert shell.live_names() == ["spread:1"]
    assert shell.indexes("spread") == [1] and shell.indexes("agent") == []
    removed = {e["name"] for e in shell.published("removed")}
    assert removed == stopping


def test_a_slot_placed_again_while_it_stops_comes_back_with_its_new_token():
    shell = running(spread(), fence_at=None, spread={0: 1})
    shell.feed(assigned(spread={}))
    assert shell.sid("spread:0") in shell.signalled
    mark = len(shell.spawns)
    shell.feed(assigned(spread={0: 7}))
    assert shell.spawns[mark:] == []  # it starts again once its process is gone
    shell.exit_stopped()
    assert [(s.index, s.fencing_token) for s in shell.spawned("spread", mark)] == [(0, 7)]


def test_held_slots_keep_running_but_are_never_started():
    shell = running(spread(), fence_at=None, spread={0: 1, 1: 2})
    mark, signalled = len(shell.spawns), len(shell.signalled)
    # Slot 0 moves to another node, which is not ready yet: it keeps running here; slot 2 is held here
    # but never ran here: it does not start.
    shell.feed(assigned(held={"spread": {0, 2}}, spread={1: 2}))
    assert shell.spawns[mark:] == [] and shell.signalled[signalled:] == []
    assert shell.live_names() == ["spread:0", "spread:1"]
    shell.advance(30.0)
    assert shell.spawns[mark:] == []
    # The other node has it ready: the hand-over ends, slot 0 stops here.
    shell.feed(assigned(spread={1: 2}))
    shell.exit_stopped()
    assert shell.live_names() == ["spread:1"] and shell.spawns[mark:] == []


# -- the lease and singletons ---------------------------------------------------------------


def test_a_singleton_starts_only_once_the_lease_is_renewed_and_carries_the_fence_deadline():
    shell = ClusterShell(cluster_config(leader(), spread()))
    shell.start()
    shell.feed(assigned(leader={0: 5}, spread={0: 6}))
    assert [s.app.name for s in shell.spawns] == ["spread"]  # a node starts fenced
    shell.advance(10.0)
    assert shell.spawned("leader") == []
    shell.feed(LeaseRenewed(shell.now + 4.0))
    [spawn] = shell.spawned("leader")
    assert (spawn.index, spawn.fencing_token, spawn.fencing_deadline) == (0, 5, shell.now + 4.0)


def test_a_singleton_placed_after_the_renewal_gets_the_current_fence_deadline():
    shell = ClusterShell(cluster_config(leader()))
    shell.start()
    shell.feed(assigned())
    shell.feed(LeaseRenewed(3.0))
    shell.now = 1.0
    shell.feed(LeaseRenewed(4.5))
    shell.feed(assigned(leader={0: 9}))
    [spawn] = shell.spawned("leader")
    assert (spawn.fencing_token, spawn.fencing_deadline) == (9, 4.5)


def test_every_renewal_extends_the_fence_of_the_live_singletons_only():
    shell = ClusterShell(cluster_config(leader(), spread()))
    shell.start()
    shell.feed(LeaseRenewed(4.0))
    assert shell.extended == []  # no singleton runs: nothing to tell
    shell.feed(assigned(leader={0: 1}, spread={0: 2, 1: 3}))
    sid = shell.sid("leader:0")
    shell.now = 1.0
    shell.feed(LeaseRenewed(5.0))
    shell.now = 2.0
    shell.feed(LeaseRenewed(6.0))
    assert shell.extended == [ExtendFence((sid,), 5.0), ExtendFence((sid,), 6.0)]
    assert shell.core.next_deadline() == 6.0  # the fence deadline, re-armed


def test_the_fence_deadline_stops_singletons_within_the_grace_and_leaves_the_rest_alone():
    shell = running(app("web"), leader(), spread(), agent(), fence_at=4.0,
                    leader={0: 1}, spread={0: 2}, agent={0: 3, 1: 4})
    others = {p.spawn_id for p in shell.live() if p.app.name != "leader"}
    sid = shell.sid("leader:0")
    shell.advance_to(4.0 - 0.001)
    assert sid not in shell.signalled
    shell.advance_to(4.0)
    proc = shell.by_spawn[sid]
    assert proc.stop_signalled_at == 4.0 and not proc.killed  # the stop signal at once
    fenced = shell.published("cluster")
    assert fenced == [{"type": "cluster", "event": "fenced", "node": "n1", "why": "the lease was not renewed in time",
                       "stopped": ["leader:0"]}]
    shell.advance_to(4.0 + GRACE - 0.001)
    assert not proc.killed  # it ignores its stop signal (the fake default): killed at the grace
    shell.advance_to(4.0 + GRACE)
    assert proc.killed
    shell.advance(KILL_LATENCY)
    assert not proc.alive
    assert shell.spawned("leader")[1:] == []  # never started again while fenced
    assert others.isdisjoint(shell.signalled)
    assert {p.spawn_id for p in shell.live()} == others
    assert shell.slots("leader") == [] and shell.indexes("spread") == [0]
    assert shell.core.next_deadline() is None


def test_a_fence_shortens_a_stop_already_under_way():
    shell = running(leader(stop_timeout=30.0), fence_at=4.0, leader={0: 1})
    sid = shell.sid("leader:0")
    shell.command("stop", "leader")
    assert shell.by_spawn[sid].stop_signalled_at == 0.0
    shell.advance_to(4.0 + GRACE)
    assert shell.by_spawn[sid].killed  # not at 30 s: the fence's grace applies


def test_an_event_after_the_fence_deadline_is_handled_after_the_fence():
    core = Core(cluster_config(leader(), spread()), random.Random(0))
    core.handle(DaemonStarted(), 0.0)
    actions = core.handle(assigned(leader={0: 1}, spread={0: 2}), 0.0)
    actions += core.handle(LeaseRenewed(4.0), 0.0)
    sids = {s.app.name: s.spawn_id for s in actions if isinstance(s, Spawn)}
    for sid in sids.values():
        core.handle(Spawned(sid, 100 + sid), 0.0)
    # A daemon paused past its deadline wakes up to an event: the fence comes first.
    out = core.handle(CommandReceived("r1", Verb.STATUS), 9.0)
    kinds = [type(a).__name__ for a in out]
    fenced = next(i for i, a in enumerate(out) if isinstance(a, Publish) and a.event.get("event") == "fenced")
    signal = next(i for i, a in enumerate(out) if isinstance(a, Signal))
    reply = next(i for i, a in enumerate(out) if isinstance(a, Reply))
    assert fenced < signal < reply, kinds
    assert out[signal] == Signal(sids["leader"], out[signal].signal)
    [reply_action] = [a for a in out if isinstance(a, Reply)]
    states = {i["name"]: i["state"] for a in reply_action.result["apps"] for i in a["instances"]}  # type: ignore[index]
    assert states == {"leader:0": "stopping", "spread:0": "running"}  # the status already shows the fence


def test_an_assigned_after_the_fence_deadline_does_not_start_a_singleton():
    core = Core(cluster_config(leader()), random.Random(0))
    core.handle(DaemonStarted(), 0.0)
    core.handle(LeaseRenewed(4.0), 0.0)
    out = core.handle(assigned(leader={0: 3}), 5.0)  # no renewal came: fenced before it is applied
    assert not [a for a in out if isinstance(a, Spawn)]
    assert [a.event["event"] for a in out if isinstance(a, Publish) and a.event["type"] == "cluster"] == ["fenced"]


def test_lease_lost_fences_at_once():
    shell = running(leader(), spread(), fence_at=100.0, leader={0: 1}, spread={0: 2})
    sid, other = shell.sid("leader:0"), shell.sid("spread:0")
    shell.now = 1.0
    shell.feed(LeaseLost())
    assert shell.by_spawn[sid].stop_signalled_at == 1.0
    assert shell.published("cluster")[0]["why"] == "etcd says the lease is gone"
    shell.advance(GRACE + KILL_LATENCY)
    assert not shell.by_spawn[sid].alive and shell.by_spawn[other].alive
    assert other not in shell.signalled
    assert shell.core.next_deadline() is None  # the old fence deadline is gone with the lease
    shell.feed(LeaseLost())
    assert len(shell.published("cluster")) == 1  # fenced already: nothing more


def test_while_fenced_an_assigned_moves_the_others_but_starts_no_singleton_and_a_renewal_brings_it_back():
    shell = running(leader(), spread(), fence_at=100.0, leader={0: 1}, spread={0: 2})
    shell.feed(LeaseLost())
    shell.exit_stopped()
    mark = len(shell.spawns)
    shell.feed(assigned(leader={0: 8}, spread={0: 2, 1: 3}))
    assert [(s.app.name, s.index) for s in shell.spawns[mark:]] == [("spread", 1)]
    shell.advance(10.0)
    assert shell.spawned("leader", mark) == []
    shell.feed(assigned(leader={0: 9}, spread={0: 2, 1: 3}))  # the last snapshot is the one that counts
    shell.feed(LeaseRenewed(shell.now + 4.0))
    [spawn] = shell.spawned("leader", mark)
    assert (spawn.fencing_token, spawn.fencing_deadline) == (9, shell.now + 4.0)
    assert shell.extended[-1] == ExtendFence((spawn.spawn_id,), shell.now + 4.0)


def test_a_renewal_after_a_fence_restarts_a_singleton_that_is_still_being_killed():
    shell = running(leader(), fence_at=4.0, leader={0: 1})
    first = shell.sid("leader:0")
    shell.advance_to(4.0)
    mark = len(shell.spawns)
    shell.feed(LeaseRenewed(8.0))
    assert shell.spawned("leader", mark) == []  # not beside the old process: once it is gone
    assert shell.by_spawn[first].alive
    shell.advance(GRACE + KILL_LATENCY)
    [spawn] = shell.spawned("leader", mark)
    assert (spawn.fencing_token, spawn.fencing_deadline) == (1, 8.0)
    assert not shell.by_spawn[first].alive


def test_a_new_token_restarts_a_live_singleton_but_not_the_others():
    shell = running(leader(), spread(), fence_at=100.0, leader={0: 1}, spread={0: 2, 1: 3})
    old_leader, spread0 = shell.sid("leader:0"), shell.sid("spread:0")
    mark = len(shell.spawns)
    shell.feed(assigned(leader={0: 4}, spread={0: 5, 1: 3}))
    assert old_leader in shell.signalled and spread0 not in shell.signalled
    assert shell.spawns[mark:] == []  # not before the old process is gone
    shell.exit(old_leader)
    [spawn] = shell.spawns[mark:]
    assert (spawn.app.name, spawn.fencing_token, spawn.fencing_deadline) == ("leader", 4, 100.0)
    assert shell.slots("leader")[0]["fencing_token"] == 4
    # spread:0 runs on with the token it has, and takes the new one at its next start.
    assert shell.slots("spread")[0]["fencing_token"] == 2
    shell.exit(spread0, code=1)
    shell.advance(1.0)
    assert [(s.app.name, s.index, s.fencing_token) for s in shell.spawns[mark + 1:]] == [("spread", 0, 5)]
    assert shell.slots("spread")[0]["fencing_token"] == 5


def test_scaling_a_cluster_app_asks_the_cluster_and_changes_nothing_here():
    shell = running(spread(), app("web"), fence_at=None, spread={0: 1, 1: 2})
    mark, signalled = len(shell.spawns), len(shell.signalled)
    rid = shell.command("scale", "spread", count=5)
    assert shell.scaled == [ScaleCluster(rid, "spread", 5)]
    assert rid not in shell.replies  # the shell replies once etcd has it
    shell.command("scale", "spread", count=0)
    shell.advance(10.0)
    assert shell.spawns[mark:] == [] and shell.signalled[signalled:] == []
    assert shell.status()["spread"]["target"] == 2 and shell.indexes("spread") == [0, 1]
    local = shell.command("scale", "web", count=2)
    assert len(shell.scaled) == 2 and shell.replies[local].ok  # a local app scales here, as ever


def test_scaling_a_singleton_is_refused():
    shell = running(leader(), fence_at=100.0, leader={0: 1})
    rid = shell.command("scale", "leader", count=2)
    assert shell.scaled == [] and not shell.replies[rid].ok and shell.replies[rid].usage
    assert shell.live_names() == ["leader:0"]


def test_cluster_news_is_published():
    shell = ClusterShell(cluster_config(spread()))
    shell.start()
    shell.feed(ClusterNews({"event": "leader", "node": "n2", "term": 7}))
    assert shell.published("cluster") == [{"type": "cluster", "event": "leader", "node": "n2", "term": 7}]


def test_a_shutdown_drains_cluster_apps_and_ignores_the_cluster_meanwhile():
    shell = running(app("web"), leader(), spread(), agent(), fence_at=100.0,
                    leader={0: 1}, spread={0: 2, 1: 3}, agent={0: 4})
    live = {p.spawn_id for p in shell.live()}
    mark = len(shell.spawns)
    shell.feed(ShutdownRequested())
    assert live <= set(shell.signalled)
    shell.feed(assigned(leader={0: 9}, spread={0: 2, 1: 3, 2: 5}, agent={0: 4, 1: 6}))
    shell.feed(LeaseLost())
    shell.feed(LeaseRenewed(200.0))
    assert shell.spawns[mark:] == []
    shell.exit_stopped()
    assert shell.live() == [] and shell.exit_code == 0 and shell.spawns[mark:] == []
    assert shell.events[-1] == {"type": "daemon", "event": "stopped"}


@contextmanager
def hang_guard(seconds: float) -> Iterator[None]:
    """TimeoutError if the block takes longer (the core looping forever)."""
    def expired(signum: int, frame: object) -> None:
        raise TimeoutError(f"still running after {seconds} s: the core hangs")
    previous = signal.signal(signal.SIGALRM, expired)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def test_a_slot_moved_away_during_its_rollout_ends_its_part_of_the_rollout():
    # (It used to hang the core: the rollout started a successor for the slot, advance dropped it, forever.)
    shell = running(spread(reload_surge=0), fence_at=None, spread={0: 1})
    old = shell.sid("spread:0")
    shell.command("reload", "spread")  # surge 0: the old one stops first
    shell.feed(assigned(spread={}))  # meanwhile the leader moves the slot away
    with hang_guard(2.0):
        shell.exit(old)
    assert shell.live() == [] and shell.slots("spread") == []


def test_a_rollout_of_a_singleton_stops_the_old_one_before_it_starts_the_new():
    shell = running(leader(reload_surge=1), fence_at=100.0, leader={0: 1})
    old = shell.sid("leader:0")
    mark = len(shell.spawns)
    shell.command("reload", "leader")
    assert shell.spawns[mark:] == [] and old in shell.signalled  # surge 0 whatever the config says
    shell.exit(old)
    [spawn] = shell.spawns[mark:]
    assert (spawn.fencing_token, spawn.fencing_deadline) == (1, 100.0)


# -- adoption -----------------------------------------------------------------------------


def adopting_core(*found: Adopted) -> tuple[Core, list[Action]]:
    core = Core(cluster_config(leader(), spread()), random.Random(0))
    actions = core.handle(Recovered({"spread": AppRecord(2, 1, 1), "leader": AppRecord(1, 1, 1)}, found), 0.0)
    actions += core.handle(DaemonStarted(), 0.0)
    return core, actions


def test_adopted_cluster_instances_keep_their_tokens_and_run_on_when_assigned_the_same():
    """A non-singleton runs on through a daemon restart; a singleton stops until the new daemon holds a
    lease (the cluster may have placed it elsewhere meanwhile), then comes back with its slot's token."""
    core, actions = adopting_core(Adopted("spread", 0, 1, State.RUNNING, 501, fence=7),
                                  Adopted("leader", 0, 1, State.RUNNING, 502, fence=3))
    adopts = {a.app.name: a.spawn_id for a in actions if isinstance(a, Adopt)}
    assert set(adopts) == {"spread", "leader"}
    assert [a.spawn_id for a in actions if isinstance(a, Signal)] == [adopts["leader"]]
    out = core.handle(Exited(adopts["leader"], None, None, lost=True), 0.5)
    out += core.handle(assigned(spread={0: 7}, leader={0: 3}), 1.0)
    out += core.handle(LeaseRenewed(5.0), 1.0)
    assert not [a for a in out if isinstance(a, Signal | KillTree)]
    assert [(a.app.name, a.fencing_token) for a in out if isinstance(a, Spawn)] == [("leader", 3)]


def test_an_adopted_singleton_placed_with_a_new_token_restarts_with_it():
    core, actions = adopting_core(Adopted("leader", 0, 1, State.RUNNING, 502, fence=3))
    [adopt] = [a for a in actions if isinstance(a, Adopt)]
    assert Signal(adopt.spawn_id, leader().stop_signal) in actions  # no lease yet: it stops
    out = core.handle(assigned(leader={0: 4}), 1.0)
    out += core.handle(LeaseRenewed(5.0), 1.0)
    assert not [a for a in out if isinstance(a, Spawn)], "not beside the old one, still stopping"
    out = core.handle(Exited(adopt.spawn_id, None, None, lost=True), 1.5)
    [spawn] = [a for a in out if isinstance(a, Spawn)]
    assert (spawn.fencing_token, spawn.fencing_deadline) == (4, 5.0)


def test_an_adopted_cluster_instance_runs_on_until_the_first_assigned_then_follows_it():
    core, _ = adopting_core(Adopted("spread", 1, 1, State.RUNNING, 501, fence=7))
    out = core.handle(DeadlineReached(), 10.0)
    assert not [a for a in out if isinstance(a, Spawn | Signal)]  # no snapshot yet: what runs, runs on
    out = core.handle(assigned(spread={0: 8}), 11.0)
    assert [(a.index, a.fencing_token) for a in out if isinstance(a, Spawn)] == [(0, 8)]
    assert len([a for a in out if isinstance(a, Signal)]) == 1  # slot 1 was moved elsewhere meanwhile


# -- bugs found: each fails until the core is fixed --------------------------------------------


def test_a_new_instance_for_a_held_slot_carries_its_token():
    shell = running(spread(), fence_at=None, spread={0: 1, 1: 2})
    shell.feed(assigned(held={"spread": {0}}, spread={1: 2}))
    mark = len(shell.spawns)
    shell.command("reload", "spread")
    assert shell.spawns[mark:] and all(s.fencing_token is not None for s in shell.spawns[mark:])


def test_an_adopted_singleton_whose_token_is_unknown_restarts_with_the_token_of_its_slot():
    core, actions = adopting_core(Adopted("leader", 0, 1, State.RUNNING, 502, fence=None))
    [adopt] = [a for a in actions if isinstance(a, Adopt)]
    assert Signal(adopt.spawn_id, leader().stop_signal) in actions
    core.handle(Exited(adopt.spawn_id, None, None, lost=True), 0.5)
    out = core.handle(assigned(leader={0: 4}), 1.0)
    out += core.handle(LeaseRenewed(5.0), 1.0)
    assert [a.fencing_token for a in out if isinstance(a, Spawn)] == [4]


def test_a_singleton_fenced_before_its_spawn_is_reported_is_killed_within_the_grace():
    core = Core(cluster_config(leader(stop_timeout=10.0)), random.Random(0))
    core.handle(DaemonStarted(), 0.0)
    core.handle(assigned(leader={0: 1}), 0.0)
    [spawn] = [a for a in core.handle(LeaseRenewed(4.0), 0.0) if isinstance(a, Spawn)]
    core.handle(DeadlineReached(), 4.0)  # fenced while the fork is still under way
    out = core.handle(Spawned(spawn.spawn_id, 777), 4.01)
    assert [a for a in out if isinstance(a, Signal)]  # told to stop at once: right
    assert core.next_deadline() is not None and core.next_deadline() <= 4.0 + GRACE  # but killed at 14.01


def test_an_adopted_singleton_is_stopped_when_the_lease_is_lost_before_any_renewal():
    core, actions = adopting_core(Adopted("leader", 0, 1, State.RUNNING, 502, fence=3))
    [adopt] = [a for a in actions if isinstance(a, Adopt)]
    assert Signal(adopt.spawn_id, leader().stop_signal) in actions  # at once: no lease is held yet
    out = core.handle(LeaseLost(), 1.0)
    out += core.handle(assigned(leader={}), 1.0)
    assert not [a for a in out if isinstance(a, Spawn)]


def test_a_fenced_node_never_restarts_an_adopted_singleton():
    core, actions = adopting_core(Adopted("leader", 0, 1, State.RUNNING, 502, fence=3))
    [adopt] = [a for a in actions if isinstance(a, Adopt)]
    out = core.handle(Exited(adopt.spawn_id, None, None, lost=True), 1.0)
    out += core.handle(DeadlineReached(), 30.0)
    assert [a for a in out if isinstance(a, Spawn)] == []


def test_removing_a_cluster_app_from_the_config_stops_it():
    shell = running(spread(), app("web"), fence_at=None, spread={0: 1, 1: 2})
    shell.command("reload", config=cluster_config(app("web")))
    assert {shell.by_spawn[sid].name for sid in shell.signalled} == {"spread:0", "spread:1"}
    shell.exit_stopped()
    assert "spread" not in shell.status()


def test_a_cluster_app_waits_for_its_dependencies_even_when_assigned():
    shell = ClusterShell(cluster_config(app("db", readiness=Readiness.HEARTBEAT), spread(depends_on=("db",))))
    shell.start()
    shell.feed(assigned(spread={0: 1}))
    assert shell.status()["spread"].get("waiting_for") == ["db"]
    assert shell.spawned("spread") == []  # spawned while its status says it waits for db


def test_a_cancelled_rollout_never_runs_two_instances_of_a_singleton():
    shell = running(leader(reload_surge=0), fence_at=100.0, leader={0: 1})
    old = shell.sid("leader:0")
    shell.command("reload", "leader")
    shell.exit(old)  # surge 0: the new one starts once the old one is gone
    assert shell.live_names() == ["leader:0"]
    shell.command("start", "leader")
    assert len(shell.live()) <= 1


def test_a_new_daemon_never_runs_a_singleton_beside_the_one_it_found_running():
    core = Core(cluster_config(leader()), random.Random(0))
    # The checkpoint predates the last spawn: it names the slot without a process; the live worker is a stray.
    out = core.handle(Recovered({}, (Adopted("leader", 0, 1, State.BACKOFF, None, fence=4),
                                     Adopted("leader", 0, None, State.RUNNING, 777))), 0.0)
    out += core.handle(DaemonStarted(), 0.0)
    [adopt] = [a for a in out if isinstance(a, Adopt)]
    out = core.handle(assigned(leader={0: 4}), 0.1) + core.handle(LeaseRenewed(5.0), 0.1)
    assert [a for a in out if isinstance(a, Spawn)] == []  # not while pid 777 still stops
    out = core.handle(Exited(adopt.spawn_id, None, None, lost=True), 0.5)
    assert [(a.index, a.fencing_token) for a in out if isinstance(a, Spawn)] == [(0, 4)]


def test_a_fenced_singleton_exits_as_fenced():
    shell = running(leader(), fence_at=100.0, leader={0: 1})
    shell.feed(LeaseLost())
    shell.exit_stopped()
    [last] = [e for e in shell.published("state") if e["to"] == "stopped"]
    assert last["exit"]["reason"] == "fenced"  # type: ignore[index]
