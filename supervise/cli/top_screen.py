"""What `supervise top` shows, as pure functions: a status result, the events and a :class:`View`
(what the user chose: sort, app filter, scroll) become lines of styled segments (:func:`frame`) or
plain text (:func:`plain_text`). No terminal, no daemon: unit-tested as they are
(tests/unit/test_top_layout.py); top.py feeds them and draws what they return.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping, Sequence

from supervise.cli.render import duration, event_words, size
from supervise.wire.protocol import describe_exit

# typing.TYPE_CHECKING without importing typing.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, TypeAlias

    from supervise.control.client import JSONObject

    Segment: TypeAlias = tuple[str, str]
    """Text and its style: one of STYLES."""
    Line: TypeAlias = list[Segment]
    Event: TypeAlias = dict[str, Any]

SORTS = {"n": "name", "c": "cpu", "m": "mem", "r": "restarts"}
"""Key -> sort. Numbers sort highest first, names in the daemon's order (app, then index)."""
STYLES = ("normal", "title", "header", "good", "warn", "bad", "dim", "footer", "error")
STATE_STYLE = {"running": "good", "starting": "warn", "stopping": "warn", "backoff": "bad", "failed": "bad",
               "stopped": "dim"}
NOT_RUNNING = "daemon not running, retrying"
FOOTER = "q quit  sort: c cpu  m mem  r restarts  n name   a next app  / type app  Esc all apps   arrows scroll"
PROMPT_HELP = "  (Enter: show it; Esc: cancel; empty: all apps)"
INSTANCE_COLUMNS = ("NAME", "STATE", "PID", "CPU%", "MEM", "UPTIME", "RESTARTS", "BEAT", "LAST EXIT")
APP_COLUMNS = ("APP", "RUNNING", "CPU%", "MEM", "RESTARTS", "NOTE")
_RIGHT = {"PID", "CPU%", "MEM", "UPTIME", "RESTARTS", "BEAT", "PROCS", "RUNNING"}
_ENTER, _ESC, _BACKSPACE = {"\n", "\r", "KEY_ENTER"}, "\x1b", {"KEY_BACKSPACE", "\x7f", "\b"}
LATEST = 1 << 53         # beyond any sequence number or row: `events` since it is none; a scroll to the end
_SCROLL = {"KEY_UP": -1, "k": -1, "KEY_DOWN": 1, "j": 1}


# -- what the user chose ---------------------------------------------------------------

class View:
    """The sort, the app filter and the scroll position; :meth:`key` changes them."""

    __slots__ = ("sort", "descending", "app", "restricted", "prompt", "scroll", "page", "quit")

    def __init__(self, sort: str = "name", app: str | None = None, restricted: bool = False) -> None:
        self.sort = sort
        self.restricted = restricted  # the command line named apps or instances: the events of others are not shown
        self.descending = sort != "name"
        self.app = app               # show only apps of this name (or whose name contains it); None: all
        self.prompt: str | None = None  # what is typed after "/", while it is typed
        self.scroll = 0              # first instance row shown
        self.page = 10               # instance rows on the screen, as the last frame laid them out
        self.quit = False

    def key(self, key: str, apps: Sequence[str] = ()) -> None:
        """One key: a character, or a curses key name (``KEY_UP``); ``apps`` are the ones to cycle through."""
        if self.prompt is not None:
            if key in _ENTER:
                self.app, self.prompt, self.scroll = self.prompt.strip() or None, None, 0
            elif key == _ESC:
                self.prompt = None
            elif key in _BACKSPACE:
                self.prompt = self.prompt[:-1]
            elif len(key) == 1 and key.isprintable():
                self.prompt += key
            return
        if key in ("q", "Q"):
            self.quit = True
        elif key in SORTS:
            sort = SORTS[key]
            self.descending = not self.descending if sort == self.sort else sort != "name"
            self.sort = sort
        elif key == "a" and apps:
            at = list(apps).index(self.app) + 1 if self.app is not None and self.app in apps else 0
            self.app, self.scroll = (apps[at] if at < len(apps) else None), 0
        elif key == "/":
            self.prompt = ""
        elif key == _ESC:
            self.app, self.scroll = None, 0
        elif key in _SCROLL:
            self.scroll = max(0, self.scroll + _SCROLL[key])
        elif key == "KEY_NPAGE" or key == " ":
            self.scroll += max(1, self.page - 1)
        elif key == "KEY_PPAGE":
            self.scroll = max(0, self.scroll - max(1, self.page - 1))
        elif key in ("KEY_HOME", "g"):
            self.scroll = 0
        elif key in ("KEY_END", "G"):
            self.scroll = LATEST  # the frame clamps it to the last page

    def describe(self) -> str:
        """``sort cpu desc`` (the default order says nothing), then ``app web`` when one is chosen."""
        default = self.sort == "name" and not self.descending
        parts = [] if default else [f"sort {self.sort} {'desc' if self.descending else 'asc'}"]
        return "; ".join(parts + ([f"app {self.app}"] if self.app is not None else []))


