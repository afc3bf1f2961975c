"""The client library workers import to talk to the daemon: readiness, liveness
beats with status fields, the drain handshake, and sockets passed by the daemon.

    from supervise.worker import Heartbeat

    with Heartbeat.from_env() as hb:   # inert when not run by supervise
        serve_in_a_thread()
        hb.ready()
        hb.start()
        hb.draining.wait()             # the daemon asked us to finish up
        finish_in_flight_work()
        hb.drained()

A warm spare (``SUPERVISE_ROLE=spare``) starts the same way, then waits for
its slot before it takes any work: ``slot = hb.wait_for_slot()`` (None: the
spare is being stopped, exit).

It imports only the standard library and ``supervise.wire.protocol``; pyzmq is
imported on the first call that sends, so a standalone (inert) run neither
pays for nor needs it. The wire format is ``protocol.encode_heartbeat``.
"""

from __future__ import annotations

import atexit
import math
import os
import socket
import threading
import time
import warnings
from collections import namedtuple
from collections.abc import Callable, Mapping
from types import ModuleType

from supervise.wire import protocol

__all__ = ["Heartbeat", "Slot", "listen_fds"]

DEFAULT_INTERVAL = 1.0
SEND_HWM = 4  # messages queued towards a connected but busy daemon; beats past it are dropped
LINGER = 0.5  # seconds close() waits for a final ready/drained to leave
RECONNECT_MS = 50  # how often a worker retries a daemon that is not (yet, or any more) there
LISTEN_FDS_START = 3  # SD_LISTEN_FDS_START
FENCED_EXIT = 75  # EX_TEMPFAIL: the exit status of a singleton whose fencing deadline passed
FENCE_HOOK_TIME = 0.2  # seconds on_fenced gets before the process exits regardless

# A namedtuple, not a dataclass or typing.NamedTuple: every worker imports this module, and
# neither dataclasses nor typing is otherwise imported (protocol.py says what they cost).
Slot = namedtuple("Slot", "name index port")
Slot.__doc__ = """Where an instance serves: its ``name`` (``web:2``), its ``index`` in its app
(None when unknown) and its own ``port`` (None when its app has no ``port`` key)."""


