"""Resource exhaustion by one worker is contained: the daemon and the other apps run on.

A process leak (a slow fork bomb), a file-descriptor leak, a flood of
output, and a log file that cannot be written: each is stopped, bounded or
reported, never fatal to the daemon or to a neighbour.
"""

from __future__ import annotations

import json
import os

import psutil
from helpers import marked_processes, wait_until

NEIGHBOUR = """
[apps.calm]
command = ["{python}", "{workers}/sleeper.py"]
"""


def calm_pid(sup) -> int:
    return sup.wait_state("calm:0", "running")["pid"]


def test_a_process_leak_is_killed_whole_and_restarted(supervisor):
    sup = supervisor(NEIGHBOUR + """
    [apps.bomb]
    command = ["{python}", "{workers}/proc_leak.py"]
    max_processes = 20
    backoff = { initial = "1s", max = "5s" }
    """)
    calm = calm_pid(sup)
    inst = wait_until(lambda: (sup.status()["bomb:0"]["last_exit"] or {}).get("reason") == "processes"
                      and sup.status()["bomb:0"], timeout=20, message="the leak caught")
    assert inst["last_exit"]["signal"] == 9
    # Every process of the killed tree is gone (they ignored SIGTERM; the kill does not ask).
    daemon = psutil.Process(sup.proc.pid)
    wait_until(lambda: len([p for p in marked_processes(sup.marker) if p.pid != daemon.pid]) <= 2 + 20,
               timeout=10, message="the leaked processes killed")
    assert sup.status()["calm:0"]["pid"] == calm and sup.proc.poll() is None


def test_a_file_descriptor_leak_stays_in_its_worker(supervisor):
    sup = supervisor(NEIGHBOUR + """
    [apps.fds]
    command = ["{python}", "{workers}/fd_leak.py"]
    """)
    calm = calm_pid(sup)
    log = sup.dir / ".supervise" / "logs" / "fds.0.log"
    wait_until(lambda: log.exists() and "then: Too many open files" in log.read_text(), timeout=15)
    daemon = psutil.Process(sup.proc.pid)
    assert daemon.num_fds() < 200
    assert sup.cli("restart", "fds").returncode == 0  # the daemon still does its job
    assert sup.status()["calm:0"]["pid"] == calm


def test_an_output_flood_is_rotated_and_bounded(supervisor):
    sup = supervisor(NEIGHBOUR + """
    [apps.flood]
    command = ["{python}", "{workers}/flood.py"]
    env = { FLOOD_SECONDS = "2" }
    log_max_size = "1M"
    log_backups = 2
    """)
    calm = calm_pid(sup)
    logs = sup.dir / ".supervise" / "logs"
    current = logs / "flood.0.log"
    wait_until(lambda: current.exists() and b"flood over" in current.read_bytes()[-64:] or
               (logs / "flood.0.log.1").exists() and current.stat().st_size < 2**20, timeout=30)

    def bounded():
        # The daemon may rotate between the listing and a stat (a backup renamed away, or
        # over another): such a listing is stale, so look again rather than fail.
        try:
            sizes = {f.name: f.stat().st_size for f in logs.glob("flood.0.log*")}
        except FileNotFoundError:
            return None
        return len(sizes) <= 3 and all(size <= 2**20 for size in sizes.values()) and sizes
    sizes = wait_until(bounded, timeout=20, message="the flood's files rotated down to log_max_size")
    assert set(sizes) <= {"flood.0.log", "flood.0.log.1", "flood.0.log.2"}
    assert sup.status()["calm:0"]["pid"] == calm and sup.cli("status").returncode == 0


def test_a_log_file_that_cannot_be_opened_or_written_fails_no_worker_and_is_reported(supervisor, tmp_path):
    sup = supervisor(NEIGHBOUR + """
    [apps.nolog]
    command = ["{python}", "{workers}/sleeper.py"]
    [apps.full]
    command = ["{python}", "{workers}/sleeper.py"]
    """, start=False)
    logs = tmp_path / ".supervise" / "logs"
    logs.mkdir(parents=True)
    os.chmod(tmp_path / ".supervise", 0o700)
    (logs / "nolog.0.log").mkdir()  # cannot be opened as a file, not even by root
    (logs / "full.0.log").symlink_to("/dev/full")  # opens, but every write fails: a full disk
    sup.start()
    calm = calm_pid(sup)

    def dropping() -> dict[str, str]:
        found = sup.cli("events", "--no-follow").stdout.splitlines()
        return {e["name"]: e["error"] for e in map(json.loads, found)
                if e.get("type") == "output" and e.get("event") == "dropping"}
    errors = wait_until(lambda: (found := dropping()).keys() >= {"nolog:0", "full:0"} and found, timeout=15,
                        message="both workers' output reported as dropped")
    assert "nolog.0.log" in errors["nolog:0"] and "Is a directory" in errors["nolog:0"], errors
    assert "No space left on device" in errors["full:0"], errors
    status = wait_until(lambda: (s := sup.status()) and s["full:0"]["log_dropped"] == 1
                        and s["nolog:0"]["log_dropped"] == 1 and s, timeout=10, message="one line dropped each")
    assert all(status[name]["state"] == "running" and status[name]["restarts"] == 0 for name in ("nolog:0", "full:0"))
    assert status["calm:0"]["pid"] == calm and sup.proc.poll() is None
