"""File descriptor limits with real daemons (issue 12, part 3).

A daemon started with a low soft RLIMIT_NOFILE raises it to its hard limit,
so it can run more instances than the soft limit allows, and gives its
workers the soft limit it started with, or an app's own ``rlimits``. A
spawn that fails because the daemon itself is out of descriptors says so.
"""

from __future__ import annotations

import resource
import subprocess
import sys
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from helpers import Supervisor, kill_marked, wait_until

LOW_SOFT = 256
_, HARD = resource.getrlimit(resource.RLIMIT_NOFILE)
INSTANCES = 300  # the scenario: 235 of them ran before, with a soft limit of 256
ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.skipif(HARD != resource.RLIM_INFINITY and HARD < 4 * INSTANCES,
                                 reason=f"needs a hard RLIMIT_NOFILE of {4 * INSTANCES}, have {HARD}")

# Sets the soft limit (argv[1]) and the hard one (argv[2]), then runs argv[3:]: `prlimit` without util-linux.
WITH_LIMIT = "import os, resource, sys; resource.setrlimit(resource.RLIMIT_NOFILE, " \
             "(int(sys.argv[1]), int(sys.argv[2]))); os.execv(sys.argv[3], sys.argv[3:])"


def limited(argv: list[str], soft: int, hard: int = HARD) -> list[str]:
    return [sys.executable, "-c", WITH_LIMIT, str(soft), str(hard), *argv]


class LimitedSupervisor(Supervisor):
    """A daemon started with a soft RLIMIT_NOFILE of LOW_SOFT (and the hard limit of the tests)."""

    def start(self, wait: bool = True) -> Supervisor:
        self.proc = subprocess.Popen(
            limited([sys.executable, "-m", "supervise", "run", "-c", str(self.config)], LOW_SOFT),
            stdout=self.log.open("ab"), stderr=subprocess.STDOUT, env=self.env, cwd=self.dir,
        )
        if wait:
            wait_until(lambda: self.cli("status").returncode == 0 or self.proc.poll() is not None,
                       timeout=15, message="the daemon to answer")
            assert self.proc.poll() is None, f"daemon exited early:\n{self.log.read_text()}"
        return self

    def assert_unharmed(self) -> None:
        """Still running, and never out of descriptors (libzmq aborts an accept that finds none)."""
        assert self.proc.poll() is None, f"the daemon died:\n{self.log.read_text()[-2000:]}"
        assert "Too many open files" not in self.log.read_text()


@pytest.fixture
def low_limit_supervisor(tmp_path: Path) -> Iterator[Callable[[str], LimitedSupervisor]]:
    made: list[LimitedSupervisor] = []

    def make(config: str) -> LimitedSupervisor:
        sup = LimitedSupervisor(tmp_path, config)
        made.append(sup)
        sup.start()
        return sup

    yield make
    leaked = [pid for sup in made for pid in sup.cleanup()]
    assert not leaked, f"processes left behind after the test: {leaked}"


def nofile_of(pid: int) -> tuple[str, str]:
    return limit_of(pid, "Max open files")


def limit_of(pid: int, name: str) -> tuple[str, str]:
    """(soft, hard) of one line of /proc/<pid>/limits, as written there ("unlimited" or a number)."""
    for line in Path(f"/proc/{pid}/limits").read_text().splitlines():
        if line.startswith(name):
            soft, hard = line[len(name):].split()[:2]
            return soft, hard
    raise AssertionError(f"no {name!r} in /proc/{pid}/limits")


def test_a_daemon_started_with_a_low_soft_limit_runs_more_instances_than_it(low_limit_supervisor):
    sup = low_limit_supervisor(f"""
        [apps.sleep]
        command = "sleep 60"
        instances = {INSTANCES}
        backoff = {{ initial = "5s" }}
    """)
    status = sup.wait_all_running(INSTANCES, timeout=60)
    assert [name for name, inst in status.items() if inst["restarts"]] == []
    assert "spawn failed" not in sup.log.read_text()
    assert nofile_of(sup.proc.pid) == (str(HARD), str(HARD))
    assert "raised the daemon's file descriptor limit" in sup.log.read_text()
    # Every worker starts with the soft limit the daemon started with (a few checked: /proc reads are slow).
    for inst in list(status.values())[::60]:
        assert nofile_of(inst["pid"]) == (str(LOW_SOFT), str(HARD))


