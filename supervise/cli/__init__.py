"""The command-line front end: one ``cmd_<verb>`` per verb, one place for exit codes.

Exit codes: 0 done, 1 the operation failed, 2 bad usage or bad config,
3 no daemon is running there. Control verbs import only the light modules
(no pyzmq, no daemon), so `supervise status` starts in a few milliseconds.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from types import SimpleNamespace

from supervise.wire import protocol
from supervise.control.client import Control, ControlError, NoDaemon
from supervise.config.locate import BadConfig, locate_state_dir
from supervise.wire.statedir import StatePaths

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_NO_DAEMON = 0, 1, 2, 3
DEFAULT_CONFIG = "supervise.toml"
DEFAULT_WAIT = 120.0
RELOAD_WAIT = 600.0  # a rollout takes each instance's startup in turn


class UsageError(Exception):
    pass


# -- verbs -------------------------------------------------------------------------


def import_daemon():
    """The daemon's modules, imported without what it would carry and never use.

    asyncio imports ssl when it can (4-5 MiB resident); the daemon speaks no
    TLS, so it is kept out. Likewise colorama, which structlog imports when
    present (0.5 MiB) and needs only on Windows: elsewhere it writes the same
    ANSI colours itself. Only in this process, and only if nothing loaded them.
    """
    sys.modules.setdefault("ssl", None)  # type: ignore[arg-type]
    if os.name != "nt":
        sys.modules.setdefault("colorama", None)  # type: ignore[arg-type]
    from supervise.runtime import daemon
    from supervise.runtime import log

    return daemon, log


def cmd_run(args) -> int:
    daemon, log = import_daemon()
    from supervise.config import loader as config_module

    cfg = config_module.load(args.config)
    logger = log.configure(cfg.supervise.log_format, cfg.supervise.log_level)
    try:
        code = daemon.run(cfg, logger)
    except daemon.AlreadyRunning as exc:
        print(f"supervise: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except daemon.CannotStart as exc:
        print(f"supervise: cannot start: {exc}", file=sys.stderr)
        return EXIT_FAILED
    # Everything is drained, closed and unlocked: skip the interpreter's final
    # garbage collection, which alone took ~90 ms of a 100-instance shutdown.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def cmd_check(args: SimpleNamespace) -> int:
    from supervise.config import loader as config_module

    cfg = config_module.load(args.config)
    count = sum(app.instances for app in cfg.apps.values())
    print(f"{args.config}: ok ({len(cfg.apps)} apps, {count} instances)")
    try:  # a daemon runs on it: say what `supervise reload` would change
        plan = Control(StatePaths(cfg.supervise.state_dir)).request(protocol.Request("reload", dry_run=True))
    except (NoDaemon, ControlError, OSError):
        return EXIT_OK
    lines = _plan_lines(plan["plan"], dry_run=True)
    changes = [line for line in lines if not line.endswith(": unchanged")]
    print("the running daemon would, on `supervise reload`:" if changes else
          "the running daemon already runs this config")
    for line in changes:
        print("  " + line)
    return EXIT_OK


def cmd_status(args: SimpleNamespace) -> int:
    result = _control(args).request(protocol.Request("status", tuple(args.targets)))
    if args.json:
        print(json.dumps(result))
    else:
        print(_status_table(result))
    return EXIT_OK


def _wait_verb(verb: str):
    def cmd(args: SimpleNamespace) -> int:
        req = protocol.Request(verb, tuple(args.targets), timeout=args.timeout)
        result = _control(args).request(req, timeout=args.timeout + 5)
        print(_status_table(result))
        return EXIT_OK

    cmd.__name__ = f"cmd_{verb}"
    cmd.__doc__ = f"{verb.capitalize()} apps or instances and wait until they have settled."
    return cmd


cmd_start = _wait_verb("start")
cmd_stop = _wait_verb("stop")
cmd_restart = _wait_verb("restart")


def cmd_scale(args: SimpleNamespace) -> int:
    if args.count < 0:
        raise UsageError("scale: N must be >= 0")
    req = protocol.Request("scale", (args.app,), count=args.count, timeout=args.timeout)
    result = _control(args).request(req, timeout=args.timeout + 5)
    print(_status_table(result) if result["apps"] else f"{args.app}: scaled to {args.count}")
    return EXIT_OK


def cmd_reload(args: SimpleNamespace) -> int:
    """Roll the named apps onto fresh processes; with none, re-read the config and apply the difference."""
    req = protocol.Request("reload", tuple(args.targets), timeout=args.timeout, dry_run=args.dry_run)
    result = _control(args).request(req, timeout=args.timeout + 5)
    if args.json:
        print(json.dumps(result))
        return EXIT_OK
    print("\n".join(_plan_lines(result["plan"], dry_run=args.dry_run)) or "nothing to change")
    for r in result.get("rollouts", []):
        print(f"{r['app']}: rolled {r['replaced']}/{r['total']} instances to generation "
              f"{r['generation']} in {r['duration']:.2f}s")
    return EXIT_OK


def _plan_lines(plan: list[dict], dry_run: bool) -> list[str]:
    lines = []
    for change in plan:
        action, name = change["action"], change["app"]
        count = change.get("instances")
        fields = f" (changed: {', '.join(change['fields'])})" if change.get("fields") else ""
        if action == "roll" and isinstance(count, list) and change.get("surge") is not None:  # reload APP
            text = f"roll {len(count)} instances, {change['surge']} at a time"
        elif action == "roll":
            text = "roll every instance onto the new config" + fields
        elif action == "start":
            text = f"start {count[1]} instances"
        elif action == "stop":
            text = f"stop and remove its {count[0]} instances"
        elif action == "update":
            text = "apply in place, no restart" + fields
        else:
            text = "unchanged"
        if action in ("roll", "update") and count and change.get("surge") is None:
            text += f"; scale {count[0]} -> {count[1]}"
        lines.append(f"{name}: {'would ' if dry_run and action != 'unchanged' else ''}{text}")
    return lines


def cmd_chaos(args: SimpleNamespace) -> int:
    """Harm instances at random through the daemon, printing each harm, until --duration has passed."""
    import time

    from supervise.core import chaos
    from supervise.config.units import Invalid, duration

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
    harms = 0
    for event in control.events(started["seq"], follow=True):
        if event.get("type") != "chaos" or event.get("id") != started["id"]:
            continue
        if event["event"] == "harm":
            harms += 1
            stamp = time.strftime("%H:%M:%S", time.localtime(event["time"])) + f"{event['time'] % 1:.3f}"[1:]
            print(f"{stamp}  {event['signal']} -> {event['name']} (pid {event['pid']})", flush=True)
        elif event["event"] == "done":
            print(f"chaos #{started['id']}: done, {event['harms']} harms; `supervise status` shows how it held")
            return EXIT_OK
    print("supervise: the daemon went away during the chaos", file=sys.stderr)
    return EXIT_FAILED


def cmd_shutdown(args: SimpleNamespace) -> int:
    keep = getattr(args, "keep_workers", False)
    result = _control(args).shutdown(keep_workers=keep)
    if keep:
        print(f"supervise: the daemon has exited and left {result['kept']} workers running; "
              "the next `supervise run` on this state dir adopts them")
    else:
        print(f"supervise: drained {result['draining']} instances; the daemon has exited")
    return EXIT_OK


def cmd_events(args: SimpleNamespace) -> int:
    try:
        for event in _control(args).events(args.since, follow=not args.no_follow):
            print(json.dumps(event), flush=True)
    except BrokenPipeError:
        pass
    return EXIT_OK


def cmd_keygen(args: SimpleNamespace) -> int:
    """A CURVE key pair: one for the daemon's TCP control endpoint, one per client allowed in."""
    from supervise.wire import curve

    try:
        public, secret = curve.keygen(Path(args.dir), args.name)
    except curve.CurveError as exc:
        print(f"supervise: keygen: {exc}", file=sys.stderr)
        return EXIT_FAILED
    key = curve.load_public(str(public))
    print(f"wrote {public} (public) and {secret} (secret, mode 0600)\npublic key: {key}")
    print("A daemon: control_key = its secret file; clients get its public key (--server-key).\n"
          "A client: --key its secret file; the daemon lists its public key in control_clients.")
    return EXIT_OK


