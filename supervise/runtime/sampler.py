"""Memory of many process trees in one pass over /proc, counting shared pages once.

Summing each process's RSS counts a page shared by N processes N times: a
pre-forking server (gunicorn --preload, 4 workers, 150 MB loaded before the
fork) added up to 850 MB while the machine held 174 MB for it, and its
max_memory of 500M restarted it in a loop. A tree's memory is therefore
what the kernel counts (`Measure`):

- ``cgroup``: the charge of its cgroup leaf, where the memory controller is
  enabled for the leaf: every page once, grandchildren that double-forked
  away included. Less the file cache the kernel could drop (memory.stat
  ``file`` minus ``shmem``): a worker writing files (a log of its own, a
  database) fills the page cache charged to its leaf, and must not be
  restarted for that.
- ``pss``: otherwise, the sum of its processes' PSS
  (/proc/<pid>/smaps_rollup), where a page mapped by N processes counts 1/N
  in each.
- ``rss-sum``: where PSS cannot be read (a kernel before 4.14, or a process
  we may not inspect), that process's RSS: shared pages counted again.

Cost decides when PSS is read. /proc/<pid>/stat is a few counters (~10 us a
process); smaps_rollup walks the process's page tables (~30 ns a resident
page: 0.04 ms for a `sleep`, 1.4 ms for 150 MB), so reading it twice a
second for 100 pre-forked servers like the one above would take more than
a core. Every pass reads each process's RSS and page-fault count from stat.
A tree's PSS is read again only when its members changed, when the caller
asks for an exact pass (the display pass, every 30 s), or when its
`ceiling` nears its limit (`PSS_NEAR`): the most its PSS can be now, that
is the last reading plus the RSS gained since plus one page per page fault
taken since (a page only becomes a tree's own, copied on write or newly
mapped, through a fault), and never more than its RSS sum. (What this
leaves out: a sharer outside the tree exiting, which raises the tree's
share of pages it still maps; it is caught by the next exact pass.) An idle
pre-forked tree, over its limit by RSS sum, is then read every 30 s and not
every half second. In between, the figure is the last PSS plus the RSS
change since, which is under the ceiling: it never decides a restart, and
a tree that may be over its limit is judged on PSS read in that very pass.

CPU comes from the same reads. A tree's CPU time is the utime and stime
(/proc/<pid>/stat fields 14 and 15) of its live processes added up, or,
with a cgroup leaf, the leaf's ``usage_usec`` (cpu.stat: every process that
ever ran in it, exited ones included). A process that exits takes its time
out of the sum (a parent that reaps it gains only what it waited for), so
the tree's figure is kept from going down: each pass reports the most of
this reading and the last one, a counter that never decreases but may
stand still while exited children's time is made up. CPU % is that
counter's growth over the wall time since the root's previous pass, in
percent of one core (four busy threads: 400); a root's first pass gives its
average since the root process started (starttime, field 22).

psutil would build a Process object per pid and walk children per root;
this reads each /proc/<pid>/stat once to map parents (and takes RSS and
faults from the same read). A cgroup leaf, when the instance has one, names
its members directly, so no walk is needed. Runs off the event loop, in
the daemon's worker thread.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path

from supervise.frozen import frozen

PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")

FORGET_AFTER = 300.0
"""Seconds after which the CPU baseline of a root no pass has seen is dropped (its instance is gone)."""

PSS_NEAR = 0.9
"""A tree whose PSS may have grown to this share of its limit has its PSS read in the pass.

Below 1 for a margin: the figure shown as a tree approaches its limit is
read, not estimated. Any value up to 1 keeps every restart decision on a
fresh PSS."""


class Measure(StrEnum):
    """How a tree's memory was counted, from the most faithful to the least."""

    CGROUP = "cgroup"  # the leaf's own charge: each page once
    PSS = "pss"  # proportional set size: each shared page split among its sharers
    RSS_SUM = "rss-sum"  # resident set sizes added up: shared pages counted in every sharer


_FIDELITY = (Measure.RSS_SUM, Measure.PSS, Measure.CGROUP)


@frozen
class Root:
    """One instance to measure: its main pid, its cgroup leaf if it has one, and its max_memory."""

    key: int  # the caller's identifier (a spawn id)
    pid: int
    cgroup: str | None = None
    limit: int | None = None  # bytes: the tree's PSS is read in every pass that finds it may be near


