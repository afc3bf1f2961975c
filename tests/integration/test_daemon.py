"""The real daemon with real workers, driven through the real CLI."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import psutil
import pytest
from helpers import file_text, marked_processes, wait_until, zombie_children

SLEEPER = """
[apps.sleep]
command = ["{python}", "{workers}/sleeper.py"]
instances = 2
stop_timeout = "5s"
"""


def pid_alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def test_sigkill_of_a_worker_is_replaced_at_once(supervisor):
    sup = supervisor(SLEEPER)
    first = sup.wait_state("sleep:0", "running")
    os.kill(first["pid"], signal.SIGKILL)
    replaced = wait_until(lambda: (i := sup.status()["sleep:0"])["state"] == "running"
                          and i["pid"] != first["pid"] and i, timeout=5, message="a replacement")
    assert replaced["restarts"] == 1
    assert replaced["last_exit"] == {"reason": "crashed", "code": None, "signal": signal.SIGKILL}
    assert sup.status()["sleep:1"]["pid"] not in (None, first["pid"])


def test_env_templates_cwd_and_process_group(supervisor, tmp_path):
    (tmp_path / "work").mkdir()
    sup = supervisor("""
    [apps.dump]
    command = ["{python}", "{workers}/env_dump.py", "{app}", "{instance}", "{port}"]
    instances = 2
    port = 9100
    cwd = "work"
    env = { MODE = "prod" }
    """)
    for index in (0, 1):
        sup.wait_state(f"dump:{index}", "running")
        line = file_text(sup.dir / ".supervise" / "logs" / f"dump.{index}.log")
        info = json.loads(line.splitlines()[0])
        assert info["argv"] == ["dump", str(index), str(9100 + index)]
        assert info["cwd"] == str(tmp_path / "work")
        assert info["pgid"] == info["pid"]  # its own process group
        env = info["env"]
        assert env["MODE"] == "prod"
        assert env["SUPERVISE_APP"] == "dump" and env["SUPERVISE_INSTANCE"] == str(index)
        assert env["SUPERVISE_NAME"] == f"dump:{index}"
        assert env["SUPERVISE_HEARTBEAT"].startswith("ipc://")
        assert len(env["SUPERVISE_TOKEN"]) >= 16 and float(env["SUPERVISE_HEARTBEAT_INTERVAL"]) > 0


def test_worker_output_goes_to_files_and_logs_verb_shows_it(supervisor):
    sup = supervisor(SLEEPER)
    sup.wait_state("sleep:1", "running")
    out = wait_until(lambda: (r := sup.cli("logs", "sleep:1", "-n", "5")).stdout.strip() and r)
    assert out.returncode == 0 and "up sleep:1" in out.stdout
    both = sup.cli("logs", "sleep")
    assert "sleep:0 | up sleep:0" in both.stdout and "sleep:1 | up sleep:1" in both.stdout
    assert sup.cli("logs", "nope").returncode == 2


def test_backoff_schedule_and_crash_loop_failed(supervisor):
    sup = supervisor("""
    [apps.crash]
    command = ["{python}", "{workers}/crasher.py"]
    backoff = { initial = "200ms", max = "1s", multiplier = 2.0, jitter = 0.0 }
    crash_loop = { max_restarts = 4, window = "60s", cooldown = "1h" }
    """)
    inst = sup.wait_state("crash:0", "failed", timeout=20)
    assert inst["last_exit"] == {"reason": "crashed", "code": 3, "signal": None}
    assert inst["restarts"] == 4
    # The schedule, from the event history: immediate, then 200ms, 400ms, 800ms.
    events = [json.loads(line) for line in sup.cli("events", "--no-follow").stdout.splitlines()]
    starts = [e["time"] for e in events if e.get("name") == "crash:0" and e.get("to") == "starting"]
    exits = [e["time"] for e in events if e.get("name") == "crash:0" and "exit" in e]
    assert len(starts) == 5 and len(exits) == 5
    gaps = [start - ended for ended, start in zip(exits[:-1], starts[1:], strict=True)]
    for gap, expected in zip(gaps, [0.0, 0.2, 0.4, 0.8], strict=True):
        assert expected <= gap < expected + 0.15, gaps
    # `start` closes the breaker at once: a fresh run of immediate + 3 backed-off restarts
    # (the start itself is the operator's, counted apart).
    assert sup.cli("start", "crash", "--timeout", "10").returncode == 0
    again = sup.wait_state("crash:0", "failed", timeout=20, restarts=8, operator_restarts=1)
    assert again["last_exit"]["code"] == 3


def test_worker_ignoring_sigterm_is_killed_after_stop_timeout(supervisor):
    sup = supervisor("""
    [apps.stubborn]
    command = ["{python}", "{workers}/ignore_term.py"]
    stop_timeout = "1s"
    """)
    inst = sup.wait_state("stubborn:0", "running")
    wait_until(lambda: "ignoring" in (sup.dir / ".supervise/logs/stubborn.0.log").read_text())
    began = time.monotonic()
    result = sup.cli("stop", "stubborn")
    took = time.monotonic() - began
    assert result.returncode == 0, result.stderr
    assert 1.0 <= took < 5.0
    stopped = sup.status()["stubborn:0"]
    assert stopped["state"] == "stopped"
    assert stopped["last_exit"] == {"reason": "stopped", "code": None, "signal": signal.SIGKILL}
    assert not pid_alive(inst["pid"])


@pytest.mark.parametrize("how", ["stop", "shutdown"])
def test_double_forked_grandchild_is_not_left_behind(supervisor, tmp_path, how):
    pidfile = tmp_path / "grandchild.pid"
    sup = supervisor(f"""
    [apps.forker]
    command = ["{{python}}", "{{workers}}/double_fork.py", "{pidfile}"]
    stop_timeout = "2s"
    """)
    sup.wait_state("forker:0", "running")
    grandchild = int(file_text(pidfile))
    assert pid_alive(grandchild)
    if how == "stop":
        assert sup.cli("stop", "forker").returncode == 0
    else:
        assert sup.cli("shutdown").returncode == 0
        assert sup.proc.wait(10) == 0
    wait_until(lambda: not pid_alive(grandchild), timeout=5, message="the grandchild to be killed")
    if how == "shutdown":  # the daemon too is gone: nothing of this test may be left
        wait_until(lambda: not marked_processes(sup.marker), timeout=5)


def test_scale_up_and_down_drains_highest_indexes(supervisor):
    sup = supervisor(SLEEPER)
    sup.wait_state("sleep:1", "running")
    result = sup.cli("scale", "sleep", "4")
    assert result.returncode == 0, result.stderr
    status = sup.status()
    assert sorted(status) == ["sleep:0", "sleep:1", "sleep:2", "sleep:3"]
    assert all(i["state"] == "running" for i in status.values())
    keep = status["sleep:0"]["pid"]
    gone = [status["sleep:2"]["pid"], status["sleep:3"]["pid"]]
    assert sup.cli("scale", "sleep", "1").returncode == 0
    status = sup.status()
    assert list(status) == ["sleep:0"] and status["sleep:0"]["pid"] == keep
    wait_until(lambda: not any(pid_alive(p) for p in gone))
    assert sup.cli("scale", "sleep", "-1").returncode == 2
    assert sup.cli("scale", "nope", "1").returncode == 2


def test_sigterm_drains_and_daemon_exits_zero(supervisor):
    sup = supervisor(SLEEPER.replace("instances = 2", "instances = 3"))
    pids = [sup.wait_state(f"sleep:{i}", "running")["pid"] for i in range(3)]
    sup.proc.send_signal(signal.SIGTERM)
    assert sup.proc.wait(10) == 0
    assert not any(pid_alive(p) for p in pids)
    assert not marked_processes(sup.marker)
    assert "daemon stopped" in sup.log.read_text()


def test_sigint_drains_too(supervisor):
    sup = supervisor(SLEEPER)
    pid = sup.wait_state("sleep:0", "running")["pid"]
    sup.proc.send_signal(signal.SIGINT)
    assert sup.proc.wait(10) == 0
    assert not pid_alive(pid)


def test_no_zombies_while_running(supervisor):
    sup = supervisor("""
    [apps.crash]
    command = ["{python}", "{workers}/crasher.py"]
    instances = 3
    backoff = { initial = "10ms", max = "20ms" }
    crash_loop = { max_restarts = 20, window = "60s", cooldown = "1h" }
    """)
    wait_until(lambda: all(i["state"] == "failed" for i in sup.status().values()), timeout=30)
    assert not zombie_children(psutil.Process(sup.proc.pid))


def test_control_socket_is_owner_only(supervisor):
    sup = supervisor(SLEEPER)
    sock = sup.dir / ".supervise" / "control.sock"
    assert (sock.stat().st_mode & 0o777) == 0o600
    assert (sup.dir / ".supervise").stat().st_mode & 0o077 == 0


def test_second_daemon_on_same_state_dir_refuses(supervisor):
    sup = supervisor(SLEEPER)
    second = subprocess.run([sys.executable, "-m", "supervise", "run", "-c", str(sup.config)],
                            capture_output=True, text=True, env=sup.env, timeout=20)
    assert second.returncode == 1
    assert "another supervise daemon" in second.stderr and str(sup.proc.pid) in second.stderr


def test_log_files_are_rotated_keeping_backups(supervisor):
    sup = supervisor("""
    [apps.chatty]
    command = ["{python}", "{workers}/chatty.py", "2000"]
    log_max_size = "20K"
    log_backups = 2
    """)
    logs = sup.dir / ".supervise" / "logs"
    wait_until(lambda: (logs / "chatty.0.log.2").exists(), timeout=20, message="two rotations")
    assert not (logs / "chatty.0.log.3").exists()
    backup = wait_until(lambda: (logs / "chatty.0.log.1").exists() and (logs / "chatty.0.log.1").read_bytes(),
                        timeout=5, message="the newest backup")  # absent only between two renames
    assert len(backup) >= 20 * 1024
    # Lines in a backup are whole and in order: copy-truncate keeps the file intact.
    lines = backup.decode().splitlines()
    numbers = [int(line.split()[1]) for line in lines if line.startswith("line ")]
    assert numbers == sorted(numbers) and len(numbers) > 100


def test_json_log_format(supervisor):
    sup = supervisor('[supervise]\nlog_format = "json"\n' + SLEEPER)
    sup.wait_state("sleep:0", "running")
    assert sup.cli("shutdown").returncode == 0
    sup.proc.wait(10)
    records = [json.loads(line) for line in sup.log.read_text().splitlines() if line.strip()]
    assert any(r["event"] == "daemon started" and r["level"] == "info" for r in records)
    assert any(r.get("event", "").startswith("sleep:0 starting -> running") for r in records)


def test_depends_on_orders_start_and_shutdown(supervisor):
    sup = supervisor("""
    [apps.web]
    command = ["{python}", "{workers}/raw_beat.py", "good"]
    readiness = "heartbeat"
    depends_on = ["db"]

    [apps.db]
    command = ["{python}", "{workers}/raw_beat.py", "good"]
    readiness = "heartbeat"
    instances = 2
    """)
    sup.wait_state("web:0", "running", timeout=15)
    assert sup.cli("shutdown").returncode == 0
    assert sup.proc.wait(10) == 0
    lines = sup.log.read_text().splitlines()
    at = {key: next(i for i, line in enumerate(lines) if key in line)
          for key in ("db:0 starting -> running", "db:1 starting -> running", "web:0 stopped -> starting",
                      "web:0 running -> stopping", "web:0 stopping -> stopped", "db:0 running -> stopping")}
    assert max(at["db:0 starting -> running"], at["db:1 starting -> running"]) < at["web:0 stopped -> starting"]
    assert at["web:0 running -> stopping"] < at["web:0 stopping -> stopped"] < at["db:0 running -> stopping"]
