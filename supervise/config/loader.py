"""supervise.toml -> the frozen dataclasses of ``model``, or every problem at once.

Each problem names the file, the line, the key path and what was expected;
``units`` converts values, ``lines`` finds where each key was written.
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Callable
from dataclasses import fields
from enum import StrEnum
from functools import partial
from pathlib import Path
from typing import Any

from supervise.config import units as units
from supervise.config.errors import ConfigError, Problem
from supervise.config.lines import Key, LineIndex, key_text
from supervise.config.locate import DEFAULT_STATE_DIR
from supervise.config.model import (
    RLIMIT_KEYS,
    AppConfig,
    BackoffConfig,
    ClusterConfig,
    Config,
    CrashLoopConfig,
    LogFormat,
    LogLevel,
    MaxUnavailable,
    Placement,
    Readiness,
    Restart,
    SuperviseConfig,
)
from supervise.config.toml import parse_toml, read_toml
from supervise.config.units import Invalid, did_you_mean, show

__all__ = ["ConfigError", "Problem", "load", "loads"]  # the errors are errors.py's, here for the callers of load


_APP_NAME = re.compile(r"[A-Za-z0-9_.-]+")
_NAME = re.compile(r"[A-Za-z0-9_.-]{1,128}")  # cluster and node names: they are etcd key segments
_PERCENT = re.compile(r"\s*(\d{1,3})\s*%\s*")  # max_unavailable = "25%"
_ETCD_ENDPOINT = re.compile(r"(?:(https?)://)?(\[[0-9a-fA-F:]+\]|[A-Za-z0-9.-]+):(\d{1,5})/?")
MIN_LEASE_TTL = 2
"""etcd refuses shorter leases (with its default timing)."""


# -- public API ---------------------------------------------------------------


def load(path: str | os.PathLike[str]) -> Config:
    """Read and validate ``path``; raise :class:`ConfigError` listing every problem."""
    file = Path(path)
    text, data = read_toml(file)
    return _validated(file, text, data)


def loads(text: str, path: str | os.PathLike[str]) -> Config:
    """Validate `text` as if it were the content of `path` (relative paths resolve from there):
    the config a checkpoint recorded, which the file may no longer hold."""
    file = Path(path)
    return _validated(file, text, parse_toml(file, text))


def _validated(file: Path, text: str, data: dict[str, Any]) -> Config:
    check = _Check(file, LineIndex(text))
    config = _config(check, file, data)
    if check.problems:
        raise ConfigError(sorted(check.problems, key=lambda problem: problem.line or 0))
    return dataclasses.replace(config, text=text)


def _base_dir(file: Path) -> Path:
    return Path(os.path.abspath(file)).parent


# -- validation ---------------------------------------------------------------


class _Check:
    """Collects problems of one file, each located by its key path."""

    def __init__(self, file: Path, lines: LineIndex) -> None:
        self.file = file
        self.lines = lines
        self.problems: list[Problem] = []

    def report(self, path: Key, message: str) -> None:
        self.problems.append(Problem(self.file, self.lines.line_of(path), key_text(path), message))


class _Table:
    """One TOML table being read: typed gets, unknown keys reported up front."""

    def __init__(self, check: _Check, path: Key, raw: Any, known: tuple[str, ...] | None) -> None:
        self.check, self.path = check, path
        self.raw: dict[str, Any] = raw if isinstance(raw, dict) else {}
        self.bad: set[str] = set()
        if known is not None:
            for key in self.raw:
                if key not in known:
                    check.report(path + (key,), "unknown key" + did_you_mean(key, known))

    def get(self, key: str, convert: Callable[[Any], Any], default: Any = None) -> Any:
        """The converted value of ``key``, or ``default`` if absent or invalid."""
        if key not in self.raw:
            return default
        try:
            return convert(self.raw[key])
        except Invalid as error:
            self.bad.add(key)
            for at, message in error.errors:
                self.check.report(self.path + (key, *at), message)
            return default

    def read(self, converters: dict[str, Callable[[Any], Any]]) -> dict[str, Any]:
        """The valid values among ``converters``' keys, ready to pass as kwargs."""
        values = {key: self.get(key, convert, _ABSENT) for key, convert in converters.items()}
        return {key: value for key, value in values.items() if value is not _ABSENT}

    def table(self, key: str, known: tuple[str, ...] | None, example: str = "") -> _Table:
        """The sub-table ``key`` (empty when absent or not a table)."""
        raw = self.raw.get(key, {})
        if not isinstance(raw, dict):
            self.bad.add(key)
            self.check.report(self.path + (key,), units.expected(f"a table{example}", raw).args[0])
        return _Table(self.check, self.path + (key,), raw, known)


