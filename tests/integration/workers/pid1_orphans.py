"""Makes orphans in rounds, then sleeps until SIGTERM (exits 0).

argv: REPORT ROUNDS PER_ROUND. Each orphan is a grandchild whose parent (a
middle child) exits at once, so the kernel re-parents it to the nearest
subreaper or the pid namespace's init. Once every middle child of a round
is reaped, the round's grandchildren are released together (a burst of
SIGCHLDs at their new parent); each reports the parent pid it now sees and
exits. The worker waits for every exit through a pidfd (which works for a
process that is not its child), then writes REPORT atomically, as JSON.
"""
import json
import os
import select
import signal
import sys

report, rounds, per_round = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))


def read_lines(fd: int, count: int | None) -> list[bytes]:
    """`count` lines from the pipe, or every line until EOF when count is None."""
    lines, buf = [], b""
    while count is None or len(lines) < count:
        chunk = os.read(fd, 4096)
        if not chunk:
            break
        buf += chunk
        *done, buf = buf.split(b"\n")
        lines += done
    return lines


def grandchild(go_r: int, go_w: int, info_r: int, info_w: int) -> None:
    os.close(go_w)
    os.close(info_r)
    os.write(info_w, f"{os.getpid()}\n".encode())
    os.read(go_r, 1)  # blocks until the worker closes the last go_w
    os.write(info_w, f"{os.getpid()} {os.getppid()}\n".encode())
    os._exit(0)


def make_round() -> list[int]:
    go_r, go_w = os.pipe()
    info_r, info_w = os.pipe()
    middles = []
    for _ in range(per_round):
        middle = os.fork()
        if middle == 0:
            if os.fork() == 0:
                grandchild(go_r, go_w, info_r, info_w)
            os._exit(0)  # its child is an orphan from now on
        middles.append(middle)
    os.close(info_w)
    os.close(go_r)
    pids = [int(line) for line in read_lines(info_r, per_round)]
    pidfds = [os.pidfd_open(pid) for pid in pids]  # all alive, blocked on go_r: no pid reuse
    for middle in middles:
        os.waitpid(middle, 0)  # exited and reaped: its child has been re-parented
    os.close(go_w)  # EOF for all of them at once
    ppids = [int(line.split()[1]) for line in read_lines(info_r, None)]
    os.close(info_r)
    poller = select.poll()
    for fd in pidfds:
        poller.register(fd, select.POLLIN)
    waiting = set(pidfds)
    while waiting:  # a pidfd polls readable once its process has exited
        for fd, _ in poller.poll():
            poller.unregister(fd)
            waiting.discard(fd)
            os.close(fd)
    assert len(ppids) == per_round, ppids
    return ppids


ppids = []
for number in range(rounds):
    ppids += make_round()
    print(f"round {number}: {per_round} orphans exited", flush=True)
with open(report + ".tmp", "w") as f:
    json.dump({"pid": os.getpid(), "ppid": os.getppid(), "orphans": len(ppids),
               "orphan_ppids": sorted(set(ppids))}, f)
os.rename(report + ".tmp", report)
print(f"done: {len(ppids)} orphans", flush=True)
while True:
    signal.pause()
