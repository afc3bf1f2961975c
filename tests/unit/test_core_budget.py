"""The disruption budget (`max_unavailable`) in the core alone, with a fake clock (issue 12, point 6).

Restarts the supervisor decides on (hung, memory, max_processes, a reload's stop-first steps) take at
most `max_unavailable` slots out of service at once; the others are held (their processes left
running), said so in status and in a `budget` event, and go as the disrupted slots come back. Crashes
are never held, and count against the budget. Also: a spawn that fails for want of the daemon's own
file descriptors is not the worker's failure.
"""

from __future__ import annotations

import dataclasses

from fakeshell import BeatingShell, config
from fakeshell import app as plain_app

from supervise.config.model import AppConfig, MaxUnavailable, Readiness, Restart
from supervise.core import Action, DeadlineReached, Event, Sampled, Spawn, SpawnFailed, Verb
from supervise.core.instance import DAEMON_FAULT_RETRY, MEMORY_HYSTERESIS

TIMEOUT = 1.0  # heartbeat_timeout
BEAT = 0.2  # how often a healthy fake worker beats
READY_AFTER = 0.3  # a new fake worker says ready this long after its spawn
EXIT_AFTER = 0.05  # a fake worker exits this long after its stop signal


def budget(value: int | str) -> MaxUnavailable:
    if isinstance(value, str):
        return MaxUnavailable(int(value.rstrip("%")), percent=True)
    return MaxUnavailable(value, percent=False)


def app(instances: int = 8, max_unavailable: int | str = 2, **kw: object) -> AppConfig:
    kw.setdefault("readiness", Readiness.HEARTBEAT)
    kw.setdefault("heartbeat_timeout", TIMEOUT)
    return plain_app("web", instances=instances, max_unavailable=budget(max_unavailable), **kw)


class Pool(BeatingShell):
    """Fake workers that say ready, beat until paused, and exit on their stop signal."""

    def __init__(self, *apps: AppConfig) -> None:
        super().__init__(config(*apps), READY_AFTER, BEAT, EXIT_AFTER)
        self.deadlines = 0  # DeadlineReached fed: a deadline the core never moves on would spin forever

    def feed(self, event: Event) -> list[Action]:
        if isinstance(event, DeadlineReached):
            self.deadlines += 1
            assert self.deadlines < 10_000, "the core keeps naming a deadline that has passed"
        return super().feed(event)

    def hang(self, *indexes: int) -> list[int]:
        """These slots' workers stop beating (and keep running); their spawn ids."""
        sids = [self.slot_sids()[i] for i in indexes]
        self.paused.update(s for s in sids if s is not None)
        return sids  # type: ignore[return-value]

    def resume(self, sid: int) -> None:
        """A paused worker beats again."""
        self.paused.discard(sid)
        self._beat(self.by_spawn[sid])

    def budget_events(self, event: str | None = None) -> list[dict[str, object]]:
        return [e for e in self.published("budget") if event is None or e["event"] == event]

    def max_out_of_service(self, since: int = 0) -> int:
        """The most slots not running at once, replayed from the state events (as a client would)."""
        states: dict[str, str] = {}
        most = 0
        for n, event in enumerate(self.events):
            if event["type"] == "state":
                states[str(event["name"])] = str(event["to"])
            if n >= since:
                most = max(most, sum(1 for s in states.values() if s != "running"))
        return most

    def waiting(self) -> list[str]:
        return [str(i["name"]) for i in self.slots() if i.get("waiting") == "budget"]


def started(*apps: AppConfig) -> Pool:
    shell = Pool(*apps)
    shell.start()
    shell.advance(READY_AFTER + 0.01)
    assert all(i["state"] == "running" for i in shell.slots())
    return shell


# -- hung instances ------------------------------------------------------------------------------


