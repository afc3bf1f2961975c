"""What a previous daemon left, as the core's Recovered event: the pure conversions of runtime/adoption.py,
and the checkpoint's records surviving a round trip through its JSON."""

from __future__ import annotations

import dataclasses
import random
from pathlib import Path

import pytest
from fakeshell import app, config

from supervise.core import AppRecord, Core, DaemonStarted, Exited, Ready, Role, Spawn, Spawned
from supervise.core.instance import ExitReason, LastExit, State
from supervise.runtime import adoption, checkpoint
from supervise.runtime.adoption import Stray
from supervise.runtime.checkpoint import Checkpoint, CheckpointError, InstanceRecord
from supervise.runtime.process import Child
from supervise.runtime.workers import Inherited, Worker

WALL = 1_000_000.0


def record(**kw) -> InstanceRecord:
    base = dict(app="web", index=0, generation=2, role="slot", state="running", restarts=3, pid=4321,
                create_time=WALL - 50, token="t" * 32, spawned_at=WALL - 50, running_since=WALL - 40)
    return InstanceRecord(**{**base, **kw})  # type: ignore[arg-type]


def stray(pid: int, token: str, born: float, index: int = 0) -> Stray:
    return Stray(pid, born, "web", index, token)


def test_a_record_whose_process_lives_is_adopted_with_its_pid_and_times():
    found = adoption.adopted_from_record(record(last_exit={"reason": "crashed", "code": 1, "signal": None}),
                                         alive=True, wall=WALL)
    assert (found.pid, found.state, found.role, found.restarts) == (4321, State.RUNNING, Role.SLOT, 3)
    assert (found.age, found.running_for) == (50.0, 40.0)
    assert found.last_exit == LastExit(ExitReason.CRASHED, 1)


def test_a_record_whose_process_died_is_adopted_without_a_pid():
    assert adoption.adopted_from_record(record(), alive=False, wall=WALL).pid is None


@pytest.mark.parametrize("bad", [{"state": "dancing"}, {"role": "boss"}, {"last_exit": {"reason": "bored"}},
                                 {"last_exit": {"reason": "crashed", "code": "one"}}])
def test_a_record_this_version_does_not_know_makes_the_checkpoint_unusable(bad):
    with pytest.raises(CheckpointError, match="malformed instance record web:0"):
        adoption.adopted_from_record(record(**bad), alive=True, wall=WALL)


def test_of_strays_the_oldest_per_token_is_the_worker_and_known_tokens_are_children():
    strays = [stray(10, "a", born=5.0), stray(11, "a", born=3.0), stray(12, "b", born=9.0), stray(13, "k", born=1.0)]
    chosen = adoption.unclaimed_strays(strays, known_tokens={"k"})
    assert [s.pid for s in chosen] == [11, 12]


def test_leftovers_combine_records_strays_and_liveness():
    found = Checkpoint(1, WALL, "/c.toml", "", {"web": {"target": 3, "generation": 2, "latest": 4}},
                       (record(pid=100, token="a"), record(index=1, pid=101, token="b")))
    left = adoption.leftovers(found, [stray(200, "c", born=WALL - 1, index=2), stray(201, "a", born=WALL - 9)],
                              alive=lambda r: r.pid == 100, wall=WALL)
    assert [(a.index, a.pid, a.generation) for a in left.event.instances] == [(0, 100, 2), (1, None, 2),
                                                                              (2, 200, None)]
    assert left.lost == ("web:1",) and left.strays == 1
    assert left.event.apps == {"web": AppRecord(3, 2, 4)}
    assert left.inherited[100] == Inherited("a", WALL - 50, None, None, ())
    assert left.inherited[200] == Inherited("c", WALL - 1)  # its listen sockets: the app's, as configured


def test_app_records_refuse_what_is_not_a_count():
    with pytest.raises(CheckpointError, match="malformed app record web"):
        adoption.app_records({"web": {"target": "three", "generation": 1}})