@dataclass(slots=True)
class Sample:
    """One pass: each tree's memory in bytes (None: the root is gone), its process count, its measure,
    its CPU time in seconds (never less than the last pass's) and CPU % of one core since the last pass."""

    memory: dict[int, int | None] = field(default_factory=dict)
    processes: dict[int, int] = field(default_factory=dict)
    cpu_seconds: dict[int, float] = field(default_factory=dict)
    cpu: dict[int, float] = field(default_factory=dict)
    measures: dict[int, Measure] = field(default_factory=dict)
    estimated: set[int] = field(default_factory=set)  # keys whose PSS was carried over, not read

    def measure(self) -> Measure | None:
        """The least faithful measure any tree needed: what an operator may rely on for them all."""
        return min(self.measures.values(), key=_FIDELITY.index, default=None)


@frozen
class Usage:
    """What /proc/<pid>/stat says of a process's memory: cheap enough to read for every process every pass."""

    rss: int = 0  # bytes
    faults: int = 0  # minor and major page faults, all its threads, since it started
    ticks: int = 0  # user and system CPU time, all its threads, in clock ticks (SC_CLK_TCK)
    start: int = 0  # when it started, in clock ticks since boot


@frozen
class _Read:
    """A tree's last PSS reading: what later passes estimate from, and bound its growth from."""

    members: frozenset[int]
    rss: int
    faults: int
    pss: int

    def ceiling(self, rss: int, faults: int) -> int:
        """The most the tree's PSS can be now: each fault since made at most one page its own."""
        return min(rss, self.pss + max(0, rss - self.rss) + max(0, faults - self.faults) * PAGE_SIZE)

    def estimate(self, rss: int) -> int:
        """The last PSS, moved by the RSS change since: growth in new pages shows at once."""
        return max(0, min(rss, self.pss + rss - self.rss))


class Sampler:
    """Samples trees pass after pass, keeping each tree's last PSS reading between passes.

    One per daemon, used from its one worker thread. `measure` is read from
    the event loop: a single attribute, replaced whole at the end of a pass.
    """

    def __init__(self) -> None:
        self.measure: Measure | None = None  # the last pass's (`Sample.measure`); None before any measured a tree
        self._reads: dict[int, _Read] = {}
        self._cpu: dict[int, tuple[float, float]] = {}  # key -> (monotonic time, CPU seconds) of its last pass

    def sample(self, roots: Iterable[Root], exact: bool = False) -> Sample:
        """Every root's tree measured; `exact` reads every tree's PSS (no estimate)."""
        roots = list(roots)
        result = Sample()
        reads: dict[int, _Read] = {}
        trees, scanned = _members(roots)
        now = time.monotonic()
        controlled: dict[str, bool] = {}  # cgroup directory -> whether its leaves have the memory controller
        for root, members in zip(roots, trees, strict=True):
            if members is None:
                result.memory[root.key] = None
                self._cpu.pop(root.key, None)
                continue
            result.processes[root.key] = len(members)
            charge = _charge(root.cgroup, controlled) if root.cgroup is not None else None
            usage: Mapping[int, Usage] | None = None
            if charge is not None:
                result.memory[root.key], result.measures[root.key] = charge, Measure.CGROUP
            else:
                usage = {pid: scanned[pid] if pid in scanned else _usage(pid) for pid in members}
                self._measure_tree(root, members, usage, exact, result, reads)
            self._cpu_of(root, usage, scanned, now, result)
        self._reads = reads  # trees not sampled in this pass are read afresh when they are again
        for key in [k for k, (at, _) in self._cpu.items() if now - at > FORGET_AFTER]:
            del self._cpu[key]
        self.measure = result.measure() or self.measure
        return result

    def _cpu_of(self, root: Root, usage: Mapping[int, Usage] | None, scanned: Mapping[int, Usage], now: float,
                result: Sample) -> None:
        """The tree's CPU seconds (its cgroup's usage where it has one, else its live processes' sum,
        never less than the last pass's) and its CPU % since its last pass."""
        seconds = _cgroup_cpu(root.cgroup) if root.cgroup is not None else None
        if seconds is None:
            if usage is None:
                usage = {pid: scanned[pid] if pid in scanned else _usage(pid) for pid in _members([root])[0][0] or ()}
            seconds = sum(u.ticks for u in usage.values()) / CLOCK_TICKS
        last = self._cpu.get(root.key)
        if last is None:  # its first pass: the average since the root process started
            own = usage.get(root.pid) if usage is not None else None
            start = (own if own is not None else scanned.get(root.pid) or _usage(root.pid)).start
            elapsed = _uptime() - start / CLOCK_TICKS
            percent = 100.0 * seconds / elapsed if start and elapsed > 0.05 else None
        else:
            seconds = max(seconds, last[1])
            elapsed = now - last[0]
            percent = 100.0 * (seconds - last[1]) / elapsed if elapsed > 0 else None
        result.cpu_seconds[root.key] = round(seconds, 3)
        if percent is not None:
            result.cpu[root.key] = round(percent, 1)
        if last is None or elapsed > 0:
            self._cpu[root.key] = (now, seconds)

    def _measure_tree(self, root: Root, members: frozenset[int], usage: Mapping[int, Usage], exact: bool,
                      result: Sample, reads: dict[int, _Read]) -> None:
        rss = sum(u.rss for u in usage.values())
        faults = sum(u.faults for u in usage.values())
        last = self._reads.get(root.key)
        if not exact and last is not None and last.members == members and (
                root.limit is None or last.ceiling(rss, faults) < root.limit * PSS_NEAR):
            result.memory[root.key], result.measures[root.key] = last.estimate(rss), Measure.PSS
            result.estimated.add(root.key)
            reads[root.key] = last
            return
        total, measure = tree_pss({pid: u.rss for pid, u in usage.items()})
        result.memory[root.key], result.measures[root.key] = total, measure
        if measure is Measure.PSS:
            reads[root.key] = _Read(members, rss, faults, total)


