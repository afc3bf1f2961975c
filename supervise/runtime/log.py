"""The daemon's own logging: structlog configured once, and what the runtime asks of a logger.

A terminal gets aligned, coloured key=value lines; ``log_format = "json"``
gets one JSON object per line for a log shipper.

The runtime's servers and threads take a logger as a parameter (the
daemon passes its own) and need only the small :class:`Log` contract, which
structlog's bound loggers meet; tests pass a recorder.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import Any, Protocol

import structlog

__all__ = ["LEVELS", "BugLog", "Log", "configure", "default", "log_event"]

LEVELS: Mapping[str, int] = MappingProxyType(
    {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR})

BUG_LOG_INTERVAL = 10.0
"""Seconds between two tracebacks of the same :class:`BugLog`."""


class Log(Protocol):
    """What the runtime needs of a logger: structlog's bound loggers fit.

    A traceback goes along as ``exc_info=<the exception>``, which structlog's
    renderers (and stdlib logging) turn into the formatted traceback.
    """

    def info(self, event: str, **fields: Any) -> Any: ...

    def warning(self, event: str, **fields: Any) -> Any: ...

    def error(self, event: str, **fields: Any) -> Any: ...


def configure(log_format: str = "console", level: str = "info") -> structlog.typing.FilteringBoundLogger:
    """Configure structlog for the daemon's process and return its logger. Call once."""
    renderer = (
        structlog.processors.JSONRenderer()
        if log_format == "json"
        else structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    )
    structlog.configure(
        processors=[
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=log_format == "json"),
            structlog.processors.format_exc_info if log_format == "json" else structlog.dev.set_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(LEVELS.get(level, logging.INFO)),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=True,
    )
    logger: structlog.typing.FilteringBoundLogger = structlog.get_logger("supervise")
    return logger


def default() -> Log:
    """The daemon's logger, for a server built without one: whatever `configure` set up."""
    logger: Log = structlog.get_logger("supervise")
    return logger


class BugLog:
    """Logs exceptions that are bugs of ours, with their traceback, at most once per `interval`.

    A server that survives a bug by dropping one message must still say so,
    traceback and all; but a client can repeat the message that trips the
    bug thousands of times a second, and formatting a traceback for each
    would starve the event loop it is protecting. So the first is logged at
    once, later ones at most every `interval` seconds, each saying how many
    were left out in between. Counting them is the caller's job.
    """

    def __init__(self, log: Log, event: str, interval: float = BUG_LOG_INTERVAL,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._log = log
        self._event = event
        self._interval = interval
        self._clock = clock
        self._next: float | None = None  # when the next traceback may be logged; None: at once
        self._left_out = 0

    def __call__(self, error: BaseException, **fields: Any) -> None:
        now = self._clock()
        if self._next is not None and now < self._next:
            self._left_out += 1
            return
        self._next = now + self._interval
        left_out, self._left_out = self._left_out, 0
        if left_out:
            fields["left_out"] = left_out
        self._log.error(self._event, error=f"{type(error).__name__}: {error}", exc_info=error, **fields)


def log_event(log: Log, event: dict[str, object]) -> None:
    """The daemon's log line for a published event (the history keeps them all)."""
    kind = event.get("type")
    if kind == "state":
        fields = {k: v for k, v in event.items() if k in ("pid", "exit") and v is not None}
        log.info(f"{event['name']} {event['from']} -> {event['to']}", **fields)
    elif kind == "rollout":
        fields = {k: v for k, v in event.items() if k not in ("type", "app", "event")}
        say = log.error if event["event"] == "failed" else log.info
        say(f"rollout of {event['app']} {event['event']}", **fields)
    elif kind == "config":
        log.info("config reloaded", changes=event["changes"])
    elif kind == "watch":
        log.info("watched files changed: rolling", apps=event["apps"], paths=event["paths"], more=event["more"])
    elif kind == "chaos" and event["event"] != "harm":
        log.warning(f"chaos {event['event']}", **{k: v for k, v in event.items() if k not in ("type", "event")})
