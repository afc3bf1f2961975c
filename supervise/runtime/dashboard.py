"""The read-only web dashboard, on the metrics endpoint (`[supervise] metrics`).

Routes, all GET (the server answers nothing else):

- ``/`` with ``/dashboard.css`` and ``/dashboard.js``: the page, shipped in the
  package (``supervise/dashboard/``), no build step, nothing fetched from
  elsewhere (its Content-Security-Policy says ``'self'`` only);
- ``/api/status``: the ``status --json`` result;
- ``/api/events``: server-sent events, each published event as
  ``data: <json>\\n\\n`` (the same stamped JSON ``supervise events`` prints),
  with a keep-alive comment every `KEEPALIVE` seconds;
- ``/api/logs?name=APP:INDEX&lines=N``: the last N (at most `MAX_LINES`) lines
  of an instance's log file; 404 for a name no instance has.

The page acts on nothing: there is no route that changes anything, so it
needs no authentication beyond where it is bound (loopback by default; put
a reverse proxy with authentication in front to show it further, README).

Nothing here blocks the loop: an event is appended to each open stream's
bounded queue, and a browser that falls `MAX_QUEUE` events behind (or does
not take a write within `SEND_TIMEOUT`) is dropped; its EventSource
reconnects and the page fetches the status afresh. A log tail reads at most
`MAX_TAIL_BYTES` from the end of one file.

This module does not know the daemon: it is given a :class:`Source` of
callables, and the daemon calls :func:`install`.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from importlib import resources
from pathlib import Path

from supervise.frozen import frozen
from supervise.runtime.http import HttpServer, Request, Response, Stream

__all__ = ["MAX_LINES", "MAX_QUEUE", "Dashboard", "Source", "install", "tail"]

Listener = Callable[[dict[str, object], bytes], None]
"""Called on the loop with each published event and its stamped JSON."""

MAX_QUEUE = 512
"""Events held for one browser that has not taken the last ones yet; one more and it is dropped."""

MAX_STREAMS = 16
"""Browsers following the events at once (each holds one of the server's connections)."""

KEEPALIVE = 15.0
"""Seconds of silence after which a stream gets a comment line (proxies close idle connections)."""

SEND_TIMEOUT = 10.0
"""Seconds a browser has to take what was written to it before it is dropped."""

RETRY_MS = 1000
"""What the page's EventSource waits before it reconnects (the ``retry:`` field)."""

RECENT = 30
"""Events already published that a newly opened stream starts with (for the page's feed)."""

DEFAULT_LINES = 100
MAX_LINES = 1000
MAX_TAIL_BYTES = 512 * 1024
"""A log tail reads at most this much from the end of the file."""

MAX_LINE_CHARS = 4000
"""A longer log line is cut there (with an ellipsis)."""

STATIC = {"/": ("index.html", "text/html; charset=utf-8"),
          "/dashboard.css": ("dashboard.css", "text/css; charset=utf-8"),
          "/dashboard.js": ("dashboard.js", "text/javascript; charset=utf-8")}

SECURITY_HEADERS = (
    # Everything from this origin, nothing from anywhere else (no CDN, no inline script), and never in a frame.
    ("Content-Security-Policy", "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
                                "img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"),
    ("X-Content-Type-Options", "nosniff"),
    ("Referrer-Policy", "no-referrer"),
    ("Cache-Control", "no-store"),
)

_NAME = re.compile(r"(?P<app>.+):(?P<index>[0-9]{1,9})")
_COUNT = re.compile(r"[0-9]{1,9}")


@frozen
class Source:
    """What the dashboard reads of the daemon."""

    status: Callable[[], Mapping[str, object]]
    """The full ``status --json`` result (apps, their instances, rollouts; the daemon section)."""
    log_file: Callable[[str, int], Path]
    """An instance's log file, by app and index."""
    subscribe: Callable[[Listener], None]
    """Called once: the listener is then called on the loop with every published event."""
    recent: Callable[[], Iterable[bytes]] = tuple
    """The last few stamped events, oldest first (a new page's feed starts with them)."""


class _Follower:
    """One open event stream: what it has not been sent yet."""

    __slots__ = ("dropped", "pending", "wake")

    def __init__(self) -> None:
        self.pending: deque[bytes] = deque()
        self.wake = asyncio.Event()
        self.dropped = False


class Dashboard:
    def __init__(self, source: Source) -> None:
        self.source = source
        self.followers: set[_Follower] = set()
        self.dropped = 0  # streams ended because their browser fell behind
        self._static = {path: (_asset(name), content_type) for path, (name, content_type) in STATIC.items()}

    # -- live events ----------------------------------------------------------------------

    def publish(self, event: dict[str, object], stamped: bytes) -> None:
        """On the loop, for every event: queue it for each stream; never waits."""
        for follower in self.followers:
            if follower.dropped:
                continue
            if len(follower.pending) >= MAX_QUEUE:
                follower.dropped = True
                follower.pending.clear()
                self.dropped += 1
            else:
                follower.pending.append(stamped)
            follower.wake.set()

    async def events(self, request: Request, stream: Stream) -> None:
        if len(self.followers) >= MAX_STREAMS:
            stream.send(b"retry: 10000\n: too many dashboards open\n\n")
            return
        follower = _Follower()
        self.followers.add(follower)
        try:
            recent = list(self.source.recent())[-RECENT:]
            stream.send(f"retry: {RETRY_MS}\n\n".encode() + b"".join(_frame(e) for e in recent))
            while True:
                try:
                    await asyncio.wait_for(stream.drain(), SEND_TIMEOUT)
                except TimeoutError:
                    self.dropped += 1
                    return
                if follower.dropped or stream.closing:
                    return
                if not follower.pending:
                    follower.wake.clear()
                    try:
                        await asyncio.wait_for(follower.wake.wait(), KEEPALIVE)
                    except TimeoutError:
                        stream.send(b": keep-alive\n\n")
                        continue
                if follower.pending and not follower.dropped:
                    batch = b"".join(_frame(e) for e in follower.pending)
                    follower.pending.clear()
                    stream.send(batch)
        finally:
            self.followers.discard(follower)

    # -- plain pages ----------------------------------------------------------------------

    def page(self, request: Request) -> Response:
        body, content_type = self._static[request.path]
        return Response(200, body, content_type, SECURITY_HEADERS)

    def status(self, request: Request) -> Response:
        return _json(200, self.source.status())

    def logs(self, request: Request) -> Response:
        match = _NAME.fullmatch(request.arg("name") or "")
        if match is None:
            return _json(400, {"error": "name: expected APP:INDEX, e.g. web:0"})
        count = request.arg("lines") or str(DEFAULT_LINES)
        if not _COUNT.fullmatch(count):
            return _json(400, {"error": f"lines: expected a whole number from 0 to {MAX_LINES}"})
        lines = min(int(count), MAX_LINES)
        name, app, index = match.group(0), match.group("app"), int(match.group("index"))
        if name not in _instance_names(self.source.status()):
            return _json(404, {"error": f"no instance named {name!r}"})
        path = self.source.log_file(app, index)
        try:
            text, complete = tail(path, lines)
        except FileNotFoundError:
            text, complete = [], True
        except OSError as exc:
            return _json(200, {"name": name, "path": str(path), "lines": [], "complete": False,
                               "error": exc.strerror or str(exc)})
        return _json(200, {"name": name, "path": str(path), "lines": text, "complete": complete, "error": None})


def install(server: HttpServer, source: Source) -> Dashboard:
    """Serve the dashboard on `server` (beside ``/metrics``), fed by `source`."""
    dashboard = Dashboard(source)
    for path in STATIC:
        server.route(path, dashboard.page)
    server.route("/api/status", dashboard.status)
    server.route("/api/logs", dashboard.logs)
    server.stream("/api/events", dashboard.events)
    source.subscribe(dashboard.publish)
    return dashboard


def tail(path: Path, lines: int, limit: int = MAX_TAIL_BYTES) -> tuple[list[str], bool]:
    """The last `lines` lines of `path`, and whether that is all of them (not cut by `limit` bytes).

    Reads backwards from the end in blocks; a line still being written (no
    newline yet) counts as the last one. Bytes that are not UTF-8 are replaced.
    """
    if lines <= 0:
        return [], True
    with path.open("rb") as f:
        end = f.seek(0, 2)
        start, data = end, b""
        while start > 0 and data.count(b"\n") <= lines and end - start < limit:
            step = min(65536, start, limit - (end - start))
            start -= step
            f.seek(start)
            data = f.read(step) + data
    parts = data.split(b"\n")
    if parts and parts[-1] == b"":
        parts.pop()  # the file ends with a newline: no line after it
    reached_start = start == 0
    if not reached_start and parts:
        parts.pop(0)  # begins mid-line
    picked = parts[-lines:]
    complete = reached_start or len(parts) >= lines
    return [_line(p) for p in picked], complete


def _line(raw: bytes) -> str:
    text = raw.decode("utf-8", "replace").rstrip("\r")
    return text if len(text) <= MAX_LINE_CHARS else text[:MAX_LINE_CHARS] + "…"


def _instance_names(status: Mapping[str, object]) -> set[str]:
    names = set()
    apps = status.get("apps")
    for app in apps if isinstance(apps, list) else ():
        for row in (*app.get("instances", ()), *app.get("replacing", ())):
            names.add(row["name"])
    return names


def _frame(stamped: bytes) -> bytes:
    return b"data: " + stamped + b"\n\n"


def _json(status: int, body: object) -> Response:
    return Response(status, json.dumps(body, separators=(",", ":")).encode(), "application/json",
                    (("Cache-Control", "no-store"), ("X-Content-Type-Options", "nosniff")))


def _asset(name: str) -> bytes:
    return resources.files("supervise.dashboard").joinpath(name).read_bytes()
