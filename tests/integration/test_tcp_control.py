"""The TCP control endpoint: CURVE keys or no start, only listed clients, and no secret shown anywhere."""

from __future__ import annotations

import json
import os

from helpers import free_port, wait_until


def keygen(sup, name: str) -> str:
    result = sup.cli("keygen", name, "--dir", str(sup.dir / "keys"))
    assert result.returncode == 0, result.stderr
    return result.stdout.split("public key: ")[1].split()[0]


def test_tcp_control_needs_keys_and_lets_in_only_listed_clients(supervisor):
    port = free_port()
    sup = supervisor('[apps.a]\ncommand = ["{python}", "{workers}/sleeper.py"]\n', start=False)
    no_keys = sup.config.read_text().replace("[apps.a]", f'[supervise]\ncontrol = "tcp://127.0.0.1:{port}"\n[apps.a]')
    sup.config.write_text(no_keys)
    refused = sup.cli("run")
    assert refused.returncode == 2 and "needs CURVE keys" in refused.stderr and "supervise keygen" in refused.stderr
    keygen(sup, "daemon")
    ops = keygen(sup, "ops")
    keygen(sup, "stranger")
    keys = sup.dir / "keys"
    sup.config.write_text(no_keys.replace("[apps.a]", f'control_key = "keys/daemon.key_secret"\n'
                                                      f'control_clients = ["{ops}"]\n[apps.a]'))
    os.chmod(keys / "daemon.key_secret", 0o644)
    loose = sup.cli("run")
    assert loose.returncode == 1 and "chmod 600" in loose.stderr, loose.stderr
    os.chmod(keys / "daemon.key_secret", 0o600)
    sup.start()
    remote = ["--connect", f"tcp://127.0.0.1:{port}", "--server-key", str(keys / "daemon.key")]
    ok = sup.cli("status", "--json", *remote, "--key", str(keys / "ops.key_secret"))
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout)["apps"][0]["name"] == "a"
    assert sup.cli("restart", "a", *remote, "--key", str(keys / "ops.key_secret")).returncode == 0
    stranger = sup.cli("status", *remote, "--key", str(keys / "stranger.key_secret"))
    assert stranger.returncode == 1 and "keys do not match" in stranger.stderr
    no_key = sup.cli("status", "--connect", f"tcp://127.0.0.1:{port}")
    assert no_key.returncode == 2 and "--key" in no_key.stderr


def test_secrets_never_show_in_status_events_or_logs(supervisor):
    sup = supervisor("""
    [apps.a]
    command = ["{python}", "{workers}/beater.py"]
    instances = 2
    readiness = "heartbeat"
    env = { API_TOKEN = "hunter2-very-secret" }
    """)
    wait_until(lambda: all(i["state"] == "running" for i in sup.status().values()), timeout=20)
    assert sup.cli("restart", "a:0").returncode == 0
    tokens = []
    for inst in sup.status().values():
        environ = open(f"/proc/{inst['pid']}/environ", "rb").read().split(b"\0")
        tokens += [e.split(b"=", 1)[1].decode() for e in environ if e.startswith(b"SUPERVISE_TOKEN=")]
    assert len(tokens) == 2
    shown = (sup.cli("status", "--json").stdout + sup.cli("events", "--no-follow").stdout
             + sup.cli("status").stdout + sup.log.read_text())
    for secret in (*tokens, "hunter2-very-secret"):
        assert secret not in shown
