"""The heartbeat ingest baseline: a bare pyzmq ROUTER that reads and json-decodes.

    python health_sink.py ENDPOINT COUNT [LINGER]

Binds a ROUTER at ENDPOINT (with the daemon's receive high-water mark),
prints ``ready``, then receives COUNT messages, ``json.loads`` each one's
payload frame and nothing more, and prints ``done <json>``: ``last`` (the
monotonic stamp after the last message was decoded) and ``cpu`` (this
process's CPU seconds, every thread, from ready to the last message).
What the daemon does on top of this (validation, the token check, the core's
beat) is the cost of supervise. With LINGER it stays up that many seconds
after ``done``, so its threads can still be measured.
"""

from __future__ import annotations

import json
import sys
import time

import zmq


def main() -> int:
    endpoint, count = sys.argv[1], int(sys.argv[2])
    ctx = zmq.Context()
    sock = ctx.socket(zmq.ROUTER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.RCVHWM, 100_000)  # as supervise.heartbeats
    sock.bind(endpoint)
    c0 = time.process_time()
    print("ready", flush=True)
    recv, loads = sock.recv_multipart, json.loads
    for _ in range(count):
        frames = recv()
        loads(frames[1])
    last = time.monotonic()
    cpu = time.process_time() - c0
    print("done " + json.dumps({"last": last, "cpu": cpu}), flush=True)
    if len(sys.argv) > 3:
        time.sleep(float(sys.argv[3]))
    sock.close()
    ctx.term()
    return 0


if __name__ == "__main__":
    sys.exit(main())
