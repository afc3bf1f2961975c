"""Prometheus metrics at ``/metrics`` (``[supervise] metrics = "HOST:PORT"``): instances, apps, the daemon.

Everything is read at scrape time where it lives, on the loop: the status the
control socket answers (the core's view with the shell's ``daemon`` section),
and what this module counts itself: restarts and exits by app and reason
(from the published events), the loop's lag (a probe every second) and the
checkpoint's write durations. Nothing is sampled for the metrics' sake: an
instance's memory is the sampler's last reading, as in ``status``.

The text is Prometheus' text exposition format (0.0.4), written here rather
than by prometheus_client, for two measured reasons:

- speed: its generic writer (``generate_latest``) takes about 7 µs a sample,
  75 ms for the ~11,000 samples of 1,000 instances on a 2-core machine, over
  the 50 ms a scrape may take; written here from label strings made once per
  instance, the same takes ~17 ms (benchmarks/metrics.py has the figures);
- memory: importing it imports ssl, http.server, wsgiref and urllib.request,
  +7.5 MiB of RSS in a daemon that refuses even ssl to keep within its
  budget (cli/verbs.py import_daemon).

What is written is held to the library all the same: the tests parse every
scrape with prometheus_client's own parser and run ``promtool check metrics``
on it. The daemon's process metrics are ProcessCollector's, under the same
names (``supervise_process_*``), read from /proc the same way. Names and
labels are listed in docs/protocol.md; no label takes an unbounded value
(instances are named by app and index, bounded by the config, never by pid).
"""

from __future__ import annotations

import asyncio
import bisect
import os
import resource
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any

import supervise
from supervise.config.units import Invalid, TcpAddress, parse_listen_address
from supervise.core.instance import ExitReason, State
from supervise.core.rollout import RolloutState
from supervise.frozen import frozen
from supervise.runtime.http import Request, Response
from supervise.wire.protocol import VERBS

__all__ = ["CONTENT_TYPE", "Histogram", "LagProbe", "Metrics", "Source", "host_port"]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
"""The text format every Prometheus (and promtool) reads."""

LAG_INTERVAL = 1.0
"""Seconds between two probes of the loop's lag."""

LAG_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
WRITE_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)

STATES = tuple(str(state) for state in State)
REASONS = tuple(str(reason) for reason in ExitReason)
ROLLOUT_STATES = tuple(str(state) for state in RolloutState)
HEARTBEAT_RESULTS = (("accepted", "accepted"), ("rejected", "rejected"), ("malformed", "malformed"),
                     ("internal_errors", "internal_error"))
"""``daemon.heartbeats`` keys of ``status --json`` -> the ``result`` label."""

Listener = Callable[[dict[str, object], bytes], None]


def host_port(address: str) -> tuple[str, int]:
    """``"127.0.0.1:9750"`` or ``"[::1]:9750"`` (as the config loader checked it) -> what to bind."""
    parsed = parse_listen_address(address)
    if not isinstance(parsed, TcpAddress):
        raise Invalid(f"expected HOST:PORT, got {address!r}")
    return parsed.host, parsed.port


@frozen
class Source:
    """What the metrics read of the daemon: callables, called on the loop at each scrape."""

    status: Callable[[], Mapping[str, Any]]
    """The full ``status --json`` result: apps, instances, rollouts, and the ``daemon`` section."""
    subscribe: Callable[[Listener], None]
    """Called once: the listener is then called on the loop with every published event."""
    draining: Callable[[], bool] = lambda: False
    """The daemon is shutting down (SIGTERM, ``supervise shutdown``)."""
    control_requests: Callable[[], Mapping[str, int]] = dict
    """Valid control requests by command, since the daemon started."""
    cluster: Callable[[], Mapping[str, Any] | None] = lambda: None
    """``status --cluster``'s result; None without ``[cluster]``."""


class Histogram:
    """Bucket counts, a sum and a count, as Prometheus' histograms want them."""

    def __init__(self, buckets: Sequence[float]) -> None:
        self.bounds = tuple(buckets)
        self.counts = [0] * (len(self.bounds) + 1)  # the last one: above every bound (+Inf)
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.sum += value

    def text(self, name: str, doc: str) -> str:
        family = _Family(name, "histogram", doc)
        running = 0
        for bound, count in zip((*map(repr, self.bounds), "+Inf"), self.counts, strict=True):
            running += count
            family.lines.append(f'{name}_bucket{{le="{bound}"}} {running}\n')
        family.lines.append(f"{name}_sum {_number(self.sum)}\n{name}_count {running}\n")
        return family.text()