def cmd_logs(args: SimpleNamespace) -> int:
    if getattr(args, "connect", None) or os.environ.get("SUPERVISE_CONNECT"):
        raise UsageError("logs reads the daemon's log files, which are on its host: run it there")
    from supervise.control import logs as logs_view

    status = _control(args).request(protocol.Request("status", (args.target,)))
    paths = StatePaths(_state_dir(args))
    files = [
        (inst["name"], paths.log_file(app["name"], inst["index"]))
        for app in status["apps"] for inst in app["instances"]
    ]
    logs_view.show(files, lines=args.lines, follow=args.follow)
    return EXIT_OK


# -- plumbing ------------------------------------------------------------------------


def _state_dir(args: SimpleNamespace) -> Path:
    return locate_state_dir(args.config)


def _control(args: SimpleNamespace) -> Control:
    endpoint = getattr(args, "connect", None) or os.environ.get("SUPERVISE_CONNECT")
    if endpoint:
        from supervise.control.client import Remote

        key = getattr(args, "key", None) or os.environ.get("SUPERVISE_KEY")
        server = getattr(args, "server_key", None) or os.environ.get("SUPERVISE_SERVER_KEY")
        if not key or not server:
            raise UsageError(f"--connect {endpoint} needs --key (this client's secret key file) and "
                             "--server-key (the daemon's public key or .key file); make keys with `supervise keygen`")
        return Control(None, Remote(endpoint, key, server))
    return Control(StatePaths(_state_dir(args)))


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    s = int(seconds)
    if s < 60:
        return f"{seconds:.1f}s" if seconds < 10 else f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 86400}d{s % 86400 // 3600:02d}h"


def _size(n: int | None) -> str:
    if n is None:
        return "-"
    for unit in ("B", "K", "M", "G"):
        if n < 1024 or unit == "G":
            return f"{n:.0f}{unit}" if unit == "B" else f"{n:.1f}{unit}"
        n /= 1024
    return "-"


def _last_exit(e: dict | None) -> str:
    if not e:
        return "-"
    detail = f"signal {e['signal']}" if e.get("signal") else f"code {e['code']}" if e.get("code") is not None else ""
    text = f"{e['reason']} ({detail})" if detail else e["reason"]
    return f"{text}: {e['error']}" if e.get("error") else text


def _status_table(result: dict) -> str:
    header = ("NAME", "STATE", "PID", "UPTIME", "RESTARTS", "RSS", "BEAT", "LAST EXIT")
    rows = [header]
    for app in result["apps"]:
        for i in app["instances"]:
            rows.append((i["name"], i["state"], str(i["pid"] or "-"), _duration(i["uptime"]),
                         str(i["restarts"]), _size(i["rss"]), _duration(i.get("heartbeat_age")),
                         _last_exit(i["last_exit"])))
    for app in result["apps"]:
        if app.get("waiting_for"):
            rows.append((app["name"], "waiting", "-", "-", "-", "-", "-", "for " + ", ".join(app["waiting_for"])))
    widths = [max(len(r[c]) for r in rows) for c in range(len(header) - 1)]
    return "\n".join("  ".join(r[c].ljust(widths[c]) for c in range(len(header) - 1)) + "  " + r[-1]
                     for r in rows)


def build_parser():
    import argparse

    parser = argparse.ArgumentParser(prog="supervise", description="A process supervisor.")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("-c", "--config", default=os.environ.get("SUPERVISE_CONFIG", DEFAULT_CONFIG),
                        help="config file (default ./supervise.toml); also finds the daemon's state dir")
    common.add_argument("--connect", metavar="tcp://HOST:PORT",
                        help="a daemon's TCP control endpoint instead of the local one (or SUPERVISE_CONNECT)")
    common.add_argument("--key", metavar="FILE", help="with --connect: this client's secret key file "
                        "(or SUPERVISE_KEY)")
    common.add_argument("--server-key", metavar="KEY", help="with --connect: the daemon's public key or .key file "
                        "(or SUPERVISE_SERVER_KEY)")
    sub = parser.add_subparsers(dest="verb", metavar="VERB", required=True)

    def verb(name: str, func, help: str):
        p = sub.add_parser(name, parents=[common], help=help, description=help)
        p.set_defaults(func=func)
        return p

    verb("run", cmd_run, "run the daemon in the foreground")
    verb("check", cmd_check, "validate the config; exit 2 with file:line errors")
    p = verb("status", cmd_status, "show every instance")
    p.add_argument("targets", nargs="*", metavar="APP|NAME")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    for name, func, help in (("start", cmd_start, "start apps or instances (also clears a crash loop)"),
                             ("stop", cmd_stop, "stop apps or instances"),
                             ("restart", cmd_restart, "restart apps or instances")):
        p = verb(name, func, help)
        p.add_argument("targets", nargs="+", metavar="APP|NAME")
        p.add_argument("--timeout", type=float, default=DEFAULT_WAIT, help="seconds to wait (default 120)")
    p = verb("scale", cmd_scale, "grow or shrink an app to N instances")
    p.add_argument("app", metavar="APP")
    p.add_argument("count", type=int, metavar="N")
    p.add_argument("--timeout", type=float, default=DEFAULT_WAIT, help="seconds to wait (default 120)")
    p = verb("logs", cmd_logs, "show an app's or instance's output")
    p.add_argument("target", metavar="APP|NAME")
    p.add_argument("-f", "--follow", action="store_true", help="keep printing new lines")
    p.add_argument("-n", "--lines", type=int, default=20, help="lines to show first (default 20)")
    p = verb("events", cmd_events, "state changes as JSON lines, then live ones")
    p.add_argument("--since", type=int, default=0, metavar="SEQ", help="only events after this number")
    p.add_argument("--no-follow", action="store_true", help="print the history and exit")
    p = verb("reload", cmd_reload, "replace instances one by one with no downtime; "
             "with no APP, re-read the config and apply the difference")
    p.add_argument("targets", nargs="*", metavar="APP|NAME")
    p.add_argument("--dry-run", action="store_true", help="print what would change and change nothing")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--timeout", type=float, default=RELOAD_WAIT,
                   help=f"seconds to wait for the rollout (default {RELOAD_WAIT:g})")
    p = verb("keygen", cmd_keygen, "make a CURVE key pair for the TCP control endpoint")
    p.add_argument("name", nargs="?", default="supervise", help="file name: NAME.key and NAME.key_secret")
    p.add_argument("--dir", default=".", help="where to write them (default: here)")
    p = verb("chaos", cmd_chaos, "harm random instances of apps marked chaos = true, to watch supervise hold")
    p.add_argument("targets", nargs="+", metavar="APP|NAME")
    p.add_argument("--kill-rate", default="1/s", metavar="RATE", help="harms per second or minute: 2/s, 30/m (default 1/s)")
    p.add_argument("--signal", default="KILL", type=str.upper, choices=["KILL", "TERM", "STOP"],
                   help="KILL: a crash; TERM: an unexpected stop; STOP: a hang, continued at the end (default KILL)")
    p.add_argument("--duration", default="60s", help="how long: 30s, 5m (default 60s)")
    p.add_argument("--seed", type=int, help="repeat a run's choices of instance and time")
    p.add_argument("--force", action="store_true", help="also harm apps not marked chaos = true")
    p = verb("shutdown", cmd_shutdown, "drain everything, then the daemon exits")
    p.add_argument("--keep-workers", action="store_true",
                   help="exit at once leaving every worker running, for the next daemon to adopt (upgrades)")
    return parser