# -- pure layout -------------------------------------------------------------------------

def selected_apps(result: JSONObject | None, view: View) -> set[str] | None:
    """Names of the apps the view shows: the one its filter names, else those whose name contains it;
    with no filter, those of the result if the command line named some, else None: all of them."""
    if result is None or view.app is None and not view.restricted:
        return None
    names = [app["name"] for app in result["apps"]]
    wanted = view.app
    if wanted is None:
        return set(names)
    return {wanted} if wanted in names else {name for name in names if wanted in name}


def cpu_text(cpu: object) -> str:
    """``cpu`` (percent of one core) for a column; ``-`` when the daemon does not know (or say) it."""
    return f"{cpu:.1f}" if isinstance(cpu, int | float) and not isinstance(cpu, bool) else "-"


def _number(value: object) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


_SORT_FIELD = {"cpu": "cpu", "mem": "rss", "restarts": "restarts"}


def instances(result: JSONObject, view: View) -> list[JSONObject]:
    """The instances the view shows, in its order; an unknown figure sorts last either way."""
    shown = selected_apps(result, view)
    rows = [inst for app in result["apps"] if shown is None or app["name"] in shown for inst in app["instances"]]
    if view.sort == "name":
        return rows[::-1] if view.descending else rows
    field = _SORT_FIELD[view.sort]
    known = [inst for inst in rows if _number(inst.get(field)) is not None]
    known.sort(key=lambda inst: _number(inst.get(field)) or 0.0, reverse=view.descending)  # stable: name order
    return known + [inst for inst in rows if _number(inst.get(field)) is None]


def _has_processes(result: JSONObject) -> bool:
    return any(inst.get("processes") is not None for app in result["apps"] for inst in app["instances"])


def instance_cells(inst: JSONObject, processes: bool = False) -> list[str]:
    """One instance's row, column by column (INSTANCE_COLUMNS, PROCS after MEM when ``processes``)."""
    cells = [inst["name"], inst["state"], str(inst.get("pid") or "-"), cpu_text(inst.get("cpu")),
             size(inst.get("rss")), duration(inst.get("uptime")), str(inst.get("restarts", "-")),
             duration(inst.get("heartbeat_age")), describe_exit(inst.get("last_exit"))]
    if processes:
        cells.insert(5, "-" if inst.get("processes") is None else str(inst["processes"]))
    return cells


def app_cells(app: JSONObject) -> list[str]:
    """An app's totals: running/instances, summed CPU and memory (of what is known), restarts, and a note."""
    insts = app["instances"]
    running = sum(1 for inst in insts if inst["state"] == "running")
    cpus = [c for inst in insts if (c := _number(inst.get("cpu"))) is not None]
    rss = [r for inst in insts if (r := _number(inst.get("rss"))) is not None]
    notes = []
    if app.get("waiting_for"):
        notes.append("waiting for " + ", ".join(app["waiting_for"]))
    rollout = app.get("rollout")
    if rollout and rollout.get("state") == "running":
        notes.append(f"rolling to generation {rollout.get('generation')} "
                     f"({rollout.get('replaced')}/{rollout.get('total')})")
    others: dict[str, int] = {}
    for inst in insts:
        if inst["state"] != "running":
            others[inst["state"]] = others.get(inst["state"], 0) + 1
    notes.extend(f"{count} {state}" for state, count in others.items())
    return [app["name"], f"{running}/{len(insts)}", cpu_text(sum(cpus)) if cpus else "-",
            size(int(sum(rss))) if rss else "-", str(sum(int(inst.get("restarts") or 0) for inst in insts)),
            ", ".join(notes) or "-"]


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> tuple[str, list[list[str]]]:
    """Aligned columns two spaces apart (numbers to the right); the last is not padded. Returns the
    header line and each row's padded cells (joined by two spaces, they make its line)."""
    last = len(header) - 1
    widths = [max([len(header[c])] + [len(row[c]) for row in rows]) for c in range(last)]

    def pad(cells: Sequence[str], heads: Sequence[str]) -> list[str]:
        return [cells[c].rjust(widths[c]) if heads[c] in _RIGHT else cells[c].ljust(widths[c])
                for c in range(last)] + [cells[last]]
    return "  ".join(pad(header, header)), [pad(row, header) for row in rows]


