"""The config as the rest of supervise sees it: frozen dataclasses of final types.

Seconds are floats, sizes are bytes, signals are ``signal.Signals``, paths
are absolute: nothing past the loader parses a unit or resolves a path.
"""

from __future__ import annotations

import signal
from collections.abc import Mapping
from dataclasses import field
from enum import StrEnum
from pathlib import Path

from supervise.frozen import frozen

__all__ = [
    "AppConfig", "BackoffConfig", "ClusterConfig", "Config", "CrashLoopConfig", "LogFormat", "LogLevel",
    "ListenOptions", "MaxUnavailable", "Placement", "Probe", "ProbeKind", "Readiness", "Restart", "SuperviseConfig",
    "RLIMIT_KEYS", "PROBE_READINESS",
]

RLIMIT_KEYS = ("nofile", "core", "nproc")
"""The keys of an app's ``rlimits`` table: RLIMIT_NOFILE (descriptors), RLIMIT_CORE (bytes),
RLIMIT_NPROC (processes and threads of the user)."""


class Restart(StrEnum):
    ALWAYS = "always"
    ON_FAILURE = "on-failure"
    NEVER = "never"


class Placement(StrEnum):
    LOCAL = "local"  # this daemon runs `instances` of it, as without a cluster
    CLUSTER = "cluster"  # `instances` across the cluster's nodes, placed by the leader
    EVERY_NODE = "every-node"  # `instances` on every node that may run it


class Readiness(StrEnum):
    NONE = "none"  # ready once it has stayed up `ready_after`
    HEARTBEAT = "heartbeat"  # the worker's first ready message (supervise.worker)
    NOTIFY = "notify"  # READY=1 on the instance's own NOTIFY_SOCKET (sd_notify, as gunicorn sends)
    HTTP = "http"  # probes: `readiness_probe` passes `successes` times in a row
    TCP = "tcp"
    EXEC = "exec"


class ProbeKind(StrEnum):
    HTTP = "http"  # GET the URL: a 2xx or 3xx status passes
    TCP = "tcp"  # connect to "HOST:PORT" or "unix:PATH": a connection passes
    EXEC = "exec"  # run the command: exit code 0 passes


PROBE_READINESS = {ProbeKind.HTTP: Readiness.HTTP, ProbeKind.TCP: Readiness.TCP, ProbeKind.EXEC: Readiness.EXEC}


@frozen
class Probe:
    """One check the daemon runs against an instance, every `interval`, each given `timeout`.

    ``target`` holds templates ({app}, {instance}, {port}) filled per instance by
    ``render``: an http URL ("http://127.0.0.1:{port}/healthz"), a tcp address
    ("127.0.0.1:{port}" or "unix:/run/web-{instance}.sock"), or an exec argv.
    Readiness passes after ``successes`` passes in a row; liveness fails after
    ``failures`` failures in a row (and a readiness probe that fails ``failures``
    times in a row says why in the instance's status, though only start_timeout
    ends a start).
    """

    kind: ProbeKind
    target: tuple[str, ...]  # http, tcp: one element; exec: the argv
    interval: float = 1.0
    timeout: float = 1.0
    failures: int = 3
    successes: int = 1

    def render(self, app: str, index: int, port: int | None) -> tuple[str, ...]:
        values: dict[str, object] = {"app": app, "instance": index}
        if port is not None:
            values["port"] = port + index
        return tuple(part.format(**values) for part in self.target)


@frozen
class ListenOptions:
    """How one `listen` socket is set up (the table form of a listen entry; defaults for a plain string).

    Defaults as systemd's socket units where it has one: TCP_NODELAY on (nginx's
    default too: without it a server that writes a response in two pieces waits
    for the client's delayed ACK, 40 ms a request), SO_REUSEPORT off, a unix
    socket's mode 0666 (``SocketMode=``), owned by the daemon's user.
    """

    nodelay: bool = True
    backlog: int = 1024
    reuseport: bool = False
    mode: int | None = None  # unix sockets: permission bits; None: 0o666
    owner: str | None = None  # unix sockets: user name (or uid as text); None: the daemon's
    group: str | None = None  # unix sockets: group name (or gid as text)