class Heartbeat:
    """The worker's side of the heartbeat channel to the daemon.

    **Inert mode.** Without ``SUPERVISE_HEARTBEAT``, ``SUPERVISE_TOKEN`` and
    ``SUPERVISE_NAME`` (the program runs standalone), ``active`` is False,
    every call is a no-op, no thread starts and ``draining`` is never set by
    the library. Status fields are still checked, so a bad field fails the
    same way standalone and supervised.

    **What a beat proves.** ``start()`` runs a background thread that beats
    every ``interval``: that proves the process is alive and still schedules
    threads, not that its main loop makes progress. A worker that wants a
    deadlocked main loop detected should call ``beat()`` from that loop
    instead of calling ``start()``; the daemon then declares it hung when the
    loop stops.

    **Threading.** A ZeroMQ socket must be used by one thread only, so one
    I/O thread owns the DEALER. The first ``ready``/``beat``/``drained``/
    ``start`` starts it; ``start()`` only adds periodic beats. The calls may
    come from any thread, before or after ``start()``: they append to a
    short list under a lock and wake the I/O thread through an inproc PAIR
    (a wakeup, not data, so repeated beats coalesce into one message with
    the latest status). The I/O thread blocks in one ``zmq.Poller`` on the
    wakeup, the DEALER and the next periodic beat's deadline, so a drain
    sets ``draining`` as soon as it arrives (well under 10 ms), with or
    without ``start()``. The lock is reentrant so that a signal handler may
    call ``ready``/``beat``/``drained`` while the main thread is in one.

    **The daemon gone or restarting** never raises: sends are non-blocking
    and ZeroMQ reconnects on its own. ``ZMQ_IMMEDIATE`` queues nothing while
    no daemon is connected: a beat in an outage is dropped at once (stale
    beats delivered after a restart would only make a hung worker look
    alive), while ``ready`` and ``drained``, which must not be lost, are held
    by the I/O thread until the connection is back. ``SNDHWM`` is small for
    a daemon connected but not reading. The context is private, so closing
    it cannot disturb the worker's own ZeroMQ use.

    **Spares.** An app with ``spares = N`` keeps N extra instances started,
    ready and idle (``SUPERVISE_ROLE=spare``: ``spare`` is True, ``index``
    and ``port`` are None, ``promoted`` is not set). When an active instance
    dies, the daemon promotes a spare into its slot with a ``promote``
    message; the I/O thread takes the slot's name, index and port, beats at
    once under the new name, sets ``promoted`` and wakes ``wait_for_slot()``.
    Until then a spare must not accept work: load and warm up, then call
    ``wait_for_slot()`` (it says ``ready()`` if the worker has not), and only
    when it returns a Slot call ``listen_sockets()`` and accept, or bind
    ``slot.port`` for an app with a ``port``. None means the spare is being
    stopped (``draining`` is set): exit. For an active instance, and in
    inert mode, ``wait_for_slot()`` returns the slot at once, so the same
    code runs either way.

    **Fork safety.** Create the Heartbeat in the process that reports. A
    ZeroMQ context does not survive ``fork()`` (its threads are not copied),
    so in a forked child every call on the parent's Heartbeat is ignored;
    the daemon tracks the worker it spawned, not its children.
    """

    def __init__(self, endpoint: str | None = None, name: str = "", token: str = "",
                 interval: float = DEFAULT_INTERVAL, environ: Mapping[str, str] | None = None,
                 fencing_token: int | None = None, fencing_deadline: float | None = None,
                 on_fenced: Callable[[], object] | None = None, *, index: int | None = None,
                 port: int | None = None, spare: bool = False) -> None:
        """Prefer ``from_env()``. ``environ`` holds the LISTEN_* variables for ``listen_sockets()``.

        **Fencing (cluster singletons).** ``fencing_token`` is this placement's token
        (``SUPERVISE_FENCING_TOKEN``): hand it to the database or lock you write to, so
        that it refuses a stale holder. With a ``fencing_deadline``
        (``SUPERVISE_FENCING_DEADLINE``, on the host's monotonic clock) a guard thread
        stops the process by itself when the deadline passes unrenewed: the daemon
        extends it each time its etcd lease is renewed, so a daemon that is paused,
        dead or cut off from etcd cannot leave this singleton running past its lease.
        Then ``on_fenced`` (if set) is called, given at most ``FENCE_HOOK_TIME``
        seconds, and the process exits with status ``FENCED_EXIT`` (75) through
        ``os._exit``: no cleanup that could outlast the lease.

        ``index`` and ``port`` (``SUPERVISE_INSTANCE``, ``SUPERVISE_PORT``) are the slot's;
        ``spare`` (``SUPERVISE_ROLE=spare``) makes this a spare waiting for a slot (ignored
        in inert mode: with no daemon to promote it, a program runs as it would standalone).
        """
        if not (math.isfinite(interval) and interval > 0):
            raise ValueError(f"supervise.worker: interval must be a positive number of seconds, got {interval!r}")
        self.active = bool(endpoint and name and token)
        self.endpoint = endpoint
        self.name = name
        self.index = index
        self.port = port
        self.spare = spare and self.active
        self.interval = interval
        self.draining: threading.Event = _Flag(self._wake_waiters)
        self.promoted = threading.Event()
        if not self.spare:
            self.promoted.set()
        self._token = token
        self._environ = dict(environ or {})  # for listen_sockets()
        self._pid = os.getpid()
        self._lock = threading.RLock()
        self._status: dict[str, str | float | None] = {}
        self._said_ready = False  # set once a ready message is encoded
        self._outbox: list[str] = []  # kinds to send; encoded by the I/O thread with the latest status
        self._periodic = False
        self._closed = False
        self._channel: _Channel | None = None
        self._opening = False
        self._listen: list[socket.socket] | None = None
        self._slot_changed = threading.Condition(self._lock)  # promoted, draining or closed
        self._async_waiters: list[Callable[[], None]] = []  # wake each wait_for_slot_async, from any thread
        self.fencing_token = fencing_token
        self.on_fenced = on_fenced
        self._guard: _FenceGuard | None = None
        if fencing_deadline is not None:
            self._guard = _FenceGuard(self, fencing_deadline)
            if self.active:
                self._post("beat", {})  # the daemon learns where to send the deadline's extensions

    @property
    def fencing_deadline(self) -> float | None:
        """When this singleton stops unless the daemon extends it (monotonic seconds); None: no guard."""
        return None if self._guard is None else self._guard.deadline

    @property
    def slot(self) -> Slot:
        """The slot this instance serves now (name, index, port); a spare's changes at promotion."""
        with self._lock:
            return Slot(self.name, self.index, self.port)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] = os.environ) -> Heartbeat:
        """The Heartbeat described by the ``SUPERVISE_*`` variables, inert without them."""
        spare = environ.get(protocol.ENV_ROLE) == protocol.ROLE_SPARE
        return cls(
            endpoint=environ.get(protocol.ENV_HEARTBEAT) or None,
            name=environ.get(protocol.ENV_NAME, ""),
            token=environ.get(protocol.ENV_TOKEN, ""),
            interval=_interval(environ.get(protocol.ENV_HEARTBEAT_INTERVAL)),
            environ={k: v for k, v in environ.items() if k.startswith("LISTEN_")},
            fencing_token=_fencing_token(environ.get(protocol.ENV_FENCING_TOKEN)),
            fencing_deadline=_deadline(environ.get(protocol.ENV_FENCING_DEADLINE)),
            index=None if spare else _decimal(environ.get(protocol.ENV_INSTANCE), 0, 10**9),
            port=None if spare else _decimal(environ.get(protocol.ENV_PORT), 1, 65535),
            spare=spare,
        )

    def __repr__(self) -> str:
        mode = f"{self.name}{' (spare)' if self.spare else ''} -> {self.endpoint}" if self.active else "inert"
        return f"<Heartbeat {mode} every {self.interval}s>"

    def ready(self, **status: str | float | None) -> None:
        """Startup is done (also counts as a beat): the instance becomes running."""
        self._post("ready", status)

    def beat(self, **status: str | float | None) -> None:
        """One beat now. Status fields (numbers, booleans, None, short strings) are
        remembered and repeated by later beats; ValueError if one is invalid."""
        self._post("beat", status)

    def drained(self) -> None:
        """No work is in flight: the daemon may stop this instance now."""
        self._post("drained", {})

    def start(self) -> Heartbeat:
        """Beat every ``interval`` from the I/O thread until ``close()``; returns self."""
        if os.getpid() != self._pid:
            return self
        with self._lock:
            if self.active and not self._closed:
                self._periodic = True
                self._wake()
        return self

    def wait_for_slot(self, timeout: float | None = None) -> Slot | None:
        """Block until this spare is promoted, and return its Slot; at once for an active
        instance or in inert mode. None when ``timeout`` seconds pass first, or when the
        daemon asks the spare to drain (it is being stopped: exit), or after ``close()``.

        A spare must be ready to be promoted, so this says ``ready()`` unless the worker
        has; the I/O thread receives the promotion and wakes this call directly.
        """
        if os.getpid() != self._pid:
            return None if self.spare else self.slot  # a forked child: nobody will promote it
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._lock:
            if self._unsettled():
                self._await_promotion()
            while self._unsettled():
                if deadline is None:
                    self._slot_changed.wait()
                elif (left := deadline - time.monotonic()) > 0:
                    self._slot_changed.wait(left)
                else:
                    break
            return self._outcome()

    async def wait_for_slot_async(self, timeout: float | None = None) -> Slot | None:
        """``wait_for_slot()`` for asyncio: the I/O thread resolves a future on this loop,
        so the wait neither blocks the loop nor holds a thread. Cancellable."""
        import asyncio  # deferred: a coroutine calling this has it imported already

        if os.getpid() != self._pid:
            return None if self.spare else self.slot
        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()

        def resolve() -> None:  # on the loop
            if not future.done():  # timed out, cancelled or woken already
                future.set_result(None)

        def waiter() -> None:  # on the I/O thread (or whichever sets draining or closes)
            try:
                loop.call_soon_threadsafe(resolve)
            except RuntimeError:
                pass  # the loop is closed: nobody awaits the future any more

        with self._lock:
            if not self._unsettled():
                return self._outcome()
            self._await_promotion()
            self._async_waiters.append(waiter)
        timer = None if timeout is None else loop.call_later(max(0.0, timeout), resolve)
        try:
            await future
        finally:
            if timer is not None:
                timer.cancel()
            with self._lock:
                self._async_waiters.remove(waiter)
        with self._lock:
            return self._outcome()

    def close(self) -> None:
        """Stop beating and close the socket, first giving a pending ready or
        drained up to ``LINGER`` seconds to leave. Idempotent."""
        if os.getpid() != self._pid:
            return  # a forked child: the parent's context and lock are not ours to touch
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._wake_waiters()  # a spare closed while waiting will never be promoted
            channel = self._channel
            if channel is None:
                return
            channel.wake()
        atexit.unregister(self.close)
        channel.join()

    def __enter__(self) -> Heartbeat:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def listen_sockets(self) -> list[socket.socket]:
        """Sockets passed by the daemon (systemd's LISTEN_FDS protocol), in order;
        [] when there are none or they were meant for another process. Works
        in inert mode too. The sockets are made non-inheritable, like
        ``sd_listen_fds`` does; later calls return the same sockets."""
        if os.getpid() != self._pid:
            return []  # a forked child: LISTEN_PID names the parent
        with self._lock:
            if self._listen is None:
                self._listen = []
                for fd, name in listen_fds(self._environ, os.getpid()):
                    sock = _adopt(fd, name)
                    if sock is not None:
                        self._listen.append(sock)
            return list(self._listen)

    # -- shared with the I/O thread ----------------------------------------------

    def _post(self, kind: str, status: dict[str, str | float | None]) -> None:
        if os.getpid() != self._pid:
            return  # a forked child: do not even take the lock, another thread may have held it at fork()
        with self._lock:
            if status:
                merged = {**self._status, **status}
                _check_status(merged)
                self._status = merged
            if not self.active or self._closed:
                return
            if kind not in self._outbox:  # coalesce: a queued message is encoded with the latest status
                self._outbox.append(kind)
            self._wake()

    # -- spares ----------------------------------------------------------------------

    def _unsettled(self) -> bool:
        """A spare that may still be promoted (caller holds the lock)."""
        return self.spare and not self._closed and not self.draining.is_set()

    def _outcome(self) -> Slot | None:
        """What a wait returns once it ends: the slot if promoted, else None (caller holds the lock)."""
        return None if self.spare else Slot(self.name, self.index, self.port)

    def _await_promotion(self) -> None:
        """Ready to be promoted: say ready unless said, and have the I/O thread running to
        hear the promotion (caller holds the lock)."""
        if not (self._said_ready or "ready" in self._outbox):
            self._post("ready", {})
        else:
            self._wake()

    def _promote(self, name: str, index: int, port: int | None) -> bool:
        """For the I/O thread, with the lock held: take the slot. False (nothing
        changes) unless this is a spare not yet promoted."""
        if not self.spare or self._closed:
            return False
        self.name, self.index, self.port = name, index, port
        self.spare = False  # from here every message is encoded with the new name
        return True

    def _wake_waiters(self) -> None:
        """Wakes every wait_for_slot(): promoted, draining or closed. Takes the lock."""
        if os.getpid() != self._pid:
            return  # a forked child: ``draining.set()`` must not take a lock held at fork()
        with self._lock:
            self._slot_changed.notify_all()
            for waiter in self._async_waiters:
                waiter()

    def _wake(self) -> None:
        """Wakes the I/O thread, starting it on first use (caller holds the lock)."""
        if self._channel is None:
            endpoint = self.endpoint
            if endpoint is None or self._opening:
                # Inert (callers check ``active`` first), or a signal handler interrupted
                # the opening call, which wakes the thread when done.
                return
            self._opening = True
            try:
                self._channel = _Channel(_import_zmq(), endpoint, self)
            finally:
                self._opening = False
            atexit.register(self.close)  # so a final drained still leaves at interpreter exit
        self._channel.wake()

    def _take(self) -> tuple[list[tuple[str, bytes]], bool, bool]:
        """For the I/O thread: the messages to send now, whether to beat
        periodically, and whether to shut down."""
        with self._lock:
            messages = [(kind, self._encode(kind)) for kind in self._outbox]
            self._outbox.clear()
            return messages, self._periodic, self._closed

    def _encode(self, kind: str) -> bytes:
        with self._lock:
            status = None if kind == "drained" else dict(self._status)
            if kind == "ready":
                self._said_ready = True  # later beats say so too, for a daemon that missed this one
            return protocol.encode_heartbeat(protocol.Heartbeat(kind, self.name, self._token, self._pid, status,
                                                                self._said_ready))


