"""How many instances fit the daemon's descriptor limit (runtime/limits.py), under real soft limits of
this process, restored after each test."""

from __future__ import annotations

import resource
from collections.abc import Iterator

import pytest
from fakeshell import app, config

from supervise.config.model import Readiness
from supervise.runtime import limits

SOFT, HARD = resource.getrlimit(resource.RLIMIT_NOFILE)


@pytest.fixture
def soft_limit() -> Iterator[None]:
    yield
    resource.setrlimit(resource.RLIMIT_NOFILE, (SOFT, HARD))


@pytest.mark.parametrize("soft", [100, 200, 700, 704, 1024, 4096, HARD])
def test_capacity_is_the_largest_count_that_fits(soft_limit, soft: int) -> None:
    if soft > HARD:
        pytest.fail(f"this machine's hard limit {HARD} is below {soft}")
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, HARD))
    capacity = limits.instance_capacity()
    assert limits.fits(capacity) and not limits.fits(capacity + 1)
    assert limits.fds_needed(capacity) <= soft < limits.fds_needed(capacity + 1)


def test_every_instance_counts_its_log_only_up_to_the_logs_held_open(soft_limit) -> None:
    assert limits.fds_needed(10) == limits.BASE_FDS + 10 * (limits.FDS_PER_INSTANCE + limits.FDS_PER_OPEN_LOG)
    over = limits.MAX_OPEN_LOGS + 1000
    assert limits.fds_needed(over) == (limits.BASE_FDS + over * limits.FDS_PER_INSTANCE
                                       + limits.MAX_OPEN_LOGS * limits.FDS_PER_OPEN_LOG)
    if HARD >= 20_000:
        resource.setrlimit(resource.RLIMIT_NOFILE, (20_000, HARD))
        assert limits.instance_capacity() == 6_560  # the figure docs/scaling.md and the README give


def test_notify_sockets_take_room_of_their_own(soft_limit) -> None:
    resource.setrlimit(resource.RLIMIT_NOFILE, (1024, HARD))
    capacity = limits.instance_capacity()
    assert limits.fits(capacity - 100, extra=100)
    # At capacity there is less room left than one more instance takes: that many notify sockets do not fit.
    assert not limits.fits(capacity, extra=limits.FDS_PER_INSTANCE)


def test_check_counts_a_notify_socket_for_each_instance(soft_limit) -> None:
    if HARD == resource.RLIM_INFINITY:
        pytest.fail("needs a finite hard limit to warn about")
    # As many as fit the hard limit at FDS_PER_INSTANCE each: with a notify socket each, they do not.
    plain = (HARD - limits.BASE_FDS - limits.MAX_OPEN_LOGS * limits.FDS_PER_OPEN_LOG) // limits.FDS_PER_INSTANCE
    assert not limits.check_fds(config(app("web", instances=plain)))
    warnings = limits.check_fds(config(app("web", instances=plain, readiness=Readiness.NOTIFY)))
    assert len(warnings) == 1 and f"+ {plain} notify sockets" in warnings[0], warnings
