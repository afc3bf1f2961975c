"""One ``cmd_<verb>`` function per CLI verb: it does the verb's work and prints its output.

The control verbs are thin users of the public Python API (``supervise.client``,
whose ``Client`` lives in ``control.api``): they call its methods and print.
A verb returns normally when it is done and raises when it is not: the
API's errors, :class:`Failed` (its OperationFailed, exit 1),
:class:`UsageError` (exit 2) or NoDaemon (exit 3); ``supervise.cli.main``
is the one place that turns those into messages and exit codes. Only what a verb needs is
imported, and heavy modules only inside the verb that needs them, so that
`supervise status` imports neither pyzmq nor the daemon.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from supervise.config.locate import locate_state_dir
from supervise.control.api import Client
from supervise.control.client import Control, ControlError, NoDaemon, OperationFailed, UsageError
from supervise.wire import protocol, statedir
from supervise.wire.statedir import StatePaths

# typing.TYPE_CHECKING without importing typing, which nothing else on the CLI's path imports.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from types import ModuleType

    from supervise.config.model import AppConfig, Config

ENV_CONNECT, ENV_KEY, ENV_SERVER_KEY = "SUPERVISE_CONNECT", "SUPERVISE_KEY", "SUPERVISE_SERVER_KEY"


Failed = OperationFailed
"""The operation was tried and did not succeed (exit code 1). UsageError: the command line asks
for something impossible (exit code 2). Both are the Python API's own errors."""


def cmd_run(args: SimpleNamespace) -> None:
    """Run the daemon in the foreground until it is shut down; exits the process with its code."""
    from supervise.config import loader

    cfg = loader.load(args.config)
    daemon, log = import_daemon(allow_ssl=cfg.cluster is not None)  # etcd may speak TLS
    logger = log.configure(cfg.supervise.log_format, cfg.supervise.log_level)
    try:
        code = daemon.run(cfg, logger)
    except statedir.AlreadyRunning as exc:
        raise Failed(str(exc)) from None
    except daemon.CannotStart as exc:
        raise Failed(f"cannot start: {exc}") from None
    # Everything is drained, closed and unlocked: skip the interpreter's final
    # garbage collection, which alone took ~90 ms of a 100-instance shutdown.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def import_daemon(allow_ssl: bool = False) -> tuple[ModuleType, ModuleType]:
    """The daemon's modules (runtime.daemon, runtime.log), imported without ssl.

    asyncio imports ssl when it can, and keeps it (with libssl and libcrypto)
    resident for the daemon's whole life; the daemon speaks no TLS. A None in
    sys.modules makes that import fail, which asyncio expects and handles.
    Measured, daemon RSS with idle instances, with this and without: 26.8
    against 30.9 MiB with 100 (medians of 3 interleaved runs; the target is
    25 MiB), 29.4 against 33.4 MiB with 500 (target 40 MiB). Only in this
    process, and only if nothing has loaded ssl already.
    """
    if not allow_ssl:
        sys.modules.setdefault("ssl", None)  # type: ignore[arg-type]  # a None entry is how an import is refused
    from supervise.runtime import daemon, log

    return daemon, log


def cmd_check(args: SimpleNamespace) -> None:
    """Validate the config and print its warnings (on stderr: they do not fail it, the exit code stays 0);
    when a daemon runs on it, also say what `supervise reload` would change."""
    from supervise.cli import render  # only when something is printed for people
    from supervise.config import loader

    cfg = loader.load(args.config)
    local = sum(app.instances for app in cfg.apps.values() if not app.clustered)
    clustered = [app for app in cfg.apps.values() if app.clustered]
    summary = f"{len(cfg.apps)} apps, {local} {'local ' if clustered else ''}instances"
    spares = sum(app.spares for app in cfg.apps.values())
    if spares:
        summary += f" and {spares} spare{'' if spares == 1 else 's'}"
    if cfg.cluster is not None and clustered:
        summary += f"; cluster {cfg.cluster.name!r} through {', '.join(cfg.cluster.etcd)}: "
        summary += ", ".join(f"{app.name} ({_cluster_count(app)})" for app in clustered)
    print(f"{args.config}: ok ({summary})")
    from supervise.runtime.limits import check_fds  # warnings only: the config is fine

    for warning in [f"warning: {warning}" for warning in cfg.warnings] + check_fds(cfg) + _metrics_warnings(cfg):
        print(warning, file=sys.stderr)
    try:
        plan = Control(StatePaths(cfg.supervise.state_dir)).request(protocol.Request("reload", dry_run=True))
    except (NoDaemon, ControlError, OSError):
        return
    changes = [line for line in render.plan_lines(plan["plan"], dry_run=True) if not line.endswith(": unchanged")]
    print("the running daemon would, on `supervise reload`:" if changes else
          "the running daemon already runs this config")
    for line in changes:
        print("  " + line)


