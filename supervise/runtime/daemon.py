"""The event loop: sockets, signals, timers and processes around the pure core.

One asyncio loop, one thread owning all state. Child exits arrive through a
pidfd becoming readable (SIGCHLD as the fallback and for orphans we reap as
a subreaper), commands through the control socket, signals through asyncio's
wakeup fd. Each becomes a core event; each action the core returns is
carried out here. Blocking work (walking /proc to kill a process tree,
rotating logs) runs in a worker thread.
"""

from __future__ import annotations

import asyncio
import dataclasses
import fcntl
import itertools
import os
import random
import signal
import time
from pathlib import Path
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING

import zmq

from supervise.config import loader as config_module
from supervise.runtime import logfiles
from supervise.runtime import process
from supervise.runtime import sampler
from supervise.runtime import sdnotify
from supervise.runtime import checkpoint as state
from supervise.core.chaos import SIGNALS as CHAOS_SIGNALS
from supervise.core.chaos import ChaosError, ChaosPlan
from supervise.config.model import AppConfig, Config
from supervise.core import (
    Action,
    Adopted,
    CommandReceived,
    Core,
    Event,
    Exit,
    Exited,
    KillTree,
    Publish,
    Reply,
    Resample,
    Sampled,
    SendDrain,
    ShutdownRequested,
    Signal,
    Spawn,
    Spawned,
    SpawnFailed,
    DeadlineReached,
)
from supervise.runtime.control_server import ControlServer, Controls
from supervise.runtime.heartbeats import HeartbeatServer
from supervise.runtime.history import History
from supervise.runtime.listeners import ListenError, Listeners, environment as listen_environment
from supervise.wire.statedir import StatePaths

if TYPE_CHECKING:
    from supervise.runtime.watch import Watcher

LOG_CHECK_INTERVAL = 3.0  # one stat() per instance on the loop; rotation itself runs off it
LOG_CHECK_FLOOD = 0.2  # the next check, when one found a file over its limit
MEMORY_INTERVAL = 0.5  # sampling period while some app has max_memory
DISPLAY_INTERVAL = 30.0  # otherwise RSS is only for `status`: sample rarely
HANDLED_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGCHLD)
EARLY_SIGNALS = {signal.SIGTERM, signal.SIGINT, signal.SIGHUP}
HEARTBEAT_INTERVAL = 1.0
SWEEP_DELAY = 0.05
CHECKPOINT_INTERVAL = 0.25
"""Seconds between checkpoints at most: a crash storm is written a few times a second, not per event."""
CHECKPOINTED = frozenset({"state", "replaced", "removed", "scaled", "rollout", "config", "app"})
"""Published events after which the checkpoint is out of date."""


class AlreadyRunning(Exception):
    pass


class CannotStart(Exception):
    """The state dir or a socket in it is unusable; the message says which and why."""


@dataclass(slots=True)
class _Worker:
    spawn_id: int
    name: str
    app: AppConfig
    child: process.Child  # without its pidfd: the loop owns that, the sweeper thread must not
    token: str
    pidfd: int | None
    log_path: str
    adopted: bool = False  # started by a previous daemon: not our child, its exit status is out of reach


def lock_state_dir(paths: StatePaths) -> int:
    """Hold an exclusive POSIX lock on the state dir for the daemon's whole life.

    A lock, not a pid file: the kernel drops it when the daemon dies however
    it dies, so a stale file never blocks a restart, and the CLI can ask
    (F_GETLK) whether a daemon is alive without taking the lock itself.
    """
    paths.root.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(paths.root, 0o700)
    fd = os.open(paths.lock, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        holder = paths.lock_holder()
        os.close(fd)
        who = f"pid {holder}" if holder else "a process outside this pid namespace"
        raise AlreadyRunning(
            f"another supervise daemon ({who}) is running on {paths.root}; "
            "use `supervise status` to talk to it or `supervise shutdown` to stop it"
        ) from None
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()}\n".encode())
    return fd


