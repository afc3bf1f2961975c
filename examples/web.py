"""A small HTTP service that drains cleanly: one instance per port, on loopback.

    python3 examples/web.py --port 8080
    curl 'http://127.0.0.1:8080/?delay=3'      # a slow request (at most 10 s)

GET / answers with the instance's name and pid, so `curl` against several
ports shows several instances. Under supervise it reports readiness once
listening, beats from a background thread, reports its in-flight requests as
a status field, and serves on the socket the daemon passes (LISTEN_FDS)
instead of binding --port when there is one. On a drain request or SIGTERM
it stops accepting, finishes the requests in flight, tells the daemon it has
drained, and exits 0. Standalone, the heartbeat calls do nothing.

With STARTUP_SECONDS it takes that long to start (a model to load, a cache to
warm), which is what warm spares are for: run as a spare (``spares = N``), it
starts, says it is ready, and waits for a slot without accepting anything;
once promoted it serves at once, as the instance whose slot it took.
"""

import argparse
import json
import os
import signal
import socket
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

from supervise.worker import Heartbeat

MAX_DELAY = 10.0
REPORT_EVERY = 0.2  # at most five in-flight updates a second, whatever the request rate
DRAIN_TIMEOUT = 60.0  # standalone safety net; under supervise, stop_timeout decides


class InFlight:
    """Counts requests between accept and the end of their handler."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self.count = 0
        self.version = 0  # bumped on every change, so a reporter never misses one

    def add(self, delta: int) -> None:
        with self._cond:
            self.count += delta
            self.version += 1
            self._cond.notify_all()

    def wait_change(self, seen: int) -> tuple[int, int]:
        """Blocks until the count changed since version ``seen``; returns (version, count)."""
        with self._cond:
            self._cond.wait_for(lambda: self.version != seen)
            return self.version, self.count

    def wait_idle(self, timeout: float) -> bool:
        with self._cond:
            return self._cond.wait_for(lambda: self.count == 0, timeout)


class Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], handler: type[BaseHTTPRequestHandler], inflight: InFlight,
                 sock: socket.socket | None = None) -> None:
        self.inflight = inflight
        super().__init__(address, handler, bind_and_activate=sock is None)
        if sock is not None:  # passed by the daemon: already bound, maybe already listening
            self.socket.close()
            self.socket = sock
            self.server_address = sock.getsockname()
            self.server_name, self.server_port = self.server_address[:2]
            # No listen() here: the daemon listens with a deep backlog, and
            # listen(5) (socketserver's default) would shrink the shared queue
            # that holds connections while instances are replaced.
            # Every instance waits on this one socket and all wake for each
            # connection; only one wins the accept(). Blocking, the others
            # would sit in accept() deaf to shutdown(); non-blocking, they get
            # EAGAIN (an OSError socketserver ignores) and go back to waiting.
            sock.setblocking(False)

    def process_request(self, request: socket.socket, client_address: tuple[str, int]) -> None:
        # Counted here, in the accepting thread, so that once serve_forever()
        # returns every accepted connection is already in the count.
        self.inflight.add(1)
        try:
            super().process_request(request, client_address)
        except BaseException:
            self.inflight.add(-1)
            raise

    def process_request_thread(self, request: socket.socket, client_address: tuple[str, int]) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self.inflight.add(-1)


class Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        query = parse_qs(urlsplit(self.path).query)
        try:
            delay = min(max(float(query.get("delay", ["0"])[0]), 0.0), MAX_DELAY)
        except ValueError:
            self.reply(400, {"error": "delay must be a number of seconds"})
            return
        time.sleep(delay)  # the "work"
        self.reply(200, {
            "instance": self.server.hb.name or "standalone",  # type: ignore[attr-defined]
            "pid": os.getpid(),
            "path": self.path,
            "delay": delay,
        })

    def reply(self, code: int, data: dict) -> None:
        body = json.dumps(data).encode() + b"\n"
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, fmt: str, *args) -> None:
        print(f"{self.address_string()} {fmt % args}", flush=True)


def report_inflight(hb: Heartbeat, inflight: InFlight) -> None:
    """Sends the in-flight count when it changes, throttled; the background
    beats repeat the last value in between."""
    seen = 0
    while True:
        seen, count = inflight.wait_change(seen)
        hb.beat(inflight=count)
        time.sleep(REPORT_EVERY)  # throttle: changes meanwhile are picked up by the next round


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, default=8080)
    parser.add_argument("--host", default="127.0.0.1")
    args = parser.parse_args()

    hb = Heartbeat.from_env()
    time.sleep(float(os.environ.get("STARTUP_SECONDS", "0")))  # the slow start a spare has done already
    inflight = InFlight()
    passed = hb.listen_sockets()
    server = Server((args.host, args.port), Handler, inflight, passed[0] if passed else None)
    server.hb = hb  # type: ignore[attr-defined]
    # SIGTERM (and Ctrl-C) mean the same as a drain request. The handler only
    # sets an event: the main thread sits in serve_forever() and never waits
    # on that event itself, so setting it here cannot deadlock on its lock.
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: hb.draining.set())
    threading.Thread(target=lambda: (hb.draining.wait(), server.shutdown()), daemon=True).start()
    threading.Thread(target=report_inflight, args=(hb, inflight), daemon=True).start()

    host, port = server.server_address[:2]
    origin = "passed in LISTEN_FDS" if passed else "bound"
    print(f"listening on http://{host}:{port} ({origin}) as pid {os.getpid()}", flush=True)
    hb.ready(inflight=0)
    hb.start()
    if hb.spare:  # started and ready, but serving nothing until it takes a slot
        print(f"spare {hb.name}: waiting for a slot", flush=True)
        if hb.wait_for_slot() is None:
            print("stopped as a spare", flush=True)
            hb.close()
            return 0
        print(f"promoted: now {hb.name}", flush=True)

    server.serve_forever(poll_interval=0.1)  # how often it checks for shutdown(): bounds the drain's start
    server.server_close()  # stop accepting: new connections go to the other instances
    print(f"draining: {inflight.count} request(s) in flight", flush=True)
    if not inflight.wait_idle(DRAIN_TIMEOUT):
        print(f"gave up waiting for {inflight.count} request(s)", flush=True)
    hb.drained()
    hb.close()
    print("stopped", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
