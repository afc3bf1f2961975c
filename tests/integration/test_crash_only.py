"""Crash-only: when the core itself fails, the daemon exits at once and the next one adopts every worker.

A core that raised half-way through an event may have lost a spawn or
doubled one; going on would run the workers from a state nobody can vouch
for. So the daemon writes a checkpoint and exits (70, EX_SOFTWARE), leaving
its workers running; under systemd `Restart=` starts the next daemon, which
adopts them without restarting any.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from helpers import file_text, gone, wait_until

from supervise.runtime import checkpoint

FAULTY = Path(__file__).parent / "fixtures" / "daemon_with_faulty_core.py"

CONFIG = """
[apps.w]
command = ["sleep", "300"]
instances = 3
"""


def test_a_core_failure_ends_the_daemon_and_the_next_one_adopts_every_worker(supervisor):
    sup = supervisor(CONFIG, start=False)
    sup.proc = subprocess.Popen([sys.executable, str(FAULTY), str(sup.config)], stdout=sup.log.open("ab"),
                                stderr=subprocess.STDOUT, env=sup.env, cwd=sup.dir)
    wait_until(lambda: sup.cli("status").returncode == 0, timeout=15, message="the daemon to answer")
    before = {name: inst["pid"] for name, inst in sup.wait_all_running(3).items()}

    answer = sup.cli("status", "BOOM")
    assert answer.returncode != 0
    assert sup.proc.wait(15) == 70, file_text(sup.log)
    log = file_text(sup.log)
    assert "the core failed on an event" in log and "a planted bug in the core" in log
    assert not any(gone(pid) for pid in before.values()), "a worker died with the daemon"
    record = checkpoint.read(sup.dir / ".supervise" / "checkpoint.json")
    assert record is not None and {r.pid for r in record.instances} == set(before.values())

    sup.start()
    after = sup.wait_all_running(3)
    assert {name: inst["pid"] for name, inst in after.items()} == before
    assert all(inst["restarts"] == 0 for inst in after.values())
