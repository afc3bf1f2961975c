"""The event loop: sockets, signals, timers and processes around the pure core.

One asyncio loop, one thread owning all state. Everything that happens
(a child's exit on its pidfd, a command on the control socket, a beat, a
signal, a deadline) becomes one core event; every action the core returns
is carried out here, in order, by the piece that owns it: the worker table
(processes), the servers (replies, drains, events), the chores (sampling,
checkpoints, the service manager). Blocking work runs in one worker thread.

Crash-only: if the core itself raises, its state can no longer be trusted,
so the daemon writes a checkpoint and exits at once, leaving every worker
running; the next daemon (systemd's ``Restart=``) adopts them all.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import random
import signal
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from types import FrameType
from typing import TYPE_CHECKING, Any

import zmq

from supervise.config.errors import ConfigError
from supervise.config.model import Config
from supervise.core import (
    Action,
    Adopt,
    Checkpoint,
    CommandReceived,
    Core,
    DaemonStarted,
    DeadlineReached,
    EndChaos,
    Event,
    Exit,
    KillTree,
    Notify,
    PromoteSpare,
    Publish,
    ReleaseListeners,
    Reply,
    Resample,
    SendDrain,
    ShutdownRequested,
    Signal,
    SignalTree,
    Spawn,
    SpawnFailed,
    StopStray,
    Verb,
)
from supervise.core.actions import ExtendFence, ScaleCluster
from supervise.core.events import Cause, Stalled
from supervise.runtime import adoption, checkpoint, identity, killing, process, reloading, sdnotify
from supervise.runtime.checks import InstanceChecks
from supervise.runtime.chores import Checkpointer, LogChecks, Sampling, ServiceManager
from supervise.runtime.control_server import Controls, ControlServer, curve_security
from supervise.runtime.heartbeats import HeartbeatServer
from supervise.runtime.history import EVENTS_FILE, History
from supervise.runtime.listeners import ListenError, Listeners
from supervise.runtime.log import Log, log_event
from supervise.runtime.output import Outputs
from supervise.runtime.watching import Watching
from supervise.runtime.workers import Inherited, WorkerTable
from supervise.wire import protocol, statedir
from supervise.wire.statedir import StatePaths

if TYPE_CHECKING:
    from supervise.runtime.chaos_sessions import ChaosSessions
    from supervise.runtime.clustering import ClusterLink
    from supervise.runtime.http import HttpServer
    from supervise.runtime.metrics import Metrics

HANDLED_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGCHLD)
EARLY_SIGNALS = {signal.SIGTERM, signal.SIGINT, signal.SIGHUP}
NOT_IN_CLUSTER = "this daemon is not in a cluster: its config has no [cluster] section"
STALL_MARGIN = 0.5
"""Seconds a deadline may fire late before the daemon counts it as a stall of its own loop: above a
loaded machine's scheduling jitter, below any sensible heartbeat_timeout."""
EXIT_CRASHED = 70  # EX_SOFTWARE: the core failed; the workers run on for the next daemon to adopt


class CannotStart(Exception):
    """The state dir or a socket in it is unusable; the message says which and why."""


