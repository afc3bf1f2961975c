"""depends_on: an app starts after the apps it depends on are running, and stops before them."""

import random
from pathlib import Path

from supervise.config.model import AppConfig, Config, Readiness, SuperviseConfig
from supervise.core import Core, Exit, Exited, Ready, ShutdownRequested, Signal, Spawn, Spawned


def make(**deps):
    apps = {name: AppConfig(name, ("x",), Path("/"), instances=2, readiness=Readiness.HEARTBEAT,
                            depends_on=tuple(deps.get(name, ())))
            for name in ("web", "db", "cache")}
    return Core(Config(Path("/c.toml"), SuperviseConfig(Path("/s")), apps), random.Random(0))


def spawned(actions):
    return [(a.app.name, a.index, a.spawn_id) for a in actions if isinstance(a, Spawn)]


def test_start_waits_for_dependencies_to_be_running():
    core = make(web=["db", "cache"], cache=["db"])
    first = spawned(core.start(0.0))
    assert {name for name, _, _ in first} == {"db"}
    waiting = {a["name"]: a.get("waiting_for") for a in core.status(0.0)["apps"]}
    assert waiting == {"web": ["db", "cache"], "db": None, "cache": ["db"]}
    later = []
    for _, _, sid in first:
        core.handle(Spawned(sid, 100 + sid), 0.1)
    for _, _, sid in first[:1]:
        later += spawned(core.handle(Ready(sid), 0.2))
    assert later == []  # one db instance ready is not db running
    later += spawned(core.handle(Ready(first[1][2]), 0.3))
    assert {name for name, _, _ in later} == {"cache"}
    for _, _, sid in later:
        core.handle(Spawned(sid, 200 + sid), 0.4)
    web = []
    for _, _, sid in later:
        web += spawned(core.handle(Ready(sid), 0.5))
    assert {name for name, _, _ in web} == {"web"} and len(web) == 2


def test_shutdown_stops_dependents_first():
    core = make(web=["db"])
    pids = {}
    pending = spawned(core.start(0.0))
    while pending:
        name, index, sid = pending.pop(0)
        pids[sid] = 1000 + sid
        core.handle(Spawned(sid, pids[sid]), 0.1)
        pending += spawned(core.handle(Ready(sid), 0.1))
    actions = core.handle(ShutdownRequested(), 1.0)
    signalled = {a.spawn_id for a in actions if isinstance(a, Signal)}
    ids = {name: {core.spawn_id_of(i) for i in app.slots.values()} for name, app in core.apps.items()}
    web_ids, db_ids = ids["web"], ids["db"]
    assert signalled == web_ids | ids["cache"]  # db is left running while web drains
    later = []
    for sid in ids["cache"]:
        later += core.handle(Exited(sid, 0, None), 1.05)
    assert not [a for a in later if isinstance(a, Signal)]
    for sid in web_ids:
        later += core.handle(Exited(sid, 0, None), 1.1)
    assert {a.spawn_id for a in later if isinstance(a, Signal)} == db_ids
    final = []
    for sid in db_ids:
        final += core.handle(Exited(sid, 0, None), 1.2)
    assert Exit(0) in final


def test_a_command_timeout_never_collides_with_an_instance_deadline():
    # Request ids and instance indexes are both small integers: an app named
    # "waiter" must not have its stop deadline taken for a command's timeout.
    from supervise.core import CommandReceived, DeadlineReached, KillTree

    app = AppConfig("waiter", ("x",), Path("/"), instances=2, stop_timeout=5.0)
    core = Core(Config(Path("/c.toml"), SuperviseConfig(Path("/s")), {"waiter": app}), random.Random(0))
    for name, index, sid in spawned(core.start(0.0)):
        core.handle(Spawned(sid, 100 + sid), 0.0)
    core.handle(CommandReceived(1, "stop", ("waiter:1",), timeout=60.0), 1.0)
    assert core.next_deadline() == 6.0  # waiter:1's stop_timeout, still armed
    actions = core.handle(DeadlineReached(), 6.0)
    assert [a for a in actions if isinstance(a, KillTree)]
