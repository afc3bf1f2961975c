"""Speaks the heartbeat protocol with raw pyzmq, from docs/protocol.md alone.

MODE: good           ready, beats with status fields; on drain: drained, exit 0 (SIGTERM alone: no exit)
      never-ready    connects, never says anything
      hang AFTER     ready, beats for AFTER seconds, then stops beating (blocks)
      drained-stuck  ready, beats; on drain: says drained but never exits
      late-ready S   beats for S seconds before ready
"""
import json
import os
import signal
import sys
import time

import zmq

# SIGTERM alone does not end it: it waits for the daemon's drain message,
# as a server finishing in-flight requests would.
signal.signal(signal.SIGTERM, lambda *_: print("SIGTERM: waiting for drain", flush=True))

mode = sys.argv[1]
env = os.environ
ctx = zmq.Context()
sock = ctx.socket(zmq.DEALER)
sock.setsockopt(zmq.LINGER, 1000)
sock.connect(env["SUPERVISE_HEARTBEAT"])
interval = float(env["SUPERVISE_HEARTBEAT_INTERVAL"])


def send(kind: str, **status: int) -> None:
    msg = {"v": 1, "type": kind, "name": env["SUPERVISE_NAME"], "token": env["SUPERVISE_TOKEN"], "pid": os.getpid()}
    if status:
        msg["status"] = status
    sock.send(json.dumps(msg).encode())


print(f"up {mode} {os.getpid()}", flush=True)
if mode == "never-ready":
    time.sleep(3600)
started = time.monotonic()
if mode == "late-ready":
    while time.monotonic() - started < float(sys.argv[2]):
        send("beat")
        time.sleep(interval)
send("ready", inflight=0)
beats = 0
while True:
    if mode == "hang" and time.monotonic() - started > float(sys.argv[2]):
        print("hanging now", flush=True)
        time.sleep(3600)
    if sock.poll(interval * 1000):
        kind = json.loads(sock.recv())["type"]
        if kind == "drain":
            print("draining", flush=True)
            send("drained")
            if mode == "drained-stuck":
                time.sleep(3600)
            sock.close()
            ctx.term()
            sys.exit(0)
    beats += 1
    send("beat", inflight=2, beats=beats)
