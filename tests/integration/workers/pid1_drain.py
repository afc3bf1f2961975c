"""Appends "up NAME PID" to argv[1], then sleeps; on SIGTERM appends
"term NAME PID NSPID-OF-PARENT" and exits 0: proof that it was asked to stop
and stopped by itself, not killed with its pid namespace."""
import os
import signal
import sys

path = sys.argv[1]
name = os.environ.get("SUPERVISE_NAME")


def note(line: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, f"{line}\n".encode())  # one write, O_APPEND: lines never interleave
    finally:
        os.close(fd)


def on_term(*_: object) -> None:
    note(f"term {name} {os.getpid()} {os.getppid()}")
    sys.exit(0)


signal.signal(signal.SIGTERM, on_term)
note(f"up {name} {os.getpid()} {os.getppid()}")
print(f"up {name} {os.getpid()}", flush=True)
while True:
    signal.pause()