class Daemon:
    def __init__(self, config: Config, log) -> None:
        self.config = config
        self.log = log
        self.paths = StatePaths(config.supervise.state_dir)
        self.core = Core(config, random.Random())
        self.history = History()
        self.workers: dict[int, _Worker] = {}  # by pid
        self._queue: deque[Event] = deque()
        self._dispatching = False
        self._reap_pending = False
        self._timer: asyncio.TimerHandle | None = None
        self._exit: asyncio.Future[int] | None = None
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="supervise-io")
        self._base_env = dict(os.environ)
        # systemd's notification socket is the daemon's alone: a worker that saw it
        # could tell systemd the service is ready or stopping, or feed our watchdog.
        self.notifier = sdnotify.Notifier.from_env(os.environ, log=log)
        sdnotify.unset_environment(self._base_env)
        self._said_ready = False
        self._status_timer: asyncio.TimerHandle | None = None
        self._chaos: dict[int, asyncio.Task] = {}  # running `supervise chaos` sessions, by id
        self._chaos_started = 0
        self.cgroups: process.Cgroups | None = None
        self._checkpoint_timer: asyncio.TimerHandle | None = None
        self._last_checkpoint = 0.0
        self._keeping_workers = False  # `shutdown --keep-workers`: leave them for the next daemon
        self._then_apply: Config | None = None  # adopted under the checkpoint's config: apply this one after

    # -- lifecycle ------------------------------------------------------------------

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        self.loop = loop
        self._exit = loop.create_future()
        loop.set_exception_handler(self._loop_error)
        subreaper = process.become_subreaper()
        self.ctx = zmq.Context()
        servers: list[ControlServer] = []
        try:  # what can fail (an ipc path too long, a TCP port in use, a bad key) comes before the rest
            ids = itertools.count(1)
            servers.append(ControlServer(self.ctx, self.paths.control_socket, loop, self.history,
                                         self._on_request, self._status_extra, request_ids=ids))
            if self.config.supervise.control:
                servers.append(ControlServer(self.ctx, None, loop, self.history, self._on_request,
                                             self._status_extra, tcp=self._secure_tcp(), request_ids=ids))
            self.control = Controls(servers)
            self.heartbeats = HeartbeatServer(self.ctx, self.paths.heartbeat_socket, loop, self.dispatch,
                                              lambda sid, fields: self.core.beat(sid, fields, loop.time()))
        except (zmq.ZMQError, CannotStart) as exc:
            for server in servers:
                server.close()
            self.paths.control_socket.unlink(missing_ok=True)
            self.ctx.destroy(linger=0)
            if isinstance(exc, zmq.ZMQError) and self.config.supervise.control and len(servers) == 1:
                raise CannotStart(f"control endpoint {self.config.supervise.control}: {exc}") from None
            raise
        self.listeners = Listeners()
        adopted = self._recover(loop.time())
        self.heartbeats.start_reading()
        try:
            for app in self.config.apps.values():
                for address in app.listen:
                    self.listeners.bind(address)
        except ListenError:
            self.listeners.close()
            self.heartbeats.close()
            self.control.close()
            self.ctx.term()
            raise
        self.cgroups = process.Cgroups.detect(process.cgroups_owner())
        self._sample_now = asyncio.Event()
        self._install_signal_handlers()
        self.log.info("daemon started", pid=os.getpid(), config=str(self.config.path),
                      state_dir=str(self.paths.root), apps=len(self.config.apps),
                      subreaper=subreaper, cgroups=self.cgroups is not None)
        self._chores = [loop.create_task(self._sample_forever())]
        if self.notifier is not None and self.notifier.watchdog_interval:
            self._chores.append(loop.create_task(self._feed_watchdog(self.notifier.watchdog_interval)))
        self.watcher: Watcher | None = None
        self._watch(self.config)
        self._log_check = loop.call_later(LOG_CHECK_INTERVAL, self._check_logs)
        self._dispatching = True  # spawns report back through the queue, after these actions
        self._run_actions(self.core.start(loop.time()))
        for pid in adopted:  # exited between the check and now: the pidfd is readable already
            if pid in self.workers:
                loop.add_reader(self.workers[pid].pidfd, self._adopted_exited, pid)
        if self._then_apply is not None:
            self._apply_later_config(self._then_apply)
        self._drain_queue()
        self._checkpoint_soon()
        self._notify_soon()
        try:
            return await self._exit
        finally:
            await self._close()

    async def _close(self) -> None:
        for task in list(self._chaos.values()):
            task.cancel()
        if self.watcher is not None:
            self.watcher.stop(timeout=0)  # a daemon thread: it notices within one step, we need not wait
        for chore in self._chores:
            chore.cancel()
        self._log_check.cancel()
        for sig in HANDLED_SIGNALS:
            signal.signal(sig, signal.SIG_DFL)
        if self._checkpoint_timer is not None:
            self._checkpoint_timer.cancel()
        if not self._keeping_workers:
            # Last sweep: anything still descending from us (a grandchild that
            # escaped every process group) goes now, so shutdown leaves nothing.
            leftovers = await self.loop.run_in_executor(self._executor, process.kill_all_descendants)
            if leftovers:
                self.log.warning("killed leftover descendants", count=leftovers)
            self._reap()
        for worker in self.workers.values():
            self._forget_pidfd(worker)
        self.heartbeats.close()
        self.listeners.close(unlink=not self._keeping_workers)
        self.control.close()
        self.ctx.term()
        self.paths.control_socket.unlink(missing_ok=True)
        if self.cgroups is not None and not self._keeping_workers:
            self.cgroups.close()
        self._executor.shutdown(wait=True)
        if self._keeping_workers:
            self.log.info("daemon stopped; its workers run on", kept=len(self.workers),
                          checkpoint=str(self.paths.checkpoint))
        else:
            state.remove(self.paths.checkpoint)  # nothing is left to adopt
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

        def on_signal(signum: int, frame) -> None:
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

    def _loop_error(self, loop, context) -> None:
        self.log.error("internal error", message=context.get("message"), exc_info=context.get("exception"))

    def _on_sighup(self) -> None:
        self.log.info("SIGHUP received: re-reading the config", config=str(self.config.path))
        self._reload_config(None, dry_run=False, cause="signal")

    # -- requests and reloads ---------------------------------------------------------

    def _on_request(self, rid: int, req) -> None:
        if req.cmd == "chaos":
            self._start_chaos(rid, req)
            return
        if req.cmd == "shutdown" and req.keep_workers:
            self._exit_keeping_workers(rid)
            return
        if req.cmd == "reload" and not req.targets:
            self._reload_config(rid, req.dry_run, "reload", req.timeout)
            return
        self.dispatch(CommandReceived(rid, req.cmd, req.targets, req.count, req.timeout, dry_run=req.dry_run))

    def _reload_config(self, rid: int | None, dry_run: bool, cause: str, timeout: float | None = None) -> None:
        """Re-read the config file and hand it to the core, which applies the difference.

        A config with errors changes nothing: the same file:line messages as
        `check` go back to the caller (and to the log, for SIGHUP). New listen
        addresses are bound first, so an address in use is also an error
        before anything has changed.
        """
        try:
            new = config_module.load(self.config.path)
            if new.supervise.state_dir != self.config.supervise.state_dir:
                raise config_module.ConfigError([config_module.Problem(
                    new.path, None, "supervise.state_dir",
                    "changed; that takes a daemon restart (`supervise shutdown`, then `supervise run`)")])
            if not dry_run:
                for app in new.apps.values():
                    for address in app.listen:
                        self.listeners.bind(address)
        except (config_module.ConfigError, ListenError) as exc:
            self.log.error("config reload rejected; nothing changed", error=str(exc))
            if rid is not None:
                self.control.reply(Reply(rid, False, error=str(exc), usage=True))
            return
        if dry_run:
            self.dispatch(CommandReceived(rid, "reload", config=new, dry_run=True, cause=cause, timeout=timeout))
            return
        was, now = self.config.supervise, new.supervise
        if (was.control, was.control_key, was.control_clients) != (now.control, now.control_key,
                                                                    now.control_clients):
            self.log.warning("[supervise] control settings changed: they apply at the next daemon start")
        if self.notifier is not None:
            self.notifier.reloading()
        self._switch_config(new)
        self.dispatch(CommandReceived(rid, "reload", config=new, cause=cause, timeout=timeout))
        if self.notifier is not None:
            self.notifier.ready_again(self._summary())  # applied; rollouts go on in the background
        self._close_unused_listeners()

    def _switch_config(self, new: Config) -> None:
        """`new` is the config from now on (the core gets it as a reload); follow its watch patterns."""
        old, self.config = self.config, new
        if _watched(old) != _watched(new):
            self._watch(new)

    def _exit_keeping_workers(self, rid: int) -> None:
        """Exit now and leave every worker running: the next daemon adopts them from the checkpoint."""
        try:
            state.write(self.paths.checkpoint, self._checkpoint_bytes())
        except OSError as exc:
            self.control.reply(Reply(rid, False, error=f"cannot write the checkpoint, so the workers could not "
                                     f"be adopted; not exiting: {exc.strerror or exc}"))
            return
        self._keeping_workers = True
        self.control.reply(Reply(rid, True, result={"kept": len(self.workers),
                                                     "checkpoint": str(self.paths.checkpoint)}))
        if self._exit is not None and not self._exit.done():
            self._exit.set_result(0)

    def _secure_tcp(self) -> tuple[str, object]:
        """The TCP control endpoint and how to secure it: CURVE, only the listed client keys."""
        from supervise.wire import curve  # only a daemon with a TCP endpoint pays for it

        settings = self.config.supervise
        try:
            secret = curve.load_secret(settings.control_key)
            clients = [curve.load_public(c) for c in settings.control_clients]
        except curve.CurveError as exc:
            raise CannotStart(f"control endpoint {settings.control}: {exc}") from None
        self.log.info("control endpoint", endpoint=settings.control, server_key=secret.public,
                      clients=[curve.mask(c) for c in clients])
        return settings.control, lambda sock: curve.secure_server(sock, secret, clients, self.ctx)

    # -- chaos ----------------------------------------------------------------------------

    def _start_chaos(self, rid: int, req) -> None:
        """Validate a chaos request, answer at once, and harm instances in the background."""
        def refuse(message: str, usage: bool = True) -> None:
            self.control.reply(Reply(rid, False, error=f"chaos: {message}", usage=usage))

        options = req.options or {}
        if self.core.shutting_down:
            return refuse("the daemon is shutting down", usage=False)
        if not req.targets:
            return refuse("name the apps or instances to harm")
        apps = {t.partition(":")[0] for t in req.targets}
        unknown = sorted(a for a in apps if a not in self.config.apps)
        if unknown:
            return refuse(f"no app named {unknown[0]!r} (apps: {', '.join(self.config.apps) or 'none'})")
        guarded = sorted(a for a in apps if not self.config.apps[a].chaos)
        if guarded and options.get("force") is not True:
            return refuse(f"{', '.join(guarded)} not marked `chaos = true` in {self.config.path.name}; "
                          "mark it, or pass --force if you really mean to harm it")
        try:
            plan = ChaosPlan.from_options(options)
        except ChaosError as exc:
            return refuse(str(exc))
        self._chaos_started += 1
        cid = self._chaos_started
        self.control.reply(Reply(rid, True, result={
            "id": cid, "seq": self.history.last_seq, "rate": plan.rate, "duration": plan.duration,
            "signal": plan.signal, "seed": plan.seed, "targets": list(req.targets)}))
        self._publish({"type": "chaos", "id": cid, "event": "started", "targets": list(req.targets),
                       "rate": plan.rate, "duration": plan.duration, "signal": plan.signal, "seed": plan.seed})
        self._chaos[cid] = self.loop.create_task(self._run_chaos(cid, plan, frozenset(req.targets)))

    async def _run_chaos(self, cid: int, plan: ChaosPlan, targets: frozenset[str]) -> None:
        loop = self.loop
        end = loop.time() + plan.duration
        stopped: dict[int, _Worker] = {}
        harms = 0
        try:
            while True:
                at = loop.time() + plan.next_delay()
                if at > end:
                    await asyncio.sleep(max(0.0, end - loop.time()))
                    break
                await asyncio.sleep(max(0.0, at - loop.time()))
                live = {w.name: w for w in self.workers.values()
                        if w.name in targets or w.app.name in targets}
                name = plan.pick(list(live))
                if name is None:
                    continue  # nothing alive to harm right now
                worker = live[name]
                sig = CHAOS_SIGNALS[plan.signal]
                _signal_worker(worker, sig)
                harms += 1
                if sig == signal.SIGSTOP:
                    stopped[worker.child.pid] = worker
                self._publish({"type": "chaos", "id": cid, "event": "harm", "name": worker.name,
                               "pid": worker.child.pid, "signal": f"SIG{plan.signal}"})
        finally:
            for pid, worker in stopped.items():  # a hang ends with the chaos (unless it was detected)
                if self.workers.get(pid) is worker:
                    _signal_worker(worker, signal.SIGCONT)
            self._chaos.pop(cid, None)
            self._publish({"type": "chaos", "id": cid, "event": "done", "harms": harms})

    # -- systemd ------------------------------------------------------------------------

    def _notify_soon(self) -> None:
        """READY=1 once every app has started, and a STATUS= line: at most once a second."""
        if self.notifier is None or self._status_timer is not None or self.core.shutting_down:
            return
        self._status_timer = self.loop.call_later(0 if not self._said_ready else 1.0, self._notify_now)

    def _notify_now(self) -> None:
        self._status_timer = None
        if self.notifier is None or self.core.shutting_down:
            return
        counts = self.core.counts()
        if not self._said_ready and not counts["starting"] and not counts["waiting"]:
            self._said_ready = True
            self.notifier.ready(self._summary(counts))
        else:
            self.notifier.status(self._summary(counts))

    def _summary(self, counts: dict[str, int] | None = None) -> str:
        counts = counts or self.core.counts()
        text = f"{counts['running']} running, {counts['starting']} starting, {counts['backoff']} in backoff, " \
               f"{counts['failed']} failed, {counts['stopped']} stopped"
        return text + (f", {counts['waiting']} apps waiting for dependencies" if counts["waiting"] else "")

    async def _feed_watchdog(self, interval: float) -> None:
        """WATCHDOG=1 from the loop itself: if the loop wedges, systemd notices and restarts us."""
        while True:
            self.notifier.watchdog()
            await asyncio.sleep(interval)

    # -- surviving our own death: checkpoint and adoption ------------------------------

    def _checkpoint_soon(self) -> None:
        """Coalesce: at most one checkpoint per CHECKPOINT_INTERVAL, however many events."""
        if self._checkpoint_timer is not None or self._keeping_workers or self.core.shutting_down:
            return
        delay = max(0.0, self._last_checkpoint + CHECKPOINT_INTERVAL - self.loop.time())
        self._checkpoint_timer = self.loop.call_later(delay, self._checkpoint_now)

    def _checkpoint_now(self) -> None:
        self._checkpoint_timer = None
        if self._keeping_workers or self.core.shutting_down:
            return
        self._last_checkpoint = self.loop.time()
        data = self._checkpoint_bytes()  # on the loop, which owns the state; the disk work is not
        self.loop.run_in_executor(self._executor, self._store_checkpoint, data)

    def _store_checkpoint(self, data: bytes) -> None:
        try:
            state.write(self.paths.checkpoint, data)
        except OSError as exc:
            self.log.warning("cannot write the checkpoint; a daemon restart would not adopt the workers",
                             error=exc.strerror or str(exc))

    def _checkpoint_bytes(self) -> bytes:
        snap = self.core.snapshot()
        offset = time.time() - self.loop.time()  # loop time -> wall clock
        by_spawn = {w.spawn_id: w for w in self.workers.values()}
        records = []
        for i in snap["instances"]:
            w = by_spawn.get(i["spawn_id"]) if i["spawn_id"] is not None else None
            records.append(state.InstanceRecord(
                i["app"], i["index"], i["generation"], i["role"], i["state"], i["restarts"],
                pid=w.child.pid if w else None, create_time=w.child.create_time if w else None,
                token=w.token if w else None, log_path=w.log_path if w else None,
                cgroup=str(w.child.cgroup) if w and w.child.cgroup else None,
                listen=tuple(w.app.listen) if w else (),
                spawned_at=None if i["spawned_at"] is None else i["spawned_at"] + offset,
                running_since=None if i["running_since"] is None else i["running_since"] + offset,
                last_exit=i["last_exit"]))
        return state.encode(state.Checkpoint(os.getpid(), time.time(), str(self.config.path), self.config.text,
                                             snap["apps"], tuple(records)))

    def _recover(self, now: float) -> list[int]:
        """Adopt what a previous daemon on this state dir left running; returns the adopted pids.

        Its checkpoint names the instances; each pid is trusted only if it is
        still that very process (start time, token), and is otherwise never
        signalled. Workers spawned after its last checkpoint are found by
        their environment. Nothing here kills anything.
        """
        try:
            checkpoint = state.read(self.paths.checkpoint)
        except state.CheckpointError as exc:
            self.log.warning("the checkpoint is unusable: starting afresh (workers it named are left alone)",
                             path=str(self.paths.checkpoint), error=str(exc))
            checkpoint = None
        records = list(checkpoint.instances) if checkpoint else []
        known = {r.pid for r in records if r.pid is not None}
        tokens = {r.token for r in records if r.token}
        strays: dict[str, state.Stray] = {}
        for stray in state.find_strays(f"ipc://{self.paths.heartbeat_socket}", known):
            # One carrying a known token is a worker's own child that called setsid:
            # its parent is the worker. Of unknown ones, the oldest per token is the worker.
            if stray.token not in tokens and (stray.token not in strays
                                              or stray.create_time < strays[stray.token].create_time):
                strays[stray.token] = stray
        if not records and not strays:
            return []
        if checkpoint is not None and checkpoint.config_text and checkpoint.config_text != self.config.text:
            try:
                old = config_module.loads(checkpoint.config_text, checkpoint.config_path)
                self.core = Core(old, random.Random())
                self._then_apply = self.config
                self.config = old
            except config_module.ConfigError as exc:
                self.log.warning("the checkpoint's config no longer loads; adopting under the current one",
                                 error=str(exc))
        for name, app in (checkpoint.apps if checkpoint else {}).items():
            self.core.restore(name, app["target"], app["generation"], app.get("latest", app["generation"]))
        wall = time.time()
        adopted, lost = [], []
        for r in records:
            alive = r.pid is not None and state.still_running(r)
            if r.pid is not None and not alive:
                lost.append(f"{r.app}:{r.index}")
            found = Adopted(r.app, r.index, r.generation, r.state, r.pid if alive else None, r.restarts,
                            age=wall - r.spawned_at if r.spawned_at else 0.0,
                            running_for=wall - r.running_since if r.running_since else None,
                            role=r.role, last_exit=r.last_exit)
            sid = self.core.adopt(found, now)
            if sid is None and alive:
                self._retire_unwanted(r.pid, f"{r.app}:{r.index}")
            elif sid is not None and self._take_over(sid, r.pid, r.token, r.log_path, r.cgroup, r.create_time,
                                                     r.listen, f"{r.app}:{r.index}"):
                adopted.append(r.pid)
        for s in strays.values():
            found = Adopted(s.app, s.index, self.core.apps[s.app].generation if s.app in self.core.apps else 1,
                            "running", s.pid, age=wall - s.create_time, running_for=0.0)
            sid = self.core.adopt(found, now)
            app = self.core.config_of(sid) if sid is not None else None
            if sid is None:
                self._retire_unwanted(s.pid, f"{s.app}:{s.index}")
            elif self._take_over(sid, s.pid, s.token, None, None, s.create_time,
                                                   app.listen if app else (), f"{s.app}:{s.index}"):
                adopted.append(s.pid)
        self.log.info("adopted the workers of the previous daemon", adopted=len(adopted), lost=lost,
                      unrecorded=len(strays))
        return adopted

    def _retire_unwanted(self, pid: int, name: str) -> None:
        """A worker of ours (start time and token checked) that no app claims any more: SIGTERM
        now, SIGKILL in 10 s if need be, both through a pidfd so that a reused pid is never hit."""
        try:
            pidfd = os.pidfd_open(pid)
        except OSError:
            return
        self.log.warning("stopping a worker of the previous daemon that no app claims", name=name, pid=pid)
        _pidfd_signal(pidfd, signal.SIGTERM)
        _pidfd_signal(pidfd, signal.SIGCONT)

        def finish() -> None:
            _pidfd_signal(pidfd, signal.SIGKILL)
            os.close(pidfd)
        self.loop.call_later(10.0, finish)

    def _take_over(self, spawn_id: int, pid: int, token: str | None, log_path: str | None, cgroup: str | None,
                   create_time: float | None, listen: tuple[str, ...], name: str) -> bool:
        app = self.core.config_of(spawn_id)
        try:
            pidfd = os.pidfd_open(pid)
        except OSError:
            self._queue.append(Exited(spawn_id, None, None, lost=True))  # gone this very moment; after start()
            return False
        group = Path(cgroup) if cgroup and Path(cgroup).is_dir() else None
        child = process.Child(pid=pid, pidfd=None, cgroup=group, create_time=create_time or 0.0)
        index = int(name.rpartition(":")[2])
        log = log_path or str(self.paths.log_file(app.name, index))
        worker = _Worker(spawn_id, name, app, child, token or "", pidfd, log, adopted=True)
        self.workers[pid] = worker
        if token:
            self.heartbeats.register(token, spawn_id, name)
            self.heartbeats.await_ready(spawn_id)  # harmless for a running one: Ready is then a no-op
        if listen:
            self.listeners.take_over(pidfd, pid, tuple(listen))
        return True

    def _apply_later_config(self, new: Config) -> None:
        """Adopted under the config the checkpoint recorded; now apply the file's, as a reload would."""
        self.log.info("the config changed while no daemon ran: applying the difference", config=str(new.path))
        for app in new.apps.values():
            for address in app.listen:
                try:
                    self.listeners.bind(address)
                except ListenError as exc:
                    self.log.error("cannot listen", error=str(exc))
        self._switch_config(new)
        self._queue.append(CommandReceived(None, "reload", config=new, cause="config"))

    def _adopted_exited(self, pid: int) -> None:
        """An adopted worker's pidfd became readable: it exited, with a status only its parent may read."""
        worker = self.workers.pop(pid, None)
        if worker is None:
            return
        self._forget_pidfd(worker)
        self.heartbeats.unregister(worker.token, worker.spawn_id)
        if not self.core.shutting_down:
            self.loop.call_later(SWEEP_DELAY, self._sweep, worker)
        self.dispatch(Exited(worker.spawn_id, None, None, lost=True))

    def _watch(self, config: Config) -> None:
        """(Re)start the file watcher for `config`'s `watch` patterns; stop it when none are left."""
        if self.watcher is not None:
            self.watcher.stop(timeout=0)
            self.watcher = None
        if not any(app.watch for app in config.apps.values()):
            return  # and watch.py is never imported (it and watchfiles cost memory)
        from supervise.runtime import watch

        self.watcher = watch.Watcher.from_config(config, self._files_changed_elsewhere, log=self.log)
        if self.watcher is not None:
            self.watcher.start()
            for root in self.watcher.missing_roots:
                self.log.warning("a watched directory does not exist (yet)", root=root)
            self.loop.run_in_executor(None, self._announce_watching, self.watcher)

    def _announce_watching(self, watcher: Watcher) -> None:
        """Off the loop: say so once changes are really being seen (the watches are armed)."""
        if watcher.wait_ready(30.0) and watcher is self.watcher:
            self.log.info("watching for changes", roots=list(watcher.roots))

    def _files_changed_elsewhere(self, apps: frozenset[str], paths: tuple[str, ...]) -> None:
        """Called on the watcher's thread: hand over to the loop."""
        self.loop.call_soon_threadsafe(self._files_changed, apps, paths)

    def _files_changed(self, apps: frozenset[str], paths: tuple[str, ...]) -> None:
        if self.core.shutting_down:
            return
        live = sorted(app for app in apps if app in self.core.apps)
        if live:
            self.log.info("watched files changed: rolling", apps=live, paths=list(paths[:5]),
                          more=max(0, len(paths) - 5))
            self.dispatch(CommandReceived(None, "reload", tuple(live), cause="watch"))

    def _close_unused_listeners(self) -> None:
        keep = {address for app in self.core.configs_in_use() for address in app.listen}
        for address in self.listeners.close_unused(keep):
            self.log.info("closed a listen socket no app uses any more", address=address)

    # -- the dispatch loop ------------------------------------------------------------

    def dispatch(self, event: Event) -> None:
        """Queue an event for the core; events raised while carrying out actions
        (a spawn reporting its pid) are handled after the current batch, in order."""
        self._queue.append(event)
        if not self._dispatching:
            self._drain_queue()

    def _drain_queue(self) -> None:
        self._dispatching = True
        try:
            while self._queue:
                event = self._queue.popleft()
                try:
                    actions = self.core.handle(event, self.loop.time())
                except Exception:
                    self.log.exception("core failed on an event", failed_event=repr(event))
                    continue
                self._run_actions(actions)
        finally:
            self._dispatching = False
        self._arm_timer()

    def _arm_timer(self) -> None:
        deadline = self.core.next_deadline()
        if self._timer is not None:
            if deadline is not None and self._timer.when() == deadline:
                return
            self._timer.cancel()
            self._timer = None
        if deadline is not None:
            self._timer = self.loop.call_at(deadline, self._on_deadline)

    def _on_deadline(self) -> None:
        self._timer = None
        self.dispatch(DeadlineReached())

    def _run_actions(self, actions: list[Action]) -> None:
        for action in actions:
            try:
                self._run_action(action)
            except Exception:
                self.log.exception("action failed", action=repr(action))

    def _run_action(self, action: Action) -> None:
        match action:
            case Spawn():
                self._spawn(action)
            case Signal(pid=pid, signal=sig):
                worker = self.workers.get(pid)
                if worker is not None:  # else reaped already: its pid may be someone else's
                    _signal_worker(worker, sig)
                    # A stopped (SIGSTOP) worker cannot act on its stop signal until continued.
                    _signal_worker(worker, signal.SIGCONT)
            case KillTree(pid=pid):
                worker = self.workers.get(pid)
                if worker is not None:
                    self.log.warning("stop_timeout passed, killing process tree", name=worker.name, pid=pid)
                    self._sweep(worker)
            case SendDrain(spawn_id=sid):
                self.heartbeats.send_drain(sid)
            case Resample(after=after):
                self.loop.call_later(after, self._sample_now.set)
            case Reply():
                self.control.reply(action)
            case Publish(event=event):
                self._publish(event)
            case Exit(code=code):
                if self._exit is not None and not self._exit.done():
                    self._exit.set_result(code)

    # -- processes --------------------------------------------------------------------

    def _spawn(self, action: Spawn) -> None:
        app, index = action.app, action.index
        name = f"{app.name}:{index}"
        token = os.urandom(16).hex()
        env = dict(self._base_env)
        env.update(app.env)
        env.update({
            "SUPERVISE_APP": app.name,
            "SUPERVISE_INSTANCE": str(index),
            "SUPERVISE_NAME": name,
            "SUPERVISE_HEARTBEAT": f"ipc://{self.paths.heartbeat_socket}",
            "SUPERVISE_TOKEN": token,
            "SUPERVISE_HEARTBEAT_INTERVAL": str(_beat_interval(app)),
        })
        fds: tuple[int, ...] = ()
        launcher: tuple[str, ...] = ()
        if app.listen:
            try:
                for address in app.listen:  # bound already, unless a reload closed it since
                    self.listeners.bind(address)
            except ListenError as exc:
                self.log.error("spawn failed", name=name, error=str(exc))
                self.dispatch(SpawnFailed(action.spawn_id, str(exc)))
                return
            fds = self.listeners.fds(app.listen)
            launcher = self.listeners.launcher(fds)
            env.update(listen_environment(app.listen))
        log_path = self.paths.log_file(app.name, index)
        spec = process.SpawnSpec(argv=tuple(app.argv(index)), cwd=app.cwd, env=env, log_path=log_path, name=name,
                                 pass_fds=fds, launcher=launcher)
        try:
            child = process.spawn(spec, self.cgroups)
        except process.SpawnError as exc:
            self.log.error("spawn failed", name=name, error=str(exc))
            self.dispatch(SpawnFailed(action.spawn_id, str(exc)))
            return
        worker = _Worker(action.spawn_id, name, app, dataclasses.replace(child, pidfd=None), token, child.pidfd,
                         str(log_path))
        self.workers[child.pid] = worker
        self.heartbeats.register(token, action.spawn_id, name)
        if worker.pidfd is not None:
            self.loop.add_reader(worker.pidfd, self._reap)
        self.dispatch(Spawned(action.spawn_id, child.pid))

    def _reap(self) -> None:
        """The one reaper: every exit, of workers and of orphans re-parented to us."""
        self._reap_pending = False
        for pid, code, sig in process.reap():
            worker = self.workers.pop(pid, None)
            if worker is None:
                continue  # an orphaned grandchild; reaping it is all it needs
            self._forget_pidfd(worker)
            self.heartbeats.unregister(worker.token, worker.spawn_id)
            if not self.core.shutting_down:
                # Leftovers of the tree (KillMode=mixed semantics), a moment
                # later: the sweep walks /proc in a thread, and started at once
                # it would compete for the GIL with spawning the replacement.
                self.loop.call_later(SWEEP_DELAY, self._sweep, worker)
            self.dispatch(Exited(worker.spawn_id, code, sig))

    def _forget_pidfd(self, worker: _Worker) -> None:
        if worker.pidfd is not None:
            self.loop.remove_reader(worker.pidfd)
            os.close(worker.pidfd)
            worker.pidfd = None

    def _sweep(self, worker: _Worker) -> None:
        self.loop.run_in_executor(self._executor, _kill_tree_quietly, worker.child, worker.token, self.cgroups,
                               frozenset(self.workers))

    async def _sample_forever(self) -> None:
        """Memory of instances' trees, in one pass off the loop.

        Apps with max_memory are sampled every MEMORY_INTERVAL (or sooner when
        the core asks to confirm a reading); the rest only every
        DISPLAY_INTERVAL, for `status`: their RSS decides nothing.
        """
        last_full = self.loop.time()
        while True:
            fast = any(w.app.max_memory is not None or w.app.max_processes is not None
                       for w in self.workers.values())
            try:
                await asyncio.wait_for(self._sample_now.wait(), MEMORY_INTERVAL if fast else DISPLAY_INTERVAL)
            except TimeoutError:
                pass
            self._sample_now.clear()
            full = self.loop.time() - last_full >= DISPLAY_INTERVAL
            if full:
                last_full = self.loop.time()
            roots = [sampler.Root(w.spawn_id, pid, w.child.cgroup) for pid, w in self.workers.items()
                     if full or w.app.max_memory is not None or w.app.max_processes is not None]
            if roots:
                rss, processes = await self.loop.run_in_executor(self._executor, sampler.sample_trees, roots)
                self.dispatch(Sampled(rss, processes))

    def _check_logs(self) -> None:
        """Stat each live instance's log here (microseconds); rotate the big ones off the loop.

        After finding a file over its limit, look again soon (LOG_CHECK_FLOOD): a worker
        flooding its output writes hundreds of MB a second, and a file may only grow
        that much between two checks."""
        big = []
        for worker in self.workers.values():
            try:
                if os.stat(worker.log_path).st_size >= worker.app.log_max_size:
                    big.append((worker.log_path, worker.app.log_max_size, worker.app.log_backups))
            except OSError:
                continue
        if big:
            self.loop.run_in_executor(self._executor, self._rotate_logs, big)
        self._log_check = self.loop.call_later(LOG_CHECK_FLOOD if big else LOG_CHECK_INTERVAL, self._check_logs)

    def _rotate_logs(self, jobs: list[tuple[str, int, int]]) -> None:
        for path, max_size, backups in jobs:
            try:
                logfiles.rotate_if_needed(Path(path), max_size, backups)
            except OSError as exc:
                self.log.warning("log rotation failed", path=path, error=str(exc))

    def _publish(self, event: dict) -> None:
        stamped = self.history.append(event, time.time())
        kind = event.get("type")
        if kind in CHECKPOINTED:
            self._checkpoint_soon()
            self._notify_soon()
        elif kind == "daemon" and event.get("event") == "draining":
            for task in list(self._chaos.values()):  # no more harm while everything drains
                task.cancel()
            if self.notifier is not None:
                self.notifier.stopping(self._summary())
        if kind == "state":
            fields = {k: v for k, v in event.items() if k in ("pid", "exit") and v is not None}
            self.log.info(f"{event['name']} {event['from']} -> {event['to']}", **fields)
        elif kind == "rollout":
            fields = {k: v for k, v in event.items() if k not in ("type", "app", "event")}
            log = self.log.error if event["event"] == "failed" else self.log.info
            log(f"rollout of {event['app']} {event['event']}", **fields)
            if event["event"] != "started":
                self._close_unused_listeners()
        elif kind == "config":
            self.log.info("config reloaded", changes=event["changes"])
        elif kind == "chaos" and event["event"] != "harm":
            self.log.warning(f"chaos {event['event']}", **{k: v for k, v in event.items() if k not in ("type", "event")})
        self.control.push(stamped)

    def _status_extra(self) -> dict:
        return {"pid": os.getpid(), "heartbeats": self.heartbeats.counters.as_json(),
                "control_malformed": self.control.malformed}


