"""What the CLI prints for people: the status table, durations, sizes, reload plans, events.

Pure functions of the daemon's JSON results (docs/protocol.md), kept apart
from the verbs so that the wording can be read, and tested, in one place.
`--json` output bypasses all of this.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping, Sequence

from supervise.wire.protocol import describe_exit

# typing.TYPE_CHECKING without importing typing, which nothing else on the CLI's path imports.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from supervise.control.client import JSONObject

STATUS_HEADER = ("NAME", "STATE", "PID", "UPTIME", "RESTARTS", "CPU", "MEM", "BEAT", "LAST EXIT")


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
    """Every instance of a ``status`` result as aligned columns, then apps waiting on others.

    An instance being replaced (a rollout, a replace-first restart) has its
    new and old processes listed under its slot, indented; an app in a
    rollout is followed by a line saying how far it got. CPU is percent of
    one core; MEM is the ``rss`` figure (the tree's PSS or cgroup charge).
    """
    rows: list[tuple[str, ...]] = [STATUS_HEADER]
    lines: list[str] = []  # one per app in a rollout, after the table
    for app in result["apps"]:
        beside: dict[object, list[JSONObject]] = {}
        for other in app.get("replacing") or ():
            beside.setdefault(other.get("index"), []).append(other)
        for i in app["instances"]:
            rows.append(_instance_row(i))
            for other in beside.pop(i.get("index"), ()):
                rows.append(_instance_row(other, nested=True))
        for others in beside.values():  # beside a slot this result leaves out, or none any more
            rows.extend(_instance_row(other, nested=True) for other in others)
        rollout = app.get("rollout")
        if rollout and rollout.get("state") == "running":
            lines.append(f"{app['name']}: rolling {rollout.get('replaced')}/{rollout.get('total')} "
                         f"to generation {rollout.get('generation')}")
    for app in result["apps"]:
        if app.get("waiting_for"):
            rows.append((app["name"], "waiting", "-", "-", "-", "-", "-", "-", "for " + ", ".join(app["waiting_for"])))
    return "\n".join([_columns(rows), *lines])


def _instance_row(i: JSONObject, nested: bool = False) -> tuple[str, ...]:
    """One instance's cells; ``nested``: a replacement's new or old process, under its slot."""
    name = i["name"]
    if nested:
        name = f"  {name} {i.get('role') or ('new' if i['state'] in ('starting', 'running') else 'old')}"
    state = i["state"]
    if i.get("waiting") == "budget":  # a restart decided on, held by the app's disruption budget
        state += f" (restart held: {i.get('waiting_reason')})"
    cpu = i.get("cpu")
    return (name, state, str(i["pid"] or "-"), duration(i["uptime"]), str(i["restarts"]),
            f"{cpu:.1f}" if isinstance(cpu, int | float) else "-", size(i["rss"]),
            duration(i.get("heartbeat_age")), describe_exit(i["last_exit"]))


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


# -- events ------------------------------------------------------------------------------
#
# `supervise events` on a terminal: one line per event, the local time to the
# millisecond, its number (for `--since`), what it is about (an instance, an
# app, the daemon, ...) and what happened, in words:
#
#   20:31:05.123    #42  web:1       running -> backoff  crashed (exit code 1)
#
# Every type of docs/protocol.md has its wording; a type or a field this CLI
# does not know (a newer daemon's) still gets a line, with the fields as
# key=value. Colour only when asked (the verb decides: a terminal without NO_COLOR).

SUBJECT_WIDTH = 10
_COLOURS = {"good": "32", "bad": "31", "warn": "33", "dim": "2"}
_TONE_OF_STATE = {"running": "good", "failed": "bad", "backoff": "warn", "stopped": "dim"}
_Words = tuple[str, str, str | None]  # subject, text, tone (a key of _COLOURS, or None)


def event_line(event: Mapping[str, object], colour: bool = False, today: float | None = None) -> str:
    """One event (docs/protocol.md) as a line for people; `today` (Unix time, default now) decides
    whether the date is shown: only for an event of another day."""
    subject, text, tone = event_words(event)
    stamp = clock(event.get("time"), today)
    number = f"#{event.get('seq', '?')}"
    if colour:
        stamp, number = _paint(stamp, "dim"), _paint(number.rjust(6), "dim")
        text = _paint(text, tone) if tone else text
        return f"{stamp} {number}  {subject.ljust(SUBJECT_WIDTH)}  {text}"
    return f"{stamp} {number.rjust(6)}  {subject.ljust(SUBJECT_WIDTH)}  {text}"


def event_words(event: Mapping[str, object]) -> _Words:
    """What an event is about, what happened in words, and its tone: the one wording of every
    event, for `events` and `top` alike."""
    words = _WORDS.get(str(event.get("type")), _generic)
    try:
        return words(event)
    except (KeyError, TypeError, ValueError, AttributeError):  # a field missing or of another shape
        return _generic(event)


def clock(seconds: object, today: float | None = None) -> str:
    """Unix time as local ``20:31:05.123``, with the date in front if it is not `today`'s."""
    if not isinstance(seconds, (int, float)) or isinstance(seconds, bool):
        return "--:--:--.---"
    local = time.localtime(seconds)
    text = time.strftime("%H:%M:%S", local) + f".{int(seconds * 1000) % 1000:03d}"
    if local[:3] != time.localtime(time.time() if today is None else today)[:3]:
        text = time.strftime("%Y-%m-%d ", local) + text
    return text


def _paint(text: str, tone: str) -> str:
    return f"\x1b[{_COLOURS[tone]}m{text}\x1b[0m"


def _state(e: Mapping[str, object]) -> _Words:
    text = f"{e['from']} -> {e['to']}"
    extra = []
    if e.get("exit"):
        extra.append(describe_exit(e["exit"]))  # type: ignore[arg-type]  # a JSON object
    if e.get("reason") and e["to"] == "stopping":
        extra.append(f"({e['reason']})")
    if e.get("pid") and e["to"] in ("starting", "running"):
        extra.append(f"pid {e['pid']}")
    return str(e["name"]), "  ".join([text, *extra]), _TONE_OF_STATE.get(str(e["to"]))


def _removed(e: Mapping[str, object]) -> _Words:
    return str(e["name"]), "removed (scaled down)", "dim"


def _scaled(e: Mapping[str, object]) -> _Words:
    return str(e["app"]), f"scaled to {e['instances']} instances", None


def _daemon(e: Mapping[str, object]) -> _Words:
    what = e["event"]
    if what == "stalled":
        return "daemon", f"stalled: its loop stood still for {e['seconds']}s (liveness judged afresh)", "warn"
    if what == "spawn-failed":
        retry = f"; retried in {e['retry_in']}s" if e.get("retry_in") is not None else ""
        return str(e["name"]), f"spawn failed (the daemon's fault): {e['error']}{retry}", "bad"
    return "daemon", str(what), "warn" if what == "draining" else None


def _rollout(e: Mapping[str, object]) -> _Words:
    what = e["event"]
    text = f"rollout to generation {e['generation']} {what}"
    if what == "started":
        text += f" ({e['total']} instances" + (f", {e['cause']})" if e.get("cause") else ")")
    elif "replaced" in e:
        text += f" ({e['replaced']}/{e['total']} replaced)"
    if e.get("error"):
        text += f": {e['error']}"
    return str(e["app"]), text, {"done": "good", "failed": "bad", "cancelled": "warn"}.get(str(what))


def _replaced(e: Mapping[str, object]) -> _Words:
    old = f"pid {e['old_pid']}" if e.get("old_pid") else "the old instance"
    return (str(e["name"]), f"replaced {old} by pid {e['pid']} (generation {e['generation']}, {e['reason']})",
            "good")


def _promoted(e: Mapping[str, object]) -> _Words:
    old = f" in place of pid {e['old_pid']}" if e.get("old_pid") else ""
    return str(e["name"]), f"spare {e['spare']} promoted: pid {e['pid']}{old} ({e['reason']})", "good"


def _config(e: Mapping[str, object]) -> _Words:
    changes = e.get("changes") or []
    listed = ", ".join(f"{c['app']} {c['action']}" for c in changes)  # type: ignore[attr-defined]
    return "config", f"reloaded: {listed}" if listed else "reloaded: nothing changed", None


def _app(e: Mapping[str, object]) -> _Words:
    if e["event"] == "removed":
        return str(e["app"]), "removed from the config: its last instance is gone", "dim"
    return _generic(e)


def _chaos(e: Mapping[str, object]) -> _Words:
    what = e["event"]
    if what == "harm":
        return str(e["name"]), f"chaos #{e['id']}: {e['signal']} to pid {e['pid']}", "bad"
    if what == "started":
        targets = ", ".join(map(str, e["targets"]))  # type: ignore[call-overload]
        return ("chaos", f"#{e['id']} started: SIG{e['signal']} to {targets} at {e['rate']}/s for "
                f"{e['duration']}s (seed {e['seed']})", "warn")
    if what == "done":
        return "chaos", f"#{e['id']} done: {e['harms']} harms", None
    return _generic(e)


def _watch(e: Mapping[str, object]) -> _Words:
    paths = ", ".join(map(str, e.get("paths") or []))  # type: ignore[call-overload]
    more = f" and {e['more']} more" if e.get("more") else ""
    apps = ", ".join(map(str, e["apps"]))  # type: ignore[call-overload]
    return "watch", f"changed: {paths}{more}; rolling {apps}", None


def _output(e: Mapping[str, object]) -> _Words:
    what = e["event"]
    if what == "dropping":
        return str(e["name"]), f"output dropped from now on: {e['error']} ({e['path']})", "bad"
    if what == "resumed":
        return str(e["name"]), f"output written again; {e['dropped_lines']} lines were dropped", "good"
    if what == "rotation-failed":
        return str(e["name"]), f"log rotation failed: {e['error']} ({e['path']})", "warn"
    return _generic(e)


def _checkpoint(e: Mapping[str, object]) -> _Words:
    if e["event"] == "failing":
        return "checkpoint", f"cannot be written: {e['error']} ({e['path']})", "bad"
    if e["event"] == "recovered":
        return "checkpoint", "written again", "good"
    return _generic(e)


def _budget(e: Mapping[str, object]) -> _Words:
    why = f" ({e['reason']})" if e.get("reason") else ""
    return (str(e["name"]), f"budget: restart {e['event']}{why}, {e['unavailable']}/{e['max_unavailable']} "
            "unavailable", "warn" if e["event"] == "held" else None)


_CLUSTER_TEXT = {
    "joined": "joined the cluster as {node} (lease {lease})",
    "rejoined": "joined the cluster again as {node} (lease {lease})",
    "node-joined": "node {node} joined",
    "node-lost": "node {node} lost",
    "leader": "{node} is the leader",
    "cordoned": "node {node} cordoned",
    "uncordoned": "node {node} uncordoned",
    "lease-lost": "{node} lost its lease: {why}",
    "rolling": "{app}: rolling generation {generation} on {node}",
}


def _cluster(e: Mapping[str, object]) -> _Words:
    what = str(e["event"])
    if what in ("placed", "moving", "unplaced"):
        text = {"placed": f"placed on {e.get('node')}", "unplaced": "unplaced: no node may run it",
                "moving": f"moving from {e.get('from')} to {e.get('node')}"}[what]
        return str(e["name"]), text, "warn" if what == "unplaced" else None
    if what == "fenced":
        stopped = ", ".join(map(str, e.get("stopped") or [])) or "nothing"  # type: ignore[call-overload]
        return "cluster", f"{e['node']} fenced ({e['why']}): stopped {stopped}", "bad"
    text = _CLUSTER_TEXT[what].format_map(e)
    return "cluster", text, "bad" if what in ("node-lost", "lease-lost") else None


def _generic(e: Mapping[str, object]) -> _Words:
    """Any event: what it is about, its type and `event`, then the other fields as key=value."""
    subject = str(e.get("name") or e.get("app") or e.get("type") or "?")
    head = " ".join(str(e[k]) for k in ("type", "event") if e.get(k) is not None)
    rest = " ".join(f"{k}={_value(v)}" for k, v in e.items()
                    if k not in ("seq", "time", "type", "event", "name") and not (k == "app" and subject == v))
    return subject, f"{head} {rest}".strip() or "(no details)", None


def _value(v: object) -> str:
    return v if isinstance(v, str) and v and " " not in v else json.dumps(v)


_WORDS: Mapping[str, Callable[[Mapping[str, object]], _Words]] = {
    "state": _state, "removed": _removed, "scaled": _scaled, "daemon": _daemon, "rollout": _rollout,
    "replaced": _replaced, "promoted": _promoted, "config": _config, "app": _app, "chaos": _chaos, "watch": _watch,
    "output": _output, "checkpoint": _checkpoint, "budget": _budget, "cluster": _cluster,
}