_ABSENT = object()


def _keys(cls: type, *skip: str) -> tuple[str, ...]:
    return tuple(f.name for f in fields(cls) if f.name not in skip)


def _config(check: _Check, file: Path, data: dict[str, Any]) -> Config:
    base = _base_dir(file)
    top = _Table(check, (), data, ("supervise", "apps", "cluster"))
    supervise = _supervise(top.table("supervise", _keys(SuperviseConfig)), base)
    cluster = _cluster(top.table("cluster", _keys(ClusterConfig)), base) if "cluster" in data else None
    apps_table = top.table("apps", None, " of apps like [apps.web]")
    apps = {}
    for name, raw in apps_table.raw.items():
        if app := _app(apps_table, name, raw, base):
            apps[name] = app
    _check_dependencies(apps_table, apps)
    _check_placement(apps_table, apps, "cluster" in data)
    return Config(path=base / file.name, supervise=supervise, apps=apps, cluster=cluster)


def _supervise(table: _Table, base: Path) -> SuperviseConfig:
    values = table.read(
        {
            "state_dir": lambda value: units.absolute(base, units.path_text(value)),
            "log_format": partial(units.choice, kind=LogFormat),
            "log_level": partial(units.choice, kind=LogLevel, fold_case=True),
            "control": _tcp_endpoint,
            "control_key": lambda value: units.absolute(base, units.path_text(value)),
            "control_clients": units.array_of(partial(_client_key, base), "keys"),
            "metrics": _metrics_address,
        }
    )
    values = {key: str(value) if isinstance(value, StrEnum) else value for key, value in values.items()}
    if values.get("control") and not (values.get("control_key") and values.get("control_clients")):
        table.check.report(table.path + ("control",),
                           "a TCP control endpoint needs CURVE keys: set control_key (the daemon's secret key "
                           "file) and control_clients (the public keys allowed in); make them with "
                           "`supervise keygen`")
    return SuperviseConfig(**{"state_dir": units.absolute(base, DEFAULT_STATE_DIR), **values})


def _tcp_endpoint(value: Any) -> str:
    text = units.string(value)
    match = re.fullmatch(r"tcp://(\[[0-9a-fA-F:]+\]|[A-Za-z0-9.-]+):(\d{1,5})", text)
    if not match or not 0 < int(match[2]) < 65536:
        raise units.expected('a TCP endpoint like "tcp://127.0.0.1:7070"', value)
    return text


def _metrics_address(value: Any) -> str:
    """``metrics = "127.0.0.1:9750"`` or ``"[::1]:9750"``: a TCP address the daemon binds as written (no
    default host: a non-loopback one is only ever there because someone wrote it; `check` warns of it)."""
    what = 'an address like "127.0.0.1:9750" or "[::1]:9750" (a host and a port from 1 to 65535)'
    text = units.string(value)
    try:
        address = units.parse_listen_address(text)
    except Invalid:
        raise units.expected(what, value) from None
    if not isinstance(address, units.TcpAddress) or not 0 < address.port < 65536:
        raise units.expected(what, value)
    return text


def _client_key(base: Path, value: Any) -> str:
    """A Z85 public key as is; anything else a path to a .key file, relative to the config."""
    text = units.string(value)
    if len(text) == 40 and not text.endswith((".key", ".key_secret")):
        return text
    return str(units.absolute(base, units.path_text(text)))