class LagProbe:
    """How late the loop runs a timer: a callback due every `interval` seconds notes by how much it
    came late. A loop busy with a callback (a status of many instances, a burst of exits) or not
    scheduled at all (a loaded host, swap, a VM pause) shows here before it shows anywhere else."""

    def __init__(self, loop: asyncio.AbstractEventLoop, interval: float = LAG_INTERVAL) -> None:
        self.loop, self.interval = loop, interval
        self.histogram = Histogram(LAG_BUCKETS)
        self.max = 0.0  # the largest lag since the last scrape took it
        self._due = loop.time() + interval
        self._timer: asyncio.TimerHandle | None = loop.call_at(self._due, self._tick)

    def _tick(self) -> None:
        now = self.loop.time()
        late = max(0.0, now - self._due)  # asyncio may run a timer up to its clock resolution early
        self.histogram.observe(late)
        self.max = max(self.max, late)
        self._due = now + self.interval
        self._timer = self.loop.call_at(self._due, self._tick)

    def take_max(self) -> float:
        """The largest lag since the last call (each scrape takes it: a gauge of the scrape interval)."""
        value, self.max = self.max, 0.0
        return value

    def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None


class Metrics:
    """The ``/metrics`` handler and the counters behind it; on the loop."""

    def __init__(self, loop: asyncio.AbstractEventLoop, source: Source) -> None:
        self.source = source
        self.restarts: Counter[tuple[str, str]] = Counter()  # (app, reason) -> restarts that followed
        self.exits: Counter[tuple[str, str]] = Counter()  # (app, reason) -> processes that ended
        self._waiting: dict[str, str] = {}  # instance in backoff or failed -> the reason of its exit
        self.lag = LagProbe(loop)
        self.checkpoint_writes = Histogram(WRITE_BUCKETS)
        self.checkpoint_errors = 0
        self.process = ProcessStats()
        source.subscribe(self.on_event)

    def close(self) -> None:
        self.lag.stop()

    # -- what is counted here ------------------------------------------------------------------

    def on_event(self, event: dict[str, object], stamped: bytes) -> None:
        """Every published event: exits, and the restarts that follow them.

        A restart is what the core counts as one (an instance's ``restarts``):
        a spawn after a run, at once (the exit's state event goes to
        ``starting``) or after backoff or a crash-loop cooldown (``backoff`` or
        ``failed`` to ``starting``, with the reason of the exit that led
        there), and a replacement taking over a slot (``replaced``: ``reload``
        or ``memory``). A first start, or a start after ``stopped``, is none.
        """
        kind = event.get("type")
        app = event.get("app")
        if not isinstance(app, str):
            return
        if kind == "state":
            name, to, exit_ = str(event.get("name")), event.get("to"), event.get("exit")
            reason = str(exit_.get("reason")) if isinstance(exit_, dict) else None
            if reason is not None:
                self.exits[app, reason] += 1
                if to in ("backoff", "failed"):
                    self._waiting[name] = reason
            if to == "starting" and event.get("from") != "stopped":
                reason = reason if reason is not None else self._waiting.pop(name, None)
                if reason is not None:  # None: adopted in backoff, its exit seen by an earlier daemon
                    self.restarts[app, reason] += 1
        elif kind == "replaced":
            self.restarts[app, str(event.get("reason"))] += 1
        elif kind == "removed":
            self._waiting.pop(str(event.get("name")), None)
        elif kind == "app" and event.get("event") == "removed":
            for counter in (self.restarts, self.exits):
                for key in [key for key in counter if key[0] == app]:
                    del counter[key]

    def checkpoint_written(self, seconds: float, ok: bool) -> None:
        """The Checkpointer's report of one write (temp file, fsync, rename, fsync of the directory)."""
        self.checkpoint_writes.observe(seconds)
        if not ok:
            self.checkpoint_errors += 1

    # -- the page ------------------------------------------------------------------------------

    def handle(self, request: Request) -> Response:
        return Response(200, self.render(), CONTENT_TYPE)

    def render(self) -> bytes:
        status = self.source.status()
        parts = list(_app_families(status.get("apps") or (), self.restarts, self.exits))
        parts += self._daemon_families(status.get("daemon") or {})
        cluster = self.source.cluster()
        if cluster is not None:
            parts += _cluster_families(cluster)
        return "".join(parts).encode()

    def _daemon_families(self, daemon: Mapping[str, Any]) -> Iterator[str]:
        yield from self.process.families()
        counts = daemon.get("heartbeats") or {}
        yield _labelled("supervise_heartbeat_messages_total", "counter",
                        "Heartbeat messages by what came of them: accepted, rejected (a wrong or stale token), "
                        "malformed, internal_error",
                        ((f'result="{result}"', counts.get(key, 0)) for key, result in HEARTBEAT_RESULTS))
        requests = self.source.control_requests()
        yield _labelled("supervise_control_requests_total", "counter", "Valid control requests by command",
                        ((f'command="{_label(c)}"', requests.get(c, 0)) for c in sorted(VERBS | set(requests))))
        yield _labelled("supervise_control_errors_total", "counter",
                        "Control requests that failed: malformed (the client's fault) or internal_error (the daemon's)",
                        (('kind="malformed"', daemon.get("control_malformed", 0)),
                         ('kind="internal_error"', daemon.get("control_internal_errors", 0))))
        yield self.checkpoint_writes.text("supervise_checkpoint_write_duration_seconds",
                                          "Time one write of the checkpoint took (temp file, fsync, rename)")
        yield _single("supervise_checkpoint_write_errors_total", "counter", "Writes of the checkpoint that failed",
                      self.checkpoint_errors)
        checkpoint = daemon.get("checkpoint") or {}
        yield _single("supervise_checkpoint_failing", "gauge", "1 while the checkpoint cannot be written",
                      0 if checkpoint.get("ok", True) else 1)
        yield self.lag.histogram.text("supervise_loop_lag_seconds",
                                      "How late the daemon's event loop ran a timer due every second")
        yield _single("supervise_loop_lag_max_seconds", "gauge", "The largest loop lag since the previous scrape",
                      self.lag.take_max())
        yield _single("supervise_daemon_draining", "gauge", "1 once the daemon is shutting down",
                      1 if self.source.draining() else 0)
        yield _labelled("supervise_daemon_info", "gauge",
                        "The daemon's version, and how it counts instances' memory (cgroup, pss or rss-sum)",
                        [(f'version="{_label(supervise.__version__)}",'
                          f'memory_measure="{_label(str(daemon.get("memory_measure", "")))}"', 1)])


