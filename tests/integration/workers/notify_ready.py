"""A worker that speaks sd_notify(3) as gunicorn does, with the socket module alone.

    notify_ready.py [--report F] [--ready-when F] [--status TEXT] [--watchdog S] [--watchdog-until F]

Writes {pid, NOTIFY_SOCKET, WATCHDOG_USEC, name} as JSON to --report at start.
Sends STATUS=TEXT (when given) as soon as it starts, then READY=1 once the
--ready-when file exists (at once without it; never with --ready-when and no
such file). With --watchdog, sends WATCHDOG=1 every S seconds until the
--watchdog-until file exists, then stays silent. SIGTERM exits 0.
"""
import argparse
import json
import os
import signal
import socket
import time
from pathlib import Path

parser = argparse.ArgumentParser()
parser.add_argument("--report", type=Path)
parser.add_argument("--ready-when", type=Path)
parser.add_argument("--status")
parser.add_argument("--watchdog", type=float)
parser.add_argument("--watchdog-until", type=Path)
args = parser.parse_args()

signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
address = os.environ.get("NOTIFY_SOCKET", "")
info = {"pid": os.getpid(), "name": os.environ.get("SUPERVISE_NAME"), "NOTIFY_SOCKET": address or None,
        "WATCHDOG_USEC": os.environ.get("WATCHDOG_USEC")}
if args.report is not None:
    tmp = args.report.with_suffix(".tmp")
    tmp.write_text(json.dumps(info))
    tmp.rename(args.report)  # whole or absent: the test reads it as soon as it exists
print(json.dumps(info), flush=True)


def notify(message: str) -> None:
    """One datagram, as sd_notify sends it: a leading "@" names an abstract socket."""
    if not address:
        return
    target = "\0" + address[1:] if address.startswith("@") else address
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
        sock.connect(target)
        sock.sendall(message.encode())


if args.status is not None:
    notify(f"STATUS={args.status}")
ready = False
last_ping = None
while True:
    if not ready and (args.ready_when is None or args.ready_when.exists()):
        notify("READY=1")
        ready = True
    if args.watchdog:
        due = last_ping is None or time.monotonic() - last_ping >= args.watchdog
        if due and (args.watchdog_until is None or not args.watchdog_until.exists()):
            notify("WATCHDOG=1")
            last_ping = time.monotonic()
    elif ready:
        break
    time.sleep(0.02)  # the worker's own pace: it looks at the test's files and its ping clock
while True:
    time.sleep(3600)
