"""Ignores SIGTERM: only SIGKILL ends it."""
import os
import signal
import time

signal.signal(signal.SIGTERM, signal.SIG_IGN)
print(f"up {os.getpid()} ignoring SIGTERM", flush=True)
while True:
    time.sleep(3600)