def _app(apps: _Table, name: str, raw: Any, base: Path) -> AppConfig | None:
    """One app from its table; None when it is not even a table with a valid name."""
    path = apps.path + (name,)
    if not _APP_NAME.fullmatch(name):
        apps.check.report(path, 'app names may use only letters, digits, "_", "." and "-"')
        return None
    if not isinstance(raw, dict):
        apps.check.report(path, units.expected("a table like [apps.web]", raw).args[0])
        return None
    table = _Table(apps.check, path, raw, _keys(AppConfig, "name"))
    if "command" not in raw:
        apps.check.report(path + ("command",), 'missing; every app needs one, like command = "python3 w.py"')
    backoff = table.table("backoff", _keys(BackoffConfig), ' like { initial = "100ms" }')
    crash_loop = table.table("crash_loop", _keys(CrashLoopConfig), " like { max_restarts = 10 }")
    app = AppConfig(
        name=name,
        command=table.get("command", units.command, ()),
        cwd=table.get("cwd", partial(units.directory, base), base),
        backoff=_backoff(backoff),
        crash_loop=_crash_loop(crash_loop),
        **table.read(_app_converters(base)),
    )
    _check_ports(table, app)
    return app


def _app_converters(base: Path) -> dict[str, Callable[[Any], Any]]:
    strings = units.array_of(units.string, "strings")
    return {
        "instances": units.integer,
        "env": units.env,
        "restart": partial(units.choice, kind=Restart),
        "stop_signal": units.stop_signal,
        "stop_timeout": units.duration,
        "readiness": partial(units.choice, kind=Readiness),
        "start_timeout": units.duration,
        "heartbeat_timeout": partial(units.duration, positive=True),
        "max_memory": partial(units.size, positive=True),
        "max_processes": partial(units.integer, lo=1),
        "max_unavailable": _max_unavailable,
        "watch": strings,
        "watch_ignore": strings,
        "listen": units.array_of(partial(units.listen_address, base), "addresses"),
        "depends_on": strings,
        "log_max_size": partial(units.size, positive=True),
        "log_backups": units.integer,
        "port": partial(units.integer, lo=1, hi=65535),
        "chaos": units.boolean,
        "reload_surge": units.integer,
        "placement": partial(units.choice, kind=Placement),
        "singleton": units.boolean,
        "constraints": _labels,
        "spread": _label_key,
        "rlimits": _rlimits,
    }


def _max_unavailable(value: Any) -> MaxUnavailable:
    """``max_unavailable = 2`` or ``"25%"`` (of the app's instances, rounded down, at least 1).

    Zero is refused, as a count and as a percentage: a budget that never lets a hung instance be
    restarted is a misconfiguration, not a policy (``restart = "never"`` says that, if meant).
    """
    what = 'a count >= 1 or a percentage from "1%" to "100%" (like "25%")'
    if units.is_int(value) and value >= 1:
        return MaxUnavailable(value, percent=False)
    match = _PERCENT.fullmatch(value) if isinstance(value, str) else None
    if match is not None and 1 <= int(match[1]) <= 100:
        return MaxUnavailable(int(match[1]), percent=True)
    raise units.expected(what, value)


def _rlimits(value: Any) -> dict[str, int | None]:
    """``rlimits = { nofile = 65536, core = 0, nproc = "unlimited" }``: None stands for unlimited.

    A value above the daemon's hard limit is no config error (the daemon may run with another
    one): it is clamped to that hard limit at spawn, with a warning, and `supervise check` warns.
    """
    if not isinstance(value, dict):
        raise units.expected("a table like { nofile = 65536, core = 0 }", value)
    errors: list[tuple[tuple[str | int, ...], str]] = []
    limits: dict[str, int | None] = {}
    for key, item in value.items():
        if key not in RLIMIT_KEYS:
            errors.append(((key,), f"unknown limit{did_you_mean(key, RLIMIT_KEYS)}; "
                                   f"supervise sets {', '.join(RLIMIT_KEYS)}"))
        elif item == "unlimited" and key == "nofile":
            errors.append(((key,), 'nofile cannot be "unlimited" (the kernel caps it at fs.nr_open): '
                                   "give a number, like 65536"))
        elif item == "unlimited":
            limits[key] = None
        elif units.is_int(item) and item >= 0:
            limits[key] = item
        else:
            what = "an integer >= 0" if key == "nofile" else 'an integer >= 0 or "unlimited"'
            errors.append(((key,), units.expected(what, item).args[0]))
    if errors:
        raise Invalid.many(errors)
    return limits


