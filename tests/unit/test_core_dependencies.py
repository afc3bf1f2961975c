"""depends_on: an app starts after the apps it depends on are running, and stops before them."""

from fakeshell import FakeShell, app, config

from supervise.config.model import Readiness
from supervise.core import ShutdownRequested, Signal


def make(**deps) -> FakeShell:
    return FakeShell(config(*(app(name, instances=2, readiness=Readiness.HEARTBEAT,
                                  depends_on=tuple(deps.get(name, ())))
                              for name in ("web", "db", "cache"))))


def spawned_apps(shell: FakeShell, since: int) -> list[str]:
    return [s.app.name for s in shell.spawns[since:]]


def test_start_waits_for_dependencies_to_be_running():
    shell = make(web=["db", "cache"], cache=["db"])
    shell.start()
    assert spawned_apps(shell, 0) == ["db", "db"]
    waiting = {name: a.get("waiting_for") for name, a in shell.status().items()}
    assert waiting == {"web": ["db", "cache"], "db": None, "cache": ["db"]}
    db = [s.spawn_id for s in shell.spawns]
    shell.ready(db[0])
    assert spawned_apps(shell, 2) == []  # one db instance ready is not db running
    shell.ready(db[1])
    assert spawned_apps(shell, 2) == ["cache", "cache"]
    for spawn in shell.spawns[2:4]:
        shell.ready(spawn.spawn_id)
    assert spawned_apps(shell, 4) == ["web", "web"]


def test_shutdown_stops_dependents_first():
    shell = make(web=["db"])
    shell.start()
    while len(shell.spawns) < 6:
        shell.ready_all()
    shell.ready_all()
    ids = {name: set(shell.slot_sids(name)) for name in ("web", "db", "cache")}
    actions = shell.feed(ShutdownRequested())
    assert {a.spawn_id for a in actions if isinstance(a, Signal)} == ids["web"] | ids["cache"]  # db serves on
    mark = len(shell.signalled)
    for sid in ids["cache"]:
        shell.exit(sid)
    assert shell.signalled[mark:] == []  # web still drains: db must wait
    for sid in ids["web"]:
        shell.exit(sid)
    assert set(shell.signalled[mark:]) == ids["db"]
    for sid in ids["db"]:
        shell.exit(sid)
    assert shell.exit_code == 0 and shell.events[-1] == {"type": "daemon", "event": "stopped"}


def test_a_command_timeout_never_collides_with_an_instance_deadline():
    # Request ids and instance indexes are both small integers: an app named
    # "waiter" must not have its stop deadline taken for a command's timeout.
    shell = FakeShell(config(app("waiter", instances=2, stop_timeout=5.0)))
    shell.start()
    shell.now = 1.0
    shell.command("stop", "waiter:1", timeout=60.0)
    assert shell.core.next_deadline() == 6.0  # waiter:1's stop_timeout, still armed
    waiter1 = shell.slot_sids("waiter")[1]
    shell.advance_to(6.0)
    assert shell.by_spawn[waiter1].killed  # the stop_timeout passed: killed
