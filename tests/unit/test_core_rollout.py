"""Rolling replacement in the core alone: surge, abort, rollback, config diffs, replace-first."""

from __future__ import annotations

import dataclasses

from fakeshell import FakeShell, config
from fakeshell import app as plain_app

from supervise.config.model import AppConfig, Readiness
from supervise.core import DeadlineReached, Ready, Sampled

READY_AFTER = 1.0  # the default ready_after of readiness = "none"


def app(name="web", **kw) -> AppConfig:
    kw.setdefault("instances", 3)
    kw.setdefault("readiness", Readiness.HEARTBEAT)
    return plain_app(name, **kw)


class Harness(FakeShell):
    """The fake shell, started, with the spawns since a mark at hand."""

    def __init__(self, *apps: AppConfig) -> None:
        super().__init__(config(*apps))
        self.start()

    def new_spawns(self, since: int) -> list:
        return self.spawns[since:]

    def tick(self, seconds: float) -> None:
        self.now += seconds
        self.feed(DeadlineReached())


def running(h: Harness, name="web") -> Harness:
    h.ready_all()
    assert all(i["state"] == "running" for i in h.slots(name))
    return h


def test_rollout_starts_each_new_instance_before_stopping_an_old_one():
    h = running(Harness(app(listen=("127.0.0.1:1",))))
    old = h.slot_sids()
    mark = len(h.spawns)
    rid = h.command("reload", "web")
    assert [s.index for s in h.new_spawns(mark)] == [0]  # surge 1: one at a time
    assert h.signalled == []  # nothing old is touched before its successor is ready
    for step in range(3):
        new = h.new_spawns(mark)[step]
        h.feed(Ready(new.spawn_id))
        assert h.signalled[-1] == old[step]  # now, and only now, the old one drains
        h.exit(old[step])
    assert h.replies[rid].ok, h.replies[rid].error
    web = h.slots()
    assert [i["generation"] for i in web] == [2, 2, 2]
    # A rollout's replacement is a reload, not a recovery: counted apart from `restarts` (issue 13).
    assert all(i["restarts"] == 0 and i["reloads"] == 1 and i["last_exit"]["reason"] == "reload" for i in web)
    assert {e["event"] for e in h.published("rollout")} == {"started", "done"}
    assert h.status()["web"]["rollout"]["state"] == "done"


def test_a_new_instance_that_crashes_stops_the_rollout_and_the_old_ones_serve_on():
    h = running(Harness(app()))
    old = h.slot_sids()
    mark = len(h.spawns)
    rid = h.command("reload", "web")
    first = h.new_spawns(mark)[0]
    h.feed(Ready(first.spawn_id))
    h.exit(old[0])
    second = h.new_spawns(mark)[1]
    h.exit(second.spawn_id, code=1)  # the new code crashes on start
    reply = h.replies[rid]
    assert not reply.ok and "did not become ready: crashed (exit code 1)" in reply.error
    assert h.signalled == [old[0]]  # web:1 and web:2 were never touched
    assert h.slot_sids()[1:] == old[1:]
    assert len(h.new_spawns(mark)) == 2  # no retry of the broken code, no further slot
    rollout = h.status()["web"]["rollout"]
    assert rollout["state"] == "failed" and "web:1 of generation 2" in rollout["error"]
    assert h.status()["web"]["generation"] == 1  # instances started from now on run what works
    failed = [e for e in h.published("rollout") if e["event"] == "failed"]
    assert failed and failed[0]["replaced"] == 1


def test_start_timeout_of_a_new_instance_fails_the_rollout():
    h = running(Harness(app(instances=1, start_timeout=2.0)))
    mark = len(h.spawns)
    rid = h.command("reload", "web")
    new = h.new_spawns(mark)[0]
    h.tick(2.5)
    assert h.signalled == [new.spawn_id]  # the trial is taken down, gracefully
    h.exit(new.spawn_id)
    assert "start-timeout" in h.replies[rid].error
    assert h.slots()[0]["state"] == "running"


