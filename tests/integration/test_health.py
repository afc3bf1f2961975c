"""Readiness, hangs, memory and the drain handshake, with real workers and sockets.

The workers here speak the heartbeat protocol from raw pyzmq (tests/integration/
workers/raw_beat.py), proving docs/protocol.md is enough to write a worker.
"""

from __future__ import annotations

import json
import os
import signal
import time

from helpers import gone, wait_until


def raw(mode: str, *args: str, **keys: str) -> str:
    extra = "\n".join(f"{k} = {v}" for k, v in keys.items())
    argv = ", ".join(f'"{a}"' for a in ("{python}", "{workers}/raw_beat.py", mode, *args))
    return f"[apps.w]\ncommand = [{argv}]\nreadiness = \"heartbeat\"\n{extra}\n"


def events_of(sup, name: str) -> list[dict]:
    lines = sup.cli("events", "--no-follow").stdout.splitlines()
    return [e for e in map(json.loads, lines) if e.get("name") == name]


def test_ready_message_makes_running_and_beats_show_in_status(supervisor):
    sup = supervisor(raw("late-ready", "0.6", heartbeat_timeout='"5s"'))
    first = sup.status()["w:0"]
    assert first["state"] == "starting"
    inst = sup.wait_state("w:0", "running")
    assert inst["uptime"] >= 0.5  # not before its ready message
    inst = wait_until(lambda: (i := sup.status()["w:0"])["fields"] and i["fields"].get("beats") and i)
    assert inst["fields"]["inflight"] == 2
    assert 0 <= inst["heartbeat_age"] < 2.0
    counters = json.loads(sup.cli("status", "--json").stdout)["daemon"]["heartbeats"]
    assert counters["accepted"] >= 2 and counters["rejected"] == 0


def test_never_ready_is_restarted_with_start_timeout(supervisor):
    sup = supervisor(raw("never-ready", start_timeout='"700ms"', stop_timeout='"1s"'))
    pid = sup.wait_state("w:0", "starting")["pid"]
    inst = wait_until(lambda: (i := sup.status()["w:0"])["last_exit"] and i, timeout=10)
    assert inst["last_exit"]["reason"] == "start-timeout"
    assert inst["restarts"] == 1 and inst["pid"] != pid
    assert gone(pid)


def test_worker_that_stops_beating_is_restarted_as_hung(supervisor):
    sup = supervisor(raw("hang", "0.5", heartbeat_timeout='"1s"', stop_timeout='"1s"'))
    pid = sup.wait_state("w:0", "running")["pid"]
    inst = wait_until(lambda: (i := sup.status()["w:0"])["last_exit"] and i, timeout=15)
    assert inst["last_exit"]["reason"] == "hung"
    assert inst["pid"] != pid
    # Detection is on time: from the last beat to the stop, about heartbeat_timeout.
    evs = events_of(sup, "w:0")
    running_at = next(e["time"] for e in evs if e["to"] == "running")
    stopping_at = next(e["time"] for e in evs if e["to"] == "stopping")
    assert 1.0 <= stopping_at - running_at < 0.5 + 1.0 + 1.0


def test_sigstopped_worker_is_hung_then_stopped_gracefully(supervisor):
    sup = supervisor(raw("good", heartbeat_timeout='"1s"', stop_timeout='"2s"'))
    pid = sup.wait_state("w:0", "running")["pid"]
    os.kill(pid, signal.SIGSTOP)
    inst = wait_until(lambda: (i := sup.status()["w:0"])["last_exit"] and i, timeout=15)
    assert inst["last_exit"]["reason"] == "hung"
    # SIGCONT after the stop signal let it act on the drain message: no SIGKILL needed.
    assert inst["last_exit"]["code"] == 0


def test_spoofed_heartbeats_do_not_keep_a_hung_worker_alive(supervisor):
    import zmq

    sup = supervisor(raw("hang", "0.3", heartbeat_timeout='"1s"', stop_timeout='"1s"'))
    sup.wait_state("w:0", "running")
    ctx = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(f"ipc://{sup.dir / '.supervise' / 'heartbeat.sock'}")
    try:
        deadline = time.monotonic() + 15
        while not sup.status()["w:0"]["last_exit"]:
            assert time.monotonic() < deadline, "the hung worker was never restarted"
            for token in ("0" * 32, "forged"):
                sock.send(json.dumps({"v": 1, "type": "beat", "name": "w:0", "token": token}).encode())
            time.sleep(0.05)  # pacing the attacker, not synchronization
    finally:
        sock.close()
        ctx.term()
    assert sup.status()["w:0"]["last_exit"]["reason"] == "hung"
    counters = json.loads(sup.cli("status", "--json").stdout)["daemon"]["heartbeats"]
    assert counters["rejected"] >= 2


