"""The client behind ``supervise.client`` (its public face) and the CLI's control verbs.

One method per control verb, each building its request, waiting for its
reply and raising what the CLI turns into an exit code. It imports only the
light modules, so `supervise status` stays fast; typed results (``results``,
dataclasses) are imported by the methods that return them.
"""

from __future__ import annotations

import os
from pathlib import Path

from supervise.config.errors import BadConfig
from supervise.config.locate import locate_state_dir
from supervise.control.client import ClientError, Control, EventStream, Remote, UsageError
from supervise.wire import protocol
from supervise.wire.statedir import StatePaths

# typing.TYPE_CHECKING without importing typing, which nothing else on the CLI's path imports.
TYPE_CHECKING = False
if TYPE_CHECKING:
    import signal as signals
    from types import TracebackType
    from typing import Self

    from supervise.control.client import JSONObject
    from supervise.control.results import ReloadResult, SignalResult, Status

DEFAULT_CONFIG = "supervise.toml"
ENV_CONFIG = "SUPERVISE_CONFIG"
TIMEOUT = 10.0
"""Seconds to wait for a reply that comes at once (status, signal, shutdown's answer)."""
WAIT = 120.0
"""Seconds start, stop, restart and scale wait for the instances they touch to settle."""
RELOAD_WAIT = 600.0
"""Seconds reload waits for its rollouts: each instance's startup in turn."""
REPLY_GRACE = 5.0
"""Beyond the daemon's own deadline: its "timed out" reply still has time to arrive."""


