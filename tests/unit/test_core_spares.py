"""Warm spares in the core alone, with a fake clock (issue 15, part 1).

An app with ``spares = N`` keeps N instances started and ready beside its
slots. A restart that is due promotes a ready spare into the slot instead of
starting a process; backoff and the crash-loop breaker pace promotions as
they pace restarts; a new spare starts behind each one promoted.
"""

from __future__ import annotations

import dataclasses

from fakeshell import BeatingShell, FakeShell, Proc, config
from fakeshell import app as plain_app

from supervise.config.model import AppConfig, BackoffConfig, CrashLoopConfig, Readiness
from supervise.core import Action, Adopted, PromoteSpare, Recovered, Role, Sampled, Spawn, Verb
from supervise.core.instance import MEMORY_HYSTERESIS, State

TIMEOUT = 1.0  # heartbeat_timeout
BEAT = 0.2
READY_AFTER = 2.0  # a slow start (imports, a model to load): what spares save
EXIT_AFTER = 0.05


def app(instances: int = 2, spares: int = 1, **kw: object) -> AppConfig:
    kw.setdefault("readiness", Readiness.HEARTBEAT)
    kw.setdefault("heartbeat_timeout", TIMEOUT)
    return plain_app("web", instances=instances, spares=spares, **kw)


class Pool(BeatingShell):
    """Fake workers that say ready READY_AFTER after their spawn, beat until paused, exit on stop."""

    def __init__(self, *apps: AppConfig) -> None:
        super().__init__(config(*apps), READY_AFTER, BEAT, EXIT_AFTER)
        self.actions: list[Action] = []

    def carry_out(self, actions: list[Action]) -> None:
        self.actions += actions
        super().carry_out(actions)

    def slot(self, index: int) -> dict[str, object]:
        return self.slots()[index]

    def proc_of(self, row: dict[str, object]) -> Proc:
        return self.procs[row["pid"]]  # type: ignore[index]

    def kill(self, index: int) -> Proc:
        """SIGKILL slot `index`'s process; the core hears at once."""
        proc = self.proc_of(self.slot(index))
        self.exit_process(proc, None, 9)
        return proc

    def promotions(self) -> list[PromoteSpare]:
        return [a for a in self.actions if isinstance(a, PromoteSpare)]

    def slot_spawns(self) -> list[Spawn]:
        return [s for s in self.spawns if not s.spare]


def started(*apps: AppConfig) -> Pool:
    shell = Pool(*apps)
    shell.start()
    shell.advance(READY_AFTER + 0.01)
    assert all(i["state"] == "running" for i in shell.slots())
    assert all(i["state"] == "running" for i in shell.spares())
    return shell


# -- what status shows --------------------------------------------------------------------------


def test_spares_start_with_the_app_and_show_as_spares_in_status() -> None:
    shell = started(app(instances=2, spares=2))
    spares = shell.spares()
    assert [s["name"] for s in spares] == ["web:spare-0", "web:spare-1"]
    assert all(s["index"] is None and s["role"] == "spare" for s in spares)
    assert [i["role"] for i in shell.slots()] == ["active", "active"]
    assert [p for p in shell.live() if p.spare] and len(shell.live()) == 4
    assert [e for e in shell.published("state") if e.get("role") == "spare" and e["to"] == "running"]


# -- a crash: the spare takes the slot at once ---------------------------------------------------


def test_a_crashed_instance_is_replaced_by_its_spare_at_once_and_a_new_spare_starts() -> None:
    shell = started(app(instances=2, spares=1))
    spare = next(p for p in shell.live() if p.spare)
    spawns_before = len(shell.slot_spawns())
    dead = shell.kill(1)

    row = shell.slot(1)
    assert row["pid"] == spare.pid and row["state"] == "running", "the spare serves slot 1 in the same instant"
    assert spare.promoted_at == shell.now and not spare.spare and spare.name == "web:1"
    assert row["restarts"] == 1 and row["last_exit"]["reason"] == "crashed"  # type: ignore[index]
    assert len(shell.slot_spawns()) == spawns_before, "no cold start for the slot"
    assert shell.promotions()[-1].index == 1
    promoted = shell.published("promoted")[-1]
    assert promoted["name"] == "web:1" and promoted["spare"] == "web:spare-0" and promoted["pid"] == spare.pid
    # Behind it, a new spare starts (and is ready READY_AFTER later).
    assert shell.spawns[-1].spare and shell.spares()[0]["state"] == "starting"
    shell.advance(READY_AFTER + 0.01)
    assert shell.spares()[0]["state"] == "running" and shell.spares()[0]["pid"] != spare.pid
    assert dead.pid not in shell.alive


