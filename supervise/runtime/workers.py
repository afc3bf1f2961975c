"""The daemon's worker table: every process it watches, from spawn (or adoption) to reap.

It carries out the core's process actions (spawn, adopt, signal, kill the
tree, stop a stray) and turns what the kernel says back into core events
(spawned, spawn failed, exited). One reaper: a worker's pidfd becoming
readable, or SIGCHLD, leads to ``reap``, the daemon's only caller of
waitpid; a worker adopted from a previous daemon is not our child, and its
exit is seen on its pidfd alone. Signals go through the pidfd too, so a
pid the kernel has handed to another process is never hit.
"""

from __future__ import annotations

import asyncio
import dataclasses
import errno
import os
import signal
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import Executor
from dataclasses import dataclass

from supervise.config.model import AppConfig, Readiness
from supervise.core import Adopt, Event, Exited, PromoteSpare, Spawn, Spawned, SpawnFailed
from supervise.frozen import frozen
from supervise.runtime import killing, limits, output, process
from supervise.runtime.cgroups import cgroup_pids
from supervise.runtime.checks import InstanceChecks
from supervise.runtime.fdwatch import FdWatch
from supervise.runtime.heartbeats import HeartbeatServer
from supervise.runtime.listeners import ListenError, Listeners
from supervise.runtime.listeners import environment as listen_environment
from supervise.runtime.log import Log
from supervise.wire import protocol
from supervise.wire.statedir import StatePaths

HEARTBEAT_INTERVAL = 1.0
"""Seconds between a worker's beats (a third of heartbeat_timeout when that is shorter)."""

SWEEP_DELAY = 0.05
"""After a worker's exit, its leftovers are swept this much later: the sweep walks /proc in a
thread, and started at once it would compete for the GIL with spawning the replacement."""

STRAY_KILL_AFTER = 10.0
"""Seconds a previous daemon's unclaimed worker gets between SIGTERM and SIGKILL."""


@dataclass(slots=True)
class Worker:
    spawn_id: int
    name: str
    app: AppConfig
    child: process.Child  # without its pidfd: the table owns that, the sweeper thread must not
    token: str
    pidfd: int | None
    log_path: str
    adopted: bool = False  # started by a previous daemon: not our child, its exit status is out of reach


@frozen
class Inherited:
    """What a checkpoint (or a worker's environment) tells of an adopted process beyond the core's view."""

    token: str | None
    create_time: float | None
    log_path: str | None = None
    cgroup: str | None = None
    listen: tuple[str, ...] | None = None  # None: the app's, as configured