class ProcessStats:
    """The daemon's own process, as prometheus_client's ProcessCollector reports one (same names, same
    sources: /proc/self/stat, the descriptor table, RLIMIT_NOFILE)."""

    def __init__(self) -> None:
        self.ticks = os.sysconf("SC_CLK_TCK")
        self.page = resource.getpagesize()
        self.boot = _boot_time()

    def families(self) -> Iterator[str]:
        try:
            with open("/proc/self/stat", "rb") as f:
                fields = f.read().rsplit(b")", 1)[1].split()  # after the command name, which may hold spaces
        except OSError:
            return
        # fields[0] is field 3 of proc(5): utime 14, stime 15, starttime 22, vsize 23, rss 24
        yield _single("supervise_process_cpu_seconds_total", "counter",
                      "Total user and system CPU time spent in seconds.",
                      (int(fields[11]) + int(fields[12])) / self.ticks)
        yield _single("supervise_process_virtual_memory_bytes", "gauge", "Virtual memory size in bytes.",
                      int(fields[20]))
        yield _single("supervise_process_resident_memory_bytes", "gauge", "Resident memory size in bytes.",
                      int(fields[21]) * self.page)
        if self.boot is not None:
            yield _single("supervise_process_start_time_seconds", "gauge",
                          "Start time of the process since unix epoch in seconds.",
                          self.boot + int(fields[19]) / self.ticks)
        try:
            yield _single("supervise_process_open_fds", "gauge", "Number of open file descriptors.",
                          len(os.listdir("/proc/self/fd")) - 1)  # less the one listdir itself holds open
        except OSError:
            pass
        yield _single("supervise_process_max_fds", "gauge", "Maximum number of open file descriptors.",
                      resource.getrlimit(resource.RLIMIT_NOFILE)[0])


