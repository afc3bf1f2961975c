#!/usr/bin/env python3
"""Cluster mode under failures: how fast work moves, and that a singleton never runs twice.

    python3 benchmarks/cluster.py                       # every figure, 20 trials each
    python3 benchmarks/cluster.py --trials 3 --idle 20  # a smoke check
    python3 benchmarks/cluster.py --only node-kill,partition --trials 30
    python3 benchmarks/cluster.py --only idle --idle 600   # "no growth over 10 min"

One single-member etcd (so no etcd leader election is ever involved) and
three real ``supervise run`` daemons (tests/cluster/nodes.py), each reaching
etcd through a TcpProxy of its own (tests/cluster/etcdtools.py) so that any
one of them can be cut off. Apps: ``web`` (6 instances, placement "cluster")
and ``lock`` (a singleton), both run by tests/cluster/workers/activity.py,
which appends ``time.monotonic()`` every 5 ms to its own file (first line
``token T node N``). CLOCK_MONOTONIC is system-wide, so those ticks compare
with this script's clock: "running" is a process's first tick, "stopped" its
last. The etcd, the nodes and the activity files are reused across trials; a
killed node comes back under its name with a fresh state dir.

Figures (each trial waits for the cluster to settle first: every node
alive, a leader, every instance assigned, running once and reported):

node-kill    SIGKILL of a non-leader node (daemon and its workers) -> the
             first tick of the replacement of each of its instances on the
             survivors; the figure is the time until ALL of them run.
             Target: median <= lease_ttl + 1 s (max shown).
leader-kill  SIGKILL of the leader node -> a new leader's key in etcd
             (election; target: median <= lease_ttl + 0.5 s) and -> all the
             old leader's instances running elsewhere (the new leader acting).
partition    the singleton's node cut off from etcd (its proxy blackholes) ->
             the singleton's first tick elsewhere; the OVERLAP of the old and
             the new process (old last tick - new first tick; "old" is every
             singleton process the harmed node ran from the harm on, in case its
             daemon restarted one in place) must be <= 0 in every trial (the
             max over trials is shown), and the gap.
pause        the same with the singleton's daemon SIGSTOPped (its worker
             fences itself at its deadline; the daemon is SIGCONTed after).
tokens       the fencing tokens of every singleton process of the whole run,
             in order of start (from the activity files): a process on another
             node must have a larger token; violations must be 0 (and no
             process may overlap any started before it). Tops up
             with singleton-node kills until >= --trials failovers were seen.
etcd-down    etcd SIGKILLed for --outage seconds (30), then started again on
             its data: restarts and re-placements of the non-singleton
             instances, during the outage and after it (pids, nodes and
             restart counts compared through `status --json`); target 0 and 0.
             One trial (an outage is long and the answer is a count).
placement    benchmarks/placement.figures(): place() for 1,000 instances over
             20 nodes (pure function), target < 50 ms.
idle         etcd's own /metrics with 3 idle nodes: writes (proposals
             committed; puts, deletes, txns) and lease keep-alives per second
             per node, over --idle seconds in 1-minute windows (no growth).

The time figures (node-kill, leader-kill, partition, pause) are dominated by
the lease: etcd expires a lease TTL after the last keep-alive it received
(renewals every TTL/3, so TTL-TTL/3 .. TTL after the failure), checks for
expired leases every 0.5 s, then the leader re-places and the worker starts.
Each trial's line shows "lease gone" (the node's lease-bound key deleted) and
"placed" (the leader's write of the new assignment), both as seen by a watch
of this script on etcd, so that the parts can be told apart.

Everything started here (etcd, daemons and their workers, proxies) is killed
by pid at exit, whatever happens (Ctrl-C, SIGTERM, an error): try/finally and
atexit. Exit status: 0, 1 (a target missed or a measurement failed), 130
(interrupted).
"""

from __future__ import annotations

import argparse
import atexit
import base64
import contextlib
import http.client
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
for _path in (ROOT, ROOT / "tests", ROOT / "tests" / "cluster", HERE):
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

import placement as placement_bench  # noqa: E402  (benchmarks/placement.py)
import psutil  # noqa: E402
import pytest  # noqa: E402  (etcdtools' waits fail through pytest.fail: we catch its exception)
from etcdtools import EtcdServer, TcpProxy, gateway  # noqa: E402
from helpers import gone, kill_marked, wait_until  # noqa: E402
from nodes import Node  # noqa: E402
from nodes import placement as live_placement  # noqa: E402
from runner import handle_signals, verdict  # noqa: E402

FIGURES = ("placement", "idle", "node-kill", "leader-kill", "partition", "pause", "tokens", "etcd-down")
CLUSTER = "bench"
PREFIX = f"/supervise/{CLUSTER}/"
NAMES = ("n1", "n2", "n3")
WEB = 6
SINGLETON = "lock:0"
POLL = 0.01  # seconds between two looks at the activity files while waiting for a replacement

APPS = """
[apps.web]
command = {activity}
instances = 0
placement = "cluster"
readiness = "heartbeat"

[apps.lock]
command = {activity}
placement = "cluster"
singleton = true
readiness = "heartbeat"
stop_timeout = "5s"
"""

T = TypeVar("T")


class BenchError(Exception):
    """A measurement could not be made; the message says why."""


FAILED = (BenchError, AssertionError, subprocess.TimeoutExpired, pytest.fail.Exception)


def wait(predicate: Callable[[], T], timeout: float, what: str, interval: float = 0.05) -> T:
    """Poll until truthy (the tests' wait_until), failing the figure after timeout seconds."""
    return wait_until(predicate, timeout, interval=interval, message=what, error=BenchError)


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def unb64(text: str | None) -> str:
    return base64.b64decode(text or "").decode()


def prefix_end(prefix: str) -> str:
    return prefix[:-1] + chr(ord(prefix[-1]) + 1)


# -- what etcd holds ---------------------------------------------------------------------------


