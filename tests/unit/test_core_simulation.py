"""The core under thousands of random fault schedules (simulation.py says what is checked).

SUPERVISE_SIM_SCHEDULES sets how many (default 10,000); a failing schedule
names its seed, its last steps and its shortest failing prefix, and ``SUPERVISE_SIM_SEED=N`` replays
that one alone. The schedules are spread over the machine's cores: they
are independent, and pytest runs one test at a time.

The bugs the schedules step around (simulation.KNOWN_BUGS) are each shown by a strict xfail here: once
one is fixed its test passes, which fails the suite until it is taken out of KNOWN_BUGS.
"""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor

import pytest
from simulation import KNOWN_BUGS, clustered, run_schedule, run_shutdown, shortest_failure

SCHEDULES = int(os.environ.get("SUPERVISE_SIM_SCHEDULES", "10000"))
ONLY = os.environ.get("SUPERVISE_SIM_SEED")
BLOCKS = 20


def run_seeds(seeds: range) -> int:
    for seed in seeds:
        try:
            run_schedule(seed)
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n\nShortest: {shortest_failure(seed)}\n"
                                 f"Replay: SUPERVISE_SIM_SEED={seed} pytest {__file__}") from None
    return len(seeds)


@pytest.fixture(scope="module")
def pool() -> Iterator[ProcessPoolExecutor]:
    workers = max(1, min(4, len(os.sched_getaffinity(0))))
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("fork")) as executor:
        yield executor


@pytest.mark.parametrize("block", range(BLOCKS))
def test_random_fault_schedules(block, pool):
    if ONLY:
        if block == 0:
            run_schedule(int(ONLY))
        return
    size = -(-SCHEDULES // BLOCKS)
    first, last = block * size, min(SCHEDULES, (block + 1) * size)
    halves = [range(first, (first + last) // 2), range((first + last) // 2, last)]
    assert sum(f.result() for f in [pool.submit(run_seeds, seeds) for seeds in halves]) == last - first


@pytest.mark.parametrize("seed", range(100))
def test_a_drain_after_random_faults_ends_with_nothing_alive(seed):
    run_shutdown(seed)


@pytest.mark.parametrize("seed", range(10))
def test_every_command_gets_a_reply(seed):
    sim = run_schedule(100_000 + seed, steps=150)
    assert len(sim.sent) > 30
    missing = [rid for rid in sim.sent if rid not in sim.replies]
    assert not missing, f"commands never answered: {missing}"


KNOWN_BUG_SEEDS = {"cluster-app-removal": 96, "cluster-depends-on": 15, "fresh-core-singletons": 55,
                   "held-successor-token": 5, "singleton-overlap": 155, "stray-singleton-token": 325}
"""The first schedule that shows each bug, when they were found: where the search starts."""


@pytest.mark.xfail(strict=True, raises=AssertionError,
                   reason="a bug of the core in simulation.KNOWN_BUGS: fixed, this passes; then remove it there")
@pytest.mark.parametrize("bug", sorted(KNOWN_BUGS))
def test_the_simulation_finds_the_known_bug(bug):
    first = KNOWN_BUG_SEEDS.get(bug, 0)
    seeds = [seed for seed in range(first, first + 4000) if clustered(seed)][:100]
    for seed in seeds:
        (run_schedule if seed % 2 == 0 else run_shutdown)(seed, known_bugs=KNOWN_BUGS - {bug})
