"""`[supervise] metrics`: a real daemon's /metrics, scraped over loopback, read by prometheus_client's own
parser and checked by `promtool check metrics` (CI installs it: a missing promtool fails, not skips)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request

import psutil
import pytest
from helpers import external_tool, free_port, wait_until
from prometheus_client.parser import text_string_to_metric_families

STATES = ("starting", "running", "stopping", "stopped", "backoff", "failed")
REASONS = ("crashed", "exited", "hung", "memory", "processes", "start-timeout", "reload", "stopped", "lost", "fenced")

CONFIG = """
[supervise]
metrics = "127.0.0.1:{port}"

[apps.beat]
command = ["{python}", "{workers}/beater.py"]
instances = 2
readiness = "heartbeat"
heartbeat_timeout = "10s"
max_memory = "1G"       # sampled every 0.5 s, so memory shows at once
stop_timeout = "5s"

[apps.sleep]
command = ["{python}", "{workers}/sleeper.py"]
"""

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(port: int, path: str = "/metrics") -> tuple[str, str]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as response:
        return response.headers["Content-Type"], response.read().decode()


def parse(text: str) -> tuple[dict[str, str], Samples]:
    """Family name -> type, and every sample by (name, labels), through the library's own parser."""
    types, samples = {}, {}
    for family in text_string_to_metric_families(text):
        types[family.name] = family.type
        for sample in family.samples:
            key = (sample.name, frozenset(sample.labels.items()))
            assert key not in samples, f"duplicate series {key}"
            samples[key] = sample.value
    return types, samples


def value(samples: Samples, name: str, **labels: str) -> float | None:
    return samples.get((name, frozenset(labels.items())))