def test_a_live_checkpoint_reads_back_as_the_records_it_was_written_from():
    """encode_live writes the records' fields by hand, for speed: decode must read them all back."""
    web = app("web", instances=2, listen=("127.0.0.1:9",))
    core = Core(config(web), random.Random(0))
    spawns = [a for a in core.handle(DaemonStarted(), 0.0) if isinstance(a, Spawn)]
    table = {}
    for a in spawns:
        core.handle(Spawned(a.spawn_id, 500 + a.spawn_id), 1.0)
        core.handle(Ready(a.spawn_id), 2.0)
        table[a.spawn_id] = Worker(a.spawn_id, f"web:{a.index}", a.app, Child(500 + a.spawn_id, None,
                                   "/cg/x", 123.0), "tok", None, "/logs/web.log")
    data = checkpoint.encode_live(core.view.snapshot(), table, 1000.0, Path("/c.toml"), "text")  # type: ignore[arg-type]
    back = checkpoint.decode(data)
    assert back.apps == {"web": {"target": 2, "generation": 1, "latest": 1}} and back.config_text == "text"
    first = back.instances[0]
    assert dataclasses.asdict(first) == {
        "app": "web", "index": 0, "generation": 1, "role": "slot", "state": "running", "restarts": 0,
        "pid": 501, "failures": 0, "create_time": 123.0, "token": "tok", "log_path": "/logs/web.log",
        "cgroup": "/cg/x", "listen": ("127.0.0.1:9",), "spawned_at": 1000.0, "running_since": 1001.0,
        "last_exit": None, "fence": None, "reloads": 0, "operator_restarts": 0}


def test_the_record_cache_reencodes_exactly_the_records_that_changed():
    """A checkpoint in a storm re-encodes only the instances that changed; one that did not is the very
    text of the last checkpoint, and one that did reads back as it is now."""
    web = app("web", instances=3)
    core = Core(config(web), random.Random(0))
    table = {}
    for a in [a for a in core.handle(DaemonStarted(), 0.0) if isinstance(a, Spawn)]:
        core.handle(Spawned(a.spawn_id, 500 + a.spawn_id), 1.0)
        core.handle(Ready(a.spawn_id), 2.0)
        table[a.spawn_id] = Worker(a.spawn_id, f"web:{a.index}", a.app, Child(500 + a.spawn_id, None, None, 123.0),
                                   "tok", None, f"/logs/web.{a.index}.log")
    cache: dict = {}
    checkpoint.encode_live(core.view.snapshot(), table, 1000.0, Path("/c.toml"), "text", cache)  # type: ignore[arg-type]
    before = {slot: text for slot, (_, text) in cache.items()}
    assert len(before) == 3
    gone = min(table)
    table.pop(gone)
    core.handle(Exited(gone, None, 9), 3.0)
    data = checkpoint.encode_live(core.view.snapshot(), table, 1000.0, Path("/c.toml"), "text", cache)  # type: ignore[arg-type]
    after = {slot: text for slot, (_, text) in cache.items()}
    unchanged = [slot for slot in before if slot != gone]
    assert all(after[slot] is before[slot] for slot in unchanged)  # reused, not encoded again
    assert gone not in after  # the cache keeps only this checkpoint's records
    by_index = {r.index: r for r in checkpoint.decode(data).instances}
    assert by_index[0].pid is None and by_index[0].last_exit is not None
    assert by_index[1].pid == 500 + sorted(table)[0] and by_index[1].state == "running"
    # A wall clock step (the offset) makes every record new.
    checkpoint.encode_live(core.view.snapshot(), table, 2000.0, Path("/c.toml"), "text", cache)  # type: ignore[arg-type]
    assert all(text is not after.get(slot) for slot, (_, text) in cache.items())


def test_a_snapshot_holds_each_field_by_its_name():
    """snapshot() builds InstanceSnapshot with tuple.__new__ (for speed), which checks neither the count
    nor the order of the fields: every one is read back here by name."""
    web = app("web", instances=1)
    core = Core(config(web), random.Random(0))
    spawn = next(a for a in core.handle(DaemonStarted(), 0.0) if isinstance(a, Spawn))
    core.handle(Spawned(spawn.spawn_id, 777), 1.0)
    core.handle(Ready(spawn.spawn_id), 2.0)
    (snap,) = core.view.snapshot().instances
    assert len(snap) == len(type(snap)._fields)
    assert snap._asdict() == {
        "app": "web", "index": 0, "generation": 1, "role": Role.SLOT, "state": State.RUNNING,
        "spawn_id": spawn.spawn_id, "restarts": 0, "failures": 0, "spawned_at": 0.0, "running_since": 1.0,
        "last_exit": None, "fence": None, "reloads": 0, "operator_restarts": 0}
