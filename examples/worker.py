"""A background worker that takes jobs from nowhere and logs what it does.

It shows the shape of a queue consumer: a loop that finishes the job in
hand when asked to stop (SIGTERM) instead of dying mid-job.
"""

import os
import random
import signal
import time
from types import FrameType

stopping = False


def on_term(signum: int, frame: FrameType | None) -> None:
    """Only note the request: the job in hand is finished first, then the loop ends."""
    global stopping
    stopping = True


def main() -> None:
    signal.signal(signal.SIGTERM, on_term)
    name = os.environ.get("SUPERVISE_NAME", "worker")
    print(f"{name}: started as pid {os.getpid()}", flush=True)
    job = 0
    while not stopping:
        job += 1
        took = random.uniform(0.5, 2.0)
        time.sleep(took)  # the "work"
        print(f"{name}: finished job {job} in {took:.2f}s", flush=True)
    print(f"{name}: stopping after job {job}", flush=True)


if __name__ == "__main__":
    main()
