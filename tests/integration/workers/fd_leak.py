"""Opens files until the kernel says no, says how many, then lives on."""
import os
import signal
import sys
import time

signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
held = []
try:
    while True:
        held.append(os.open(os.devnull, os.O_RDONLY))
except OSError as exc:
    print(f"opened {len(held)} files, then: {exc.strerror}", flush=True)
time.sleep(600)
