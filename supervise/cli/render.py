"""What the CLI prints for people: the status table, durations, sizes, reload plans.

Pure functions of the daemon's JSON results (docs/protocol.md), kept apart
from the verbs so that the wording can be read, and tested, in one place.
`--json` output bypasses all of this.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from supervise.wire.protocol import describe_exit

# typing.TYPE_CHECKING without importing typing, which nothing else on the CLI's path imports.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from supervise.control.client import JSONObject

STATUS_HEADER = ("NAME", "STATE", "PID", "UPTIME", "RESTARTS", "RSS", "BEAT", "LAST EXIT")


def duration(seconds: float | None) -> str:
    """``4.2s``, ``42s``, ``7m05s``, ``3h07m``, ``2d04h``: two units at most, for a column."""
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


def size(n: int | None) -> str:
    """Bytes in binary units, ``512B``, ``1.5K``, ``300.0M``, ``2.0G``, for a column."""
    if n is None:
        return "-"
    amount = float(n)
    for unit in ("B", "K", "M"):
        if amount < 1024:
            return f"{amount:.0f}{unit}" if unit == "B" else f"{amount:.1f}{unit}"
        amount /= 1024
    return f"{amount:.1f}G"


def status_table(result: JSONObject) -> str:
    """Every instance of a ``status`` result as aligned columns, then apps waiting on others."""
    rows = [STATUS_HEADER]
    for app in result["apps"]:
        for i in app["instances"]:
            rows.append((i["name"], i["state"], str(i["pid"] or "-"), duration(i["uptime"]),
                         str(i["restarts"]), size(i["rss"]), duration(i.get("heartbeat_age")),
                         describe_exit(i["last_exit"])))
    for app in result["apps"]:
        if app.get("waiting_for"):
            rows.append((app["name"], "waiting", "-", "-", "-", "-", "-", "for " + ", ".join(app["waiting_for"])))
    return _columns(rows)


def cluster_table(result: JSONObject) -> str:
    """``status --cluster``: the nodes, then where each cluster instance runs."""
    head = f"cluster {result['cluster']} (seen from {result['node']}"
    head += ")" if result["connected"] else f", NOT connected to etcd: {result.get('error') or 'no answer'})"
    nodes = [("NODE", "ALIVE", "ROLE", "CAPACITY", "INSTANCES", "LABELS")]
    for n in result["nodes"]:
        role = "leader" if n["leader"] else "cordoned" if n["cordoned"] else "-"
        if n["leader"] and n["cordoned"]:
            role = "leader,cordoned"
        labels = ",".join(f"{k}={v}" for k, v in sorted(n["labels"].items())) or "-"
        nodes.append((n["name"] + (" *" if n.get("self") else ""), "yes" if n["alive"] else "no", role,
                      "-" if n["capacity"] is None else str(n["capacity"]), str(n["instances"]), labels))
    parts = [head, _columns(nodes)]
    if result["instances"]:
        rows = [("NAME", "NODE", "STATE", "PID", "TOKEN", "NOTE")]
        for i in result["instances"]:
            note = f"moving from {i['handoff_from']}" if i.get("handoff_from") else "-"
            rows.append((i["name"], i["node"], i["state"], str(i["pid"] or "-"), str(i["token"]), note))
        parts.append(_columns(rows))
    if result.get("pending"):
        parts.append("pending (no node has room, or none may run them): "
                     + ", ".join(p["name"] for p in result["pending"]))
    return "\n\n".join(parts)


def _columns(rows: Sequence[Sequence[str]]) -> str:
    """Left-aligned columns two spaces apart; the last one is not padded (no trailing blanks)."""
    last = len(rows[0]) - 1
    widths = [max(len(row[c]) for row in rows) for c in range(last)]
    return "\n".join("  ".join(row[c].ljust(widths[c]) for c in range(last)) + "  " + row[last] for row in rows)


def plan_lines(plan: Sequence[Mapping[str, object]], dry_run: bool) -> list[str]:
    """One line per app of a ``reload`` plan: what it did, or with ``dry_run`` what it would do."""
    return [f"{change['app']}: {'would ' if dry_run and change['action'] != 'unchanged' else ''}"
            f"{_plan_text(change)}" for change in plan]


def _plan_text(change: Mapping[str, object]) -> str:
    action, count, surge, fields = change["action"], change.get("instances"), change.get("surge"), change.get("fields")
    changed = f" (changed: {', '.join(map(str, fields))})" if isinstance(fields, list) and fields else ""
    if action == "roll" and isinstance(count, list) and surge is not None:  # reload APP
        text = f"roll {len(count)} instances, {surge} at a time"
    elif action == "roll":
        text = "roll every instance onto the new config" + changed
    elif action == "start":
        text = f"start {_nth(count, 1)} instances"
    elif action == "stop":
        text = f"stop and remove its {_nth(count, 0)} instances"
    elif action == "update":
        text = "apply in place, no restart" + changed
    else:
        text = "unchanged"
    if action in ("roll", "update") and isinstance(count, list) and count and surge is None:
        text += f"; scale {count[0]} -> {count[1]}"
    return text


def _nth(counts: object, index: int) -> object:
    """``counts[index]`` of a plan's ``instances`` ([before, after]); "?" if the daemon left it out."""
    return counts[index] if isinstance(counts, list) and len(counts) > index else "?"
