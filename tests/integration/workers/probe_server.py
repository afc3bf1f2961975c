"""A plain HTTP server (no supervise client) on 127.0.0.1:PORT for probe tests.

    probe_server.py PORT [--status-file F] [--listen-when F] [--exit-after S]

GET /health (and GET /) answers with the status code written in --status-file (re-read
at each request; 200 while the file is missing or empty), any other path 404, and
prints "health CODE". "503 2" in the file: 503 for the next 2 requests (the
file counts down), then 200.
--listen-when: bind only once that file exists (a TCP probe is refused until
then). --exit-after: exit 1 that many seconds after start (a boot that fails).
--term-delay: on SIGTERM, serve on that many seconds before exiting 0.
Prints "serving PID PORT" once listening; SIGTERM exits 0 (after --term-delay).
"""
import argparse
import os
import signal
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

parser = argparse.ArgumentParser()
parser.add_argument("port", type=int)
parser.add_argument("--status-file", type=Path)
parser.add_argument("--listen-when", type=Path)
parser.add_argument("--exit-after", type=float)
parser.add_argument("--term-delay", type=float, default=0.0)
args = parser.parse_args()

signal.signal(signal.SIGTERM, lambda *_: threading.Timer(args.term_delay, os._exit, (0,)).start())
if args.exit_after is not None:
    threading.Timer(args.exit_after, lambda: os._exit(1)).start()


lock = threading.Lock()


def status() -> int:
    with lock:
        try:
            text = args.status_file.read_text().strip() if args.status_file else ""
        except FileNotFoundError:
            text = ""
        if not text:
            return 200
        code, _, times = text.partition(" ")
        if times:
            left = int(times) - 1
            tmp = args.status_file.with_suffix(".tmp")
            tmp.write_text(f"{code} {left}" if left > 0 else "200")
            tmp.rename(args.status_file)
        return int(code)


class Health(BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        code = status() if self.path in ("/", "/health") else 404
        print(f"health {code}", flush=True)
        body = f"{code} {os.getpid()}\n".encode()
        self.send_response(code)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *what: object) -> None:  # quiet: the log file is for the test's lines
        pass


while args.listen_when is not None and not args.listen_when.exists():
    time.sleep(0.02)  # waits on the test, which creates the file when it wants the port open
server = ThreadingHTTPServer(("127.0.0.1", args.port), Health)
server.daemon_threads = True
print(f"serving {os.getpid()} {args.port}", flush=True)
try:
    server.serve_forever()
finally:
    sys.exit(0)