# -- cluster ------------------------------------------------------------------------


def _cluster(table: _Table, base: Path) -> ClusterConfig | None:
    """``[cluster]``; None (with the problems reported) when it cannot be used."""
    path = lambda value: units.absolute(base, units.path_text(value))  # noqa: E731
    values = table.read({
        "etcd": _etcd_endpoints,
        "name": _name,
        "node": _name,
        "lease_ttl": _lease_ttl,
        "capacity": units.integer,
        "labels": _labels,
        "ca": path,
        "cert": path,
        "key": path,
        "user": units.string,
        "password": units.string,
    })
    if "etcd" not in table.raw:
        table.check.report(table.path + ("etcd",),
                           'missing; a cluster needs its etcd endpoints, like etcd = ["127.0.0.1:2379"]')
    for key in ("ca", "cert", "key"):
        if key in values and not values[key].is_file():
            table.check.report(table.path + (key,), f"no such file: {values[key]}")
    for one, other in (("cert", "key"), ("key", "cert"), ("user", "password"), ("password", "user")):
        if one in table.raw and other not in table.raw:
            table.check.report(table.path + (one,), f"needs {other} as well")
    if "etcd" not in values:
        return None
    return ClusterConfig(**values)


def _etcd_endpoints(value: Any) -> tuple[str, ...]:
    endpoints = units.array_of(_etcd_endpoint, "etcd endpoints")([value] if isinstance(value, str) else value)
    if not endpoints:
        raise units.expected('at least one etcd endpoint, like ["127.0.0.1:2379"]', value)
    return endpoints


def _etcd_endpoint(value: Any) -> str:
    text = units.string(value)
    match = _ETCD_ENDPOINT.fullmatch(text)
    if not match or not 0 < int(match[3]) < 65536:
        raise units.expected('an etcd endpoint like "127.0.0.1:2379" or "https://etcd1:2379"', value)
    return text.rstrip("/")


def _name(value: Any) -> str:
    text = units.string(value)
    if not _NAME.fullmatch(text):
        raise units.expected('a name of letters, digits, "_", "." and "-"', value)
    return text


def _lease_ttl(value: Any) -> int:
    seconds = units.duration(value)
    if seconds < MIN_LEASE_TTL or seconds != int(seconds):
        raise units.expected(f"whole seconds, at least {MIN_LEASE_TTL} (etcd's leases count in seconds)", value)
    return int(seconds)


def _labels(value: Any) -> dict[str, str]:
    if not isinstance(value, dict):
        raise units.expected('a table of labels like { zone = "a" }', value)
    errors: list[tuple[tuple[str | int, ...], str]] = []
    for key, item in value.items():
        if not _NAME.fullmatch(key):
            errors.append(((key,), 'label names may use only letters, digits, "_", "." and "-"'))
        elif not isinstance(item, str) or not item:
            errors.append(((key,), units.expected("a non-empty string", item).args[0]))
    if errors:
        raise Invalid.many(errors)
    return dict(value)


def _label_key(value: Any) -> str:
    text = units.string(value)
    if not _NAME.fullmatch(text):
        raise units.expected('a label name like "zone"', value)
    return text


