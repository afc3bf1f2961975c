"""A worker whose main process forks a child that carries on (as gunicorn's workers do), then beats."""
import os
import signal
import sys
import time

from supervise.worker import Heartbeat

child = os.fork()
if child == 0:
    print(f"child {os.getpid()}", flush=True)
    while True:
        time.sleep(3600)
signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
print(f"main {os.getpid()} child {child}", flush=True)
hb = Heartbeat.from_env()
hb.ready()
hb.start()
while True:
    time.sleep(3600)
