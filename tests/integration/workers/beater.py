"""Ready at once, then beats every SUPERVISE_HEARTBEAT_INTERVAL; exits 0 on SIGTERM."""
import signal
import sys
import time

from supervise.worker import Heartbeat

signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
hb = Heartbeat.from_env()
hb.ready()
hb.start()
while True:
    time.sleep(3600)