class _Channel:
    """The I/O thread and the sockets only it touches: the DEALER and the read
    end of the wakeup pipe. The write end is used under the owner's lock."""

    def __init__(self, zmq: ModuleType, endpoint: str, owner: Heartbeat) -> None:
        self._zmq = zmq
        self._owner = owner
        self._ctx = zmq.Context(io_threads=1)
        try:
            self._dealer = self._ctx.socket(zmq.DEALER)
            self._dealer.setsockopt(zmq.IMMEDIATE, 1)  # queue nothing while no daemon is connected
            self._dealer.setsockopt(zmq.SNDHWM, SEND_HWM)
            self._dealer.setsockopt(zmq.LINGER, 0)  # close() sets the real linger
            self._dealer.setsockopt(zmq.RECONNECT_IVL, RECONNECT_MS)
            # Each (re)connection is reported here, so that beats resume the moment a
            # restarted daemon is back rather than at the next interval.
            self._connected = self._dealer.get_monitor_socket(zmq.EVENT_HANDSHAKE_SUCCEEDED)
            self._dealer.connect(endpoint)  # asynchronous; retried every RECONNECT_MS until the daemon is there
            self._wake_r = self._ctx.socket(zmq.PAIR)
            self._wake_r.bind("inproc://wake")
            self._wake_w = self._ctx.socket(zmq.PAIR)
            self._wake_w.connect("inproc://wake")
        except zmq.ZMQError as exc:
            self._ctx.destroy(linger=0)
            raise ValueError(f"supervise.worker: cannot connect to SUPERVISE_HEARTBEAT={endpoint!r}: {exc}") from None
        self.dropped_beats = 0
        self._thread = threading.Thread(target=self._run, name="supervise-heartbeat", daemon=True)
        self._thread.start()

    def wake(self) -> None:
        """Called with the owner's lock held, which serializes use of the write end."""
        if self._wake_w.poll(0, self._zmq.POLLOUT):  # else a thousand wakeups are pending already
            self._wake_w.send(b"")

    def join(self) -> None:
        self._thread.join(LINGER + 2.0)
        if self._thread.is_alive():
            return  # should not happen; terminating the context now would block on its sockets
        self._wake_w.close(linger=0)
        self._ctx.term()  # returns once the DEALER's linger has run out

    # -- the I/O thread ------------------------------------------------------------

    def _run(self) -> None:
        zmq = self._zmq
        poller = zmq.Poller()
        poller.register(self._wake_r, zmq.POLLIN)
        poller.register(self._dealer, zmq.POLLIN)
        poller.register(self._connected, zmq.POLLIN)
        held: list[bytes] = []  # ready/drained waiting for a connected daemon, in order
        next_beat: float | None = None  # of the periodic beats, once start() was called
        while True:
            messages, periodic, closing = self._owner._take()
            for kind, frame in messages:
                self._deliver(kind, frame, held)
                if kind != "drained":
                    next_beat = time.monotonic() + self._owner.interval  # any beat restarts the period
            if closing:
                break
            timeout = None  # without periodic beats, sleep until woken or the daemon writes
            if periodic:
                next_beat, timeout = self._periodic_beat(next_beat, held)
            poller.modify(self._dealer, zmq.POLLIN | (zmq.POLLOUT if held else 0))
            events = dict(poller.poll(timeout))
            if self._wake_r in events:
                self._drain_wakeups()
            if self._connected in events:
                while self._connected.poll(0):
                    self._connected.recv_multipart()
                if periodic:  # a daemon (maybe a new one) is there: tell it at once we are alive
                    next_beat = None
            if events.get(self._dealer, 0) & zmq.POLLIN:
                self._receive(held)
            if events.get(self._dealer, 0) & zmq.POLLOUT:
                self._flush(held)
        self._close(held)

    def _periodic_beat(self, next_beat: float | None, held: list[bytes]) -> tuple[float, int]:
        """Beat if it is time; returns the next beat's time and the poll timeout (ms) until it."""
        now = time.monotonic()
        if next_beat is None or now >= next_beat:
            self._deliver("beat", self._owner._encode("beat"), held)
            next_beat = now + self._owner.interval
        return next_beat, math.ceil((next_beat - now) * 1000)

    def _deliver(self, kind: str, frame: bytes, held: list[bytes]) -> None:
        if not held and self._send(frame):
            return
        if kind == "beat":
            self.dropped_beats += 1  # stale by the time a daemon could read it
        else:
            held.append(frame)  # behind earlier held messages, to keep their order

    def _send(self, frame: bytes) -> bool:
        try:
            self._dealer.send(frame, self._zmq.NOBLOCK)
            return True
        except self._zmq.ZMQError:
            return False  # Again: no daemon connected (IMMEDIATE), or it is not reading

    def _flush(self, held: list[bytes]) -> None:
        while held and self._send(held[0]):
            held.pop(0)

    def _drain_wakeups(self) -> None:
        while self._wake_r.poll(0):
            self._wake_r.recv()

    def _receive(self, held: list[bytes]) -> None:
        zmq = self._zmq
        while True:
            try:
                frames = self._dealer.recv_multipart(zmq.NOBLOCK)
            except zmq.ZMQError:
                return
            try:
                kind = protocol.decode_daemon_message(frames)
            except protocol.ProtocolError:
                continue  # not from a daemon we understand; nothing useful to do with it
            if kind == "drain":
                self._owner.draining.set()
            elif kind == "fence" and self._owner._guard is not None:
                try:
                    self._owner._guard.extend(protocol.decode_fence(frames))
                except protocol.ProtocolError:
                    continue
            elif kind == "promote":
                self._promote(frames, held)

    def _promote(self, frames: list[bytes], held: list[bytes]) -> None:
        """Take the slot, tell the daemon under the new name at once, then wake the waiters.

        All under the owner's lock, so that a waiter sees the promotion complete. The beat
        is delivered like a ready (held, not dropped, if it cannot leave now): it is what
        tells the daemon the spare has taken over."""
        try:
            name, index, port = protocol.decode_promote(frames)
        except protocol.ProtocolError:
            return
        owner = self._owner
        with owner._lock:
            if not owner._promote(name, index, port):
                return  # not a spare (any more): a duplicate or a stray message
            self._deliver("promote", owner._encode("beat"), held)
            owner.promoted.set()
            owner._wake_waiters()

    def _close(self, held: list[bytes]) -> None:
        zmq = self._zmq
        deadline = time.monotonic() + LINGER
        poller = zmq.Poller()
        poller.register(self._dealer, zmq.POLLOUT)
        while held and (left := deadline - time.monotonic()) > 0:
            if poller.poll(math.ceil(left * 1000)):
                self._flush(held)
        linger = max(0, math.ceil((deadline - time.monotonic()) * 1000))
        self._dealer.disable_monitor()
        self._connected.close(linger=0)
        self._dealer.close(linger=linger)  # what was sent but not yet written gets the rest
        self._wake_r.close(linger=0)


