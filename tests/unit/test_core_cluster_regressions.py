"""Cluster bugs found by trying the examples for real, each pinned at the core (the fake shell)."""

from __future__ import annotations

import signal
from collections.abc import Iterator

import pytest
from fakeshell import FakeShell, config

from supervise.config.model import AppConfig, ClusterConfig, Placement, Readiness
from supervise.core import Verb
from supervise.core.events import Assigned, LeaseRenewed
from supervise.core.instance import State


class Shell(FakeShell):
    """Processes that exit promptly on their stop signal."""

    def on_stop_signal(self, proc, sig: int) -> None:
        self.at(self.now + 0.01, lambda: self.exit_process(proc, 0, None))


CLUSTER = ClusterConfig(etcd=("127.0.0.1:1",), node="n1", lease_ttl=5)


def cluster_config(*apps: AppConfig):
    import dataclasses

    return dataclasses.replace(config(*apps), cluster=CLUSTER)


def app(name: str = "web", **kw: object) -> AppConfig:
    from pathlib import Path

    defaults: dict[str, object] = {"command": ("w",), "cwd": Path("/"), "instances": 3,
                                   "placement": Placement.CLUSTER, "readiness": Readiness.HEARTBEAT}
    defaults.update(kw)
    return AppConfig(name=name, **defaults)  # type: ignore[arg-type]


def live(shell: Shell, name: str) -> list[str]:
    return sorted(p.name for p in shell.live() if p.app.name == name)


@pytest.fixture
def deadline() -> Iterator[None]:
    """A core that spins would hang the suite: fail the test instead."""
    def expire(signum: int, frame: object) -> None:
        raise TimeoutError("the core did not return within 20 s (a loop that never ends)")
    previous = signal.signal(signal.SIGALRM, expire)
    signal.alarm(20)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, previous)


def test_a_slot_taken_away_during_a_rollout_does_not_spin_the_core(deadline: None) -> None:
    """A drain during a cluster-wide reload: the rollout's slot is placed elsewhere. Before the fix,
    the rollout started a successor for it and advance() dropped it, forever (100% CPU, no answers)."""
    shell = Shell(cluster_config(app(reload_surge=0)))
    shell.start()
    shell.feed(LeaseRenewed(1e9))
    shell.feed(Assigned({"web": {0: 7, 1: 7, 2: 7}}, {}))
    shell.ready_all()
    shell.command(Verb.RELOAD, "web")
    shell.advance(0.001)
    shell.feed(Assigned({"web": {1: 7, 2: 7}}, {}))  # the slot being rolled is drained away: must return
    for _ in range(20):
        shell.advance(0.1)
        shell.ready_all()
    assert live(shell, "web") == ["web:1", "web:2"]


def test_an_adopted_cluster_instance_whose_process_died_is_not_restarted_before_the_cluster_says() -> None:
    """A singleton restarted from the checkpoint before joining ran twice (it was running elsewhere)."""
    cfg = cluster_config(app("lock", instances=1, singleton=True), app("web", instances=2))
    shell = Shell(cfg)
    shell.start()
    shell.feed(LeaseRenewed(1e9))
    shell.feed(Assigned({"lock": {0: 5}, "web": {0: 5, 1: 5}}, {}))
    shell.ready_all()
    shell.advance(1.0)  # a checkpoint is written
    for proc in shell.live():
        shell.exit_process(proc, None, 9)  # the node's workers die with it...
    spawned = len(shell.spawns)
    shell.restart_daemon()  # ...and a new daemon starts on its state dir
    shell.start()
    shell.advance(1.0)
    assert len(shell.spawns) == spawned, "nothing starts before the cluster's snapshot"
    shell.feed(Assigned({"web": {1: 9}}, {}))  # the lock and web:0 run elsewhere now
    shell.feed(LeaseRenewed(1e9))
    shell.ready_all()
    assert live(shell, "web") == ["web:1"] and live(shell, "lock") == []
    assert shell.spawns[-1].fencing_token == 9


def test_a_singleton_reload_stops_the_old_one_first_and_scale_is_refused() -> None:
    shell = Shell(cluster_config(app("lock", instances=1, singleton=True, reload_surge=1)))
    shell.start()
    shell.feed(LeaseRenewed(1e9))
    shell.feed(Assigned({"lock": {0: 3}}, {}))
    shell.ready_all()
    rid = shell.command(Verb.RELOAD, "lock")
    for _ in range(50):
        assert len(live(shell, "lock")) <= 1, "two singleton processes at once"
        shell.advance(0.05)
        shell.ready_all()
    assert shell.replies[rid].ok
    rid = shell.command(Verb.SCALE, "lock", count=2)
    assert not shell.replies[rid].ok and "singleton" in (shell.replies[rid].error or "")
    assert [i["state"] for i in shell.slots("lock")] == [State.RUNNING]
