"""Writes to stdout as fast as it can for FLOOD_SECONDS, then idles."""
import os
import signal
import sys
import time

signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
line = ("x" * 1023 + "\n").encode()
end = time.monotonic() + float(os.environ.get("FLOOD_SECONDS", "2"))
while time.monotonic() < end:
    os.write(1, line * 64)
print("flood over", flush=True)
time.sleep(600)
