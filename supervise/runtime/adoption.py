"""What a previous daemon on this state dir left running, as the core's ``Recovered`` event.

The checkpoint names the instances; each recorded pid is trusted only if
it is still that very process (start time, token), and is otherwise never
signalled. Workers spawned after its last checkpoint are found by their
environment (strays). The conversions from records to ``Adopted`` and the
choice among strays are pure functions, tested on their own; reading the
checkpoint and /proc is done by ``find``. Nothing here kills anything.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

from supervise.core import Adopted, AppRecord, Recovered, Role
from supervise.core.instance import LastExit, State
from supervise.frozen import frozen
from supervise.runtime import checkpoint, process
from supervise.runtime.checkpoint import Checkpoint, CheckpointError, InstanceRecord
from supervise.runtime.log import Log
from supervise.runtime.workers import Inherited
from supervise.wire import protocol


@frozen
class Leftovers:
    """Everything found of a previous daemon: the event for the core, and for the worker table
    what it needs of each live process (by pid) that the core does not know."""

    event: Recovered
    inherited: Mapping[int, Inherited]
    lost: tuple[str, ...]  # instances whose recorded process is gone
    strays: int  # live workers no checkpoint named
    dead_tokens: tuple[str, ...] = ()  # of the lost: what their leftovers carry in their environment
    dead_cgroups: tuple[str, ...] = ()  # of the lost: their cgroups, where they had one


def unclaimed_strays(strays: Iterable[Stray], known_tokens: set[str]) -> list[Stray]:
    """The workers among `strays` to adopt: one per token, the oldest.

    One carrying a known token is a worker's own child that called setsid:
    its parent is the recorded worker. Of the others, the oldest per token is
    the worker and the rest are its children that left its session.
    """
    chosen: dict[str, Stray] = {}
    for stray in strays:
        if stray.token in known_tokens:
            continue
        if stray.token not in chosen or stray.create_time < chosen[stray.token].create_time:
            chosen[stray.token] = stray
    return sorted(chosen.values(), key=lambda s: (s.app, s.index, s.create_time))


def adopted_from_record(record: InstanceRecord, alive: bool, wall: float) -> Adopted:
    """The core's view of a checkpointed instance; `alive`: its recorded process still runs.

    Raises CheckpointError for a state, role or last exit this version does not know.
    """
    try:
        state, role = State(record.state), Role(record.role)
        last_exit = LastExit.from_json(record.last_exit) if record.last_exit else None
    except (ValueError, TypeError, KeyError) as exc:
        raise CheckpointError(f"malformed instance record {record.app}:{record.index}: {exc}") from None
    return Adopted(record.app, record.index, record.generation, state, record.pid if alive else None,
                   record.restarts, record.failures, age=wall - record.spawned_at if record.spawned_at else 0.0,
                   running_for=wall - record.running_since if record.running_since else None,
                   role=role, last_exit=last_exit,
                   fence=record.fence if isinstance(record.fence, int) and not isinstance(record.fence, bool) else None,
                   reloads=_count(record.reloads), operator_restarts=_count(record.operator_restarts))


def adopted_from_stray(stray: Stray, wall: float) -> Adopted:
    """A live worker no checkpoint names: running, of its app's current generation."""
    return Adopted(stray.app, stray.index, None, State.RUNNING, stray.pid, age=wall - stray.create_time,
                   running_for=0.0, role=Role.SPARE if stray.spare else Role.SLOT)


def app_records(apps: Mapping[str, Mapping[str, object]]) -> dict[str, AppRecord]:
    """Each app's count and generation as the checkpoint recorded them."""
    records = {}
    for name, app in apps.items():
        try:
            target, generation = int(app["target"]), int(app["generation"])  # type: ignore[call-overload]  # validated by int()
            latest = int(app.get("latest", generation))  # type: ignore[call-overload]
        except (KeyError, TypeError, ValueError) as exc:
            raise CheckpointError(f"malformed app record {name}: {exc}") from None
        records[name] = AppRecord(target, generation, latest)
    return records


