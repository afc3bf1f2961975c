"""The health benchmark's worker: hangs on cue, or bloats on cue, and says exactly when.

    python health_worker.py hang            # beats from its loop, then goes quiet at a random moment
    python -S health_worker.py memory BYTES  # after a random moment, touches BYTES in one step

Every report is one datagram ``b"<pid> <monotonic stamp> <what> <name>"`` to the
AF_UNIX SOCK_DGRAM socket named by ``BENCH_SOCK`` (the format of harness.Inbox,
whose "name" field here carries ``<what> <name>``):

- ``up``: first thing at startup (the stamp is taken before any import but the builtins);
- ``quiet`` (hang): the stamp is the last beat, sent the moment it decided to stop;
- ``crossed`` (memory): the stamp is taken right after the allocation is touched;
- ``term <last beat>`` (both modes, on SIGTERM): the stamp is the signal's arrival
  (taken first thing in the handler); then the worker exits 0 at once.

CLOCK_MONOTONIC is system-wide on Linux, so the benchmark compares these
stamps with each other and with its own clock. ``name`` is ``SUPERVISE_NAME``.

The memory mode imports only builtins (it runs under ``python -S``, so the
replacement's start-up is the interpreter's, as in bench_worker.py). The hang
mode beats with ``supervise.worker.Heartbeat``, calling ``beat()`` from its own
loop (no ``start()``: a background thread would keep beating through the hang).
"""

import _socket
import os
import signal
import sys
import time

_STAMP = time.monotonic()


class Reporter:
    def __init__(self) -> None:
        self.path = os.environ.get("BENCH_SOCK")
        self.name = os.environ.get("SUPERVISE_NAME", "-")
        self.pid = os.getpid()
        self.sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_DGRAM)

    def send(self, stamp: float, what: str) -> None:
        if not self.path:
            return
        try:
            self.sock.sendto(f"{self.pid} {stamp!r} {what} {self.name}".encode(), self.path)
        except OSError:
            pass  # the benchmark is gone; the daemon will stop us


def fraction() -> float:
    """A uniform number in [0, 1) without importing random (memory mode runs under -S)."""
    return int.from_bytes(os.urandom(4), "little") / 2**32


def hang(report: Reporter) -> None:
    last = [None]  # the last beat's stamp, read by the SIGTERM handler

    def on_term(signum, frame):
        now = time.monotonic()
        report.send(now, f"term {last[0]!r}")
        os._exit(0)

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)
    from supervise.worker import Heartbeat  # needs site (pyzmq, the editable install)

    hb = Heartbeat.from_env()
    hb.ready()
    last[0] = time.monotonic()  # `ready` counts as a beat
    quiet_at = last[0] + float(os.environ.get("BENCH_QUIET_MIN", "0.5")) \
        + float(os.environ.get("BENCH_QUIET_SPREAD", "1.5")) * fraction()
    while True:
        due = last[0] + hb.interval
        if due > quiet_at:
            break
        time.sleep(max(0.0, due - time.monotonic()))
        hb.beat()
        last[0] = time.monotonic()  # the I/O thread sends it as this thread sleeps: within microseconds
    report.send(last[0], "quiet")
    while True:
        signal.pause()  # hung: no more beats


def memory(report: Reporter, size: int) -> None:
    hold_min = float(os.environ.get("BENCH_HOLD_MIN", "0.3"))
    hold_spread = float(os.environ.get("BENCH_HOLD_SPREAD", "0.7"))
    time.sleep(hold_min + hold_spread * fraction())  # "ready for a moment"
    buf = b"\x01" * size  # memset: every page is touched, RSS grows by `size` now
    crossed = time.monotonic()
    report.send(crossed, "crossed")
    while True:
        signal.pause()
    del buf


def main() -> None:
    report = Reporter()
    mode = sys.argv[1] if len(sys.argv) > 1 else ""
    if mode == "memory":
        def on_term(signum, frame):
            now = time.monotonic()
            report.send(now, "term -")
            os._exit(0)

        signal.signal(signal.SIGTERM, on_term)
        signal.signal(signal.SIGINT, on_term)
    report.send(_STAMP, "up")
    if mode == "hang":
        hang(report)
    elif mode == "memory":
        memory(report, int(sys.argv[2]))
    else:
        sys.exit(f"usage: {sys.argv[0]} hang | memory BYTES")


if __name__ == "__main__":
    main()
