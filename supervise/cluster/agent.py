"""This node's side of the cluster: its lease, its copy of the cluster, and (when elected) the leader's work.

Three threads, so that no etcd call can hold up another or the daemon's loop:

* **session**: grants the node's lease, writes its node record, and renews the
  lease every TTL/3. Each acknowledged renewal moves the fence deadline to the
  renewal's *send* time + TTL - margin, which is always before etcd can expire
  the lease (etcd counts the TTL from when it received the renewal). The core
  fences (stops the node's singletons) at that deadline unless renewed first.
* **watch**: reads the whole prefix, then watches it; every change updates the
  ``ClusterView`` and, when this node's slots changed, posts ``Assigned``. Any
  error (etcd gone, compaction, a silent link) ends the watch; it reads again.
* **leader**: campaigns when nobody leads (a lease-bound key created in a
  transaction: whoever's create succeeds leads, its create_revision is the
  term); the leader runs ``placement.plan`` on the view and writes the result in
  transactions that hold only while the leader key is still its own. Every node
  also writes its status record here, coalesced.

After a fence (the lease lapsed, or was lost), ``LeaseRenewed`` is posted only
after an ``Assigned`` read from etcd once the lease was good again: a node
that wakes from a pause never restarts a singleton from a stale copy.

Events reach the daemon's loop through ``post`` (thread-safe); nothing here
touches a process.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any, Protocol

from supervise.cluster import records
from supervise.cluster.etcd import Compare, Etcd, EtcdError, LeaseNotFound, Op, Watch
from supervise.cluster.records import ClusterView, InstanceReport, Rolled
from supervise.config.model import AppConfig, ClusterConfig
from supervise.core.events import (
    Assigned,
    Cause,
    ClusterNews,
    CommandReceived,
    Event,
    LeaseLost,
    LeaseRenewed,
    Verb,
)
from supervise.core.placement import AppSpec, Delete, Put, Slot, plan
from supervise.frozen import frozen

TXN_OPS = 100
"""Writes per transaction (etcd's default --max-txn-ops is 128)."""
STATUS_EVERY = 0.2
"""Seconds between two writes of this node's status record: changes in between are coalesced."""
RETRY = 0.25
"""Seconds between tries while etcd does not answer."""
WARN_EVERY = 60.0
"""Seconds between two warnings that etcd still does not answer."""
ROLL_TIMEOUT = 600.0
"""Seconds one node's part of a cluster-wide rollout may take."""
ROLL = "cluster-roll"
"""The request id of a node's part of a cluster-wide rollout is (ROLL, app, generation)."""


class Logger(Protocol):
    def info(self, event: str, **fields: Any) -> Any: ...
    def warning(self, event: str, **fields: Any) -> Any: ...


def node_name(config: ClusterConfig) -> str:
    return config.node or socket.gethostname()


@frozen
class Placed:
    """What the view says this node runs (for change detection)."""

    slots: Mapping[str, Mapping[int, int]]
    held: Mapping[str, frozenset[int]]


class Agent:
    def __init__(self, config: ClusterConfig, apps: Mapping[str, AppConfig], post: Callable[[Event], None],
                 log: Logger, clock: Callable[[], float] = time.monotonic) -> None:
        self.config = config
        self.node = node_name(config)
        self.prefix = records.prefix(config.name)
        self._apps = {name: app for name, app in apps.items() if app.clustered}
        self._post = post
        self._log = log
        self._clock = clock
        self.etcd = Etcd(config.etcd, timeout=1.0, ca=_str(config.ca), cert=_str(config.cert),
                         key=_str(config.key), user=config.user, password=config.password)
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._stop = threading.Event()
        self._view = ClusterView()
        self._synced = False  # the view holds a full read (and what the watch added since)
        self._lease: int | None = None
        self._fence_at: float | None = None
        self._need_fresh = True  # LeaseRenewed waits for an Assigned read after the lease was (re)gained
        self._rerange = threading.Event()
        self._watch: Watch | None = None
        self._placed: Placed | None = None
        self._term = 0  # as leader: the create_revision of our leader key; 0: not leading
        self._written = 0  # as leader: revision of our last write, the view must catch up first
        self._report: dict[str, InstanceReport] = {}
        self._reported: dict[str, InstanceReport] | None = None
        self._report_at = 0.0
        self._rolled: dict[str, Rolled] = {}  # this node's part in cluster-wide rollouts, by app
        self._rolling: dict[str, int] = {}  # the generation this node is rolling now, by app
        self._reported_rolled: dict[str, Rolled] | None = None
        self._joined = False
        self._renewed_at = 0.0
        self._warned_at = -WARN_EVERY
        self._need_register = False  # the node record must be written again (the apps changed)
        self._fresh_wanted = 0  # fresh reads asked for; a read answers the ones asked before it began
        self._changes = 0  # bumped with every notify: the leader thread never sleeps through one
        self.connected = False
        self.last_error: str | None = None
        self._threads = [threading.Thread(target=self._guarded(body), name=f"supervise-cluster-{name}", daemon=True)
                         for name, body in (("session", self._session), ("watch", self._watcher),
                                            ("leader", self._leading))]

    # -- the daemon's side ------------------------------------------------------------

    def start(self) -> None:
        for thread in self._threads:
            thread.start()

    def set_apps(self, apps: Mapping[str, AppConfig]) -> None:
        """A reloaded config: the node record says which cluster apps this node can run now."""
        with self._lock:
            self._apps = {name: app for name, app in apps.items() if app.clustered}
            self._need_register = True
            self._notify()

    def report(self, instances: Mapping[str, InstanceReport]) -> None:
        """What this node runs now; written to etcd coalesced, by the leader thread."""
        with self._lock:
            self._report = dict(instances)
            self._notify()

    def close(self, revoke: bool) -> None:
        """Stop the threads; `revoke`: give up the lease, so that the leader re-places at once
        (only once every local cluster instance is gone)."""
        self._stop.set()
        with self._lock:
            self._notify()
            watch, lease = self._watch, self._lease
        if watch is not None:
            watch.close()
        for thread in self._threads:
            thread.join(3.0)
        if revoke and lease is not None:
            try:
                self.etcd.revoke(lease)
            except EtcdError as exc:
                self._log.warning("cluster: could not give up the lease; it expires by itself", error=str(exc))
        self.etcd.close()

    # -- operator's requests (blocking: the daemon runs them in a thread) -------------------

    def cordon(self, node: str, on: bool) -> dict[str, object]:
        with self._lock:
            known = set(self._view.nodes) | {a.node for a, _ in self._view.assignments.values()} | self._view.cordoned
        if node not in known:
            raise ValueError(f"no node named {node!r} (nodes: {', '.join(sorted(known)) or 'none'})")
        key = f"{self.prefix}cordon/{node}"
        if on:
            self.etcd.put(key, records.encode({"at": time.time()}))
        else:
            self.etcd.delete(key)
        return {"node": node, "cordoned": on}

    def scale(self, app: str, count: int) -> None:
        self.etcd.put(f"{self.prefix}scale/{app}", records.encode({"instances": count}))

    # -- cluster-wide rollouts, node by node --------------------------------------------------

    def request_rollout(self, app: str) -> tuple[int, tuple[str, ...]]:
        """Ask every node running `app` to roll it, one after the other (in name order): a node
        starts once those before it are done, so the app never loses more than one node's share."""
        order = self.rollout_order(app)
        with self._lock:
            generation = self._view.rollouts.get(app, (0, ()))[0] + 1
        self.etcd.put(f"{self.prefix}rollout/{app}", records.encode({"generation": generation,
                                                                     "order": list(order), "by": self.node}))
        return generation, order

    def rollout_order(self, app: str) -> tuple[str, ...]:
        """The nodes that run `app`, in the order a rollout takes them."""
        with self._lock:
            return tuple(sorted({a.node for slot, (a, _) in self._view.assignments.items()
                                 if slot.app == app and a.node in self._view.nodes}))

    def wait_rollout(self, app: str, generation: int, order: tuple[str, ...],
                     timeout: float) -> list[dict[str, object]]:
        """Each node's outcome, once every live node has rolled or one failed (which stops the rest)."""
        deadline = self._clock() + timeout
        with self._lock:
            while True:
                outcome, done = self._view.rollout_outcome(app, generation, order)
                if done:
                    return outcome
                left = deadline - self._clock()
                if left <= 0:
                    raise TimeoutError(f"{app}: cluster-wide rollout {generation} not done after {timeout:g}s: "
                                       + ", ".join(f"{o['node']} {o['state']}" for o in outcome))
                self._changed.wait(min(left, 1.0))

    def rolled(self, app: str, generation: int, ok: bool, error: str | None) -> None:
        """This node's part of a rollout is over; the status record says so, and the next node goes."""
        with self._lock:
            self._rolled[app] = Rolled(generation, ok, error)
            self._rolling.pop(app, None)
            self._notify()

    def _turns(self) -> list[tuple[str, int]]:
        """The rollouts whose turn has come on this node (the caller holds the lock)."""
        turns = []
        for app, (generation, order) in self._view.rollouts.items():
            mine = self._rolled.get(app)
            if self.node not in order or app not in self._apps or self._rolling.get(app) == generation \
                    or (mine is not None and mine.generation >= generation):
                continue
            earlier, done = self._view.rollout_outcome(app, generation, order[:order.index(self.node)])
            if not done:
                continue
            if earlier and earlier[-1]["state"] == "failed":
                self._rolled[app] = Rolled(generation, False, "not rolled: a node before it failed")
                continue
            self._rolling[app] = generation
            turns.append((app, generation))
        return turns

    def status(self) -> dict[str, object]:
        """``status --cluster``: every node and every cluster instance, from this node's copy."""
        with self._lock:
            seen = self._view.as_status(self.node, self._specs())
        return {"cluster": self.config.name, "node": self.node, "connected": self.connected,
                "error": self.last_error, **seen}

    # -- session: the lease ------------------------------------------------------------------

    def _session(self) -> None:
        interval = self.config.lease_ttl / 3
        margin = self.config.fence_margin
        while not self._stop.is_set():
            if self._lease is None:
                self._register()
                continue
            with self._lock:
                wait_until = self._renewed_at + interval
            if self._stop.wait(max(0.0, wait_until - self._clock())):
                return
            sent = self._clock()
            try:
                ttl = self.etcd.keepalive(self._lease)
            except LeaseNotFound:
                self._lost("etcd says the lease expired")
                continue
            except EtcdError as exc:
                self._trouble(exc)
                with self._lock:
                    self._renewed_at = self._clock() - interval + RETRY  # try again soon
                    if self._fence_at is not None and self._clock() >= self._fence_at:
                        self._need_fresh = True  # the core fenced: take singletons back only from a new read
                continue
            self._renewed(sent + ttl - margin)

    def _register(self) -> None:
        """A new lease and node record; then a fresh read before the core hears the lease is good."""
        sent = self._clock()
        try:
            lease, ttl = self.etcd.grant(self.config.lease_ttl)
            with self._lock:
                apps = sorted(self._apps)
                self._need_register = False
            record = {"node": self.node, "capacity": self.config.capacity, "labels": dict(self.config.labels),
                      "apps": apps, "host": socket.gethostname(), "pid": os.getpid()}
            self.etcd.put(f"{self.prefix}nodes/{self.node}", records.encode(record), lease=lease)
        except EtcdError as exc:
            self._trouble(exc)
            self._stop.wait(RETRY * 2)
            return
        with self._lock:
            self._lease, self._need_fresh, self._reported = lease, True, None
            self._renewed_at = sent
            self._fence_at = sent + ttl - self.config.fence_margin
        self.connected, self.last_error = True, None
        self._post(ClusterNews({"event": "rejoined" if self._joined else "joined", "node": self.node,
                                "lease": f"{lease:x}"}))
        self._joined = True
        self._log.info("cluster: joined", node=self.node, cluster=self.config.name, lease=f"{lease:x}")
        self._request_fresh_read()

    def _renewed(self, fence_at: float) -> None:
        self.connected, self.last_error = True, None
        with self._lock:
            self._renewed_at = self._clock()
            self._fence_at = fence_at
            if self._need_register:
                self._notify()
            if self._need_fresh:
                self._request_fresh_read()
                return  # the watch thread posts LeaseRenewed after its read
        self._post(LeaseRenewed(fence_at))

    def _lost(self, why: str) -> None:
        with self._lock:
            self._lease, self._fence_at, self._term = None, None, 0
            self._need_fresh = True
        self._post(LeaseLost())
        self._post(ClusterNews({"event": "lease-lost", "node": self.node, "why": why}))
        self._log.warning("cluster: lease lost; fenced, joining again", node=self.node, why=why)

    def _trouble(self, exc: Exception) -> None:
        """etcd did not answer the session: said once when it starts, then once a minute."""
        text, now = str(exc), self._clock()
        if self.connected or now >= self._warned_at + WARN_EVERY:
            self._warned_at = now
            self._log.warning("cluster: etcd does not answer; local apps carry on", error=text)
        self.connected, self.last_error = False, text

    def _request_fresh_read(self) -> None:
        self._fresh_wanted += 1
        self._rerange.set()
        watch = self._watch
        if watch is not None:
            watch.close()

    # -- watch: the view ---------------------------------------------------------------------

    def _watcher(self) -> None:
        idle = max(10.0, self.config.lease_ttl * 2.0)
        while not self._stop.is_set():
            try:
                self._rerange.clear()
                asked = self._fresh_wanted  # this read answers the requests made before it starts
                kvs, revision = self.etcd.get_prefix(self.prefix)
                view = ClusterView(revision=revision)
                for kv in kvs:
                    # cordon first, so node records read them
                    if kv.key[len(self.prefix):].startswith("cordon/"):
                        view.put(kv.key[len(self.prefix):], kv.value, kv.create_revision, kv.mod_revision, kv.lease)
                for kv in kvs:
                    if not kv.key[len(self.prefix):].startswith("cordon/"):
                        view.put(kv.key[len(self.prefix):], kv.value, kv.create_revision, kv.mod_revision, kv.lease)
                self._swap(view, asked)
                watch = self.etcd.watch(self.prefix, revision + 1, idle_timeout=idle)
                with self._lock:
                    self._watch = watch
                if self._rerange.is_set() or self._stop.is_set():
                    watch.close()
                for batch in watch:
                    with self._lock:
                        before = self._snapshot_news()
                        for event in batch:
                            key = event.kv.key[len(self.prefix):]
                            if event.kind == "put":
                                self._view.put(key, event.kv.value, event.kv.create_revision,
                                               event.kv.mod_revision, event.kv.lease)
                            else:
                                self._view.delete(key)
                            self._view.revision = max(self._view.revision, event.kv.mod_revision)
                    self._after_change(before)
                    if self._rerange.is_set():
                        break
                watch.close()
            except EtcdError:
                # A quiet cluster ends its watch every idle period (etcd 3.4 sends no progress over
                # the gateway): read again. Whether etcd is reachable is the session's to say.
                self._stop.wait(RETRY)

    def _swap(self, view: ClusterView, asked: int) -> None:
        with self._lock:
            before = self._snapshot_news() if self._synced else None
            if not self._synced:
                # Rollouts asked before this daemon started are not its to replay: its instances
                # are adopted as they run, or started afresh on the current config.
                for app, (generation, _) in view.rollouts.items():
                    self._rolled.setdefault(app, Rolled(generation, True, "asked before this daemon started"))
            self._view, self._synced = view, True
        self._after_change(before, fresh=asked == self._fresh_wanted)

    def _snapshot_news(self) -> tuple[frozenset[str], str | None, frozenset[str]]:
        v = self._view
        return frozenset(v.nodes), v.leader, frozenset(v.cordoned)

    def _after_change(self, before: tuple[frozenset[str], str | None, frozenset[str]] | None,
                      fresh: bool = False) -> None:
        """Tell the core what changed for this node, and the world what changed in the cluster."""
        news: list[dict[str, object]] = []
        with self._lock:
            slots, held = self._view.placed_on(self.node)
            placed = Placed(slots, held)
            if placed != self._placed or fresh:
                self._placed = placed
                assigned: Assigned | None = Assigned(slots, held)
            else:
                assigned = None
            after = self._snapshot_news()
            if before is not None:
                news += [{"event": "node-joined", "node": n} for n in sorted(after[0] - before[0])]
                news += [{"event": "node-lost", "node": n} for n in sorted(before[0] - after[0])]
                if after[1] != before[1] and after[1] is not None:
                    news.append({"event": "leader", "node": after[1]})
                news += [{"event": "cordoned", "node": n} for n in sorted(after[2] - before[2])]
                news += [{"event": "uncordoned", "node": n} for n in sorted(before[2] - after[2])]
            turns = self._turns() if self._synced else []
            renewed = None
            if fresh and self._need_fresh and self._lease is not None and self._fence_at is not None \
                    and self._fence_at > self._clock():  # else the next renewal brings a new read
                self._need_fresh = False
                renewed = LeaseRenewed(self._fence_at)
            self._notify()
        if assigned is not None:
            self._post(assigned)
        if renewed is not None:
            self._post(renewed)
        for item in news:
            self._post(ClusterNews(item))
        for app, generation in turns:
            self._post(ClusterNews({"event": "rolling", "app": app, "generation": generation, "node": self.node}))
            self._post(CommandReceived((ROLL, app, generation), Verb.RELOAD, (app,), timeout=ROLL_TIMEOUT,
                                       cause=Cause.RELOAD))

    # -- leader, and this node's status record ----------------------------------------------------

    def _leading(self) -> None:
        seen = -1
        while not self._stop.is_set():
            with self._lock:
                pending = self._lease is not None and (self._report != self._reported
                                                       or self._rolled != self._reported_rolled)
                if self._changes == seen or pending:  # else something changed while we worked: look now
                    self._changed.wait(max(0.01, self._report_at + STATUS_EVERY - self._clock()) if pending
                                       else 1.0)
                seen = self._changes
            if self._stop.is_set():
                return
            try:
                self._write_status()
                if self._need_register:
                    self._reregister()
                self._lead()
            except LeaseNotFound:
                self._stop.wait(RETRY)  # the session sees it too, fences and joins again
            except EtcdError:
                self._stop.wait(RETRY)  # whether etcd answers at all is the session's to say

    def _reregister(self) -> None:
        with self._lock:
            lease, apps = self._lease, sorted(self._apps)
            self._need_register = False
        if lease is None:
            return
        record = {"node": self.node, "capacity": self.config.capacity, "labels": dict(self.config.labels),
                  "apps": apps, "host": socket.gethostname(), "pid": os.getpid()}
        self.etcd.put(f"{self.prefix}nodes/{self.node}", records.encode(record), lease=lease)

    def _write_status(self) -> None:
        with self._lock:
            lease, report, rolled = self._lease, self._report, dict(self._rolled)
            changed = report != self._reported or rolled != self._reported_rolled
            due = changed and self._clock() >= self._report_at + STATUS_EVERY
        if lease is None or not due:
            return
        body = {"node": self.node, "instances": {name: records.report_json(r) for name, r in sorted(report.items())},
                "rolled": {app: r.as_json() for app, r in sorted(rolled.items())}}
        self.etcd.put(f"{self.prefix}status/{self.node}", records.encode(body), lease=lease)
        with self._lock:
            self._reported, self._reported_rolled, self._report_at = report, rolled, self._clock()

    def _lead(self) -> None:
        with self._lock:
            view, lease, synced = self._view, self._lease, self._synced
            if lease is None or not synced:
                return
            leader, term = view.leader, view.term
        if leader is None:
            self._campaign(lease)
            return
        if leader != self.node or view.leader_lease != lease:
            self._term = 0  # another leads (or a key of ours from a lease we no longer hold: it expires)
            return
        self._term = term
        with self._lock:
            if self._view.revision < self._written:
                return  # our last writes have not come back through the watch yet
            apps = self._specs()
            writes = plan(self._view.live_nodes(), apps, dict(self._view.assignments), self._view.reports())
        if writes:
            self._apply(writes)

    def _campaign(self, lease: int) -> None:
        key = f"{self.prefix}leader"
        result = self.etcd.txn([Compare.create(key, "=", 0)], [Op.put(key, records.encode({"node": self.node}),
                                                                      lease=lease)])
        if result.succeeded:
            self._term = result.revision
            self._log.info("cluster: elected leader", node=self.node, term=result.revision)

    def _specs(self) -> list[AppSpec]:
        return [AppSpec(name, self._view.scales.get(name, app.instances), str(app.placement), app.singleton,
                        dict(app.constraints), app.spread) for name, app in sorted(self._apps.items())]

    def _apply(self, writes: list[Put | Delete]) -> None:
        key = f"{self.prefix}leader"
        for start in range(0, len(writes), TXN_OPS):
            chunk = writes[start:start + TXN_OPS]
            ops = [Op.put(self._slot_key(w.slot), records.assignment_value(w.assignment)) if isinstance(w, Put)
                   else Op.delete(self._slot_key(w.slot)) for w in chunk]
            result = self.etcd.txn([Compare.create(key, "=", self._term)], ops)
            if not result.succeeded:
                self._log.warning("cluster: no longer the leader; writes dropped", node=self.node)
                self._term = 0
                return
            self._written = result.revision
            for w in chunk:
                self._post(ClusterNews(_news(w)))

    def _slot_key(self, slot: Slot) -> str:
        return f"{self.prefix}assign/{slot.app}/{slot.index}"

    def _notify(self) -> None:
        """Wake whoever waits on a change (the caller holds the lock)."""
        self._changes += 1
        self._changed.notify_all()

    def _guarded(self, body: Callable[[], None]) -> Callable[[], None]:
        """A bug in a thread is logged and the thread starts over: the cluster side must not die silently."""
        def run() -> None:
            while not self._stop.is_set():
                try:
                    body()
                    return
                except Exception as exc:  # noqa: BLE001  (logged with its traceback, and the thread goes on)
                    self._log.warning("cluster: internal error; carrying on", thread=body.__name__,
                                      error=repr(exc), exc_info=True)
                    self._stop.wait(RETRY)
        return run


def _news(write: Put | Delete) -> dict[str, object]:
    name = f"{write.slot.app}:{write.slot.index}"
    if isinstance(write, Delete):
        return {"event": "unplaced", "name": name}
    a = write.assignment
    if a.handoff_from is not None:
        return {"event": "moving", "name": name, "node": a.node, "from": a.handoff_from}
    return {"event": "placed", "name": name, "node": a.node}


def _str(path: object) -> str | None:
    return None if path is None else str(path)
