"""The benchmark's worker: report "I am up" once, precisely, then idle.

At startup it sends one datagram, ``b"<pid> <time.monotonic()> <name>"``, to
the AF_UNIX SOCK_DGRAM socket named by ``BENCH_SOCK`` (the benchmark binds
it). CLOCK_MONOTONIC is system-wide on Linux, so the benchmark can compare
the stamp with its own clock. Then it prints one line (so the log file has
something) and sleeps in ``signal.pause()``; SIGTERM (or SIGINT) exits 0 at
once. Deliberately tiny: only builtin modules, nothing from ``supervise``.
"""

import _socket
import os
import signal
import sys
import time


def _exit(signum, frame):
    os._exit(0)


def main() -> None:
    stamp = time.monotonic()
    signal.signal(signal.SIGTERM, _exit)
    signal.signal(signal.SIGINT, _exit)
    path = os.environ.get("BENCH_SOCK")
    if path:
        name = os.environ.get("SUPERVISE_NAME", "-")
        sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_DGRAM)
        try:
            sock.sendto(f"{os.getpid()} {stamp!r} {name}".encode(), path)
        except OSError:
            pass  # the benchmark is gone; idle anyway, the daemon will stop us
        finally:
            sock.close()
    sys.stdout.write(f"bench worker {os.getpid()} up\n")
    sys.stdout.flush()
    while True:
        signal.pause()


if __name__ == "__main__":
    main()
