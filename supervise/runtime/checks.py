"""Readiness and liveness from outside the heartbeat channel: probes and per-instance sd_notify sockets.

A stock server (gunicorn, uvicorn, a Node or Go server) does not import our
heartbeat client. What it can do is answer an HTTP GET or a TCP connect, or
say ``READY=1`` on the socket named by ``NOTIFY_SOCKET``, as it would under
systemd. This module starts and stops both with each worker, and turns
what they find into the core's events: ``Ready`` (readiness passed, or
``READY=1``), ``Unhealthy``/``Healthy`` (liveness), a beat (``WATCHDOG=1``,
or a ``STATUS=`` line, which status shows as the field ``status``).

The worker table calls it around each spawn (``environment`` before, so the
socket exists when the server starts; ``spawned`` after), at adoption and
at each exit; the daemon calls ``running`` when an instance becomes ready,
since liveness is judged only from then on (a server still booting is not
unhealthy: that is start_timeout's business).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from pathlib import Path

from supervise.config.model import AppConfig, Readiness
from supervise.core import Event, Ready
from supervise.runtime import identity
from supervise.runtime.log import Log
from supervise.runtime.notify import NotifyMessage, NotifySockets
from supervise.runtime.probes import Prober

__all__ = ["InstanceChecks"]

NOTIFY_ENV = "NOTIFY_SOCKET"
WATCHDOG_ENV = "WATCHDOG_USEC"


class InstanceChecks:
    """Every instance's probes and notify socket, by spawn id; on the loop's thread only."""

    def __init__(self, loop: asyncio.AbstractEventLoop, notify_dir: Path, report: Callable[[Event], None],
                 beat: Callable[[int, Mapping[str, object] | None], None], log: Log,
                 env: Mapping[str, str]) -> None:
        self.report = report
        self.beat = beat
        self.log = log
        self.prober = Prober(loop, report, log, env=env)
        self._notify_dir = notify_dir
        self._loop = loop
        self._notify: NotifySockets | None = None  # made at the first notify app: most daemons have none
        self._main_pid: dict[int, int] = {}  # spawn id -> its main process, for the notify sender check

    # -- around a spawn ----------------------------------------------------------------------

    def environment(self, spawn_id: int, app: AppConfig, index: int) -> dict[str, str]:
        """What the worker must find in its environment: NOTIFY_SOCKET (and WATCHDOG_USEC when the app
        has a heartbeat_timeout, so that sd_watchdog_enabled() says yes) for ``readiness = "notify"``.
        OSError when the socket cannot be made: the spawn fails with that reason."""
        if app.readiness is not Readiness.NOTIFY:
            return {}
        uid = gid = None
        try:
            who = identity.resolve(app.user, app.group)
        except identity.IdentityError as exc:
            raise OSError(str(exc)) from None
        if who is not None:
            uid, gid = who.uid, who.gid
        env = {NOTIFY_ENV: self._sockets().open(spawn_id, f"{app.name}:{index}", uid, gid)}
        if app.heartbeat_timeout is not None:
            env[WATCHDOG_ENV] = str(int(app.heartbeat_timeout * 1_000_000))
        return env

    def spawned(self, spawn_id: int, pid: int, app: AppConfig, index: int) -> None:
        self._main_pid[spawn_id] = pid
        self.prober.start_readiness(spawn_id, app, index)

    def adopted(self, spawn_id: int, pid: int, app: AppConfig, index: int,
                environ: Callable[[int], Mapping[str, str]]) -> None:
        """A worker a previous daemon started: its notify socket is bound again at the path its
        environment names (what it said while no daemon listened is lost: a `READY=1` among it is why
        an adopted instance still starting gets its readiness probe, and a notify one its start_timeout)."""
        self._main_pid[spawn_id] = pid
        # Its environment is read (from /proc) only for a notify app: adopting thousands reads none.
        address = environ(pid).get(NOTIFY_ENV) if app.readiness is Readiness.NOTIFY else None
        if address:
            try:
                self._sockets().reopen(spawn_id, f"{app.name}:{index}", address)
            except (OSError, ValueError) as exc:
                self.log.warning("cannot listen on an adopted worker's notify socket again",
                                 name=f"{app.name}:{index}", socket=address, error=str(exc))
        self.prober.start_readiness(spawn_id, app, index)  # a Ready for one running already is a no-op

    def running(self, spawn_id: int, app: AppConfig, index: int) -> None:
        """The instance is ready: from now on its liveness probe judges it."""
        self.prober.start_liveness(spawn_id, app, index)

    def gone(self, spawn_id: int) -> None:
        self._main_pid.pop(spawn_id, None)
        self.prober.forget(spawn_id)
        if self._notify is not None:
            self._notify.close(spawn_id)

    def close(self, unlink: bool = True) -> None:
        self.prober.close()
        if self._notify is not None:
            self._notify.close_all(unlink=unlink)

    # -- what status shows ---------------------------------------------------------------------

    def probe_failure(self, spawn_id: int) -> str | None:
        """Why the instance's last probe failed, while it fails."""
        return self.prober.last_failure(spawn_id)

    def counters(self) -> dict[str, int] | None:
        return None if self._notify is None else self._notify.counters.as_json()

    def notify_sockets(self) -> int:
        """How many per-instance notify sockets are open: a descriptor each, beyond limits.FDS_PER_INSTANCE."""
        return 0 if self._notify is None else len(self._notify)

    # -- notify ----------------------------------------------------------------------------------

    def _sockets(self) -> NotifySockets:
        if self._notify is None:
            self._notify = NotifySockets(self._loop, self._notify_dir, self._notified, self.log,
                                         accept_pid=self._from_instance)
        return self._notify

    def _notified(self, spawn_id: int, message: NotifyMessage) -> None:
        if message.status is not None:
            self.beat(spawn_id, {"status": message.status})
        elif message.watchdog:
            self.beat(spawn_id, None)
        if message.ready:
            self.report(Ready(spawn_id))

    def _from_instance(self, spawn_id: int, pid: int) -> bool:
        """A datagram counts only from the instance's main process or one of its descendants (gunicorn
        says READY=1 from its master; `systemd-notify` sends in its parent's name)."""
        import psutil

        main = self._main_pid.get(spawn_id)
        if main is None:
            return False
        if pid in (main, 0):  # 0: a sender in a pid namespace we cannot see; the socket's mode guards it
            return True
        try:
            return any(parent.pid == main for parent in psutil.Process(pid).parents())
        except psutil.Error:
            return False