def _instance_header(result: JSONObject) -> tuple[str, ...]:
    if _has_processes(result):
        return (*INSTANCE_COLUMNS[:5], "PROCS", *INSTANCE_COLUMNS[5:])
    return INSTANCE_COLUMNS


def _instance_lines(result: JSONObject, rows: Sequence[JSONObject]) -> tuple[str, list[Line]]:
    header = _instance_header(result)
    processes = len(header) > len(INSTANCE_COLUMNS)
    head, padded = _table(header, [instance_cells(inst, processes) for inst in rows])
    lines: list[Line] = []
    for inst, cells in zip(rows, padded, strict=True):
        style = STATE_STYLE.get(inst["state"], "normal")
        lines.append([(cells[0] + "  ", "normal"), (cells[1], style), ("  " + "  ".join(cells[2:]), "normal")])
    return head, lines


def _app_lines(result: JSONObject, shown: set[str] | None) -> tuple[str, list[Line]]:
    apps = [app for app in result["apps"] if shown is None or app["name"] in shown]
    head, padded = _table(APP_COLUMNS, [app_cells(app) for app in apps])
    lines: list[Line] = []
    for app, cells in zip(apps, padded, strict=True):
        healthy = all(inst["state"] == "running" for inst in app["instances"]) and not app.get("waiting_for")
        lines.append([("  ".join(cells[:2]), "normal" if healthy else "warn"), ("  " + "  ".join(cells[2:]),
                                                                                 "normal")])
    return head, lines


def event_text(event: Mapping[str, Any]) -> str:
    """One event as a phrase for people: `supervise events`' wording (render.event_words)."""
    if event.get("type") == "top":  # this view's own notes: connected, lost
        return str(event.get("text"))
    subject, text, _ = event_words(event)
    return f"{subject} {text}"


def event_style(event: Mapping[str, Any]) -> str:
    exit_ = event.get("exit") or {}
    if event.get("type") == "top":
        return "bad" if event.get("event") == "lost" else "dim"
    if event.get("to") in ("backoff", "failed") or exit_.get("reason") in ("crashed", "hung", "memory", "lost"):
        return "bad"
    if event.get("error") or event.get("event") in ("failed", "stalled", "dropping", "failing"):
        return "bad"
    return "good" if event.get("to") == "running" else "normal"


def event_line(event: Mapping[str, Any]) -> str:
    """``12:03:04 web:1 running -> backoff (crashed (signal 9))``."""
    stamp = time.strftime("%H:%M:%S", time.localtime(event["time"])) if "time" in event else "--:--:--"
    return f"{stamp} {event_text(event)}"


def _event_app(event: Mapping[str, Any]) -> str | None:
    app = event.get("app")
    if isinstance(app, str):
        return app
    name = event.get("name")
    return name.rsplit(":", 1)[0] if isinstance(name, str) and ":" in name else None


def shown_events(events: Iterable[Event], shown: set[str] | None) -> list[Event]:
    """The events of the apps shown, and those of no app (the daemon's, this view's)."""
    return [e for e in events if shown is None or (app := _event_app(e)) is None or app in shown]


def title(result: JSONObject | None, error: str | None, config: str) -> Segment:
    """The first line: which daemon, and how many instances in which state."""
    if error is not None or result is None:
        return f"supervise top  {config}  {error or 'connecting'}", "error"
    insts = [inst for app in result["apps"] for inst in app["instances"]]
    counts: dict[str, int] = {}
    for inst in insts:
        counts[inst["state"]] = counts.get(inst["state"], 0) + 1
    states = ", ".join(f"{n} {state}" for state, n in sorted(counts.items(), key=lambda kv: -kv[1]))
    pid = (result.get("daemon") or {}).get("pid", "?")
    return f"supervise top  {config}  daemon {pid}  {len(insts)} instances{': ' + states if states else ''}", "title"


