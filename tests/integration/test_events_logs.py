"""Events and logs people can read (issue 13, point 6), against a real daemon.

`events` prints words on a terminal and JSON lines into a pipe; its history survives a SIGKILL of the
daemon and an adoption, numbering on; `logs --since` and `--grep` pick lines; `logs -f` of an app's
instances comes out in the order the lines were written.
"""

from __future__ import annotations

import json
import os
import pty
import re
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

from helpers import wait_until

from supervise.runtime import checkpoint

SLEEPERS = """
[apps.sleep]
command = ["{python}", "{workers}/sleeper.py"]
instances = 2
stop_timeout = "5s"
"""


def cli(sup, *args: str, env: dict[str, str] | None = None) -> list[str]:
    result = subprocess.run([sys.executable, "-m", "supervise", *args, "-c", str(sup.config)], capture_output=True,
                            text=True, env=env or sup.env, cwd=sup.dir, timeout=60)
    assert result.returncode == 0, result.stderr
    return result.stdout.splitlines()


def events(sup, since: int = 0) -> list[dict]:
    return [json.loads(line) for line in cli(sup, "events", "--no-follow", "--since", str(since))]


def on_a_terminal(sup, *args: str, env: dict[str, str], timeout: float = 30.0) -> list[str]:
    """What the CLI prints with a pseudo-terminal as its stdout (read until it exits)."""
    master, slave = pty.openpty()
    proc = subprocess.Popen([sys.executable, "-m", "supervise", *args, "-c", str(sup.config)], stdout=slave,
                            stderr=subprocess.PIPE, env=env, cwd=sup.dir)
    os.close(slave)
    data = b""
    deadline = time.monotonic() + timeout
    try:
        while True:
            assert time.monotonic() < deadline, f"the CLI did not finish: {data!r}"
            ready, _, _ = select.select([master], [], [], 0.5)
            if not ready:
                continue
            try:
                chunk = os.read(master, 65536)
            except OSError:  # EIO: the other side is closed, the CLI has exited
                break
            if not chunk:
                break
            data += chunk
    finally:
        os.close(master)
        assert proc.wait(10) == 0, proc.stderr.read() if proc.stderr else ""
        if proc.stderr:
            proc.stderr.close()
    return data.decode().replace("\r\n", "\n").splitlines()


def test_events_are_words_on_a_terminal_and_json_lines_when_piped(supervisor):
    sup = supervisor(SLEEPERS)
    sup.wait_all_running(2)
    plain = dict(sup.env, NO_COLOR="1", TERM="xterm")
    lines = on_a_terminal(sup, "events", "--no-follow", env=plain)
    assert not [line for line in lines if line.startswith("{")], lines
    assert re.fullmatch(r"\d\d:\d\d:\d\d\.\d{3} +#1  daemon +started", lines[0]), lines
    running = [line for line in lines if re.fullmatch(
        r"\d\d:\d\d:\d\d\.\d{3} +#\d+  sleep:0 +starting -> running  pid \d+", line)]
    assert running, lines
    assert "\x1b[" not in "".join(lines), "NO_COLOR: no colour"
    coloured = on_a_terminal(sup, "events", "--no-follow", env={k: v for k, v in plain.items() if k != "NO_COLOR"})
    assert "\x1b[32mstarting -> running" in "\n".join(coloured)
    # --json on a terminal, and anything piped: today's JSON lines, unchanged.
    as_json = [json.loads(line) for line in on_a_terminal(sup, "events", "--no-follow", "--json", env=plain)]
    piped = events(sup)
    assert as_json == piped[: len(as_json)] and piped[0]["type"] == "daemon"
    assert [e["seq"] for e in piped] == list(range(1, len(piped) + 1))


def test_events_since_works_across_a_daemon_kill_and_adoption(supervisor):
    sup = supervisor(SLEEPERS)
    pids = {name: inst["pid"] for name, inst in sup.wait_all_running(2).items()}
    wait_until(lambda: (cp := checkpoint.read(sup.dir / ".supervise" / "checkpoint.json"))
               and sum(1 for r in cp.instances if r.pid) == 2, 10, message="the checkpoint")
    before = events(sup)
    last = before[-1]["seq"]
    sup.proc.send_signal(signal.SIGKILL)
    sup.proc.wait(10)
    sup.start()
    after = sup.wait_all_running(2)
    assert {name: inst["pid"] for name, inst in after.items()} == pids, "adopted, not restarted"
    new = wait_until(lambda: [e for e in events(sup, last) if e.get("event") == "started"] and events(sup, last),
                     10, message="the new daemon's events")
    assert [e["seq"] for e in new] == list(range(last + 1, last + 1 + len(new))), "numbering goes on"
    assert any(e["type"] == "daemon" and e["event"] == "started" for e in new)
    everything = events(sup)
    assert everything[: len(before)] == before, "the old history is still there, as it was"
    assert [e["seq"] for e in everything] == list(range(1, len(everything) + 1))
    # A follower that saw `last` before the kill picks up exactly what it missed.
    follower = subprocess.Popen([sys.executable, "-m", "supervise", "events", "--since", str(last), "--json",
                                 "-c", str(sup.config)], stdout=subprocess.PIPE, text=True, env=sup.env)
    try:
        assert follower.stdout is not None
        first = json.loads(follower.stdout.readline())
        assert first["seq"] == last + 1
    finally:
        follower.terminate()
        follower.wait(5)


def stamped(lines: list[str]) -> list[tuple[int, float]]:
    """(n, the time the worker printed it) of `stamped.py` lines."""
    return [(int(n), float(t)) for n, t in (line.split() for line in lines)]


