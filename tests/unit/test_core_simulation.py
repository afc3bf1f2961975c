"""The core under thousands of random fault schedules (simulation.py says what is checked).

SUPERVISE_SIM_SCHEDULES sets how many (default 6,000, so that the suite stays well under 10 minutes on
two cores; docs/reliability.md's figures are of 10,000); a failing schedule
names its seed, its last steps and its shortest failing prefix, and ``SUPERVISE_SIM_SEED=N`` replays
that one alone. The schedules are spread over the machine's cores: they
are independent, and pytest runs one test at a time.

The schedules step around no known bug of the core (simulation.KNOWN_BUGS is empty; it names the six
the cluster schedules found, all fixed, and the branches that can switch their checks off again).
"""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor

import pytest
from simulation import KNOWN_BUGS, run_schedule, run_shutdown, shortest_failure

SCHEDULES = int(os.environ.get("SUPERVISE_SIM_SCHEDULES", "6000"))
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


def test_no_known_bugs_are_stepped_around():
    """Each bug the simulation found was fixed (simulation.KNOWN_BUGS names them); a new one goes there only
    with a strict xfail here that shows the simulation still finds it, until it is fixed."""
    assert not KNOWN_BUGS
