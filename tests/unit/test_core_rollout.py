"""Rolling replacement in the core alone: surge, abort, rollback, config diffs, replace-first."""

from __future__ import annotations

import dataclasses
import random
from pathlib import Path

from supervise.config.model import AppConfig, Config, Readiness, SuperviseConfig
from supervise.core import (
    CommandReceived,
    Core,
    DeadlineReached,
    Exited,
    KillTree,
    Publish,
    Ready,
    Reply,
    Sampled,
    SendDrain,
    Signal,
    Spawn,
    Spawned,
)
from supervise.core.instance import TRIAL_SETTLE, State


def app(name="web", **kw) -> AppConfig:
    kw.setdefault("instances", 3)
    kw.setdefault("readiness", Readiness.HEARTBEAT)
    return AppConfig(name, ("x",), Path("/"), **kw)


def config(*apps: AppConfig) -> Config:
    return Config(Path("/c.toml"), SuperviseConfig(Path("/s")), {a.name: a for a in apps})


class Harness:
    """Plays the shell: records every action, starts processes, makes them ready on demand."""

    def __init__(self, *apps: AppConfig) -> None:
        self.core = Core(config(*apps), random.Random(0))
        self.now = 0.0
        self.pids: dict[int, int] = {}  # spawn id -> pid
        self.spawns: list[Spawn] = []
        self.signalled: list[int] = []  # spawn ids
        self.replies: dict[object, Reply] = {}
        self.events: list[dict] = []
        self.run(self.core.start(self.now))

    def run(self, actions) -> None:
        for action in actions:
            match action:
                case Spawn():
                    self.spawns.append(action)
                    self.pids[action.spawn_id] = 1000 + action.spawn_id
                    self.run(self.core.handle(Spawned(action.spawn_id, 1000 + action.spawn_id), self.now))
                case Signal(spawn_id=sid) | KillTree(spawn_id=sid):
                    self.signalled.append(sid)
                case Reply():
                    self.replies[action.request_id] = action
                case Publish(event=event):
                    self.events.append(event)
                case SendDrain():
                    pass

    def feed(self, event, dt: float = 0.01) -> None:
        self.now += dt
        self.run(self.core.handle(event, self.now))

    def ready_all(self) -> None:
        for spawn in list(self.spawns):
            inst = self.core._spawn_ids.get(spawn.spawn_id)
            if inst is not None and inst.state is State.STARTING:
                self.feed(Ready(spawn.spawn_id))

    def exit(self, sid: int, code=0, sig=None) -> None:
        self.feed(Exited(sid, code, sig))

    def command(self, verb, *targets, **kw) -> object:
        rid = ("r", len(self.replies), verb, self.now)
        self.feed(CommandReceived(rid, verb, tuple(targets), timeout=60.0, **kw))
        return rid

    def slot_sids(self, name="web") -> list[int]:
        return [i.spawn_id for _, i in sorted(self.core.apps[name].slots.items())]

    def new_spawns(self, since: int) -> list[Spawn]:
        return self.spawns[since:]


def running(h: Harness, name="web") -> Harness:
    h.ready_all()
    assert all(i.state is State.RUNNING for i in h.core.apps[name].slots.values())
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
    web = h.core.apps["web"]
    assert [i.generation for i in web.slots.values()] == [2, 2, 2]
    assert all(i.restarts == 1 and i.last_exit.reason == "reload" for i in web.slots.values())
    assert {e["event"] for e in h.events if e["type"] == "rollout"} == {"started", "done"}
    assert h.core.status(h.now)["apps"][0]["rollout"]["state"] == "done"


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
    rollout = h.core.status(h.now)["apps"][0]["rollout"]
    assert rollout["state"] == "failed" and "web:1 of generation 2" in rollout["error"]
    assert h.core.apps["web"].generation == 1  # instances started from now on run what works
    failed = [e for e in h.events if e["type"] == "rollout" and e["event"] == "failed"]
    assert failed and failed[0]["replaced"] == 1


def test_start_timeout_of_a_new_instance_fails_the_rollout():
    h = running(Harness(app(instances=1, start_timeout=2.0)))
    mark = len(h.spawns)
    rid = h.command("reload", "web")
    new = h.new_spawns(mark)[0]
    h.now += 2.5
    h.run(h.core.handle(DeadlineReached(), h.now))
    assert h.signalled == [new.spawn_id]  # the trial is taken down, gracefully
    h.exit(new.spawn_id)
    assert "start-timeout" in h.replies[rid].error
    assert h.core.apps["web"].slots[0].state is State.RUNNING


def test_surge_zero_stops_first_and_brings_the_old_instance_back_on_failure():
    h = running(Harness(app(instances=2, port=8000)))  # {port} apps default to surge 0
    assert h.core.apps["web"].config.surge() == 0
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
    assert h.core.apps["web"].slots[0].generation == 1


def test_readiness_none_new_instance_must_stay_up_to_count_as_ready():
    h = Harness(app(instances=1, readiness=Readiness.NONE))
    old = h.slot_sids()
    mark = len(h.spawns)
    rid = h.command("reload", "web")
    new = h.new_spawns(mark)[0]
    assert h.signalled == []
    h.now += TRIAL_SETTLE
    h.run(h.core.handle(DeadlineReached(), h.now))
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
    assert h.core.status(h.now)["apps"][0]["rollout"]["state"] == "cancelled"


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
    assert h.core.apps["web"].slots[0].config.stop_timeout == 3.0
    while rid not in h.replies:
        h.ready_all()
        for sid in list(h.signalled):
            if sid in h.core._spawn_ids:
                h.exit(sid)
    assert h.replies[rid].ok, h.replies[rid].error
    assert "cron" not in h.core.apps
    assert [i.config.env for i in h.core.apps["worker"].slots.values()] == [{"A": "1"}] * 3


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
    inst = h.core.apps["web"].slots[0]
    assert inst.state is State.RUNNING and inst.last_exit.reason == "memory" and inst.last_exit.signal == 15
