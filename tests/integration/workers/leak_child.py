"""Holds memory in a child process (the tree is what counts), beating all along.

argv[1]: megabytes the child grabs, argv[2]: seconds to wait before it does.
"""
import json
import os
import signal
import sys
import time

import zmq

mb, after = int(sys.argv[1]), float(sys.argv[2])
if os.fork() == 0:
    time.sleep(after)
    hog = bytearray(mb * 1024 * 1024)
    for i in range(0, len(hog), 4096):
        hog[i] = 1  # touch every page so it is resident
    print(f"child {os.getpid()} holds {mb} MB", flush=True)
    time.sleep(3600)
    os._exit(0)
signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
env = os.environ
ctx = zmq.Context()
sock = ctx.socket(zmq.DEALER)
sock.setsockopt(zmq.LINGER, 0)
sock.connect(env["SUPERVISE_HEARTBEAT"])
msg = {"v": 1, "name": env["SUPERVISE_NAME"], "token": env["SUPERVISE_TOKEN"]}
sock.send(json.dumps({**msg, "type": "ready"}).encode())
print(f"up {os.getpid()}", flush=True)
while True:
    time.sleep(float(env["SUPERVISE_HEARTBEAT_INTERVAL"]))
    sock.send(json.dumps({**msg, "type": "beat"}).encode())
