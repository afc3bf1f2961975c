"""A small HTTP service: one instance per port, on loopback.

    python3 examples/web.py --port 8080

GET / answers with the instance's name and pid, so `curl` against several
ports shows several instances; SIGTERM stops it cleanly.
"""

import argparse
import json
import os
import signal
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = json.dumps({
            "instance": os.environ.get("SUPERVISE_NAME", "standalone"),
            "pid": os.getpid(),
            "path": self.path,
        }).encode() + b"\n"
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, fmt: str, *args) -> None:
        print(f"{self.address_string()} {fmt % args}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, default=8080)
    parser.add_argument("--host", default="127.0.0.1")
    args = parser.parse_args()
    server = ThreadingHTTPServer((args.host, args.port), Handler)
    server.daemon_threads = True
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))  # unwinds serve_forever
    print(f"listening on http://{args.host}:{args.port} as pid {os.getpid()}", flush=True)
    try:
        server.serve_forever()
    finally:
        server.server_close()
        print("stopped", flush=True)


if __name__ == "__main__":
    main()