def promtool(text: str) -> None:
    tool = external_tool("promtool", why="Debian: apt-get install --no-install-recommends prometheus")
    result = subprocess.run([tool, "check", "metrics"], input=text, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and not result.stdout.strip() and not result.stderr.strip(), result


@pytest.fixture
def daemon(supervisor):
    port = free_port()
    sup = supervisor(CONFIG.replace("{port}", str(port)))
    sup.wait_all_running(3)
    return sup, port


def test_a_scrape_parses_passes_promtool_and_says_what_status_says(daemon):
    sup, port = daemon

    def settled() -> tuple[dict[str, str], Samples, str] | None:
        _, text = scrape(port)
        types, samples = parse(text)
        ready = all(value(samples, "supervise_instance_memory_bytes", app="beat", index=str(i), role="slot")
                    for i in (0, 1))
        beats = value(samples, "supervise_heartbeat_messages_total", result="accepted") or 0
        written = value(samples, "supervise_checkpoint_write_duration_seconds_count") or 0
        lagged = value(samples, "supervise_loop_lag_seconds_count") or 0
        return (types, samples, text) if ready and beats >= 2 and written >= 1 and lagged >= 1 else None

    types, samples, text = wait_until(settled, timeout=30, interval=0.2, message="memory, beats, a checkpoint")
    content_type, _ = scrape(port)
    assert content_type == "text/plain; version=0.0.4; charset=utf-8"
    promtool(text)
    status = sup.status()
    for app, count in (("beat", 2), ("sleep", 1)):
        assert value(samples, "supervise_app_instances_desired", app=app) == count
        assert value(samples, "supervise_app_instances_ready", app=app) == count
        assert value(samples, "supervise_app_instances", app=app, state="running") == count
        assert value(samples, "supervise_app_instances", app=app, state="failed") == 0
        assert value(samples, "supervise_app_generation", app=app) == 1
        for reason in REASONS:  # every reason at 0 from the start, so that rate() sees the first one
            assert value(samples, "supervise_restarts_total", app=app, reason=reason) == 0
            assert value(samples, "supervise_exits_total", app=app, reason=reason) == 0
        for index in range(count):
            inst = {"app": app, "index": str(index), "role": "slot"}
            assert [value(samples, "supervise_instance_state", state=s, **inst) for s in STATES] == [0, 1, 0, 0, 0, 0]
            assert value(samples, "supervise_instance_restarts_total", **inst) == 0
            started = value(samples, "supervise_instance_start_time_seconds", **inst)
            uptime = status[f"{app}:{index}"]["uptime"]
            assert started is not None and abs(started - (time.time() - uptime)) < 5
    for index in (0, 1):
        inst = {"app": "beat", "index": str(index), "role": "slot"}
        assert value(samples, "supervise_instance_memory_bytes", **inst) > 1_000_000
        assert 0 <= value(samples, "supervise_instance_heartbeat_age_seconds", **inst) < 10
    assert value(samples, "supervise_instance_heartbeat_age_seconds", app="sleep", index="0", role="slot") is None
    assert types["supervise_restarts"] == "counter" and types["supervise_instance_state"] == "gauge"
    assert types["supervise_loop_lag_seconds"] == "histogram"
    assert types["supervise_checkpoint_write_duration_seconds"] == "histogram"
    assert value(samples, "supervise_control_requests_total", command="status") >= 1
    assert value(samples, "supervise_control_requests_total", command="chaos") == 0
    assert value(samples, "supervise_control_errors_total", kind="malformed") == 0
    assert value(samples, "supervise_heartbeat_messages_total", result="rejected") == 0
    assert value(samples, "supervise_checkpoint_failing") == 0
    assert value(samples, "supervise_checkpoint_write_errors_total") == 0
    assert value(samples, "supervise_loop_lag_seconds_bucket", le="+Inf") >= 1
    assert value(samples, "supervise_loop_lag_max_seconds") >= 0
    assert value(samples, "supervise_daemon_draining") == 0
    measure = [dict(labels) for name, labels in samples if name == "supervise_daemon_info"]
    assert measure and measure[0]["memory_measure"] in ("cgroup", "pss", "rss-sum")
    # The daemon's own process: its pid's figures, as ProcessCollector would give them.
    assert value(samples, "supervise_process_resident_memory_bytes") > 5_000_000
    assert value(samples, "supervise_process_open_fds") > 5
    assert value(samples, "supervise_process_max_fds") > 0
    assert value(samples, "supervise_process_cpu_seconds_total") > 0
    start = value(samples, "supervise_process_start_time_seconds")
    assert abs(start - psutil.Process(sup.proc.pid).create_time()) < 2
    assert not any(name.startswith("supervise_cluster_") for name, _ in samples)  # no [cluster]
    # No label carries a pid, or any other value that grows without bound.
    pids = {str(inst["pid"]) for inst in status.values()}
    assert not any(v in pids for _, labels in samples for _, v in labels)


def test_a_killed_worker_counts_one_crash_restart(daemon):
    sup, port = daemon
    victim = sup.status()["beat:1"]["pid"]
    os.kill(victim, signal.SIGKILL)
    sup.wait_state("beat:1", "running", timeout=15, restarts=1)

    def counted() -> Samples | None:
        _, samples = parse(scrape(port)[1])
        return samples if value(samples, "supervise_instance_restarts_total", app="beat", index="1",
                                role="slot") == 1 else None

    samples = wait_until(counted, timeout=10, interval=0.1, message="the restart in /metrics")
    assert value(samples, "supervise_restarts_total", app="beat", reason="crashed") == 1
    assert value(samples, "supervise_exits_total", app="beat", reason="crashed") == 1
    assert value(samples, "supervise_restarts_total", app="sleep", reason="crashed") == 0
    assert value(samples, "supervise_instance_restarts_total", app="beat", index="0", role="slot") == 0
    assert value(samples, "supervise_app_instances_ready", app="beat") == 2
    promtool(scrape(port)[1])


def test_a_rollout_shows_its_state_and_progress(daemon):
    sup, port = daemon
    _, samples = parse(scrape(port)[1])
    assert not any(name == "supervise_rollout_state" for name, _ in samples)  # none yet
    result = sup.cli("reload", "beat")
    assert result.returncode == 0, result.stderr
    _, text = scrape(port)
    _, samples = parse(text)
    assert [value(samples, "supervise_rollout_state", app="beat", state=s)
            for s in ("running", "done", "failed", "cancelled")] == [0, 1, 0, 0]
    assert value(samples, "supervise_rollout_replaced_instances", app="beat") == 2
    assert value(samples, "supervise_rollout_instances", app="beat") == 2
    assert value(samples, "supervise_rollout_generation", app="beat") == 2
    assert value(samples, "supervise_app_generation", app="beat") == 2
    assert value(samples, "supervise_restarts_total", app="beat", reason="reload") == 2  # each slot taken over
    assert value(samples, "supervise_exits_total", app="beat", reason="reload") == 2  # the old ones, stopped
    assert value(samples, "supervise_restarts_total", app="beat", reason="stopped") == 0
    assert value(samples, "supervise_control_requests_total", command="reload") == 1
    promtool(text)


def test_only_get_and_head_and_only_metrics(daemon):
    _, port = daemon
    request = urllib.request.Request(f"http://127.0.0.1:{port}/metrics", method="POST", data=b"x")
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, timeout=10)
    assert refused.value.code == 405
    with urllib.request.urlopen(urllib.request.Request(f"http://127.0.0.1:{port}/metrics", method="HEAD"),
                                timeout=10) as head:
        assert head.status == 200 and head.read() == b"" and int(head.headers["Content-Length"]) > 1000
    with pytest.raises(urllib.error.HTTPError) as missing:
        scrape(port, "/metrics/nope")
    assert missing.value.code == 404


