"""Leaks processes: forks a sleeping child every millisecond (at most 300), a slow fork bomb."""
import os
import signal
import sys
import time

signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
print(f"leaking from {os.getpid()}", flush=True)
for _ in range(300):
    if os.fork() == 0:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # and its children will not go quietly
        time.sleep(600)
        os._exit(0)
    time.sleep(0.001)
time.sleep(600)