def test_surge_zero_stops_first_and_brings_the_old_instance_back_on_failure():
    h = running(Harness(app(instances=2, port=8000)))  # {port} apps default to surge 0
    assert app(port=8000).surge() == 0
    old = h.slot_sids()
    mark = len(h.spawns)
    rid = h.command("reload", "web")
    assert h.signalled == [old[0]] and h.new_spawns(mark) == []  # the port must be free first
    h.exit(old[0])
    new = h.new_spawns(mark)
    assert len(new) == 1 and new[0].index == 0
    h.exit(new[0].spawn_id, code=1)
    assert not h.replies[rid].ok
    back = h.new_spawns(mark)[1]  # the old generation, restarted in its slot
    assert back.index == 0 and back.app.name == "web"
    assert h.slots()[0]["generation"] == 1


def test_readiness_none_new_instance_must_stay_up_to_count_as_ready():
    h = Harness(app(instances=1, readiness=Readiness.NONE, ready_after=READY_AFTER))
    old = h.slot_sids()
    mark = len(h.spawns)
    rid = h.command("reload", "web")
    new = h.new_spawns(mark)[0]
    assert h.signalled == []
    h.tick(READY_AFTER)
    assert h.signalled == old
    h.exit(old[0])
    assert h.replies[rid].ok
    assert h.slot_sids() == [new.spawn_id]


def test_stop_cancels_a_rollout_and_its_new_instances():
    h = running(Harness(app()))
    mark = len(h.spawns)
    h.command("reload", "web")
    new = h.new_spawns(mark)[0]
    h.command("stop", "web")
    assert new.spawn_id in h.signalled
    assert h.status()["web"]["rollout"]["state"] == "cancelled"


def test_dry_run_changes_nothing():
    h = running(Harness(app()))
    mark = len(h.spawns)
    rid = h.command("reload", "web", dry_run=True)
    assert h.replies[rid].result["plan"] == [{"app": "web", "action": "roll", "instances": [0, 1, 2], "surge": 1}]
    assert h.new_spawns(mark) == [] and h.signalled == []


def test_config_reload_applies_only_the_difference():
    web, worker, cron = app("web"), app("worker", instances=2), app("cron", instances=1)
    h = running(Harness(web, worker, cron))
    h.ready_all()
    old = {name: h.slot_sids(name) for name in ("web", "worker", "cron")}
    mark = len(h.spawns)
    new = config(dataclasses.replace(web, stop_timeout=3.0),  # a setting: applied in place
                 dataclasses.replace(worker, instances=3, env={"A": "1"}),  # rolled and scaled
                 app("mail", instances=1))  # added; cron removed
    rid = h.command("reload", config=new, dry_run=True)
    plan = {c["app"]: c for c in h.replies[rid].result["plan"]}
    assert plan["web"] == {"app": "web", "action": "update", "fields": ["stop_timeout"]}
    assert plan["worker"] == {"app": "worker", "action": "roll", "instances": [2, 3], "fields": ["env"]}
    assert plan["mail"]["action"] == "start" and plan["cron"]["action"] == "stop"
    assert h.new_spawns(mark) == []
    rid = h.command("reload", config=new)
    spawned = {(s.app.name, s.index) for s in h.new_spawns(mark)}
    assert ("mail", 0) in spawned and ("worker", 2) in spawned and ("worker", 0) in spawned
    assert not any(name == "web" for name, _ in spawned)
    assert old["cron"][0] in h.signalled and not set(old["web"]) & set(h.signalled)
    while rid not in h.replies:
        h.ready_all()
        for sid in list(h.signalled):
            if sid in h.by_spawn and h.by_spawn[sid].alive:
                h.exit(sid)
    assert h.replies[rid].ok, h.replies[rid].error
    assert "cron" not in h.status()
    assert [h.procs[i["pid"]].app.env for i in h.slots("worker")] == [{"A": "1"}] * 3
    h.command("stop", "web:0")  # the new stop_timeout applies to the running instance in place
    assert h.core.next_deadline() == h.now + 3.0


def test_memory_restart_with_listen_sockets_starts_the_replacement_first():
    h = running(Harness(app(instances=1, listen=("127.0.0.1:1",), max_memory=100)))
    old = h.slot_sids()[0]
    mark = len(h.spawns)
    for _ in range(3):
        h.feed(Sampled({old: 500}))
    assert len(h.new_spawns(mark)) == 1 and h.signalled == []
    h.feed(Ready(h.new_spawns(mark)[0].spawn_id))
    assert h.signalled == [old]
    h.exit(old, sig=15, code=None)
    inst = h.slots()[0]
    assert inst["state"] == "running" and inst["last_exit"]["reason"] == "memory" and inst["last_exit"]["signal"] == 15
