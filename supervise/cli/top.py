"""`supervise top`: every instance, its app's totals and the recent events, live.

One row per instance (name, state, pid, CPU, memory, uptime, restarts,
heartbeat age, last exit), a line of totals per app, and the daemon's events
scrolling below. Everything shown comes from the daemon, as ``status --json``
and ``events`` give it (docs/protocol.md): a ``status`` request every
``--interval`` (1 s), and at once after an event; and the ``events`` follow
stream. Nothing here reads /proc.

Why curses, from the standard library, rather than rich or textual: the view
needs a full screen redrawn in place, keys read one at a time without Enter,
colours, resizing, and the terminal put back as it was on the way out;
curses does all of that, adds no dependency to a tool installed on servers,
and is cheap to import (`python -X importtime`, here: `curses` 0.9 ms;
`rich.live` and `rich.table` 27 ms; `textual.app` 150-170 ms, an application
framework with its own asyncio loop). rich would still leave reading keys to
us (termios by hand). Only this verb imports this module, and curses only on
a terminal: the other verbs, and `status` above all, import neither.

Three layers:

- pure functions from a status result, the events and a :class:`View` (what
  the user chose: sort, app filter, scroll) to lines of styled segments
  (:func:`frame`) or to plain text (:func:`plain_text`); unit-tested without
  a terminal (tests/unit/test_top_layout.py);
- :class:`Feed`: two threads that keep the latest status and the recent events
  and reconnect when the daemon restarts;
- the front ends: :func:`run_interactive` (curses) and :func:`run_plain`
  (tables printed every interval, for a pipe, a log or `--batch`).
"""

from __future__ import annotations

import os
import sys
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence

from supervise.cli.render import duration, event_words, size
from supervise.control.client import Control, ControlError, NoDaemon
from supervise.wire import protocol, zmtp
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
KEEP_EVENTS = 200        # held for the events pane
BACKLOG = 50             # events shown from before `top` started (or reconnected)
LATEST = 1 << 53         # `events` since this: none, and the newest sequence number
MIN_GAP = 0.2            # seconds between two status requests when events ask for one
REQUEST_TIMEOUT = 5.0
FRAME = 0.05            # at most this often a redraw for news from the daemon (keys redraw at once)
NOT_RUNNING = "daemon not running, retrying"
FOOTER = "q quit  sort: c cpu  m mem  r restarts  n name   a next app  / type app  Esc all apps   arrows scroll"
PROMPT_HELP = "  (Enter: show it; Esc: cancel; empty: all apps)"
INSTANCE_COLUMNS = ("NAME", "STATE", "PID", "CPU%", "MEM", "UPTIME", "RESTARTS", "BEAT", "LAST EXIT")
APP_COLUMNS = ("APP", "RUNNING", "CPU%", "MEM", "RESTARTS", "NOTE")
_RIGHT = {"PID", "CPU%", "MEM", "UPTIME", "RESTARTS", "BEAT", "PROCS", "RUNNING"}
_ENTER, _ESC, _BACKSPACE = {"\n", "\r", "KEY_ENTER"}, "\x1b", {"KEY_BACKSPACE", "\x7f", "\b"}
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

def _status(control: Control, targets: Sequence[str]) -> JSONObject:
    return control.request(protocol.Request("status", tuple(targets)), timeout=REQUEST_TIMEOUT)


def _daemon_pid(result: JSONObject) -> object:
    return (result.get("daemon") or {}).get("pid")


def _latest_seq(control: Control) -> int:
    """The newest event's sequence number (asking for the events after a number no daemon reaches)."""
    reply = control.request(protocol.Request("events", since=LATEST, follow=False), timeout=REQUEST_TIMEOUT)
    return int(reply.get("last") or 0)