def frame(result: JSONObject | None, error: str | None, events: Sequence[Event], view: View,
          width: int, height: int, config: str = "", clock: str = "") -> list[Line]:
    """The whole screen, ``height`` lines of at most ``width`` characters: title, app totals,
    instances (scrolled), events (newest last), footer. Clamps ``view.scroll`` and sets ``view.page``."""
    if height <= 0 or width <= 0:
        return []
    text, style = title(result, error, config)
    footer: Segment = (("app: " + view.prompt + "_" + PROMPT_HELP, "footer") if view.prompt is not None
                       else (FOOTER, "footer"))
    body = height - 2
    lines: list[Line] = [[(text + clock.rjust(max(2, width - 1 - len(text))), style)]]  # the clock on the right
    shown = selected_apps(result, view)
    evs = shown_events(events, shown)
    events_pane = min(10, max(2, body // 4)) if body >= 8 else 0
    if result is None or error is not None:
        lines.append([(f"{error or 'connecting'}..." if error != NOT_RUNNING else
                       f"{NOT_RUNNING}: start it with `supervise run`", "error")])
        apps_pane = 0
        rows: list[JSONObject] = []
    else:
        apps_head, apps = _app_lines(result, shown)
        apps_pane = 1 + min(len(apps), max(1, body // 5)) if body >= 6 else 0
        if apps_pane:
            more = len(apps) - (apps_pane - 1)
            lines.append([(apps_head + (f"  [+{more} apps]" if more > 0 else ""), "header")])
            lines.extend(apps[:apps_pane - 1])
        rows = instances(result, view)
        if shown is not None and not shown:
            lines.append([(f"no app matches {view.app!r} (Esc: all apps)", "warn")])
    inst_room = max(0, body - (len(lines) - 1) - events_pane)
    if result is not None and error is None and inst_room >= 1:
        page = max(1, inst_room - 1)
        view.page = page
        view.scroll = max(0, min(view.scroll, len(rows) - page))
        head, row_lines = _instance_lines(result, rows)
        window = row_lines[view.scroll:view.scroll + page]
        notes = [view.describe()] if view.describe() else []
        if len(rows) > page:
            notes.append(f"{view.scroll + 1}-{view.scroll + len(window)} of {len(rows)}")
        head += f"  [{'; '.join(notes)}]" if notes else ""
        lines.append([(head, "header")])
        lines.extend(window)
    while len(lines) < height - 1 - events_pane:
        lines.append([])
    if events_pane:
        lines.append([("EVENTS" + ("" if view.app is None else f" (app {view.app})"), "header")])
        tail = evs[-(events_pane - 1):] if events_pane > 1 else []
        lines.extend([(event_line(e), event_style(e))] for e in tail)
        while len(lines) < height - 1:
            lines.append([])
    lines = lines[:height - 1] + [[footer]]
    return [_clip(line, width - 1 if i == height - 1 else width) for i, line in enumerate(lines)]


def _clip(line: Line, width: int) -> Line:
    """The segments of ``line`` that fit in ``width`` characters (the bottom line keeps its last
    cell free: curses cannot write there without scrolling)."""
    out: Line = []
    room = width
    for text, style in line:
        if room <= 0:
            break
        out.append((text[:room], style))
        room -= len(text[:room])
    if line and line[0][1] in ("header", "footer", "title", "error") and room > 0:
        out.append((" " * room, out[-1][1] if out else "normal"))  # a bar across the screen
    return out


def plain_text(result: JSONObject | None, error: str | None, new_events: Sequence[Event], view: View,
               config: str = "", clock: str = "") -> str:
    """One refresh for a pipe or a log: the title, app totals, every instance, the events since the last."""
    parts = [f"{title(result, error, config)[0]}  {clock}"]
    if result is not None and error is None:
        shown = selected_apps(result, view)
        apps_head, apps = _app_lines(result, shown)
        parts.append("\n".join([apps_head] + ["".join(text for text, _ in line) for line in apps]))
        head, rows = _instance_lines(result, instances(result, view))
        parts.append("\n".join([head] + ["".join(text for text, _ in line) for line in rows]))
        new_events = shown_events(new_events, shown)
    if new_events:
        parts.append("\n".join(event_line(e) for e in new_events))
    return "\n".join(line.rstrip() for line in "\n\n".join(parts).split("\n")) + "\n"


# -- talking to the daemon ----------------------------------------------------------------