class WorkerTable:
    def __init__(self, loop: asyncio.AbstractEventLoop, paths: StatePaths, listeners: Listeners,
                 heartbeats: HeartbeatServer, executor: Executor, report: Callable[[Event], None],
                 log: Log, base_env: Mapping[str, str], draining: Callable[[], bool],
                 outputs: output.Outputs) -> None:
        self.loop = loop
        self.outputs = outputs
        self.paths = paths
        self.listeners = listeners
        self.heartbeats = heartbeats
        self.executor = executor
        self.report = report  # back to the core, through the daemon's queue
        self.log = log
        self.base_env = dict(base_env)  # what every worker inherits, before its app's env
        self.draining = draining  # while everything drains, leftovers wait for the daemon's last sweep
        self.cgroups: process.Cgroups | None = None
        self.checks: InstanceChecks | None = None  # probes and notify sockets, started and stopped with each worker
        self._by_pid: dict[int, Worker] = {}
        self._by_spawn: dict[int, Worker] = {}
        self._pidfds = FdWatch(loop)  # every worker's pidfd: readable once it has exited
        self._rlimit_warned: dict[str, list[str]] = {}  # app -> the clamped limits logged, once per change
        self._over_capacity = False  # spawns are being refused for the descriptor limit (logged once)
        self.swept_at_close: list[str] = []  # cgroups of adopted workers gone in the drain: the last sweep's

    def __iter__(self) -> Iterator[Worker]:
        return iter(self._by_pid.values())  # callers iterate without yielding to the loop

    def __len__(self) -> int:
        return len(self._by_pid)

    def get(self, spawn_id: int) -> Worker | None:
        return self._by_spawn.get(spawn_id)

    def by_pid(self, pid: int) -> Worker | None:
        return self._by_pid.get(pid)

    def pids(self) -> frozenset[int]:
        return frozenset(self._by_pid)

    # -- starting ---------------------------------------------------------------------

    def spawn(self, action: Spawn) -> None:
        app, index = action.app, action.index
        name = instance_name(app.name, index, action.spare)
        notify = self.checks.notify_sockets() if self.checks is not None else 0
        if not limits.fits(len(self._by_pid) + 1, notify + (app.readiness is Readiness.NOTIFY)):
            # Retried by the core in a second: a slot may be free by then.
            self._refused_over_capacity(action, limits.instance_capacity())
            return
        self._over_capacity = False
        token = os.urandom(16).hex()  # not secrets.token_hex: that loads OpenSSL (3.4 MiB) for two calls
        env = dict(self.base_env)
        env.update(app.env)
        env.update({
            protocol.ENV_APP: app.name,
            protocol.ENV_NAME: name,
            protocol.ENV_HEARTBEAT: self.heartbeat_endpoint,
            protocol.ENV_TOKEN: token,
            protocol.ENV_HEARTBEAT_INTERVAL: str(beat_interval(app)),
        })
        if action.spare:  # no slot yet: its index and port come with its promotion
            env[protocol.ENV_ROLE] = "spare"
            env.pop(protocol.ENV_INSTANCE, None)
            env.pop(protocol.ENV_PORT, None)
        else:
            env[protocol.ENV_INSTANCE] = str(index)
            env.pop(protocol.ENV_ROLE, None)
            if app.port is not None:
                env[protocol.ENV_PORT] = str(app.port + index)
        if action.fencing_token is not None:
            env[protocol.ENV_FENCING_TOKEN] = str(action.fencing_token)
        if action.fencing_deadline is not None:  # the loop's clock is time.monotonic: the worker's too
            env[protocol.ENV_FENCING_DEADLINE] = repr(action.fencing_deadline)
        fds: tuple[int, ...] = ()
        launcher: tuple[str, ...] = ()
        if app.listen:
            try:
                for address in app.listen:  # bound already, unless a reload closed it since
                    self.listeners.bind(address, app.listen_option(address))
            except ListenError as exc:
                self._spawn_failed(action, str(exc))
                return
            fds = self.listeners.fds(app.listen)
            launcher = self.listeners.launcher(fds)
            env.update(listen_environment(app.listen))
        if self.checks is not None:
            try:
                env.update(self.checks.environment(action.spawn_id, app, index))
            except OSError as exc:
                self._spawn_failed(action, f"cannot make its notify socket: {exc.strerror or exc}")
                return
        log_path = str(self.paths.log_file(app.name, index, action.spare))
        rlimits, clamped = limits.for_child(app.rlimits)
        if clamped and self._rlimit_warned.get(app.name) != clamped:
            self._rlimit_warned[app.name] = clamped
            for warning in clamped:
                self.log.warning("an rlimit of the app is clamped", app=app.name, warning=warning)
        try:
            # Above the listen sockets' targets (3, 4, ...): the launcher's moves cannot overwrite it.
            read_fd, write_fd = output.Outputs.pipe(above=2 + len(fds))
        except OSError as exc:
            what = f"cannot make an output pipe: {exc.strerror}"
            out_of_fds = limits.describe_out_of_fds(exc, what)
            self._spawn_failed(action, out_of_fds or what, daemon_fault=out_of_fds is not None)
            return
        # The worker holds a read end too (read_fd, passed): its pipe outlives a dead daemon.
        try:
            # run_as: the app's user and group, resolved now; their HOME, USER, LOGNAME under the app's env.
            spec = process.SpawnSpec(argv=tuple(app.argv(index)), cwd=app.cwd, env=env, output=write_fd, name=name,
                                     pass_fds=(*fds, read_fd), launcher=launcher, rlimits=rlimits,
                                     umask=app.umask).run_as(app.user, app.group, keep=app.env)
            child = process.spawn(spec, self.cgroups)
        except process.SpawnError as exc:
            os.close(read_fd)
            self._spawn_failed(action, str(exc), daemon_fault=exc.daemon_fault)
            return
        finally:
            os.close(write_fd)
        self.outputs.attach(action.spawn_id, name, app.name, read_fd, log_path, (app.log_max_size, app.log_backups))
        worker = Worker(action.spawn_id, name, app, dataclasses.replace(child, pidfd=None), token, child.pidfd,
                        log_path)
        self._add(worker)
        self.heartbeats.register(token, action.spawn_id, name)
        if worker.pidfd is not None:
            self._pidfds.add(worker.pidfd, self.reap)
        if self.checks is not None:
            self.checks.spawned(action.spawn_id, child.pid, app, index)
        self.report(Spawned(action.spawn_id, child.pid))

    def _refused_over_capacity(self, action: Spawn, capacity: int) -> None:
        """A spawn past what the descriptor limit allows: refused as the daemon's fault (logged once per
        stretch: the core retries each such instance every second)."""
        error = limits.describe_capacity(capacity)
        if not self._over_capacity:
            self._over_capacity = True
            self.log.error("spawns refused: the daemon is at its instance capacity", error=error)
        self.report(SpawnFailed(action.spawn_id, error, True))

    def _spawn_failed(self, action: Spawn, error: str, daemon_fault: bool = False) -> None:
        self.log.error("spawn failed", name=instance_name(action.app.name, action.index, action.spare), error=error)
        if self.checks is not None:
            self.checks.gone(action.spawn_id)  # its notify socket, if it got that far
        self.report(SpawnFailed(action.spawn_id, error, daemon_fault))

    @property
    def heartbeat_endpoint(self) -> str:
        return f"ipc://{self.paths.heartbeat_socket}"

    def adopt(self, action: Adopt, inherited: Inherited) -> None:
        """Watch a live worker a previous daemon started: its pidfd, its token, its sockets."""
        name = instance_name(action.app.name, action.index, action.spare)
        try:
            pidfd = os.pidfd_open(action.pid)
        except OSError:  # gone this very moment
            self.report(Exited(action.spawn_id, None, None, lost=True))
            return
        group = inherited.cgroup if inherited.cgroup and os.path.isdir(inherited.cgroup) else None
        child = process.Child(pid=action.pid, pidfd=None, cgroup=group, create_time=inherited.create_time or 0.0)
        log_path = inherited.log_path or str(self.paths.log_file(action.app.name, action.index, action.spare))
        worker = Worker(action.spawn_id, name, action.app, child, inherited.token or "", pidfd, log_path,
                        adopted=True)
        self._add(worker)
        # Before anything else: its writes wait on a full pipe while no daemon reads it.
        self.outputs.reattach(action.spawn_id, name, action.app.name, action.pid, log_path,
                              (action.app.log_max_size, action.app.log_backups))
        if inherited.token:
            self.heartbeats.register(inherited.token, action.spawn_id, name)
            self.heartbeats.await_ready(action.spawn_id)  # harmless for a running one: Ready is then a no-op
        if self.checks is not None:
            self.checks.adopted(action.spawn_id, action.pid, action.app, action.index, process.environ_of)
        listen = action.app.listen if inherited.listen is None else inherited.listen
        if listen:
            self.listeners.take_over(pidfd, action.pid, tuple(listen))
        # Exited between the check and now: the pidfd is readable already, and the loop says so.
        self._pidfds.add(pidfd, self._adopted_exited, action.pid)

    def promote(self, action: PromoteSpare) -> bool:
        """A spare takes slot ``action.index``: its name, log and heartbeat identity become the slot's,
        and it is told (``promote`` on the heartbeat channel). False when it could not be told."""
        worker = self._by_spawn.get(action.spawn_id)
        if worker is None:
            return False  # gone this very moment: its exit is on its way to the core
        app = action.app
        worker.name = instance_name(app.name, action.index)
        worker.log_path = str(self.paths.log_file(app.name, action.index))
        self.outputs.retarget(action.spawn_id, worker.name, worker.log_path)
        port = None if app.port is None else app.port + action.index
        return self.heartbeats.promote(action.spawn_id, worker.token, worker.name, action.index, port)

    def _add(self, worker: Worker) -> None:
        self._by_pid[worker.child.pid] = worker
        self._by_spawn[worker.spawn_id] = worker

    # -- signals --------------------------------------------------------------------------

    def signal(self, spawn_id: int, sig: int) -> None:
        """Send `sig`, then SIGCONT: a stopped (SIGSTOP) worker cannot act on its stop signal until continued.
        A worker no longer in the table has been reaped: its pid may be someone else's now."""
        worker = self._by_spawn.get(spawn_id)
        if worker is not None:
            signal_worker(worker, sig)
            if sig not in (signal.SIGKILL, signal.SIGSTOP):  # an operator's SIGSTOP must not be undone
                signal_worker(worker, signal.SIGCONT)

    def signal_tree(self, spawn_id: int, sig: int) -> None:
        """An operator's `signal --tree`: the main process, then every descendant of it (and whatever
        else its cgroup holds: a daemonized grandchild). psutil sends only to the very process it
        listed (it checks the start time), so a pid reused meanwhile is not hit."""
        import psutil

        worker = self._by_spawn.get(spawn_id)
        if worker is None:
            return
        signal_worker(worker, sig)
        seen = {worker.child.pid}
        try:
            procs = psutil.Process(worker.child.pid).children(recursive=True)
        except psutil.Error:
            procs = []
        for pid in cgroup_pids(worker.child.cgroup) if worker.child.cgroup is not None else ():
            try:
                procs.append(psutil.Process(pid))
            except psutil.Error:
                pass
        for proc in procs:
            if proc.pid in seen:
                continue
            seen.add(proc.pid)
            try:
                proc.send_signal(sig)
            except psutil.Error:
                pass

    def kill_tree(self, spawn_id: int) -> None:
        worker = self._by_spawn.get(spawn_id)
        if worker is not None:
            self.log.warning("stop_timeout passed, killing process tree", name=worker.name, pid=worker.child.pid)
            self.sweep(worker)

    def stop_stray(self, pid: int, name: str) -> None:
        """A worker of ours (start time and token checked) that no app claims any more: SIGTERM
        now, SIGKILL later if need be, both through a pidfd so that a reused pid is never hit."""
        try:
            pidfd = os.pidfd_open(pid)
        except OSError:
            return
        self.log.warning("stopping a worker of the previous daemon that no app claims", name=name, pid=pid)
        pidfd_signal(pidfd, signal.SIGTERM)
        pidfd_signal(pidfd, signal.SIGCONT)

        def finish() -> None:
            pidfd_signal(pidfd, signal.SIGKILL)
            os.close(pidfd)
        self.loop.call_later(STRAY_KILL_AFTER, finish)

    def sweep(self, worker: Worker) -> None:
        """Kill what is left of a worker's tree, off the loop (it walks /proc)."""
        # The table's keys as a view, not a copy: a copy per exit made a shutdown of N workers O(N^2).
        future = self.loop.run_in_executor(self.executor, killing.kill_tree, worker.child, worker.token,
                                           self._by_pid.keys(), worker.adopted)
        future.add_done_callback(lambda done: self._swept(worker, done))

    def _swept(self, worker: Worker, done: asyncio.Future[int]) -> None:
        if done.cancelled():
            return
        error = done.exception()
        if error is not None:  # best effort: the shutdown's last sweep backs it up
            self.log.warning("could not sweep a worker's process tree", name=worker.name, error=repr(error))
        elif self.cgroups is not None and worker.child.cgroup is not None:
            self.cgroups.remove(worker.child.cgroup)

    # -- exits ------------------------------------------------------------------------------

    def reap(self) -> None:
        """The one reaper: every exit, of workers and of orphans re-parented to us."""
        for pid, code, sig in process.reap():
            worker = self._by_pid.get(pid)
            if worker is None or worker.adopted:
                continue  # an orphaned grandchild; reaping it is all it needs
            self._gone(worker)
            self.report(Exited(worker.spawn_id, code, sig))

    def _adopted_exited(self, pid: int) -> None:
        """An adopted worker's pidfd became readable: it exited, with a status only its parent may read."""
        worker = self._by_pid.get(pid)
        if worker is None:
            return
        self._gone(worker)
        self.report(Exited(worker.spawn_id, None, None, lost=True))

    def _gone(self, worker: Worker) -> None:
        del self._by_pid[worker.child.pid]
        del self._by_spawn[worker.spawn_id]
        self._forget_pidfd(worker)
        self.outputs.close(worker.spawn_id)  # its last words are in the log before its exit is reported
        if self.checks is not None:
            self.checks.gone(worker.spawn_id)
        self.heartbeats.unregister(worker.token, worker.spawn_id)
        if worker.adopted and self.draining() and worker.child.cgroup is not None:
            # Its children are in its cgroup: the shutdown's last sweep kills and removes these all at
            # once (a sweep each, one after another in the executor, took 2.7 s for 2,000 adopted workers).
            self.swept_at_close.append(worker.child.cgroup)
        elif worker.adopted:  # its children went to init, where the shutdown's last sweep does not look
            self.sweep(worker)
        elif not self.draining():
            self.loop.call_later(SWEEP_DELAY, self.sweep, worker)

    def _forget_pidfd(self, worker: Worker) -> None:
        if worker.pidfd is not None:
            self._pidfds.remove(worker.pidfd)
            os.close(worker.pidfd)
            worker.pidfd = None

    def close(self) -> None:
        for worker in self._by_pid.values():
            self._forget_pidfd(worker)