def test_an_address_in_use_stops_the_start_and_says_so(supervisor, tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        sup = supervisor(CONFIG.replace("{port}", str(port)), start=False)
        result = sup.cli("run", timeout=30)
    assert result.returncode == 1, result
    assert f"cannot start: metrics endpoint 127.0.0.1:{port}: Address already in use" in result.stderr
    assert not (tmp_path / ".supervise" / "control.sock").exists()
    assert "starting" not in result.stderr  # no worker was started


def test_sighup_with_another_address_keeps_the_first_and_says_it_needs_a_restart(daemon):
    sup, port = daemon
    other = free_port()
    sup.config.write_text(sup.config.read_text().replace(f"127.0.0.1:{port}", f"127.0.0.1:{other}"))
    sup.proc.send_signal(signal.SIGHUP)
    wait_until(lambda: "metrics changed" in sup.log.read_text(), timeout=10, message="the warning in the log")
    assert "applies at the next daemon start" in sup.log.read_text()
    assert scrape(port)[1].startswith("# HELP")
    with pytest.raises(OSError):
        scrape(other)


def test_check_warns_of_an_address_other_hosts_may_reach(tmp_path):
    config = tmp_path / "supervise.toml"

    def check(address: str) -> subprocess.CompletedProcess:
        config.write_text(f'[supervise]\nmetrics = "{address}"\n[apps.a]\ncommand = "sleep 1"\n')
        return subprocess.run([sys.executable, "-m", "supervise", "check", "-c", str(config)],
                              capture_output=True, text=True, timeout=30)

    for address in ("127.0.0.1:9750", "[::1]:9750", "localhost:9750", "127.0.0.2:9750"):
        result = check(address)
        assert result.returncode == 0 and result.stderr == "", (address, result)
    for address in ("0.0.0.0:9750", "[::]:9750", "192.0.2.1:9750", "metrics.example:9750"):
        result = check(address)
        assert result.returncode == 0, result
        assert f'supervise.metrics = "{address}" is not a loopback address' in result.stderr
        assert "reverse proxy with authentication" in result.stderr
    result = check("127.0.0.1:0")
    assert result.returncode == 2 and ":2: supervise.metrics: expected an address like" in result.stderr


def test_without_metrics_the_daemon_does_not_load_them():
    code = ("import sys; import supervise.runtime.daemon, supervise.cli.verbs; "
            "print([m for m in sys.modules if m.startswith(('prometheus_client', 'supervise.runtime.metrics'))])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
    # With metrics on, still no ssl (refused as cli/verbs.py import_daemon does) and no prometheus_client.
    code = ("import sys; sys.modules['ssl'] = None; import supervise.runtime.daemon, supervise.runtime.metrics; "
            "print([m for m in sys.modules if m.startswith('prometheus_client')])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


# -- the writer and the counters, in-process (no daemon) ------------------------------------------


def render(status: dict, events: tuple[dict, ...] = (), cluster: dict | None = None, requests: dict | None = None,
           draining: bool = False) -> str:
    """What Metrics writes for `status` after `events`, on a loop of its own."""
    import asyncio

    from supervise.runtime.metrics import Metrics, Source

    async def main() -> str:
        listeners: list = []
        metrics = Metrics(asyncio.get_running_loop(), Source(
            status=lambda: status, subscribe=listeners.append, draining=lambda: draining,
            control_requests=lambda: requests or {}, cluster=lambda: cluster))
        for event in events:
            for listener in listeners:
                listener(event, b"{}")
        metrics.checkpoint_written(0.003, True)
        metrics.checkpoint_written(0.2, False)
        try:
            return metrics.render().decode()
        finally:
            metrics.close()
    return asyncio.run(main())


def row(index: int, state: str = "running", **fields: object) -> dict:
    return {"name": f"web:{index}", "index": index, "generation": 1, "state": state, "pid": 4000 + index,
            "restarts": 0, "uptime": 1.5, "rss": 1000, "heartbeat_age": 0.5, "fields": None, "last_exit": None,
            "log_dropped": 0, **fields}


def state_event(name: str, was: str, to: str, reason: str | None = None) -> dict:
    event = {"type": "state", "name": name, "app": name.split(":")[0], "index": int(name.split(":")[1]),
             "from": was, "to": to, "pid": None, "generation": 1}
    if reason is not None:
        event["exit"] = {"reason": reason, "code": 1, "signal": None}
    return event


STATUS = {"apps": [{"name": "web", "target": 3, "generation": 2,
                    "instances": [row(0), row(1, "backoff", uptime=None, rss=None, heartbeat_age=None),
                                  row(2, "starting", cpu_seconds=1.25, processes=3)],
                    "replacing": [row(0, "starting", generation=2), row(0, "stopping"), row(2, "stopping")],
                    "rollout": {"app": "web", "generation": 2, "state": "running", "cause": "reload",
                                "replaced": 1, "total": 3, "error": None, "duration": 1.0}}],
          "daemon": {"pid": 1, "heartbeats": {"accepted": 7, "rejected": 2, "malformed": 1, "internal_errors": 0},
                     "control_malformed": 3, "control_internal_errors": 0, "memory_measure": "cgroup",
                     "checkpoint": {"ok": False, "error": "No space left on device"}}}


def test_restarts_are_counted_as_the_core_counts_them():
    events = (
        state_event("web:0", "running", "starting", "crashed"),  # restarted at once
        state_event("web:0", "running", "backoff", "crashed"),  # an exit; the restart comes...
        state_event("web:0", "backoff", "starting"),  # ...here, for the crash
        state_event("web:0", "running", "failed", "hung"),  # the breaker opens
        state_event("web:0", "failed", "starting"),  # the half-open try: a restart for the hang
        state_event("web:1", "stopping", "starting", "stopped"),  # `supervise restart`
        state_event("web:1", "stopping", "stopped", "stopped"),  # `supervise stop`: an exit, no restart
        state_event("web:1", "stopped", "starting"),  # `supervise start`: no restart
        state_event("web:2", "backoff", "starting"),  # adopted in backoff: its exit was an earlier daemon's
        {"type": "replaced", "name": "web:2", "app": "web", "index": 2, "reason": "memory"},
        state_event("web:2", "stopping", "stopped", "memory"),  # the old one of the replace-first restart
        {"type": "daemon", "event": "started"},
        state_event("ghost:0", "running", "starting", "crashed"),
        {"type": "app", "event": "removed", "app": "ghost"},
    )
    _, samples = parse(render(STATUS, events))
    restarts = {r: value(samples, "supervise_restarts_total", app="web", reason=r) for r in REASONS}
    exits = {r: value(samples, "supervise_exits_total", app="web", reason=r) for r in REASONS}
    assert {r: n for r, n in restarts.items() if n} == {"crashed": 2, "hung": 1, "stopped": 1, "memory": 1}
    assert {r: n for r, n in exits.items() if n} == {"crashed": 2, "hung": 1, "stopped": 2, "memory": 1}
    assert not any(dict(labels).get("app") == "ghost" for _, labels in samples)


def test_every_family_of_a_busy_status_parses_and_passes_promtool():
    cluster = {"cluster": "prod", "node": "n1", "connected": True, "error": None, "leader": "n2", "revision": 9,
               "nodes": [{"name": "n1", "alive": True, "leader": False, "cordoned": False, "instances": 2},
                         {"name": "n2", "alive": True, "leader": True, "cordoned": True, "instances": 0},
                         {"name": "n3", "alive": False, "leader": False, "cordoned": False, "instances": 1}],
               "instances": [], "pending": [{"name": "web:9", "app": "web", "index": 9}]}
    text = render(STATUS, cluster=cluster, requests={"status": 4}, draining=True)
    promtool(text)
    _, samples = parse(text)
    slot, replacing = {"app": "web", "role": "slot"}, {"app": "web", "role": "replacing"}
    assert value(samples, "supervise_instance_state", index="1", state="backoff", **slot) == 1
    assert value(samples, "supervise_instance_state", index="0", state="starting", **replacing) == 1  # the successor
    assert value(samples, "supervise_instance_state", index="2", state="stopping", **replacing) == 1
    assert value(samples, "supervise_instance_start_time_seconds", index="1", **slot) is None  # no process
    assert value(samples, "supervise_instance_memory_bytes", index="1", **slot) is None
    assert value(samples, "supervise_instance_cpu_seconds_total", index="2", **slot) == 1.25
    assert value(samples, "supervise_instance_cpu_seconds_total", index="0", **slot) is None  # not reported
    assert value(samples, "supervise_instance_processes", index="2", **slot) == 3
    assert value(samples, "supervise_app_instances_ready", app="web") == 1  # slots only
    assert [value(samples, "supervise_app_instances", app="web", state=s) for s in STATES] == [1, 1, 0, 0, 1, 0]
    assert value(samples, "supervise_rollout_state", app="web", state="running") == 1
    assert (value(samples, "supervise_rollout_replaced_instances", app="web"),
            value(samples, "supervise_rollout_instances", app="web")) == (1, 3)
    assert value(samples, "supervise_heartbeat_messages_total", result="rejected") == 2
    assert value(samples, "supervise_control_requests_total", command="status") == 4
    assert value(samples, "supervise_control_errors_total", kind="malformed") == 3
    assert value(samples, "supervise_checkpoint_failing") == 1
    assert value(samples, "supervise_checkpoint_write_errors_total") == 1
    assert value(samples, "supervise_checkpoint_write_duration_seconds_bucket", le="0.005") == 1
    assert value(samples, "supervise_checkpoint_write_duration_seconds_count") == 2
    assert value(samples, "supervise_daemon_draining") == 1
    assert value(samples, "supervise_cluster_info", cluster="prod", node="n1") == 1
    assert value(samples, "supervise_cluster_connected") == 1 and value(samples, "supervise_cluster_leader") == 0
    assert [value(samples, "supervise_cluster_node_up", node=n) for n in ("n1", "n2", "n3")] == [1, 1, 0]
    assert [value(samples, "supervise_cluster_node_leader", node=n) for n in ("n1", "n2", "n3")] == [0, 1, 0]
    assert value(samples, "supervise_cluster_node_cordoned", node="n2") == 1
    assert value(samples, "supervise_cluster_node_instances", node="n3") == 1
    assert value(samples, "supervise_cluster_pending_instances") == 1
