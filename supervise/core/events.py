"""The core's vocabulary: events in the past tense, actions in the imperative.

The shell turns what happened (a process exited, a command arrived) into
events for ``Core.handle`` and carries out the actions it returns.
"""

from __future__ import annotations

from dataclasses import dataclass

from supervise.config.model import AppConfig, Config

# Events -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Spawned:
    spawn_id: int
    pid: int


@dataclass(frozen=True, slots=True)
class SpawnFailed:
    spawn_id: int
    error: str


@dataclass(frozen=True, slots=True)
class Exited:
    spawn_id: int
    code: int | None
    signal: int | None
    lost: bool = False  # an adopted process (not our child): gone, its exit status unknown


@dataclass(frozen=True, slots=True)
class Ready:
    spawn_id: int


@dataclass(frozen=True, slots=True)
class Beat:
    """A valid heartbeat (the shell has checked its token); ``fields`` are its status fields."""

    spawn_id: int
    fields: dict | None = None


@dataclass(frozen=True, slots=True)
class Drained:
    spawn_id: int


@dataclass(frozen=True, slots=True)
class Sampled:
    """One memory pass: RSS of each instance's process tree, by spawn id (None: gone)."""

    rss: dict[int, int | None]
    processes: dict[int, int] | None = None  # how many processes each tree has


@dataclass(frozen=True, slots=True)
class CommandReceived:
    """An operator's command. ``targets`` are app names or instance names (``web:1``)."""

    request_id: object
    verb: str  # status | start | stop | restart | scale | reload | shutdown
    targets: tuple[str, ...] = ()
    count: int | None = None
    timeout: float | None = None  # reply with an error if not done by then
    config: Config | None = None  # reload: the re-read config whose difference to apply
    dry_run: bool = False  # reload: only say what would change
    cause: str = "reload"  # reload: what asked for it (reload | watch | signal); no reply when request_id is None


@dataclass(frozen=True, slots=True)
class ShutdownRequested:
    """SIGTERM/SIGINT: drain everything, then exit."""


@dataclass(frozen=True, slots=True)
class DeadlineReached:
    pass


Event = (Spawned | SpawnFailed | Exited | Ready | Beat | Drained | Sampled | CommandReceived | ShutdownRequested
         | DeadlineReached)

@dataclass(frozen=True, slots=True)
class Adopted:
    """An instance a previous daemon started, as its checkpoint recorded it.

    ``pid`` is None when its process died while no daemon was watching; the
    shell has checked that a pid it passes is still that very process.
    """

    app: str
    index: int
    generation: int
    state: str  # starting | running | stopping | stopped | backoff | failed
    pid: int | None
    restarts: int = 0
    age: float = 0.0  # seconds since it was spawned
    running_for: float | None = None
    role: str = "slot"  # slot | successor | retiring
    last_exit: dict | None = None


# Actions ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Spawn:
    spawn_id: int
    app: AppConfig
    index: int


@dataclass(frozen=True, slots=True)
class Signal:
    spawn_id: int
    pid: int
    signal: int


@dataclass(frozen=True, slots=True)
class KillTree:
    spawn_id: int
    pid: int


@dataclass(frozen=True, slots=True)
class SendDrain:
    """Ask the worker over its heartbeat channel to finish in-flight work."""

    spawn_id: int


@dataclass(frozen=True, slots=True)
class Resample:
    """Sample memory again ``after`` seconds: an instance is over its limit, not yet confirmed."""

    after: float


@dataclass(frozen=True, slots=True)
class Reply:
    request_id: object
    ok: bool
    result: object = None
    error: str | None = None
    usage: bool = False  # the request itself was wrong (exit code 2), not the operation


@dataclass(frozen=True, slots=True)
class Publish:
    event: dict


@dataclass(frozen=True, slots=True)
class Exit:
    code: int


Action = Spawn | Signal | KillTree | SendDrain | Resample | Reply | Publish | Exit
