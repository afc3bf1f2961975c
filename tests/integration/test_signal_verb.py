"""`supervise signal SIGNAL TARGET... [--tree]`: any signal to instances' main processes, or their trees."""

from __future__ import annotations

import json
from pathlib import Path

from helpers import Supervisor, file_text, wait_until

# A worker that writes down every HUP, USR1 and USR2 it receives, in <name>.signals beside the
# config; with SPAWN_CHILD set it starts a child doing the same (in <name>-child.signals).
RECORDER = """\
import os, signal, subprocess, sys

child = "--child" in sys.argv
name = os.environ["SUPERVISE_NAME"].replace(":", "_") + ("-child" if child else "")


def record(sig, frame):
    with open(name + ".signals", "a") as f:
        f.write(signal.Signals(sig).name + "\\n")


for s in (signal.SIGHUP, signal.SIGUSR1, signal.SIGUSR2):
    signal.signal(s, record)
kid = subprocess.Popen([sys.executable, __file__, "--child"]) if os.environ.get("SPAWN_CHILD") and not child else None


def term(sig, frame):
    if kid is not None:
        kid.terminate()
        kid.wait()
    sys.exit(0)


signal.signal(signal.SIGTERM, term)
with open(name + ".ready", "w") as f:
    f.write(str(os.getpid()))
while True:
    signal.pause()
"""

CONFIG = """
[apps.web]
command = ["{python}", "recorder.py"]
instances = 2
stop_timeout = "5s"

[apps.tree]
command = ["{python}", "recorder.py"]
env = { SPAWN_CHILD = "1" }
stop_timeout = "5s"

[apps.off]
command = ["{python}", "recorder.py"]
stop_timeout = "5s"
"""


def start(supervisor, tmp_path: Path) -> Supervisor:
    (tmp_path / "recorder.py").write_text(RECORDER)
    sup = supervisor(CONFIG)
    for name in ("web_0", "web_1", "tree_0", "tree_0-child", "off_0"):  # its handlers are in place
        file_text(tmp_path / f"{name}.ready")
    return sup


def received(tmp_path: Path, name: str) -> list[str]:
    try:
        return (tmp_path / f"{name}.signals").read_text().split()
    except FileNotFoundError:
        return []


def wait_received(tmp_path: Path, name: str, sig: str) -> list[str]:
    return wait_until(lambda: sig in received(tmp_path, name) and received(tmp_path, name),
                      message=f"{name} to receive {sig}")


def test_a_signal_reaches_only_the_named_instances(supervisor, tmp_path):
    sup = start(supervisor, tmp_path)
    pids = {name: inst["pid"] for name, inst in sup.status().items()}
    hup = sup.cli("signal", "HUP", "web:0")
    assert hup.returncode == 0, hup.stderr
    assert hup.stdout.strip() == f"sent SIGHUP to web:0 (pid {pids['web:0']})"
    wait_received(tmp_path, "web_0", "SIGHUP")
    # Lower-case, and an app: both of its instances. Once web:1 has USR1, a HUP sent to it
    # before would be in its file too (sent earlier, and handled first).
    usr1 = sup.cli("signal", "usr1", "web")
    assert usr1.returncode == 0, usr1.stderr
    assert usr1.stdout.splitlines() == [f"sent SIGUSR1 to web:{i} (pid {pids[f'web:{i}']})" for i in (0, 1)]
    assert wait_received(tmp_path, "web_1", "SIGUSR1") == ["SIGUSR1"]
    number = sup.cli("signal", "12", "web:1", "--json")  # a number; SIGUSR2
    assert number.returncode == 0, number.stderr
    result = json.loads(number.stdout)
    assert result["signal"] == "SIGUSR2" and result["number"] == 12 and result["tree"] is False
    assert result["signalled"] == [{"name": "web:1", "pid": pids["web:1"]}] and result["skipped"] == []
    assert wait_received(tmp_path, "web_1", "SIGUSR2") == ["SIGUSR1", "SIGUSR2"]
    assert received(tmp_path, "web_0") == ["SIGHUP", "SIGUSR1"]
    assert {n: i["pid"] for n, i in sup.status().items()} == pids  # nobody died of it
    events = [json.loads(line) for line in sup.cli("events", "--no-follow").stdout.splitlines()]
    assert [(e["signal"], e["names"]) for e in events if e["type"] == "signal"] == [
        ("SIGHUP", ["web:0"]), ("SIGUSR1", ["web:0", "web:1"]), ("SIGUSR2", ["web:1"])]