def _boot_time() -> float | None:
    try:
        with open("/proc/stat", "rb") as f:
            for line in f:
                if line.startswith(b"btime "):
                    return float(line.split()[1])
    except OSError:
        pass
    return None


# -- writing ----------------------------------------------------------------------------------------


class _Family:
    """One family's header and sample lines, in the text format."""

    __slots__ = ("head", "lines", "name")

    def __init__(self, name: str, kind: str, doc: str) -> None:
        self.name = name
        self.head = f"# HELP {name} {doc}\n# TYPE {name} {kind}\n"
        self.lines: list[str] = []

    def add(self, labels: str, value: object) -> None:
        self.lines.append(f"{self.name}{{{labels}}} {_number(value)}\n")

    def text(self) -> str:
        return self.head + "".join(self.lines) if self.lines else ""


def _single(name: str, kind: str, doc: str, value: object) -> str:
    return f"# HELP {name} {doc}\n# TYPE {name} {kind}\n{name} {_number(value)}\n"


def _labelled(name: str, kind: str, doc: str, samples: Iterable[tuple[str, object]]) -> str:
    family = _Family(name, kind, doc)
    for labels, value in samples:
        family.add(labels, value)
    return family.text()


def _number(value: object) -> str:
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if value != value:
            return "NaN"
        if value in (float("inf"), float("-inf")):
            return "+Inf" if value > 0 else "-Inf"
        return repr(value)
    raise TypeError(f"not a number: {value!r}")


def _label(value: str) -> str:
    """A label value, escaped as the text format wants (app names cannot need it: the loader refuses them)."""
    return value.replace("\\", r"\\").replace('"', r"\"").replace("\n", r"\n")


# -- the families that grow with the instances ----------------------------------------------------


def _app_families(apps: Iterable[Mapping[str, Any]], restarts: Counter[tuple[str, str]],
                  exits: Counter[tuple[str, str]]) -> Iterator[str]:
    state = _Family("supervise_instance_state", "gauge",
                    "1 for the state the instance is in, 0 for the others (role: slot, or replacing: "
                    "starting beside a slot or draining after it)")
    restarts_each = _Family("supervise_instance_restarts_total", "counter",
                            "Restarts of the instance (its status' restarts)")
    started = _Family("supervise_instance_start_time_seconds", "gauge",
                      "When the instance's process was spawned, Unix time (uptime: time() minus this)")
    memory = _Family("supervise_instance_memory_bytes", "gauge",
                     "Memory of the instance's whole process tree (status' rss: see supervise_daemon_info's "
                     "memory_measure)")
    beat = _Family("supervise_instance_heartbeat_age_seconds", "gauge",
                   "Seconds since the instance's last valid heartbeat message")
    cpu = _Family("supervise_instance_cpu_seconds_total", "counter",
                  "CPU time of the instance's process tree, user and system")
    processes = _Family("supervise_instance_processes", "gauge", "Processes in the instance's tree")
    dropped = _Family("supervise_instance_log_dropped_lines_total", "counter",
                      "Lines of the instance's output the daemon could not write to its log file")
    desired = _Family("supervise_app_instances_desired", "gauge", "Instances the app is to have")
    ready = _Family("supervise_app_instances_ready", "gauge", "The app's instances that are running (ready)")
    census = _Family("supervise_app_instances", "gauge", "The app's instances in each state")
    generation = _Family("supervise_app_generation", "gauge", "The generation new instances of the app run")
    restarted = _Family("supervise_restarts_total", "counter",
                        "Restarts by app and the reason of the exit that caused them, since the daemon started")
    exited = _Family("supervise_exits_total", "counter",
                     "Instance processes that ended, by app and reason, since the daemon started")
    rollout_state = _Family("supervise_rollout_state", "gauge",
                            "1 for the state of the app's last rollout, 0 for the others")
    rollout_done = _Family("supervise_rollout_replaced_instances", "gauge",
                           "Instances the app's last rollout has replaced")
    rollout_of = _Family("supervise_rollout_instances", "gauge", "Instances the app's last rollout replaces")
    rollout_generation = _Family("supervise_rollout_generation", "gauge", "The generation the last rollout rolls to")
    now = time.time()
    for app in apps:
        name = app["name"]
        a = f'app="{_label(name)}"'
        counts = dict.fromkeys(STATES, 0)
        instances = app.get("instances") or ()
        for role, rows in (("slot", [r for r in instances if r.get("role") != "spare"]),
                           ("spare", [r for r in instances if r.get("role") == "spare"]),
                           ("replacing", app.get("replacing") or ())):
            seen: set[object] = set()
            for row in rows:
                # A spare has no index: it goes by its number (``spare-0``, the end of its name).
                index = row["name"].rpartition(":")[2] if role == "spare" else row["index"]
                if index in seen:  # a successor and an old one still draining: the successor (first) speaks
                    continue
                seen.add(index)
                labels = f'{a},index="{index}",role="{role}"'
                current = row["state"]
                if role == "slot":
                    counts[current] = counts.get(current, 0) + 1
                state.lines.append("".join(
                    f'supervise_instance_state{{{labels},state="{s}"}} {1 if s == current else 0}\n' for s in STATES))
                restarts_each.add(labels, row["restarts"])
                uptime = row.get("uptime")
                if uptime is not None:
                    started.add(labels, round(now - uptime, 3))
                _maybe(memory, labels, row.get("rss"))
                _maybe(beat, labels, row.get("heartbeat_age"))
                _maybe(cpu, labels, row.get("cpu_seconds"))
                _maybe(processes, labels, row.get("processes"))
                _maybe(dropped, labels, row.get("log_dropped"))
        desired.add(a, app["target"])
        ready.add(a, counts["running"])
        for s, count in counts.items():
            census.add(f'{a},state="{_label(s)}"', count)
        generation.add(a, app["generation"])
        for reason in _reasons(name, restarts, exits):
            restarted.add(f'{a},reason="{_label(reason)}"', restarts.get((name, reason), 0))
            exited.add(f'{a},reason="{_label(reason)}"', exits.get((name, reason), 0))
        rollout = app.get("rollout")
        if rollout:
            for s in ROLLOUT_STATES:
                rollout_state.add(f'{a},state="{s}"', 1 if rollout["state"] == s else 0)
            rollout_done.add(a, rollout["replaced"])
            rollout_of.add(a, rollout["total"])
            rollout_generation.add(a, rollout["generation"])
    for family in (state, restarts_each, started, memory, beat, cpu, processes, dropped, desired, ready, census,
                   generation, restarted, exited, rollout_state, rollout_done, rollout_of, rollout_generation):
        yield family.text()


