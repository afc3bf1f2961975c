"""Prints, as one line, the sorted names of its environment variables that contain any of argv[1:], then sleeps.

For checking what a worker is not given (the daemon's own NOTIFY_SOCKET, WATCHDOG_USEC): names only,
so a test can compare with [].
"""
import os
import signal
import sys
import time

signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
print(sorted(name for name in os.environ if any(part in name for part in sys.argv[1:])), flush=True)
while True:
    time.sleep(3600)