def test_without_a_ready_spare_a_crash_restarts_cold_as_always() -> None:
    shell = started(app(instances=2, spares=1))
    shell.kill(0)  # the spare is promoted; its successor is still starting
    shell.kill(1)
    assert shell.slot(1)["state"] == "starting", "no ready spare: a new process"
    assert shell.slot_spawns()[-1].index == 1
    shell.advance(READY_AFTER + 0.01)
    assert [i["state"] for i in shell.slots()] == ["running", "running"]


def test_a_spare_ready_before_a_cold_restart_takes_the_slot_and_the_cold_start_stops() -> None:
    shell = started(app(instances=2, spares=1))
    shell.kill(0)  # the spare is promoted; a new one starts
    shell.advance(0.5)
    shell.kill(1)  # no ready spare: slot 1 starts cold, 0.5 s behind the new spare
    cold = shell.proc_of(shell.slot(1))
    restarts = shell.slot(1)["restarts"]
    shell.advance(READY_AFTER - 0.5 + 0.01)  # the spare is ready; the cold start is not yet
    spare_pid = shell.slot(1)["pid"]
    assert spare_pid != cold.pid and shell.slot(1)["state"] == "running", "the ready spare took the slot"
    assert cold.stop_signalled_at is not None, "the cold start is stopped: it would only duplicate the slot"
    assert shell.slot(1)["restarts"] == restarts, "one restart, not two"
    shell.advance(1.0)
    assert cold.pid not in shell.alive and shell.slot(1)["pid"] == spare_pid
    booting = Pool(app(instances=2, spares=1))
    booting.start()
    booting.advance(READY_AFTER + 0.01)
    assert not booting.promotions(), "a first start is left alone: it is not a restart"


def test_a_spare_of_a_pool_of_spares_is_taken_lowest_number_first() -> None:
    shell = started(app(instances=3, spares=2))
    first = next(p for p in shell.live() if p.spare and p.index == 0)
    second = next(p for p in shell.live() if p.spare and p.index == 1)
    shell.kill(0)
    shell.kill(2)
    assert shell.slot(0)["pid"] == first.pid and shell.slot(2)["pid"] == second.pid


# -- restarts the supervisor decides on ---------------------------------------------------------


def test_a_hung_instance_is_replaced_by_its_spare_at_once_and_stopped_beside_it() -> None:
    shell = started(app(instances=2, spares=1))
    spare = next(p for p in shell.live() if p.spare)
    hung = shell.proc_of(shell.slot(0))
    shell.paused.add(hung.spawn_id)
    shell.advance(TIMEOUT + BEAT + 0.01)
    row = shell.slot(0)
    assert row["pid"] == spare.pid and row["state"] == "running"
    assert row["restarts"] == 1 and row["last_exit"]["reason"] == "hung"  # type: ignore[index]
    assert hung.stop_signalled_at is not None, "the hung one is stopped"
    assert spare.promoted_at is not None and spare.promoted_at <= hung.stop_signalled_at
    shell.advance(1.0)
    assert hung.pid not in shell.alive
    assert not shell.status()["web"].get("replacing"), "the old one is gone and forgotten"


def test_with_a_port_of_its_own_the_spare_waits_for_the_hung_one_to_free_it() -> None:
    shell = started(app(instances=1, spares=1, port=8000))
    spare = next(p for p in shell.live() if p.spare)
    hung = shell.proc_of(shell.slot(0))
    shell.paused.add(hung.spawn_id)
    while hung.stop_signalled_at is None:
        shell.advance(0.01)
    assert spare.promoted_at is None, "port 8000 is still the hung one's"
    shell.advance(EXIT_AFTER + 0.001)
    assert hung.pid not in shell.alive
    assert spare.promoted_at is not None and shell.slot(0)["pid"] == spare.pid
    assert len(shell.slot_spawns()) == 1, "only the first start was cold"


