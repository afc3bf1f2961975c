"""The sampler on real processes: shared pages counted once, PSS read only where it matters (issue 12, point 4).

Each figure is checked against psutil's own reading of /proc/<pid>/smaps (a
separate implementation), with a margin for what the interpreters map and
touch between two readings.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
from helpers import WORKERS, gone, wait_until

from supervise.runtime import sampler
from supervise.runtime.cgroups import Cgroups
from supervise.runtime.sampler import Measure, Root, Sampler

MiB = 1024 * 1024
SHARED_MB = 100
CHILDREN = 4


class Preforked:
    """tests/integration/workers/preforked.py run by the test itself: a master and its children."""

    def __init__(self, megabytes: int, children: int) -> None:
        self.proc = subprocess.Popen([sys.executable, str(WORKERS / "preforked.py"), str(megabytes), str(children)],
                                     stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()  # the worker's own word that every child is up
        assert line.startswith("forked "), line
        self.children = [int(pid) for pid in line.split()[1:]]

    @property
    def pids(self) -> list[int]:
        return [self.proc.pid, *self.children]

    def pss(self) -> int:
        return sum(psutil.Process(pid).memory_full_info().pss for pid in self.pids)

    def rss_sum(self) -> int:
        return sum(psutil.Process(pid).memory_info().rss for pid in self.pids)

    def grow(self, how: signal.Signals = signal.SIGUSR1) -> None:
        """Every child grows (SIGUSR1: writes its copy; SIGUSR2: as much in new pages); returns once each has."""
        assert self.proc.stdout is not None
        os.kill(self.proc.pid, how)
        grown = {int(self.proc.stdout.readline().split()[1]) for _ in self.children}
        assert grown == set(self.children)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()  # the master stops its children first
        self.proc.wait(30)
        for pid in self.children:
            wait_until(lambda pid=pid: gone(pid), 10, message=f"child {pid} gone")


@pytest.fixture
def preforked() -> Iterator[Preforked]:
    tree = Preforked(SHARED_MB, CHILDREN)
    try:
        yield tree
    finally:
        tree.stop()


def near(value: int, expected: int, slack: int = 12 * MiB) -> bool:
    """Two readings of one tree a moment apart: the interpreters may touch a few pages between them."""
    return abs(value - expected) <= slack


def test_a_preforked_tree_counts_its_shared_pages_once(preforked):
    memory, processes = sampler.sample_trees([Root(1, preforked.proc.pid)])
    pss, rss_sum = preforked.pss(), preforked.rss_sum()
    print(f"sampled {memory[1] / MiB:.1f} MiB, PSS {pss / MiB:.1f} MiB, RSS sum {rss_sum / MiB:.1f} MiB")
    assert processes == {1: 1 + CHILDREN}
    assert near(memory[1], pss)
    assert memory[1] < SHARED_MB * MiB * 1.5 < rss_sum  # once, not once per process


def test_children_writing_their_copies_is_growth(preforked):
    before = sampler.sample_trees([Root(1, preforked.proc.pid)])[0][1]
    preforked.grow()
    after = sampler.sample_trees([Root(1, preforked.proc.pid)])[0][1]
    assert before is not None and after is not None
    assert after - before >= CHILDREN * SHARED_MB * MiB * 0.9  # each child now holds a copy of its own
    assert near(after, preforked.pss())


def over_by_rss_sum_only(tree: Preforked) -> int:
    """A limit the tree is over by RSS sum and far under by PSS: a pre-forked server's case."""
    limit = tree.rss_sum() // 2
    assert tree.pss() < limit * sampler.PSS_NEAR
    return limit


def test_an_idle_tree_over_its_limit_by_rss_sum_alone_is_not_read_every_pass(preforked):
    limit = over_by_rss_sum_only(preforked)
    s = Sampler()
    root = Root(1, preforked.proc.pid, limit=limit)
    assert s.sample([root]).estimated == set()  # the first reading
    for _ in range(3):
        result = s.sample([root])
        assert result.estimated == {1} and result.measures == {1: Measure.PSS}
        assert result.memory[1] is not None and result.memory[1] < limit


@pytest.mark.parametrize("how", [signal.SIGUSR1, signal.SIGUSR2], ids=["copy-on-write", "new-pages"])
def test_growth_past_the_limit_is_read_in_the_pass_that_follows(preforked, how):
    limit = over_by_rss_sum_only(preforked)
    s = Sampler()
    root = Root(1, preforked.proc.pid, limit=limit)
    s.sample([root])
    assert s.sample([root]).estimated == {1}
    preforked.grow(how)  # copy-on-write shows only in page faults, new pages in RSS as well
    result = s.sample([root])
    assert result.estimated == set()
    assert result.memory[1] is not None and result.memory[1] > limit
    assert near(result.memory[1], preforked.pss())


