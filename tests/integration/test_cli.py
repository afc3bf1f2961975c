"""Every CLI verb and its exit codes: 0 done, 1 failed, 2 bad usage/config, 3 no daemon."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest
from helpers import Supervisor, gone, wait_until

CONFIG = """
[apps.sleep]
command = ["{python}", "{workers}/sleeper.py"]
instances = 2
stop_timeout = "5s"

[apps.other]
command = ["{python}", "{workers}/sleeper.py"]
"""

CONTROL_VERBS = [
    ["status"], ["status", "--json"], ["start", "sleep"], ["stop", "sleep"], ["restart", "sleep"],
    ["scale", "sleep", "2"], ["logs", "sleep"], ["events", "--no-follow"], ["shutdown"],
]


@pytest.mark.parametrize("verb", CONTROL_VERBS, ids=lambda v: " ".join(v))
def test_every_control_verb_without_daemon_exits_3(tmp_path, verb):
    sup = Supervisor(tmp_path, CONFIG)
    result = sup.cli(*verb)
    assert result.returncode == 3, result
    assert "no supervise daemon is running" in result.stderr


def test_missing_config_exits_2(tmp_path):
    result = subprocess.run([sys.executable, "-m", "supervise", "status", "-c", str(tmp_path / "nope.toml")],
                            capture_output=True, text=True)
    assert result.returncode == 2
    assert "nope.toml" in result.stderr


def test_check_ok_and_bad(tmp_path):
    sup = Supervisor(tmp_path, CONFIG)
    ok = sup.cli("check")
    assert ok.returncode == 0 and "2 apps, 3 instances" in ok.stdout
    sup.config.write_text(textwrap.dedent("""
        [apps.web]
        command = "x"
        instnces = 3
        stop_timeout = "ten"
    """))
    bad = sup.cli("check")
    assert bad.returncode == 2
    lines = bad.stderr.strip().splitlines()
    assert any(":4: apps.web.instnces" in line and 'did you mean "instances"' in line for line in lines), lines
    assert any(":5: apps.web.stop_timeout" in line for line in lines), lines


def test_run_with_bad_config_exits_2_and_starts_nothing(tmp_path):
    sup = Supervisor(tmp_path, "[apps.x]\ninstances = 'four'\n")
    result = sup.cli("run")
    assert result.returncode == 2
    assert "apps.x.instances" in result.stderr and "apps.x.command" in result.stderr


def test_bad_arguments_exit_2(supervisor):
    sup = supervisor(CONFIG)
    assert sup.cli("frobnicate").returncode == 2
    assert sup.cli("scale", "sleep").returncode == 2
    assert sup.cli("scale", "sleep", "many").returncode == 2
    assert sup.cli("start").returncode == 2
    for verb in ("start", "stop", "restart", "status", "logs"):
        result = sup.cli(verb, "nosuchapp")
        assert result.returncode == 2, (verb, result)
        assert "no app named 'nosuchapp'" in result.stderr
    result = sup.cli("stop", "sleep:7")
    assert result.returncode == 2 and "sleep:7" in result.stderr


def test_status_json_shape(supervisor):
    sup = supervisor(CONFIG)
    sup.wait_state("sleep:1", "running")
    data = json.loads(sup.cli("status", "--json").stdout)
    assert [app["name"] for app in data["apps"]] == ["sleep", "other"]
    inst = data["apps"][0]["instances"][0]
    assert set(inst) >= {"name", "index", "state", "pid", "restarts", "uptime", "rss", "heartbeat_age",
                         "last_exit"}
    assert inst["name"] == "sleep:0" and inst["index"] == 0 and inst["state"] == "running"
    assert isinstance(inst["pid"], int) and inst["restarts"] == 0 and inst["uptime"] >= 0
    assert inst["last_exit"] is None
    only = json.loads(sup.cli("status", "--json", "sleep:1").stdout)
    assert [i["name"] for a in only["apps"] for i in a["instances"]] == ["sleep:1"]
    table = sup.cli("status").stdout
    assert "NAME" in table and "sleep:0" in table and "running" in table


def test_stop_start_restart_of_app_and_instance(supervisor):
    sup = supervisor(CONFIG)
    sup.wait_state("sleep:1", "running")
    old = sup.status()
    assert sup.cli("stop", "sleep:1").returncode == 0
    status = sup.status()
    assert status["sleep:1"]["state"] == "stopped" and status["sleep:1"]["last_exit"]["reason"] == "stopped"
    assert status["sleep:0"]["pid"] == old["sleep:0"]["pid"]
    assert sup.cli("start", "sleep:1").returncode == 0
    assert sup.status()["sleep:1"]["state"] == "running"
    before = sup.status()
    result = sup.cli("restart", "sleep")
    assert result.returncode == 0, result.stderr
    after = sup.status()
    for name in ("sleep:0", "sleep:1"):
        assert after[name]["state"] == "running" and after[name]["pid"] != before[name]["pid"]
        # An operator's restart is counted apart from the supervisor's recoveries (issue 13).
        assert after[name]["operator_restarts"] == before[name]["operator_restarts"] + 1
        assert after[name]["restarts"] == before[name]["restarts"]
    assert after["other:0"]["pid"] == before["other:0"]["pid"]
    assert sup.cli("stop", "sleep", "other").returncode == 0
    assert all(i["state"] == "stopped" for i in sup.status().values())


def test_events_history_then_live(supervisor):
    sup = supervisor(CONFIG)
    sup.wait_state("sleep:1", "running")
    history = [json.loads(line) for line in sup.cli("events", "--no-follow").stdout.splitlines()]
    seqs = [e["seq"] for e in history]
    assert seqs == list(range(1, len(seqs) + 1))
    assert {"to": "running", "name": "sleep:0"}.items() <= next(
        e for e in history if e.get("name") == "sleep:0" and e.get("to") == "running").items()
    last = seqs[-1]
    follower = subprocess.Popen([sys.executable, "-m", "supervise", "events", "--since", str(last),
                                 "-c", str(sup.config)], stdout=subprocess.PIPE, text=True, env=sup.env)
    try:
        # The follower is live once the daemon has it; a stop then shows up on its stdout.
        wait_until(lambda: sup.cli("status").returncode == 0)
        assert sup.cli("stop", "other").returncode == 0
        seen = []
        while not any(e.get("name") == "other:0" and e.get("to") == "stopped" for e in seen):
            line = follower.stdout.readline()
            assert line, "follower ended early"
            seen.append(json.loads(line))
        assert all(e["seq"] > last for e in seen)
        assert [e["seq"] for e in seen] == sorted(e["seq"] for e in seen)
        since = [json.loads(x) for x in sup.cli("events", "--no-follow", "--since", str(last)).stdout.splitlines()]
        assert [e["seq"] for e in since][: len(seen)] == [e["seq"] for e in seen]
    finally:
        follower.terminate()
        follower.wait(5)


def test_shutdown_drains_and_exits_zero(supervisor):
    sup = supervisor(CONFIG)
    pids = [sup.wait_state(n, "running")["pid"] for n in ("sleep:0", "sleep:1", "other:0")]
    result = sup.cli("shutdown")
    assert result.returncode == 0, result.stderr
    assert sup.proc.wait(5) == 0  # gone by the time the CLI returned
    assert sup.cli("status").returncode == 3
    assert all(gone(p) for p in pids)


def test_garbage_on_control_socket_does_not_disturb_daemon(supervisor):
    import zmq

    sup = supervisor(CONFIG)
    sup.wait_state("sleep:0", "running")
    ctx = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.RCVTIMEO, 5000)
    sock.connect(f"ipc://{sup.dir / '.supervise' / 'control.sock'}")
    try:
        bad = [b"", b"\xff\xfe", b"[]", b"{}", b'{"v":2,"cmd":"status"}', b'{"v":1,"cmd":"rm -rf"}',
               b'{"v":1,"cmd":"scale","targets":"sleep","count":true}', b'{"v":1,"cmd":"status","targets":[1]}']
        for frame in bad:
            sock.send(frame)
        for _ in bad:
            reply = json.loads(sock.recv())
            assert reply["ok"] is False and reply["usage"] is True
        sock.send_multipart([b"a", b"b", b"c"])
        assert json.loads(sock.recv())["ok"] is False
        # An oversized frame makes ZeroMQ drop that connection; the daemon carries on.
        sock.send(b"x" * 1_000_000)
    finally:
        sock.close()
        ctx.term()
    assert sup.status()["sleep:0"]["state"] == "running"


@pytest.mark.parametrize("kind", ["REQ", "DEALER"])
def test_protocol_spoken_from_raw_pyzmq(supervisor, kind):
    """docs/protocol.md is enough to write a client: no supervise code on this side."""
    import zmq

    sup = supervisor(CONFIG)
    sup.wait_state("sleep:0", "running")
    ctx = zmq.Context()
    sock = ctx.socket(getattr(zmq, kind))
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.RCVTIMEO, 10000)
    sock.connect(f"ipc://{sup.dir / '.supervise' / 'control.sock'}")
    try:
        sock.send(json.dumps({"v": 1, "cmd": "status", "targets": ["sleep:0"], "id": "q1"}).encode())
        reply = json.loads(sock.recv())
        assert reply["ok"] is True and reply["id"] == "q1"
        assert reply["result"]["apps"][0]["instances"][0]["state"] == "running"
        sock.send(json.dumps({"v": 1, "cmd": "stop", "targets": ["other"], "timeout": 10}).encode())
        reply = json.loads(sock.recv())
        assert reply["ok"] is True
        assert reply["result"]["apps"][0]["instances"][0]["state"] == "stopped"
    finally:
        sock.close()
        ctx.term()


def test_run_with_unusable_state_dir_says_why(tmp_path):
    long_dir = tmp_path / ("d" * 100)
    sup = Supervisor(tmp_path, f'[supervise]\nstate_dir = "{long_dir}"\n' + CONFIG)
    result = sup.cli("run", timeout=30)
    assert result.returncode == 1
    assert "cannot start" in result.stderr and "shorter state_dir" in result.stderr
    assert "Traceback" not in result.stderr
    blocked = tmp_path / "file-not-dir"
    blocked.write_text("")
    sup = Supervisor(tmp_path, f'[supervise]\nstate_dir = "{blocked}"\n' + CONFIG)
    result = sup.cli("run", timeout=30)
    assert result.returncode == 1 and "cannot start: state dir" in result.stderr


@pytest.mark.parametrize("buffered", [False, True], ids=["unbuffered", "buffered"])
def test_status_into_a_pipe_nobody_reads_exits_0_quietly(supervisor, buffered):
    """`supervise status | head -n0`: the reader left before the table was written. That is
    the reader's choice, not a lost daemon: exit 0, nothing on stderr. Unbuffered, the write
    itself fails; buffered, the final flush does."""

    sup = supervisor(CONFIG)
    sup.wait_state("sleep:1", "running")
    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader is gone before the command starts
    env = dict(sup.env)
    if buffered:
        env.pop("PYTHONUNBUFFERED", None)
    try:
        result = subprocess.run([sys.executable, "-m", "supervise", "status", "-c", str(sup.config)],
                                stdout=write_end, stderr=subprocess.PIPE, text=True, env=env, timeout=60)
    finally:
        os.close(write_end)
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
