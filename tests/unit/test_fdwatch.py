"""FdWatch: many descriptors behind one reader of a real event loop, with real pipes."""

from __future__ import annotations

import asyncio
import os

from looping import pump

from supervise.runtime.fdwatch import FdWatch


def turns(loop: asyncio.AbstractEventLoop, count: int = 5) -> None:
    for _ in range(count):
        loop.run_until_complete(asyncio.sleep(0))


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_callbacks_run_with_their_arguments_until_removed_and_the_epoll_goes_with_the_last(loop) -> None:
    before = open_fds()
    watch = FdWatch(loop)
    pipes = [os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK) for _ in range(3)]
    seen: list[tuple[int, bytes]] = []

    def readable(index: int) -> None:
        seen.append((index, os.read(pipes[index][0], 100)))

    for i, (r, _) in enumerate(pipes):
        watch.add(r, readable, i)
    assert len(watch) == 3 and open_fds() == before + 6 + 1  # the pipes and one epoll
    os.write(pipes[2][1], b"two")
    os.write(pipes[0][1], b"zero")
    pump(loop, lambda: len(seen) == 2)
    assert sorted(seen) == [(0, b"zero"), (2, b"two")]
    assert watch.remove(pipes[2][0]) and not watch.remove(pipes[2][0])
    os.write(pipes[2][1], b"unwatched")
    os.write(pipes[1][1], b"one")
    pump(loop, lambda: len(seen) == 3)
    turns(loop)
    assert seen[2] == (1, b"one") and len(seen) == 3
    for r, _ in pipes[:2]:
        watch.remove(r)
    assert len(watch) == 0 and open_fds() == before + 6  # no epoll while nothing is watched
    for r, w in pipes:
        os.close(r)
        os.close(w)


def test_level_triggered_a_callback_that_reads_part_is_called_again(loop) -> None:
    watch = FdWatch(loop)
    r, w = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
    got: list[bytes] = []
    watch.add(r, lambda: got.append(os.read(r, 1)))
    os.write(w, b"abc")
    pump(loop, lambda: b"".join(got) == b"abc")
    watch.remove(r)
    os.close(r)
    os.close(w)


def test_a_failing_callback_is_reported_and_the_others_still_run(loop) -> None:
    errors: list[dict] = []
    loop.set_exception_handler(lambda _, context: errors.append(context))
    watch = FdWatch(loop)
    (r1, w1), (r2, w2) = os.pipe2(os.O_CLOEXEC), os.pipe2(os.O_CLOEXEC)
    got: list[bytes] = []

    def bad() -> None:
        os.read(r1, 10)
        raise RuntimeError("a bug")

    watch.add(r1, bad)
    watch.add(r2, lambda: got.append(os.read(r2, 10)))
    os.write(w1, b"x")
    os.write(w2, b"y")
    pump(loop, lambda: got == [b"y"] and errors)
    assert isinstance(errors[0]["exception"], RuntimeError)
    watch.remove(r1)
    watch.remove(r2)
    for fd in (r1, w1, r2, w2):
        os.close(fd)


def test_a_descriptor_removed_by_an_earlier_callback_of_the_batch_is_skipped(loop) -> None:
    watch = FdWatch(loop)
    (r1, w1), (r2, w2) = os.pipe2(os.O_CLOEXEC), os.pipe2(os.O_CLOEXEC)
    calls: list[int] = []

    def first(mine: int, other: int) -> None:
        calls.append(mine)
        os.read(mine, 10)
        watch.remove(other)

    watch.add(r1, first, r1, r2)
    watch.add(r2, first, r2, r1)
    os.write(w1, b"x")
    os.write(w2, b"y")
    pump(loop, lambda: calls)
    turns(loop)
    assert len(calls) == 1 and len(watch) == 1  # whichever came first removed the other
    watch.remove(calls[0])
    for fd in (r1, w1, r2, w2):
        os.close(fd)


def test_adding_again_replaces_the_callback(loop) -> None:
    watch = FdWatch(loop)
    r, w = os.pipe2(os.O_CLOEXEC)
    got: list[str] = []
    watch.add(r, lambda: got.append("old"))
    watch.add(r, lambda: got.append(os.read(r, 10).decode()))
    os.write(w, b"new")
    pump(loop, lambda: got)
    assert got == ["new"] and len(watch) == 1
    watch.remove(r)
    os.close(r)
    os.close(w)
