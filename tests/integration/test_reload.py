"""Zero-downtime reloads of the example web app behind `listen`, under a steady HTTP load.

Every test runs a load generator against the app while it changes and
asserts that not one request failed, then that the change really happened.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
from pathlib import Path

from helpers import Supervisor, free_port, wait_until
from loadgen import LoadGenerator

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
WARMUP = 100  # requests served before the change, so the load is really flowing
AFTER = 100  # requests served after it, by the new state



def web_config(port: int, instances: int = 4, extra: str = "") -> str:
    return f"""
    [apps.web]
    command = ["{{python}}", "web.py"]
    instances = {instances}
    readiness = "heartbeat"
    listen = ["127.0.0.1:{port}"]
    start_timeout = "20s"
    stop_timeout = "20s"
    {extra}
    """


def start_web(supervisor, tmp_path: Path, instances: int = 4, extra: str = "", command_file: str = "web.py"):
    shutil.copy(EXAMPLES / "web.py", tmp_path / command_file)
    port = free_port()
    sup = supervisor(web_config(port, instances, extra))
    pids = running_pids(sup, instances)
    return sup, port, pids


def running_pids(sup: Supervisor, instances: int) -> dict[str, int]:
    """Pids by name, once `instances` web instances are all running."""
    return {name: i["pid"] for name, i in sup.wait_all_running(instances, "web").items()}


def rollout_of(sup) -> dict | None:
    result = sup.cli("status", "--json", "web")
    return json.loads(result.stdout)["apps"][0].get("rollout")


def test_reload_of_four_instances_under_load_drops_nothing(supervisor, tmp_path):
    sup, port, old = start_web(supervisor, tmp_path)
    with LoadGenerator(port, clients=8) as load:
        load.wait_for(WARMUP)
        reload = sup.cli("reload", "web")
        assert reload.returncode == 0, reload.stderr
        assert "web: rolled 4/4 instances to generation 2" in reload.stdout
        load.wait_for(AFTER)
    result = load.result
    assert result.failed == 0, result.summary()
    new = sup.status("web")
    assert not set(old.values()) & {i["pid"] for i in new.values()}, "every instance was replaced"
    assert all(i["generation"] == 2 and i["last_exit"]["reason"] == "reload" for i in new.values())
    assert set(result.by_pid) & {i["pid"] for i in new.values()}, "the new generation served requests"
    assert rollout_of(sup)["state"] == "done"


def test_saving_a_watched_file_rolls_the_app_and_drops_nothing(supervisor, tmp_path):
    sup, port, old = start_web(supervisor, tmp_path, extra='watch = ["*.py"]\nwatch_ignore = ["scratch_*"]')
    code = (tmp_path / "web.py").read_text()
    (tmp_path / "__pycache__").mkdir()
    wait_until(lambda: "watching for changes" in sup.log.read_text(), timeout=30, message="the watcher armed")
    with LoadGenerator(port, clients=8) as load:
        load.wait_for(WARMUP)
        (tmp_path / "scratch_notes.py").write_text("ignored\n")  # watch_ignore
        (tmp_path / "__pycache__" / "web.cpython.pyc").write_bytes(b"ignored")  # default ignore
        (tmp_path / "web.py.tmp").write_text(code + "\n# edited\n")  # an editor's atomic save
        os.replace(tmp_path / "web.py.tmp", tmp_path / "web.py")
        wait_until(lambda: rollout_of(sup) and rollout_of(sup)["state"] == "done", timeout=60, interval=0.05,
                   message="the rollout the save started")
        load.wait_for(AFTER)
    assert load.result.failed == 0, load.result.summary()
    rollout = rollout_of(sup)
    assert rollout["cause"] == "watch" and rollout["generation"] == 2, rollout  # one save, one rollout
    assert not set(running_pids(sup, 4).values()) & set(old.values())


def test_reload_to_code_that_crashes_keeps_the_old_generation_serving(supervisor, tmp_path):
    sup, port, old = start_web(supervisor, tmp_path)
    (tmp_path / "web.py").write_text("import sys\nprint('broken release', flush=True)\nsys.exit(3)\n")
    with LoadGenerator(port, clients=8) as load:
        load.wait_for(WARMUP)
        reload = sup.cli("reload", "web")
        load.wait_for(AFTER)
    assert reload.returncode == 1, reload.stdout + reload.stderr
    assert "rollout to generation 2 failed" in reload.stderr and "exit code 3" in reload.stderr
    assert load.result.failed == 0, load.result.summary()
    assert running_pids(sup, 4) == old, "the old generation keeps every slot"
    rollout = rollout_of(sup)
    assert rollout["state"] == "failed" and rollout["replaced"] == 0 and "web:0" in rollout["error"]
    events = [json.loads(line) for line in sup.cli("events", "--no-follow").stdout.splitlines()]
    failed = [e for e in events if e["type"] == "rollout" and e["event"] == "failed"]
    assert failed and "did not become ready" in failed[0]["error"]


def test_memory_restart_starts_the_replacement_first_and_drops_nothing(supervisor, tmp_path):
    # One instance (whichever wins the mkdir) holds 200 MiB in a child process;
    # its replacement, and every other instance, stays small.
    (tmp_path / "leaky.sh").write_text(
        'if mkdir "$LEAK_MARK" 2>/dev/null; then\n'
        "  python3 -c 'import time; hog = b\"x\" * (200 << 20); time.sleep(3600)' 3<&- &\n"
        "fi\n"
        'exec "$SUPERVISE_PYTHON" web.py\n')
    extra = f'max_memory = "150M"\nenv = {{ LEAK_MARK = "{tmp_path / "leaked"}", SUPERVISE_PYTHON = "{{python}}" }}'
    shutil.copy(EXAMPLES / "web.py", tmp_path / "web.py")
    port = free_port()
    config = web_config(port, 4, extra).replace('["{python}", "web.py"]', '["bash", "leaky.sh"]')
    sup = supervisor(config)
    with LoadGenerator(port, clients=8) as load:
        load.wait_for(WARMUP)
        restarted = wait_until(
            lambda: [n for n, i in sup.status("web").items()
                     if i["last_exit"] and i["last_exit"]["reason"] == "memory" and i["state"] == "running"],
            timeout=30, interval=0.05, message="a memory restart")
        load.wait_for(AFTER)
    assert load.result.failed == 0, load.result.summary()
    assert len(restarted) == 1
    running_pids(sup, 4)


def test_sighup_with_more_instances_scales_without_touching_the_others(supervisor, tmp_path):
    sup, port, old = start_web(supervisor, tmp_path, instances=2)
    sup.config.write_text(sup.config.read_text().replace("instances = 2", "instances = 4"))
    with LoadGenerator(port, clients=8) as load:
        load.wait_for(WARMUP)
        sup.proc.send_signal(signal.SIGHUP)
        now = running_pids(sup, 4)
        load.wait_for(AFTER)
    assert load.result.failed == 0, load.result.summary()
    assert {k: now[k] for k in old} == old, "a change of instances alone restarts nothing"


def test_sighup_with_a_broken_config_changes_nothing_and_says_where(supervisor, tmp_path):
    sup, port, old = start_web(supervisor, tmp_path, instances=2)
    text = sup.config.read_text()
    sup.config.write_text(text.replace("instances = 2", "instances = 3\nmax_memory = \"lots\""))
    sup.proc.send_signal(signal.SIGHUP)
    line = next(n for n, t in enumerate(sup.config.read_text().splitlines(), 1) if "lots" in t)
    wait_until(lambda: f"supervise.toml:{line}" in sup.log.read_text(), timeout=10,
               message="the rejected reload in the daemon's log")
    assert "apps.web.max_memory" in sup.log.read_text()
    assert running_pids(sup, 2) == old
    reload = sup.cli("reload")
    assert reload.returncode == 2 and f"supervise.toml:{line}" in reload.stderr


def test_config_reload_rolls_a_changed_app_and_dry_run_shows_the_plan(supervisor, tmp_path):
    sup, port, old = start_web(supervisor, tmp_path, instances=2)
    text = sup.config.read_text()
    sup.config.write_text(text.replace('readiness = "heartbeat"', 'readiness = "heartbeat"\nenv = { MODE = "b" }')
                          + '\n[apps.extra]\ncommand = ["sleep", "600"]\n')
    plan = sup.cli("reload", "--dry-run")
    assert plan.returncode == 0, plan.stderr
    assert "web: would roll every instance onto the new config (changed: env)" in plan.stdout
    assert "extra: would start 1 instances" in plan.stdout
    check = sup.cli("check")
    assert check.returncode == 0 and "the running daemon would, on `supervise reload`:" in check.stdout
    assert "  extra: would start 1 instances" in check.stdout
    assert running_pids(sup, 2) == old  # a dry run changes nothing
    with LoadGenerator(port, clients=4) as load:
        load.wait_for(WARMUP // 2)
        reload = sup.cli("reload")
        assert reload.returncode == 0, reload.stderr
        load.wait_for(AFTER // 2)
    assert load.result.failed == 0, load.result.summary()
    assert not set(running_pids(sup, 2).values()) & set(old.values())
    assert sup.wait_state("extra:0", "running")
    env = (Path(f"/proc/{sup.status()['web:0']['pid']}/environ").read_bytes().split(b"\0"))
    assert b"MODE=b" in env


def test_reload_with_no_daemon_and_bad_targets(supervisor, tmp_path):
    sup, port, old = start_web(supervisor, tmp_path, instances=1)
    missing = sup.cli("reload", "nope")
    assert missing.returncode == 2 and "no app named 'nope'" in missing.stderr
    assert sup.cli("shutdown").returncode == 0
    sup.proc.wait(20)
    gone = sup.cli("reload", "web")
    assert gone.returncode == 3, gone.stderr