def test_logs_since_shows_only_lines_written_since_then(supervisor, tmp_path: Path):
    sup = supervisor("""
        [apps.count]
        command = ["{python}", "{workers}/stamped.py", "0.05"]
        stop_timeout = "5s"
    """)
    sup.wait_all_running(1)
    log = tmp_path / ".supervise" / "logs" / "count.0.log"
    # The scenario needs lines older than 2 s: wait until the worker has been printing for 3 s.
    wait_until(lambda: log.exists() and log.read_text().count("\n") >= 60, 20, message="3 s of output")
    asked = time.time()
    shown = stamped(cli(sup, "logs", "count", "--since", "2s"))
    answered = time.time()
    everything = dict(stamped(log.read_text().splitlines()))
    numbers = [n for n, _ in shown]
    assert numbers == list(range(numbers[0], numbers[0] + len(numbers))), "every line since then, in order"
    assert numbers[0] > 20, "older lines are left out"
    assert numbers[-1] >= max(n for n, t in everything.items() if t < asked - 0.5), "up to the newest"
    # The cutoff is the CLI's now - 2 s, between asked - 2 and answered - 2. A line's time is when
    # the daemon wrote it (a record is at most 20 ms older than the write), a little after its print.
    assert shown[0][1] >= asked - 2 - 1.0, shown[0]
    assert everything[numbers[0] - 1] < answered - 2 + 0.02, "the line before the first shown is older"


def test_logs_grep_picks_matching_lines_and_n_counts_them(supervisor, tmp_path: Path):
    sup = supervisor("""
        [apps.count]
        command = ["{python}", "{workers}/stamped.py", "0.01"]
        stop_timeout = "5s"
    """)
    sup.wait_all_running(1)
    log = tmp_path / ".supervise" / "logs" / "count.0.log"
    wait_until(lambda: log.exists() and log.read_text().count("\n") >= 250, 20, message="250 lines")
    shown = [n for n, _ in stamped(cli(sup, "logs", "count", "--grep", r"^\d*7 "))]
    assert len(shown) == 20 and all(n % 10 == 7 for n in shown), shown
    assert shown == list(range(shown[0], shown[0] + 200, 10)), "the last 20 matches, in order"
    three = [n for n, _ in stamped(cli(sup, "logs", "count", "--grep", r"^\d*3 ", "-n", "3"))]
    assert len(three) == 3 and all(n % 10 == 3 for n in three) and three == sorted(three)
    bad = sup.cli("logs", "count", "--grep", "(")
    assert bad.returncode == 2 and "not a Python regular expression" in bad.stderr
    bad = sup.cli("logs", "count", "--since", "soon")
    assert bad.returncode == 2 and "--since" in bad.stderr


TURNS = """
[apps.turns]
command = ["{{python}}", "{{workers}}/turns.py", "{logs}", "0.05"]
instances = 2
stop_timeout = "5s"
"""


def read_lines(proc: subprocess.Popen, count: int, timeout: float = 30.0) -> list[str]:
    """The first `count` lines `proc` prints (a deadline, not a fixed wait)."""
    assert proc.stdout is not None
    fd = proc.stdout.fileno()
    data = b""
    deadline = time.monotonic() + timeout
    while data.count(b"\n") < count:
        assert time.monotonic() < deadline, f"too few lines: {data!r}"
        assert proc.poll() is None, f"exited {proc.returncode}: {data!r}"
        if select.select([fd], [], [], 0.5)[0]:
            data += os.read(fd, 65536)
    return data.decode().splitlines()[:count]


def turns(lines: list[str]) -> list[tuple[str, int]]:
    """(instance, n) of `logs turns` lines, `turns:0 | 7 1796...`."""
    return [(name, int(rest.split()[0])) for name, rest in (line.split(" | ") for line in lines)]


def test_logs_of_an_app_merge_its_instances_in_time_order(supervisor, tmp_path: Path):
    logs = tmp_path / ".supervise" / "logs"
    sup = supervisor(TURNS.format(logs=logs))
    sup.wait_all_running(2)
    wait_until(lambda: (logs / "turns.1.log").exists() and (logs / "turns.1.log").read_text().count("\n") >= 10,
               20, message="ten turns each")
    shown = turns(cli(sup, "logs", "turns", "-n", "12"))
    numbers = [n for _, n in shown]
    assert len(shown) == 12 and numbers == list(range(numbers[0], numbers[0] + 12)), shown
    assert all(name == f"turns:{(n - 1) % 2}" for name, n in shown)


def test_logs_follow_of_two_instances_comes_out_in_time_order(supervisor, tmp_path: Path):
    logs = tmp_path / ".supervise" / "logs"
    sup = supervisor(TURNS.format(logs=logs))
    sup.wait_all_running(2)
    wait_until(lambda: (logs / "turns.0.log").exists(), 20, message="the first turn")
    follower = subprocess.Popen([sys.executable, "-m", "supervise", "logs", "turns", "-f", "-n", "4",
                                 "-c", str(sup.config)], stdout=subprocess.PIPE, env=sup.env, cwd=sup.dir)
    try:
        shown = turns(read_lines(follower, 30))
    finally:
        follower.terminate()
        follower.wait(5)
        if follower.stdout:
            follower.stdout.close()
    numbers = [n for _, n in shown]
    assert numbers == list(range(numbers[0], numbers[0] + 30)), shown
    assert all(name == f"turns:{(n - 1) % 2}" for name, n in shown), shown
