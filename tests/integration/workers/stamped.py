"""Prints numbered lines with the time it printed each, `<n> <unix time>`, every argv[1] seconds."""
import signal
import sys
import time

signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
interval = float(sys.argv[1])
n = 0
while True:
    n += 1
    print(f"{n} {time.time():.6f}", flush=True)
    time.sleep(interval)