def test_eight_stop_beating_together_at_most_two_are_restarted_at_a_time() -> None:
    shell = started(app(8, max_unavailable=2))
    mark = len(shell.events)
    hung = shell.hang(*range(8))
    shell.advance(TIMEOUT + BEAT + 0.01)  # every one is past its heartbeat_timeout now
    assert len(set(shell.signalled)) == 2, "more restarts at once than max_unavailable"
    assert len(shell.waiting()) == 6
    held = shell.budget_events("held")
    assert len(held) == 6 and {e["reason"] for e in held} == {"hung"}
    assert all(e["unavailable"] == 2 and e["max_unavailable"] == 2 for e in held)
    web = shell.status()["web"]
    assert web["budget"] == {"max_unavailable": 2, "setting": "2", "unavailable": 2, "waiting": 6}
    row = next(i for i in shell.slots() if i.get("waiting"))
    assert row["state"] == "running" and row["waiting_reason"] == "hung" and row["waiting_age"] >= 0
    shell.advance(10.0)  # the rest follow as replacements become ready
    assert set(shell.signalled) == set(hung), "not every hung worker was restarted"
    assert all(i["state"] == "running" for i in shell.slots()) and not shell.waiting()
    assert all(sid not in hung for sid in shell.slot_sids())
    assert shell.max_out_of_service(mark) == 2
    assert len(shell.budget_events("released")) == 6


def test_held_restarts_go_only_as_replacements_become_ready() -> None:
    shell = started(app(8, max_unavailable=2))
    shell.hang(*range(8))
    shell.advance(TIMEOUT + BEAT + 0.01)
    first = list(shell.signalled)
    shell.advance(EXIT_AFTER + 0.01)  # the first two exited and restarted: starting, not ready yet
    assert len(set(shell.signalled)) == 2
    assert sum(1 for i in shell.slots() if i["state"] == "starting") == 2
    shell.advance(READY_AFTER)  # ready: two more go, at that very moment
    assert len(set(shell.signalled)) == 4 and shell.signalled[:2] == first


def test_a_single_hung_instance_is_restarted_at_once() -> None:
    for limit in (1, 2, "25%", "100%"):
        shell = started(app(8, max_unavailable=limit))
        hung_at = shell.now
        [sid] = shell.hang(3)
        shell.advance(TIMEOUT + BEAT + 0.01)
        assert shell.signalled == [sid], f"max_unavailable {limit}"
        stop = next(e for e in shell.published("state") if e["to"] == "stopping")
        assert stop["reason"] == "hung" and stop["name"] == "web:3"
        assert not shell.budget_events(), "a lone hung instance was held"
        assert shell.now - hung_at <= TIMEOUT + BEAT + 0.02


def test_without_a_budget_every_hung_instance_goes_at_once() -> None:
    shell = started(dataclasses.replace(app(8), max_unavailable=MaxUnavailable(100)))  # no limit asked for
    shell.hang(*range(8))
    shell.advance(TIMEOUT + BEAT + 0.01)
    assert len(set(shell.signalled)) == 8 and not shell.budget_events()


def test_by_default_a_quarter_of_the_instances_at_a_time() -> None:
    shell = started(dataclasses.replace(app(8), max_unavailable=MaxUnavailable()))  # the default: 25%
    mark = len(shell.events)
    hung = shell.hang(*range(8))
    shell.advance(TIMEOUT + BEAT + 0.01)
    assert len(set(shell.signalled)) == 2 and len(shell.waiting()) == 6
    shell.advance(10.0)
    assert set(shell.signalled) == set(hung) and shell.max_out_of_service(mark) == 2


def test_a_held_instance_that_beats_again_is_not_restarted() -> None:
    shell = started(app(4, max_unavailable=1))
    shell.exit_on_stop = False  # the first one takes its time to stop: the budget stays spent
    first, second = shell.hang(0, 1)
    shell.advance(TIMEOUT + BEAT + 0.01)
    assert shell.signalled == [first] and shell.waiting() == ["web:1"]
    shell.resume(second)
    shell.advance(TIMEOUT)  # its recheck sees it beat
    assert shell.waiting() == []
    assert [e["event"] for e in shell.budget_events()] == ["held", "recovered"]
    shell.exit(first)
    shell.advance(5.0)
    assert second not in shell.signalled and second in shell.slot_sids()