def cmd_status(args: SimpleNamespace) -> None:
    """Every instance (or the named ones): a table, or the daemon's JSON with --json."""
    if getattr(args, "cluster", False):
        _cluster_status(args)
        return
    client = _client(args)
    if args.json:  # what scripts call in a loop: the daemon's JSON as it came, without the table's module
        text = client.control.request_json(protocol.Request("status", tuple(args.targets)), client.timeout)
        sys.stdout.buffer.write(text + b"\n")
        return
    result = client.status_json(*args.targets)
    from supervise.cli import render

    print(render.status_table(result))


def _metrics_warnings(cfg: Config) -> list[str]:
    """`[supervise] metrics` on an address other hosts may reach: /metrics and the dashboard have no login."""
    if cfg.supervise.metrics is None:
        return []
    import ipaddress

    from supervise.config.units import TcpAddress, parse_listen_address

    address = parse_listen_address(cfg.supervise.metrics)
    host = address.host if isinstance(address, TcpAddress) else ""
    try:
        loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name: it binds whatever that resolves to
        loopback = False
    if loopback:
        return []
    return [f"warning: supervise.metrics = \"{cfg.supervise.metrics}\" is not a loopback address: /metrics and the "
            "dashboard answer anyone who can reach it, with no authentication; bind 127.0.0.1 and put a reverse "
            "proxy with authentication in front to show them further (README: Metrics)"]


def _cluster_count(app: AppConfig) -> str:
    if app.singleton:
        return "singleton"
    return f"{app.instances} per node" if app.placement == "every-node" else f"{app.instances} across the cluster"


def _cluster_status(args: SimpleNamespace) -> None:
    if args.targets:
        raise UsageError("status --cluster shows the whole cluster: it takes no APP or NAME")
    result = _control(args).request(protocol.Request("status", options={"cluster": True}))
    if args.json:
        print(json.dumps(result))
        return
    from supervise.cli import render

    print(render.cluster_table(result))


def cmd_cluster(args: SimpleNamespace) -> None:
    """Drain a node (cordon it: the leader moves its instances, each new one ready before the old
    stops) and wait until it runs no cluster instance; or uncordon it."""
    import time

    control = _control(args)
    control.request(protocol.Request("cluster", (args.node,), options={"action": args.action}))
    if args.action == "uncordon":
        print(f"{args.node}: uncordoned; it takes new work")
        return
    if args.no_wait:
        print(f"{args.node}: cordoned; its instances are moving")
        return
    deadline = time.monotonic() + args.timeout
    while True:
        status = control.request(protocol.Request("status", options={"cluster": True}))
        left = [i["name"] for i in status["instances"] if args.node in (i["node"], i.get("handoff_from"))]
        if not left:
            print(f"{args.node}: drained and cordoned")
            return
        if time.monotonic() >= deadline:
            raise Failed(f"{args.node} is cordoned but still runs {', '.join(left)} after {args.timeout:g}s "
                         "(no other node has room, or their new instances are not ready)")
        time.sleep(0.1)  # polling the daemon's view, not synchronizing


def cmd_start(args: SimpleNamespace) -> None:
    """Start apps or instances and wait until they have settled."""
    _settle("start", args)


def cmd_stop(args: SimpleNamespace) -> None:
    """Stop apps or instances and wait until they have settled."""
    _settle("stop", args)


def cmd_restart(args: SimpleNamespace) -> None:
    """Restart apps or instances and wait until they have settled."""
    _settle("restart", args)


def _settle(verb: str, args: SimpleNamespace) -> None:
    from supervise.cli import render  # only when something is printed for people

    client = _client(args)
    act = {"start": client.start, "stop": client.stop, "restart": client.restart}[verb]
    print(render.status_table(act(*args.targets, timeout=args.timeout).raw))


def cmd_scale(args: SimpleNamespace) -> None:
    """Grow or shrink an app to N instances and wait until they have settled."""
    from supervise.cli import render  # only when something is printed for people

    result = _client(args).scale(args.app, args.count, timeout=args.timeout).raw
    if result.get("cluster"):
        print(f"{args.app}: {args.count} instances across the cluster; the leader places them "
              "(supervise status --cluster)")
        return
    print(render.status_table(result) if result["apps"] else f"{args.app}: scaled to {args.count}")


