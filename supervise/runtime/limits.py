"""Resource limits: the daemon's own RLIMIT_NOFILE, and the limits each worker starts with.

The daemon keeps a descriptor or two per worker (its pidfd, its heartbeat
connection), so a soft RLIMIT_NOFILE of 1,024 (systemd's default) or less
caps how many instances it can run. At start it raises its soft limit to
its hard one (`raise_nofile`), as Go's runtime does, and like Go it gives
its children the soft limit it started with: a program that uses select()
breaks on a descriptor above 1,023, and some size tables by the limit.

An app's ``rlimits`` table sets a worker's own soft limits. The hard limits
stay the daemon's; a value above one is clamped to it, with a warning
(`for_child`). The limits are set in the child between fork and exec, by a
launcher it runs through: util-linux's ``prlimit`` (a small C program; or a
Python one-liner where it is missing). Popen's preexec_fn would do it too,
but would also turn off vfork, which keeps spawning fast however big the
daemon grows; prlimit(2) on the child after Popen returns would race with
the program it already runs. No launcher when no limit differs from the
daemon's: with soft == hard at start, nothing is added to a spawn.

Light on purpose: `supervise check` imports it (`check_fds`).
"""

from __future__ import annotations

import errno
import os
import resource
import shutil
import sys
from collections.abc import Iterable, Mapping
from functools import cache
from typing import TYPE_CHECKING

from supervise.frozen import frozen

if TYPE_CHECKING:
    from supervise.config.model import Config
    from supervise.runtime.log import Log

__all__ = [
    "BASE_FDS", "FDS_PER_INSTANCE", "FDS_PER_LISTEN", "FDS_PER_OPEN_LOG", "RESOURCES", "NofileLimits", "check_fds",
    "describe_capacity", "describe_out_of_fds", "fds_needed", "fits", "instance_capacity",
    "for_child", "launcher", "nofile", "raise_nofile",
]

RESOURCES: Mapping[str, int] = {
    "nofile": resource.RLIMIT_NOFILE, "core": resource.RLIMIT_CORE, "nproc": resource.RLIMIT_NPROC,
}
"""The keys of an app's ``rlimits`` table (config.model.RLIMIT_KEYS) and the resources they set."""

BASE_FDS = 64
"""Descriptors the daemon holds whatever it runs (measured: 16 with one app, no listen, no
cluster: its sockets, zmq's, the event loop's, the state dir's lock), with room for more
(a TCP control endpoint, etcd, watches) and for the transient ones: a spawn's output pipe,
/dev/null and Popen's pipe, the /proc files the sampler reads."""
FDS_PER_INSTANCE = 3
"""Per running instance: its pidfd, the heartbeat connection of a worker using supervise.worker,
and the read end of its output pipe."""
FDS_PER_OPEN_LOG = 2
"""Per log file held open (a log and its time index), for at most output.MAX_OPEN_LOGS instances,
the ones that wrote last."""
MAX_OPEN_LOGS = 128
"""output.MAX_OPEN_LOGS (kept here too: `supervise check` imports this module, not output's)."""
FDS_PER_LISTEN = 2
"""Per ``listen`` address: the bound socket and the daemon's copy handed to workers."""

_NAMES = {number: name for name, number in RESOURCES.items()}
_INFINITY = resource.RLIM_INFINITY
_PYTHON_LAUNCHER = (
    "import os, resource, sys\n"
    "for item in sys.argv[1].split(','):\n"
    "    which, soft, hard = map(int, item.split(':'))\n"
    "    resource.setrlimit(which, (soft, hard))\n"
    "os.execvp(sys.argv[2], sys.argv[2:])\n"
)


@frozen
class NofileLimits:
    """What `raise_nofile` found and did."""

    original_soft: int  # the soft limit the daemon started with: its children's, by default
    soft_now: int
    hard: int
    error: str | None = None  # why the soft limit could not be raised; None when it was, or was already the hard

    @property
    def raised(self) -> bool:
        return self.soft_now != self.original_soft


_started: NofileLimits | None = None


