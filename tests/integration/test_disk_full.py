"""A full disk never fails a worker (issue 12, point 2).

The state dir (logs, checkpoint) sits on a 2 MiB tmpfs that a filler file fills up. Workers
that print go on running: their lines are dropped and counted (``log_dropped``, an
``output``/``dropping`` event), the checkpoint that cannot be written shows in ``status``
and as an event, and both resume by themselves as soon as the filler is removed.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import pytest
from helpers import CI_ENV, wait_until

PRINTERS = 4
FULL_SECONDS = float(os.environ.get("SUPERVISE_DISK_FULL_SECONDS", "3"))  # the figure: 30


def events(sup, since: int = 0) -> list[dict]:
    out = sup.cli("events", "--no-follow", "--since", str(since)).stdout.splitlines()
    return [json.loads(line) for line in out]


def daemon_section(sup) -> dict:
    result = sup.cli("status", "--json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)["daemon"]


def fill(path: Path) -> None:
    """Write `path` until the filesystem it is on has no room left."""
    chunk = b"\0" * 65536
    with open(path, "wb", buffering=0) as f:
        while True:
            try:
                f.write(chunk)
            except OSError:
                break
    # Whatever a smaller write still finds room for: the disk is full to the byte.
    with open(path, "ab", buffering=0) as f:
        for size in (4096, 512, 1):
            try:
                while True:
                    f.write(b"\0" * size)
            except OSError:
                continue


@pytest.fixture
def small_disk(tmp_path):
    """A 2 MiB tmpfs, unmounted afterwards (CI runs as root)."""
    if os.geteuid() != 0:  # like a missing tool: CI runs as root, so there it fails
        (pytest.fail if os.environ.get(CI_ENV) else pytest.skip)("mounting a tmpfs needs root")
    mount = tmp_path / "disk"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mount)], check=True)
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def test_a_full_disk_fails_no_worker_and_logging_resumes_when_space_returns(supervisor, small_disk):
    sup = supervisor(f"""
        [supervise]
        state_dir = "{small_disk}/state"

        [apps.printer]
        command = ["{{python}}", "{{workers}}/chatty.py", "200"]
        instances = {PRINTERS}
        stop_timeout = "2s"

        [apps.quiet]
        command = "sleep 600"
        instances = 1
    """)
    before = {name: inst["pid"] for name, inst in sup.wait_all_running(PRINTERS + 1).items()}
    seq = events(sup)[-1]["seq"]
    filler = small_disk / "filler"
    fill(filler)

    # Every printer's output is dropped, and said to be.
    dropping = wait_until(lambda: (found := {e["name"] for e in events(sup, seq) if e.get("type") == "output"
                                             and e["event"] == "dropping"}) >= {f"printer:{i}" for i in range(PRINTERS)}
                          and found, 15, message="an output/dropping event for every printer")
    assert dropping
    # A change while the disk is full: the checkpoint cannot be written, and status says so.
    assert sup.cli("scale", "quiet", "2").returncode == 0
    failing = wait_until(lambda: not daemon_section(sup)["checkpoint"]["ok"] and daemon_section(sup)["checkpoint"],
                         10, message="status to show the checkpoint failing")
    assert "No space left" in failing["error"], failing
    assert [e for e in events(sup, seq) if e.get("type") == "checkpoint" and e["event"] == "failing"]
    # Lines go on being dropped and counted, and nobody is restarted meanwhile.
    counts = wait_until(lambda: (s := sup.status()) and all((s[f"printer:{i}"]["log_dropped"] or 0) > 50
                                                            for i in range(PRINTERS)) and s,
                        15, message="dropped lines counted in status")
    assert counts["quiet:1"]["state"] in ("starting", "running")
    full_until = time.monotonic() + FULL_SECONDS
    while time.monotonic() < full_until:  # the scenario: the disk stays full this long
        now = sup.status()
        assert all(now[name]["pid"] == pid and now[name]["restarts"] == 0 for name, pid in before.items()), now
        time.sleep(0.2)
    print(f"lines dropped while full: {sum(now[f'printer:{i}']['log_dropped'] for i in range(PRINTERS))}")

    seq = events(sup)[-1]["seq"]
    freed_at = time.time()
    filler.unlink()
    resumed = wait_until(lambda: (found := [e for e in events(sup, seq) if e.get("type") == "output"
                                            and e["event"] == "resumed"]) and len({e["name"] for e in found})
                         == PRINTERS and found, 10, message="output/resumed for every printer")
    lag = max(e["time"] for e in resumed) - freed_at
    print(f"logging resumed {lag:.3f}s after space returned")
    assert lag <= 1.0, f"logging resumed {lag:.3f}s after space returned"
    assert all(e["dropped_lines"] > 0 for e in resumed), resumed
    wait_until(lambda: daemon_section(sup)["checkpoint"]["ok"], 10, message="the checkpoint written again")
    assert [e for e in events(sup, seq) if e.get("type") == "checkpoint" and e["event"] == "recovered"]

    # The log says where lines are missing, and goes on after the gap.
    log = (small_disk / "state" / "logs").glob("printer*0*.log")
    text = b"".join(p.read_bytes() for p in log).decode(errors="replace")
    assert "lines of output dropped: No space left on device]" in text
    after = sup.status()
    assert all(after[name]["pid"] == pid and after[name]["restarts"] == 0 for name, pid in before.items()), after
    assert not [e for e in events(sup) if e.get("type") == "state" and e.get("to") in ("backoff", "crashed")]