def listen_fds(environ: Mapping[str, str], pid: int) -> list[tuple[int, str | None]]:
    """The (fd, name) pairs systemd's socket-passing protocol gives process
    ``pid``: ``LISTEN_FDS`` fds from 3, named by ``LISTEN_FDNAMES``
    (':'-separated, optional). [] unless ``LISTEN_PID`` is ``pid``: the
    variables may have been inherited from a parent they were meant for."""
    try:
        if int(environ.get("LISTEN_PID", "")) != pid:
            return []
        count = int(environ.get("LISTEN_FDS", ""))
    except ValueError:
        return []
    if not 0 < count <= 4096:
        return []
    names = environ.get("LISTEN_FDNAMES", "").split(":")
    return [(LISTEN_FDS_START + i, names[i] if i < len(names) and names[i] else None)
            for i in range(count)]


def _adopt(fd: int, name: str | None) -> socket.socket | None:
    try:
        sock = socket.socket(fileno=fd)  # family and type come from the fd itself
    except OSError as exc:
        warnings.warn(f"supervise.worker: LISTEN_FDS fd {fd} ({name or 'unnamed'}) is not a usable socket: {exc}",
                      RuntimeWarning, stacklevel=3)
        return None
    os.set_inheritable(fd, False)  # like sd_listen_fds(): not leaked into the worker's own children
    return sock