class Daemon:
    def __init__(self, config: Config, log: Log) -> None:
        self.config = config
        self.log = log
        self.paths = StatePaths(config.supervise.state_dir)
        self.core = Core(config, random.Random())
        self.history = History(path=self.paths.root / EVENTS_FILE, log=log)  # numbering goes on across restarts
        self._queue: deque[tuple[Event, float]] = deque()  # with the wall time it happened (was queued)
        self._event_time: float | None = None  # while the core handles an event: when it happened
        self._dispatching = False
        self._reap_pending = False
        self._timer: asyncio.TimerHandle | None = None
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="supervise-io")
        # systemd's notification socket is the daemon's alone: a worker that saw it
        # could tell systemd the service is ready or stopping, or feed our watchdog.
        self._notifier = sdnotify.Notifier.from_env(os.environ, log=log)
        self._base_env = dict(os.environ)
        sdnotify.unset_environment(self._base_env)
        self._keeping_workers = False  # exiting and leaving the workers to the next daemon
        self._then_apply: Config | None = None  # adopted under the checkpoint's config: apply this one after
        self._inherited: dict[int, Inherited] = {}  # what adopted workers' records say beyond the core's view
        self._adopted_tokens: set[str] = set()  # their children are not ours: the last sweep looks for these
        self.cluster: ClusterLink | None = None  # with [cluster]: the agent's link to the loop
        # Each published event, as a dict and as the JSON `events` clients get; called on the loop, must not block.
        self.event_listeners: list[Callable[[dict[str, object], bytes], None]] = []
        self.http: HttpServer | None = None  # with [supervise] metrics: /metrics and the dashboard
        self.metrics: Metrics | None = None

    # -- lifecycle --------------------------------------------------------------------

    async def run(self) -> int:
        loop = self.loop = asyncio.get_running_loop()
        self._exit: asyncio.Future[int] = loop.create_future()
        loop.set_exception_handler(self._loop_error)
        subreaper = process.become_subreaper()
        process.raise_nofile(self.log)  # workers get the soft limit the daemon started with
        await self._open_http()
        try:
            self._open_sockets()
        except BaseException:
            self._close_http()
            raise
        self.listeners = Listeners()
        self.outputs = Outputs(loop, self._publish)
        self.workers = WorkerTable(loop, self.paths, self.listeners, self.heartbeats, self._executor, self.dispatch,
                                   self.log, self._base_env, lambda: self.core.view.shutting_down, self.outputs)
        self.checks = self.workers.checks = InstanceChecks(loop, self.paths.root / "notify", self.dispatch, self._beat,
                                                           self.log, self._base_env)
        self._dispatching = True  # what the start sets off reports back through the queue, after it
        leftovers = self._recover()
        self._start_chores()
        if self.metrics is not None:
            self.checkpointer.on_write = self.metrics.checkpoint_written
        if leftovers is not None:  # adopted workers' sockets are taken over before any address is bound
            self._run_actions(self._handle(leftovers.event))
        self.heartbeats.start_reading()
        try:
            for app in self.config.apps.values():
                for address in app.listen:
                    self.listeners.bind(address, app.listen_option(address))
        except ListenError:
            self.listeners.close()
            self.heartbeats.close()
            self.control.close()
            self.ctx.term()
            self._close_http()
            raise
        self.workers.cgroups = process.Cgroups.detect(process.cgroups_owner())
        self._install_signal_handlers()
        self.log.info("daemon started", pid=os.getpid(), config=str(self.config.path),
                      state_dir=str(self.paths.root), apps=len(self.config.apps),
                      subreaper=subreaper, cgroups=self.workers.cgroups is not None)
        for warning in self.config.warnings:  # what `supervise check` prints
            self.log.warning("config", warning=warning)
        if leftovers is not None:
            self.log.info("adopted the workers of the previous daemon", adopted=len(self.workers),
                          lost=list(leftovers.lost), unrecorded=leftovers.strays)
        self._run_actions(self._handle(DaemonStarted()))
        # After the first spawns: watchfiles' import and the watcher's start (~6 ms) need not delay them.
        # A change in those milliseconds is one the new workers, still starting, read anyway.
        self.watching = Watching(loop, self.log, self.dispatch)
        self.watching.follow(self.config)
        if self.config.cluster is not None:
            from supervise.runtime.clustering import ClusterLink  # only a cluster's daemon pays for it

            self.cluster = ClusterLink(loop, self.config, lambda: self.core.view, self.dispatch, self.control.reply,
                                       self.log)
            self.cluster.start()
            self.log.info("cluster mode", node=self.cluster.node, cluster=self.config.cluster.name,
                          etcd=list(self.config.cluster.etcd))
        if self._then_apply is not None:
            self._apply_later_config(self._then_apply)
        self._drain_queue()
        try:
            return await self._exit
        finally:
            await self._close()

    def _open_sockets(self) -> None:
        """The control and heartbeat sockets; what can fail (an ipc path too long, a TCP port in
        use, a bad key) fails here, before anything else is done."""
        self.ctx = zmq.Context()
        servers: list[ControlServer] = []
        try:
            ids = itertools.count(1)
            servers.append(ControlServer(self.ctx, self.paths.control_socket, self.loop, self.history,
                                         self._on_request, self._finish_status, request_ids=ids, log=self.log))
            if self.config.supervise.control:
                try:
                    tcp = curve_security(self.config.supervise, self.ctx, self.log)
                except ValueError as exc:  # CurveError: a key file missing or wrong
                    raise CannotStart(f"control endpoint {self.config.supervise.control}: {exc}") from None
                servers.append(ControlServer(self.ctx, None, self.loop, self.history, self._on_request,
                                             self._finish_status, tcp=tcp, request_ids=ids,
                                             log=self.log))
            self.control = Controls(servers)
            others = identity.app_uids(self.config.apps.values())
            if others:  # workers running as another user must reach the heartbeat and notify sockets
                os.chmod(self.paths.root, 0o711)
            self.heartbeats = HeartbeatServer(self.ctx, self.paths.heartbeat_socket, self.loop, self.dispatch,
                                              self._beat, log=self.log, others=others)
        except (zmq.ZMQError, CannotStart) as exc:
            for server in servers:
                server.close()
            self.paths.control_socket.unlink(missing_ok=True)
            self.ctx.destroy(linger=0)
            if isinstance(exc, zmq.ZMQError) and self.config.supervise.control and len(servers) == 1:
                raise CannotStart(f"control endpoint {self.config.supervise.control}: {exc}") from None
            raise

    async def _open_http(self) -> None:
        """With ``[supervise] metrics``: /metrics (and the dashboard) over HTTP, served on this loop.
        Bound before any other socket, so that an address in use stops the start before anything is done."""
        address = self.config.supervise.metrics
        if address is None:
            return
        # Only a daemon with metrics loads them: every start pays for what is imported before its first spawn.
        from supervise.runtime import dashboard
        from supervise.runtime.http import HttpServer
        from supervise.runtime.metrics import Metrics, Source, host_port

        self.metrics = Metrics(self.loop, Source(
            status=lambda: self._finish_status(self.core.view.status(self.loop.time())),
            subscribe=self.event_listeners.append, draining=lambda: self.core.view.shutting_down,
            control_requests=lambda: self.control.requests,
            cluster=lambda: self.cluster.agent.status() if self.cluster is not None else None))
        self.http = HttpServer(*host_port(address), on_error=self._http_error)
        self.http.route("/metrics", self.metrics.handle)
        dashboard.install(self.http, dashboard.Source(  # `/`: the read-only page, its JSON and its event stream
            status=lambda: self._finish_status(self.core.view.status(self.loop.time())),
            log_file=self.paths.log_file, subscribe=self.event_listeners.append,
            recent=lambda: self.history.since(self.history.last_seq - dashboard.RECENT)))
        try:
            await self.http.start()
        except OSError as exc:  # in use, not permitted, a host name that does not resolve (errno < 0)
            self._close_http()
            reason = os.strerror(exc.errno) if exc.errno and exc.errno > 0 else exc.strerror or str(exc)
            raise CannotStart(f"metrics endpoint {address}: {reason}") from None
        self.log.info("metrics endpoint", url=f"http://{address}/metrics")

    def _close_http(self) -> None:
        if self.http is not None:
            self.http.close()
        if self.metrics is not None:
            self.metrics.close()

    def _http_error(self, path: str, exc: BaseException) -> None:
        self.log.error("HTTP request failed: internal error", path=path, exc_info=exc)

    def _start_chores(self) -> None:
        loop = self.loop
        self.sampling = Sampling(loop, self.workers, self._executor, self.dispatch)
        self._sampling_task = loop.create_task(self.sampling.run())
        self.log_checks = LogChecks(loop, self.workers, self._executor, self.log)
        self.service = ServiceManager(loop, self._notifier) if self._notifier is not None else None
        self.checkpointer = Checkpointer(loop, self.paths.checkpoint, self.core.view, self.workers,
                                         lambda: self.config, self._executor, self.log, self._publish)
        self.chaos: ChaosSessions | None = None  # made by the first `chaos` request: most daemons see none

    async def _close(self) -> None:
        self._close_http()  # first: no page reads what is being taken down
        if self.cluster is not None:  # every cluster instance is gone (or kept): give the lease up, or let it run out
            await self.loop.run_in_executor(None, self.cluster.close, not self._keeping_workers)
        if self.chaos is not None:
            self.chaos.end_all()
        self.watching.stop()
        self._sampling_task.cancel()
        self.log_checks.stop()
        if self.service is not None:
            self.service.stop()
        self.checkpointer.stop()
        for sig in HANDLED_SIGNALS:
            signal.signal(sig, signal.SIG_DFL)
        if not self._keeping_workers:
            # Last sweep: anything still descending from us (a grandchild that
            # escaped every process group) goes now, so shutdown leaves nothing.
            leftovers = await self.loop.run_in_executor(self._executor, killing.kill_all_descendants)
            if leftovers:
                self.log.warning("killed leftover descendants", count=leftovers)
            emptied = self.workers.swept_at_close
            if self._adopted_tokens or emptied:  # an adopted worker's children went to init, not to us
                strays = await self.loop.run_in_executor(self._executor, killing.kill_leftovers,
                                                         self._adopted_tokens, emptied)
                if strays:
                    self.log.warning("killed what adopted workers left behind", pids=sorted(strays))
                if self.workers.cgroups is not None and emptied:
                    await self.loop.run_in_executor(self._executor, self.workers.cgroups.remove_emptied,
                                                    self.workers.swept_at_close)
            self.workers.reap()
        self.workers.close()
        self.checks.close(unlink=not self._keeping_workers)
        self.outputs.close_all()  # workers kept for the next daemon hold their pipes' read ends themselves
        self.heartbeats.close()
        self.listeners.close(unlink=not self._keeping_workers)
        self.control.close()
        self.ctx.term()
        self.paths.control_socket.unlink(missing_ok=True)
        if self.workers.cgroups is not None and not self._keeping_workers:
            self.workers.cgroups.close()
        self._executor.shutdown(wait=True)
        self.history.close()
        if self._keeping_workers:
            self.log.info("daemon stopped; its workers run on", kept=len(self.workers),
                          checkpoint=str(self.paths.checkpoint))
        else:
            checkpoint.remove(self.paths.checkpoint)  # nothing is left to adopt
            self.log.info("daemon stopped")

    def _install_signal_handlers(self) -> None:
        """Signals only enqueue work for the loop, through call_soon_threadsafe.

        Not loop.add_signal_handler: that routes every signal through one
        wakeup pipe, which a burst of SIGCHLD (1,000 workers killed at once)
        fills, losing signal numbers — possibly a SIGTERM. A Python-level
        handler runs whatever the pipe's state (CPython sets a flag in C and
        retries an interrupted epoll after running it, PEP 475), and SIGCHLDs
        are coalesced into one reap pass.
        """
        loop = self.loop

        def on_signal(signum: int, frame: FrameType | None) -> None:
            if signum == signal.SIGCHLD:
                if not self._reap_pending:
                    self._reap_pending = True
                    loop.call_soon_threadsafe(self._reap)
            elif signum == signal.SIGHUP:
                loop.call_soon_threadsafe(self._on_sighup)
            else:
                loop.call_soon_threadsafe(self.dispatch, ShutdownRequested())

        for sig in HANDLED_SIGNALS:
            signal.signal(sig, on_signal)
        # Held back since `run` began (see there); delivered now, to these handlers.
        signal.pthread_sigmask(signal.SIG_UNBLOCK, EARLY_SIGNALS)

    def _reap(self) -> None:
        self._reap_pending = False
        self.workers.reap()

    def _loop_error(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        self.log.error("internal error", message=context.get("message"), exc_info=context.get("exception"))

    # -- the dispatch loop ------------------------------------------------------------

    def dispatch(self, event: Event) -> None:
        """Queue an event for the core; events raised while carrying out actions
        (a spawn reporting its pid) are handled after the current batch, in order."""
        self._queue.append((event, time.time()))
        if not self._dispatching:
            self._drain_queue()

    def _beat(self, spawn_id: int, fields: Any) -> None:
        """The heartbeat hot path, straight to the core (``Core.beat``: no actions)."""
        self.core.beat(spawn_id, fields, self.loop.time())

    def _drain_queue(self) -> None:
        self._dispatching = True
        try:
            while self._queue and not self._exit.done():
                event, self._event_time = self._queue.popleft()
                self._run_actions(self._handle(event))
        finally:
            self._dispatching = False
            self._event_time = None
        self._arm_timer()

    def _handle(self, event: Event) -> list[Action]:
        """One event through the core. If the core raises, its state is no longer known to be
        consistent: going on could lose a spawn or double one. Crash instead (see the module)."""
        try:
            return self.core.handle(event, self.loop.time())
        except Exception as exc:  # noqa: BLE001  (crash-only: logged with its traceback, then exit)
            self._crash(event, exc)
            return []

    def _crash(self, event: Event, exc: Exception) -> None:
        self.log.error("the core failed on an event: exiting, leaving the workers to the next daemon",
                       failed_event=repr(event), exc_info=exc)
        self._queue.clear()
        self._keeping_workers = True
        try:
            self.checkpointer.write_now()
        except Exception as error:  # noqa: BLE001  (the last coalesced checkpoint is still on disk)
            self.log.error("could not write a last checkpoint", error=repr(error))
        if not self._exit.done():
            self._exit.set_result(EXIT_CRASHED)

    def _arm_timer(self) -> None:
        deadline = self.core.next_deadline()
        if self._timer is not None:
            if deadline is not None and self._timer.when() == deadline:
                return
            self._timer.cancel()
            self._timer = None
        if deadline is not None and not self._exit.done():
            self._timer = self.loop.call_at(deadline, self._on_deadline, deadline)

    def _on_deadline(self, due: float) -> None:
        """A deadline came; one that came more than STALL_MARGIN late means the loop stood still (a
        SIGSTOP, a VM pause, swap): the core hears of the stall first, so that it judges liveness
        afresh instead of declaring hung every worker whose beats wait unread on the socket."""
        self._timer = None
        late = self.loop.time() - due
        if late > STALL_MARGIN:
            self.log.warning("the daemon's loop stood still; liveness is judged afresh", seconds=round(late, 3))
            self.dispatch(Stalled(late))
        self.dispatch(DeadlineReached())

    def _run_actions(self, actions: list[Action]) -> None:
        for action in actions:
            try:
                self._run_action(action)
            except Exception as exc:  # noqa: BLE001  (one action's bug must not stop the others)
                self.log.error("action failed", action=repr(action), exc_info=exc)
                if isinstance(action, Spawn):  # the core waits for its spawn to be reported
                    self.dispatch(SpawnFailed(action.spawn_id, f"internal error: {exc!r}"))

    def _run_action(self, action: Action) -> None:
        match action:
            case Spawn():
                self.workers.spawn(action)
            case Adopt(pid=pid):
                self.workers.adopt(action, self._inherited.pop(pid, Inherited(None, None)))
            case Signal(spawn_id=sid, signal=sig):
                self.workers.signal(sid, sig)
            case SignalTree(spawn_id=sid, signal=sig):
                self.workers.signal_tree(sid, sig)
            case KillTree(spawn_id=sid):
                self.workers.kill_tree(sid)
            case SendDrain(spawn_id=sid):
                self.heartbeats.send_drain(sid)
            case PromoteSpare(spawn_id=sid):
                if not self.workers.promote(action):
                    # Not told, it would sit idle in the slot: killed, the slot restarts as after a crash.
                    self.log.warning("a promoted spare could not be told: killed, its slot restarts",
                                     app=action.app.name, index=action.index)
                    self.workers.kill_tree(sid)
            case StopStray(pid=pid, name=name):
                self.workers.stop_stray(pid, name)
            case Resample(after=after):
                self.sampling.soon(after)
            case Reply() if self.cluster is not None and self.cluster.is_roll(action):
                self.cluster.rolled(action)
            case Reply():
                self.control.reply(action)
            case Publish(event=event):
                self._publish(event)
            case Checkpoint():
                if not self._keeping_workers:
                    self.checkpointer.soon()
            case Notify():
                if self.service is not None:
                    self.service.notify(action)
            case ReleaseListeners(keep=keep):
                for address in self.listeners.close_unused(set(keep)):
                    self.log.info("closed a listen socket no app uses any more", address=address)
            case EndChaos():
                if self.chaos is not None:
                    self.chaos.end_all()
            case ExtendFence(spawn_ids=sids, until=until):
                for sid in sids:
                    self.heartbeats.send_fence(sid, until)
            case ScaleCluster():
                if self.cluster is not None:
                    self.cluster.scale(action)
                else:
                    self.control.reply(Reply(action.request_id, False, error=NOT_IN_CLUSTER))
            case Exit(code=code):
                if not self._exit.done():
                    self._exit.set_result(code)

    # -- requests and reloads ---------------------------------------------------------

    def _on_request(self, rid: int, req: protocol.Request) -> None:
        if req.cmd == "cluster" or (req.cmd == "status" and (req.options or {}).get("cluster")):
            if self.cluster is None:
                self.control.reply(Reply(rid, False, error=NOT_IN_CLUSTER, usage=True))
            else:
                self.cluster.request(rid, req)
        elif req.cmd == "reload" and self.cluster is not None and self.cluster.clustered(req.targets):
            self.cluster.reload(rid, req)
        elif req.cmd == "chaos":
            if self.chaos is None:
                from supervise.runtime.chaos_sessions import ChaosSessions  # 0.3 MiB no other daemon carries

                self.chaos = ChaosSessions(self.loop, self.workers, self._publish, self.control.reply)
            self.chaos.start(rid, req.targets, req.options or {}, self.config, self.core.view.shutting_down)
        elif req.cmd == "shutdown" and req.keep_workers:
            self._exit_keeping_workers(rid)
        elif req.cmd == "reload" and not req.targets:
            self._reload_config(rid, req.dry_run, Cause.RELOAD, req.timeout)
        else:
            self.dispatch(CommandReceived(rid, Verb(req.cmd), req.targets, req.count, req.timeout,
                                          dry_run=req.dry_run, signal=req.signal, tree=req.tree))

    def _on_sighup(self) -> None:
        self.log.info("SIGHUP received: re-reading the config", config=str(self.config.path))
        self._reload_config(None, dry_run=False, cause=Cause.SIGNAL)

    def _reload_config(self, rid: int | None, dry_run: bool, cause: Cause, timeout: float | None = None) -> None:
        """Re-read the config file and hand it to the core, which applies the difference.

        A config with errors changes nothing: the same file:line messages as
        `check` go back to the caller (and to the log, for SIGHUP). New listen
        addresses are bound first, so an address in use is also an error
        before anything has changed.
        """
        try:
            new = reloading.reread(self.config, self.listeners, bind=not dry_run, log=self.log)
        except (ConfigError, ListenError) as exc:
            self.log.error("config reload rejected; nothing changed", error=str(exc))
            if rid is not None:
                self.control.reply(Reply(rid, False, error=str(exc), usage=True))
            return
        if not dry_run:
            if reloading.control_changed(self.config, new):
                self.log.warning("[supervise] control settings changed: they apply at the next daemon start")
            if self.config.supervise.metrics != new.supervise.metrics:
                self.log.warning("[supervise] metrics changed: it applies at the next daemon start",
                                 serving=self.config.supervise.metrics, configured=new.supervise.metrics)
            self._switch_config(new)
        self.dispatch(CommandReceived(rid, Verb.RELOAD, config=new, dry_run=dry_run, cause=cause, timeout=timeout))

    def _switch_config(self, new: Config) -> None:
        """`new` is the config from now on (the core gets it as a reload); follow its watch patterns."""
        if self.config.cluster != new.cluster:
            self.log.warning("[cluster] settings changed: they apply at the next daemon start")
        self.config = new
        self.watching.follow(new)
        if self.cluster is not None:
            self.cluster.config_changed(new)

    def _exit_keeping_workers(self, rid: int) -> None:
        """Exit now and leave every worker running: the next daemon adopts them from the checkpoint."""
        try:
            self.checkpointer.write_now()
        except OSError as exc:
            self.control.reply(Reply(rid, False, error=f"cannot write the checkpoint, so the workers could not "
                                     f"be adopted; not exiting: {exc.strerror or exc}"))
            return
        self._keeping_workers = True
        self.control.reply(Reply(rid, True, result={"kept": len(self.workers),
                                                     "checkpoint": str(self.paths.checkpoint)}))
        if not self._exit.done():
            self._exit.set_result(0)

    # -- adoption -------------------------------------------------------------------------

    def _recover(self) -> adoption.Leftovers | None:
        """What a previous daemon on this state dir left running (None: nothing).

        When its checkpoint was written under another config than the file's,
        the core starts with the checkpoint's (so that instances match what
        runs) and the file's is applied after, as a reload would.
        """
        found, leftovers = adoption.read(self.paths.checkpoint, self.workers.heartbeat_endpoint, self.log)
        self._inherited = dict(leftovers.inherited)
        self._adopted_tokens = {i.token for i in leftovers.inherited.values() if i.token}
        if leftovers.dead_tokens or leftovers.dead_cgroups:
            # What a worker that died while no daemon ran left behind (a forked child, re-parented
            # away from us) goes before its slot is restarted: no old code serving beside the new.
            swept = killing.kill_leftovers(leftovers.dead_tokens, leftovers.dead_cgroups)
            if swept:
                self.log.warning("killed what dead workers left behind", pids=sorted(swept))
        if not leftovers.event.instances:
            return None
        old = reloading.recorded_config(found, self.config, self.log)
        if old is not None:
            self.core = Core(old, random.Random())
            self._then_apply, self.config = self.config, old
        return leftovers

    def _apply_later_config(self, new: Config) -> None:
        """Adopted under the config the checkpoint recorded; now apply the file's, as a reload would."""
        self.log.info("the config changed while no daemon ran: applying the difference", config=str(new.path))
        for app in new.apps.values():
            for address in app.listen:
                try:
                    self.listeners.bind(address, app.listen_option(address))
                except ListenError as exc:
                    self.log.error("cannot listen", error=str(exc))
        self._switch_config(new)
        self._queue.append((CommandReceived(None, Verb.RELOAD, config=new, cause=Cause.CONFIG), time.time()))

    # -- what the world sees ---------------------------------------------------------------

    def _publish(self, event: dict[str, object]) -> int:
        """Number the event, keep it, log it, push it to followers; returns its number.

        Its time is when what caused it happened (an exit: the moment it was reaped), not when
        the action was carried out: the replacement's spawn comes before the publish."""
        stamped = self.history.append(event, self._event_time or time.time())
        log_event(self.log, event)
        if event.get("type") == "state" and event.get("to") == "running":
            self._now_running(event)
        self.control.push(stamped)
        if self.cluster is not None:
            self.cluster.noticed(event)
        for listener in self.event_listeners:  # /metrics counters, the dashboard's live stream
            listener(event, stamped)
        return self.history.last_seq

    def _now_running(self, event: dict[str, object]) -> None:
        """An instance became ready: its liveness probe (if it has one) judges it from now on."""
        pid = event.get("pid")
        worker = self.workers.by_pid(pid) if isinstance(pid, int) else None
        index = event.get("index")
        if worker is not None and isinstance(index, int):
            self.checks.running(worker.spawn_id, worker.app, index)

    def _finish_status(self, result: dict[str, object]) -> dict[str, object]:
        """The core's `status` reply, with what only the shell knows: each live instance's
        dropped output lines, and the ``daemon`` section."""
        # After this reply is encoded and sent: a sampling pass it sets off now (a thread reading /proc
        # for every instance) would contend for the GIL with them.
        self.loop.call_soon(self.sampling.looked)
        apps: Any = result.get("apps") or ()
        for app in apps:
            for row in (*app.get("instances", ()), *app.get("replacing", ())):
                worker = self.workers.by_pid(row["pid"]) if row.get("pid") else None
                out = self.outputs.get(worker.spawn_id) if worker is not None else None
                row["log_dropped"] = out.dropped_lines if out is not None else None
                failing = self.checks.probe_failure(worker.spawn_id) if worker is not None else None
                if failing is not None:
                    row["probe"] = failing  # why its readiness or liveness probe fails, while it does
        return {**result, "daemon": self._status_extra()}

    def _status_extra(self) -> dict[str, object]:
        extra: dict[str, object] = {
            "pid": os.getpid(), "heartbeats": self.heartbeats.counters.as_json(),
            "control_malformed": self.control.malformed, "control_internal_errors": self.control.internal_errors}
        extra["memory_measure"] = self.sampling.measure  # what `rss` counts: "cgroup", "pss" or "rss-sum"
        failing = self.checkpointer.failing
        extra["checkpoint"] = {"ok": failing is None, "error": failing}
        if self.cluster is not None:
            extra["cluster"] = self.cluster.summary()
        return extra


def run(config: Config, log: Log) -> int:
    """Run the daemon in the foreground until it has drained; returns the exit code."""
    paths = StatePaths(config.supervise.state_dir)
    # A SIGTERM before our handlers exist would kill us undrained, or as PID 1
    # (which ignores signals it has no handler for) be lost: `docker stop`
    # would then wait and SIGKILL. Blocked, it waits for the handlers. They
    # are installed, and this undone, before the first worker is spawned
    # (workers inherit the mask).
    signal.pthread_sigmask(signal.SIG_BLOCK, EARLY_SIGNALS)
    try:
        lock_fd = statedir.lock(paths)
    except OSError as exc:
        raise CannotStart(f"state dir {paths.root}: {exc.strerror or exc}") from None
    try:
        return asyncio.run(Daemon(config, log).run())
    except ListenError as exc:
        raise CannotStart(str(exc)) from None
    except zmq.ZMQError as exc:
        raise CannotStart(f"sockets in {paths.root}: {exc} (an ipc path must be under 108 bytes: "
                          "choose a shorter state_dir)") from None
    finally:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, EARLY_SIGNALS)
        os.close(lock_fd)