def test_a_tree_far_from_its_limit_is_estimated_between_reads():
    tree = Preforked(40, CHILDREN)
    try:
        s = Sampler()
        root = Root(1, tree.proc.pid, limit=100 * tree.rss_sum())
        first = s.sample([root])
        assert first.estimated == set()  # nothing to start from: read
        second = s.sample([root])
        assert second.estimated == {1} and second.measures == {1: Measure.PSS}
        assert first.memory[1] is not None and second.memory[1] is not None
        assert near(second.memory[1], first.memory[1]) and second.memory[1] <= tree.rss_sum()
        tree.grow(signal.SIGUSR2)
        grown = s.sample([root])  # new pages show in RSS, and so in the estimate
        assert grown.estimated == {1} and grown.memory[1] is not None and near(grown.memory[1], tree.pss())
        tree.grow(signal.SIGUSR1)  # copies show in PSS alone: the estimate lags until the next reading
        exact = s.sample([root], exact=True)  # the display pass reads every tree
        assert exact.estimated == set() and exact.memory[1] is not None and near(exact.memory[1], tree.pss())
        assert exact.memory[1] - grown.memory[1] > CHILDREN * 40 * MiB * 0.9
    finally:
        tree.stop()


def test_a_change_of_members_is_read_again():
    s = Sampler()
    root = Root(1, os.getpid(), limit=1 << 50)  # this test's own tree: it forks below
    s.sample([root])
    assert s.sample([root]).estimated == {1}
    sleeper = subprocess.Popen(["sleep", "3600"])
    try:
        result = s.sample([root])
        assert result.estimated == set()
        assert result.processes[1] >= 2
    finally:
        sleeper.kill()
        sleeper.wait()


def test_a_tree_not_in_a_pass_is_read_afresh_in_the_next():
    sleeper = subprocess.Popen(["sleep", "3600"])
    try:
        s = Sampler()
        mine, other = Root(1, os.getpid(), limit=1 << 50), Root(2, sleeper.pid, limit=1 << 50)
        s.sample([mine, other])
        s.sample([mine])  # the quick pass leaves `other` out: nothing of it is kept
        assert s.sample([mine, other]).estimated == {1}
    finally:
        sleeper.kill()
        sleeper.wait()


def test_a_gone_root_is_none():
    proc = subprocess.Popen(["true"])
    proc.wait()
    s = Sampler()
    result = s.sample([Root(7, proc.pid, limit=1)])
    assert result.memory == {7: None} and result.processes == {} and result.measures == {}
    assert s.measure is None  # nothing measured yet: nothing to say


def test_the_pass_names_the_measure_of_the_kernel():
    s = Sampler()
    s.sample([Root(1, os.getpid())])
    assert s.measure is Measure.PSS  # this kernel has smaps_rollup, and we may read our own
    s.sample([])
    assert s.measure is Measure.PSS  # a pass that measured nothing leaves the measure as it was
    assert sampler.expected_measure(None) is Measure.PSS


def test_the_least_faithful_measure_names_the_pass():
    result = sampler.Sample(measures={1: Measure.CGROUP, 2: Measure.PSS, 3: Measure.CGROUP})
    assert result.measure() is Measure.PSS
    result.measures[4] = Measure.RSS_SUM
    assert result.measure() is Measure.RSS_SUM
    assert sampler.Sample().measure() is None


@pytest.fixture
def cgroups() -> Iterator[Cgroups]:
    found = Cgroups.detect(f"test-sampler-{os.getpid()}")
    if found is None:
        pytest.skip("no writable cgroup2 hierarchy here")
    try:
        yield found
    finally:
        found.close(timeout=5.0)


def test_a_cgroup_leaf_is_measured_by_its_charge_or_else_by_pss(cgroups, preforked):
    leaf = cgroups.adopt(preforked.proc.pid, "pre:0")
    assert leaf is not None
    for pid in preforked.children:
        (leaf / "cgroup.procs").write_text(str(pid))
    result = Sampler().sample([Root(1, preforked.proc.pid, leaf)])
    assert result.processes == {1: 1 + CHILDREN}
    assert result.memory[1] is not None
    if (leaf / "memory.current").exists():
        assert result.measures == {1: Measure.CGROUP}
        assert result.memory[1] < SHARED_MB * MiB * 1.5
    else:  # this machine: cgroup2 without the memory controller
        assert result.measures == {1: Measure.PSS}
        assert near(result.memory[1], preforked.pss())
    expected = Measure.CGROUP if "memory" in (cgroups.root / "cgroup.subtree_control").read_text() else Measure.PSS
    assert sampler.expected_measure(cgroups.root) is expected


def test_a_cgroup_charge_leaves_out_the_file_cache_it_could_drop(tmp_path: Path):
    """The arithmetic, on the files as cgroup v2 writes them (no memory controller on this machine).

    A worker writing files (a log of its own, a database) fills the page cache charged
    to its leaf: 50 MB of it must not count toward max_memory; tmpfs and shared memory
    (shmem, counted within `file`) cannot be dropped, and do.
    """
    leaf = tmp_path / "pre:0.abc123"
    leaf.mkdir()
    (leaf / "memory.current").write_text(f"{200 * MiB}\n")
    (leaf / "memory.stat").write_text(f"anon {120 * MiB}\nfile {70 * MiB}\nkernel {10 * MiB}\n"
                                      f"shmem {20 * MiB}\nfile_mapped {5 * MiB}\n")
    root = Root(1, os.getpid(), leaf)
    assert Sampler().sample([root]).measures == {1: Measure.PSS}  # the parent does not hand the controller down
    assert sampler.expected_measure(tmp_path) is Measure.PSS
    (tmp_path / "cgroup.subtree_control").write_text("cpu memory pids\n")
    result = Sampler().sample([root])
    assert result.measures == {1: Measure.CGROUP}
    assert result.memory == {1: 150 * MiB}
    assert sampler.expected_measure(tmp_path) is Measure.CGROUP