def cmd_reload(args: SimpleNamespace) -> None:
    """Roll the named apps onto fresh processes; with none, re-read the config and apply the difference."""
    from supervise.cli import render  # only when something is printed for people

    result = _client(args).reload(*args.targets, dry_run=args.dry_run, timeout=args.timeout).raw
    if args.json:
        print(json.dumps(result))
        return
    if result.get("cluster"):
        for r in result["rollouts"]:
            if r.get("dry_run"):
                print(f"{r['app']}: would roll across the cluster, node by node: {', '.join(r['nodes']) or 'none'}")
            else:
                print(f"{r['app']}: rolled across the cluster to generation {r['generation']}, node by node: "
                      + ", ".join(f"{o['node']} {o['state']}" for o in r["nodes"]))
        return
    print("\n".join(render.plan_lines(result["plan"], dry_run=args.dry_run)) or "nothing to change")
    for r in result.get("rollouts", []):
        print(f"{r['app']}: rolled {r['replaced']}/{r['total']} instances to generation "
              f"{r['generation']} in {r['duration']:.2f}s")


def cmd_chaos(args: SimpleNamespace) -> None:
    """Harm instances at random through the daemon, printing each harm, until --duration has passed."""
    import time

    from supervise.config.units import Invalid, duration
    from supervise.runtime import chaos

    try:
        rate = chaos.parse_rate(args.kill_rate)
        seconds = duration(args.duration, positive=True)
    except chaos.ChaosError as exc:
        raise UsageError(f"chaos: --kill-rate: expected {exc}") from None
    except Invalid as exc:
        raise UsageError(f"chaos: --duration: {exc}") from None
    options = {"rate": rate, "duration": seconds, "signal": args.signal.upper().removeprefix("SIG"),
               "seed": args.seed, "force": args.force}
    control = _control(args)
    started = control.request(protocol.Request("chaos", tuple(args.targets), options=options))
    print(f"chaos #{started['id']}: SIG{started['signal']} to {', '.join(started['targets'])} at "
          f"{started['rate']:g}/s for {started['duration']:g}s (seed {started['seed']})", flush=True)
    for event in control.events(started["seq"], follow=True):
        if event.get("type") != "chaos" or event.get("id") != started["id"]:
            continue
        if event["event"] == "harm":
            stamp = time.strftime("%H:%M:%S", time.localtime(event["time"])) + f"{event['time'] % 1:.3f}"[1:]
            print(f"{stamp}  {event['signal']} -> {event['name']} (pid {event['pid']})", flush=True)
        elif event["event"] == "done":
            print(f"chaos #{started['id']}: done, {event['harms']} harms; `supervise status` shows how it held")
            return
    raise Failed("the daemon went away during the chaos")


def cmd_signal(args: SimpleNamespace) -> None:
    """Send a signal to instances' main processes (or trees): one line per instance signalled, and on
    stderr the instances that had no process and any warning (SIGKILL is a crash to supervise)."""
    result = _client(args).signal(args.signal, *args.targets, tree=args.tree)
    if args.json:
        print(json.dumps(result.raw))
    else:
        tree = " and every process of its tree" if result.tree else ""
        for sent in result.signalled:
            print(f"sent {result.signal} to {sent.name} (pid {sent.pid}){tree}")
    for skipped in result.skipped:
        print(f"supervise: {skipped.name} is {skipped.state}: no process to signal", file=sys.stderr)
    if result.warning:
        print(f"supervise: warning: {result.warning}", file=sys.stderr)


def cmd_shutdown(args: SimpleNamespace) -> None:
    """Drain everything (or, with --keep-workers, leave it running) and wait until the daemon has exited."""
    keep = args.keep_workers
    result = _client(args).shutdown(keep_workers=keep)
    if keep:
        print(f"supervise: the daemon has exited and left {result['kept']} workers running; "
              "the next `supervise run` on this state dir adopts them")
    else:
        print(f"supervise: drained {result['draining']} instances; the daemon has exited")


