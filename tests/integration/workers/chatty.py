"""Writes numbered lines as fast as asked: argv[1] lines per second (0: flat out)."""
import signal
import sys
import time

signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
rate = float(sys.argv[1])
n = 0
while True:
    n += 1
    print(f"line {n:08d} " + "x" * 100, flush=True)
    if rate:
        time.sleep(1 / rate)
