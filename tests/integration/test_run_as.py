"""Running apps as another user and group, with a umask, and through a shell (issue 14).

The pure decisions (who may switch, what a name resolves to) are tested as
functions; spawning as another user needs root and real processes: as root,
the tests read the worker's ids from /proc; elsewhere they fail under .ci/run
(which runs as root) and are skipped otherwise. The workers run /bin/sh and
coreutils, not this interpreter: nobody may not be able to reach it (a
Python under /root).
"""

from __future__ import annotations

import dataclasses
import grp
import os
import pwd
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import psutil
import pytest
from helpers import CI_ENV, Supervisor, file_text, gone, wait_until

from supervise.runtime import identity, process
from supervise.runtime.identity import Identity, IdentityError
from supervise.runtime.process import SpawnError, SpawnSpec

ROOT = Path(__file__).resolve().parents[2]
NOBODY = pwd.getpwnam("nobody")
TIMEOUT = 10.0


def require_root() -> None:
    if os.geteuid() == 0:
        return
    message = "switching users needs root"
    if os.environ.get(CI_ENV) == "1":
        pytest.fail(message + ": .ci/run runs the tests as root")
    pytest.skip(message)


@pytest.fixture
def as_root() -> None:
    require_root()


@pytest.fixture
def nobodys_dir(as_root: None) -> Iterator[Path]:
    """A directory nobody owns and can reach (tmp_path lies under a 0700 directory of root's)."""
    path = Path(tempfile.mkdtemp(prefix="supervise-run-as-", dir="/tmp"))
    try:
        os.chmod(path, 0o755)
        os.chown(path, NOBODY.pw_uid, NOBODY.pw_gid)
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def private_dir(as_root: None) -> Iterator[Path]:
    """A directory of root's, mode 0700, with a world-open directory and script inside."""
    path = Path(tempfile.mkdtemp(prefix="supervise-private-", dir="/tmp"))
    try:
        os.chmod(path, 0o700)
        (path / "open").mkdir(mode=0o755)
        script = path / "open" / "run.sh"
        script.write_text("#!/bin/sh\nexec \"$@\"\n")
        script.chmod(0o755)
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