class EventLog:
    """The events of the daemon last seen, as far as they have been read: where to read on from."""

    def __init__(self) -> None:
        self.daemon: object = None  # its pid: a new daemon numbers its events from 1 again
        self.last = 0

    def resume_from(self, control: Control, daemon: object, backlog: int = BACKLOG) -> int:
        """The sequence number to read after: where this log left off, for the same daemon; else the
        last ``backlog`` events of this one."""
        latest = _latest_seq(control)
        if daemon != self.daemon or self.last > latest:
            self.daemon, self.last = daemon, max(0, latest - backlog)
        return self.last

    def catch_up(self, control: Control, daemon: object, backlog: int = BACKLOG) -> list[Event]:
        """The events after the last read (no follow): for the plain tables."""
        since = self.resume_from(control, daemon, backlog)
        reply = control.request(protocol.Request("events", since=since, follow=False), timeout=REQUEST_TIMEOUT)
        events: list[Event] = reply.get("events") or []
        if events:
            self.last = events[-1]["seq"]
        return events


_LOST = (NoDaemon, ControlError, OSError, zmtp.ZmtpError, protocol.ProtocolError)
"""What a daemon that is gone, going or coming makes a request raise."""


class Feed:
    """The latest status and the recent events, kept up to date by two threads.

    A poller asks for ``status`` every ``interval``, and sooner (at most every
    MIN_GAP) when an event arrives; a follower reads the ``events`` stream. When
    the daemon goes away the poller reports it and keeps asking; when one answers
    again (a new pid: a restarted daemon) it starts a new follower. ``wake`` is
    called, from those threads, whenever there is something new to show.
    """

    def __init__(self, control: Control, targets: Sequence[str], interval: float, wake: Callable[[], None]) -> None:
        import threading

        self._threading = threading
        self._control, self._targets, self._interval, self._wake = control, tuple(targets), interval, wake
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._kick = threading.Event()
        self._log = EventLog()
        self._follower: tuple[object, threading.Thread] | None = None  # (daemon pid, thread)
        self._lost = False  # the daemon went away since the events were last read
        self._poller = threading.Thread(target=self._poll, name="top-status", daemon=True)
        self.status: JSONObject | None = None
        self.error: str | None = None
        self.refreshes = 0
        self.events: deque[Event] = deque(maxlen=KEEP_EVENTS)

    def start(self, first: JSONObject | None = None, error: str | None = None) -> None:
        """Start the threads, showing ``first`` (or ``error``) until the first answer."""
        self.status, self.error = first, error
        self._lost = error is not None  # the view says so: say so when a daemon answers
        self._poller.start()

    def close(self) -> None:
        """Stop asking. A follower blocked on its stream is left to the process's exit (a daemon thread)."""
        self._stop.set()
        self._kick.set()

    def snapshot(self) -> tuple[JSONObject | None, str | None, list[Event], int]:
        with self._lock:
            return self.status, self.error, list(self.events), self.refreshes

    def _note(self, event: str, text: str) -> None:
        self.events.append({"type": "top", "event": event, "time": time.time(), "text": text})

    def _poll(self) -> None:
        last_request = 0.0
        while not self._stop.is_set():
            last_request = time.monotonic()
            self._kick.clear()  # an event from now on asks for another
            try:
                result = _status(self._control, self._targets)
            except _LOST as exc:
                lost = isinstance(exc, NoDaemon) or "closed the connection" in str(exc)
                with self._lock:
                    if self.error is None and self.status is not None:
                        self._note("lost", NOT_RUNNING if lost else f"{exc}; retrying")
                        self._lost = True
                    self.status, self.error = None, NOT_RUNNING if lost else f"{exc}; retrying"
                    self.refreshes += 1
            else:
                with self._lock:
                    self.status, self.error = result, None
                    self.refreshes += 1
                self._follow(_daemon_pid(result))
            self._wake()
            self._kick.wait(max(0.0, last_request + self._interval - time.monotonic()))
            self._stop.wait(max(0.0, last_request + MIN_GAP - time.monotonic()))  # a burst of events: pace it

    def _follow(self, daemon: object) -> None:
        """Make sure a follower reads this daemon's events (one that died or reads another is replaced)."""
        if self._follower is not None and self._follower[0] == daemon and self._follower[1].is_alive():
            return
        thread = self._threading.Thread(target=self._read_events, args=(daemon,), name="top-events", daemon=True)
        self._follower = (daemon, thread)
        thread.start()

    def _read_events(self, daemon: object) -> None:
        try:
            previous = self._log.daemon
            since = self._log.resume_from(self._control, daemon)
            history = self._control.request(protocol.Request("events", since=since, follow=False),
                                            timeout=REQUEST_TIMEOUT)["events"]
            with self._lock:
                self.events.extend(history)
                if history:
                    self._log.last = history[-1]["seq"]
                if self._lost or previous not in (None, daemon):  # after the events it missed, in order
                    self._note("connected", f"connected to the daemon (pid {daemon})")
                    self._lost = False
            self._wake()
            for event in self._control.events(self._log.last, follow=True):
                if self._stop.is_set() or self._follower is None or self._follower[0] != daemon:
                    return  # replaced: another daemon answers now
                with self._lock:
                    self._log.last = event["seq"]
                    self.events.append(event)
                self._kick.set()  # the instance changed: show its new row soon
                self._wake()
        except _LOST:
            return  # the poller notices, and starts another follower once a daemon answers