def _signal_worker(worker: _Worker, sig: int) -> None:
    """Through its pidfd, which a reused pid cannot fool; by pid only where there is no pidfd,
    which is safe for a worker still in `workers`: our child, not yet reaped (adopted ones
    always have a pidfd while they are tracked)."""
    if worker.pidfd is not None:
        _pidfd_signal(worker.pidfd, sig)
    else:
        process.send_signal(worker.child.pid, sig)


def _pidfd_signal(pidfd: int | None, sig: int) -> None:
    if pidfd is None:
        return
    try:
        signal.pidfd_send_signal(pidfd, sig)
    except OSError:  # ESRCH: it has exited; its pidfd reader reports that
        pass


def _watched(config: Config) -> dict:
    return {name: (app.watch, app.watch_ignore) for name, app in config.apps.items() if app.watch}


def _beat_interval(app: AppConfig) -> float:
    if app.heartbeat_timeout is None:
        return HEARTBEAT_INTERVAL
    return round(min(HEARTBEAT_INTERVAL, app.heartbeat_timeout / 3), 3)


def _kill_tree_quietly(child: process.Child, token: str, cgroups: process.Cgroups | None,
                       workers: frozenset[int]) -> None:
    try:
        process.kill_tree(child, token, workers)
        if cgroups is not None and child.cgroup is not None:
            cgroups.remove(child.cgroup)
    except Exception:  # the sweep is best effort; the final shutdown sweep backs it up
        pass


def run(config: Config, log) -> int:
    """Run the daemon in the foreground until it has drained; returns the exit code."""
    paths = StatePaths(config.supervise.state_dir)
    # A SIGTERM before our handlers exist would kill us undrained, or as PID 1
    # (which ignores signals it has no handler for) be lost: `docker stop`
    # would then wait and SIGKILL. Blocked, it waits for the handlers. They
    # are installed, and this undone, before the first worker is spawned
    # (workers inherit the mask).
    signal.pthread_sigmask(signal.SIG_BLOCK, EARLY_SIGNALS)
    try:
        lock_fd = lock_state_dir(paths)
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
