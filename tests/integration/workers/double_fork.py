"""Leaves a grandchild behind: fork, setsid, fork again; the grandchild writes
its pid to argv[1] and sleeps, ignoring SIGTERM. The worker then sleeps."""
import os
import signal
import sys
import time

pidfile = sys.argv[1]
if os.fork() == 0:
    os.setsid()
    if os.fork() == 0:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        with open(pidfile + ".tmp", "w") as f:
            f.write(str(os.getpid()))
        os.rename(pidfile + ".tmp", pidfile)
        while True:
            time.sleep(3600)
    os._exit(0)
os.wait()
signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
print(f"up {os.getpid()}", flush=True)
while True:
    time.sleep(3600)
