"""The command line's grammar: every verb's arguments, options, defaults and help.

It only reads argv into a namespace whose ``verb`` names the verb; what a
verb does is in ``verbs``, and which function runs it is the table in
``supervise.cli``.
"""

from __future__ import annotations

import os
from collections import namedtuple
from types import SimpleNamespace

# typing.TYPE_CHECKING without importing typing, which nothing else on the CLI's path imports.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from argparse import ArgumentParser

DEFAULT_CONFIG = "supervise.toml"
ENV_CONFIG = "SUPERVISE_CONFIG"
DEFAULT_WAIT = 120.0
WAIT_HELP = f"seconds to wait (default {DEFAULT_WAIT:g})"
RELOAD_WAIT = 600.0  # a rollout takes each instance's startup in turn
LOG_LINES = 20
TOP_HELP = "a live view: every instance's CPU, memory, restarts and heartbeat, app totals, recent events"
TOP_KEYS = """keys:
  q, Ctrl-C   quit (exit 0)
  c m r n     sort by CPU, memory, restarts, name (again: reverse)
  a           show the next app only (cycles through the apps, then all)
  /           type an app's name (or part of one), Enter to show only it
  Esc         all apps again
  arrows, PgUp, PgDn, Home, End   scroll the instances

Figures come from the daemon (a status request every interval, and at once
after an event; the events stream): CPU is percent of one core, "-" when the
daemon does not report it. When stdout is not a terminal (or with --batch),
a plain table is printed every interval instead: -n 1 prints one and exits,
3 if no daemon runs. NO_COLOR set: no colours."""


def parse(argv: list[str]) -> SimpleNamespace:
    """The verb and its arguments; SystemExit (2, or 0 for --help) after printing argparse's message."""
    return fast_parse(argv) or build_parser().parse_args(argv, namespace=SimpleNamespace())


def build_parser() -> ArgumentParser:
    """argparse's parser of every verb: its usage and error messages are the CLI's."""
    import argparse

    parser = argparse.ArgumentParser(prog="supervise", description="A process supervisor.")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("-c", "--config", default=os.environ.get(ENV_CONFIG, DEFAULT_CONFIG),
                        help="config file (default ./supervise.toml); also finds the daemon's state dir")
    common.add_argument("--connect", metavar="tcp://HOST:PORT",
                        help="a daemon's TCP control endpoint instead of the local one (or SUPERVISE_CONNECT)")
    common.add_argument("--key", metavar="FILE", help="with --connect: this client's secret key file "
                        "(or SUPERVISE_KEY)")
    common.add_argument("--server-key", metavar="KEY", help="with --connect: the daemon's public key or .key file "
                        "(or SUPERVISE_SERVER_KEY)")
    sub = parser.add_subparsers(dest="verb", metavar="VERB", required=True)

    def verb(name: str, help: str) -> ArgumentParser:
        return sub.add_parser(name, parents=[common], help=help, description=help)

    verb("run", "run the daemon in the foreground")
    verb("check", "validate the config; exit 2 with file:line errors")
    p = verb("status", "show every instance")
    p.add_argument("targets", nargs="*", metavar="APP|NAME")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--cluster", action="store_true", help="every node of the cluster and where each cluster "
                   "instance runs")
    for name, help in (("start", "start apps or instances (also clears a crash loop)"),
                       ("stop", "stop apps or instances"),
                       ("restart", "restart apps or instances")):
        p = verb(name, help)
        p.add_argument("targets", nargs="+", metavar="APP|NAME")
        p.add_argument("--timeout", type=float, default=DEFAULT_WAIT, help=WAIT_HELP)
    p = verb("scale", "grow or shrink an app to N instances")
    p.add_argument("app", metavar="APP")
    p.add_argument("count", type=int, metavar="N")
    p.add_argument("--timeout", type=float, default=DEFAULT_WAIT, help=WAIT_HELP)
    p = verb("logs", "show an app's or instance's output (an app's instances merged in time order)")
    p.add_argument("target", metavar="APP|NAME")
    p.add_argument("-f", "--follow", action="store_true", help="keep printing new lines")
    p.add_argument("-n", "--lines", type=int, help=f"lines to show first (default {LOG_LINES}; with --since: all)")
    p.add_argument("--since", metavar="WHEN", help="only lines written since then: a duration back (30s, 10m, "
                   "2h, 1d) or a local time (20:15, 20:15:30, 2026-11-30T20:15)")
    p.add_argument("--grep", metavar="REGEX", help="only lines matching this Python regular expression")
    p = verb("events", "state changes, then live ones: one readable line each on a terminal, "
             "JSON lines when piped or with --json")
    p.add_argument("--since", type=int, default=0, metavar="SEQ", help="only events after this number")
    p.add_argument("--no-follow", action="store_true", help="print the history and exit")
    p.add_argument("--json", action="store_true", help="JSON lines even on a terminal")
    p = sub.add_parser("top", parents=[common], help=TOP_HELP, description=TOP_HELP, epilog=TOP_KEYS,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("targets", nargs="*", metavar="APP|NAME", help="only these apps or instances")
    p.add_argument("--sort", choices=["name", "cpu", "mem", "restarts"], default="name",
                   help="the first order of the rows (default name; keys c, m, r, n change it)")
    p.add_argument("--interval", type=float, default=1.0, metavar="S", help="seconds between refreshes (default 1)")
    p.add_argument("-n", "--iterations", type=int, metavar="N", help="stop after N refreshes (default: run until q)")
    p.add_argument("-b", "--batch", action="store_true",
                   help="plain tables one after another, even on a terminal (the mode when stdout is not one)")
    p = verb("reload", "replace instances one by one with no downtime; "
             "with no APP, re-read the config and apply the difference")
    p.add_argument("targets", nargs="*", metavar="APP|NAME")
    p.add_argument("--dry-run", action="store_true", help="print what would change and change nothing")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--timeout", type=float, default=RELOAD_WAIT,
                   help=f"seconds to wait for the rollout (default {RELOAD_WAIT:g})")
    p = verb("signal", "send a signal to instances' main processes (or, with --tree, every process of "
             "their trees): HUP to reload a gunicorn, USR1 to reopen logs, TTIN/TTOU to add or remove workers")
    p.add_argument("signal", metavar="SIGNAL", help="a name (HUP, SIGUSR1, ttin) or a number")
    p.add_argument("targets", nargs="+", metavar="APP|NAME")
    p.add_argument("--tree", action="store_true", help="every process of each instance's tree, not only its main "
                   "process")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p = verb("keygen", "make a CURVE key pair for the TCP control endpoint")
    p.add_argument("name", nargs="?", default="supervise", help="file name: NAME.key and NAME.key_secret")
    p.add_argument("--dir", default=".", help="where to write them (default: here)")
    p = verb("chaos", "harm random instances of apps marked chaos = true, to watch supervise hold")
    p.add_argument("targets", nargs="+", metavar="APP|NAME")
    p.add_argument("--kill-rate", default="1/s", metavar="RATE",
                   help="harms per second or minute: 2/s, 30/m (default 1/s)")
    p.add_argument("--signal", default="KILL", type=str.upper, choices=["KILL", "TERM", "STOP"],
                   help="KILL: a crash; TERM: an unexpected stop; STOP: a hang, continued at the end (default KILL)")
    p.add_argument("--duration", default="60s", help="how long: 30s, 5m (default 60s)")
    p.add_argument("--seed", type=int, help="repeat a run's choices of instance and time")
    p.add_argument("--force", action="store_true", help="also harm apps not marked chaos = true")
    p = verb("cluster", "cluster nodes: drain one (its instances move elsewhere, then it takes no new work) "
             "or uncordon it")
    p.add_argument("action", choices=["drain", "uncordon"])
    p.add_argument("node", metavar="NODE")
    p.add_argument("--timeout", type=float, default=DEFAULT_WAIT,
                   help=f"drain: seconds to wait until its instances have moved (default {DEFAULT_WAIT:g})")
    p.add_argument("--no-wait", action="store_true", help="drain: return once the node is cordoned")
    p = verb("shutdown", "drain everything, then the daemon exits")
    p.add_argument("--keep-workers", action="store_true",
                   help="exit at once leaving every worker running, for the next daemon to adopt (upgrades)")
    return parser


