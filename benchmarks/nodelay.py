"""TCP_NODELAY on a supervise listen socket: keep-alive req/s of a server that writes each response
in two send()s (headers, then body, as uvicorn does), on a listener with it and without it.

    python benchmarks/nodelay.py [--seconds 5] [--connections 8] [--body 64]

The server is a worker process given the daemon's socket (Listeners.bind, as the daemon
binds it) that never touches TCP_NODELAY itself: what it gets is what Linux copied from the
listener. Without it, the body waits under Nagle's algorithm for the ACK of the headers, which
the client delays (up to 40 ms on Linux). The load is Python keep-alive clients, one process
each, or `wrk` when it is installed (--wrk). A benchmark, not a test: nothing here runs under pytest.
"""

from __future__ import annotations

import argparse
import multiprocessing
import re
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from supervise.config.model import ListenOptions  # noqa: E402
from supervise.runtime.listeners import Listeners  # noqa: E402

SERVER = r"""
import contextlib, socket, sys, threading
body = b"x" * int(sys.argv[1])
head = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n\r\n" % len(body)
listener = socket.socket(fileno=int(sys.argv[2]))

def serve(conn):
    buffer = b""
    with conn, contextlib.suppress(OSError):  # a client gone at the end of the run
        while True:
            while b"\r\n\r\n" not in buffer:
                data = conn.recv(65536)
                if not data:
                    return
                buffer += data
            _, buffer = buffer.split(b"\r\n\r\n", 1)
            conn.sendall(head)  # two writes, as uvicorn's h11 protocol makes them
            conn.sendall(body)

while True:
    conn, _ = listener.accept()
    threading.Thread(target=serve, args=(conn,), daemon=True).start()
"""

REQUEST = b"GET / HTTP/1.1\r\nHost: bench\r\nConnection: keep-alive\r\n\r\n"


def client(port: int, seconds: float, results: multiprocessing.Queue) -> None:  # type: ignore[type-arg]
    """One keep-alive connection, requests back to back for `seconds`: (count, latencies)."""
    with socket.create_connection(("127.0.0.1", port)) as sock:
        reader = sock.makefile("rb")
        count, latencies = 0, []
        end = time.monotonic() + seconds
        while (start := time.monotonic()) < end:
            sock.sendall(REQUEST)
            length = 0
            while (line := reader.readline()) not in (b"\r\n", b""):
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":")[1])
            reader.read(length)
            latencies.append(time.monotonic() - start)
            count += 1
    results.put((count, latencies))


def python_load(port: int, seconds: float, connections: int) -> tuple[float, float]:
    results: multiprocessing.Queue = multiprocessing.Queue()  # type: ignore[type-arg]
    procs = [multiprocessing.Process(target=client, args=(port, seconds, results)) for _ in range(connections)]
    for proc in procs:
        proc.start()
    gathered = [results.get() for _ in procs]
    for proc in procs:
        proc.join()
    latencies = sorted(t for _, lat in gathered for t in lat)
    return sum(c for c, _ in gathered) / seconds, latencies[int(len(latencies) * 0.99)] * 1000


def wrk_load(wrk: str, port: int, seconds: float, connections: int) -> tuple[float, float]:
    out = subprocess.run([wrk, "-t2", f"-c{connections}", f"-d{int(seconds)}s", "--latency",
                          f"http://127.0.0.1:{port}/"], capture_output=True, text=True, check=True).stdout
    rate = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    p99, unit = re.search(r"99%\s+([\d.]+)(us|ms|s)", out).groups()  # type: ignore[union-attr]
    return rate, float(p99) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]


def run(nodelay: bool, args: argparse.Namespace) -> tuple[float, float]:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    address = f"127.0.0.1:{port}"
    listeners = Listeners()
    listeners.bind(address, ListenOptions(nodelay=nodelay))
    [fd] = listeners.fds((address,))
    server = subprocess.Popen([sys.executable, "-c", SERVER, str(args.body), str(fd)], pass_fds=(fd,))
    try:
        if args.wrk:
            return wrk_load(args.wrk, port, args.seconds, args.connections)
        return python_load(port, args.seconds, args.connections)
    finally:
        server.kill()
        server.wait()
        listeners.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--connections", type=int, default=8)
    parser.add_argument("--body", type=int, default=64, help="response body bytes")
    parser.add_argument("--wrk", nargs="?", const=shutil.which("wrk") or "wrk", default=None,
                        help="load with wrk (path optional) instead of Python clients")
    args = parser.parse_args()
    print(f"{args.connections} keep-alive connections, {args.seconds:g} s each, {args.body}-byte body, "
          f"load: {'wrk' if args.wrk else 'python'}")
    figures = {}
    for nodelay in (True, False):
        rate, p99 = figures[nodelay] = run(nodelay, args)
        print(f"  nodelay={'on ' if nodelay else 'off'}  {rate:10,.0f} req/s   p99 {p99:7.2f} ms", flush=True)
    print(f"  on/off: {figures[True][0] / figures[False][0]:.1f}x")


if __name__ == "__main__":
    main()