def test_workers_get_the_original_soft_limit_or_their_apps_rlimits(low_limit_supervisor):
    sup = low_limit_supervisor("""
        [apps.plain]
        command = "sleep 60"

        [apps.wide]
        command = "sleep 60"
        rlimits = { nofile = 4096, core = 0 }

        [apps.greedy]
        command = "sleep 60"
        rlimits = { nofile = 100000000, nproc = "unlimited" }
    """)
    status = sup.wait_all_running(3)
    assert nofile_of(status["plain:0"]["pid"]) == (str(LOW_SOFT), str(HARD))
    assert nofile_of(status["wide:0"]["pid"]) == ("4096", str(HARD))
    assert limit_of(status["wide:0"]["pid"], "Max core file size")[0] == "0"
    # Above the hard limit: clamped to it, and the daemon says so once.
    assert nofile_of(status["greedy:0"]["pid"]) == (str(HARD), str(HARD))
    nproc_hard = limit_of(sup.proc.pid, "Max processes")[1]
    assert limit_of(status["greedy:0"]["pid"], "Max processes")[0] == nproc_hard
    log = sup.log.read_text()
    assert "rlimits.nofile = 100000000 is above the daemon's hard limit" in log
    assert ("rlimits.nproc = unlimited is above" in log) == (nproc_hard != "unlimited")


SPAWN_OUT_OF_FDS = textwrap.dedent("""
    import os, resource, sys
    from pathlib import Path
    from supervise.runtime import process
    spec = process.SpawnSpec(argv=("sleep", "60"), cwd=Path("."), env=dict(os.environ),
                             output=Path(sys.argv[1]), name="t:0")
    room = int(sys.argv[2])  # descriptors left free: 0 fails at the log file, 1 at Popen's
    in_use = len(os.listdir("/proc/self/fd")) - 1  # the listing's own descriptor is closed again
    resource.setrlimit(resource.RLIMIT_NOFILE, (in_use + room, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))
    try:
        child = process.spawn(spec)
    except process.SpawnError as exc:
        print(exc)
    else:
        os.kill(child.pid, 9)
        print("spawned")
""")


@pytest.mark.parametrize(("room", "step"), [(0, "cannot open log file"), (1, "cannot start 'sleep'")])
def test_a_spawn_the_daemon_has_no_descriptors_for_says_so(tmp_path, room, step):
    result = subprocess.run([sys.executable, "-c", SPAWN_OUT_OF_FDS, str(tmp_path / "t.log"), str(room)],
                            capture_output=True, text=True, timeout=30, cwd=ROOT)
    assert result.returncode == 0, result.stderr
    message = result.stdout.strip()
    assert message.startswith("the daemon is out of file descriptors (soft limit "), message
    assert step in message and "Too many open files" in message, message


def test_check_warns_when_the_instances_cannot_fit_the_hard_limit(tmp_path):
    sup = Supervisor(tmp_path, '[apps.many]\ncommand = "sleep 60"\ninstances = 200\n'
                               '[apps.wide]\ncommand = "sleep 60"\nrlimits = { nofile = 4096 }\n')
    try:
        def check(soft: int, hard: int) -> subprocess.CompletedProcess:
            argv = limited([sys.executable, "-m", "supervise", "check", "-c", str(sup.config)], soft, hard)
            return subprocess.run(argv, capture_output=True, text=True, env=sup.env, cwd=tmp_path, timeout=30)

        roomy = check(256, 4096)
        assert roomy.returncode == 0 and "warning" not in roomy.stdout + roomy.stderr, roomy
        tight = check(256, 300)
        assert tight.returncode == 0, tight
        assert "ok (2 apps, 201 instances)" in tight.stdout
        lines = tight.stderr.splitlines()
        assert any("about 923 file descriptors" in line and "hard limit 300" in line for line in lines), lines
        assert any("apps.wide.rlimits.nofile = 4096 is above the hard limit 300" in line for line in lines), lines
    finally:
        assert not kill_marked(sup.marker)