def raise_nofile(log: Log | None = None) -> NofileLimits:
    """Raise this process's soft RLIMIT_NOFILE to its hard limit; what it was, is, and may be.

    Never raises: a limit that cannot be changed is reported in the result (and
    logged, given `log`), and the daemon runs on with it. Call it once, at start,
    before anything is spawned; later calls return the first call's result, since
    only the first one saw the limit the daemon started with.
    """
    global _started
    if _started is not None:
        return _started
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != _INFINITY else _nr_open()  # NOFILE is never infinite: the kernel caps it at nr_open
    error = None
    now = soft
    if soft != _INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            now = target
        except (OSError, ValueError) as exc:
            error = f"cannot raise the soft limit from {soft} to {target}: {exc}"
    _started = NofileLimits(original_soft=soft, soft_now=now, hard=hard, error=error)
    if log is not None:
        if error is not None:
            log.warning("could not raise the daemon's file descriptor limit", soft=soft, hard=hard, error=error)
        elif _started.raised:
            log.info("raised the daemon's file descriptor limit to its hard limit", soft=now, was=soft,
                     workers_get=soft)
    return _started


def nofile() -> NofileLimits:
    """The daemon's descriptor limits: `raise_nofile`'s result, or the current ones if it never ran."""
    if _started is not None:
        return _started
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    return NofileLimits(original_soft=soft, soft_now=soft, hard=hard)


def _nr_open() -> int:
    try:
        with open("/proc/sys/fs/nr_open") as f:
            return int(f.read())
    except (OSError, ValueError):
        return 1024 * 1024  # the kernel's default


# -- a worker's limits ---------------------------------------------------------------


def for_child(rlimits: Mapping[str, int | None]) -> tuple[tuple[tuple[int, int, int], ...], list[str]]:
    """The limits a worker must be given, as (resource, soft, hard) for those that differ from
    the daemon's own, and a warning for each configured value clamped to the daemon's hard limit.

    `rlimits` is an app's table (None: unlimited). Without a nofile key, a worker gets the soft
    limit the daemon started with; without another key, the daemon's limit, as inherited.
    """
    wanted: dict[str, int | None] = {"nofile": nofile().original_soft}
    wanted.update(rlimits)
    changes: list[tuple[int, int, int]] = []
    warnings: list[str] = []
    for name, value in wanted.items():
        which = RESOURCES[name]
        soft, hard = resource.getrlimit(which)
        want = _INFINITY if value is None else value
        if _above(want, hard):
            warnings.append(f"rlimits.{name} = {_show(want)} is above the daemon's hard limit {_show(hard)}: "
                            f"the worker gets {_show(hard)} (raise the daemon's hard limit to allow more)")
            want = hard
        if want != soft:
            changes.append((which, want, hard))
    return tuple(changes), warnings


def _above(value: int, limit: int) -> bool:
    if limit == _INFINITY:
        return False
    return value == _INFINITY or value > limit


def _show(value: int) -> str:
    return "unlimited" if value == _INFINITY else str(value)


def launcher(changes: Iterable[tuple[int, int, int]]) -> tuple[str, ...]:
    """What to run a worker's command through (it follows as arguments) so that it starts with
    these (resource, soft, hard) limits; () for none."""
    changes = tuple(changes)
    if not changes:
        return ()
    prlimit = _prlimit()
    if prlimit is not None:
        options = tuple(f"--{_NAMES[which]}={_show(soft)}:{_show(hard)}" for which, soft, hard in changes)
        return (prlimit, *options, "--")
    spec = ",".join(f"{which}:{soft}:{hard}" for which, soft, hard in changes)
    return (sys.executable, "-S", "-c", _PYTHON_LAUNCHER, spec)


@cache
def _prlimit() -> str | None:
    for found in (shutil.which("prlimit"), "/usr/bin/prlimit", "/bin/prlimit"):
        if found and os.access(found, os.X_OK):
            return os.path.abspath(found)
    return None


# -- running out ----------------------------------------------------------------------


def fds_needed(instances: int, listens: int = 0) -> int:
    """Descriptors a daemon running `instances` (and `listens` listen addresses) may hold at most."""
    return (BASE_FDS + FDS_PER_INSTANCE * instances + FDS_PER_OPEN_LOG * min(instances, MAX_OPEN_LOGS)
            + FDS_PER_LISTEN * listens)


