"""The core's side of probes, ready_after and max_age, on the fake shell with a fake clock."""

from __future__ import annotations

from fakeshell import FakeShell, config
from fakeshell import app as plain_app

from supervise.config.model import AppConfig, MaxUnavailable, Readiness
from supervise.core import Healthy, Unhealthy


class Shell(FakeShell):
    """The fake shell, started; stop signals are obeyed at once (the process exits 0)."""

    def __init__(self, *apps: AppConfig) -> None:
        super().__init__(config(*apps))
        self.start()

    def on_stop_signal(self, proc, sig) -> None:
        self.at(self.now, lambda: self.exit_process(proc, None, sig))


def app(**kw) -> AppConfig:
    kw.setdefault("instances", 2)
    kw.setdefault("readiness", Readiness.HEARTBEAT)
    return plain_app("web", **kw)


def running(shell: Shell) -> Shell:
    shell.ready_all()
    assert all(i["state"] == "running" for i in shell.slots())
    return shell


# -- ready_after ----------------------------------------------------------------------------


def test_readiness_none_is_starting_until_it_has_stayed_up_ready_after():
    shell = Shell(app(readiness=Readiness.NONE, ready_after=2.0, instances=1))
    assert shell.slots()[0]["state"] == "starting"
    shell.advance(1.9)
    assert shell.slots()[0]["state"] == "starting"
    shell.advance(0.2)
    assert shell.slots()[0]["state"] == "running"


def test_a_start_that_dies_within_ready_after_fails_the_start_command():
    shell = Shell(app(readiness=Readiness.NONE, ready_after=2.0, instances=1))
    shell.command("stop", "web")
    shell.advance(0.1)
    rid = shell.command("start", "web")
    shell.advance(0.5)
    shell.exit(shell.slot_sids()[0], code=1)  # the immediate restart
    shell.advance(0.5)
    shell.exit(shell.slot_sids()[0], code=1)  # then backoff: the start has failed
    reply = shell.replies.get(rid)
    assert reply is not None and not reply.ok and "backoff" in (reply.error or ""), reply


def test_ready_after_zero_is_running_at_once():
    shell = Shell(app(readiness=Readiness.NONE, ready_after=0.0, instances=1))
    assert shell.slots()[0]["state"] == "running"


# -- liveness: unhealthy -------------------------------------------------------------------


def test_an_unhealthy_instance_is_stopped_then_restarted_with_its_own_reason():
    shell = running(Shell(app(max_unavailable=MaxUnavailable(100))))
    sick, well = shell.slot_sids()
    shell.feed(Unhealthy(sick, "http 503 from http://127.0.0.1:8000/health"))
    assert sick in shell.signalled and well not in shell.signalled
    shell.advance(0.01)
    row = shell.slots()[0]
    assert row["last_exit"]["reason"] == "unhealthy"
    assert row["state"] in ("starting", "backoff")


def test_status_says_why_an_instance_is_unhealthy_while_the_budget_holds_it():
    shell = running(Shell(app(instances=2, max_unavailable=MaxUnavailable(1, percent=False))))
    first, second = shell.slot_sids()
    shell.feed(Unhealthy(first, "connect refused"))
    shell.feed(Unhealthy(second, "timed out after 1s"))
    rows = shell.slots()
    assert first in shell.signalled and second not in shell.signalled  # the budget: one at a time
    assert rows[1]["unhealthy"] == "timed out after 1s" and rows[1]["waiting_reason"] == "unhealthy"
    shell.advance(0.01)
    shell.ready_all()  # the first one's replacement is ready: the second goes
    assert second in shell.signalled


def test_a_held_unhealthy_instance_that_recovers_is_left_alone():
    shell = running(Shell(app(instances=2, max_unavailable=MaxUnavailable(1, percent=False))))
    first, second = shell.slot_sids()
    shell.feed(Unhealthy(first, "x"))
    shell.feed(Unhealthy(second, "y"))
    shell.feed(Healthy(second))
    assert "unhealthy" not in shell.slots()[1] and "waiting" not in shell.slots()[1]
    shell.advance(0.01)
    shell.ready_all()
    shell.advance(5.0)
    assert second not in shell.signalled
    assert [e for e in shell.published("budget") if e["name"] == "web:1"][-1]["event"] == "recovered"