# The verbs a script calls in a loop, and their options: parsed without
# argparse (whose import is most of a status call's own cost), and `run`, so
# that the daemon does not keep argparse in memory for its whole life (0.2
# MiB). Anything else, --help and every mistake included, goes to argparse
# for its messages.
_FAST = {
    "run": ({}, {}, None),
    "status": ({"--json": "json"}, {}, "targets"),
    "start": ({}, {"--timeout": ("timeout", float)}, "targets+"),
    "stop": ({}, {"--timeout": ("timeout", float)}, "targets+"),
    "restart": ({}, {"--timeout": ("timeout", float)}, "targets+"),
    "shutdown": ({"--keep-workers": "keep_workers"}, {}, None),
}


def fast_parse(argv: list[str]) -> SimpleNamespace | None:
    if not argv or argv[0] not in _FAST:
        return None
    flags, options, positional = _FAST[argv[0]]
    values: dict = {"verb": argv[0], "func": globals()[f"cmd_{argv[0]}"],
                    "config": os.environ.get("SUPERVISE_CONFIG", DEFAULT_CONFIG), "timeout": DEFAULT_WAIT}
    values.update({dest: False for dest in flags.values()})
    rest: list[str] = []
    args = iter(argv[1:])
    for arg in args:
        if arg in ("-c", "--config") or arg in options:
            value = next(args, None)
            if value is None:
                return None
            if arg in options:
                dest, kind = options[arg]
                try:
                    values[dest] = kind(value)
                except ValueError:
                    return None
            else:
                values["config"] = value
        elif arg in flags:
            values[flags[arg]] = True
        elif arg.startswith("-"):
            return None
        else:
            rest.append(arg)
    if positional is None and rest or positional == "targets+" and not rest:
        return None
    values["targets"] = rest
    return SimpleNamespace(**values)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = fast_parse(argv)
    if args is None:
        try:
            args = build_parser().parse_args(argv)
        except SystemExit as exc:  # argparse exits 2 on bad usage, 0 on --help
            return int(exc.code or 0)
    try:
        return args.func(args)
    except BadConfig as exc:
        print(str(exc), file=sys.stderr)
        return EXIT_USAGE
    except UsageError as exc:
        print(f"supervise: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except NoDaemon as exc:
        print(f"supervise: {exc}", file=sys.stderr)
        return EXIT_NO_DAEMON
    except ControlError as exc:
        print(f"supervise: {exc}", file=sys.stderr)
        return EXIT_USAGE if exc.usage else EXIT_FAILED
    except KeyboardInterrupt:
        return 130
    except ConnectionError as exc:
        print(f"supervise: lost the connection to the daemon: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except BrokenPipeError:  # `supervise status | head`: the reader left, nothing to report
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