def cmd_events(args: SimpleNamespace) -> None:
    """State changes: the history after --since, then live ones (unless --no-follow).

    The rule: on a terminal, one readable line per event (render.event_line:
    local time, number, instance, ``running -> backoff``, the exit); anywhere
    else (a pipe, a file) and with --json, the JSON lines scripts read,
    unchanged -- so no script has to learn a flag, and `events | grep` still
    gets JSON. Colour on a terminal unless NO_COLOR is set (or TERM=dumb).
    """
    events = _client(args).events(args.since, follow=not args.no_follow)
    if getattr(args, "json", False) or not sys.stdout.isatty():
        for event in events:
            print(json.dumps(event), flush=True)
        return
    from supervise.cli import render

    colour = not os.environ.get("NO_COLOR") and os.environ.get("TERM") != "dumb"
    for event in events:
        print(render.event_line(event, colour), flush=True)


def cmd_top(args: SimpleNamespace) -> None:
    """A live view of every instance, app totals and recent events; plain tables when not on a terminal."""
    if not 0.1 <= args.interval <= 3600:
        raise UsageError("top: --interval must be between 0.1 and 3600 seconds")
    if args.iterations is not None and args.iterations < 1:
        raise UsageError("top: -n must be at least 1")
    from supervise.cli import top  # curses, threads: only for this verb

    top.run(_control(args), args)


def cmd_keygen(args: SimpleNamespace) -> None:
    """A CURVE key pair: one for the daemon's TCP control endpoint, one per client allowed in."""
    from supervise.wire import curve

    try:
        public, secret = curve.keygen(Path(args.dir), args.name)
    except curve.CurveError as exc:
        raise Failed(f"keygen: {exc}") from None
    key = curve.load_public(str(public))
    print(f"wrote {public} (public) and {secret} (secret, mode 0600)\npublic key: {key}")
    print("A daemon: control_key = its secret file; clients get its public key (--server-key).\n"
          "A client: --key its secret file; the daemon lists its public key in control_clients.")


def cmd_logs(args: SimpleNamespace) -> None:
    """The last lines of each instance's log file, merged in time order (--since: those written since
    then; --grep: those matching), then (with -f) new ones; read here, not through the daemon.
    How times are known is in control/logs.py."""
    if args.connect or os.environ.get(ENV_CONNECT):
        raise UsageError("logs reads the daemon's log files, which are on its host: run it there")
    import re

    from supervise.cli.parser import LOG_LINES
    from supervise.control import logs as logs_view

    since = grep = None
    try:
        since = logs_view.parse_since(args.since) if getattr(args, "since", None) is not None else None
    except logs_view.SinceError as exc:
        raise UsageError(f"logs: --since: {exc}") from None
    try:
        grep = re.compile(args.grep) if getattr(args, "grep", None) is not None else None
    except re.error as exc:
        raise UsageError(f"logs: --grep: not a Python regular expression: {exc}") from None
    if args.lines is not None and args.lines < 0:
        raise UsageError("logs: -n must be 0 or more")
    lines = args.lines if args.lines is not None or since is not None else LOG_LINES
    result = _client(args).status_json(args.target)
    paths = StatePaths(locate_state_dir(args.config))
    files = [(inst["name"], _log_file(paths, app["name"], inst)) for app in result["apps"] for inst in app["instances"]]
    logs_view.show(files, lines=lines, follow=args.follow, since=since, grep=grep)


def _log_file(paths: StatePaths, app: str, inst: dict[str, Any]) -> Path:
    """An instance's log; a spare's (no index) by its number, the end of its name ``app:spare-N``."""
    if inst.get("role") == "spare":
        return paths.log_file(app, int(inst["name"].rpartition("-")[2]), spare=True)
    return paths.log_file(app, inst["index"])


def _client(args: SimpleNamespace) -> Client:
    """The daemon the command line names: a TCP endpoint with --connect, else the config's state dir
    (a config that cannot be read stays a BadConfig: its message is printed as it is)."""
    endpoint = args.connect or os.environ.get(ENV_CONNECT)
    if not endpoint:
        return Client.from_state_dir(locate_state_dir(args.config))
    key = args.key or os.environ.get(ENV_KEY)
    server = args.server_key or os.environ.get(ENV_SERVER_KEY)
    if not key or not server:
        raise UsageError(f"--connect {endpoint} needs --key (this client's secret key file) and "
                         "--server-key (the daemon's public key or .key file); make keys with `supervise keygen`")
    return Client(endpoint, key=key, server_key=server)


def _control(args: SimpleNamespace) -> Control:
    """The Client's transport, for the verbs the API does not cover (chaos, cluster, top)."""
    return _client(args).control
