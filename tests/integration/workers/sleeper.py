"""Prints one line, then sleeps until SIGTERM (exits 0)."""
import os
import signal
import sys
import time

signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
print(f"up {os.environ.get('SUPERVISE_NAME')} {os.getpid()}", flush=True)
while True:
    time.sleep(3600)