def test_an_instance_over_its_memory_is_replaced_by_its_spare() -> None:
    shell = started(app(instances=1, spares=1, max_memory=100))
    spare = next(p for p in shell.live() if p.spare)
    fat = shell.proc_of(shell.slot(0))
    for _ in range(MEMORY_HYSTERESIS):
        shell.feed(Sampled({fat.spawn_id: 500, spare.spawn_id: 50}))
    assert shell.slot(0)["pid"] == spare.pid
    assert shell.slot(0)["last_exit"]["reason"] == "memory"  # type: ignore[index]
    assert fat.stop_signalled_at is not None


def test_a_spare_over_its_memory_restarts_in_place_as_a_spare() -> None:
    shell = started(app(instances=1, spares=1, max_memory=100))
    spare = next(p for p in shell.live() if p.spare)
    for _ in range(MEMORY_HYSTERESIS):
        shell.feed(Sampled({spare.spawn_id: 500}))
    assert spare.stop_signalled_at is not None and spare.spare
    shell.advance(EXIT_AFTER + 0.01)
    assert shell.spawns[-1].spare, "a new spare, not a slot"
    assert shell.spares()[0]["restarts"] == 1


# -- pacing: backoff and the crash-loop breaker are the slot's ----------------------------------


def test_promotions_follow_the_slots_backoff_and_the_breaker_trips_for_the_slot() -> None:
    loop = CrashLoopConfig(max_restarts=3, window=60.0, cooldown=30.0)
    backoff = BackoffConfig(initial=0.5, max=4.0, multiplier=2.0, jitter=0.0, reset_after=10.0)
    shell = started(app(instances=1, spares=3, crash_loop=loop, backoff=backoff))
    shell.advance(READY_AFTER)  # every spare ready
    shell.kill(0)  # the first crash after a healthy run: at once
    assert shell.slot(0)["state"] == "running" and len(shell.promotions()) == 1
    shell.kill(0)  # crashed again at once: the slot's backoff applies to the next promotion
    assert shell.slot(0)["state"] == "backoff", "a crash loop does not burn through the spares"
    shell.advance(0.49)
    assert len(shell.promotions()) == 1
    shell.advance(0.02)
    assert len(shell.promotions()) == 2 and shell.slot(0)["state"] == "running"
    shell.kill(0)
    shell.advance(1.01)
    assert len(shell.promotions()) == 3
    shell.kill(0)  # a fourth restart within the window: the slot's breaker trips
    assert shell.slot(0)["state"] == "failed"
    assert shell.slot(0)["restarts"] == 3
    cold = len(shell.slot_spawns())
    shell.advance(READY_AFTER + 0.01)
    assert len(shell.promotions()) == 3 and len(shell.slot_spawns()) == cold, "nothing more until the cooldown"
    assert all(s["state"] == "running" for s in shell.spares()), "the spares stay ready for the other slots"


def test_a_promoted_spare_that_runs_healthy_resets_the_slots_backoff() -> None:
    backoff = BackoffConfig(initial=0.5, max=4.0, multiplier=2.0, jitter=0.0, reset_after=5.0)
    shell = started(app(instances=1, spares=1, backoff=backoff))
    shell.kill(0)
    shell.advance(READY_AFTER + 5.0)  # the promoted one ran healthy; the new spare is ready
    shell.kill(0)
    assert shell.slot(0)["state"] == "running", "healthy again: the next crash is promoted at once"


def test_a_spare_that_crashes_while_idle_restarts_as_a_spare() -> None:
    shell = started(app(instances=1, spares=1))
    spare = next(p for p in shell.live() if p.spare)
    shell.exit_process(spare, 1, None)
    assert shell.spares()[0]["state"] in ("starting", "backoff")
    shell.advance(READY_AFTER + 1.0)
    assert shell.spares()[0]["state"] == "running" and shell.spares()[0]["pid"] != spare.pid
    assert all(not s.spare for s in shell.slot_spawns())


# -- operators, reloads, shutdown ---------------------------------------------------------------


def test_stopping_the_app_stops_its_spares_and_starting_it_brings_them_back() -> None:
    shell = started(app(instances=2, spares=1))
    shell.command(Verb.STOP, "web")
    shell.advance(1.0)
    assert shell.live() == [], "no spare left running"
    assert shell.spares() == []
    shell.command(Verb.START, "web")
    shell.advance(READY_AFTER + 0.01)
    assert [s["state"] for s in shell.spares()] == ["running"]