# -- the front ends ------------------------------------------------------------------------

def _clock() -> str:
    return time.strftime("%H:%M:%S")


def run_plain(control: Control, args: Any, out: Any = None) -> None:
    """A table every ``args.interval`` seconds (``args.iterations`` of them, or until interrupted)."""
    out = out or sys.stdout
    view = View(args.sort, restricted=bool(args.targets))
    log = EventLog()
    done = 0
    next_at = time.monotonic()
    while True:
        missing: NoDaemon | None = None
        try:
            result = _status(control, args.targets)
            events = log.catch_up(control, _daemon_pid(result), backlog=10 if done == 0 else BACKLOG)
            text = plain_text(result, None, events, view, args.config, _clock())
        except NoDaemon as exc:
            missing, text = exc, f"supervise top  {args.config}  {NOT_RUNNING}  {_clock()}\n"
        except _LOST as exc:
            if isinstance(exc, ControlError) and exc.usage:
                raise
            text = f"supervise top  {args.config}  {exc}; retrying  {_clock()}\n"
        done += 1
        if args.iterations and done >= args.iterations and missing is not None:
            raise missing  # a script asked for tables and there is no daemon: exit 3, as `status`
        out.write(text + ("\n" if not args.iterations or done < args.iterations else ""))
        out.flush()
        if args.iterations and done >= args.iterations:
            return
        next_at += args.interval
        time.sleep(max(0.0, next_at - time.monotonic()))  # the pace of the tables


def _styles(curses: Any, colour: bool) -> dict[str, int]:
    """Style name -> curses attribute: colours only when ``colour`` (not under NO_COLOR)."""
    attrs = {"normal": 0, "title": curses.A_BOLD, "header": curses.A_REVERSE, "footer": curses.A_REVERSE,
             "good": 0, "warn": curses.A_BOLD, "bad": curses.A_BOLD, "dim": curses.A_DIM,
             "error": curses.A_BOLD | curses.A_REVERSE}
    if colour:
        curses.start_color()
        try:
            curses.use_default_colors()
            background = -1
        except curses.error:
            background = curses.COLOR_BLACK
        for pair, (style, fg) in enumerate((("good", curses.COLOR_GREEN), ("warn", curses.COLOR_YELLOW),
                                            ("bad", curses.COLOR_RED), ("error", curses.COLOR_RED),
                                            ("title", curses.COLOR_CYAN)), start=1):
            curses.init_pair(pair, fg, background)
            attrs[style] |= curses.color_pair(pair)
    return attrs


def _key_name(curses: Any, key: str | int) -> str:
    if isinstance(key, str):
        return key
    try:
        return curses.keyname(key).decode("ascii", "replace")
    except (ValueError, curses.error):
        return ""


def colour_wanted(env: Mapping[str, str]) -> bool:
    """No colour when NO_COLOR is set to anything but the empty string (https://no-color.org)."""
    return not env.get("NO_COLOR")