def test_tree_reaches_the_children_too(supervisor, tmp_path):
    sup = start(supervisor, tmp_path)
    plain = sup.cli("signal", "SIGUSR2", "tree")
    assert plain.returncode == 0, plain.stderr
    wait_received(tmp_path, "tree_0", "SIGUSR2")
    tree = sup.cli("signal", "--tree", "USR1", "tree:0")
    assert tree.returncode == 0, tree.stderr
    pid = sup.status()["tree:0"]["pid"]
    assert tree.stdout.strip() == f"sent SIGUSR1 to tree:0 (pid {pid}) and every process of its tree"
    wait_received(tmp_path, "tree_0", "SIGUSR1")
    # The child got USR1 and never the USR2 sent to the main process only (sent first).
    assert wait_received(tmp_path, "tree_0-child", "SIGUSR1") == ["SIGUSR1"]


def test_bad_signals_and_targets_exit_2(supervisor, tmp_path):
    sup = start(supervisor, tmp_path)
    typo = sup.cli("signal", "HUPP", "web")
    assert typo.returncode == 2 and "no signal named 'HUPP' (did you mean HUP?" in typo.stderr, typo
    nonsense = sup.cli("signal", "PLEASE", "web")
    assert nonsense.returncode == 2 and "a name such as HUP" in nonsense.stderr, nonsense
    assert len(nonsense.stderr.splitlines()) == 1
    number = sup.cli("signal", "99", "web")
    assert number.returncode == 2 and "no signal numbered 99" in number.stderr, number
    unknown = sup.cli("signal", "HUP", "nosuchapp")
    assert unknown.returncode == 2 and "no app named 'nosuchapp'" in unknown.stderr, unknown
    index = sup.cli("signal", "HUP", "web:7")
    assert index.returncode == 2 and "web:7" in index.stderr, index
    assert sup.cli("signal", "HUP").returncode == 2  # no target
    assert received(tmp_path, "web_0") == [] and received(tmp_path, "web_1") == []


def test_no_live_instance_exits_1_and_some_are_skipped(supervisor, tmp_path):
    sup = start(supervisor, tmp_path)
    assert sup.cli("stop", "off").returncode == 0
    none = sup.cli("signal", "HUP", "off")
    assert none.returncode == 1, none
    assert "no live process to send SIGHUP to (off:0 is stopped)" in none.stderr
    some = sup.cli("signal", "HUP", "off", "web:1")
    assert some.returncode == 0, some.stderr
    assert some.stdout.startswith("sent SIGHUP to web:1 ")
    assert "off:0 is stopped: no process to signal" in some.stderr
    wait_received(tmp_path, "web_1", "SIGHUP")


def test_sigkill_warns_and_is_a_crash_restarted_per_policy(supervisor, tmp_path):
    sup = start(supervisor, tmp_path)
    old = sup.status()["web:1"]["pid"]
    kill = sup.cli("signal", "KILL", "web:1")
    assert kill.returncode == 0, kill.stderr
    assert kill.stdout.strip() == f"sent SIGKILL to web:1 (pid {old})"
    assert "warning: SIGKILL" in kill.stderr and "crash" in kill.stderr
    inst = wait_until(lambda: (i := sup.status()["web:1"])["pid"] not in (None, old) and i, message="a new web:1")
    assert inst["last_exit"]["reason"] == "crashed" and inst["last_exit"]["signal"] == 9
    assert inst["restarts"] == 1


def test_without_a_daemon_exits_3_but_a_bad_signal_is_2(tmp_path):
    sup = Supervisor(tmp_path, CONFIG)
    assert sup.cli("signal", "HUP", "web").returncode == 3
    assert sup.cli("signal", "NOPE", "web").returncode == 2
