"""Prints {name: value or null} for each name in argv[1:] as one JSON line, then sleeps until SIGTERM."""
import json
import os
import signal
import sys
import time

signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
print(json.dumps({name: os.environ.get(name) for name in sys.argv[1:]}), flush=True)
while True:
    time.sleep(3600)
