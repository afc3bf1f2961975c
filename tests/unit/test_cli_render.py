"""What the CLI prints for people: the status table's cells, reload plans, and the one wording of an exit."""

import pytest

from supervise.cli import render
from supervise.wire import protocol
from supervise.wire.protocol import describe_exit


@pytest.mark.parametrize(("last_exit", "text"), [
    (None, "-"),
    ({}, "-"),
    ({"reason": "crashed", "code": 1, "signal": None}, "crashed (exit code 1)"),
    ({"reason": "exited", "code": 0, "signal": None}, "exited (exit code 0)"),
    ({"reason": "hung", "code": None, "signal": 15}, "hung (signal 15)"),
    ({"reason": "crashed", "code": -9, "signal": 9}, "crashed (signal 9)"),
    ({"reason": "lost", "code": None, "signal": None}, "lost"),
    ({"reason": "crashed", "code": None, "signal": None, "error": "cannot execute 'x': No such file"},
     "crashed: cannot execute 'x': No such file"),
    ({"reason": "start-timeout", "code": 1, "signal": None, "error": "boom"}, "start-timeout (exit code 1): boom"),
])
def test_describe_exit(last_exit, text):
    assert describe_exit(last_exit) == text


def test_worker_environment_names_are_the_contract():
    """DESIGN.md fixes these names: workers in any language read them."""
    assert (protocol.ENV_APP, protocol.ENV_INSTANCE, protocol.ENV_NAME, protocol.ENV_HEARTBEAT, protocol.ENV_TOKEN,
            protocol.ENV_HEARTBEAT_INTERVAL) == (
        "SUPERVISE_APP", "SUPERVISE_INSTANCE", "SUPERVISE_NAME", "SUPERVISE_HEARTBEAT", "SUPERVISE_TOKEN",
        "SUPERVISE_HEARTBEAT_INTERVAL")


@pytest.mark.parametrize(("seconds", "text"), [
    (None, "-"), (0, "0.0s"), (9.95, "9.9s"), (10, "10s"), (59.9, "59s"), (60, "1m00s"), (3599, "59m59s"),
    (3600, "1h00m"), (86399, "23h59m"), (86400, "1d00h"), (10**7, "115d17h"),
])
def test_duration(seconds, text):
    assert render.duration(seconds) == text


@pytest.mark.parametrize(("n", "text"), [
    (None, "-"), (0, "0B"), (1023, "1023B"), (1024, "1.0K"), (1536, "1.5K"), (300 << 20, "300.0M"),
    (2 << 30, "2.0G"), (5 << 40, "5120.0G"),
])
def test_size(n, text):
    assert render.size(n) == text


def test_status_table_aligns_columns_and_lists_waiting_apps():
    result = {"apps": [
        {"name": "web", "instances": [
            {"name": "web:0", "state": "running", "pid": 12, "uptime": 3.2, "restarts": 0, "rss": 5 << 20,
             "cpu": 12.34, "heartbeat_age": 0.25, "last_exit": None},
            {"name": "web:10", "state": "backoff", "pid": None, "uptime": None, "restarts": 3, "rss": None,
             "last_exit": {"reason": "crashed", "code": 1, "signal": None}}]},
        {"name": "db", "waiting_for": ["a", "b"], "instances": []}]}
    assert render.status_table(result).splitlines() == [
        "NAME    STATE    PID  UPTIME  RESTARTS  CPU   MEM   BEAT  LAST EXIT",
        "web:0   running  12   3.2s    0         12.3  5.0M  0.2s  -",
        "web:10  backoff  -    -       3         -     -     -     crashed (exit code 1)",
        "db      waiting  -    -       -         -     -     -     for a, b",
    ]


def _inst(name, state="running", **extra):
    index = int(name.partition(":")[2])
    return {"name": name, "index": index, "state": state, "pid": 100 + index, "uptime": 5.0, "restarts": 0,
            "rss": None, "cpu": None, "heartbeat_age": None, "last_exit": None, **extra}


def test_status_table_shows_a_rollout_and_the_replacements_beside_their_slots():
    result = {"apps": [{"name": "web", "generation": 4, "instances": [_inst("web:0"), _inst("web:1")],
                        "replacing": [_inst("web:0", "stopping", role="old"), _inst("web:0", "starting", role="new")],
                        "rollout": {"state": "running", "generation": 4, "replaced": 3, "total": 8}}]}
    lines = render.status_table(result).splitlines()
    assert [line.split()[:3] for line in lines[1:4]] == [["web:0", "running", "100"], ["web:0", "old", "stopping"],
                                                         ["web:0", "new", "starting"]]
    assert lines[2].startswith("  web:0 old")
    assert lines[4].startswith("web:1 ")
    assert lines[-1] == "web: rolling 3/8 to generation 4"


def test_status_table_says_nothing_of_a_finished_rollout():
    result = {"apps": [{"name": "web", "instances": [_inst("web:0")],
                        "rollout": {"state": "done", "generation": 4, "replaced": 8, "total": 8}}]}
    assert "rolling" not in render.status_table(result)


def test_status_table_shows_a_restart_held_by_the_budget():
    result = {"apps": [{"name": "web", "instances": [
        _inst("web:0", waiting="budget", waiting_reason="hung", waiting_age=1.5)]}]}
    assert render.status_table(result).splitlines()[1].split("  ")[:2] == ["web:0", "running (restart held: hung)"]


@pytest.mark.parametrize(("change", "done", "dry"), [
    ({"action": "unchanged"}, "unchanged", "unchanged"),
    ({"action": "start", "instances": [0, 3]}, "start 3 instances", "would start 3 instances"),
    ({"action": "stop", "instances": [2, 0]}, "stop and remove its 2 instances", None),
    ({"action": "roll", "fields": ["command"]}, "roll every instance onto the new config (changed: command)", None),
    ({"action": "roll", "instances": [2, 4], "fields": ["env"]},
     "roll every instance onto the new config (changed: env); scale 2 -> 4", None),
    ({"action": "update", "instances": [2, 1], "fields": ["instances"]},
     "apply in place, no restart (changed: instances); scale 2 -> 1", None),
    ({"action": "roll", "instances": [0, 1, 2], "surge": 1}, "roll 3 instances, 1 at a time",
     "would roll 3 instances, 1 at a time"),
])
def test_plan_lines(change, done, dry):
    assert render.plan_lines([{"app": "web", **change}], dry_run=False) == [f"web: {done}"]
    assert render.plan_lines([{"app": "web", **change}], dry_run=True) == [f"web: {dry or 'would ' + done}"]
