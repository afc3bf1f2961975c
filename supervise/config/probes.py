"""``readiness`` and ``liveness``: the probe forms of an app, and the probes that cannot work.

A probe is a string (``"http"``, ``"tcp"``: the app's own ``{port}`` on
127.0.0.1) or a table with exactly one of ``http``, ``tcp``, ``exec`` and its
timing. Defaults: readiness every 1 s, liveness every 10 s (Kubernetes'
periodSeconds), each try given 1 s, 3 failures in a row to fail, 1 success
to pass.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from supervise.config import units as units
from supervise.config.model import PROBE_READINESS, AppConfig, Probe, ProbeKind, Readiness
from supervise.config.units import Invalid, TcpAddress, UnixAddress, did_you_mean, show

__all__ = ["liveness", "readiness", "shared_listen_warnings"]

KINDS = tuple(kind.value for kind in ProbeKind)
SETTINGS = ("interval", "timeout", "failures", "successes")
LIVENESS_INTERVAL = 10.0
_SAMPLE = {"app": "app", "instance": 0, "port": 8080}  # to check a template's shape once filled in
_WILDCARD = {"0.0.0.0", "::", ""}
_LOOPBACK = {"127.0.0.1", "localhost", "::1"}

Errors = list[tuple[tuple[str | int, ...], str]]


def readiness(value: Any, base: Path, has_port: bool) -> tuple[Readiness, Probe | None]:
    """``readiness``: a name (none, heartbeat, notify, http, tcp) or a probe table."""
    if isinstance(value, dict):
        probe = _table(value, "readiness", base, has_port)
        return PROBE_READINESS[probe.kind], probe
    if value in ("http", "tcp"):
        return Readiness(value), _on_port(ProbeKind(value), "readiness", has_port)
    if value == "exec":
        raise Invalid('readiness = "exec" needs the command to run: write it as a table, '
                      'like readiness = { exec = ["./check", "{instance}"] }')
    names = [member.value for member in Readiness]
    if isinstance(value, str) and value in names:
        return Readiness(value), None
    hint = did_you_mean(value, names) if isinstance(value, str) else ""
    raise Invalid(f"expected one of {', '.join(map(show, names))} or a probe table like "
                  f'{{ http = "/health" }}, got {show(value)}{hint}')


def liveness(value: Any, base: Path, has_port: bool) -> Probe:
    """``liveness``: ``"http"``, ``"tcp"`` or a probe table (no ``successes``: one pass is enough)."""
    if isinstance(value, dict):
        return _table(value, "liveness", base, has_port)
    if value in ("http", "tcp"):
        return _on_port(ProbeKind(value), "liveness", has_port, interval=LIVENESS_INTERVAL)
    raise units.expected('"http", "tcp" or a probe table like { http = "/health" } or { exec = ["./alive"] }', value)


def _on_port(kind: ProbeKind, key: str, has_port: bool, interval: float = 1.0) -> Probe:
    """The string forms: GET / or a connect on the instance's own {port} on 127.0.0.1."""
    target = "http://127.0.0.1:{port}/" if kind is ProbeKind.HTTP else "127.0.0.1:{port}"
    if not has_port:
        example = '{ tcp = "127.0.0.1:8080" }'
        if kind is ProbeKind.HTTP:
            example = '{ http = "http://127.0.0.1:8080/health" }'
        raise Invalid(f'{key} = "{kind}" probes {target} and needs the app\'s port key; set port, '
                      f"or name the address: {key} = {example}")
    return Probe(kind, (target,), interval=interval)


def _table(value: dict[str, Any], key: str, base: Path, has_port: bool) -> Probe:
    errors: Errors = []
    allowed = KINDS + (SETTINGS if key == "readiness" else SETTINGS[:-1])
    for name in value:
        if name == "successes" and key == "liveness":
            errors.append(((name,), "successes is for readiness only: a liveness probe passes on one success "
                                    "and fails after `failures` failures in a row"))
        elif name not in allowed:
            errors.append(((name,), f"unknown key{did_you_mean(name, allowed)}; a probe has one of "
                                    f"{', '.join(KINDS)} and {', '.join(allowed[len(KINDS):])}"))
    kinds = [name for name in KINDS if name in value]
    if len(kinds) != 1:
        what = "none" if not kinds else " and ".join(kinds)
        errors.append(((), f"a probe has exactly one of http, tcp or exec (got {what}), "
                           f'like {key} = {{ http = "/health" }} or {{ exec = ["./check"] }}'))
    settings: dict[str, Any] = {"interval": 1.0 if key == "readiness" else LIVENESS_INTERVAL}
    for name, convert in (("interval", _positive), ("timeout", _positive), ("failures", _count),
                          ("successes", _count)):
        if name in value and name in allowed:
            try:
                settings[name] = convert(value[name])
            except Invalid as error:
                errors += [((name, *at), message) for at, message in error.errors]
    target: tuple[str, ...] = ()
    if len(kinds) == 1:
        kind = kinds[0]
        try:
            target = _TARGETS[kind](value[kind], base, has_port)
        except Invalid as error:
            errors += [((kind, *at), message) for at, message in error.errors]
    if errors:
        raise Invalid.many(errors)
    return Probe(ProbeKind(kinds[0]), target, **settings)