class _FenceGuard:
    """A singleton's dead man's switch: exits the process when its deadline passes unrenewed.

    Its own thread, not the I/O thread, so that nothing the worker or the
    channel does can hold it up; it sleeps on a condition until the deadline.
    """

    def __init__(self, owner: Heartbeat, deadline: float) -> None:
        self._owner = owner
        self.deadline = deadline
        self._cond = threading.Condition()
        threading.Thread(target=self._run, name="supervise-fence", daemon=True).start()

    def extend(self, until: float) -> None:
        with self._cond:
            if until > self.deadline:
                self.deadline = until
                self._cond.notify()

    def _run(self) -> None:
        with self._cond:
            while (left := self.deadline - time.monotonic()) > 0:
                self._cond.wait(left)
        hook = self._owner.on_fenced
        if hook is not None:
            runner = threading.Thread(target=hook, name="supervise-on-fenced", daemon=True)
            runner.start()
            runner.join(FENCE_HOOK_TIME)  # the hook's budget: the lease will not wait for it
        os._exit(FENCED_EXIT)


class _Flag(threading.Event):
    """``draining``: an Event that also wakes ``wait_for_slot()`` when set, by the
    daemon's drain message or by the worker's own code (a SIGTERM handler)."""

    def __init__(self, on_set: Callable[[], None]) -> None:
        super().__init__()
        self._on_set = on_set

    def set(self) -> None:
        super().set()
        self._on_set()


