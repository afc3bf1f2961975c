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

Two layers here, over the pure one in top_screen.py (a status result, the
events and a View become styled lines or plain text, unit-tested without a
terminal):

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
from collections.abc import Callable, Mapping, Sequence

from supervise.cli.top_screen import LATEST, NOT_RUNNING, View, frame, plain_text
from supervise.control.client import Control, ControlError, NoDaemon
from supervise.wire import protocol, zmtp

# typing.TYPE_CHECKING without importing typing.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, TypeAlias

    from supervise.control.client import JSONObject

    Segment: TypeAlias = tuple[str, str]
    """Text and its style: one of STYLES."""
    Line: TypeAlias = list[Segment]
    Event: TypeAlias = dict[str, Any]

KEEP_EVENTS = 200        # held for the events pane
BACKLOG = 50             # events shown from before `top` started (or reconnected)
MIN_GAP = 0.2            # seconds between two status requests when events ask for one
REQUEST_TIMEOUT = 5.0
FRAME = 0.05            # at most this often a redraw for news from the daemon (keys redraw at once)


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