def refused_for_capacity(instance: dict) -> bool:
    """The instance's last spawn was refused for the daemon's descriptor capacity (limits.describe_capacity)."""
    return "runs at most" in ((instance["last_exit"] or {}).get("error") or "")


class HardLimitedSupervisor(Supervisor):
    """A daemon whose hard RLIMIT_NOFILE is low too: it cannot raise its way out."""

    limit = 200

    def start(self, wait: bool = True) -> Supervisor:
        self.proc = subprocess.Popen(
            limited([sys.executable, "-m", "supervise", "run", "-c", str(self.config)], self.limit, self.limit),
            stdout=self.log.open("ab"), stderr=subprocess.STDOUT, env=self.env, cwd=self.dir,
        )
        wait_until(lambda: self.cli("status").returncode == 0 or self.proc.poll() is not None,
                   timeout=15, message="the daemon to answer")
        assert self.proc.poll() is None, f"daemon exited early:\n{self.log.read_text()}"
        return self

    def assert_unharmed(self) -> None:
        """Still running, and never out of descriptors (libzmq aborts an accept that finds none)."""
        assert self.proc.poll() is None, f"the daemon died:\n{self.log.read_text()[-2000:]}"
        assert "Too many open files" not in self.log.read_text()


def test_more_heartbeat_workers_than_descriptors_are_refused_and_never_abort_the_daemon(tmp_path):
    """Every worker's heartbeat connection takes one of the daemon's descriptors, and an accept with
    none left aborts it (libzmq). So it runs only as many instances as its limit has room for, with
    one for each connection; the others wait, said so, and start once room is made."""
    capacity = (HardLimitedSupervisor.limit - 64) // 5  # limits: BASE_FDS, and 3 per instance + 2 for its open log
    sup = HardLimitedSupervisor(tmp_path, f"""
    [apps.beat]
    command = ["{{python}}", "{{workers}}/beater.py"]
    instances = {capacity + 10}
    readiness = "heartbeat"
    heartbeat_timeout = "10s"
    stop_timeout = "5s"
    """)
    try:
        sup.start()
        def settled() -> dict | None:
            status = sup.status()
            running = [i for i in status.values() if i["state"] == "running"]
            return status if len(running) == capacity else None
        status = wait_until(settled, 60, interval=0.2, message=f"{capacity} instances running")
        refused = [i for i in status.values() if i["state"] != "running"]
        assert len(refused) == 10
        assert all(refused_for_capacity(i) for i in refused), refused
        sup.assert_unharmed()
        # Room made: a scale down to the capacity leaves every instance running.
        assert sup.cli("scale", "beat", str(capacity)).returncode == 0
        sup.wait_all_running(capacity, timeout=30)
        sup.assert_unharmed()
    finally:
        sup.cleanup()
        assert not kill_marked(sup.marker)


def test_a_notify_socket_takes_room_too(tmp_path):
    """An instance with readiness = "notify" holds one more descriptor, its notify socket: fewer of them fit."""
    per_instance = 5 + 1  # limits: 3 per instance, 2 for its open log, and the notify socket
    capacity = (HardLimitedSupervisor.limit - 64) // per_instance
    sup = HardLimitedSupervisor(tmp_path, f"""
    [apps.quiet]
    command = ["{{python}}", "{{workers}}/sleeper.py"]
    instances = {capacity + 8}
    readiness = "notify"
    start_timeout = "1h"
    stop_timeout = "5s"
    """)
    try:
        sup.start()
        def settled() -> dict | None:
            status = sup.status()
            started = [i for i in status.values() if i["pid"] is not None]
            refused = [i for i in status.values() if refused_for_capacity(i)]
            return status if len(started) == capacity and len(refused) == 8 else None
        wait_until(settled, 60, interval=0.2, message=f"{capacity} instances started, 8 refused")
        sup.assert_unharmed()
    finally:
        sup.cleanup()
        assert not kill_marked(sup.marker)
