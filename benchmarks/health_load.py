"""Heartbeat load generator for benchmarks/health.py: valid `beat` messages to a ROUTER.

    python health_load.py ENDPOINT TOKENS --count N [--sockets K]          # a burst, as fast as it goes
    python health_load.py ENDPOINT TOKENS --rate R --duration S --sockets per-token   # paced

TOKENS holds one ``<name> <token> <pid>`` line per instance (the workers wrote
their own SUPERVISE_NAME, SUPERVISE_TOKEN and pid: tokens are per-spawn
secrets, the environment is the only place to get them). Each message is
exactly what ``supervise.worker.Heartbeat`` sends for a beat without status
fields (``protocol.encode_heartbeat``), for the instances in turn.

Sends block (the DEALER's default), so nothing is dropped on this side: when
the receiver falls behind, its queue and ours fill and this process waits.
``--sockets per-token`` gives each instance its own DEALER, as real workers
have; otherwise K DEALERs take the messages in turn.

Output, one line each, on stdout: ``go <monotonic>`` once the sockets are
connected (just before the first send), then ``done <json>`` with ``first``
and ``last`` (monotonic stamps of the first and last send), ``flushed`` (after
the context has handed every message to the kernel), ``sent`` and ``cpu``
(this process's CPU seconds while sending).
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import zmq

from supervise.wire import protocol


def load_frames(path: str) -> list[bytes]:
    frames = []
    with open(path) as f:
        for line in f:
            if line.strip():
                name, token, pid = line.split()
                frames.append(protocol.encode_heartbeat(protocol.Heartbeat("beat", name, token, int(pid), None)))
    if not frames:
        sys.exit(f"no tokens in {path}")
    return frames


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("endpoint")
    p.add_argument("tokens")
    p.add_argument("--count", type=int, help="burst: send this many as fast as possible")
    p.add_argument("--rate", type=float, help="paced: messages per second, spread evenly")
    p.add_argument("--duration", type=float, help="paced: seconds")
    p.add_argument("--sockets", default="1", help="a number of DEALERs, or per-token")
    p.add_argument("--settle", type=float, default=0.3, help="seconds between connecting and the first send")
    args = p.parse_args()
    frames = load_frames(args.tokens)
    n = len(frames)
    nsock = n if args.sockets == "per-token" else int(args.sockets)

    ctx = zmq.Context()
    ctx.set(zmq.MAX_SOCKETS, nsock + 64)
    socks = []
    for _ in range(nsock):
        s = ctx.socket(zmq.DEALER)
        s.setsockopt(zmq.LINGER, 60_000)  # close() waits for the queue to reach the receiver
        s.connect(args.endpoint)
        socks.append(s)
    time.sleep(args.settle)  # let the handshakes finish before the clock starts
    print(f"go {time.monotonic()!r}", flush=True)

    c0 = time.process_time()
    if args.count is not None:
        total = args.count
        if nsock == 1:
            send = socks[0].send
            batch = frames * (total // n) + frames[: total % n]
            first = time.monotonic()
            for frame in batch:
                send(frame)
        else:
            first = time.monotonic()
            for i in range(total):
                socks[i % nsock].send(frames[i % n])
    else:
        if args.rate is None or args.duration is None:
            sys.exit("give --count, or --rate and --duration")
        total = int(args.rate * args.duration)
        first = time.monotonic()
        step = 1.0 / args.rate
        for i in range(total):
            lag = first + i * step - time.monotonic()
            if lag > 0:
                time.sleep(lag)
            socks[i % nsock].send(frames[i % n])
    last = time.monotonic()
    cpu = time.process_time() - c0
    for s in socks:
        s.close()
    ctx.term()  # returns once every queued message has left
    flushed = time.monotonic()
    print("done " + json.dumps({"first": first, "last": last, "flushed": flushed, "sent": total, "cpu": cpu}),
          flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