class Spawner:
    """process.spawn for the tests: every child is killed and reaped (by pid: no reap(-1)) after."""

    def __init__(self) -> None:
        self.children: list[process.Child] = []

    def spawn(self, spec: SpawnSpec) -> process.Child:
        child = process.spawn(spec)
        self.children.append(child)
        return child

    def cleanup(self) -> None:
        for child in self.children:
            try:
                os.killpg(child.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            os.waitpid(child.pid, 0)
            if child.pidfd is not None:
                os.close(child.pidfd)


@pytest.fixture
def spawner() -> Iterator[Spawner]:
    made = Spawner()
    try:
        yield made
    finally:
        made.cleanup()


def spec(*argv: str, cwd: Path, output: Path, env: dict[str, str] | None = None, **fields) -> SpawnSpec:
    return SpawnSpec(argv=argv, cwd=cwd, env=env if env is not None else {"PATH": os.defpath},
                     output=output, name="web:0", **fields)


def status_ids(pid: int) -> dict[str, list[int]]:
    """Uid, Gid (real, effective, saved, fs) and Groups of /proc/<pid>/status."""
    ids = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("Uid", "Gid", "Groups"):
            ids[key] = [int(n) for n in value.split()]
    return ids


# -- who may switch, and to whom (pure) -------------------------------------------------


WWW = Identity(uid=33, gid=33, groups=(33,), label="user www-data", user_name="www-data", home="/var/www")


def test_a_daemon_that_is_not_root_refuses_another_user_naming_instance_user_and_its_uid() -> None:
    assert identity.refusal("web:0", WWW, euid=1000, egid=1000, privileged=False) == \
        "cannot run web:0 as user www-data: the daemon runs as uid 1000, not root"


def test_a_daemon_that_is_not_root_may_run_an_app_as_its_own_user_and_group() -> None:
    own = Identity(uid=1000, gid=1000, groups=(1000, 27), label="user alice")
    assert identity.refusal("web:0", own, euid=1000, egid=1000, privileged=False) is None
    other_group = Identity(uid=1000, gid=27, groups=(27,), label="user alice, group sudo")
    assert "the daemon runs as uid 1000, not root" in identity.refusal("web:0", other_group, 1000, 1000, False)


def test_a_privileged_daemon_may_run_anyone_and_root_without_capabilities_is_told_so() -> None:
    assert identity.refusal("web:0", WWW, euid=0, egid=0, privileged=True) is None
    assert identity.refusal("web:0", WWW, euid=1000, egid=1000, privileged=True) is None  # CAP_SETUID, CAP_SETGID
    refused = identity.refusal("web:0", WWW, euid=0, egid=0, privileged=False)
    assert refused is not None and "runs as root but without CAP_SETUID and CAP_SETGID" in refused


def test_a_user_without_group_gets_its_primary_group_and_its_supplementary_groups() -> None:
    who = identity.resolve("nobody", None)
    assert who is not None
    assert (who.uid, who.gid, who.home, who.user_name) == (NOBODY.pw_uid, NOBODY.pw_gid, NOBODY.pw_dir, "nobody")
    assert who.groups == tuple(os.getgrouplist("nobody", NOBODY.pw_gid))
    by_uid = identity.resolve(str(NOBODY.pw_uid), None)  # a uid as text finds the same entry
    assert by_uid == dataclasses.replace(who, label=f"user {NOBODY.pw_uid}")
    assert identity.environment(who) == {"HOME": NOBODY.pw_dir, "USER": "nobody", "LOGNAME": "nobody"}


def test_a_group_alone_keeps_the_daemons_user_and_groups() -> None:
    who = identity.resolve(None, "0")
    assert who == Identity(uid=None, gid=0, groups=None, label="group 0")
    assert identity.environment(who) == {}
    assert identity.resolve(None, None) is None


def test_unknown_names_are_errors_naming_them() -> None:
    with pytest.raises(IdentityError, match="unknown user 'no-such-user-x7'"):
        identity.resolve("no-such-user-x7", None)
    with pytest.raises(IdentityError, match="unknown group 'no-such-group-x7'"):
        identity.resolve("nobody", "no-such-group-x7")
    with pytest.raises(IdentityError, match="user 4000000 has no entry .* set group too"):
        identity.resolve("4000000", None)
    bare = identity.resolve("4000000", "4000000")  # ids need no entry, given both
    assert bare == Identity(uid=4000000, gid=4000000, groups=(4000000,), label="user 4000000, group 4000000")
    assert identity.environment(bare) == {"HOME": "/", "USER": "4000000", "LOGNAME": "4000000"}


# -- spawning as another user (root) ------------------------------------------------------


def test_a_worker_runs_with_the_users_ids_groups_umask_and_home(spawner: Spawner, nobodys_dir: Path) -> None:
    env = {"PATH": os.defpath, "HOME": "/root", "USER": "root", "KEEP": "1"}
    script = "touch made; mkdir made.d; exec sleep 1000"
    child = spawner.spawn(spec("/bin/sh", "-c", script, cwd=nobodys_dir, output=nobodys_dir / "out.log", env=env,
                               umask=0o027).run_as("nobody", None))
    ids = status_ids(child.pid)
    assert ids["Uid"] == [NOBODY.pw_uid] * 4
    assert ids["Gid"] == [NOBODY.pw_gid] * 4
    assert sorted(ids["Groups"]) == sorted(set(os.getgrouplist("nobody", NOBODY.pw_gid)))
    made = nobodys_dir / "made"
    wait_until(lambda: (nobodys_dir / "made.d").exists(), TIMEOUT)
    assert stat.S_IMODE(made.stat().st_mode) == 0o640  # 0666 & ~027
    assert stat.S_IMODE((nobodys_dir / "made.d").stat().st_mode) == 0o750
    assert made.stat().st_uid == NOBODY.pw_uid
    environ = process.environ_of(child.pid)
    assert (environ["HOME"], environ["USER"], environ["LOGNAME"]) == (NOBODY.pw_dir, "nobody", "nobody")
    assert environ["KEEP"] == "1"


def test_the_apps_own_home_wins_over_the_users(spawner: Spawner, nobodys_dir: Path) -> None:
    env = {"PATH": os.defpath, "HOME": "/srv/app", "USER": "root"}
    child = spawner.spawn(spec("sleep", "1000", cwd=nobodys_dir, output=nobodys_dir / "out.log", env=env)
                          .run_as("nobody", None, keep={"HOME"}))
    environ = process.environ_of(child.pid)
    assert (environ["HOME"], environ["USER"]) == ("/srv/app", "nobody")


def test_a_umask_alone_applies_without_a_user(spawner: Spawner, nobodys_dir: Path) -> None:
    child = spawner.spawn(spec("/bin/sh", "-c", "touch made; exec sleep 1000", cwd=nobodys_dir,
                               output=nobodys_dir / "out.log", umask=0o077))
    wait_until(lambda: (nobodys_dir / "made").exists(), TIMEOUT)
    assert stat.S_IMODE((nobodys_dir / "made").stat().st_mode) == 0o600
    assert status_ids(child.pid)["Uid"] == [0] * 4


def test_the_daemons_own_user_switches_nothing(as_root: None, tmp_path: Path) -> None:
    base = spec("true", cwd=tmp_path, output=tmp_path / "out.log", env={"HOME": "/x"})
    assert base.run_as("root", None) is base  # no user, group or extra_groups: Popen keeps vfork
    assert base.run_as("root", "root") is base


def test_an_unknown_user_at_spawn_time_is_a_spawn_error_naming_it(tmp_path: Path) -> None:
    with pytest.raises(SpawnError, match="cannot run web:0: unknown user 'gone-since-load-x7'"):
        spec("true", cwd=tmp_path, output=tmp_path / "out.log").run_as("gone-since-load-x7", None)


def test_a_cwd_the_user_cannot_enter_is_refused_saying_where(spawner: Spawner, private_dir: Path) -> None:
    cwd = private_dir / "open"
    with pytest.raises(SpawnError) as raised:
        spawner.spawn(spec("sleep", "1000", cwd=cwd, output=private_dir / "out.log").run_as("nobody", None))
    assert str(raised.value) == (f"cannot run web:0 as user nobody: it cannot enter cwd {cwd} ({private_dir} is "
                                 "mode 0700, owned by root:root; it needs x there)")


def test_a_launcher_or_command_the_user_cannot_execute_is_refused(spawner: Spawner, private_dir: Path,
                                                                     nobodys_dir: Path) -> None:
    script = private_dir / "open" / "run.sh"
    with pytest.raises(SpawnError, match=f"cannot execute the launcher {script} .*{private_dir} is mode 0700"):
        spawner.spawn(spec("sleep", "1000", cwd=nobodys_dir, output=nobodys_dir / "out.log",
                           launcher=(str(script),)).run_as("nobody", None))
    with pytest.raises(SpawnError, match=f"cannot execute the command {script} "):
        spawner.spawn(spec(str(script), cwd=nobodys_dir, output=nobodys_dir / "out.log").run_as("nobody", None))


def test_the_listen_and_limits_launchers_run_as_the_user(spawner: Spawner, nobodys_dir: Path) -> None:
    from supervise.runtime import limits
    from supervise.runtime.listeners import Listeners

    listeners = Listeners()
    try:
        listeners.bind("127.0.0.1:0")
        fds = listeners.fds(("127.0.0.1:0",))
        rlimits = ((limits.RESOURCES["nofile"], 512, limits.nofile().hard),)
        child = spawner.spawn(spec("/bin/sh", "-c", 'echo "$LISTEN_PID $$" > pids; exec sleep 1000', cwd=nobodys_dir,
                                   output=nobodys_dir / "out.log", pass_fds=fds, launcher=listeners.launcher(fds),
                                   rlimits=rlimits).run_as("nobody", None))
        assert file_text(nobodys_dir / "pids").split() == [str(child.pid)] * 2
        assert status_ids(child.pid)["Uid"] == [NOBODY.pw_uid] * 4
        assert "Max open files            512" in Path(f"/proc/{child.pid}/limits").read_text()
        assert os.readlink(f"/proc/{child.pid}/fd/3").startswith("socket:")  # the listener, moved to 3
    finally:
        listeners.close()


NOT_ROOT_SCENARIO = """
import os, sys
from pathlib import Path
from supervise.runtime import process
from supervise.runtime.identity import Identity

root = Identity(uid=0, gid=0, groups=(0,), label="user root", user_name="root", home="/root")
out = os.open(os.devnull, os.O_WRONLY)
spec = process.SpawnSpec(argv=("true",), cwd=Path("/"), env={}, output=out, name="web:0", identity=root)
os.setgroups([])
os.setgid(65534)
os.setuid(65534)  # the daemon lost root after its config was checked
try:
    process.spawn(spec)
except process.SpawnError as exc:
    print(exc)
else:
    print("spawned")
"""


def test_a_daemon_no_longer_root_fails_the_spawn_clearly(as_root: None) -> None:
    out = subprocess.run([sys.executable, "-c", NOT_ROOT_SCENARIO], capture_output=True, text=True, timeout=30,
                         env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "cannot run web:0 as user root: the daemon runs as uid 65534, not root"


# -- a whole daemon -----------------------------------------------------------------------------


@pytest.fixture
def daemon(supervisor: Callable[..., Supervisor]) -> Callable[[str], Supervisor]:
    """supervisor(config), failing clearly where the loader does not accept the run-as settings yet."""
    def make(config: str) -> Supervisor:
        sup = supervisor(config, start=False)
        checked = sup.cli("check")
        assert checked.returncode == 0, f"the config is refused:\n{checked.stdout}{checked.stderr}"
        return sup.start()
    return make


def test_an_app_runs_as_its_user_with_its_umask_and_home(daemon: Callable[[str], Supervisor],
                                                          nobodys_dir: Path) -> None:
    sup = daemon(f"""
        [apps.web]
        command = ["/bin/sh", "-c", "touch made; exec sleep 1000"]
        cwd = "{nobodys_dir}"
        user = "nobody"
        umask = 0o027

        [apps.own]
        command = "sleep 1000"
        cwd = "{nobodys_dir}"
        user = "nobody"
        group = "{grp.getgrgid(0).gr_name}"
        env = {{ HOME = "/srv/own" }}
    """)
    status = sup.wait_all_running(2)
    web, own = status["web:0"]["pid"], status["own:0"]["pid"]
    assert status_ids(web)["Uid"] == [NOBODY.pw_uid] * 4
    assert status_ids(web)["Gid"] == [NOBODY.pw_gid] * 4
    wait_until(lambda: (nobodys_dir / "made").exists(), TIMEOUT)
    assert stat.S_IMODE((nobodys_dir / "made").stat().st_mode) == 0o640
    assert process.environ_of(web)["HOME"] == NOBODY.pw_dir
    assert status_ids(own)["Gid"] == [0] * 4
    assert (process.environ_of(own)["HOME"], process.environ_of(own)["USER"]) == ("/srv/own", "nobody")


def test_an_app_whose_cwd_its_user_cannot_enter_fails_saying_so(daemon: Callable[[str], Supervisor],
                                                                 private_dir: Path) -> None:
    sup = daemon(f"""
        [apps.web]
        command = "sleep 1000"
        cwd = "{private_dir / 'open'}"
        user = "nobody"
        backoff = {{ initial = "5s" }}
    """)
    wait_until(lambda: "cannot enter cwd" in sup.log.read_text(), TIMEOUT)
    assert f"({private_dir} is mode 0700, owned by root:root; it needs x there)" in sup.log.read_text()
    assert sup.status()["web:0"]["pid"] is None


TRAPPED = "trap 'echo term > got-term; exit 0' TERM; while :; do sleep 0.05; done"


def test_a_shell_pipeline_is_stopped_whole_by_its_stop_signal(daemon: Callable[[str], Supervisor],
                                                              tmp_path: Path) -> None:
    # The pipeline's first stage traps SIGTERM: it writes got-term only if the stop signal reached
    # it, not just the shell (the leftover sweep after the shell's exit would SIGKILL it instead).
    sup = daemon(f"""
        [apps.pipe]
        command = "echo \\"$GREETING from $SUPERVISE_NAME\\" > greeting; sh -c \\"{TRAPPED}\\" | cat"
        shell = true
        env = {{ GREETING = "hello" }}
        stop_timeout = "30s"
    """)
    pid = sup.wait_all_running(1)["pipe:0"]["pid"]
    assert file_text(tmp_path / "greeting") == "hello from pipe:0"
    group = wait_until(lambda: len(process_group(pid)) >= 3 and process_group(pid), TIMEOUT)  # sh, sh, cat, sleep
    stopped = sup.cli("stop", "pipe")
    assert stopped.returncode == 0, stopped.stderr
    assert file_text(tmp_path / "got-term") == "term"
    wait_until(lambda: all(gone(p.pid) for p in group) and not process_group(pid), TIMEOUT)
    assert sup.status()["pipe:0"]["last_exit"]["reason"] == "stopped"


def process_group(pgid: int) -> list[psutil.Process]:
    """The live (not zombie) processes of process group `pgid`."""
    members = []
    for proc in psutil.process_iter():
        try:
            if os.getpgid(proc.pid) == pgid and proc.status() != psutil.STATUS_ZOMBIE:
                members.append(proc)
        except (OSError, psutil.Error):
            continue
    return members