@dataclass
class Snapshot:
    """The cluster's keys, decoded: live nodes, leader, assignments, and what each node reports."""

    nodes: set[str] = field(default_factory=set)
    leader: str | None = None
    assign: dict[str, tuple[str, int, str | None]] = field(default_factory=dict)  # name -> (node, token, from)
    status: dict[str, dict[str, dict]] = field(default_factory=dict)  # node -> name -> report

    def on(self, node: str, app: str | None = None) -> list[str]:
        return sorted(n for n, (where, _, _) in self.assign.items()
                      if where == node and (app is None or n.startswith(app + ":")))

    def running(self, app: str) -> list[str]:
        """Instances of `app` some node still reports (in any state but stopped)."""
        return sorted(n for reports in self.status.values() for n, r in reports.items()
                      if n.startswith(app + ":") and r.get("state") != "stopped")


def read_snapshot(endpoint: str) -> Snapshot | None:
    """One range read of the prefix through the gateway (not our client); None while etcd does not answer."""
    try:
        data = gateway(endpoint, "/v3/kv/range", {"key": b64(PREFIX), "range_end": b64(prefix_end(PREFIX))})
    except (OSError, ValueError):
        return None
    snap = Snapshot()
    for kv in data.get("kvs") or []:
        key = unb64(kv["key"])[len(PREFIX):]
        try:
            body = json.loads(unb64(kv.get("value")))
        except ValueError:
            continue
        parts = key.split("/")
        if parts[0] == "nodes" and len(parts) == 2:
            snap.nodes.add(parts[1])
        elif parts == ["leader"]:
            snap.leader = body.get("node")
        elif parts[0] == "assign" and len(parts) == 3:
            token = body.get("token", int(kv.get("mod_revision", 0)))
            snap.assign[f"{parts[1]}:{parts[2]}"] = (body["node"], int(token), body.get("from"))
        elif parts[0] == "status" and len(parts) == 2:
            snap.status[parts[1]] = body.get("instances") or {}
    return snap


class Watcher:
    """A watch of the prefix through etcd's gateway, in a thread: each change stamped with time.monotonic()
    when it arrived here, so a trial can say when a lease was gone or a leader elected without polling."""

    def __init__(self, endpoint: str) -> None:
        url = urlsplit(endpoint)
        self.host, self.port = url.hostname or "127.0.0.1", url.port or 2379
        self.events: list[tuple[float, str, str, dict]] = []  # (at, "put"|"delete", key, value)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._conn: http.client.HTTPConnection | None = None
        self._revision = 0
        self._thread = threading.Thread(target=self._run, name="bench-watch", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self._stream()
            except (OSError, ValueError, http.client.HTTPException):
                pass
            self._stop.wait(0.1)

    def _stream(self) -> None:
        create: dict[str, Any] = {"key": b64(PREFIX), "range_end": b64(prefix_end(PREFIX))}
        if self._revision:
            create["start_revision"] = str(self._revision + 1)
        conn = http.client.HTTPConnection(self.host, self.port, timeout=2.0)
        self._conn = conn
        try:
            conn.request("POST", "/v3/watch", json.dumps({"create_request": create}),
                         {"Content-Type": "application/json"})
            response = conn.getresponse()
            if conn.sock is not None:
                conn.sock.settimeout(None)  # a watch is quiet for as long as nothing changes
            while not self._stop.is_set():
                line = response.readline()
                if not line:
                    return
                message = json.loads(line)
                result = message.get("result") or {}
                if result.get("compact_revision") and int(result["compact_revision"]) > 0:
                    self._revision = 0
                    return
                at = time.monotonic()
                for event in result.get("events") or []:
                    kv = event.get("kv") or {}
                    key = unb64(kv.get("key"))[len(PREFIX):]
                    kind = "delete" if event.get("type") == "DELETE" else "put"
                    try:
                        value = json.loads(unb64(kv.get("value"))) if kind == "put" else {}
                    except ValueError:
                        value = {}
                    self._revision = max(self._revision, int(kv.get("mod_revision", 0)))
                    with self._lock:
                        self.events.append((at, kind, key, value))
        finally:
            conn.close()

    def first(self, after: float, kind: str, key: str | Callable[[str, dict], bool]) -> float | None:
        """When the first change of that kind to key (or matching) arrived after `after`."""
        found = self.first_event(after, kind, key)
        return None if found is None else found[0]

    def first_event(self, after: float, kind: str,
                    key: str | Callable[[str, dict], bool]) -> tuple[float, dict] | None:
        """(arrival, value) of the first change of that kind to key (or matching) after `after`."""
        with self._lock:
            events = list(self.events)
        for at, k, name, value in events:
            if at < after or k != kind:
                continue
            if (name == key) if isinstance(key, str) else key(name, value):
                return at, value
        return None

    def close(self) -> None:
        self._stop.set()
        conn = self._conn
        if conn is not None and conn.sock is not None:
            with contextlib.suppress(OSError):
                conn.sock.shutdown(2)


def metrics(endpoint: str) -> dict[str, float]:
    """etcd's /metrics: the counters this script reads, summed over labels where it says so."""
    with urllib.request.urlopen(endpoint + "/metrics", timeout=5) as response:  # noqa: S310 (loopback)
        text = response.read().decode()
    wanted = {"etcd_server_proposals_committed_total", "etcd_mvcc_put_total", "etcd_mvcc_delete_total",
              "etcd_mvcc_txn_total", "etcd_mvcc_range_total", "etcd_debugging_lease_renewed_total",
              "etcd_debugging_lease_granted_total", "etcd_debugging_server_lease_expired_total"}
    out: dict[str, float] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        name, _, value = line.rpartition(" ")
        base = name.split("{")[0]
        if base in wanted:
            out[base] = out.get(base, 0.0) + float(value)
        elif base == "grpc_server_msg_received_total":
            method = name.split('grpc_method="')[1].split('"')[0]
            out[f"grpc:{method}"] = out.get(f"grpc:{method}", 0.0) + float(value)
    return out


# -- the workers' own record -----------------------------------------------------------------------


@dataclass(frozen=True)
class Run:
    """One process of an instance, from its activity file."""

    path: Path
    pid: int
    token: int | None
    node: str
    first: float  # its first tick: from here it provably ran


class Activity:
    """The activity files of every worker; heads are read once, tails on demand."""

    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self._heads: dict[str, Run] = {}

    def runs(self, instance: str) -> list[Run]:
        """Every process of `instance` that has ticked at least once, by first tick."""
        stem = instance.replace(":", "-") + "."
        found = []
        with os.scandir(self.dir) as entries:
            for entry in entries:
                if not entry.name.startswith(stem) or not entry.name.endswith(".log"):
                    continue
                run = self._heads.get(entry.name)
                if run is None:
                    run = self._head(Path(entry.path))
                    if run is None:
                        continue
                    self._heads[entry.name] = run
                found.append(run)
        return sorted(found, key=lambda r: r.first)

    @staticmethod
    def _head(path: Path) -> Run | None:
        with open(path, "rb") as f:
            data = f.read(256)
        lines = data.split(b"\n")
        if len(lines) < 3:  # the header and one complete tick
            return None
        head = lines[0].decode().split()
        try:
            token = int(head[1])
        except ValueError:
            token = None
        return Run(path, int(path.name.split(".")[-2]), token, head[3], float(lines[1]))

    @staticmethod
    def last(run: Run) -> float:
        """Its last complete tick (read once the process is gone)."""
        with open(run.path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - 512))
            lines = f.read().split(b"\n")
        for line in reversed(lines[:-1] if not lines[-1] else lines):
            try:
                return float(line)
            except ValueError:
                continue
        return run.first