def test_garbage_on_the_heartbeat_socket_is_counted_and_ignored(supervisor):
    import zmq

    sup = supervisor(raw("good", heartbeat_timeout='"2s"'))
    before = sup.wait_state("w:0", "running")
    ctx = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 1000)
    sock.connect(f"ipc://{sup.dir / '.supervise' / 'heartbeat.sock'}")
    garbage = [b"", b"\x00\xff", b"null", b"[1,2]", b'{"v":1}', b'{"v":9,"type":"beat"}',
               b'{"v":1,"type":"beat","name":"w:0","token":7}', b'{"v":1,"type":"shout","name":"w:0","token":"x"}',
               b'{"v":1,"type":"beat","name":"w:0","token":"x","status":{"a":[1]}}']
    for frame in garbage:
        sock.send(frame)
    sock.send_multipart([b"two", b"frames"])
    sock.close()
    ctx.term()
    counters = wait_until(lambda: (c := json.loads(sup.cli("status", "--json").stdout)["daemon"]["heartbeats"])
                          ["malformed"] >= len(garbage) and c)
    assert counters["malformed"] == len(garbage) + 1
    after = sup.wait_state("w:0", "running")
    assert after["pid"] == before["pid"] and after["restarts"] == 0


def test_memory_of_the_whole_tree_triggers_a_graceful_restart(supervisor):
    sup = supervisor("""
    [apps.hog]
    command = ["{python}", "{workers}/leak_child.py", "120", "0.3"]
    readiness = "heartbeat"
    max_memory = "80M"
    stop_timeout = "2s"
    """)
    pid = sup.wait_state("hog:0", "running")["pid"]
    inst = wait_until(lambda: (i := sup.status()["hog:0"])["last_exit"] and i, timeout=15)
    assert inst["last_exit"]["reason"] == "memory"
    assert inst["last_exit"]["signal"] is None and inst["last_exit"]["code"] == 0  # SIGTERM, exited cleanly
    assert inst["pid"] != pid
    # The child that held the memory went with it.
    log = (sup.dir / ".supervise/logs/hog.0.log").read_text()
    hog = int(log.split("child ", 1)[1].split()[0])
    wait_until(lambda: gone(hog), timeout=5, message="the memory-holding child to be gone")


def test_status_shows_rss_of_the_tree(supervisor):
    sup = supervisor("""
    [apps.hog]
    command = ["{python}", "{workers}/leak_child.py", "60", "0"]
    readiness = "heartbeat"
    max_memory = "1G"
    """)
    inst = wait_until(lambda: (i := sup.status()["hog:0"])["rss"] and i["rss"] > 60 * 2**20 and i, timeout=10)
    assert inst["rss"] < 1024 * 2**20


def test_drain_handshake_stops_at_once(supervisor):
    sup = supervisor(raw("good", stop_timeout='"20s"'))
    sup.wait_state("w:0", "running")
    wait_until(lambda: sup.status()["w:0"]["heartbeat_age"] is not None)
    began = time.monotonic()
    assert sup.cli("stop", "w").returncode == 0
    assert time.monotonic() - began < 5.0  # not the 20 s stop_timeout
    last = sup.status()["w:0"]["last_exit"]
    assert last == {"reason": "stopped", "code": 0, "signal": None}
    assert "draining" in (sup.dir / ".supervise/logs/w.0.log").read_text()


def test_drained_worker_that_does_not_exit_is_killed_soon(supervisor):
    # SIGTERM does not end it: only the drain handshake can shorten this stop.
    sup = supervisor(raw("drained-stuck", stop_timeout='"20s"'))
    sup.wait_state("w:0", "running")
    wait_until(lambda: sup.status()["w:0"]["heartbeat_age"] is not None)
    began = time.monotonic()
    assert sup.cli("stop", "w").returncode == 0
    assert time.monotonic() - began < 5.0
    assert sup.status()["w:0"]["last_exit"] == {"reason": "stopped", "code": None, "signal": signal.SIGKILL}
