"""Beats (by hand, every 50 ms) until a pause file appears in $PAUSE_DIR, then stops beating and keeps running.

`pause` pauses every instance, `pause-N` instance N alone. When it stops beating it writes
`paused-N` (the wall time of its last beat): a later spawn of that slot (its replacement) finds
it and beats on normally, but says ready only while no `gate` file exists (so a test can hold
replacements back and look at what waits meanwhile). Exits 0 on SIGTERM.
"""
import os
import signal
import sys
import time
from pathlib import Path

from supervise.worker import Heartbeat

BEAT_EVERY = 0.05  # often, so that instances paused together are found hung within ~50 ms of each other

signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
directory = Path(os.environ["PAUSE_DIR"])
index = os.environ["SUPERVISE_INSTANCE"]
marker = directory / f"paused-{index}"
replacement = marker.exists()
hb = Heartbeat.from_env()
while replacement and (directory / "gate").exists():
    time.sleep(0.02)
hb.ready()
last_beat = time.time()  # (ready counts as a beat)
while True:
    if not replacement and ((directory / "pause").exists() or (directory / f"pause-{index}").exists()):
        break
    hb.beat()
    last_beat = time.time()
    time.sleep(BEAT_EVERY)
temporary = marker.with_suffix(".tmp")
temporary.write_text(repr(last_beat))
temporary.rename(marker)  # whole, or not at all: a reader never sees it empty
while True:  # hung: alive, silent
    time.sleep(3600)