def test_restarting_the_app_restarts_its_spares_too() -> None:
    shell = started(app(instances=1, spares=1))
    spare = next(p for p in shell.live() if p.spare)
    shell.command(Verb.RESTART, "web")
    shell.advance(READY_AFTER + 0.5)
    assert spare.pid not in shell.alive, "a spare would otherwise run the code the app ran before"
    assert shell.spares()[0]["state"] == "running"


def test_a_reload_replaces_the_spares_with_the_new_generations_once_the_rollout_is_done() -> None:
    shell = started(app(instances=2, spares=1))
    old_spare = next(p for p in shell.live() if p.spare)
    shell.command(Verb.RELOAD, "web")
    shell.advance(0.5)
    assert old_spare.pid in shell.alive, "kept while the rollout runs: old slots may still need it"
    shell.advance(4 * READY_AFTER)
    assert shell.status()["web"]["rollout"]["state"] == "done"  # type: ignore[index]
    assert old_spare.pid not in shell.alive
    spare = shell.spares()[0]
    assert spare["state"] == "running" and spare["generation"] == 2


def test_a_promotion_never_mixes_generations() -> None:
    shell = started(app(instances=2, spares=1))
    shell.command(Verb.RELOAD, "web")
    shell.advance(READY_AFTER + 0.3)  # slot 0 is on generation 2 now, slot 1 not yet
    gens = {i["index"]: i["generation"] for i in shell.slots()}
    new_slot = next(i for i, g in gens.items() if g == 2)
    shell.kill(new_slot)
    row = shell.slot(new_slot)
    assert row["generation"] == 2, "the old generation's spare does not take a new generation's slot"


def test_changing_the_number_of_spares_takes_effect_on_reload() -> None:
    shell = started(app(instances=1, spares=2))
    fewer = dataclasses.replace(shell.config.apps["web"], spares=1)
    shell.feed(_reload(shell, fewer))
    shell.advance(1.0)
    assert len(shell.spares()) == 1 and len([p for p in shell.live() if p.spare]) == 1
    more = dataclasses.replace(fewer, spares=3)
    shell.feed(_reload(shell, more))
    shell.advance(READY_AFTER + 0.01)
    assert [s["state"] for s in shell.spares()] == ["running"] * 3


def test_shutdown_stops_the_spares_and_none_comes_back() -> None:
    shell = started(app(instances=2, spares=2))
    shell.command(Verb.SHUTDOWN)
    shell.advance(2.0)
    assert shell.live() == [] and shell.exit_code == 0


# -- a daemon that died -------------------------------------------------------------------------


def test_a_live_spare_is_adopted_as_a_spare_and_promoted_later() -> None:
    cfg = app(instances=1, spares=1)
    shell = started(cfg)
    spare = next(p for p in shell.live() if p.spare)
    shell.advance(1.0)
    records = shell.core.view.snapshot().instances
    assert any(r.role is Role.SPARE for r in records)
    # A new core (the daemon restarted) on the same processes.
    found = tuple(Adopted(r.app, r.index, r.generation, r.state, shell.by_spawn[r.spawn_id].pid, r.restarts,
                          r.failures, age=1.0, running_for=1.0, role=r.role) for r in records
                  if r.spawn_id is not None)
    again = Pool(cfg)
    again.procs, again.alive = shell.procs, shell.alive
    again.feed(Recovered({}, found))
    again.start()
    assert [s["pid"] for s in again.spares()] == [spare.pid], "the spare is still a spare, not restarted"
    again.exit_process(again.proc_of(again.slot(0)), None, 9)
    assert again.slot(0)["pid"] == spare.pid


def _reload(shell: FakeShell, new: AppConfig) -> object:
    from supervise.core import CommandReceived

    cfg = config(new)
    return CommandReceived(("reload", new.spares), Verb.RELOAD, (), config=cfg)


def test_the_state_machine_never_sees_a_spare_in_a_slot_nor_a_slot_among_spares() -> None:
    shell = started(app(instances=3, spares=2))
    for round_ in range(20):
        shell.kill(round_ % 3)
        shell.advance(0.7)
        indexes = [i["index"] for i in shell.slots()]
        assert indexes == [0, 1, 2]
        assert all(s["name"].startswith("web:spare-") for s in shell.spares())  # type: ignore[union-attr]
        names = [p.name for p in shell.live()]
        assert len(names) == len(set(names)), f"two live processes named alike: {names}"
    assert all(r.state in (State.RUNNING, State.STARTING, State.BACKOFF, State.STOPPED)
               for r in shell.core.view.snapshot().instances)