def run_interactive(control: Control, args: Any) -> None:
    """The full-screen view until q, Ctrl-C, SIGTERM or SIGHUP (or ``args.iterations`` refreshes)."""
    import curses
    import locale
    import select
    import signal
    import threading

    first: JSONObject | None = None
    error: str | None = None
    try:  # before the screen: a bad APP is a usage error (exit 2), like `status`
        first = _status(control, args.targets)
    except NoDaemon:
        error = NOT_RUNNING
    except _LOST as exc:
        if isinstance(exc, ControlError) and exc.usage:
            raise
        error = f"{exc}; retrying"

    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_r, False)
    os.set_blocking(wake_w, False)
    pipe_lock = threading.Lock()
    pipe_open = [True]

    def wake() -> None:  # from any thread, and from signal handlers
        with pipe_lock:
            if pipe_open[0]:
                try:
                    os.write(wake_w, b".")
                except BlockingIOError:
                    pass  # full: a wake-up is pending anyway

    view = View(args.sort, restricted=bool(args.targets))
    flags = {"resized": False}

    def on_winch(signum: int, frame_: object) -> None:
        flags["resized"] = True
        wake()

    def on_term(signum: int, frame_: object) -> None:
        view.quit = True
        wake()

    feed = Feed(control, args.targets, args.interval, wake)
    locale.setlocale(locale.LC_ALL, "")
    os.environ.setdefault("ESCDELAY", "25")  # Esc alone: not the start of a key's sequence after 25 ms
    stdscr = curses.initscr()
    old_handlers: dict[int, Any] = {}
    try:
        curses.noecho()
        curses.cbreak()
        stdscr.keypad(True)
        stdscr.nodelay(True)
        try:
            curses.curs_set(0)
        except curses.error:
            pass  # a terminal that cannot hide its cursor shows it
        styles = _styles(curses, colour_wanted(os.environ) and curses.has_colors())
        for signum, handler in ((signal.SIGWINCH, on_winch), (signal.SIGTERM, on_term), (signal.SIGHUP, on_term)):
            old_handlers[signum] = signal.signal(signum, handler)
        feed.start(first, error)
        stdin = sys.stdin.fileno()
        while not view.quit:
            status, err, events, refreshes = feed.snapshot()
            if args.iterations and refreshes >= args.iterations:
                break
            if flags["resized"]:
                flags["resized"] = False
                size_ = os.get_terminal_size(sys.stdout.fileno())
                curses.resizeterm(size_.lines, size_.columns)
            _paint(curses, stdscr, frame(status, err, events, view, *_size(stdscr), config=args.config,
                                         clock=_clock()), styles)
            drawn = time.monotonic()
            ready, _, _ = select.select([stdin, wake_r], [], [], 1.0)  # also every second, for the clock
            if ready == [wake_r]:  # news from the daemon: a burst of events makes one frame, keys still count
                select.select([stdin], [], [], max(0.0, drawn + FRAME - time.monotonic()))
            if wake_r in ready:
                try:
                    os.read(wake_r, 4096)
                except BlockingIOError:
                    pass
            while True:
                try:
                    key = stdscr.get_wch()
                except curses.error:
                    break  # no more keys
                name = _key_name(curses, key)
                if name == "KEY_RESIZE":
                    flags["resized"] = True
                elif name:
                    view.key(name, [app["name"] for app in (status or {"apps": []})["apps"]])
    except KeyboardInterrupt:
        pass  # Ctrl-C: quit, as q does
    finally:
        feed.close()
        for number, previous in old_handlers.items():
            signal.signal(number, previous)
        stdscr.keypad(False)
        curses.nocbreak()
        curses.echo()
        curses.endwin()
        with pipe_lock:
            pipe_open[0] = False
            os.close(wake_r)
            os.close(wake_w)


def _size(stdscr: Any) -> tuple[int, int]:
    height, width = stdscr.getmaxyx()
    return width, height


def _paint(curses: Any, stdscr: Any, lines: Sequence[Line], styles: Mapping[str, int]) -> None:
    stdscr.erase()
    for y, line in enumerate(lines):
        x = 0
        for text, style in line:
            try:
                stdscr.addstr(y, x, text, styles.get(style, 0))
            except curses.error:
                pass  # the very last cell of the screen: written, and then curses complains
            x += len(text)
    stdscr.refresh()


def run(control: Control, args: Any) -> None:
    """`supervise top`: the live view on a terminal, plain tables otherwise (or with --batch)."""
    if args.batch or not (sys.stdout.isatty() and sys.stdin.isatty()) or os.environ.get("TERM", "dumb") == "dumb":
        run_plain(control, args)
        return
    import curses

    try:
        curses.setupterm()
    except curses.error as exc:
        print(f"supervise: top: {exc}: plain tables instead", file=sys.stderr)
        run_plain(control, args)
        return
    run_interactive(control, args)