def test_a_percentage_is_of_the_instances_rounded_down_but_at_least_one() -> None:
    assert budget("25%").of(8) == 2 and budget("25%").of(3) == 1 and budget("25%").of(0) == 1
    assert budget("50%").of(5) == 2 and budget(3).of(100) == 3 and budget("100%").unlimited
    shell = started(app(8, max_unavailable="25%"))
    shell.hang(*range(8))
    shell.advance(TIMEOUT + BEAT + 0.01)
    assert len(set(shell.signalled)) == 2 and shell.status()["web"]["budget"]["setting"] == "25%"


def test_scaling_up_grows_a_percentage_budget_and_releases_held_restarts() -> None:
    shell = started(app(4, max_unavailable="50%"))
    shell.exit_on_stop = False
    shell.hang(0, 1, 2, 3)
    shell.advance(TIMEOUT + BEAT + 0.01)
    assert len(set(shell.signalled)) == 2
    shell.command(Verb.SCALE, "web", count=8)  # 50% of 8: room for two more, once the new four are ready
    assert len(set(shell.signalled)) == 2, "new instances not ready yet are out of service too"
    shell.advance(READY_AFTER + 0.01)
    assert len(set(shell.signalled)) == 4


# -- crashes -------------------------------------------------------------------------------------


def test_crashes_are_never_held_and_count_against_the_budget() -> None:
    shell = started(app(8, max_unavailable=1, restart=Restart.ALWAYS))
    crashed = shell.slot_sids()[:3]
    for sid in crashed:
        shell.exit(sid, code=1)
    assert sum(1 for i in shell.slots() if i["state"] == "starting") == 3, "a crash restart was held"
    [hung] = shell.hang(5)
    shell.advance(TIMEOUT + BEAT + 0.01)  # meanwhile the three crashed came back: the budget is free
    assert shell.signalled == [hung]


def test_an_instance_out_of_service_after_a_crash_holds_a_hung_restart() -> None:
    shell = started(app(4, max_unavailable=1))
    shell.never_ready.add(0)
    shell.exit(shell.slot_sids()[0], code=1)  # crashes: restarted at once, and starting a long while
    [hung] = shell.hang(2)
    shell.advance(TIMEOUT + BEAT + 0.01)  # web:2 is hung now, but web:0 is out of service
    assert hung not in shell.signalled and shell.waiting() == ["web:2"]
    assert shell.budget_events("held")[0]["unavailable"] == 1
    shell.never_ready.clear()
    shell.ready(shell.slot_sids()[0])  # back: the held restart goes
    assert shell.signalled == [hung] and shell.waiting() == []


def test_an_operators_stop_uses_no_budget() -> None:
    shell = started(app(4, max_unavailable=1))
    rid = shell.command(Verb.STOP, "web:0")
    shell.advance(EXIT_AFTER + 0.01)
    assert shell.replies[rid].ok and shell.slots()[0]["state"] == "stopped"
    [hung] = shell.hang(1)
    shell.advance(TIMEOUT + BEAT + 0.01)
    assert hung in shell.signalled


# -- memory and processes ------------------------------------------------------------------------


def over(shell: Pool, sids: list[int], rss: int, processes: int = 1) -> None:
    """Samples until the memory check is confirmed."""
    for _ in range(MEMORY_HYSTERESIS):
        shell.feed(Sampled({sid: rss for sid in sids}, {sid: processes for sid in sids}))


def test_memory_restarts_go_within_the_budget_and_one_back_under_the_limit_recovers() -> None:
    shell = started(app(6, max_unavailable=2, max_memory=1000))
    shell.exit_on_stop = False
    sids = shell.slot_sids()
    over(shell, sids[:4], 2000)
    assert len(set(shell.signalled)) == 2 and len(shell.waiting()) == 2
    assert {e["reason"] for e in shell.budget_events("held")} == {"memory"}
    waiting = [sid for sid in sids[:4] if sid not in shell.signalled]
    shell.feed(Sampled({waiting[0]: 500}, {waiting[0]: 1}))  # one shrinks again: no longer due
    assert [e["event"] for e in shell.budget_events()][-1] == "recovered" and len(shell.waiting()) == 1
    shell.exit(shell.signalled[0])  # one of the first two is gone and restarting ...
    shell.advance(READY_AFTER + 0.01)  # ... and ready: the one still over goes
    assert waiting[1] in shell.signalled and waiting[0] not in shell.signalled


