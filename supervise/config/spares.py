"""What warm spares need of an app: rules across keys, each reported at the key to change.

A spare is started before anyone knows which slot it will serve, so nothing of
its command may depend on the slot, and it must be able to say it is ready and
to hear which slot it was given: both go over the heartbeat channel.
"""

from __future__ import annotations

from supervise.config import units
from supervise.config.model import AppConfig, Placement, Readiness
from supervise.config.table import Table

MAX_SPARES = 1000


def check(table: Table, app: AppConfig) -> None:
    """Report every combination a spare cannot work with (`spares` itself is read as an integer)."""
    if not app.spares or "spares" in table.bad:
        return
    if app.readiness is not Readiness.HEARTBEAT and "readiness" not in table.bad:
        table.report(("spares",), 'need readiness = "heartbeat": a spare says it is ready, and is told the slot it '
                                  "takes, over the heartbeat channel (supervise.worker: Heartbeat.wait_for_slot)")
    if app.singleton:
        table.report(("spares",), "a singleton has no spares: two of it never run at once")
    elif app.placement is not Placement.LOCAL and "placement" not in table.bad:
        table.report(("spares",), 'are for local apps (placement = "local") for now; a cluster app recovers '
                                  "on another node")
    if app.liveness is not None and "liveness" not in table.bad:
        table.report(("spares",), "cannot be combined with liveness probes yet (a spare serves nothing to "
                                  "probe); heartbeat_timeout detects a hung worker")
    if "command" not in table.bad:
        for index, part in enumerate(app.command):
            used = sorted(units.placeholders(part) & {"instance", "port"})
            if used:
                at = (index,) if isinstance(table.raw.get("command"), list) else ()
                table.report(("command", *at), f"uses {{{used[0]}}}, which a spare does not know until it is "
                                               "promoted: read slot.index and slot.port from "
                                               "Heartbeat.wait_for_slot() (or SUPERVISE_INSTANCE and "
                                               "SUPERVISE_PORT after it returns)")
                break
