"""The daemon survives its own death: a new daemon adopts the workers the old one left.

Every test kills or stops a real daemon and starts another on the same state
dir, then checks the workers by pid: not one restarted, none duplicated, and
a pid that is not (or no longer) ours is never touched.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
from helpers import free_port, gone, marked_processes, wait_until
from loadgen import LoadGenerator

from supervise.runtime import checkpoint as state


def config(instances: int = 6, extra: str = "") -> str:
    return f"""
    [apps.beat]
    command = ["{{python}}", "{{workers}}/beater.py"]
    instances = {instances}
    readiness = "heartbeat"
    heartbeat_timeout = "5s"
    stop_timeout = "5s"

    [apps.plain]
    command = ["{{python}}", "{{workers}}/sleeper.py"]
    instances = {instances}
    stop_timeout = "5s"
    {extra}
    """


def checkpointed(sup, count: int) -> dict:
    """The checkpoint, once it names `count` live instances."""
    path = sup.dir / ".supervise" / "checkpoint.json"

    def check():
        try:
            cp = state.read(path)
        except state.CheckpointError:
            return None
        return cp if cp and sum(1 for r in cp.instances if r.pid) == count else None
    return wait_until(check, 10, interval=0.02, message="the checkpoint")


def kill_daemon(sup) -> None:
    sup.proc.send_signal(signal.SIGKILL)
    sup.proc.wait(10)


def daemon_status(sup) -> dict:
    return json.loads(sup.cli("status", "--json").stdout)["daemon"]


def test_a_killed_daemon_is_replaced_and_adopts_every_worker(supervisor):
    sup = supervisor(config(instances=25))  # 50 instances
    before = sup.wait_all_running(50)
    checkpointed(sup, 50)
    kill_daemon(sup)
    sup.start()
    after = sup.wait_all_running(50)
    assert {n: i["pid"] for n, i in after.items()} == {n: i["pid"] for n, i in before.items()}, "same processes"
    assert all(i["restarts"] == 0 for i in after.values())
    assert min(i["uptime"] for i in after.values()) >= min(i["uptime"] for i in before.values())
    assert len(marked_processes(sup.marker)) == 50 + 1, "no duplicate (50 workers and the daemon)"
    # Heartbeats resume on their own: the workers' sockets reconnect to the new daemon.
    wait_until(lambda: all(i["heartbeat_age"] is not None and i["heartbeat_age"] < 2.0
                           for n, i in sup.status().items() if n.startswith("beat:")),
               timeout=15, message="heartbeats from every adopted worker")
    assert daemon_status(sup)["heartbeats"]["accepted"] >= 25
    # Their exits are still seen at once: pidfds work for processes that are not our children.
    victim = after["beat:3"]["pid"]
    os.kill(victim, signal.SIGKILL)
    new = sup.wait_state("beat:3", "running", timeout=15, restarts=1)
    assert new["pid"] != victim and new["last_exit"]["reason"] == "lost"


def test_a_worker_that_died_while_no_daemon_ran_is_restarted_as_lost(supervisor):
    sup = supervisor(config(instances=2))
    before = sup.wait_all_running(4)
    checkpointed(sup, 4)
    kill_daemon(sup)
    victim = before["plain:1"]["pid"]
    os.kill(victim, signal.SIGKILL)
    wait_until(lambda: gone(victim), timeout=10)
    sup.start()
    after = sup.wait_all_running(4)
    assert after["plain:1"]["pid"] != victim
    assert after["plain:1"]["last_exit"]["reason"] == "lost" and after["plain:1"]["restarts"] == 1
    assert all(after[n]["pid"] == before[n]["pid"] for n in ("beat:0", "beat:1", "plain:0"))


def test_shutdown_keep_workers_then_a_new_config_is_applied_after_adoption(supervisor):
    sup = supervisor(config(instances=2))
    before = sup.wait_all_running(4)
    result = sup.cli("shutdown", "--keep-workers")
    assert result.returncode == 0 and "left 4 workers running" in result.stdout, result.stdout + result.stderr
    sup.proc.wait(10)
    assert all(psutil.pid_exists(i["pid"]) for i in before.values()), "the workers outlive the daemon"
    sup.config.write_text(sup.config.read_text().replace("instances = 2", "instances = 3", 1))  # beat
    sup.start()
    after = sup.wait_all_running(5)  # beat grew to 3; nothing else moved
    assert {n: after[n]["pid"] for n in before} == {n: i["pid"] for n, i in before.items()}
    assert sup.cli("shutdown").returncode == 0
    sup.proc.wait(20)
    assert not marked_processes(sup.marker)
    assert not (sup.dir / ".supervise" / "checkpoint.json").exists(), "nothing is left to adopt"


def test_a_recorded_pid_that_is_now_another_process_is_never_touched(supervisor, tmp_path):
    stranger = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    impostor = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"],
                                env=dict(os.environ, SUPERVISE_TOKEN="not-the-recorded-one"))
    try:
        sup = supervisor(config(instances=1), start=False)
        text = sup.config.read_text()
        born = psutil.Process(impostor.pid).create_time()
        records = (
            # A pid reused by an unrelated process: its start time differs.
            state.InstanceRecord("plain", 0, 1, "slot", "running", 0, pid=stranger.pid, create_time=born - 100,
                                 token="t0", spawned_at=time.time() - 100, running_since=time.time() - 100),
            # The right start time, but not the token we gave our worker.
            state.InstanceRecord("beat", 0, 1, "slot", "running", 0, pid=impostor.pid, create_time=born,
                                 token="t1", spawned_at=time.time() - 100, running_since=time.time() - 100),
        )
        (tmp_path / ".supervise").mkdir(mode=0o700)
        state.write(tmp_path / ".supervise" / "checkpoint.json", state.encode(state.Checkpoint(
            999999, time.time(), str(sup.config), text, {"plain": {"target": 1, "generation": 1},
                                                         "beat": {"target": 1, "generation": 1}}, records)))
        sup.start()
        status = sup.wait_all_running(2)
        assert status["plain:0"]["pid"] != stranger.pid and status["beat:0"]["pid"] != impostor.pid
        assert status["plain:0"]["last_exit"]["reason"] == "lost"
        assert sup.cli("shutdown").returncode == 0
        sup.proc.wait(20)
        assert stranger.poll() is None and impostor.poll() is None, "a process that is not ours was signalled"
    finally:
        for proc in (stranger, impostor):
            proc.kill()
            proc.wait()


def test_a_corrupt_or_half_written_checkpoint_gives_a_warning_and_a_safe_start(supervisor, tmp_path):
    stranger = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    try:
        sup = supervisor(config(instances=1))
        before = sup.wait_all_running(2)
        checkpointed(sup, 2)
        kill_daemon(sup)
        path = tmp_path / ".supervise" / "checkpoint.json"
        whole = path.read_bytes().replace(b'"pid":' + str(before["plain:0"]["pid"]).encode(),
                                          b'"pid":' + str(stranger.pid).encode())
        path.write_bytes(whole[: len(whole) // 2])  # cut short, and naming a stranger in what is left
        (path.parent / "checkpoint.json.12345.tmp").write_bytes(whole[:10])  # a write that never finished
        sup.start()
        wait_until(lambda: "the checkpoint is unusable" in sup.log.read_text(), timeout=10)
        after = sup.wait_all_running(2)
        # Our workers are still found, by the endpoint and token in their environment: no duplicates.
        assert {n: i["pid"] for n, i in after.items()} == {n: i["pid"] for n, i in before.items()}
        assert "unrecorded=2" in sup.log.read_text()
        assert len(marked_processes(sup.marker)) == 2 + 1
        assert sup.cli("shutdown").returncode == 0
        sup.proc.wait(20)
        assert stranger.poll() is None, "a process the broken checkpoint named was signalled"
        assert not list(path.parent.glob("*.tmp"))
    finally:
        stranger.kill()
        stranger.wait()


def test_listen_sockets_are_taken_over_and_no_request_fails_across_a_daemon_crash(supervisor, tmp_path):
    port = free_port()
    web = Path(__file__).resolve().parents[2] / "examples" / "web.py"
    sup = supervisor(f"""
    [apps.web]
    command = ["{{python}}", "{web}"]
    instances = 3
    readiness = "heartbeat"
    listen = ["127.0.0.1:{port}"]
    stop_timeout = "10s"
    """)
    before = sup.wait_all_running(3)
    checkpointed(sup, 3)
    with LoadGenerator(port, clients=8) as load:
        load.wait_for(100)
        kill_daemon(sup)
        load.wait_for(100)  # the workers serve on while no daemon runs
        sup.start()
        after = sup.wait_all_running(3)
        load.wait_for(100)
    assert load.result.failed == 0, load.result.summary()
    assert {n: i["pid"] for n, i in after.items()} == {n: i["pid"] for n, i in before.items()}
    # The new daemon holds the very socket the workers accept on (not a second one on the port).
    daemon = psutil.Process(sup.proc.pid)
    listening = [c for c in daemon.net_connections("tcp") if c.status == psutil.CONN_LISTEN]
    assert listening and all(c.laddr.port == port for c in listening)
    assert sup.cli("reload", "web").returncode == 0  # and can hand it to new instances


def test_workers_no_app_claims_any_more_are_stopped_not_orphaned(supervisor):
    sup = supervisor(config(instances=1))
    before = sup.wait_all_running(2)
    assert sup.cli("shutdown", "--keep-workers").returncode == 0
    sup.proc.wait(10)
    # The recorded config no longer loads (say, written by an older supervise), and the
    # current one has dropped the app `plain`: its worker is ours, but nobody wants it.
    path = sup.dir / ".supervise" / "checkpoint.json"
    body = json.loads(path.read_text())
    body["config_text"] = "[apps.old\n"
    path.write_text(json.dumps(body))
    text = sup.config.read_text()
    sup.config.write_text(text[: text.index("[apps.plain]")])
    sup.start()
    after = sup.wait_all_running(1)
    assert after["beat:0"]["pid"] == before["beat:0"]["pid"]
    plain = before["plain:0"]["pid"]
    wait_until(lambda: gone(plain), timeout=15, message="the unclaimed worker stopped")
    assert "no app claims" in sup.log.read_text()