def test_memory_replacements_started_first_count_against_the_budget() -> None:
    shell = started(app(4, max_unavailable=1, max_memory=1000, listen=("127.0.0.1:1",)))
    sids = shell.slot_sids()
    mark = len(shell.spawns)
    over(shell, sids[:2], 2000)
    assert len(shell.spawns) == mark + 1, "two replacements started at once past the budget"
    assert shell.waiting() == ["web:1"]
    shell.advance(READY_AFTER + EXIT_AFTER + 0.01)  # the replacement is ready; the old one drains and goes
    over(shell, [sids[1]], 2000)
    assert len(shell.spawns) == mark + 2 and not shell.waiting()


def test_a_process_leak_is_killed_within_the_budget() -> None:
    shell = started(app(4, max_unavailable=1, max_processes=10))
    sids = shell.slot_sids()
    shell.feed(Sampled({sids[0]: 100, sids[1]: 100}, {sids[0]: 50, sids[1]: 50}))
    assert shell.signalled == [sids[0]] and shell.waiting() == ["web:1"]
    assert shell.budget_events("held")[0]["reason"] == "processes"
    shell.advance(READY_AFTER + 0.1)  # the first is killed, restarted and ready
    shell.feed(Sampled({sids[1]: 100}, {sids[1]: 50}))
    assert shell.signalled == [sids[0], sids[1]]
    assert [e["event"] for e in shell.budget_events()] == ["held", "released"]


def test_held_for_two_reasons_it_goes_for_the_more_urgent_in_its_place_in_the_queue() -> None:
    shell = started(app(4, max_unavailable=1, max_memory=1000, max_processes=10))
    shell.exit_on_stop = False
    sids = shell.slot_sids()
    over(shell, sids[:2], 2000)  # web:0 goes (memory), web:1 waits
    assert shell.signalled == [sids[0]] and shell.waiting() == ["web:1"]
    shell.feed(Sampled({sids[1]: 2000}, {sids[1]: 50}))  # and now it forks past max_processes too
    assert [i["waiting_reason"] for i in shell.slots() if i.get("waiting")] == ["processes"]
    assert [(e["event"], e["reason"]) for e in shell.budget_events()] == [("held", "memory"), ("held", "processes")]
    shell.exit(sids[0])
    shell.advance(READY_AFTER + 0.01)
    assert shell.signalled == [sids[0], sids[1]]
    stops = [e for e in shell.published("state") if e["to"] == "stopping"]
    assert [e["reason"] for e in stops] == ["memory", "processes"]  # killed, not drained


def test_a_hang_found_while_held_for_a_process_leak_moves_its_deadline_on() -> None:
    shell = started(app(4, max_unavailable=1, max_processes=10))
    shell.never_ready.add(0)  # web:0 is killed and restarted, and its replacement stays starting
    sids = shell.slot_sids()
    shell.feed(Sampled({sids[0]: 100, sids[1]: 100}, {sids[0]: 50, sids[1]: 50}))  # web:1 waits
    shell.hang(1)
    shell.advance(5 * TIMEOUT)  # its hang is found, and it still waits (for the more urgent reason)
    assert [i["waiting_reason"] for i in shell.slots() if i.get("waiting")] == ["processes"]
    assert shell.deadlines < 100


# -- reloads -------------------------------------------------------------------------------------


def test_a_stop_first_rollout_waits_for_the_budget() -> None:
    shell = started(app(4, max_unavailable=1, reload_surge=0))
    mark = len(shell.events)
    shell.never_ready.add(3)
    [hung] = shell.hang(3)
    shell.advance(TIMEOUT + BEAT + 0.01)
    assert shell.signalled == [hung]  # the budget is spent on the hung one, restarted but not ready yet
    assert shell.slots()[3]["state"] == "starting"
    shell.command(Verb.RELOAD, "web:0", "web:1")
    rollout = shell.status()["web"]["rollout"]
    assert rollout["state"] == "running" and rollout.get("waiting") == "budget"
    assert shell.signalled == [hung], "a rollout step took a slot out past the budget"
    held = shell.budget_events("held")[-1]
    assert held["reason"] == "reload" and held["name"] == "web:0" and held["pid"] is None
    shell.ready(shell.slot_sids()[3])  # the hung one's replacement is ready: the rollout may go on
    assert len(shell.signalled) == 2 and "waiting" not in shell.status()["web"]["rollout"]
    assert shell.budget_events()[-1]["event"] == "released"
    shell.advance(10.0)
    assert shell.status()["web"]["rollout"]["state"] == "done"
    assert shell.max_out_of_service(mark) == 1


