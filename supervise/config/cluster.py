"""``[cluster]`` and the app keys that place instances through it (placement, singleton,
constraints, spread): read and checked together, every problem located."""

from __future__ import annotations

import re
from functools import partial
from pathlib import Path
from typing import Any

from supervise.config import units as units
from supervise.config.model import AppConfig, ClusterConfig, Placement
from supervise.config.table import Apps, Table
from supervise.config.units import Invalid

__all__ = ["MIN_LEASE_TTL", "check_placement", "label_key", "labels", "section"]

_NAME = re.compile(r"[A-Za-z0-9_.-]{1,128}")  # cluster and node names: they are etcd key segments
_ETCD_ENDPOINT = re.compile(r"(?:(https?)://)?(\[[0-9a-fA-F:]+\]|[A-Za-z0-9.-]+):(\d{1,5})/?")
MIN_LEASE_TTL = 2
"""etcd refuses shorter leases (with its default timing)."""


def section(table: Table, base: Path) -> ClusterConfig | None:
    """``[cluster]``; None (with the problems reported) when it cannot be used."""
    path = partial(_path, base)
    values = table.read({
        "etcd": _etcd_endpoints,
        "name": _name,
        "node": _name,
        "lease_ttl": _lease_ttl,
        "capacity": units.integer,
        "labels": labels,
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


def _path(base: Path, value: Any) -> Path:
    return units.absolute(base, units.path_text(value))


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


def labels(value: Any) -> dict[str, str]:
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


def label_key(value: Any) -> str:
    text = units.string(value)
    if not _NAME.fullmatch(text):
        raise units.expected('a label name like "zone"', value)
    return text


def check_placement(apps: Apps, clustered: bool) -> None:
    """Cluster keys make sense together, and only with a [cluster] to run in."""
    for name, app in apps.configs.items():
        if app.clustered and not clustered:
            apps.report(name, ("placement",),
                        f'placement = "{app.placement}" needs a [cluster] section (the etcd to place through)')
        if app.singleton and app.placement is not Placement.CLUSTER:
            apps.report(name, ("singleton",), 'a singleton needs placement = "cluster"')
        if app.singleton and app.instances != 1:
            apps.report(name, ("instances",), "a singleton runs exactly 1 instance")
        for key in ("constraints", "spread"):
            if key in apps.raw[name] and not app.clustered:
                apps.report(name, (key,), f'{key} places instances on nodes: it needs placement = "cluster" '
                                          'or "every-node"')
        _check_dependencies_local(apps, name, app)


def _check_dependencies_local(apps: Apps, name: str, app: AppConfig) -> None:
    for index, dependency in enumerate(app.depends_on):
        other = apps.configs.get(dependency)
        if other is not None and other.clustered:
            apps.report(name, ("depends_on", index),
                        f"{dependency} is a cluster app (its instances may run on other nodes): "
                        "only local apps can be waited for")
