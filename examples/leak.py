"""A worker that leaks memory steadily, half of it in a child process it forks.

    LEAK_MB_PER_S=50 python3 examples/leak.py

It shows that the daemon's memory limit counts the whole process tree: each
process alone stays under the limit for twice as long as the two together.
LEAK_MB_PER_S (default 20) is the total for both; LEAK_LIMIT_MB (default
2000) stops the growth there, so a standalone run cannot eat the machine.
Both print their resident size now and then. The child leaves when its
parent is gone; a drain or SIGTERM ends both.
"""

import os
import resource
import signal
import sys
import time

from supervise.worker import Heartbeat

MB = 1 << 20
TICK = 0.5  # seconds between allocations
PRINT_EVERY = 2.0


def rss_mb() -> float:
    """Resident size now (Linux), or the peak where /proc is missing."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / MB
    except OSError:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class Leak:
    """Grows by ``mb_per_s`` until ``limit_mb``; call ``tick()`` every TICK seconds."""

    def __init__(self, label: str, mb_per_s: float, limit_mb: float) -> None:
        self.label = label
        self.chunk = int(mb_per_s * TICK * MB)
        self.limit = int(limit_mb * MB)
        self.hoard: list[bytes] = []
        self.size = 0
        self.printed = 0.0

    def tick(self) -> None:
        if self.size + self.chunk <= self.limit:
            self.hoard.append(b"x" * self.chunk)  # written, so resident: not just reserved
            self.size += self.chunk
        now = time.monotonic()
        if now - self.printed >= PRINT_EVERY:
            self.printed = now
            print(f"{self.label} pid {os.getpid()}: leaked {self.size / MB:.0f} MB, rss {rss_mb():.0f} MB", flush=True)


def child(leak: Leak, parent: int) -> None:
    while os.getppid() == parent:  # reparented: the parent is gone, and so are we
        leak.tick()
        time.sleep(TICK)


def main() -> int:
    rate = float(os.environ.get("LEAK_MB_PER_S", "20"))
    limit = float(os.environ.get("LEAK_LIMIT_MB", "2000"))
    hb = Heartbeat.from_env()  # only the parent reports; it starts no thread before fork()
    parent = os.getpid()
    pid = os.fork()  # before any thread exists, so the child inherits no held lock
    if pid == 0:
        try:
            child(Leak("child ", rate / 2, limit / 2), parent)
        finally:
            os._exit(0)  # skip the parent's atexit and buffers
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: sys.exit(0))  # unwinds to the finally below
    leak = Leak("parent", rate / 2, limit / 2)
    print(f"leaking {rate} MB/s up to {limit} MB: half in pid {parent}, half in child {pid}", flush=True)
    try:
        hb.ready()
        hb.start()
        while not hb.draining.wait(TICK):
            leak.tick()
        hb.drained()
        return 0
    finally:
        os.kill(pid, signal.SIGTERM)
        os.waitpid(pid, 0)
        hb.close()


if __name__ == "__main__":
    sys.exit(main())