# -- statistics and the table ----------------------------------------------------------------------


def stats(values: list[float]) -> tuple[float, float, float]:
    return statistics.median(values), min(values), max(values)


def sec(value: float) -> str:
    return f"{value:.3f} s"


def msec(value: float) -> str:
    return f"{value * 1000:+.1f} ms"


@dataclass
class Row:
    figure: str
    measures: str
    median: str
    low: str
    high: str
    target: str
    ok: bool | None


def print_table(rows: list[Row]) -> None:
    cells = [("figure", "measures", "median", "min", "max", "target", "result")]
    cells += [(r.figure, r.measures, r.median, r.low, r.high, r.target, "" if r.ok is None else verdict(r.ok))
              for r in rows]
    widths = [max(len(c[i]) for c in cells) for i in range(7)]
    print()
    for i, c in enumerate(cells):
        print("  ".join(c[j].ljust(widths[j]) for j in range(7)).rstrip())
        if i == 0:
            print("  ".join("-" * w for w in widths))


# -- the cluster under test ------------------------------------------------------------------------


class Bench:
    """One etcd, a proxy per node name, the live node of each name, and every process ever started."""

    def __init__(self, args: argparse.Namespace, workdir: Path) -> None:
        self.args = args
        self.dir = workdir
        self.ttl = args.ttl
        self.activity = Activity(workdir / "activity")
        self.activity.dir.mkdir()
        self.pycache = workdir / "pycache"
        self.etcd = EtcdServer(workdir / "etcd")
        self.proxies: dict[str, TcpProxy] = {}
        self.nodes: dict[str, Node] = {}
        self.made: list[Node] = []  # every node ever started, for cleanup
        self.watcher: Watcher | None = None
        self.rows: list[Row] = []
        self.raw: dict[str, Any] = {}
        self.failed: list[str] = []
        self._generation = 0
        self._cleaned = False

    # -- processes ----------------------------------------------------------------------------

    def env(self) -> dict[str, str]:
        """Bytecode cached in the work dir (an installed package has its bytecode; this checkout
        runs with PYTHONDONTWRITEBYTECODE=1 and would recompile supervise in every process)."""
        env = dict(os.environ, PYTHONPYCACHEPREFIX=str(self.pycache))
        env.pop("PYTHONDONTWRITEBYTECODE", None)
        return env

    def start(self) -> None:
        self.say(f"warming up the bytecode cache in {self.pycache}")
        for argv in ([sys.executable, "-c", "import supervise.cli, supervise.runtime.daemon, supervise.worker, "
                      "supervise.cluster.agent, zmq, psutil, structlog"],
                     [sys.executable, "-m", "supervise", "--help"]):
            subprocess.run(argv, stdout=subprocess.DEVNULL, env=self.env(), cwd=self.dir, check=True, timeout=120)
        began = time.monotonic()
        self.etcd.start()
        self.say(f"etcd {self.etcd.endpoint} ready in {time.monotonic() - began:.2f} s "
                 f"(one member: no etcd leader change in any figure)")
        self.watcher = Watcher(self.etcd.endpoint)
        host, port = urlsplit(self.etcd.endpoint).hostname, urlsplit(self.etcd.endpoint).port
        for name in NAMES:
            self.proxies[name] = TcpProxy(host or "127.0.0.1", port or 2379)
        for name in NAMES:
            self.start_node(name)
        wait(lambda: (s := self.snapshot()) and s.nodes == set(NAMES), 30, "every node alive")
        self.cli("scale", "web", str(WEB))
        self.settle()
        self.say(f"3 nodes (lease_ttl {self.ttl} s) each through its own proxy; {WEB} web instances and the "
                 f"singleton {SINGLETON} running")

    def start_node(self, name: str) -> Node:
        """A daemon under `name`, with a fresh state dir, started and answering its CLI."""
        self._generation += 1
        node = Node(self.dir / "nodes" / f"{name}.{self._generation}", name, [self.proxies[name].endpoint], APPS,
                    cluster=CLUSTER, lease_ttl=self.ttl, activity=self.activity.dir)
        node.config.write_text(node.config.read_text().replace('log_level = "debug"', 'log_level = "info"'))
        node.env.pop("PYTHONDONTWRITEBYTECODE", None)
        node.env["PYTHONPYCACHEPREFIX"] = str(self.pycache)
        self.made.append(node)
        self.nodes[name] = node
        node.start()
        return node

    def restart_node(self, name: str) -> None:
        """A killed node comes back (fresh state dir) and joins again."""
        self.start_node(name)
        wait(lambda: (s := self.snapshot()) and name in s.nodes, 30, f"{name} to join again")

    def kill_node(self, name: str) -> float:
        """SIGKILL the daemon, then every process it started; returns when the daemon was killed."""
        node = self.nodes[name]
        assert node.proc is not None
        try:
            doomed = psutil.Process(node.proc.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            doomed = []
        at = time.monotonic()
        node.proc.kill()
        for proc in doomed:
            with contextlib.suppress(psutil.NoSuchProcess):
                proc.kill()
        node.proc.wait()
        psutil.wait_procs(doomed, timeout=5)
        return at

    def cleanup(self) -> None:
        """Kill everything started, by pid: daemons (SIGCONT first: a paused one), then whatever
        carries a node's marker (its workers), the proxies, etcd. Idempotent; also run at exit."""
        if self._cleaned:
            return
        self._cleaned = True
        left: list[int] = []
        for node in self.made:
            if node.proc is not None and node.proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(node.proc.pid, signal.SIGCONT)
                node.proc.kill()
                with contextlib.suppress(subprocess.TimeoutExpired):
                    node.proc.wait(10)
        for node in self.made:
            left += kill_marked(node.marker)
        if self.watcher is not None:
            self.watcher.close()
        for proxy in self.proxies.values():
            proxy.close()
        self.etcd.stop()
        if left:
            print(f"cleanup: the daemons were SIGKILLed, then their {len(left)} workers by marker", file=sys.stderr)

    # -- views ----------------------------------------------------------------------------------

    def snapshot(self) -> Snapshot | None:
        return read_snapshot(self.etcd.endpoint)

    def live(self) -> list[Node]:
        return [n for n in self.nodes.values() if n.proc is not None and n.proc.poll() is None]

    def cli(self, *args: str) -> str:
        """A CLI command on the first live node; fails the figure if it fails."""
        node = self.live()[0]
        result = node.cli(*args)
        if result.returncode != 0:
            raise BenchError(f"`supervise {' '.join(args)}` on {node.name}: {result.stderr.strip()}")
        return result.stdout

    def expected(self) -> set[str]:
        return {f"web:{i}" for i in range(WEB)} | {SINGLETON}

    def settled(self) -> Snapshot | None:
        """etcd says: every node alive, a leader, every instance assigned to a live node (no handoff)
        and reported running and ready by that node, and no node reports one placed elsewhere."""
        snap = self.snapshot()
        if snap is None or snap.nodes != set(NAMES) or snap.leader not in snap.nodes:
            return None
        if set(snap.assign) != self.expected():
            return None
        for name, (node, _, handoff) in snap.assign.items():
            report = snap.status.get(node, {}).get(name)
            if handoff is not None or report is None or report.get("state") != "running" or not report.get("ready"):
                return None
        for node, reports in snap.status.items():
            for name, report in reports.items():
                if snap.assign.get(name, ("",))[0] != node and report.get("state") not in (None, "stopped"):
                    return None
        return snap

    def settle(self, timeout: float = 90.0) -> Snapshot:
        """Wait for a settled cluster (etcd's view), then check it against the daemons themselves."""
        def agreed() -> Snapshot | None:
            snap = self.settled()
            if snap is None:
                return None
            try:
                where = live_placement(self.live())
            except AssertionError:  # an instance on two nodes: a stale copy still stopping
                return None
            want = {name: node for name, (node, _, _) in snap.assign.items()}
            return snap if where == want else None
        snap: Snapshot | None = wait(agreed, timeout, "the cluster to settle (every instance running once where "
                                     "etcd says)", interval=0.1)
        assert snap is not None
        return snap

    def rebalance(self) -> Snapshot:
        """web scaled to 0 and back: spread evenly again (a node that came back holds nothing)."""
        self.say("  (rebalancing: web scaled to 0 and back, so that the node to be harmed holds instances)")
        self.cli("scale", "web", "0")
        wait(lambda: (s := self.snapshot()) and not any(n.startswith("web:") for n in s.assign)
             and not s.running("web"), 30, "web scaled to 0")
        self.cli("scale", "web", str(WEB))
        return self.settle()

    def say(self, text: str) -> None:
        print(text, flush=True)

    def add(self, figure: str, measures: str, values: list[float] | None, target: str, ok: bool | None,
            fmt: Callable[[float], str] = sec, median_text: str | None = None) -> None:
        if values:
            mid, low, high = stats(values)
            self.rows.append(Row(figure, measures, median_text or fmt(mid), fmt(low), fmt(high), target, ok))
        else:
            self.rows.append(Row(figure, measures, median_text or "-", "-", "-", target, ok))


# -- failover: waiting for the replacements ----------------------------------------------------------


def replacements(b: Bench, lost: Iterable[str], away_from: str, since: float, timeout: float,
                 before: dict[str, set[Path]]) -> dict[str, Run]:
    """For each lost instance, its first process started on another node after `since`."""
    lost = list(lost)
    found: dict[str, Run] = {}
    deadline = time.monotonic() + timeout
    while True:
        for name in lost:
            if name in found:
                continue
            fresh = [r for r in b.activity.runs(name) if r.path not in before[name] and r.node != away_from]
            if fresh:
                found[name] = fresh[0]
        if len(found) == len(lost):
            return found
        if time.monotonic() > deadline:
            missing = sorted(set(lost) - set(found))
            raise BenchError(f"timed out after {timeout:g}s waiting for {missing} to run off {away_from}")
        time.sleep(POLL)


def placed_at(b: Bench, since: float, names: Iterable[str], away_from: str) -> float | None:
    """When the watch saw the last of `names` assigned to another node (the leader's write), or None."""
    assert b.watcher is not None
    times = []
    for name in names:
        app, index = name.split(":")
        key = f"assign/{app}/{index}"

        def moved(k: str, v: dict, key: str = key) -> bool:
            return k == key and v.get("node") != away_from
        at = b.watcher.first(since, "put", moved)
        if at is None:
            return None
        times.append(at)
    return max(times) - since


def opt(value: float | None) -> str:
    return "?" if value is None else sec(value)


def files_of(b: Bench, names: Iterable[str]) -> dict[str, set[Path]]:
    return {name: {r.path for r in b.activity.runs(name)} for name in names}


def pick(snap: Snapshot, candidates: list[str]) -> str:
    """The candidate holding the most instances."""
    return max(candidates, key=lambda n: (len(snap.on(n)), n))


def node_kill(b: Bench) -> None:
    ttl, target = b.ttl, b.ttl + 1.0
    b.say(f"\n[node-kill] SIGKILL of a non-leader node -> all its instances running on the survivors "
          f"(first tick of each replacement); target: median <= {target:g} s")
    alls, firsts, gones, moved = [], [], [], []
    for trial in range(1, b.args.trials + 1):
        snap = b.settle()
        victim = pick(snap, [n for n in NAMES if n != snap.leader])
        if len(snap.on(victim, "web")) < 2:
            snap = b.rebalance()
            victim = pick(snap, [n for n in NAMES if n != snap.leader])
        lost = snap.on(victim)
        before = files_of(b, lost)
        at = b.kill_node(victim)
        found = replacements(b, lost, victim, at, ttl * 3 + 20, before)
        times = [found[n].first - at for n in lost]
        gone_at = b.watcher.first(at, "delete", f"nodes/{victim}")  # type: ignore[union-attr]
        placed = placed_at(b, at, lost, victim)
        alls.append(max(times))
        firsts.append(min(times))
        moved.append(len(lost))
        if gone_at is not None:
            gones.append(gone_at - at)
        b.say(f"  trial {trial:2}: killed {victim} ({len(lost)} instances: {', '.join(lost)}); lease gone "
              f"{'?' if gone_at is None else sec(gone_at - at)}, all placed {opt(placed)}, first running "
              f"{sec(min(times))}, all running {sec(max(times))}")
        b.restart_node(victim)
    b.raw["node-kill"] = {"all": alls, "first": firsts, "lease_gone": gones, "moved": moved}
    mid, _, high = stats(alls)
    b.add("node-kill", "kill -> ALL its instances running elsewhere", alls,
          f"median <= {target:g} s", mid <= target)
    b.add("node-kill", "  kill -> lease gone (etcd deleted its key)", gones, "(info)", None)
    b.add("node-kill", "  kill -> first instance running elsewhere", firsts, "(info)", None)
    b.say(f"  node-kill: median {sec(mid)}, max {sec(high)} (target {target:g} s: median {verdict(mid <= target)}, "
          f"max {verdict(high <= target)}); {statistics.mean(moved):.1f} instances moved per trial")


def leader_kill(b: Bench) -> None:
    ttl = b.ttl
    target = ttl + 0.5
    b.say(f"\n[leader-kill] SIGKILL of the leader node -> a new leader elected (its key in etcd; target: "
          f"median <= {target:g} s) and the old leader's instances running elsewhere (the new leader acting)")
    elections, actings, placed, gones = [], [], [], []
    for trial in range(1, b.args.trials + 1):
        snap = b.settle()
        victim = snap.leader
        assert victim is not None
        if len(snap.on(victim, "web")) < 2:
            snap = b.rebalance()
            victim = snap.leader
            assert victim is not None
        lost = snap.on(victim)
        before = files_of(b, lost)
        at = b.kill_node(victim)
        found = replacements(b, lost, victim, at, ttl * 3 + 20, before)
        watcher = b.watcher
        assert watcher is not None
        def new_leader(w: Watcher = watcher, t: float = at, old: str = victim) -> tuple[float, dict] | None:
            return w.first_event(t, "put", lambda k, v: k == "leader" and v.get("node") != old)
        found_leader = wait(new_leader, ttl * 3 + 20, "a new leader", interval=POLL)
        assert found_leader is not None
        elected, value = found_leader
        new = value.get("node")
        gone_at = watcher.first(at, "delete", f"nodes/{victim}")
        assigned = placed_at(b, at, lost, victim)
        all_running = max(found[n].first for n in lost) - at
        elections.append(elected - at)
        placed.append(all_running)
        actings.append(max(elected - at, all_running))
        if gone_at is not None:
            gones.append(gone_at - at)
        b.say(f"  trial {trial:2}: killed leader {victim} ({len(lost)} instances); lease gone "
              f"{'?' if gone_at is None else sec(gone_at - at)}, {new} elected {sec(elected - at)}, "
              f"all placed {opt(assigned)}, all running {sec(all_running)}")
        b.restart_node(victim)
    b.raw["leader-kill"] = {"elected": elections, "all_running": placed, "lease_gone": gones}
    mid, _, high = stats(elections)
    b.add("leader-kill", "kill -> new leader elected", elections, f"median <= {target:g} s", mid <= target)
    b.add("leader-kill", "kill -> new leader acting (all re-placed)", actings, "(info)", None)
    b.say(f"  leader-kill: election median {sec(mid)}, max {sec(high)} (target {target:g} s: median "
          f"{verdict(mid <= target)}, max {verdict(high <= target)}); acting median {sec(stats(actings)[0])}")


def singleton_failover(b: Bench, figure: str, harm: Callable[[str], float], heal: Callable[[str], None]) -> None:
    """Harm the singleton's node; the overlap is that of EVERY singleton process the harmed node ran from
    the harm on (the daemon may restart one in place meanwhile) with the new one elsewhere."""
    ttl = b.ttl
    replaced, overlaps, fences, in_place = [], [], [], []
    for trial in range(1, b.args.trials + 1):
        snap = b.settle()
        holder = snap.assign[SINGLETON][0]
        current = [r for r in b.activity.runs(SINGLETON) if r.node == holder]
        if not current:
            raise BenchError(f"no activity file of {SINGLETON} on {holder}")
        old = current[-1]
        before = files_of(b, [SINGLETON])
        was_leader = holder == snap.leader

        def stale(h: str = holder, o: Run = old) -> list[Run]:
            """The singleton processes of the harmed node: the one running at the harm and any restarted."""
            return [r for r in b.activity.runs(SINGLETON) if r.node == h and r.first >= o.first]

        at = harm(holder)
        try:
            new = replacements(b, [SINGLETON], holder, at, ttl * 3 + 20, before)[SINGLETON]
            # Once the slot runs elsewhere the harmed daemon is past its fence deadline: it starts no
            # singleton any more, so these are all the processes it ran.
            wait(lambda: all(gone(r.pid) for r in stale()), ttl * 3 + 20,
                 f"every {SINGLETON} process on {holder} to be gone")
        finally:
            heal(holder)
        runs = stale()
        last = max(Activity.last(r) for r in runs)
        overlap = last - new.first
        gone_at = b.watcher.first(at, "delete", f"nodes/{holder}")  # type: ignore[union-attr]
        assigned = placed_at(b, at, [SINGLETON], holder)
        replaced.append(new.first - at)
        overlaps.append(overlap)
        fences.append(last - at)
        in_place.append(len(runs) - 1)
        again = f" (+{len(runs) - 1} restarted in place, pids {[r.pid for r in runs]})" if len(runs) > 1 else ""
        b.say(f"  trial {trial:2}: {holder}{' (leader)' if was_leader else ''} (its {SINGLETON} up "
              f"{sec(at - old.first)}): last tick there {sec(last - at)}{again}, lease gone "
              f"{opt(None if gone_at is None else gone_at - at)}, placed {opt(assigned)}, running on {new.node} "
              f"{sec(new.first - at)}; overlap {msec(overlap)} (gap {msec(-overlap)}), token {old.token} -> "
              f"{new.token}")
        def rejoined(h: str = holder) -> bool:
            snap = b.snapshot()
            return snap is not None and h in snap.nodes
        wait(rejoined, ttl * 3 + 30, f"{holder} to rejoin")
    b.raw[figure] = {"replaced": replaced, "overlap": overlaps, "old_stopped": fences, "restarted_in_place": in_place}
    worst = max(overlaps)
    b.add(figure, "harm -> singleton running elsewhere", replaced, "(info)", None)
    b.add(figure, "  harm -> last singleton tick on harmed node", fences, "(info)", None)
    b.add(figure, "  OVERLAP old/new (max over trials)", overlaps, "max <= 0 ms", worst <= 0, fmt=msec,
          median_text=msec(statistics.median(overlaps)))
    b.add(figure, "  gap old last -> new first", [-o for o in overlaps], "(info)", None, fmt=msec)
    b.add(figure, "  restarted in place on the harmed node", None, "(info)", None,
          median_text=f"{sum(in_place)} in {sum(1 for n in in_place if n)} of {len(in_place)} trials")
    b.say(f"  {figure}: re-placed median {sec(statistics.median(replaced))}; overlap max {msec(worst)} "
          f"({verdict(worst <= 0)}), gap median {msec(-statistics.median(overlaps))}; {sum(in_place)} singleton "
          f"restarts in place on the harmed node")


def partition(b: Bench) -> None:
    b.say("\n[partition] the singleton's node cut off from etcd (its proxy blackholes both ways) -> the "
          "singleton running elsewhere; overlap of old and new process (target: <= 0 in every trial)")

    def cut(name: str) -> float:
        at = time.monotonic()
        b.proxies[name].cut("blackhole")
        return at

    singleton_failover(b, "partition", cut, lambda name: b.proxies[name].restore())


def pause(b: Bench) -> None:
    b.say("\n[pause] the singleton's daemon SIGSTOPped -> the singleton running elsewhere; overlap of old and "
          "new process (target: <= 0 in every trial); SIGCONT after")

    def stop(name: str) -> float:
        at = time.monotonic()
        b.nodes[name].pause()
        return at

    singleton_failover(b, "pause", stop, lambda name: b.nodes[name].resume())


def token_check(b: Bench) -> tuple[int, int, int, float, list[str]]:
    """Over every process of the singleton so far: (failovers, violations, resumed in place, max overlap)."""
    runs = b.activity.runs(SINGLETON)
    failovers = violations = resumed = 0
    worst = float("-inf")
    bad: list[str] = []
    latest = float("-inf")  # the last tick of every process started before this one
    for before, after in zip(runs, runs[1:], strict=False):
        latest = max(latest, Activity.last(before))
        worst = max(worst, latest - after.first)
        if after.node != before.node:
            failovers += 1
        if before.token is None or after.token is None:
            violations += 1
            bad.append(f"no token: pid {before.pid} / {after.pid}")
        elif after.token > before.token:
            continue
        elif after.token == before.token and after.node == before.node:
            resumed += 1  # the same placement, started again on its node after a fence
        else:
            violations += 1
            bad.append(f"token {before.token} on {before.node} (pid {before.pid}) then {after.token} on "
                       f"{after.node} (pid {after.pid})")
    return failovers, violations, resumed, worst, bad


def tokens(b: Bench) -> None:
    want = max(b.args.trials, 20)
    b.say(f"\n[tokens] fencing tokens of every {SINGLETON} process of this run, in order of start: another "
          f"node's must be larger (target: 0 violations over >= {want} failovers)")
    failovers = token_check(b)[0]
    extra = 0
    while failovers < want:
        snap = b.settle()
        holder = snap.assign[SINGLETON][0]
        before = files_of(b, [SINGLETON])
        at = b.kill_node(holder)
        new = replacements(b, [SINGLETON], holder, at, b.ttl * 3 + 20, before)[SINGLETON]
        extra += 1
        b.say(f"  extra failover {extra}: killed {holder}, {SINGLETON} on {new.node} after {sec(new.first - at)}")
        b.restart_node(holder)
        failovers = token_check(b)[0]
    failovers, violations, resumed, worst, bad = token_check(b)
    runs = b.activity.runs(SINGLETON)
    for line in bad[:10]:
        b.say(f"  VIOLATION: {line}")
    b.say(f"  {len(runs)} processes, {failovers} failovers to another node ({extra} made here), {resumed} restarts "
          f"in place with the same token, {violations} violations; tokens {[r.token for r in runs][:60]}")
    b.say(f"  over the whole run: the largest overlap of a {SINGLETON} process with any started before it is "
          f"{msec(worst)}")
    b.raw["tokens"] = {"tokens": [(r.token, r.node, r.first) for r in runs], "violations": violations,
                       "failovers": failovers, "max_overlap": worst}
    b.add("tokens", f"token violations over {failovers} failovers", None, "0", violations == 0,
          median_text=str(violations))
    b.add("tokens", "  max overlap, all singleton processes", None, "<= 0 ms", worst <= 0,
          median_text=msec(worst))


def web_now(b: Bench) -> dict[str, tuple[str, int, int]]:
    """Each running web instance as (node, pid, restarts), from each daemon's own `status --json`."""
    now: dict[str, tuple[str, int, int]] = {}
    for node in b.live():
        for name, inst in node.running_here("web").items():
            now[name] = (node.name, inst["pid"], inst.get("restarts", 0))
    return now


def compare(before: dict[str, tuple[str, int, int]], now: dict[str, tuple[str, int, int]]) -> tuple[set, set]:
    """(restarted, re-placed) instance names: a new pid or restart count on the same node; another node or gone."""
    restarted, moved = set(), set()
    for name, (node, pid, restarts) in before.items():
        if name not in now or now[name][0] != node:
            moved.add(name)
        elif now[name][1] != pid or now[name][2] != restarts:
            restarted.add(name)
    return restarted, moved


def etcd_down(b: Bench) -> None:
    outage = b.args.outage
    b.say(f"\n[etcd-down] etcd SIGKILLed for {outage:g} s, then started again on its data: restarts and "
          f"re-placements of the {WEB} web instances during and after (target 0 and 0); ONE trial")
    b.settle()
    before = web_now(b)
    if len(before) != WEB:
        raise BenchError(f"expected {WEB} web instances, status shows {sorted(before)}")
    lock = b.activity.runs(SINGLETON)[-1]
    at = time.monotonic()
    b.etcd.kill()
    during_restarted, during_moved = set(), set()
    disconnected: set[str] = set()
    samples = 0
    while time.monotonic() < at + outage:
        restarted, moved = compare(before, web_now(b))
        during_restarted |= restarted
        during_moved |= moved
        samples += 1
        if time.monotonic() > at + b.ttl:
            for node in b.live():
                if node.name not in disconnected and not node.cluster()["connected"]:
                    disconnected.add(node.name)
        time.sleep(0.5)
    lock_stopped = Activity.last(lock) - at if gone(lock.pid) else None
    b.etcd.restart()
    up = time.monotonic()
    b.say(f"  etcd down for {up - at:.1f} s ({samples} looks at every node's status meanwhile); nodes that said "
          f"'not connected': {sorted(disconnected)}; {SINGLETON} fenced "
          f"{'NOT (still running!)' if lock_stopped is None else f'{sec(lock_stopped)} after etcd went'}")
    fresh = wait(lambda: [r for r in b.activity.runs(SINGLETON) if r.first > at and r.path != lock.path],
                 b.ttl * 3 + 30,
                 f"{SINGLETON} running again")[0]
    b.settle()
    after_settle = time.monotonic()
    after_restarted, after_moved = set(), set()
    while time.monotonic() < after_settle + 2 * b.ttl:  # watching: nothing may change for two leases
        restarted, moved = compare(before, web_now(b))
        after_restarted |= restarted
        after_moved |= moved
        time.sleep(0.5)
    restarted, moved = compare(before, web_now(b))
    after_restarted |= restarted - during_restarted
    after_moved |= moved - during_moved
    b.say(f"  during: {len(during_restarted)} restarted, {len(during_moved)} re-placed; after (settled, then "
          f"watched {2 * b.ttl:g} s): {len(after_restarted)} restarted, {len(after_moved)} re-placed "
          f"{sorted(after_restarted | after_moved)}; {SINGLETON} back on {fresh.node} {sec(fresh.first - up)} after "
          f"etcd (token {lock.token} -> {fresh.token})")
    b.raw["etcd-down"] = {"during_restarted": sorted(during_restarted), "during_moved": sorted(during_moved),
                          "after_restarted": sorted(after_restarted), "after_moved": sorted(after_moved),
                          "singleton_back": fresh.first - up}
    total = len(during_restarted | after_restarted) + len(during_moved | after_moved)
    b.add("etcd-down", f"restarts during/after a {outage:g} s outage (1 trial)", None, "0 / 0",
          not (during_restarted or after_restarted),
          median_text=f"{len(during_restarted)} / {len(after_restarted)}")
    b.add("etcd-down", "re-placements during/after (1 trial)", None, "0 / 0", not (during_moved or after_moved),
          median_text=f"{len(during_moved)} / {len(after_moved)}")
    b.add("etcd-down", f"  etcd back -> {SINGLETON} running again", [fresh.first - up], "(info)", None)
    if total:
        b.say(f"  CHANGED: {sorted(during_restarted | after_restarted | during_moved | after_moved)}")


def placement_figure(b: Bench) -> None:
    runs = max(b.args.trials, 20)
    b.say(f"\n[placement] place() for 1,000 instances over {placement_bench.NODES} nodes (benchmarks/placement.py), "
          f"median of {runs} calls each; target < {placement_bench.TARGET_MS:g} ms")
    f = placement_bench.figures(runs)
    target = placement_bench.TARGET_MS
    for key, what in (("place_initial_ms", "initial placement"), ("place_lose_node_ms", "lose 1 node"),
                      ("place_steady_ms", "steady state")):
        b.add("placement", f"place() {what} ({int(f['instances'])} instances)", None, f"< {target:g} ms",
              f[key] < target, median_text=f"{f[key]:.2f} ms")
    b.add("placement", "plan() writes: initial / lose node / steady", None, "(info)", None,
          median_text=f"{int(f['plan_initial_writes'])} / {int(f['plan_lose_node_writes'])} / "
                      f"{int(f['plan_steady_writes'])}")
    b.raw["placement"] = f
    b.say(f"  initial {f['place_initial_ms']:.2f} ms, lose a node {f['place_lose_node_ms']:.2f} ms, steady "
          f"{f['place_steady_ms']:.2f} ms; plan() after losing a node {f['plan_lose_node_ms']:.2f} ms")


def idle(b: Bench) -> None:
    seconds = b.args.idle
    window = 60.0 if seconds >= 60 else seconds
    n = len(NAMES)
    b.say(f"\n[idle] etcd's /metrics with {n} idle nodes over {seconds:g} s in {window:g} s windows: writes "
          f"(proposals committed; puts+deletes+txns) and lease keep-alives, per second per node")
    b.settle()
    # Quiet first: the last status records of the start-up written. A condition, not a sleep:
    # the proposals counter unchanged for 5 s in a row.
    quiet: list[float] = []

    def calm() -> bool:
        quiet.append(metrics(b.etcd.endpoint)["etcd_server_proposals_committed_total"])
        return len(quiet) > 5 and quiet[-1] == quiet[-6]
    wait(calm, 90, "etcd's proposals to stop growing", interval=1.0)
    start = time.monotonic()
    samples = [(start, metrics(b.etcd.endpoint))]
    while samples[-1][0] < start + seconds - 0.01:
        end = min(samples[-1][0] + window, start + seconds)
        time.sleep(max(0.0, end - time.monotonic()))  # a measurement window, not a synchronisation
        samples.append((time.monotonic(), metrics(b.etcd.endpoint)))
    per_window = []
    for (t0, m0), (t1, m1) in zip(samples, samples[1:], strict=False):
        d = {k: m1.get(k, 0.0) - m0.get(k, 0.0) for k in m1}
        span = t1 - t0
        rate = {
            "proposals": d["etcd_server_proposals_committed_total"] / span / n,
            "kv_writes": (d["etcd_mvcc_put_total"] + d["etcd_mvcc_delete_total"] + d["etcd_mvcc_txn_total"])
            / span / n,
            "renewals": d.get("etcd_debugging_lease_renewed_total", 0.0) / span / n,
            "keepalive_msgs": d.get("grpc:LeaseKeepAlive", 0.0) / span / n,
            "ranges": d.get("grpc:Range", 0.0) / span / n,
            "watch_msgs": d.get("grpc:Watch", 0.0) / span / n,
        }
        per_window.append(rate)
        b.say(f"  {t0 - start:5.0f}-{t1 - start:4.0f} s: proposals {rate['proposals']:.3f}/s/node, kv writes "
              f"{rate['kv_writes']:.3f}/s/node, lease renewals {rate['renewals']:.3f}/s/node, keep-alive msgs "
              f"{rate['keepalive_msgs']:.3f}/s/node, ranges {rate['ranges']:.3f}/s/node, watch msgs "
              f"{rate['watch_msgs']:.3f}/s/node")
    b.raw["idle"] = per_window
    proposals = [w["proposals"] for w in per_window]
    writes = [w["kv_writes"] for w in per_window]
    renewals = [w["renewals"] for w in per_window]
    grows = len(per_window) > 1 and proposals[-1] > proposals[0] + 1 / window
    expected = 3 / b.ttl
    b.add("idle", "proposals committed /s/node (per window)", proposals, "~0 (< 0.1), no growth",
          max(proposals) < 0.1 and not grows, fmt=lambda v: f"{v:.3f}")
    b.add("idle", "  puts+deletes+txns /s/node", writes, "(info)", None, fmt=lambda v: f"{v:.3f}")
    b.add("idle", "  lease renewals /s/node", renewals, f"(info: 3/TTL = {expected:.2f})", None,
          fmt=lambda v: f"{v:.3f}")


RUNNERS: dict[str, Callable[[Bench], None]] = {
    "placement": placement_figure, "idle": idle, "node-kill": node_kill, "leader-kill": leader_kill,
    "partition": partition, "pause": pause, "tokens": tokens, "etcd-down": etcd_down,
}


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, default=20, help="trials per timed figure (default 20)")
    parser.add_argument("--ttl", type=int, default=5, help="the nodes' lease_ttl in seconds (default 5)")
    parser.add_argument("--idle", type=float, default=60.0,
                        help="seconds of the idle figure (default 60; 600 for the 10-minute no-growth check)")
    parser.add_argument("--outage", type=float, default=30.0, help="seconds etcd is down (default 30)")
    parser.add_argument("--only", action="append", default=[], metavar="NAME[,NAME...]",
                        help=f"run only these figures (repeatable, comma-separated): {', '.join(FIGURES)}")
    parser.add_argument("--json", metavar="FILE", help="also write every sample to FILE")
    parser.add_argument("--keep", action="store_true", help="keep the work dir (configs, daemon logs, activity)")
    args = parser.parse_args(argv)
    only = {name.strip() for item in args.only for name in item.split(",") if name.strip()}
    unknown = only - set(FIGURES)
    if unknown:
        parser.error(f"unknown figure(s) {', '.join(sorted(unknown))}: choose from {', '.join(FIGURES)}")
    args.only = only or set(FIGURES)
    if args.trials < 1:
        parser.error("--trials must be at least 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    handle_signals()
    workdir = Path(tempfile.mkdtemp(prefix="sv-cluster-"))
    b = Bench(args, workdir)
    atexit.register(b.cleanup)
    began = time.monotonic()
    print(f"supervise cluster benchmarks: {sys.executable}, {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.2f}, "
          f"etcd {shutil.which('etcd')}, lease_ttl {args.ttl} s, {args.trials} trials, work dir {workdir}",
          flush=True)
    if args.trials < 20:
        print(f"(only {args.trials} trials: the figures want >= 20)", flush=True)
    code = 0
    try:
        if args.only - {"placement"}:
            b.start()
        for name in FIGURES:
            if name not in args.only:
                continue
            t0 = time.monotonic()
            try:
                RUNNERS[name](b)
            except FAILED as exc:
                b.failed.append(name)
                b.add(name, f"FAILED: {str(exc).splitlines()[0][:100]}", None, "", False)
                print(f"\n{name} failed: {exc}", file=sys.stderr, flush=True)
                if name == "etcd-down" and not b.etcd.running:
                    b.etcd.restart()
            print(f"  ({name} took {time.monotonic() - t0:.0f} s)", flush=True)
    except KeyboardInterrupt:
        print("\ninterrupted; cleaning up", file=sys.stderr)
        code = 130
    except FAILED as exc:
        print(f"\nbenchmark failed: {exc}", file=sys.stderr)
        code = 1
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not cut the cleanup short
        b.cleanup()
        signal.signal(signal.SIGINT, signal.default_int_handler)
        if args.keep:
            print(f"work dir kept: {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    if b.rows:
        print_table(b.rows)
    elapsed = time.monotonic() - began
    print(f"\n(took {elapsed / 60:.1f} min; load average at the end: {os.getloadavg()[0]:.2f}; command: "
          f"{' '.join([Path(sys.executable).name, *sys.argv])})")
    if args.json:
        Path(args.json).write_text(json.dumps({"rows": [r.__dict__ for r in b.rows], "raw": b.raw}, indent=1,
                                              default=str))
    if code == 0 and any(r.ok is False for r in b.rows):
        code = 1
    return code


if __name__ == "__main__":
    sys.exit(main())
