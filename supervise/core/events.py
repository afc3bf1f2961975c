"""What the shell tells the core: events, in the past tense.

Each is something that has happened (a process was spawned, exited, beat;
a command arrived; a deadline passed). The core never asks: everything it
knows arrives as one of these, with ``now`` beside it.
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import StrEnum

from supervise.config.model import Config
from supervise.core.instance import LastExit, State
from supervise.frozen import frozen


class Verb(StrEnum):
    """The operator's commands the core answers (the control protocol's ``cmd``)."""

    STATUS = "status"
    START = "start"
    STOP = "stop"
    RESTART = "restart"
    SCALE = "scale"
    RELOAD = "reload"
    SHUTDOWN = "shutdown"
    SIGNAL = "signal"  # send a signal to instances' main processes (or whole trees)


class Cause(StrEnum):
    """What asked for a reload; a rollout records it."""

    RELOAD = "reload"  # `supervise reload`
    WATCH = "watch"  # a watched file changed
    SIGNAL = "signal"  # SIGHUP
    CONFIG = "config"  # a config change, applied as a diff


class Role(StrEnum):
    """Where a checkpointed instance stood in its app."""

    SLOT = "slot"  # the serving instance of its index
    SUCCESSOR = "successor"  # a new one starting beside it
    RETIRING = "retiring"  # a replaced one, its process stopping
    SPARE = "spare"  # a warm spare (its index numbers it among the app's spares)


@frozen
class Spawned:
    spawn_id: int
    pid: int


@frozen
class SpawnFailed:
    """A `Spawn` could not be carried out. ``daemon_fault``: the daemon (or the system) was out of file
    descriptors: nothing the worker did, so it is retried shortly and never counted as its failure."""

    spawn_id: int
    error: str
    daemon_fault: bool = False


@frozen
class Exited:
    spawn_id: int
    code: int | None
    signal: int | None
    lost: bool = False  # an adopted process (not our child): gone, its exit status unknown


@frozen
class Ready:
    spawn_id: int


@frozen
class Beat:
    """A valid heartbeat (the shell has checked its token); ``fields`` are its status fields."""

    spawn_id: int
    fields: Mapping[str, object] | None = None


@frozen
class Unhealthy:
    """The instance's liveness probe failed ``failures`` times in a row (``detail``: the last failure)."""

    spawn_id: int
    detail: str


@frozen
class Healthy:
    """The instance's liveness probe passes again after an ``Unhealthy``."""

    spawn_id: int


@frozen
class Drained:
    spawn_id: int


@frozen
class Sampled:
    """One sampling pass over instances' process trees, by spawn id.

    ``rss`` is each tree's memory in bytes (None: gone): not an RSS sum but
    its cgroup's charge or its processes' PSS (see runtime/sampler.py); the
    name is the status field's.
    """

    rss: Mapping[int, int | None]
    processes: Mapping[int, int] | None = None  # how many processes each tree has
    cpu: Mapping[int, float] | None = None  # CPU % of one core since the tree's last pass (may exceed 100)
    cpu_seconds: Mapping[int, float] | None = None  # the tree's CPU time so far: a counter, never decreasing


@frozen
class CommandReceived:
    """An operator's command. ``targets`` are app names or instance names (``web:1``).

    ``request_id`` None: nobody waits for a reply (a reload asked by SIGHUP).
    """

    request_id: object
    verb: Verb
    targets: tuple[str, ...] = ()
    count: int | None = None  # scale: the new size
    timeout: float | None = None  # reply with an error if not done by then
    config: Config | None = None  # reload: the re-read config whose difference to apply
    dry_run: bool = False  # reload: only say what would change
    cause: Cause = Cause.RELOAD
    signal: int | None = None  # signal: the signal number to send
    tree: bool = False  # signal: to every process of the instance's tree, not only its main process


@frozen
class FilesChanged:
    """Files an app watches changed: roll those apps (``paths``: a few of them, for the record)."""

    apps: frozenset[str]
    paths: tuple[str, ...] = ()


@frozen
class ShutdownRequested:
    """SIGTERM/SIGINT or `supervise shutdown`: drain everything, then exit."""


@frozen
class DeadlineReached:
    """The time ``Core.next_deadline()`` named has come."""


@frozen
class Adopted:
    """An instance a previous daemon started, as its checkpoint (or the environment of
    its process) recorded it.

    ``pid`` is None when its process died while no daemon was watching; a pid
    given here has been checked by the shell to still be that very process.
    ``generation`` None: the app's current one (a worker found by its
    environment, which no checkpoint names).
    """

    app: str
    index: int
    generation: int | None
    state: State
    pid: int | None
    restarts: int = 0
    failures: int = 0  # consecutive failed runs: backoff goes on from there
    age: float = 0.0  # seconds since it was spawned
    running_for: float | None = None
    role: Role = Role.SLOT
    last_exit: LastExit | None = None
    fence: int | None = None  # a cluster instance's fencing token
    reloads: int = 0
    operator_restarts: int = 0


@frozen
class AppRecord:
    """An app's count and generation as a checkpoint recorded them (a `scale` outlives the daemon)."""

    target: int
    generation: int
    latest: int


@frozen
class Recovered:
    """What a previous daemon on this state dir left: its apps and its instances.

    Comes before ``DaemonStarted``; the instances whose processes live are
    taken over (``Adopt`` actions), the rest are dealt with once started.
    """

    apps: Mapping[str, AppRecord]
    instances: tuple[Adopted, ...]


@frozen
class DaemonStarted:
    """The shell is ready to spawn: bring every app up, each after its dependencies."""


@frozen
class Stalled:
    """The daemon's loop ran ``seconds`` late (a pause, a swap storm, a blocked disk): judge liveness
    afresh. Comes before the DeadlineReached that found the lateness."""

    seconds: float


@frozen
class Assigned:
    """What the cluster's leader has placed on this node: a whole snapshot of every cluster app.

    ``slots``: app -> {index: fencing token}; an app absent has nothing here.
    ``held``: slots handed over to another node that keep running here (never
    started here) until that node has them ready.
    """

    slots: Mapping[str, Mapping[int, int]]
    held: Mapping[str, frozenset[int]]


@frozen
class LeaseRenewed:
    """etcd acknowledged this node's lease: it may keep its singletons until ``fence_at``.

    ``fence_at`` is on the monotonic clock: the send time of the acknowledged
    keep-alive + the lease TTL - the fence margin, always before etcd can
    expire the lease. After a fence, the shell sends this only once it has
    sent an ``Assigned`` read from etcd after the lease came back.
    """

    fence_at: float


@frozen
class LeaseLost:
    """etcd says this node's lease is gone: fence at once."""


@frozen
class ClusterNews:
    """Something happened in the cluster (a node joined or was lost, a leader was elected, slots
    were placed or moved): published as an event of type ``cluster``."""

    event: Mapping[str, object]


Event = (Spawned | SpawnFailed | Exited | Ready | Beat | Unhealthy | Healthy | Drained | Sampled | CommandReceived
         | FilesChanged | ShutdownRequested | DeadlineReached | Recovered | DaemonStarted | Assigned | LeaseRenewed
         | LeaseLost | ClusterNews | Stalled)