def sample_trees(roots: Iterable[Root]) -> tuple[dict[int, int | None], dict[int, int]]:
    """Memory of each root's whole tree (None when the root is gone), and how many processes it has.

    One exact pass with nothing carried over: what a caller without a
    `Sampler` (a benchmark, a one-off check) wants.
    """
    result = Sampler().sample(roots, exact=True)
    return result.memory, result.processes


def tree_pss(rss: Mapping[int, int]) -> tuple[int, Measure]:
    """The PSS sum of these processes (given their RSS), and the measure it amounts to.

    A process whose PSS cannot be read counts its RSS, and the tree is then
    ``rss-sum``: an upper bound, never an undercount.
    """
    total, measure = 0, Measure.PSS
    for pid, resident in rss.items():
        pss = _pss(pid)
        if pss is None:
            total, measure = total + resident, Measure.RSS_SUM
        else:
            total += pss
    return total, measure


def expected_measure(cgroups_root: Path | None) -> Measure:
    """The measure passes will use, before any has run: for `status` right after a start.

    ``cgroup`` when the daemon's cgroup directory hands the memory
    controller to its leaves, ``pss`` when this kernel has smaps_rollup,
    else ``rss-sum``.
    """
    if cgroups_root is not None and _hands_memory_down(cgroups_root):
        return Measure.CGROUP
    return Measure.PSS if _pss(os.getpid()) is not None else Measure.RSS_SUM


def _hands_memory_down(directory: Path | str) -> bool:
    """Whether the cgroup enables the memory controller for its children: one read for all its leaves."""
    try:
        return b"memory" in _read(f"{directory}/cgroup.subtree_control", 4096).split()
    except OSError:
        return False


def _members(roots: list[Root]) -> tuple[list[frozenset[int] | None], dict[int, Usage]]:
    """Each root's tree (its pid and every descendant; None when the root is gone), and the
    usage of every process, when a walk had to scan /proc (else empty)."""
    found: list[frozenset[int] | None] = []
    walked: tuple[dict[int, list[int]], dict[int, Usage]] | None = None
    for root in roots:
        members = _cgroup_members(root.cgroup) if root.cgroup is not None else None
        if members is not None:
            present = root.pid in members or os.path.exists(f"/proc/{root.pid}")
            found.append(frozenset(members | {root.pid}) if present else None)
            continue
        if walked is None:
            walked = _scan()  # one scan of /proc for every root that needs it
        children, alive = walked
        found.append(frozenset([root.pid, *_descendants(root.pid, children)]) if root.pid in alive else None)
    return found, walked[1] if walked is not None else {}


def _cgroup_cpu(leaf: str) -> float | None:
    """The leaf's CPU time in seconds (cpu.stat usage_usec: exited members' included); None without one.

    cgroup v2 keeps cpu.stat in every cgroup, the cpu controller enabled or not."""
    try:
        data = _read(f"{leaf}/cpu.stat", 4096)
        at = data.index(b"usage_usec ")
        return int(data[at + 11:data.index(b"\n", at)]) / 1e6
    except (OSError, ValueError):
        return None


def _uptime() -> float:
    """Seconds since boot (what a process's starttime counts from)."""
    try:
        return float(_read("/proc/uptime", 128).split()[0])
    except (OSError, ValueError, IndexError):
        return 0.0