def leftovers(found: Checkpoint | None, strays: Iterable[Stray], alive: Callable[[InstanceRecord], bool],
              wall: float) -> Leftovers:
    """Combine a checkpoint, the strays found in /proc and which recorded pids live (pure)."""
    records = list(found.instances) if found is not None else []
    instances: list[Adopted] = []
    inherited: dict[int, Inherited] = {}
    lost: list[str] = []
    dead: list[InstanceRecord] = []
    for record in records:
        live = record.pid is not None and alive(record)
        if record.pid is not None and not live:
            lost.append(f"{record.app}:{record.index}")
            dead.append(record)
        instances.append(adopted_from_record(record, live, wall))
        if live and record.pid is not None:
            inherited[record.pid] = Inherited(record.token, record.create_time, record.log_path, record.cgroup,
                                              tuple(record.listen))
    chosen = unclaimed_strays(strays, {r.token for r in records if r.token})
    for stray in chosen:
        instances.append(adopted_from_stray(stray, wall))
        inherited[stray.pid] = Inherited(stray.token, stray.create_time)
    apps = app_records(found.apps) if found is not None else {}
    live_tokens = {stray.token for stray in chosen} | {i.token for i in inherited.values() if i.token}
    live_cgroups = {i.cgroup for i in inherited.values()}
    return Leftovers(Recovered(apps, tuple(instances)), inherited, tuple(lost), len(chosen),
                     tuple(r.token for r in dead if r.token and r.token not in live_tokens),
                     tuple(r.cgroup for r in dead if r.cgroup and r.cgroup not in live_cgroups))


def find(found: Checkpoint | None, heartbeat_endpoint: str, wall: float) -> Leftovers:
    """Check which of the checkpoint's pids still run, and look in /proc for the workers it does not name.

    Raises CheckpointError for a record this version cannot use.
    """
    known = {r.pid for r in found.instances if r.pid is not None} if found is not None else set()
    strays = find_strays(heartbeat_endpoint, known)
    return leftovers(found, strays, still_running, wall)


def read(path: Path, heartbeat_endpoint: str, log: Log) -> tuple[Checkpoint | None, Leftovers]:
    """The checkpoint at `path` and what it (and /proc) says is left; an unusable checkpoint is
    logged and ignored, and the workers it names are left alone (strays are still found)."""
    try:
        found = checkpoint.read(path)
        return found, find(found, heartbeat_endpoint, time.time())
    except CheckpointError as exc:
        log.warning("the checkpoint is unusable: starting afresh (workers it named are left alone)",
                    path=str(path), error=str(exc))
        return None, find(None, heartbeat_endpoint, time.time())


# -- is it still that process? -------------------------------------------------------


def still_running(record: InstanceRecord) -> bool:
    """The recorded pid is alive and is the very process recorded (same start time, same token).

    The token is checked where the environment is readable; where it is not
    (another user's process), the start time alone must do.
    """
    if record.pid is None or record.create_time is None:
        return False
    if not process.same_process(record.pid, record.create_time):
        return False
    token = process.environ_of(record.pid).get(protocol.ENV_TOKEN)
    return token is None or token == record.token


@frozen
class Stray:
    """A worker of this state dir that no checkpoint names (started just before the daemon died)."""

    pid: int
    create_time: float
    app: str
    index: int  # a spare's number, for a spare
    token: str
    spare: bool = False


def find_strays(heartbeat_endpoint: str, known: set[int]) -> list[Stray]:
    """Session leaders whose environment carries `heartbeat_endpoint` and a token, not in `known`.

    Workers are spawned as session leaders (pid == sid); a worker's own
    children inherit its environment but not its session, so they are not
    mistaken for workers. One pass over /proc, at startup only (psutil is imported for a stray
    found, not for the pass: most starts find none).
    """
    found: list[Stray] = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        pid = int(entry.name)
        if pid in known or pid == os.getpid() or not _is_session_leader(pid):
            continue
        env = process.environ_of(pid)
        if env.get(protocol.ENV_HEARTBEAT) != heartbeat_endpoint or not env.get(protocol.ENV_TOKEN):
            continue
        spare = env.get(protocol.ENV_ROLE) == "spare"
        import psutil

        try:
            index = spare_number(env.get(protocol.ENV_NAME, "")) if spare else int(env.get(protocol.ENV_INSTANCE, ""))
            create_time = psutil.Process(pid).create_time()
        except (ValueError, psutil.Error):
            continue
        found.append(Stray(pid, create_time, env.get(protocol.ENV_APP, ""), index, env[protocol.ENV_TOKEN], spare))
    return found


def spare_number(name: str) -> int:
    """The N of a spare's name, ``app:spare-N``; ValueError for any other name."""
    number = name.rpartition(":spare-")[2]
    if not (number.isascii() and number.isdigit()):
        raise ValueError(f"not a spare's name: {name!r}")
    return int(number)


def _is_session_leader(pid: int) -> bool:
    stat = process.proc_stat(pid)
    return stat is not None and stat[0] != "Z" and stat[2] == pid


def _count(value: object) -> int:
    """A counter as recorded; 0 for anything but a non-negative integer (a hand-edited record)."""
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else 0
