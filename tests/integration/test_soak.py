"""A bounded soak: several apps under chaos plus random operator commands, then the invariants.

15 s of faults by default (CI runs the whole suite on two cores in under 10 minutes); SUPERVISE_SOAK_SECONDS
makes it longer. Checked all along: the daemon never dies, and its memory and
file descriptors stay within a small bound. Checked at the end: every app
converges back to its count once the chaos stops, no zombie or orphan is
left, every exit was given a reason, and the event history has no gap.

Every random choice comes from one seed, printed at the start (pytest shows
it with a failure's captured output): the operator commands and their
arguments, and the `supervise chaos --seed` of each chaos run (its victims
and their timing). SUPERVISE_SOAK_SEED=N replays a run's choices. Process
timing is the machine's, so a replay repeats the schedule, not every
interleaving.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import sys
import time
from pathlib import Path

import psutil
from helpers import free_port, marked_processes, wait_until, zombie_children

SOAK_SECONDS = float(os.environ.get("SUPERVISE_SOAK_SECONDS", "15"))
EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
REASONS = {"crashed", "exited", "hung", "memory", "start-timeout", "reload", "stopped", "lost"}
COUNTS = {"b": 4, "w": 3, "web": 2}
CHAOS = ((("b", "w", "web"), "4/s", "KILL"), (("b",), "1/s", "STOP"), (("w",), "1/s", "TERM"))


def soak_seed() -> int:
    """SUPERVISE_SOAK_SEED, to replay a run; else a fresh seed (printed by the test either way)."""
    text = os.environ.get("SUPERVISE_SOAK_SEED", "").strip()
    return int(text) if text else random.SystemRandom().randrange(2**31)


def config(port: int) -> str:
    return f"""
    [apps.b]
    command = ["{{python}}", "{{workers}}/beater.py"]
    instances = 4
    readiness = "heartbeat"
    heartbeat_timeout = "1s"
    stop_timeout = "2s"
    backoff = {{ initial = "20ms", max = "500ms" }}
    crash_loop = {{ max_restarts = 100000, window = "10s" }}
    chaos = true

    [apps.w]
    command = ["{{python}}", "{{workers}}/sleeper.py"]
    instances = 3
    stop_timeout = "2s"
    backoff = {{ initial = "20ms", max = "500ms" }}
    crash_loop = {{ max_restarts = 100000, window = "10s" }}
    chaos = true

    [apps.web]
    command = ["{{python}}", "web.py"]
    instances = 2
    readiness = "heartbeat"
    listen = ["127.0.0.1:{port}"]
    stop_timeout = "5s"
    backoff = {{ initial = "20ms", max = "500ms" }}
    crash_loop = {{ max_restarts = 100000, window = "10s" }}
    chaos = true
    """


def footprint(daemon: psutil.Process) -> tuple[int, int]:
    return daemon.memory_info().rss, daemon.num_fds()


def test_soak_under_chaos_and_random_commands(supervisor, tmp_path):
    seed = soak_seed()
    print(f"\nsoak seed {seed} (replay with SUPERVISE_SOAK_SEED={seed})", flush=True)
    rng = random.Random(seed)
    shutil.copy(EXAMPLES / "web.py", tmp_path / "web.py")
    sup = supervisor(config(free_port()))
    sup.wait_all_running(sum(COUNTS.values()))
    daemon = psutil.Process(sup.proc.pid)
    start_rss, start_fds = footprint(daemon)
    peak_rss, peak_fds = start_rss, start_fds
    chaos = [subprocess.Popen([sys.executable, "-m", "supervise", "chaos", *apps, "--kill-rate", rate, "--signal",
                               sig, "--duration", f"{SOAK_SECONDS}s", "--seed", str(rng.randrange(2**31)),
                               "-c", str(sup.config)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=sup.env, cwd=sup.dir)
             for apps, rate, sig in CHAOS]
    commands = 0
    try:
        end = time.monotonic() + SOAK_SECONDS
        while time.monotonic() < end:
            verb = rng.choice(["scale", "reload", "restart", "stop-start", "status"])
            if verb == "scale":
                result = sup.cli("scale", "b", str(rng.randint(1, 6)), "--timeout", "20")
            elif verb == "reload":
                result = sup.cli("reload", rng.choice(["web", "b"]), "--timeout", "30")
            elif verb == "restart":
                result = sup.cli("restart", f"w:{rng.randint(0, 2)}", "--timeout", "20")
            elif verb == "stop-start":
                result = sup.cli("stop", "w:2", "--timeout", "20")
                if result.returncode == 0:
                    result = sup.cli("start", "w:2", "--timeout", "20")
            else:
                result = sup.cli("status", "--json")
            commands += 1
            # Under chaos an operation may legitimately fail (exit 1: a rollout's new
            # instance was killed); a crash, a hang or bad usage may not.
            assert result.returncode in (0, 1), (verb, result.returncode, result.stderr)
            assert sup.proc.poll() is None, "the daemon died"
            rss, fds = footprint(daemon)
            peak_rss, peak_fds = max(peak_rss, rss), max(peak_fds, fds)
        outputs = [proc.communicate(timeout=SOAK_SECONDS + 30) for proc in chaos]
    finally:
        for proc in chaos:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    assert all(proc.returncode == 0 for proc in chaos), [err for _, err in outputs]
    harms = sum(out.count(" -> ") for out, _ in outputs)

    # Chaos over: back to the configured counts, and everything converges.
    stopped = time.monotonic()
    assert sup.cli("scale", "b", str(COUNTS["b"]), "--timeout", "30").returncode in (0, 1)
    assert sup.cli("start", "b", "w", "web", "--timeout", "60").returncode == 0

    def converged():
        status = sup.status()
        counts = {app: sum(1 for n, i in status.items() if n.startswith(app + ":") and i["state"] == "running")
                  for app in COUNTS}
        return counts == COUNTS and len(status) == sum(COUNTS.values())
    wait_until(converged, timeout=60, interval=0.1, message="every app back at its count")
    convergence = time.monotonic() - stopped
    status = sup.status()

    # No zombie under the daemon, no process of ours that the daemon does not know.
    def clean():
        zombies = zombie_children(daemon)
        ours = {p.pid for p in marked_processes(sup.marker)} - {daemon.pid}
        return not zombies and ours == {i["pid"] for i in sup.status().values()}
    wait_until(clean, timeout=20, message="no zombie and no orphan")

    events = [json.loads(line) for line in sup.cli("events", "--no-follow").stdout.splitlines()]
    seqs = [e["seq"] for e in events]
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs))), "a gap in the event history"
    assert seqs[0] == 1 or len(seqs) >= 10_000, "events dropped although the history was not full"
    exits = [e for e in events if e["type"] == "state" and "exit" in e]
    assert exits and all(e["exit"]["reason"] in REASONS for e in exits), "an exit without a reason"
    end_rss, end_fds = footprint(daemon)
    assert sup.proc.poll() is None and daemon.pid == sup.proc.pid, "the daemon never crashed"
    assert end_fds - start_fds <= 16, f"fds grew from {start_fds} to {end_fds}"
    assert end_rss - start_rss <= 24 * 2**20, f"RSS grew from {start_rss >> 20} MiB to {end_rss >> 20} MiB"
    print(f"\nsoak (seed {seed}): {SOAK_SECONDS:g}s, {sum(COUNTS.values())} instances, {harms} faults "
          f"({harms / SOAK_SECONDS * 60:.0f}/min), {commands} commands, {len(exits)} exits, "
          f"converged {convergence:.2f}s after the chaos; daemon RSS {start_rss >> 20} -> {end_rss >> 20} MiB "
          f"(peak {peak_rss >> 20}), fds {start_fds} -> {end_fds} (peak {peak_fds}); "
          f"restarts {sum(i['restarts'] for i in status.values())}")
