"""A worker that crashes now and then, so restarts and backoff can be watched.

Every second it rolls a die; on a 1 it dies with exit code 1 (or by
SIGSEGV-like abort when FLAKY_ABORT is set). Watch it with
`supervise status` or `supervise events`.
"""

import os
import random
import signal
import sys
import time


def main() -> None:
    name = os.environ.get("SUPERVISE_NAME", "flaky")
    chance = float(os.environ.get("FLAKY_CHANCE", "0.1"))
    print(f"{name}: up as pid {os.getpid()}, crashing with p={chance} per second", flush=True)
    while True:
        time.sleep(1.0)
        if random.random() < chance:
            print(f"{name}: something went wrong, crashing", file=sys.stderr, flush=True)
            if os.environ.get("FLAKY_ABORT"):
                os.kill(os.getpid(), signal.SIGABRT)
            sys.exit(1)
        print(f"{name}: still fine", flush=True)


if __name__ == "__main__":
    main()
