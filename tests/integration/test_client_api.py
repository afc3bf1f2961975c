"""supervise.client, the public Python API, against a real daemon: every method, and its errors."""

from __future__ import annotations

import json
import signal
from concurrent.futures import ThreadPoolExecutor

import pytest
from helpers import free_port, wait_until

from supervise.client import (
    Client,
    ClientError,
    NoDaemon,
    OperationFailed,
    ReloadResult,
    SignalResult,
    Status,
    UsageError,
)

CONFIG = """
[apps.web]
command = ["{python}", "{workers}/sleeper.py"]
instances = 2
stop_timeout = "5s"

[apps.other]
command = ["{python}", "{workers}/sleeper.py"]
stop_timeout = "5s"

[apps.bad]
command = ["{python}", "{workers}/crasher.py"]
restart = "never"
readiness = "heartbeat"  # never ready: `start` waits for it, and it crashes first
"""


@pytest.fixture
def daemon(supervisor):
    sup = supervisor(CONFIG)
    sup.wait_all_running(2, "web")
    sup.wait_all_running(1, "other")
    sup.wait_state("bad:0", "stopped")  # it crashed, and stays down: the tests count what is live and changes
    return sup


def test_status_is_typed_and_keeps_the_daemons_json(daemon):
    client = Client.from_config(daemon.config)
    status = client.status()
    assert isinstance(status, Status)
    assert [app.name for app in status.apps] == ["web", "other", "bad"]
    cli = daemon.status()
    web0 = status["web:0"]
    assert (web0.name, web0.index, web0.state, web0.pid, web0.restarts) == ("web:0", 0, "running",
                                                                           cli["web:0"]["pid"], 0)
    assert web0.app == "web" and web0.uptime is not None and web0.uptime >= 0 and web0.last_exit is None
    assert web0.raw["name"] == "web:0" and "heartbeat_age" in web0.raw
    assert status.app("web").target == 2 and [i.name for i in status.app("web").instances] == ["web:0", "web:1"]
    assert status.raw["apps"][0]["name"] == "web" and status.daemon is not None
    assert "web:1" in status and "web:9" not in status
    bad = status["bad:0"]
    assert bad.state == "stopped" and bad.last_exit is not None
    assert (bad.last_exit.reason, bad.last_exit.code) == ("crashed", 3)
    assert bad.last_exit.describe() == "crashed (exit code 3)"
    assert [i.name for i in client.status("web:1", "other").instances] == ["web:1", "other:0"]
    assert client.status_json("other")["apps"][0]["instances"][0]["pid"] == cli["other:0"]["pid"]
    with ThreadPoolExecutor(8) as pool:  # one Client, shared by threads: each call its own connection
        pids = list(pool.map(lambda _: client.status("web:0")["web:0"].pid, range(16)))
    assert pids == [web0.pid] * 16


def test_start_stop_restart_scale_and_reload(daemon):
    client = Client.from_config(daemon.config)
    before = client.status()
    stopped = client.stop("web:1")
    assert [i.name for i in stopped.instances] == ["web:1"]
    assert stopped["web:1"].state == "stopped" and stopped["web:1"].last_exit.reason == "stopped"
    assert client.start("web:1")["web:1"].state == "running"
    restarted = client.restart("web")
    assert all(restarted[n].state == "running" and restarted[n].pid != before[n].pid for n in ("web:0", "web:1"))
    assert client.status("other")["other:0"].pid == before["other:0"].pid
    grown = client.scale("web", 3)
    assert [i.name for i in grown.instances] == ["web:2"] and grown["web:2"].state == "running"
    assert client.scale("web", 2).apps == ()
    assert [i.name for i in client.status("web").instances] == ["web:0", "web:1"]
    pids = {i.name: i.pid for i in client.status("web").instances}
    reload = client.reload("web")
    assert isinstance(reload, ReloadResult) and not reload.dry_run
    assert [(r["app"], r["replaced"], r["total"]) for r in reload.rollouts] == [("web", 2, 2)]
    assert all(i.pid != pids[i.name] and i.generation == 2 for i in client.status("web").instances)
    plan = client.reload(dry_run=True)  # the config as it is: nothing to change
    assert plan.dry_run and {p["action"] for p in plan.plan} == {"unchanged"}


def test_signal(daemon):
    client = Client.from_config(daemon.config)
    pids = {name: inst["pid"] for name, inst in daemon.status().items()}
    result = client.signal("winch", "web", "bad")  # SIGWINCH: ignored by default, harmless
    assert isinstance(result, SignalResult)
    assert (result.signal, result.number, result.tree, result.warning) == ("SIGWINCH", 28, False, None)
    assert [(s.name, s.pid) for s in result.signalled] == [("web:0", pids["web:0"]), ("web:1", pids["web:1"])]
    assert [(s.name, s.state) for s in result.skipped] == [("bad:0", "stopped")]
    assert client.signal(signal.SIGWINCH, "other:0", tree=True).tree is True
    killed = client.signal(9, "other")
    assert killed.signal == "SIGKILL" and "crash" in (killed.warning or "")
    wait_until(lambda: client.status("other")["other:0"].pid not in (None, pids["other:0"]))
    with pytest.raises(OperationFailed, match="no live process to send SIGHUP to .bad:0 is stopped"):
        client.signal("HUP", "bad")


