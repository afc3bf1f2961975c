"""The checkpoint of running instances, and finding them again after the daemon died.

Every userland supervisor used to be a single point of failure: kill it and
its workers are orphaned, then duplicated by the next one. Here the daemon
keeps a checkpoint in its state dir — per instance the pid, the process's
start time, app, index, generation, token, log file and cgroup, and the
config text it was started from — written atomically (temp file, fsync,
rename, fsync of the directory) and coalesced, never once per event.

A new daemon reads it and checks each pid before trusting it: the process
must exist, have the recorded start time (a pid reused by anything else has
another) and, where its environment is readable, carry the recorded token.
A pid that fails the check is never signalled. Workers started in the
instant after the last checkpoint are found by a scan of /proc for session
leaders carrying this state dir's heartbeat endpoint and a token.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import field, fields
from pathlib import Path

from supervise.core.views import Snapshot
from supervise.frozen import frozen
from supervise.runtime.workers import WorkerTable

VERSION = 1


class CheckpointError(Exception):
    """The checkpoint exists but cannot be used; the message says why."""


@frozen
class InstanceRecord:
    app: str
    index: int
    generation: int
    role: str  # slot | successor | retiring
    state: str
    restarts: int
    pid: int | None = None
    failures: int = 0  # consecutive failed runs (absent in checkpoints of older versions)
    create_time: float | None = None  # the process's start time (seconds since the epoch)
    token: str | None = None
    log_path: str | None = None
    cgroup: str | None = None
    listen: tuple[str, ...] = ()  # addresses it holds, at fds 3, 4, ...
    spawned_at: float | None = None  # wall clock
    running_since: float | None = None  # wall clock
    last_exit: dict | None = None
    fence: int | None = None  # a cluster instance's fencing token
    reloads: int = 0  # (absent in checkpoints of older versions)
    operator_restarts: int = 0


@frozen
class Checkpoint:
    daemon_pid: int
    written_at: float  # wall clock
    config_path: str
    config_text: str
    apps: dict[str, dict] = field(default_factory=dict)  # name -> {"target", "generation", "latest"}
    instances: tuple[InstanceRecord, ...] = ()


_RECORD_FIELDS = tuple(f.name for f in fields(InstanceRecord))


def encode(checkpoint: Checkpoint) -> bytes:
    # By hand, not dataclasses.asdict: that deep-copies every value and was 90% of a checkpoint's cost.
    body = {"version": VERSION, "daemon_pid": checkpoint.daemon_pid, "written_at": checkpoint.written_at,
            "config_path": checkpoint.config_path, "config_text": checkpoint.config_text, "apps": checkpoint.apps,
            "instances": [{name: getattr(r, name) for name in _RECORD_FIELDS} for r in checkpoint.instances]}
    return json.dumps(body, separators=(",", ":")).encode()


def encode_live(snapshot: Snapshot, workers: WorkerTable, offset: float, config_path: Path,
                config_text: str, cache: dict[object, tuple[tuple[object, ...], str]] | None = None) -> bytes:
    """The checkpoint of the core's snapshot and the live workers, encoded; `offset` turns loop
    time into wall time. The records are built as the dicts JSON wants, in one pass, with the
    fields of InstanceRecord: this runs on the event loop, several times a second in a storm.

    `cache` (the caller's, kept between calls): each record's JSON and what it was made from,
    by spawn, so that only the records that changed are encoded again (at 4,900 instances the
    JSON encoding of every record was two thirds of a 38 ms checkpoint). What it was made from
    is compared, not hashed: its fields are the very objects of the last call unless they
    changed, which a tuple comparison sees at once. It keeps only this call's records."""
    wall = round(offset, 2)  # a step of the wall clock makes every record new
    fresh: dict[object, tuple[tuple[object, ...], str]] = {}
    parts = []
    for i in snapshot.instances:
        w = workers.get(i.spawn_id) if i.spawn_id is not None else None
        key = (i, wall) if w is None else (i, wall, w.child.pid, w.child.create_time, w.token, w.log_path,
                                           w.child.cgroup, w.app.listen)
        slot = i.spawn_id if i.spawn_id is not None else (i.app, i.index, i.role)
        known = cache.get(slot) if cache is not None else None
        text = known[1] if known is not None and known[0] == key else None
        if text is None:
            text = json.dumps({
                "app": i.app, "index": i.index, "generation": i.generation, "role": i.role, "state": i.state,
                "restarts": i.restarts, "pid": w.child.pid if w else None,
                "failures": i.failures, "create_time": w.child.create_time if w else None,
                "token": w.token if w else None, "log_path": w.log_path if w else None,
                "cgroup": str(w.child.cgroup) if w and w.child.cgroup else None,
                "listen": w.app.listen if w else (),
                "spawned_at": None if i.spawned_at is None else i.spawned_at + offset,
                "running_since": None if i.running_since is None else i.running_since + offset,
                "last_exit": i.last_exit.as_json() if i.last_exit else None, "fence": i.fence,
                "reloads": i.reloads, "operator_restarts": i.operator_restarts}, separators=(",", ":"))
        fresh[slot] = (key, text)
        parts.append(text)
    if cache is not None:
        cache.clear()
        cache.update(fresh)
    apps = {name: {"target": a.target, "generation": a.generation, "latest": a.latest}
            for name, a in snapshot.apps.items()}
    head = json.dumps({"version": VERSION, "daemon_pid": os.getpid(), "written_at": time.time(),
                       "config_path": str(config_path), "config_text": config_text, "apps": apps},
                      separators=(",", ":"))
    return f'{head[:-1]},"instances":[{",".join(parts)}]}}'.encode()


def decode(data: bytes) -> Checkpoint:
    """Raises CheckpointError for anything that is not a whole checkpoint of this version."""
    try:
        body = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"not valid JSON ({exc}); it was probably cut short") from None
    if not isinstance(body, dict) or body.get("version") != VERSION:
        raise CheckpointError(f"unknown checkpoint version {body.get('version') if isinstance(body, dict) else None!r}")
    try:
        instances = tuple(InstanceRecord(**{**r, "listen": tuple(r.get("listen") or ())})
                          for r in body["instances"])
        checkpoint = Checkpoint(int(body["daemon_pid"]), float(body["written_at"]), str(body["config_path"]),
                                str(body["config_text"]), dict(body["apps"]), instances)
    except (KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(f"malformed checkpoint ({type(exc).__name__}: {exc})") from None
    for record in checkpoint.instances:
        if not isinstance(record.app, str) or not isinstance(record.index, int) or record.index < 0:
            raise CheckpointError(f"malformed instance record {record!r}")
        if record.pid is not None and (not isinstance(record.pid, int) or record.pid <= 1):
            raise CheckpointError(f"malformed pid in {record.app}:{record.index}")
    return checkpoint


def write(path: Path, data: bytes) -> None:
    """Replace `path` with `data` atomically and durably: a crash leaves the old or the new file."""
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
    except OSError:
        tmp.unlink(missing_ok=True)  # a disk that is full stays no fuller for our trying
        raise
    finally:
        os.close(fd)
    os.replace(tmp, path)
    dir_fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def read(path: Path) -> Checkpoint | None:
    """The checkpoint at `path`; None when there is none; CheckpointError when it is unusable."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise CheckpointError(f"cannot read it: {exc.strerror or exc}") from None
    return decode(data)


def remove(path: Path) -> None:
    path.unlink(missing_ok=True)
    for stale in path.parent.glob(f"{path.name}.*.tmp"):  # left by a daemon killed mid-write
        stale.unlink(missing_ok=True)