def _decimal(text: str | None, low: int, high: int) -> int | None:
    """A decimal integer from ``low`` to ``high``, None for anything else (absent, junk, out of range)."""
    if not (text and text.isascii() and text.isdigit() and len(text) <= 10):
        return None
    value = int(text)
    return value if low <= value <= high else None


def _fencing_token(text: str | None) -> int | None:
    return int(text) if text and text.isascii() and text.isdigit() else None


def _deadline(text: str | None) -> float | None:
    try:
        value = float(text) if text else None
    except ValueError:
        return None
    return value if value is not None and math.isfinite(value) else None


def _interval(text: str | None) -> float:
    try:
        value = float(text) if text else DEFAULT_INTERVAL
    except ValueError:
        return DEFAULT_INTERVAL
    return value if math.isfinite(value) and value > 0 else DEFAULT_INTERVAL


def _check_status(status: dict[str, str | float | None]) -> None:
    """Refuse fields the daemon would refuse: it drops a malformed beat, and a
    worker whose every beat is dropped looks hung. The daemon's own decoder is
    the rule, so the two cannot drift apart."""
    msg = protocol.Heartbeat("beat", "-", "-", None, status)
    try:
        protocol.decode_heartbeat([protocol.encode_heartbeat(msg)])
    except (ValueError, TypeError) as exc:  # ProtocolError is a ValueError
        raise ValueError(f"supervise.worker: bad status fields: {exc}") from None


def _import_zmq() -> ModuleType:
    try:
        import zmq  # deferred: an inert Heartbeat (a standalone run) never needs it
    except ImportError as exc:
        raise ImportError(f"supervise.worker needs pyzmq to report to supervise ({exc}): pip install pyzmq") from None
    return zmq
