"""Readiness and liveness probes through the real daemon, the CLI and `status --json`.

The workers are plain servers that know nothing of supervise (workers/probe_server.py):
the test switches what each one's /health answers by writing a file, and the daemon
learns it only by probing. Readiness gates `starting` -> `running` and a reload; a
failing liveness probe restarts one instance as `unhealthy` and leaves the others be.
"""

from __future__ import annotations

import json
import sys
import textwrap
import time
import urllib.error
import urllib.request
from pathlib import Path

import psutil
from helpers import WORKERS, Supervisor, file_text, free_port, marked_processes, wait_until

SERVER = "{workers}/probe_server.py"
FAST_READINESS = 'interval = "200ms", timeout = "1s", failures = 3, successes = 1'


def set_status(path: Path, text: str) -> None:
    """What the server's /health answers from now on, written whole (the server never reads half)."""
    tmp = path.with_suffix(".new")
    tmp.write_text(text)
    tmp.rename(path)


def free_ports(count: int) -> int:
    """A base port with `count` consecutive ports free a moment ago (instances use port + index)."""
    return free_port(count)


def health(port: int) -> tuple[int, str]:
    """(status, body) of GET /health on 127.0.0.1:port; (0, why) when nothing answers."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, ""
    except OSError as exc:
        return 0, str(exc)


def server_app(tmp: Path, port: int, instances: int, *, readiness: str, extra: str = "",
               args: str = "", start_timeout: str = "30s") -> str:
    status = tmp / "status"
    return f"""
    [apps.web]
    command = ["{{python}}", "{SERVER}", "{{port}}", "--status-file", "{status}-{{instance}}"{args}]
    instances = {instances}
    port = {port}
    readiness = {readiness}
    start_timeout = "{start_timeout}"
    stop_timeout = "10s"
    {extra}
    """


def log_of(sup: Supervisor, name: str) -> Path:
    app, index = name.split(":")
    return sup.dir / ".supervise" / "logs" / f"{app}.{index}.log"


def test_http_readiness_keeps_an_instance_starting_until_health_returns_200(supervisor, tmp_path):
    port = free_ports(2)
    for index in range(2):
        set_status(tmp_path / f"status-{index}", "503")
    sup = supervisor(server_app(tmp_path, port, 2, readiness=(
        f'{{ http = "http://127.0.0.1:{{port}}/health", {FAST_READINESS} }}')))
    for name in ("web:0", "web:1"):
        assert file_text(log_of(sup, name), timeout=20).startswith("serving"), "the server is up"
    # Up and answering, but 503: the probe says so, and neither counts as running.
    failing = wait_until(lambda: all("http 503" in (i.get("probe") or "") for i in sup.status().values())
                         and sup.status(), timeout=20, message="both probes to report the 503")
    assert {i["state"] for i in failing.values()} == {"starting"}
    assert f"http://127.0.0.1:{port}/health" in failing["web:0"]["probe"]
    assert f"http://127.0.0.1:{port + 1}/health" in failing["web:1"]["probe"]

    set_status(tmp_path / "status-0", "200")
    sup.wait_state("web:0", "running", timeout=20)
    assert sup.status()["web:1"]["state"] == "starting", "one instance's probe does not make the other ready"
    set_status(tmp_path / "status-1", "200")
    running = sup.wait_all_running(2, timeout=20)
    assert all("probe" not in i for i in running.values()), "no probe failure shown once it passes"
    assert all(i["restarts"] == 0 for i in running.values())


def test_readiness_http_string_form_probes_get_slash_on_the_instances_port(supervisor, tmp_path):
    port = free_ports(1)
    set_status(tmp_path / "status-0", "503")
    sup = supervisor(server_app(tmp_path, port, 1, readiness='"http"'))
    inst = wait_until(lambda: "http 503" in ((i := sup.status()["web:0"]).get("probe") or "") and i,
                      timeout=20, message="the probe to report the 503")
    assert inst["state"] == "starting"
    assert f"http://127.0.0.1:{port}/" in inst["probe"], inst["probe"]
    set_status(tmp_path / "status-0", "200")
    assert sup.wait_state("web:0", "running", timeout=20)["pid"] == inst["pid"]


def _reload_to_a_failing_generation(supervisor, tmp_path: Path, args: str, start_timeout: str = "30s") -> None:
    """Two healthy instances on `port`; a reload onto instances on other ports (so the new ones
    start beside the old ones) that never pass their readiness probe: the reload exits 1 and the
    old processes still run and serve."""
    port = free_ports(2)
    new_port = wait_until(lambda: (p := free_ports(2)) not in range(port - 1, port + 2) and p, timeout=5)
    readiness = f'{{ http = "http://127.0.0.1:{{port}}/health", {FAST_READINESS} }}'
    sup = supervisor(server_app(tmp_path, port, 2, readiness=readiness, extra="reload_surge = 1"))
    old = {name: i["pid"] for name, i in sup.wait_all_running(2, timeout=30).items()}
    new = server_app(tmp_path, new_port, 2, readiness=readiness, args=args, extra="reload_surge = 1",
                     start_timeout=start_timeout)
    sup.config.write_text(_filled(new))
    reload = sup.cli("reload", timeout=90)
    assert reload.returncode == 1, (reload.returncode, reload.stdout, reload.stderr)
    assert "of generation 2 did not become ready" in reload.stderr, reload.stderr
    after = sup.wait_all_running(2, timeout=30)
    assert {name: i["pid"] for name, i in after.items()} == old, "the old instances kept running"
    assert all(i["generation"] == 1 for i in after.values())
    for index, pid in enumerate(old.values()):
        code, body = health(port + index)
        assert code == 200 and body.split()[1] == str(pid), "the old instance still serves"
    rollout = json.loads(sup.cli("status", "--json", "web").stdout)["apps"][0]["rollout"]
    assert rollout["state"] == "failed" and "did not become ready" in rollout["error"], rollout
    new_servers = [p for p in marked_processes(sup.marker) if str(new_port) in " ".join(_cmdline(p))]
    assert not new_servers, f"the failed generation left processes: {new_servers}"


def _filled(config: str) -> str:
    """A config as Supervisor writes it: dedented, {python} and {workers} filled in."""
    return textwrap.dedent(config).replace("{python}", sys.executable).replace("{workers}", str(WORKERS))


def _cmdline(proc: psutil.Process) -> list[str]:
    try:
        return proc.cmdline()
    except psutil.Error:
        return []


def test_reload_to_a_generation_that_dies_2s_into_boot_exits_1_and_the_old_ones_serve(supervisor, tmp_path):
    # The gunicorn: its /health is never up (--listen-when a file that never comes), and
    # 2 s into boot it exits 1. start_timeout is long: the probe and the crash must decide it.
    _reload_to_a_failing_generation(supervisor, tmp_path, f', "--exit-after", "2", "--listen-when", "{tmp_path}/never"')


def test_reload_to_a_generation_whose_health_never_passes_exits_1_and_the_old_ones_serve(supervisor, tmp_path):
    # Up and answering, but 503 for ever: start_timeout ends its trial.
    (tmp_path / "bad").write_text("503")
    _reload_to_a_failing_generation(supervisor, tmp_path, f', "--status-file", "{tmp_path}/bad"',
                                    start_timeout="3s")


def test_tcp_readiness_waits_for_the_port_to_accept(supervisor, tmp_path):
    port = free_ports(1)
    sup = supervisor(server_app(tmp_path, port, 1, args=f', "--listen-when", "{tmp_path}/open-{{instance}}"',
                                readiness=f'{{ tcp = "127.0.0.1:{{port}}", {FAST_READINESS} }}'))
    inst = wait_until(lambda: (i := sup.status()["web:0"]).get("probe") and i, timeout=20,
                      message="the tcp probe to report its first failure")
    assert inst["state"] == "starting"
    assert "refused" in inst["probe"] and f"127.0.0.1:{port}" in inst["probe"], inst["probe"]
    (tmp_path / "open-0").touch()
    running = sup.wait_state("web:0", "running", timeout=20)
    assert running["pid"] == inst["pid"] and running["restarts"] == 0
    assert "probe" not in running


def test_exec_readiness_passes_on_exit_0_and_a_hanging_check_is_timed_out_and_killed(supervisor, tmp_path):
    hang, ready = tmp_path / "hang", tmp_path / "ready"
    hang.touch()
    check = f"test -e {hang} && exec sleep 300; test -e {ready}-{{instance}}"
    sup = supervisor(f"""
    [apps.job]
    command = ["{{python}}", "{{workers}}/sleeper.py"]
    readiness = {{ exec = ["sh", "-c", "{check}"], interval = "200ms", timeout = "500ms" }}
    start_timeout = "60s"
    """)
    inst = wait_until(lambda: "timed out" in ((i := sup.status()["job:0"]).get("probe") or "") and i,
                      timeout=20, message="the hanging exec probe to time out")
    assert inst["state"] == "starting"
    assert inst["probe"] == "timed out after 0.5s running sh", inst["probe"]
    hang.unlink()  # now it answers: exit 1 (no ready file), then 0
    failing = wait_until(lambda: "exit code 1" in ((i := sup.status()["job:0"]).get("probe") or "") and i,
                         timeout=20, message="the exec probe to fail with exit code 1")
    assert failing["state"] == "starting"
    (tmp_path / "ready-0").touch()
    running = sup.wait_state("job:0", "running", timeout=20)
    assert running["pid"] == inst["pid"] and "probe" not in running
    sleeps = [p.pid for p in marked_processes(sup.marker) if _cmdline(p)[:2] == ["sleep", "300"]]
    assert not sleeps, f"timed-out exec probes were left running: {sleeps}"


def _liveness_app(tmp_path: Path, port: int, instances: int, failures: int, args: str = "") -> str:
    return server_app(tmp_path, port, instances, args=args,
                      readiness=f'{{ http = "/health", {FAST_READINESS} }}',
                      extra=f'liveness = {{ http = "/health", interval = "200ms", timeout = "5s", '
                            f'failures = {failures} }}')  # a generous timeout: a slow answer is no failure


def test_failing_liveness_restarts_only_that_instance_as_unhealthy(supervisor, tmp_path):
    port = free_ports(3)
    sup = supervisor(_liveness_app(tmp_path, port, 3, failures=2))
    before = sup.wait_all_running(3, timeout=30)
    set_status(tmp_path / "status-1", "503")
    started = time.monotonic()
    # interval x failures = 0.4 s, a stop that takes no time: 10 s is slack for a loaded machine.
    after = wait_until(lambda: (s := sup.status())["web:1"]["pid"] != before["web:1"]["pid"] and s,
                       timeout=15, interval=0.05, message="web:1 to be restarted")
    took = time.monotonic() - started
    assert took < 0.4 + 10, took
    assert after["web:1"]["last_exit"]["reason"] == "unhealthy", after["web:1"]
    assert after["web:1"]["restarts"] == 1
    set_status(tmp_path / "status-1", "200")  # the replacement is healthy
    now = sup.wait_all_running(3, timeout=30)
    for name in ("web:0", "web:2"):
        assert now[name]["pid"] == before[name]["pid"] and now[name]["restarts"] == 0, now[name]
        assert now[name]["last_exit"] is None


def test_unhealthy_and_probe_fields_show_while_liveness_fails(supervisor, tmp_path):
    # The server keeps answering 503 for 2 s after SIGTERM, so the graceful stop takes that long:
    # long enough to be seen, and its liveness probe goes on failing meanwhile.
    port = free_ports(1)
    sup = supervisor(_liveness_app(tmp_path, port, 1, failures=2, args=', "--term-delay", "2"'))
    before = sup.wait_all_running(1, timeout=30)["web:0"]
    assert "unhealthy" not in before and "probe" not in before
    set_status(tmp_path / "status-0", "503")
    seen = wait_until(lambda: (i := sup.status()["web:0"]).get("unhealthy") and i, timeout=15, interval=0.05,
                      message="web:0 to show unhealthy")
    assert seen["pid"] == before["pid"]
    assert "http 503" in seen["unhealthy"], seen
    assert "http 503" in seen.get("probe", ""), seen
    set_status(tmp_path / "status-0", "200")
    restarted = wait_until(lambda: (i := sup.status()["web:0"])["pid"] != before["pid"] and i["state"] == "running"
                           and i, timeout=30, message="the replacement to run")
    assert restarted["last_exit"]["reason"] == "unhealthy"
    assert "unhealthy" not in restarted and "probe" not in restarted, "a healthy replacement shows neither"


def test_liveness_that_recovers_before_failures_in_a_row_causes_no_restart(supervisor, tmp_path):
    port = free_ports(1)
    sup = supervisor(_liveness_app(tmp_path, port, 1, failures=3))
    before = sup.wait_all_running(1, timeout=30)["web:0"]
    log = log_of(sup, "web:0")
    served = log.read_text().count("health ")
    set_status(tmp_path / "status-0", "503 2")  # two failures, then 200 again: one short of `failures`

    def recovered() -> bool:
        lines = [line for line in log.read_text().splitlines() if line.startswith("health ")][served:]
        codes = [line.split()[1] for line in lines]
        return "503" in codes and codes[codes.index("503"):].count("200") >= 3

    wait_until(recovered, timeout=20, message="two failed liveness checks, then three passes")
    after = sup.status()["web:0"]
    assert after["pid"] == before["pid"] and after["restarts"] == 0 and after["last_exit"] is None, after
    assert after["state"] == "running" and "unhealthy" not in after
