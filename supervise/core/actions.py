"""What the core asks of the shell: actions, in the imperative.

This is the whole of the core's say: every decision leaves it as one of
these, and the shell carries them out in order without second-guessing
them (no inferring a checkpoint from an event's type, no asking the core
which sockets it still needs). Processes are named by spawn id: one run of
one instance, never reused, so an action can never reach a later process
that happens to get the same pid.
"""

from __future__ import annotations

from enum import StrEnum

from supervise.config.model import AppConfig
from supervise.frozen import frozen


@frozen
class Spawn:
    """Start instance ``index`` of ``app``; report back ``Spawned`` or ``SpawnFailed``."""

    spawn_id: int
    app: AppConfig
    index: int
    fencing_token: int | None = None  # a cluster instance's SUPERVISE_FENCING_TOKEN
    fencing_deadline: float | None = None  # a singleton's: monotonic time it must stop by unless extended
    spare: bool = False  # a warm spare: ``index`` numbers it among the app's spares, it has no slot yet


@frozen
class PromoteSpare:
    """The spare running as ``spawn_id`` is instance ``index`` of ``app`` from now on: tell it (over the
    heartbeat channel), and give it that instance's name, log and heartbeat identity."""

    spawn_id: int
    app: AppConfig
    index: int


@frozen
class ExtendFence:
    """Tell these singleton workers they may run until ``until`` (monotonic): the lease was renewed."""

    spawn_ids: tuple[int, ...]
    until: float


@frozen
class ScaleCluster:
    """Record a cluster app's new count in etcd, for the leader to place; then reply to ``request_id``."""

    request_id: object
    app: str
    count: int


@frozen
class Adopt:
    """Watch process ``pid``, started by a previous daemon, as ``spawn_id`` from now on."""

    spawn_id: int
    pid: int
    app: AppConfig
    index: int
    spare: bool = False  # a warm spare, numbered ``index`` among the app's spares


@frozen
class Signal:
    """Send ``signal`` to the process (and SIGCONT, so a stopped one can act on it)."""

    spawn_id: int
    signal: int


@frozen
class SignalTree:
    """An operator's `signal --tree`: `signal` to every process of the instance's tree."""

    spawn_id: int
    signal: int


@frozen
class KillTree:
    """SIGKILL the process and every process it left behind."""

    spawn_id: int


@frozen
class SendDrain:
    """Ask the worker over its heartbeat channel to finish in-flight work."""

    spawn_id: int


@frozen
class StopStray:
    """A live worker of a previous daemon that no app claims any more: stop it (gracefully, then kill)."""

    pid: int
    name: str


@frozen
class Resample:
    """Sample the process trees again ``after`` seconds: a reading over a limit awaits confirmation."""

    after: float


@frozen
class Reply:
    request_id: object
    ok: bool
    result: object = None
    error: str | None = None
    usage: bool = False  # the request itself was wrong (exit code 2), not the operation


@frozen
class Publish:
    """One event for the numbered history, the daemon's log and `supervise events`."""

    event: dict[str, object]


@frozen
class Checkpoint:
    """What a checkpoint records has changed: write one (the shell may coalesce them)."""


class ServiceState(StrEnum):
    """What to tell the service manager (sd_notify)."""

    READY = "ready"  # every app has started (the first time), or a reload is applied
    STATUS = "status"  # only the one-line summary changed
    RELOADING = "reloading"  # a config reload begins
    STOPPING = "stopping"  # the drain has begun


@frozen
class Notify:
    """Tell the service manager how the daemon is doing; ``status`` is a one-line summary."""

    state: ServiceState
    status: str


@frozen
class ReleaseListeners:
    """Close the listen sockets whose addresses are not in ``keep``: no instance uses them now,
    nor may one restart with them (a socket nobody accepts on would queue clients forever)."""

    keep: frozenset[str]


@frozen
class EndChaos:
    """Stop harming instances (`supervise chaos`): everything drains."""


@frozen
class Exit:
    code: int


Action = (Spawn | Adopt | Signal | SignalTree | KillTree | SendDrain | StopStray | Resample | Reply | Publish
          | Checkpoint | Notify | ReleaseListeners | EndChaos | Exit | ExtendFence | ScaleCluster
          | PromoteSpare)
