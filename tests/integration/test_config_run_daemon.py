"""Settings operators reach for, through the real daemon and CLI: env_file, include,
instances = "max", shell = true, `check`'s warnings, and ready_after gating `start` and `reload`.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from helpers import Supervisor, marked_processes, wait_until


def log_lines(sup: Supervisor, app: str, index: int = 0) -> list[str]:
    path = sup.dir / ".supervise" / "logs" / f"{app}.{index}.log"
    try:
        return path.read_text().splitlines()
    except FileNotFoundError:
        return []


def printed_json(sup: Supervisor, app: str, containing: str = "") -> dict:
    """The last JSON line the instance printed (that contains `containing`), once there is one."""
    def last() -> dict | None:
        lines = [line for line in log_lines(sup, app) if line.startswith("{") and containing in line]
        return json.loads(lines[-1]) if lines else None
    return wait_until(last, timeout=20, message=f"{app}:0 to print its JSON line")


def workers_of(sup: Supervisor) -> list[int]:
    """Live processes of this test other than the daemon (zombies excluded)."""
    return [p.pid for p in marked_processes(sup.marker) if p.pid != sup.proc.pid]


def test_env_file_reaches_the_worker_env_wins_and_reload_reads_it_again(supervisor, tmp_path):
    (tmp_path / ".env").write_text(
        "# the app's secrets\n"
        "export FROM_FILE=file value  # trailing comment\n"
        "BOTH=from the file\n"
        'QUOTED="a\\tb"\n'
        "LITERAL='$HOME stays'\n")
    sup = supervisor("""
    [apps.env]
    command = ["{python}", "{workers}/env_values.py", "FROM_FILE", "BOTH", "QUOTED", "LITERAL"]
    env = { BOTH = "from env" }
    env_file = ".env"
    ready_after = "200ms"
    """)
    first = sup.wait_all_running(1, timeout=20)["env:0"]
    seen = printed_json(sup, "env")
    assert seen == {"FROM_FILE": "file value", "BOTH": "from env", "QUOTED": "a\tb", "LITERAL": "$HOME stays"}

    (tmp_path / ".env").write_text("FROM_FILE=changed\nBOTH=from the file\n")
    reload = sup.cli("reload")
    assert reload.returncode == 0, reload.stderr
    assert "env" in reload.stdout
    after = wait_until(lambda: (i := sup.status()["env:0"])["pid"] != first["pid"] and i["state"] == "running"
                       and i, timeout=20, message="env:0 to be rolled onto the new env_file")
    assert after["last_exit"]["reason"] == "reload"
    seen = printed_json(sup, "env", containing="changed")
    assert seen == {"FROM_FILE": "changed", "BOTH": "from env", "QUOTED": None, "LITERAL": None}

    (tmp_path / ".env").write_text("FROM_FILE=ok\nnot a pair\n")
    for verb in ("check", "reload"):
        result = sup.cli(verb)
        assert result.returncode == 2, (verb, result.stdout, result.stderr)
        assert f"{tmp_path / '.env'}:2: apps.env.env_file" in result.stderr, result.stderr
    assert sup.status()["env:0"]["pid"] == after["pid"], "a bad env_file changes nothing"


def test_include_adds_apps_and_a_broken_included_file_is_named_by_check(supervisor, tmp_path):
    conf = tmp_path / "conf.d"
    conf.mkdir()
    (conf / "10-worker.toml").write_text(
        '[apps.worker]\ncommand = ["sleep", "3600"]\ninstances = 2\nready_after = "200ms"\n')
    (conf / "20-other.toml").write_text('[apps.other]\ncommand = ["sleep", "3600"]\nready_after = "200ms"\n')
    sup = supervisor("""
    [supervise]
    include = ["conf.d/*.toml"]

    [apps.main]
    command = ["sleep", "3600"]
    ready_after = "200ms"
    """)
    status = sup.wait_all_running(4, timeout=20)
    assert sorted(status) == ["main:0", "other:0", "worker:0", "worker:1"]

    (conf / "25-late.toml").write_text('[apps.late]\ncommand = ["sleep", "3600"]\nready_after = "200ms"\n')
    reload = sup.cli("reload")
    assert reload.returncode == 0, reload.stderr
    status = sup.wait_all_running(5, timeout=20)
    assert "late:0" in status, "a reload reads the include globs again"

    (conf / "30-broken.toml").write_text('[apps.broken]\ncommand = ["sleep", "3600"]\ninstances = "four"\n')
    check = sup.cli("check")
    assert check.returncode == 2, (check.stdout, check.stderr)
    assert "conf.d/30-broken.toml:3:" in check.stderr and "apps.broken.instances" in check.stderr, check.stderr
    reload = sup.cli("reload")
    assert reload.returncode == 2 and "conf.d/30-broken.toml:3:" in reload.stderr, reload.stderr
    assert sup.status().keys() == status.keys(), "a rejected config changes nothing"


def test_instances_max_runs_one_per_usable_cpu(supervisor):
    cpus = len(os.sched_getaffinity(0))  # the daemon inherits this process's affinity
    sup = supervisor("""
    [apps.all]
    command = ["sleep", "3600"]
    instances = "max"
    ready_after = "200ms"

    [apps.fewer]
    command = ["sleep", "3600"]
    instances = "max-1"
    ready_after = "200ms"
    """)
    status = sup.wait_all_running(cpus + max(cpus - 1, 1), timeout=30)
    assert sum(name.startswith("all:") for name in status) == cpus
    assert sum(name.startswith("fewer:") for name in status) == max(cpus - 1, 1)


def test_shell_true_runs_a_pipeline_with_variables_and_stop_leaves_nothing_behind(supervisor, tmp_path):
    out = tmp_path / "out"
    sup = supervisor(f"""
    [apps.pipe]
    command = "echo \\"$GREETING from $SUPERVISE_NAME\\" | tr a-z A-Z > {out}-{{instance}}; sleep 3600 | cat"
    shell = true
    env = {{ GREETING = "hello" }}
    ready_after = "200ms"
    """)
    sup.wait_all_running(1, timeout=20)
    said = wait_until(lambda: (out.parent / "out-0").exists() and (out.parent / "out-0").read_text().strip(),
                      timeout=20, message="the pipeline's output")
    assert said == "HELLO FROM PIPE:0"
    names = wait_until(lambda: {p.name() for p in marked_processes(sup.marker)} >= {"sleep", "cat"} and
                       {p.name() for p in marked_processes(sup.marker)}, timeout=20, message="the pipeline running")
    assert "sleep" in names and "cat" in names
    stop = sup.cli("stop", "pipe")
    assert stop.returncode == 0, stop.stderr
    assert sup.status()["pipe:0"]["state"] == "stopped"
    wait_until(lambda: not workers_of(sup), timeout=10, message="every process of the pipeline gone")


def test_check_warns_about_shell_syntax_without_shell_and_exits_0(tmp_path):
    sup = Supervisor(tmp_path, """
    [apps.x]
    command = "echo $HOME | cat"

    [apps.y]
    command = "echo $HOME | cat"
    shell = true
    """)
    check = sup.cli("check")
    assert check.returncode == 0, check.stderr
    warnings = [line for line in check.stderr.splitlines() if line.startswith("warning:")]
    assert len(warnings) >= 1, check.stderr
    assert all("apps.x.command" in line for line in warnings), warnings
    assert any("supervise.toml:3:" in line for line in warnings), warnings
    assert "ok" in check.stdout


def _dies_when(flag: Path) -> str:
    """A shell command that runs for ever, or dies 0.5 s after start once `flag` exists."""
    return f'["sh", "-c", "if test -e {flag}; then sleep 0.5; exit 1; fi; exec sleep 3600"]'


def test_start_waits_for_ready_after_and_fails_for_an_app_that_dies_before_it(supervisor, tmp_path):
    flag = tmp_path / "die"
    sup = supervisor(f"""
    [apps.app]
    command = {_dies_when(flag)}
    ready_after = "2s"
    """)
    sup.wait_all_running(1, timeout=20)
    assert sup.cli("stop", "app").returncode == 0
    start = sup.cli("start", "app")
    assert start.returncode == 0, start.stderr
    inst = sup.status()["app:0"]
    assert inst["state"] == "running" and inst["uptime"] >= 2 - 0.01, f"start returned before ready_after: {inst}"

    assert sup.cli("stop", "app").returncode == 0
    flag.touch()
    start = sup.cli("start", "app")
    assert start.returncode == 1, (start.returncode, start.stdout, start.stderr)
    assert "app:0" in start.stderr, start.stderr


def test_reload_to_a_generation_that_dies_before_ready_after_exits_1_and_the_old_ones_run_on(supervisor, tmp_path):
    flag = tmp_path / "die"
    sup = supervisor(f"""
    [apps.app]
    command = {_dies_when(flag)}
    instances = 2
    ready_after = "2s"
    env = {{ GENERATION = "1" }}
    """)
    old = {name: i["pid"] for name, i in sup.wait_all_running(2, timeout=20).items()}
    flag.touch()  # the new generation dies 0.5 s into its 2 s of ready_after
    sup.config.write_text(sup.config.read_text().replace('GENERATION = "1"', 'GENERATION = "2"'))
    reload = sup.cli("reload")
    assert reload.returncode == 1, (reload.returncode, reload.stdout, reload.stderr)
    assert "of generation 2 did not become ready: crashed" in reload.stderr, reload.stderr
    after = sup.wait_all_running(2, timeout=20)
    assert {name: i["pid"] for name, i in after.items()} == old, "the old instances keep running"
    assert all(i["generation"] == 1 for i in after.values())