def signal_worker(worker: Worker, sig: int) -> None:
    """Through its pidfd, which a reused pid cannot fool; by pid only where there is no pidfd,
    which is safe for a worker still in the table: our child, not yet reaped (adopted ones
    always have a pidfd while they are tracked). A ``shell`` app's whole process group."""
    if worker.app.shell:
        signal_group(worker, sig)
    elif worker.pidfd is not None:
        pidfd_signal(worker.pidfd, sig)
    else:
        process.send_signal(worker.child.pid, sig)


PIDFD_SIGNAL_PROCESS_GROUP = 4
"""pidfd_send_signal's flag (Linux 6.9) to signal the process group the pidfd's process leads."""


def signal_group(worker: Worker, sig: int) -> None:
    """Signal the process group of a ``shell`` worker: /bin/sh and what it runs.

    sh -c "a | b" forks a and b and waits; sent to the shell alone, the stop
    signal kills the shell and leaves the pipeline running until the tree is
    swept with SIGKILL, never asked to stop. A non-interactive shell does no job
    control, so the pipeline stays in the shell's process group, and the worker
    was started in a session of its own: pgid == its pid.

    killpg by that number is safe while the worker is in the table, i.e. not
    reaped: a pid, and so a pgid, is not reused before its process is reaped,
    even while it is a zombie; and a zombie leader's group may still hold the
    pipeline, which then still gets the signal, as it should. Once reaped, the
    worker is out of the table and nothing is sent. An adopted worker is not
    our child: its pid may be reaped by init and reused at any moment, so its
    group is signalled through its pidfd (PIDFD_SIGNAL_PROCESS_GROUP names the
    group by the very process), or where the kernel is older, the shell alone:
    the tree sweep after stop_timeout gets the rest.
    """
    if not worker.adopted:
        try:
            os.killpg(worker.child.pid, sig)
        except OSError:  # ESRCH: nothing left in the group
            pass
        return
    if worker.pidfd is None:
        return
    try:
        signal.pidfd_send_signal(worker.pidfd, sig, None, PIDFD_SIGNAL_PROCESS_GROUP)
    except OSError as exc:
        if exc.errno == errno.EINVAL:  # a kernel before 6.9
            pidfd_signal(worker.pidfd, sig)


def pidfd_signal(pidfd: int, sig: int) -> None:
    try:
        signal.pidfd_send_signal(pidfd, sig)
    except OSError:  # ESRCH: it has exited; its pidfd reader reports that
        pass


def beat_interval(app: AppConfig) -> float:
    if app.heartbeat_timeout is None:
        return HEARTBEAT_INTERVAL
    return round(min(HEARTBEAT_INTERVAL, app.heartbeat_timeout / 3), 3)


def instance_name(app: str, index: int, spare: bool = False) -> str:
    """``web:0``, or a spare's ``web:spare-0``."""
    return f"{app}:spare-{index}" if spare else f"{app}:{index}"