def fits(instances: int, extra: int = 0) -> bool:
    """Whether `instances`, with `extra` descriptors of theirs beyond FDS_PER_INSTANCE (the notify
    socket of each instance with ``readiness = "notify"``), fit the daemon's descriptor limit."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == _INFINITY:
        soft = _nr_open()
    return fds_needed(instances) + extra <= soft


def instance_capacity() -> int:
    """How many instances the daemon may run with its descriptor limit (`fds_needed`): each needs
    room for a heartbeat connection, for an accept that finds no descriptor left aborts the
    whole daemon (libzmq's ipc listener asserts on EMFILE, up to its master); BASE_FDS is
    headroom for everything else."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == _INFINITY:
        soft = _nr_open()
    room = soft - BASE_FDS
    with_logs = FDS_PER_INSTANCE + FDS_PER_OPEN_LOG
    if room // with_logs <= MAX_OPEN_LOGS:  # every one's log may be open
        return max(0, room // with_logs)
    return (room - FDS_PER_OPEN_LOG * MAX_OPEN_LOGS) // FDS_PER_INSTANCE


def describe_capacity(capacity: int) -> str:
    """Why a spawn past `instance_capacity` is refused, and what to change."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    return (f"the daemon runs at most {capacity} instances with its file descriptor limit {_show(soft)} "
            f"({FDS_PER_INSTANCE} each, with room for a heartbeat connection, and {FDS_PER_OPEN_LOG} for each of "
            f"the {MAX_OPEN_LOGS} log files held open, and one more for each with readiness = \"notify\": one "
            "too many would abort the daemon): raise the hard "
            f"limit ({_show(hard)}: LimitNOFILE= in its systemd unit, ulimit -Hn in its shell) or run fewer "
            "instances")


def describe_out_of_fds(exc: OSError, what: str) -> str | None:
    """For a spawn that failed in the daemon for want of descriptors (EMFILE, ENFILE): a message
    saying so, ending in `what` (the step that failed); None for any other error."""
    limits = nofile()
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    hard = _show(limits.hard)
    if exc.errno == errno.EMFILE:
        return (f"the daemon is out of file descriptors (soft limit {_show(soft)}, hard {hard}; raise the hard "
                f"limit: LimitNOFILE= in its systemd unit, ulimit -Hn in its shell): {what}")
    if exc.errno == errno.ENFILE:
        return (f"the system is out of file descriptors (fs.file-max; the daemon's soft limit is {_show(soft)}): "
                f"{what}")
    return None


def check_fds(config: Config) -> list[str]:
    """Warnings for `supervise check`: the instances (and listen sockets) need more descriptors
    than the hard limit of this process allows a daemon started from it; an rlimit above it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    warnings = []
    instances = sum(app.instances + app.spares for app in config.apps.values())  # a spare is an instance too
    listens = len({address for app in config.apps.values() for address in app.listen})
    notify = sum(app.instances + app.spares for app in config.apps.values() if app.readiness.value == "notify")
    need = fds_needed(instances, listens) + notify  # a notify socket each
    if _above(need, hard):
        sockets = f" + {FDS_PER_LISTEN} x {listens} listen addresses" if listens else ""
        logs = min(instances, MAX_OPEN_LOGS)
        notifying = f" + {notify} notify sockets" if notify else ""
        warnings.append(f"warning: the daemon may need about {need} file descriptors ({BASE_FDS} + "
                        f"{FDS_PER_INSTANCE} x {instances} instances + {FDS_PER_OPEN_LOG} x {logs} open logs"
                        f"{notifying}{sockets}), more than the hard limit {hard} "
                        f"here (soft {_show(soft)}): spawns would fail; raise it (ulimit -Hn, LimitNOFILE= "
                        "in a systemd unit) or run fewer instances")
    for app in config.apps.values():
        for name, value in app.rlimits.items():
            _, limit = resource.getrlimit(RESOURCES[name])
            want = _INFINITY if value is None else value
            if _above(want, limit):
                warnings.append(f"warning: apps.{app.name}.rlimits.{name} = {_show(want)} is above the hard limit "
                                f"{_show(limit)} here: a daemon started from here gives its workers {_show(limit)}")
    return warnings
