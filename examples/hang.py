"""A worker whose main loop deadlocks after a while, so the daemon declares it hung.

    HANG_AFTER=5 python3 examples/hang.py

It beats from its main loop with ``hb.beat()`` instead of ``hb.start()``: a
background thread would keep beating through the deadlock (it proves the
process schedules threads, not that the loop makes progress). After
HANG_AFTER seconds (default 20) the loop blocks forever on a lock it already
holds; the beats stop and the daemon, past heartbeat_timeout, declares the
instance hung and kills it. A drain before that ends it cleanly.
"""

import os
import sys
import threading
import time

from supervise.worker import Heartbeat


def deadlock() -> None:
    lock = threading.Lock()
    lock.acquire()
    lock.acquire()  # never returns


def main() -> int:
    hang_after = float(os.environ.get("HANG_AFTER", "20"))
    name = os.environ.get("SUPERVISE_NAME", "hang")
    hb = Heartbeat.from_env()
    print(f"{name}: pid {os.getpid()}, beating every {hb.interval}s, hanging after {hang_after}s", flush=True)
    hb.ready(loops=0)
    hang_at = time.monotonic() + hang_after
    loops = 0
    while time.monotonic() < hang_at:
        if hb.draining.wait(hb.interval):  # paces the loop, and wakes at once on a drain
            print(f"{name}: drained after {loops} loops", flush=True)
            hb.drained()
            hb.close()
            return 0
        loops += 1
        hb.beat(loops=loops)  # from the loop itself: it stops when the loop stops
    print(f"{name}: deadlocking after {loops} loops", flush=True)
    deadlock()
    return 1


if __name__ == "__main__":
    sys.exit(main())
