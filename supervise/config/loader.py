"""supervise.toml -> the frozen dataclasses of ``model``, or every problem at once.

Each problem names the file, the line, the key path and what was expected;
``units`` converts values, ``lines`` finds where each key was written,
``table`` reads tables; the app keys with more to them have a module each
(``probes``, ``listen``, ``runas``, ``dotenv``, ``commands``, ``cluster``,
``includes``). Warnings (a config that works, but likely not as meant) go to
``Config.warnings`` for `supervise check`.
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Callable
from enum import StrEnum
from functools import partial
from pathlib import Path
from typing import Any

from supervise.config import cluster, commands, dotenv, includes, listen, probes, runas, spares
from supervise.config import units as units
from supervise.config.errors import ConfigError, Problem
from supervise.config.hints import FOREIGN_APP_KEYS
from supervise.config.lines import LineIndex
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
from supervise.config.table import Apps, Check, Table, keys
from supervise.config.toml import parse_toml, read_toml
from supervise.config.units import Invalid, did_you_mean, show

__all__ = ["ConfigError", "Problem", "load", "loads"]  # the errors are errors.py's, here for the callers of load


_APP_NAME = re.compile(r"[A-Za-z0-9_.-]+")
_PERCENT = re.compile(r"\s*(\d{1,3})\s*%\s*")  # max_unavailable = "25%"
APP_KEYS = keys(AppConfig, "name", "readiness_probe", "listen_options")  # those two are read from readiness, listen


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
    check = Check(file, LineIndex(text))
    config = _config(check, file, data)
    if check.problems:
        raise ConfigError(_in_order(file, check.problems))
    return dataclasses.replace(config, text=text, warnings=tuple(map(str, _in_order(file, check.warnings))))


def _in_order(main: Path, problems: list[Problem]) -> list[Problem]:
    """By file (the main one first, the others as they came up), then by line."""
    files = {main: 0}
    for problem in problems:
        files.setdefault(problem.file, len(files))
    return sorted(problems, key=lambda problem: (files[problem.file], problem.line or 0))


def _base_dir(file: Path) -> Path:
    return Path(os.path.abspath(file)).parent


# -- validation ---------------------------------------------------------------


def _config(check: Check, file: Path, data: dict[str, Any]) -> Config:
    base = _base_dir(file)
    top = Table(check, (), data, ("supervise", "apps", "cluster"))
    supervise = _supervise(top.table("supervise", keys(SuperviseConfig)), base)
    section = cluster.section(top.table("cluster", keys(ClusterConfig)), base) if "cluster" in data else None
    files, included = includes.included(check, supervise.include, base)
    apps = Apps()
    for table in (top.table("apps", None, " of apps like [apps.web]"), *included):
        for name, raw in table.raw.items():
            _add_app(apps, table, name, raw, base)
    _check_dependencies(apps)
    cluster.check_placement(apps, "cluster" in data)
    return Config(path=base / file.name, supervise=supervise, apps=apps.configs, cluster=section,
                  included=tuple(files))


def _add_app(apps: Apps, table: Table, name: str, raw: Any, base: Path) -> None:
    if name in apps.tables:
        first = apps.tables[name]
        table.report((name,), f"app {show(name)} is defined twice: first at {first.check.where(first.path + (name,))}")
        return
    apps.raw[name], apps.tables[name] = raw, table
    if app := _app(table, name, raw, base):
        apps.configs[name] = app


def _supervise(table: Table, base: Path) -> SuperviseConfig:
    values = table.read(
        {
            "state_dir": lambda value: units.absolute(base, units.path_text(value)),
            "log_format": partial(units.choice, kind=LogFormat),
            "log_level": partial(units.choice, kind=LogLevel, fold_case=True),
            "control": _tcp_endpoint,
            "control_key": lambda value: units.absolute(base, units.path_text(value)),
            "control_clients": units.array_of(partial(_client_key, base), "keys"),
            "metrics": _metrics_address,
            "include": units.array_of(units.path_text, "globs"),
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


def _app(apps: Table, name: str, raw: Any, base: Path) -> AppConfig | None:
    """One app from its table; None when it is not even a table with a valid name."""
    path = apps.path + (name,)
    if not _APP_NAME.fullmatch(name):
        apps.check.report(path, 'app names may use only letters, digits, "_", "." and "-"')
        return None
    if not isinstance(raw, dict):
        apps.check.report(path, units.expected("a table like [apps.web]", raw).args[0])
        return None
    table = Table(apps.check, path, raw, APP_KEYS, hints=FOREIGN_APP_KEYS)
    if "command" not in raw:
        apps.check.report(path + ("command",), 'missing; every app needs one, like command = "python3 w.py"')
    backoff = table.table("backoff", keys(BackoffConfig), ' like { initial = "100ms" }')
    crash_loop = table.table("crash_loop", keys(CrashLoopConfig), " like { max_restarts = 10 }")
    shell = table.get("shell", units.boolean, False)
    has_port = "port" in raw
    readiness, probe = table.get("readiness", partial(probes.readiness, base=base, has_port=has_port),
                                 (Readiness.NONE, None))
    env_file, file_env = dotenv.env_files(table, base)
    sockets = listen.read(table, base)
    app = AppConfig(
        name=name,
        command=table.get("command", partial(commands.command, shell=shell), ()),
        cwd=table.get("cwd", partial(units.directory, base), base),
        shell=shell,
        readiness=readiness,
        readiness_probe=probe,
        liveness=table.get("liveness", partial(probes.liveness, base=base, has_port=has_port)),
        env={**file_env, **table.get("env", units.env, {})},  # env wins over its env_file
        env_file=env_file,
        listen=tuple(address for address, _ in sockets),
        listen_options={address: options for address, options in sockets if options is not None},
        backoff=_backoff(backoff),
        crash_loop=_crash_loop(crash_loop),
        **runas.run_as(table),
        **table.read(_app_converters(base)),
    )
    _check_ports(table, app)
    _check_recycling(table)
    spares.check(table, app)
    _warnings(table, app)
    return app


def _app_converters(base: Path) -> dict[str, Callable[[Any], Any]]:
    strings = units.array_of(units.string, "strings")
    return {
        "instances": commands.instances,
        "restart": partial(units.choice, kind=Restart),
        "stop_signal": units.stop_signal,
        "stop_timeout": units.duration,
        "ready_after": units.duration,
        "start_timeout": units.duration,
        "heartbeat_timeout": partial(units.duration, positive=True),
        "max_memory": partial(units.size, positive=True),
        "max_processes": partial(units.integer, lo=1),
        "max_unavailable": _max_unavailable,
        "max_age": partial(units.duration, positive=True),
        "max_age_jitter": units.duration,
        "watch": strings,
        "watch_ignore": strings,
        "depends_on": strings,
        "log_max_size": partial(units.size, positive=True),
        "log_backups": units.integer,
        "port": partial(units.integer, lo=1, hi=65535),
        "chaos": units.boolean,
        "reload_surge": units.integer,
        "placement": partial(units.choice, kind=Placement),
        "singleton": units.boolean,
        "constraints": cluster.labels,
        "spread": cluster.label_key,
        "rlimits": _rlimits,
        "spares": partial(units.integer, lo=0, hi=spares.MAX_SPARES),
    }


def _check_recycling(table: Table) -> None:
    if "max_age_jitter" in table.raw and "max_age" not in table.raw:
        table.report(("max_age_jitter",), 'spreads max_age, which is not set: add max_age, like max_age = "24h"')


def _warnings(table: Table, app: AppConfig) -> None:
    """What works but is likely not what was meant: `supervise check` prints these."""
    command = table.raw.get("command")
    if not app.shell and isinstance(command, str) and "command" not in table.bad:
        if found := commands.shell_syntax(command):
            table.warn(("command",), f"{found} is shell syntax, but no shell runs this command: it reaches the "
                                     "program as written; set shell = true to run it through /bin/sh -c, or write "
                                     "command as an array to say it is meant literally")
    if "ready_after" in table.raw and app.readiness is not Readiness.NONE:
        table.warn(("ready_after",), f'counts only with readiness = "none": with readiness = "{app.readiness}" '
                                     "an instance is ready when the readiness signal says so, and this is ignored")
    for key, message in probes.shared_listen_warnings(app):
        table.warn((key,), message)


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


def _check_ports(table: Table, app: AppConfig) -> None:
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


def _backoff(table: Table) -> BackoffConfig:
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


def _crash_loop(table: Table) -> CrashLoopConfig:
    return CrashLoopConfig(
        **table.read({"max_restarts": units.integer, "window": units.duration, "cooldown": units.duration})
    )


def _check_dependencies(apps: Apps) -> None:
    """depends_on names real apps, never itself, and has no cycles."""
    graph: dict[str, list[str]] = {}
    for name, app in apps.configs.items():
        graph[name] = []
        for index, dependency in enumerate(app.depends_on):
            at = ("depends_on", index)
            if dependency == name:
                apps.report(name, at, "an app cannot depend on itself")
            elif dependency not in apps.raw:
                apps.report(name, at, f"no app named {show(dependency)}{did_you_mean(dependency, apps.raw)}")
            elif dependency in apps.configs:
                graph[name].append(dependency)
    for cycle in _cycles(graph):
        apps.report(cycle[0], ("depends_on",), "dependency cycle: " + " -> ".join(cycle))


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