@frozen
class BackoffConfig:
    initial: float = 0.1
    max: float = 30.0
    multiplier: float = 2.0
    jitter: float = 0.2
    reset_after: float = 60.0


@frozen
class CrashLoopConfig:
    max_restarts: int = 10
    window: float = 60.0
    cooldown: float = 300.0


@frozen
class MaxUnavailable:
    """An app's disruption budget: how many of its instances the restarts the supervisor decides on
    (hung, memory, max_processes, a reload's stop-first steps) may have out of service at once.

    A count (``2``) or a percentage of the app's instances (``"25%"``), rounded down but never below
    1: a budget of 0 would mean a single hung instance is never restarted.

    The default is "25%": the issue it answers is the supervisor completing an outage, when a
    shared dependency (a stalled database, a swap storm, a GC pause starving the heartbeat thread)
    makes every instance look hung at once and all of them are restarted together, a cold-start
    stampede of the whole capacity. At 25% (Kubernetes' default maxUnavailable for rolling
    updates, and about Envoy's habit of never ejecting most hosts) a false alarm costs a quarter of
    the capacity at a time, and an app of up to 7 instances still has a lone hung one restarted at
    once (the floor of 1). The price: when every instance really is hung, they come back a quarter
    at a time, each batch as soon as the one before is ready. An app whose instances are
    independent (queue consumers) can ask for "100%": no limit.
    """

    value: int = 25
    percent: bool = True

    @property
    def unlimited(self) -> bool:
        """Every instance may be out at once: the budget never holds a restart."""
        return self.percent and self.value >= 100

    def of(self, instances: int) -> int:
        """The budget as a count, for an app of `instances`."""
        if not self.percent:
            return self.value
        return max(1, instances * self.value // 100)

    def __str__(self) -> str:
        return f"{self.value}%" if self.percent else str(self.value)


DEFAULT_LISTEN_OPTIONS = ListenOptions()


@frozen
class AppConfig:
    name: str
    command: tuple[str, ...]  # argv template; placeholders {app} {instance} {port}
    cwd: Path
    instances: int = 1
    env: Mapping[str, str] = field(default_factory=dict)
    restart: Restart = Restart.ALWAYS
    stop_signal: signal.Signals = signal.SIGTERM
    stop_timeout: float = 10.0
    readiness: Readiness = Readiness.NONE
    readiness_probe: Probe | None = None  # set when readiness is http, tcp or exec
    liveness: Probe | None = None  # failing `failures` times in a row: restarted as `unhealthy`
    ready_after: float = 1.0  # readiness = "none": counted ready once up this long (0: at once)
    start_timeout: float = 30.0
    heartbeat_timeout: float | None = None
    max_memory: int | None = None
    max_processes: int | None = None  # in the instance's tree; more -> killed at once, restarted
    max_unavailable: MaxUnavailable = MaxUnavailable()  # the disruption budget of health restarts and reload steps
    watch: tuple[str, ...] = ()
    watch_ignore: tuple[str, ...] = ()
    listen: tuple[str, ...] = ()
    listen_options: Mapping[str, ListenOptions] = field(default_factory=dict)  # by address; absent: defaults
    depends_on: tuple[str, ...] = ()
    log_max_size: int = 50 * 1024 * 1024
    log_backups: int = 5
    backoff: BackoffConfig = BackoffConfig()
    crash_loop: CrashLoopConfig = CrashLoopConfig()
    port: int | None = None
    chaos: bool = False
    reload_surge: int | None = None  # new instances started at once in a rollout; None: see surge()
    placement: Placement = Placement.LOCAL
    singleton: bool = False  # one instance cluster-wide, fenced: never two at once
    constraints: Mapping[str, str] = field(default_factory=dict)  # node labels it needs
    spread: str | None = None  # a label key: spread instances evenly over its values
    # Resource limits of each instance, by RLIMIT_KEYS name: a number, or None for unlimited. An
    # absent key is inherited from the daemon, except nofile: the soft limit the daemon started with.
    rlimits: Mapping[str, int | None] = field(default_factory=dict)
    user: str | None = None  # run as this user (the daemon must be root unless it is the daemon's own)
    group: str | None = None  # and this group; None with a user: the user's primary group
    umask: int | None = None  # None: the daemon's
    env_file: Path | None = None  # dotenv file, already merged under `env` (env wins); kept for `check`
    shell: bool = False  # run `command` (one string) through /bin/sh -c
    max_age: float | None = None  # recycle an instance running longer, successor first
    max_age_jitter: float = 0.0  # each instance's age limit is max_age + uniform(0, jitter)
    spares: int = 0  # warm spares: started, ready and idle, promoted into a slot whose restart is due

    def listen_option(self, address: str) -> ListenOptions:
        return self.listen_options.get(address, DEFAULT_LISTEN_OPTIONS)

    @property
    def clustered(self) -> bool:
        return self.placement is not Placement.LOCAL

    def surge(self) -> int:
        """How many new instances a rollout starts beside the old ones at once.

        0 means stop an old instance before starting its replacement: the
        default when instances bind their own `{port}` (two cannot share it);
        with `listen` sockets or no port, one new instance at a time.
        """
        if self.singleton:
            return 0  # never two at once, not even for a moment of a rollout
        if self.reload_surge is not None:
            return self.reload_surge
        return 0 if self.port is not None and not self.listen else 1

    def argv(self, index: int) -> list[str]:
        """The command of instance ``index`` with its templates filled in; with ``shell``, the one
        string the loader kept, run by /bin/sh -c (the stop signal goes to the shell's whole
        process group, so a pipeline stops with it)."""
        values = {"app": self.name, "instance": index}
        if self.port is not None:
            values["port"] = self.port + index
        parts = [part.format(**values) for part in self.command]
        if self.shell:
            return ["/bin/sh", "-c", " ".join(parts)]
        return parts


@frozen
class SuperviseConfig:
    state_dir: Path
    log_format: str = "console"  # console | json
    log_level: str = "info"
    control: str | None = None  # a TCP control endpoint, "tcp://127.0.0.1:7070", besides the ipc socket
    control_key: Path | None = None  # the daemon's CURVE secret key file (supervise keygen)
    control_clients: tuple[str, ...] = ()  # client public keys allowed in: Z85 strings or .key files
    metrics: str | None = None  # "HOST:PORT" serving /metrics (Prometheus) and the dashboard; bound exactly as given
    include: tuple[str, ...] = ()  # globs (relative to the main file) of files whose [apps] merge in, in order


@frozen
class ClusterConfig:
    """``[cluster]``: how this daemon joins the others through etcd."""

    etcd: tuple[str, ...]  # client endpoints, tried in turn
    name: str = "supervise"  # the key prefix: several clusters may share one etcd
    node: str | None = None  # this node's name; None: the host name
    lease_ttl: int = 5  # seconds: a node silent this long is lost, its instances placed elsewhere
    capacity: int | None = None  # cluster instances this node may run; None: no limit
    labels: Mapping[str, str] = field(default_factory=dict)
    ca: Path | None = None  # TLS: CA file to verify etcd with
    cert: Path | None = None  # TLS client certificate and key
    key: Path | None = None
    user: str | None = None  # etcd authentication
    password: str | None = None

    @property
    def fence_margin(self) -> float:
        """Seconds between this node's self-fencing and the earliest moment etcd can expire its
        lease: time to stop its singletons (SIGKILL at half of it) with room for clock-rate drift."""
        return max(1.0, self.lease_ttl * 0.2)


@frozen
class Config:
    path: Path  # absolute path of the file this was loaded from
    supervise: SuperviseConfig
    apps: Mapping[str, AppConfig]  # in file order
    cluster: ClusterConfig | None = None  # None: this daemon is alone
    text: str = field(default="", compare=False, repr=False)  # as read: what a checkpoint records
    warnings: tuple[str, ...] = field(default=(), compare=False)  # "file:line: key: message", for `check`
    included: tuple[Path, ...] = field(default=(), compare=False)  # the files `include` brought in, in order


class LogFormat(StrEnum):
    """Accepted values of ``[supervise] log_format`` (stored as plain str)."""

    CONSOLE = "console"
    JSON = "json"


class LogLevel(StrEnum):
    """Accepted values of ``[supervise] log_level`` (stored as plain lower-case str)."""

    DEBUG = "debug"
    INFO = "info"
    WARNING = "warning"
    ERROR = "error"