def _check_placement(apps: _Table, configs: dict[str, AppConfig], clustered: bool) -> None:
    """Cluster keys make sense together, and only with a [cluster] to run in."""
    for name, app in configs.items():
        at = apps.path + (name,)
        if app.clustered and not clustered:
            apps.check.report(at + ("placement",),
                              f'placement = "{app.placement}" needs a [cluster] section (the etcd to place through)')
        if app.singleton and app.placement is not Placement.CLUSTER:
            apps.check.report(at + ("singleton",), 'a singleton needs placement = "cluster"')
        if app.singleton and app.instances != 1:
            apps.check.report(at + ("instances",), "a singleton runs exactly 1 instance")
        for key in ("constraints", "spread"):
            if key in apps.raw[name] and not app.clustered:
                apps.check.report(at + (key,), f'{key} places instances on nodes: it needs placement = "cluster" '
                                               'or "every-node"')
        for index, dependency in enumerate(app.depends_on):
            other = configs.get(dependency)
            if other is not None and other.clustered:
                apps.check.report(at + ("depends_on", index),
                                  f"{dependency} is a cluster app (its instances may run on other nodes): "
                                  "only local apps can be waited for")


def _check_ports(table: _Table, app: AppConfig) -> None:
    """Cross-key rules: {port} needs a port, and every instance's port must exist."""
    if "command" in table.bad or "port" in table.bad:
        return
    for index, part in enumerate(app.command):
        if app.port is None and "port" in units.placeholders(part):
            at = (index,) if isinstance(table.raw.get("command"), list) else ()
            table.check.report(table.path + ("command", *at), "uses {port} but the app has no port key")
            break
    last = (app.port or 0) + app.instances - 1
    if app.port is not None and "instances" not in table.bad and last > 65535:
        message = f"{app.instances} instances from port {app.port} run to {last}, past 65535"
        table.check.report(table.path + ("port",), message)


def _backoff(table: _Table) -> BackoffConfig:
    backoff = BackoffConfig(
        **table.read(
            {
                "initial": units.duration,
                "max": units.duration,
                "multiplier": partial(units.number, lo=1),
                "jitter": partial(units.number, lo=0, hi=1),
                "reset_after": units.duration,
            }
        )
    )
    if backoff.max < backoff.initial and not table.bad & {"initial", "max"}:
        key = "max" if "max" in table.raw else "initial"
        message = f"max ({backoff.max:g}s) must be >= initial ({backoff.initial:g}s)"
        table.check.report(table.path + (key,), message)
    return backoff


def _crash_loop(table: _Table) -> CrashLoopConfig:
    return CrashLoopConfig(
        **table.read({"max_restarts": units.integer, "window": units.duration, "cooldown": units.duration})
    )


def _check_dependencies(apps: _Table, configs: dict[str, AppConfig]) -> None:
    """depends_on names real apps, never itself, and has no cycles."""
    graph: dict[str, list[str]] = {}
    for name, app in configs.items():
        graph[name] = []
        for index, dependency in enumerate(app.depends_on):
            at = apps.path + (name, "depends_on", index)
            if dependency == name:
                apps.check.report(at, "an app cannot depend on itself")
            elif dependency not in apps.raw:
                apps.check.report(at, f"no app named {show(dependency)}{did_you_mean(dependency, apps.raw)}")
            elif dependency in configs:
                graph[name].append(dependency)
    for cycle in _cycles(graph):
        apps.check.report(apps.path + (cycle[0], "depends_on"), "dependency cycle: " + " -> ".join(cycle))


def _cycles(graph: dict[str, list[str]]) -> list[list[str]]:
    """Each distinct cycle once, as a path from its first app in file order back to it."""
    order = {name: index for index, name in enumerate(graph)}
    done: set[str] = set()
    found: dict[frozenset[str], list[str]] = {}

    def visit(node: str, stack: list[str]) -> None:
        stack.append(node)
        for nxt in graph[node]:
            if nxt in stack:
                cycle = stack[stack.index(nxt) :]
                first = min(range(len(cycle)), key=lambda i: order[cycle[i]])
                cycle = cycle[first:] + cycle[:first]
                found.setdefault(frozenset(cycle), cycle + [cycle[0]])
            elif nxt not in done:
                visit(nxt, stack)
        stack.pop()
        done.add(node)

    for node in graph:
        if node not in done:
            visit(node, [])
    return list(found.values())