class Client:
    """A connection to one supervise daemon, by its control endpoint.

    ``Client(endpoint)`` takes ``ipc://<state_dir>/control.sock`` (the state
    dir itself also does), or ``tcp://HOST:PORT`` with ``key`` (this client's
    secret key file) and ``server_key`` (the daemon's public key, or its .key
    file), as `supervise keygen` makes them. :meth:`from_config` finds the
    local daemon from its config file, as the CLI's ``-c`` does.

    Every call opens its own connection and closes it before returning, so a
    Client holds nothing between calls and may be shared by threads; an
    :meth:`events` iterator is one connection, for one thread to read.
    Failures raise :class:`ClientError` subclasses: ``OperationFailed`` (the
    CLI's exit code 1), ``UsageError`` (2), ``NoDaemon`` (3).
    """

    def __init__(self, endpoint: str, *, key: str | os.PathLike[str] | None = None, server_key: str | None = None,
                 timeout: float = TIMEOUT) -> None:
        self.endpoint = endpoint
        self.timeout = timeout
        self._closed = False
        scheme, _, rest = endpoint.partition("://")
        if scheme == "ipc" and rest:
            path = rest if os.path.isdir(rest) else os.path.dirname(rest)
            self.control = Control(StatePaths(Path(path)))
        elif scheme == "tcp" and rest:
            if not key or not server_key:
                raise UsageError(f"{endpoint} needs key (this client's secret key file) and server_key (the "
                                 "daemon's public key or .key file); make keys with `supervise keygen`")
            self.control = Control(Remote(endpoint, os.fspath(key), server_key))
        else:
            raise UsageError(f"not a control endpoint: {endpoint!r} (expected ipc://STATE_DIR/control.sock "
                             "or tcp://HOST:PORT)")

    @classmethod
    def from_config(cls, path: str | os.PathLike[str] | None = None, *, timeout: float = TIMEOUT) -> Client:
        """The daemon run on this config file (default: $SUPERVISE_CONFIG, else ./supervise.toml), found
        by the config's state dir; the daemon need not run yet. A missing or unreadable file: UsageError."""
        if path is None:
            path = os.environ.get(ENV_CONFIG) or DEFAULT_CONFIG
        try:
            state_dir = locate_state_dir(path)
        except BadConfig as exc:
            raise UsageError(str(exc)) from None
        return cls.from_state_dir(state_dir, timeout=timeout)

    @classmethod
    def from_state_dir(cls, state_dir: str | os.PathLike[str], *, timeout: float = TIMEOUT) -> Client:
        """The daemon holding this state dir (``[supervise] state_dir``)."""
        return cls(f"ipc://{os.path.join(os.fspath(state_dir), 'control.sock')}", timeout=timeout)

    @property
    def state_dir(self) -> Path | None:
        """The local daemon's state dir (its sockets, logs, checkpoint); None over TCP."""
        daemon = self.control.daemon
        return daemon.root if isinstance(daemon, StatePaths) else None

    # -- the verbs -------------------------------------------------------------------------

    def status_json(self, *targets: str, timeout: float | None = None) -> JSONObject:
        """`status --json` as the daemon sends it: ``{"apps": [...], "daemon": {...}}``."""
        return self._request(protocol.Request("status", targets), timeout)

    def status(self, *targets: str, timeout: float | None = None) -> Status:
        """Every instance, or those of the named apps and instances (``web``, ``web:1``)."""
        from supervise.control.results import Status

        return Status.from_json(self.status_json(*targets, timeout=timeout))

    def start(self, *targets: str, timeout: float = WAIT) -> Status:
        """Start apps or instances (a failed one's crash loop is closed) and wait until each is
        running; OperationFailed names any that gave up, and why. Returns their status."""
        return self._settle("start", targets, timeout)

    def stop(self, *targets: str, timeout: float = WAIT) -> Status:
        """Stop apps or instances and wait until each is stopped."""
        return self._settle("stop", targets, timeout)

    def restart(self, *targets: str, timeout: float = WAIT) -> Status:
        """Restart apps or instances and wait until each runs a new process."""
        return self._settle("restart", targets, timeout)

    def scale(self, app: str, instances: int, *, timeout: float = WAIT) -> Status:
        """Grow or shrink ``app`` to ``instances`` and wait until the new ones run and the surplus is
        gone. Returns the new instances' status (none for a scale-down; a cluster app's ``raw`` is
        ``{"app", "instances", "cluster": true}``: the leader places them)."""
        from supervise.control.results import Status

        if isinstance(instances, bool) or not isinstance(instances, int) or instances < 0:
            raise UsageError("scale: N must be >= 0")
        req = protocol.Request("scale", (app,), count=instances, timeout=timeout)
        return Status.from_json(self._request(req, timeout + REPLY_GRACE))

    def reload(self, *targets: str, dry_run: bool = False, timeout: float = RELOAD_WAIT) -> ReloadResult:
        """Roll the named apps (or instances) onto new processes, one by one, each ready before the
        old one stops; with none, re-read the config and apply the difference (a config with errors
        changes nothing: UsageError with its file:line messages). ``dry_run``: only the plan."""
        from supervise.control.results import ReloadResult

        req = protocol.Request("reload", targets, timeout=timeout, dry_run=dry_run)
        return ReloadResult.from_json(self._request(req, timeout + REPLY_GRACE))

    def signal(self, sig: str | int | signals.Signals, *targets: str, tree: bool = False,
               timeout: float | None = None) -> SignalResult:
        """Send ``sig`` (``"HUP"``, ``"SIGUSR1"``, ``signal.SIGTTIN``, 15) to the main process of each
        named instance that has one (starting, running or stopping), or with ``tree`` to every
        process of its tree. Answers at once with who got it and who was skipped; OperationFailed
        when none of them has a process. An exit it causes is handled like any other: SIGKILL is
        a crash, restarted per the app's policy (the result's ``warning`` says so)."""
        from supervise.control.results import SignalResult

        number = parse_signal(sig)
        if not targets:
            raise UsageError("signal: name an app or an instance")
        req = protocol.Request("signal", targets, signal=number, tree=tree)
        return SignalResult.from_json(self._request(req, timeout))

    def shutdown(self, *, keep_workers: bool = False) -> JSONObject:
        """Drain every instance and wait until the daemon has exited: ``{"draining": N}``. With
        ``keep_workers`` it exits at once and leaves them running for the next daemon to adopt:
        ``{"kept": N}``. Over TCP the answer comes before the daemon is gone."""
        self._check_open()
        return self.control.shutdown(keep_workers=keep_workers)

    def events(self, since: int | None = None, *, follow: bool = True,
               timeout: float | None = None) -> EventStream:
        """Events as the daemon publishes them (``{"seq", "time", "type", ...}``; ``type`` ``state``
        for a state change: ``name``, ``from``, ``to``, ``pid``, ``exit``). ``since``: first the kept
        history after that number (0: all of it); None: nothing from the past. Then, with
        ``follow``, live events until the daemon exits, or (``timeout``) until none has come for
        that many seconds. It is subscribed when this returns (so nothing that happens after the call
        is missed); an iterator of dicts that holds its connection until it ends or is closed
        (``close()``, or a ``with`` block)."""
        self._check_open()
        return self.control.events(since, follow, idle=timeout)

    # -- the connection --------------------------------------------------------------------

    def close(self) -> None:
        """Refuse further calls. (No connection outlives a call; an events iterator is closed on its own.)"""
        self._closed = True

    def __enter__(self) -> Self:
        return self

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Client({self.endpoint!r})"

    def _settle(self, verb: str, targets: tuple[str, ...], timeout: float) -> Status:
        from supervise.control.results import Status

        if not targets:
            raise UsageError(f"{verb}: name at least one app or instance")
        req = protocol.Request(verb, targets, timeout=timeout)
        return Status.from_json(self._request(req, timeout + REPLY_GRACE))

    def _request(self, req: protocol.Request, timeout: float | None) -> JSONObject:
        self._check_open()
        return self.control.request(req, self.timeout if timeout is None else timeout)

    def _check_open(self) -> None:
        if self._closed:
            raise ClientError("this Client is closed")


