"""Typed views of the daemon's replies, for ``supervise.client``.

Each mirrors a JSON result documented in docs/protocol.md field by field,
and keeps that JSON as ``raw``: a field a newer daemon adds is there before
a class here names it. Only the API imports this module (dataclasses cost
the CLI's `status` a few milliseconds it does not need: it prints the JSON).
"""

from __future__ import annotations

from dataclasses import field
from typing import Any

from supervise.frozen import frozen
from supervise.wire.protocol import describe_exit

JSONObject = dict[str, Any]


@frozen
class LastExit:
    """How an instance's last process ended. ``reason``: crashed, exited, hung, memory,
    start-timeout, reload, stopped, lost, unhealthy, ... (DESIGN.md); ``code`` or ``signal``
    as the OS reported it; ``error``: why a spawn itself failed."""

    reason: str
    code: int | None = None
    signal: int | None = None
    error: str | None = None

    def describe(self) -> str:
        """One phrase, as the CLI words it: ``crashed (exit code 1)``."""
        return describe_exit({"reason": self.reason, "code": self.code, "signal": self.signal, "error": self.error})

    @classmethod
    def from_json(cls, data: JSONObject | None) -> LastExit | None:
        if not data:
            return None
        return cls(str(data.get("reason")), data.get("code"), data.get("signal"), data.get("error"))


@frozen
class InstanceStatus:
    """One instance, as a row of `status --json`. Figures the daemon has not measured
    (or not for a process that is not live) are None. ``role``: ``active`` for the serving
    instance of its slot (None from a daemon older than spares), ``spare`` for a warm spare
    (whose ``index`` is None: it has no slot yet), ``new`` or ``old`` for one beside a slot
    during a replacement."""

    name: str
    index: int | None
    state: str
    pid: int | None
    restarts: int
    uptime: float | None
    rss: int | None
    heartbeat_age: float | None
    last_exit: LastExit | None
    generation: int | None = None
    reloads: int = 0
    operator_restarts: int = 0
    cpu: float | None = None
    processes: int | None = None
    role: str | None = None
    raw: JSONObject = field(default_factory=dict, repr=False, compare=False)

    @property
    def app(self) -> str:
        return self.name.rpartition(":")[0]

    @classmethod
    def from_json(cls, data: JSONObject) -> InstanceStatus:
        return cls(name=data["name"], index=data["index"], state=data["state"], pid=data.get("pid"),
                   restarts=data.get("restarts", 0), uptime=data.get("uptime"), rss=data.get("rss"),
                   heartbeat_age=data.get("heartbeat_age"), last_exit=LastExit.from_json(data.get("last_exit")),
                   generation=data.get("generation"), reloads=data.get("reloads", 0),
                   operator_restarts=data.get("operator_restarts", 0), cpu=data.get("cpu"),
                   processes=data.get("processes"), role=data.get("role"), raw=data)


@frozen
class AppStatus:
    """One app: its instances by index, and (``replacing``) new and old ones beside them
    while a rollout or a replace-first restart runs."""

    name: str
    target: int | None
    generation: int | None
    instances: tuple[InstanceStatus, ...]
    replacing: tuple[InstanceStatus, ...] = ()
    raw: JSONObject = field(default_factory=dict, repr=False, compare=False)
    spares: tuple[InstanceStatus, ...] = ()  # warm spares (``spares = N``), started and ready, serving nothing yet

    @classmethod
    def from_json(cls, data: JSONObject) -> AppStatus:
        rows = [InstanceStatus.from_json(i) for i in data.get("instances", ())]
        return cls(name=data["name"], target=data.get("target"), generation=data.get("generation"),
                   instances=tuple(i for i in rows if i.role != "spare"),
                   replacing=tuple(InstanceStatus.from_json(i) for i in data.get("replacing", ())), raw=data,
                   spares=tuple(i for i in rows if i.role == "spare"))


@frozen
class Status:
    """What `status --json` prints: apps in config order. ``status["web:0"]`` is an instance,
    ``status.app("web")`` an app; ``raw`` is the daemon's JSON (with its ``daemon`` section)."""

    apps: tuple[AppStatus, ...]
    raw: JSONObject = field(default_factory=dict, repr=False, compare=False)

    @property
    def daemon(self) -> JSONObject | None:
        """The daemon's own section (pid, version, uptime, counters), when the reply has one."""
        return self.raw.get("daemon")

    @property
    def instances(self) -> list[InstanceStatus]:
        """Every serving instance, app by app."""
        return [inst for app in self.apps for inst in app.instances]

    def app(self, name: str) -> AppStatus:
        for app in self.apps:
            if app.name == name:
                return app
        raise KeyError(name)

    def __getitem__(self, name: str) -> InstanceStatus:
        for inst in self.instances:
            if inst.name == name:
                return inst
        raise KeyError(name)

    def __contains__(self, name: object) -> bool:
        return any(inst.name == name for inst in self.instances)

    @classmethod
    def from_json(cls, data: JSONObject) -> Status:
        return cls(apps=tuple(AppStatus.from_json(a) for a in data.get("apps", ())), raw=data)


@frozen
class Signalled:
    """An instance whose process (or tree) was sent the signal: ``pid`` is its main process."""

    name: str
    pid: int


@frozen
class Skipped:
    """A named instance with no live process to signal (``state``: stopped, backoff, failed)."""

    name: str
    state: str


@frozen
class SignalResult:
    """What `signal` did: ``signal`` its name (SIGHUP), ``number``; ``warning`` when its effect may
    surprise (SIGKILL is a crash to supervise, restarted per the policy)."""

    signal: str
    number: int
    tree: bool
    signalled: tuple[Signalled, ...]
    skipped: tuple[Skipped, ...] = ()
    warning: str | None = None
    raw: JSONObject = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_json(cls, data: JSONObject) -> SignalResult:
        return cls(signal=data["signal"], number=data["number"], tree=bool(data.get("tree")),
                   signalled=tuple(Signalled(s["name"], s["pid"]) for s in data.get("signalled", ())),
                   skipped=tuple(Skipped(s["name"], s["state"]) for s in data.get("skipped", ())),
                   warning=data.get("warning"), raw=data)


@frozen
class ReloadResult:
    """What `reload` did (or, with ``dry_run``, would do): ``plan`` one object per app (``app``,
    ``action``: roll, start, stop, update, unchanged, ...), ``rollouts`` each finished rollout
    (``app``, ``generation``, ``replaced``, ``total``, ``duration``, ...), as docs/protocol.md has them."""

    plan: tuple[JSONObject, ...]
    rollouts: tuple[JSONObject, ...]
    dry_run: bool
    raw: JSONObject = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_json(cls, data: JSONObject) -> ReloadResult:
        return cls(plan=tuple(data.get("plan") or ()), rollouts=tuple(data.get("rollouts") or ()),
                   dry_run=bool(data.get("dry_run")), raw=data)
