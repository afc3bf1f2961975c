"""Two instances take turns: instance 0 prints the odd numbers, instance 1 the even ones, `<n> <unix time>`.

Each prints n only once the other's log file (in argv[1]) ends with n - 1, and argv[2] seconds after
it saw that: so the order of their lines is known, and consecutive lines are at least that far apart
(more than the log time index's 20 ms granularity). Exits 0 on SIGTERM.
"""
import os
import signal
import sys
import time

signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
logs, gap = sys.argv[1], float(sys.argv[2])
me = int(os.environ["SUPERVISE_INSTANCE"])
other = os.path.join(logs, f"{os.environ['SUPERVISE_APP']}.{1 - me}.log")


def last_number() -> int:
    try:
        with open(other, "rb") as f:
            f.seek(max(0, f.seek(0, os.SEEK_END) - 200))
            last = f.read().rstrip(b"\n").rsplit(b"\n", 1)[-1]
        return int(last.split()[0])
    except (OSError, ValueError, IndexError):
        return 0


n = me + 1
while True:
    while n > 1 and last_number() != n - 1:
        time.sleep(0.005)  # the worker's own polling of a file: its turn comes when the other has printed
    time.sleep(gap)
    print(f"{n} {time.time():.6f}", flush=True)
    n += 2
