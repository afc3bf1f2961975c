#!/usr/bin/env python3
"""uvicorn on a supervise listen socket (`--fd 3`) against uvicorn on its own socket (`--port`).

    python benchmarks/uvicorn_socket.py            # 7 pairs of 5 s runs, about three minutes
    python benchmarks/uvicorn_socket.py --quick    # 2 runs of 2 s
    python benchmarks/uvicorn_socket.py --load python --connections 8

`socket`: the same app (examples/recipes/asgi_app.py) and the same uvicorn
flags; ours is one instance run by supervise with `listen` (TCP_NODELAY on, the
default), the floor is uvicorn binding `--port` itself. Keep-alive load from
`wrk` (when it is on PATH, else tests/keepalive_load.py, or as --load says),
ours and the floor alternating in pairs so that noise from elsewhere hits
both; medians of req/s and p99, and the median of the pairs' ratios (target
>= 0.95).
`nodelay-off`: ours again with `nodelay = false` on the listener, for the
record: uvicorn does not set TCP_NODELAY on an `--fd` socket (it wraps it as
AF_UNIX, so asyncio skips it), and each response's second write then waits for
the client's delayed ACK.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from harness import PY, BenchError, median, ms, wait_for  # noqa: E402
from helpers import free_port  # noqa: E402  (tests/, put on the path by harness)
from keepalive_load import KeepAliveLoad  # noqa: E402
from runner import Bench, Options, main, run_selected  # noqa: E402

RECIPES = HERE.parent / "examples" / "recipes"
FIGURES = ("socket", "nodelay-off")
UVICORN_ARGS = ["asgi_app:app", "--app-dir", str(RECIPES), "--no-access-log", "--log-level", "warning"]
TARGET = 0.95


@dataclass
class Run:
    rate: float  # requests per second
    p99: float  # seconds
    errors: int


def uvicorn_app(port: int, nodelay: bool = True) -> str:
    """One instance of uvicorn --fd 3 on a listen socket of the daemon's."""
    command = ", ".join(json.dumps(part) for part in [PY, "-m", "uvicorn", *UVICORN_ARGS, "--fd", "3"])
    listen = f'"127.0.0.1:{port}"' if nodelay else f'{{ address = "127.0.0.1:{port}", nodelay = false }}'
    return (f'[apps.api]\ncommand = [{command}]\ninstances = 1\nreadiness = "heartbeat"\n'
            f'listen = [{listen}]\nstop_timeout = "10s"\n')


def load(b: Bench, port: int, seconds: float) -> Run:
    """Keep-alive load on 127.0.0.1:port for `seconds`: wrk, or the Python generator."""
    if b.args.load == "wrk":
        out = subprocess.run(["wrk", "-t1", f"-c{b.args.connections}", f"-d{seconds:g}s", "--latency",
                              f"http://127.0.0.1:{port}/"], capture_output=True, text=True, check=False,
                             timeout=seconds + 30).stdout
        rate = re.search(r"Requests/sec:\s+([\d.]+)", out)
        p99 = re.search(r"^\s+99%\s+([\d.]+)(us|ms|s)\s*$", out, re.MULTILINE)
        if rate is None or p99 is None:
            raise BenchError(f"cannot read wrk's output:\n{out}")
        errors = sum(int(n) for n in re.findall(r"(?:connect|read|write|timeout) (\d+)", out))
        non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
        scale = {"us": 1e-6, "ms": 1e-3, "s": 1.0}[p99.group(2)]
        return Run(float(rate.group(1)), float(p99.group(1)) * scale, errors + (int(non2xx.group(1)) if non2xx else 0))
    gen = KeepAliveLoad(port, clients=b.args.connections, max_seconds=seconds + 30).start()
    time.sleep(seconds)  # the window being measured, not synchronization
    result = gen.stop()
    return Run(result.rate, result.percentile(0.99) or 0.0, result.failed)


