"""A pre-forking server in miniature: a master loads data, then forks children that share it.

argv[1]: megabytes the master writes before the fork (gunicorn --preload's
app), argv[2]: how many children. The children share those pages
copy-on-write, so the tree's RSS sum counts them once per process while
the kernel holds them once. Two ways for the tree to really grow, each
child saying "grown <pid>" when done:

- SIGUSR1 to the master: every child writes its copy of the shared data
  (copy-on-write: its RSS does not change, its PSS does);
- SIGUSR2: every child allocates and writes as much again, in new pages
  (its RSS grows as much as its PSS).

Prints "forked <child pids>" once every child is up. SIGTERM: the children go first.
"""
import os
import signal
import sys
import time

PAGE = 4096
GROW = {signal.SIGUSR1, signal.SIGUSR2}


def touch(data: bytearray, value: int) -> None:
    """Write one byte in every page: each page becomes resident (and, after a fork, this process's own)."""
    for i in range(0, len(data), PAGE):
        data[i] = value


def say(line: str) -> None:
    """One write per line: the children's lines never interleave (print writes the newline apart)."""
    os.write(1, (line + "\n").encode())


def child(data: bytearray) -> None:
    """Sleep sharing the master's pages until told to grow; grow; sleep on.

    SIGUSR1 and SIGUSR2 stay blocked and are taken with sigwait: none is lost between two waits."""
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM})
    more = []
    while True:
        if signal.sigwait(GROW) == signal.SIGUSR1:
            touch(data, 2)
        else:
            more.append(bytearray(len(data)))
            touch(more[-1], 3)
        say(f"grown {os.getpid()}")


def main() -> None:
    megabytes, count = int(sys.argv[1]), int(sys.argv[2])
    data = bytearray(megabytes * 1024 * 1024)
    touch(data, 1)
    children = []
    signal.pthread_sigmask(signal.SIG_BLOCK, GROW | {signal.SIGTERM})  # none lost before handlers
    for _ in range(count):
        pid = os.fork()
        if pid == 0:
            child(data)
            os._exit(0)
        children.append(pid)

    def forward(signum: int, _: object) -> None:
        for pid in children:
            try:
                os.kill(pid, signum)
            except ProcessLookupError:
                pass
        if signum == signal.SIGTERM:
            for pid in children:
                os.waitpid(pid, 0)
            sys.exit(0)

    for signum in (*GROW, signal.SIGTERM):
        signal.signal(signum, forward)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, GROW | {signal.SIGTERM})
    say("forked " + " ".join(map(str, children)))
    while True:
        time.sleep(3600)


if __name__ == "__main__":
    main()