def _positive(value: Any) -> float:
    return units.duration(value, positive=True)


def _count(value: Any) -> int:
    return units.integer(value, lo=1)


def _template(value: Any, has_port: bool) -> str:
    text = units.string(value)
    if "\0" in text:
        raise Invalid(f"a probe target cannot contain a NUL character, got {show(text)}")
    if "port" in units.placeholders(text) and not has_port:
        raise Invalid("uses {port} but the app has no port key")
    return text


def _http(value: Any, base: Path, has_port: bool) -> tuple[str, ...]:
    """An http:// URL, or a path on http://127.0.0.1:{port}."""
    if isinstance(value, str) and value.startswith("/"):
        if not has_port:
            raise Invalid(f"a path alone is probed on http://127.0.0.1:{{port}}, which needs the app's port key; "
                          f'give the whole URL, like "http://127.0.0.1:8080{value}"')
        value = "http://127.0.0.1:{port}" + value
    text = _template(value, has_port)
    sample = text.format(**_SAMPLE)
    what = 'an http:// URL like "http://127.0.0.1:{port}/health", or a path like "/health"'
    try:
        parts = urlsplit(sample)
    except ValueError:  # "http://[::1/": an unclosed bracket
        raise units.expected(what, text) from None
    if parts.scheme.lower() == "https":
        raise Invalid("https probes are not supported: the probe runs on this host, so probe the app's "
                      f"plain-http port, or use a tcp probe; got {show(text)}")
    if parts.scheme.lower() != "http" or not parts.hostname or any(char.isspace() for char in sample):
        raise units.expected(what, text)
    try:
        port = parts.port
    except ValueError:
        port = 0
    if port == 0:
        raise units.expected(f"{what} (a port from 1 to 65535)", text)
    return (text,)


def _tcp(value: Any, base: Path, has_port: bool) -> tuple[str, ...]:
    """"host:port" to connect to, or "unix:/path" (relative to the config's directory)."""
    text = _template(value, has_port)
    address = units.parse_listen_address(text.format(**_SAMPLE))
    if isinstance(address, TcpAddress) and address.port == 0:
        raise units.expected("a port from 1 to 65535", text)
    if isinstance(address, UnixAddress) and not address.abstract:
        return (f"unix:{units.absolute(base, text.removeprefix('unix:'))}",)
    return (text,)


def _exec(value: Any, base: Path, has_port: bool) -> tuple[str, ...]:
    """An argv like ``command``'s: a shell-split string or an array."""
    argv = units.command(value)
    for index, part in enumerate(argv):
        if "port" in units.placeholders(part) and not has_port:
            raise Invalid("uses {port} but the app has no port key", (index,) if isinstance(value, list) else ())
    return argv


_TARGETS = {"http": _http, "tcp": _tcp, "exec": _exec}


# -- probes that cannot tell instances apart ------------------------------------------


def shared_listen_warnings(app: AppConfig) -> Iterator[tuple[str, str]]:
    """(key, message) for each http or tcp probe aimed at one of the app's shared ``listen`` sockets.

    Every instance accepts on such a socket, so the probe reaches whichever instance the kernel
    picks: a readiness probe passes as soon as any instance serves, a liveness probe never sees
    the hung one.
    """
    listening = [(address, units.parse_listen_address(address)) for address in app.listen]
    for key, probe in (("readiness", app.readiness_probe), ("liveness", app.liveness)):
        if probe is None or probe.kind is ProbeKind.EXEC or not listening:
            continue
        for target in _targets(app, probe):
            shared = next((text for text, address in listening if _same(target, address)), None)
            if shared is not None:
                yield key, (f"probes {show(shared)}, a shared listen socket: every instance accepts there, so the "
                            "probe cannot tell a starting instance from the ones already serving; probe a "
                            'per-instance address with {port}, or use readiness = "notify", "heartbeat" or an '
                            "exec probe")
                break


def _targets(app: AppConfig, probe: Probe) -> Iterator[units.ListenAddress]:
    template = probe.target[0]
    count = 1 if not units.placeholders(template) & {"instance", "port"} else max(app.instances, 1)
    for index in range(count):
        text = probe.render(app.name, index, app.port)[0]
        if probe.kind is ProbeKind.HTTP:
            try:
                parts = urlsplit(text)
                yield TcpAddress(parts.hostname or "", parts.port or 80)
            except ValueError:  # a port past 65535 once filled in: not one of ours
                continue
        else:
            try:
                yield units.parse_listen_address(text)
            except Invalid:
                continue


def _same(probe: units.ListenAddress, listen: units.ListenAddress) -> bool:
    if isinstance(probe, UnixAddress) or isinstance(listen, UnixAddress):
        return isinstance(probe, UnixAddress) and isinstance(listen, UnixAddress) and probe.path == listen.path
    if probe.port != listen.port:
        return False
    return probe.host == listen.host or listen.host in _WILDCARD or {probe.host, listen.host} <= _LOOPBACK