def accepting(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


def describe(run: Run) -> str:
    return f"{run.rate:,.0f} req/s, p99 {ms(run.p99)}" + (f", {run.errors} errors" if run.errors else "")


def bench_socket(b: Bench) -> None:
    """Ours and the floor, alternating: medians and their ratio."""
    ours_port, floor_port = free_port(), free_port()
    d = b.started("socket", uvicorn_app(ours_port))
    d.wait_running(1, timeout=60)
    floor = b.popen([PY, "-m", "uvicorn", *UVICORN_ARGS, "--host", "127.0.0.1", "--port", str(floor_port)])
    wait_for(lambda: accepting(floor_port), 60, "uvicorn --port to accept")
    load(b, ours_port, 1.0)  # warm-up, both: first connections, first requests
    load(b, floor_port, 1.0)
    ours: list[Run] = []
    floors: list[Run] = []
    for run in range(b.args.runs):
        # Pairs, taken in turn ours-first and floor-first, so that neither side is always the
        # one that runs after the other (a machine getting busier or quieter hits both).
        if run % 2 == 0:
            ours.append(load(b, ours_port, b.args.seconds))
            floors.append(load(b, floor_port, b.args.seconds))
        else:
            floors.append(load(b, floor_port, b.args.seconds))
            ours.append(load(b, ours_port, b.args.seconds))
        b.say(f"  run {run + 1}: --fd 3 on supervise's socket {describe(ours[-1])}; "
              f"--port {describe(floors[-1])}; x{ours[-1].rate / floors[-1].rate:.3f}")
    d.shutdown()
    b.procs.stop_floor([floor])
    rate, floor_rate = median([r.rate for r in ours]), median([r.rate for r in floors])
    p99, floor_p99 = median([r.p99 for r in ours]), median([r.p99 for r in floors])
    ratio = median([o.rate / f.rate for o, f in zip(ours, floors, strict=True)])  # robust to drift between pairs
    b.raw["socket"] = {"ours": [r.__dict__ for r in ours], "floor": [r.__dict__ for r in floors], "load": b.args.load,
                       "connections": b.args.connections, "seconds": b.args.seconds}
    errors = sum(r.errors for r in ours + floors)
    b.add("uvicorn --fd 3 on a listen socket: req/s", f"{rate:,.0f}", f"{floor_rate:,.0f}",
          f"x{ratio:.3f}, median of paired runs (target >= {TARGET})", ratio >= TARGET and errors == 0)
    b.add("uvicorn --fd 3 on a listen socket: p99", ms(p99), ms(floor_p99), f"x{p99 / floor_p99:.2f}", None)


def bench_nodelay_off(b: Bench) -> None:
    """Ours with nodelay = false: what the socket option is worth (information only)."""
    port = free_port()
    d = b.started("nodelay-off", uvicorn_app(port, nodelay=False))
    d.wait_running(1, timeout=60)
    runs = [load(b, port, b.args.seconds) for _ in range(max(1, b.args.runs // 2))]
    d.shutdown()
    rate, p99 = median([r.rate for r in runs]), median([r.p99 for r in runs])
    b.say(f"  nodelay = false: {', '.join(describe(r) for r in runs)}")
    b.raw["nodelay-off"] = [r.__dict__ for r in runs]
    b.add("uvicorn --fd 3, listen nodelay = false", f"{rate:,.0f} req/s, p99 {ms(p99)}", "", "for the record", None)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    opts = Options(__doc__, FIGURES)
    opts.number("--runs", int, 7, 2, "alternating runs of each side")
    opts.number("--seconds", float, 5, 2, "seconds of load per run")
    opts.add("--connections", type=int, default=16, help="kept-alive connections (default 16)")
    opts.add("--load", choices=("wrk", "python"), default="wrk" if shutil.which("wrk") else "python",
             help="the load generator (default: wrk when on PATH, else tests/keepalive_load.py)")
    return opts.parse(argv)


def run(b: Bench) -> None:
    b.say(f"  load: {b.args.load}, {b.args.connections} kept-alive connections, {b.args.seconds:g} s per run")
    run_selected(b, ("socket", bench_socket), ("nodelay-off", bench_nodelay_off))


if __name__ == "__main__":
    sys.exit(main("uvicorn-socket", parse_args(None), run))