def test_errors_are_typed_with_the_clis_exit_codes(daemon, tmp_path):
    client = Client.from_config(daemon.config)
    usage = [lambda: client.status("nosuchapp"), lambda: client.start("web:9"), lambda: client.stop(),
             lambda: client.scale("web", -1), lambda: client.signal("HUPP", "web"), lambda: client.signal(0, "web"),
             lambda: client.signal("HUP"), lambda: client.scale("web:0", 1),
             lambda: Client.from_config(tmp_path / "nope.toml"), lambda: Client("http://localhost:80"),
             lambda: Client(f"tcp://127.0.0.1:{free_port()}")]
    for call in usage:
        with pytest.raises(UsageError) as caught:
            call()
        assert caught.value.exit_code == 2 and caught.value.usage and isinstance(caught.value, ClientError)
    with pytest.raises(UsageError, match="did you mean HUP"):
        client.signal("HUPP", "web")
    with pytest.raises(UsageError, match="no app named 'nosuchapp'"):
        client.restart("nosuchapp")
    with pytest.raises(OperationFailed, match=r"bad:0 is stopped \(last exit: crashed \(exit code 3\)\)") as failed:
        client.start("bad")
    assert failed.value.exit_code == 1 and not failed.value.usage
    assert client.shutdown() == {"draining": 2 + 1}
    with pytest.raises(NoDaemon, match="no supervise daemon is running") as gone:
        client.status()
    assert gone.value.exit_code == 3
    with pytest.raises(NoDaemon):
        client.events()


def test_events_yield_state_changes(daemon):
    with Client.from_config(daemon.config) as client:
        history = list(client.events(since=0, follow=False))
        seqs = [e["seq"] for e in history]
        assert seqs == sorted(seqs) and any(e["type"] == "state" and e["to"] == "running" for e in history)
        assert list(client.events(follow=False)) == []  # since=None: nothing from the past
        with client.events(timeout=10) as stream:  # subscribed now: the stop below is in it
            client.stop("web:1")
            changes = []
            for event in stream:
                assert event["seq"] > seqs[-1]
                if event["type"] == "state" and event["name"] == "web:1":
                    changes.append((event["from"], event["to"]))
                    if event["to"] == "stopped":
                        break
        assert changes == [("running", "stopping"), ("stopping", "stopped")]
        replay = [e for e in client.events(since=seqs[-1], follow=False) if e["type"] == "state"]
        assert [(e["name"], e["to"]) for e in replay] == [("web:1", "stopping"), ("web:1", "stopped")]
        quiet = client.events(since=None, timeout=0.2)  # nothing happens: it ends after 0.2 s of silence
        assert list(quiet) == []
    with pytest.raises(ClientError, match="closed"):
        client.status()


def test_a_tcp_endpoint_with_curve_keys(supervisor):
    port = free_port()
    sup = supervisor('[apps.a]\ncommand = ["{python}", "{workers}/sleeper.py"]\n', start=False)
    keys = sup.dir / "keys"
    public = {}
    for name in ("daemon", "ops", "stranger"):
        made = sup.cli("keygen", name, "--dir", str(keys))
        assert made.returncode == 0, made.stderr
        public[name] = made.stdout.split("public key: ")[1].split()[0]
    sup.config.write_text(sup.config.read_text().replace("[apps.a]", (
        f'[supervise]\ncontrol = "tcp://127.0.0.1:{port}"\ncontrol_key = "keys/daemon.key_secret"\n'
        f'control_clients = ["{public["ops"]}"]\n[apps.a]')))
    sup.start()
    endpoint = f"tcp://127.0.0.1:{port}"
    with Client(endpoint, key=keys / "ops.key_secret", server_key=str(keys / "daemon.key")) as client:
        assert client.state_dir is None
        assert [i.name for i in client.status().instances] == ["a:0"]
        assert client.restart("a")["a:0"].state == "running"
        assert [s.name for s in client.signal("WINCH", "a").signalled] == ["a:0"]
    stranger = Client(endpoint, key=keys / "stranger.key_secret", server_key=public["daemon"], timeout=0.5)
    with pytest.raises(OperationFailed, match="keys do not match"):
        stranger.status()
    assert json.loads(sup.cli("status", "--json").stdout)["apps"][0]["name"] == "a"
