"""Drive a supervise daemon from Python: the public API, what the `supervise` CLI uses itself.

    from supervise.client import Client, OperationFailed

    with Client.from_config("supervise.toml") as sv:
        for inst in sv.status("web").instances:
            print(inst.name, inst.state, inst.pid, inst.restarts)
        sv.signal("HUP", "web")           # every live web instance's main process
        try:
            sv.restart("web:1", timeout=60)
        except OperationFailed as exc:    # it gave up (crash loop), or not running within 60 s
            print("restart failed:", exc)
        for event in sv.events(since=0, follow=False):
            print(event["seq"], event["type"])

Every method is one control request (docs/protocol.md); verbs that change
things wait, like the CLI, until what they touched has settled. Errors are
:class:`ClientError` subclasses that carry the CLI's exit code:
:class:`OperationFailed` (1), :class:`UsageError` (2), :class:`NoDaemon` (3).
docs/client.md has the whole tour.
"""

from __future__ import annotations

from supervise.control.api import RELOAD_WAIT, TIMEOUT, WAIT, Client, parse_signal
from supervise.control.client import ClientError, NoDaemon, OperationFailed, UsageError
from supervise.control.results import (
    AppStatus,
    InstanceStatus,
    LastExit,
    ReloadResult,
    Signalled,
    SignalResult,
    Skipped,
    Status,
)

__all__ = [
    "RELOAD_WAIT", "TIMEOUT", "WAIT",
    "AppStatus", "Client", "ClientError", "InstanceStatus", "LastExit", "NoDaemon", "OperationFailed",
    "ReloadResult", "SignalResult", "Signalled", "Skipped", "Status", "UsageError", "parse_signal",
]