# -- the fast path ------------------------------------------------------------------
#
# The verbs a script calls in a loop, and `run`, are read here without argparse.
# Importing argparse and building its parser of every verb cost a `status` with
# 500 instances about 6 ms: the whole `python -m supervise status --json` took
# 52 ms with this path and 58 ms without (per-run gains 3-15 ms; medians over 5
# runs of 30 interleaved calls; `python -c pass` 40 ms on the same machine),
# against a target of 60 ms. Through argparse, `run` would also keep it in the
# daemon's memory for its whole life: 0.4 MiB of RSS (27.3 against 26.8 MiB
# with 100 idle instances). Anything unusual, --help and every mistake
# included, is left to argparse, for its messages; tests/unit/test_cli_parse.py
# checks that both read the argvs they share alike.

_Fast = namedtuple("_Fast", "flags options targets")
"""A verb's grammar for the fast path: ``flags`` maps a store_true option to
its dest, ``options`` a valued one to (dest, type); ``targets`` is None (no
positional arguments), ``"*"`` or ``"+"``, as argparse's nargs."""

_WAIT = {"--timeout": ("timeout", float)}
_FAST = {
    "run": _Fast({}, {}, None),
    "status": _Fast({"--json": "json", "--cluster": "cluster"}, {}, "*"),
    "start": _Fast({}, _WAIT, "+"),
    "stop": _Fast({}, _WAIT, "+"),
    "restart": _Fast({}, _WAIT, "+"),
    "shutdown": _Fast({"--keep-workers": "keep_workers"}, {}, None),
}


def fast_parse(argv: list[str]) -> SimpleNamespace | None:
    """What argparse would make of ``argv``, or None to let argparse read it."""
    if not argv or argv[0] not in _FAST:
        return None
    grammar = _FAST[argv[0]]
    values: dict[str, object] = {"verb": argv[0], "config": os.environ.get(ENV_CONFIG, DEFAULT_CONFIG),
                                 "connect": None, "key": None, "server_key": None}
    values.update({dest: False for dest in grammar.flags.values()})
    values.update({dest: DEFAULT_WAIT for dest, _ in grammar.options.values()})
    targets: list[str] = []
    args = iter(argv[1:])
    for arg in args:
        if arg in ("-c", "--config", *grammar.options):
            value = next(args, None)
            if value is None:
                return None
            dest, kind = grammar.options.get(arg, ("config", str))
            try:
                values[dest] = kind(value)
            except ValueError:
                return None
        elif arg in grammar.flags:
            values[grammar.flags[arg]] = True
        elif arg.startswith("-"):
            return None
        else:
            targets.append(arg)
    if grammar.targets is None and targets or grammar.targets == "+" and not targets:
        return None
    if grammar.targets is not None:
        values["targets"] = targets
    return SimpleNamespace(**values)
