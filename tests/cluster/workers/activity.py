"""A cluster test worker that records when it is active, so tests can measure overlap.

Every 5 ms it appends ``<monotonic time>`` to ``$ACTIVITY_DIR/<name>.<pid>.log``
(the first line also names its fencing token): the interval from its first to
its last line is when it was provably running. It uses the heartbeat client, so
a singleton gets the fencing guard (it exits by itself at an unrenewed deadline).
"""

import os
import signal
import sys
import threading
import time

from supervise.worker import Heartbeat

hb = Heartbeat.from_env()
name = os.environ.get("SUPERVISE_NAME", "standalone").replace(":", "-")
path = os.path.join(os.environ["ACTIVITY_DIR"], f"{name}.{os.getpid()}.log")
out = open(path, "a", buffering=1)  # noqa: SIM115 (open for the process's life)
out.write(f"token {os.environ.get('SUPERVISE_FENCING_TOKEN', '-')} node {os.environ.get('NODE', '-')}\n")
stop = threading.Event()
signal.signal(signal.SIGTERM, lambda *_: stop.set())


def tick() -> None:
    while True:
        out.write(f"{time.monotonic():.6f}\n")
        time.sleep(0.005)


threading.Thread(target=tick, daemon=True).start()
hb.ready()
hb.start()
stop.wait()
hb.close()
sys.exit(0)
