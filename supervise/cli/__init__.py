"""The `supervise` command: read argv, run the verb's function, turn the outcome into an exit code.

Exit codes: 0 done, 1 the operation failed, 2 bad usage or bad config,
3 no daemon is running there. ``parser`` knows the grammar, ``verbs`` does
the work, ``render`` words the output; this module is the table from verb
to function and the one place where errors become messages and exit codes.
Control verbs import only the light modules (no pyzmq, no daemon), so
`supervise status` starts in a few milliseconds.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Mapping
from types import MappingProxyType, SimpleNamespace

from supervise.cli import verbs
from supervise.cli.parser import parse
from supervise.cli.verbs import import_daemon  # also benchmarks/foundation.py's floor of the daemon's imports
from supervise.config.errors import BadConfig
from supervise.control.client import ClientError

__all__ = ["EXIT_FAILED", "EXIT_NO_DAEMON", "EXIT_OK", "EXIT_USAGE", "VERBS", "import_daemon", "main"]

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_NO_DAEMON = 0, 1, 2, 3
EXIT_INTERRUPTED = 130  # 128 + SIGINT, as a shell reports a command stopped by Ctrl-C

VERBS: Mapping[str, Callable[[SimpleNamespace], None]] = MappingProxyType({
    "run": verbs.cmd_run,
    "check": verbs.cmd_check,
    "status": verbs.cmd_status,
    "start": verbs.cmd_start,
    "stop": verbs.cmd_stop,
    "restart": verbs.cmd_restart,
    "scale": verbs.cmd_scale,
    "reload": verbs.cmd_reload,
    "logs": verbs.cmd_logs,
    "events": verbs.cmd_events,
    "top": verbs.cmd_top,
    "signal": verbs.cmd_signal,
    "shutdown": verbs.cmd_shutdown,
    "chaos": verbs.cmd_chaos,
    "cluster": verbs.cmd_cluster,
    "keygen": verbs.cmd_keygen,
})
"""Verb name -> the function that carries it out (``parser`` defines the same verbs' arguments)."""


def main(argv: list[str] | None = None) -> int:
    """The console script `supervise` (and `python -m supervise`): returns the exit code."""
    try:
        args = parse(sys.argv[1:] if argv is None else argv)
    except SystemExit as exc:  # argparse exits 2 on bad usage, 0 on --help
        return int(exc.code or 0)
    return _outcome(VERBS[args.verb], args)


def _outcome(verb: Callable[[SimpleNamespace], None], args: SimpleNamespace) -> int:
    """Run the verb; what went wrong becomes one line on stderr and an exit code."""
    try:
        verb(args)
        sys.stdout.flush()  # so that a reader gone shows here, not in the interpreter's last flush
    except BadConfig as exc:
        print(str(exc), file=sys.stderr)
        return EXIT_USAGE
    except ClientError as exc:  # UsageError 2, OperationFailed (verbs.Failed) 1, NoDaemon 3: the API's errors
        print(f"supervise: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except BrokenPipeError:  # `supervise status | head`: the reader left, nothing to report
        # Later writes (the interpreter's final flush of stdout) go nowhere instead of failing again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_OK
    except ConnectionError as exc:  # after BrokenPipeError, which is one of these
        print(f"supervise: lost the connection to the daemon: {exc}", file=sys.stderr)
        return EXIT_FAILED
    return EXIT_OK