def _maybe(family: _Family, labels: str, value: object) -> None:
    """A sample when the status has the field (None: no process, not sampled yet, not reported)."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        family.add(labels, value)


def _reasons(app: str, *counters: Counter[tuple[str, str]]) -> list[str]:
    """Every exit reason (at 0 until one happens: rate() needs the series before its first increment)."""
    extra = {reason for counter in counters for a, reason in counter if a == app and reason not in REASONS}
    return [*REASONS, *sorted(extra)]


# -- cluster mode ---------------------------------------------------------------------------------


def _cluster_families(cluster: Mapping[str, Any]) -> Iterator[str]:
    me = str(cluster.get("node"))
    yield _labelled("supervise_cluster_info", "gauge", "The cluster this daemon is in, and its node's name",
                    [(f'cluster="{_label(str(cluster.get("cluster")))}",node="{_label(me)}"', 1)])
    yield _single("supervise_cluster_connected", "gauge", "1 while etcd answers this node",
                  1 if cluster.get("connected") else 0)
    yield _single("supervise_cluster_leader", "gauge", "1 while this node is the cluster's leader",
                  1 if cluster.get("leader") == me else 0)
    nodes = cluster.get("nodes") or ()
    for key, name, doc in (
        ("alive", "supervise_cluster_node_up", "1 for a node whose lease is alive, 0 for one lost while slots name it"),
        ("leader", "supervise_cluster_node_leader", "1 for the leader's node"),
        ("cordoned", "supervise_cluster_node_cordoned", "1 for a cordoned node (drained, or being drained)"),
        ("instances", "supervise_cluster_node_instances", "Cluster instances placed on the node"),
    ):
        yield _labelled(name, "gauge", doc, ((f'node="{_label(str(n.get("name")))}"', _count(n.get(key)))
                                             for n in nodes))
    yield _single("supervise_cluster_pending_instances", "gauge", "Cluster slots placed on no node yet",
                  len(cluster.get("pending") or ()))


def _count(value: object) -> int | float:
    return value if isinstance(value, int | float) else 0