def _cgroup_members(path: str) -> set[int] | None:
    try:
        # On cgroupfs a directory's link count is 2 + its sub-cgroups: a leaf
        # (the usual case) is read directly, without the cost of os.walk.
        dirs = [str(path)] if os.stat(path).st_nlink == 2 else [d for d, _, _ in os.walk(path)]
        pids: set[int] = set()
        for directory in dirs:
            pids.update(map(int, _read_all(f"{directory}/cgroup.procs").split()))
    except (OSError, ValueError):
        return None
    return pids


def _charge(leaf: str, controlled: dict[str, bool]) -> int | None:
    """The leaf's charge, where its parent hands the memory controller down (asked once a
    pass per parent, in `controlled`: one read for all its leaves rather than a failed open each)."""
    parent = os.path.dirname(leaf)
    if parent not in controlled:
        controlled[parent] = _hands_memory_down(parent)
    return _cgroup_memory(leaf) if controlled[parent] else None


def _cgroup_memory(path: str) -> int | None:
    """The leaf's charge less the file cache it could drop; None without a memory controller there.

    memory.current exists only where the parent enables the controller for
    its children (memory.pressure exists without it, so that is no sign).
    """
    try:
        current = int(_read(f"{path}/memory.current", 64))
        stat = dict(line.split(b" ", 1) for line in _read(f"{path}/memory.stat", 16384).splitlines())
        cache = int(stat.get(b"file", 0)) - int(stat.get(b"shmem", 0))
    except (OSError, ValueError):
        return None
    return max(0, current - max(0, cache))


def _scan() -> tuple[dict[int, list[int]], dict[int, Usage]]:
    """Every process's children, and every live process's usage, from one read of each /proc/*/stat."""
    children: dict[int, list[int]] = {}
    usage: dict[int, Usage] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            fields = _stat_fields(_read(f"/proc/{entry.name}/stat", 1024))
            pid, ppid = int(entry.name), int(fields[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(pid)
        usage[pid] = _usage_of(fields)
    return children, usage


def _descendants(pid: int, children: dict[int, list[int]]) -> list[int]:
    found, stack = [], list(children.get(pid, ()))
    while stack:
        child = stack.pop()
        found.append(child)
        stack.extend(children.get(child, ()))
    return found


def _read(path: str, size: int) -> bytes:
    """A small /proc file in one read: os.open and os.read cost half of what open() does
    (no file objects to build), and a pass makes a few thousand of these."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        return os.read(fd, size)
    finally:
        os.close(fd)


def _read_all(path: str) -> bytes:
    """A /proc or cgroup file of any length (cgroup.procs of a fork bomb's leaf is long)."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        chunks = []
        while chunk := os.read(fd, 65536):
            chunks.append(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)


def _stat_fields(data: bytes) -> list[bytes]:
    """The fields of /proc/<pid>/stat from the state on (field 3 is index 0). comm may hold
    spaces and parentheses: the fields start after the last ')'."""
    return data[data.rfind(b")") + 2:].split(b" ")


def _usage_of(fields: list[bytes]) -> Usage:
    """minflt (field 10), majflt (12), rss in pages (24), utime and stime (14, 15) and starttime (22);
    zeros where a field is missing."""
    try:
        return Usage(int(fields[21]) * PAGE_SIZE, int(fields[7]) + int(fields[9]), int(fields[11]) + int(fields[12]),
                     int(fields[19]))
    except (IndexError, ValueError):
        return Usage()


def _usage(pid: int) -> Usage:
    """One process's usage; zeros once it has exited."""
    try:
        return _usage_of(_stat_fields(_read(f"/proc/{pid}/stat", 1024)))
    except OSError:
        return Usage()


def _pss(pid: int) -> int | None:
    """The process's PSS in bytes; 0 once it has exited; None when it cannot be read.

    smaps_rollup (Linux 4.14) needs the right to inspect the process, which
    a daemon has for its own user's workers and, as root, for all.
    """
    try:
        data = _read(f"/proc/{pid}/smaps_rollup", 4096)
    except ProcessLookupError:  # ESRCH: it exited (or is a zombie: no address space left)
        return 0
    except FileNotFoundError:  # no such pid any more, or no smaps_rollup in this kernel
        return 0 if not os.path.exists(f"/proc/{pid}") else None
    except OSError:  # EACCES: not ours to inspect
        return None
    at = data.find(b"\nPss:")
    if at < 0:
        return 0  # a kernel thread, or an exit under our feet: nothing mapped
    try:
        return int(data[at + 5:data.index(b"kB", at)]) * 1024
    except ValueError:
        return None