def test_a_stop_first_rollout_replaces_a_slot_already_out_of_service_first() -> None:
    shell = started(app(4, max_unavailable=1, reload_surge=0))
    shell.exit_on_stop = False
    [hung] = shell.hang(3)
    shell.advance(TIMEOUT + BEAT + 0.01)
    shell.command(Verb.RELOAD, "web")  # slot 3 is out (stopping): replacing it costs nothing
    assert shell.status()["web"]["rollout"].get("waiting") is None and not shell.budget_events()
    assert shell.signalled == [hung]  # nothing serving is touched
    shell.exit(hung)
    shell.advance(READY_AFTER + 0.01)
    assert shell.slots()[3]["generation"] == 2 and shell.slots()[0]["generation"] == 1


def test_a_surge_rollout_takes_nothing_out_of_service() -> None:
    shell = started(app(4, max_unavailable=1, listen=("127.0.0.1:1",)))
    shell.exit_on_stop = False
    [hung] = shell.hang(3)
    shell.advance(TIMEOUT + BEAT + 0.01)
    mark = len(shell.spawns)
    shell.command(Verb.RELOAD, "web")
    assert len(shell.spawns) > mark  # a new instance beside an old one: not held


# -- the daemon's own faults ---------------------------------------------------------------------


class FdStarved(Pool):
    """The daemon is out of descriptors for the next `failures` spawns."""

    failures = 0

    def on_spawn(self, action: Spawn) -> None:
        if self.failures > 0:
            self.failures -= 1
            self.spawns_failed.append(action.spawn_id)
            self.feed(SpawnFailed(action.spawn_id, "the daemon is out of file descriptors", daemon_fault=True))
            return
        super().on_spawn(action)

    spawns_failed: list[int]


def test_a_spawn_the_daemon_could_not_make_is_retried_and_not_counted_against_the_worker() -> None:
    cfg = app(1, crash_loop=dataclasses.replace(plain_app().crash_loop, max_restarts=2))
    shell = FdStarved(cfg)
    shell.spawns_failed = []
    shell.failures = 10  # far past max_restarts: a worker failing so would be `failed`
    shell.start()
    for _ in range(10):
        [row] = shell.slots()
        assert row["state"] == "backoff" and "out of file descriptors" in row["last_exit"]["error"]
        shell.advance(DAEMON_FAULT_RETRY)
    shell.advance(READY_AFTER + 0.01)
    [row] = shell.slots()
    assert row["state"] == "running", row
    snapshot = shell.core.view.snapshot().instances[0]
    assert snapshot.failures == 0, "the daemon's fault was counted as the worker's"
    faults = [e for e in shell.published("daemon") if e.get("event") == "spawn-failed"]
    assert len(faults) == 10 and faults[0]["retry_in"] == DAEMON_FAULT_RETRY and faults[0]["name"] == "web:0"


def test_a_worker_spawn_failure_still_backs_off_and_fails() -> None:
    cfg = app(1, crash_loop=dataclasses.replace(plain_app().crash_loop, max_restarts=2))
    shell = Pool(cfg)
    shell.on_spawn = lambda action: shell.fail_spawn(action)  # type: ignore[method-assign]
    shell.start()
    shell.advance(30.0)
    assert shell.slots()[0]["state"] == "failed"
    assert not [e for e in shell.published("daemon") if e.get("event") == "spawn-failed"]


def test_deadlines_still_fire_for_held_instances_in_time() -> None:
    """A held hung instance is looked at again (HELD_RECHECK): no deadline is lost."""
    shell = started(app(2, max_unavailable=1))
    shell.exit_on_stop = False
    shell.hang(0, 1)
    shell.advance(TIMEOUT + BEAT + 0.01)
    assert shell.core.next_deadline() is not None
    shell.feed(DeadlineReached())
    assert len(shell.waiting()) == 1