def test_unhealthy_while_starting_is_recorded_but_not_acted_on():
    shell = Shell(app(instances=1))
    (sid,) = shell.slot_sids()
    shell.feed(Unhealthy(sid, "booting"))
    assert sid not in shell.signalled and shell.slots()[0]["state"] == "starting"


def test_unhealthy_restarts_count_towards_backoff_and_the_breaker():
    shell = running(Shell(app(instances=1)))
    for _ in range(12):
        sid = shell.slot_sids()[0]
        if sid is None or shell.slots()[0]["state"] != "running":
            shell.advance(60.0)
            shell.ready_all()
            continue
        shell.feed(Unhealthy(sid, "503"))
        shell.advance(0.01)
        shell.ready_all()
    assert shell.slots()[0]["restarts"] >= 2
    states = {e["to"] for e in shell.published("state") if e["name"] == "web:0"}
    assert "backoff" in states  # not an immediate respawn every time


# -- max_age ------------------------------------------------------------------------------------


def test_max_age_replaces_successor_first_with_listen_sockets():
    shell = running(Shell(app(instances=1, listen=("127.0.0.1:8000",), max_age=100.0)))
    (old,) = shell.slot_sids()
    shell.advance(99.0)
    assert shell.slots()[0]["recycle_in"] == 1.0
    assert len(shell.spawns) == 1
    shell.advance(1.5)
    assert len(shell.spawns) == 2 and old not in shell.signalled  # the successor starts first
    shell.ready_all()
    assert old in shell.signalled
    shell.advance(0.01)
    row = shell.slots()[0]
    assert row["state"] == "running" and row["pid"] != shell.procs[shell.by_spawn[old].pid].pid
    assert row["last_exit"]["reason"] == "max-age"


def test_a_recycle_whose_successor_fails_keeps_the_old_one_serving_and_tries_later():
    shell = running(Shell(app(instances=1, listen=("127.0.0.1:8000",), max_age=10.0, start_timeout=2.0)))
    (old,) = shell.slot_sids()
    shell.advance(10.5)
    successor = shell.spawns[-1].spawn_id
    shell.exit(successor, code=1)  # crashes before it is ready
    shell.advance(0.01)
    assert old not in shell.signalled and shell.slot_sids() == [old]
    assert shell.slots()[0]["state"] == "running"
    spawns = len(shell.spawns)
    shell.advance(11.0)  # tried again after min(RECYCLE_RETRY, max_age)
    assert len(shell.spawns) == spawns + 1


def test_max_age_with_a_fixed_port_stops_then_starts():
    shell = running(Shell(app(instances=1, port=9000, max_age=5.0)))
    (old,) = shell.slot_sids()
    shell.advance(5.5)
    assert old in shell.signalled
    shell.advance(0.01)
    assert shell.slots()[0]["last_exit"]["reason"] == "max-age"
    assert shell.slots()[0]["state"] == "starting"


def test_max_age_jitter_spreads_the_recycles():
    shell = running(Shell(app(instances=4, listen=("127.0.0.1:8000",), max_age=100.0, max_age_jitter=50.0)))
    due = [row["recycle_in"] for row in shell.slots()]
    assert len(set(due)) == 4 and all(100.0 <= d <= 150.0 for d in due)


def test_max_age_recycles_go_within_the_disruption_budget():
    shell = running(Shell(app(instances=4, listen=("127.0.0.1:8000",), max_age=10.0,
                              max_unavailable=MaxUnavailable(1, percent=False))))
    shell.advance(10.5)
    starting = [s for s in shell.spawns[4:]]
    assert len(starting) == 1  # one successor at a time
    shell.ready_all()
    shell.advance(0.01)
    assert len(shell.spawns) == 6
