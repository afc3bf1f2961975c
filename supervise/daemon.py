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
import os
import random
import secrets
import signal
import time
from pathlib import Path
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import zmq

from supervise import config as config_module
from supervise import logfiles, process, sampler, watch
from supervise.config import AppConfig, Config
from supervise.core import (
    Action,
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
from supervise.control_server import ControlServer
from supervise.heartbeats import HeartbeatServer
from supervise.history import History
from supervise.listeners import ListenError, Listeners, environment as listen_environment
from supervise.paths import StatePaths

LOG_CHECK_INTERVAL = 3.0  # one stat() per instance on the loop; rotation itself runs off it
MEMORY_INTERVAL = 0.5  # sampling period while some app has max_memory
DISPLAY_INTERVAL = 30.0  # otherwise RSS is only for `status`: sample rarely
HANDLED_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGCHLD)
HEARTBEAT_INTERVAL = 1.0
SWEEP_DELAY = 0.05


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
        raise AlreadyRunning(
            f"another supervise daemon (pid {holder}) is running on {paths.root}; "
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
        self.cgroups: process.Cgroups | None = None

    # -- lifecycle ------------------------------------------------------------------

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        self.loop = loop
        self._exit = loop.create_future()
        loop.set_exception_handler(self._loop_error)
        subreaper = process.become_subreaper()
        self.ctx = zmq.Context()
        try:  # what can fail (an ipc path too long) comes before anything that needs undoing
            self.control = ControlServer(
                self.ctx, self.paths.control_socket, loop, self.history,
                self._on_request, self._status_extra)
            self.heartbeats = HeartbeatServer(self.ctx, self.paths.heartbeat_socket, loop, self.dispatch,
                                              lambda sid, fields: self.core.beat(sid, fields, loop.time()))
        except zmq.ZMQError:
            self.paths.control_socket.unlink(missing_ok=True)
            self.ctx.destroy(linger=0)
            raise
        self.listeners = Listeners()
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
        self.cgroups = process.Cgroups.detect(str(os.getpid()))
        self._sample_now = asyncio.Event()
        self._install_signal_handlers()
        self.log.info("daemon started", pid=os.getpid(), config=str(self.config.path),
                      state_dir=str(self.paths.root), apps=len(self.config.apps),
                      subreaper=subreaper, cgroups=self.cgroups is not None)
        self._chores = [loop.create_task(self._sample_forever())]
        self.watcher: watch.Watcher | None = None
        self._watch(self.config)
        self._log_check = loop.call_later(LOG_CHECK_INTERVAL, self._check_logs)
        self._dispatching = True  # spawns report back through the queue, after these actions
        self._run_actions(self.core.start(loop.time()))
        self._drain_queue()
        try:
            return await self._exit
        finally:
            await self._close()

    async def _close(self) -> None:
        if self.watcher is not None:
            self.watcher.stop(timeout=0)  # a daemon thread: it notices within one step, we need not wait
        for chore in self._chores:
            chore.cancel()
        self._log_check.cancel()
        for sig in HANDLED_SIGNALS:
            signal.signal(sig, signal.SIG_DFL)
        # Last sweep: anything still descending from us (a grandchild that
        # escaped every process group) goes now, so shutdown leaves nothing.
        leftovers = await self.loop.run_in_executor(self._executor, process.kill_all_descendants)
        if leftovers:
            self.log.warning("killed leftover descendants", count=leftovers)
        self._reap()
        for worker in self.workers.values():
            self._forget_pidfd(worker)
        self.heartbeats.close()
        self.listeners.close()
        self.control.close()
        self.ctx.term()
        self.paths.control_socket.unlink(missing_ok=True)
        if self.cgroups is not None:
            self.cgroups.close()
        self._executor.shutdown(wait=True)
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

    def _loop_error(self, loop, context) -> None:
        self.log.error("internal error", message=context.get("message"), exc_info=context.get("exception"))

    def _on_sighup(self) -> None:
        self.log.info("SIGHUP received: re-reading the config", config=str(self.config.path))
        self._reload_config(None, dry_run=False, cause="signal")

    # -- requests and reloads ---------------------------------------------------------

    def _on_request(self, rid: int, req) -> None:
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
        if not dry_run:
            old, self.config = self.config, new
            if _watched(old) != _watched(new):
                self._watch(new)
        self.dispatch(CommandReceived(rid, "reload", config=new, dry_run=dry_run, cause=cause, timeout=timeout))
        if not dry_run:
            self._close_unused_listeners()

    def _watch(self, config: Config) -> None:
        """(Re)start the file watcher for `config`'s `watch` patterns; stop it when none are left."""
        if self.watcher is not None:
            self.watcher.stop(timeout=0)
        self.watcher = watch.Watcher.from_config(config, self._files_changed_elsewhere, log=self.log)
        if self.watcher is not None:
            self.watcher.start()
            for root in self.watcher.missing_roots:
                self.log.warning("a watched directory does not exist (yet)", root=root)
            self.loop.run_in_executor(None, self._announce_watching, self.watcher)

    def _announce_watching(self, watcher: watch.Watcher) -> None:
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
                    self.log.exception("core failed on an event", event=repr(event))
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
                process.send_signal(pid, sig)
                # A stopped (SIGSTOP) worker cannot act on its stop signal until continued.
                process.send_signal(pid, signal.SIGCONT)
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
        token = secrets.token_hex(16)
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
            fast = any(w.app.max_memory is not None for w in self.workers.values())
            try:
                await asyncio.wait_for(self._sample_now.wait(), MEMORY_INTERVAL if fast else DISPLAY_INTERVAL)
            except TimeoutError:
                pass
            self._sample_now.clear()
            full = self.loop.time() - last_full >= DISPLAY_INTERVAL
            if full:
                last_full = self.loop.time()
            roots = [sampler.Root(w.spawn_id, pid, w.child.cgroup) for pid, w in self.workers.items()
                     if full or w.app.max_memory is not None]
            if roots:
                rss = await self.loop.run_in_executor(self._executor, sampler.sample, roots)
                self.dispatch(Sampled(rss))

    def _check_logs(self) -> None:
        """Stat each live instance's log here (microseconds); rotate the big ones off the loop."""
        big = []
        for worker in self.workers.values():
            try:
                if os.stat(worker.log_path).st_size >= worker.app.log_max_size:
                    big.append((worker.log_path, worker.app.log_max_size, worker.app.log_backups))
            except OSError:
                continue
        if big:
            self.loop.run_in_executor(self._executor, self._rotate_logs, big)
        self._log_check = self.loop.call_later(LOG_CHECK_INTERVAL, self._check_logs)

    def _rotate_logs(self, jobs: list[tuple[str, int, int]]) -> None:
        for path, max_size, backups in jobs:
            try:
                logfiles.rotate_if_needed(Path(path), max_size, backups)
            except OSError as exc:
                self.log.warning("log rotation failed", path=path, error=str(exc))

    def _publish(self, event: dict) -> None:
        stamped = self.history.append(event, time.time())
        kind = event.get("type")
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
        self.control.push(stamped)

    def _status_extra(self) -> dict:
        return {"pid": os.getpid(), "heartbeats": self.heartbeats.counters.as_json(),
                "control_malformed": self.control.malformed}


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
        os.close(lock_fd)