def parse_signal(sig: str | int | signals.Signals) -> int:
    """A signal's number from its name (``HUP``, ``SIGHUP``, ``hup``, ``RTMIN+2``) or number
    (``1``, ``"1"``); UsageError naming the closest name for one that is not a signal."""
    import signal as signals

    if isinstance(sig, int) and not isinstance(sig, bool):
        return _number(sig)
    if not isinstance(sig, str):
        raise UsageError(f"signal: expected a signal name or number, got {sig!r}")
    text = sig.strip().upper()
    if text.isdigit():
        return _number(int(text))
    name = text if text.startswith("SIG") else "SIG" + text
    base, plus, offset = name.partition("+")
    if base in ("SIGRTMIN", "SIGRTMAX") and plus and offset.isdigit():
        number = signals.SIGRTMIN + int(offset) if base == "SIGRTMIN" else -1
        if signals.SIGRTMIN <= number <= signals.SIGRTMAX:
            return number
    elif not plus and name in signals.Signals.__members__:
        return int(signals.Signals[name])
    import difflib

    names = [n.removeprefix("SIG") for n in signals.Signals.__members__]
    close = difflib.get_close_matches(name.removeprefix("SIG"), names, n=1, cutoff=0.6)
    hint = f"did you mean {close[0]}?" if close else "a name such as HUP, TERM, USR1 or TTIN, or a number"
    raise UsageError(f"signal: no signal named {sig!r} ({hint}; `kill -l` lists them)")


def _number(number: int) -> int:
    import signal as signals

    # valid_signals() leaves out 32 and 33, which glibc keeps for its threads.
    if number not in signals.valid_signals() or not 0 < number <= protocol.MAX_SIGNAL:
        raise UsageError(f"signal: no signal numbered {number} (1 to {int(signals.SIGRTMAX)}; "
                         "`kill -l` lists them)")
    return number
