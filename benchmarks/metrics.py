#!/usr/bin/env python3
"""The /metrics benchmark of supervise: a scrape's response time with 1,000 instances.

    python benchmarks/metrics.py            # the full run: 1,000 sleeps, 30 rounds
    python benchmarks/metrics.py --quick    # a smoke check: 10 rounds
    python benchmarks/metrics.py --instances 2000 --rounds 50

`scrape`: `supervise run` with `[supervise] metrics` and one app of
1,000 `sleep 3600` instances with `max_memory` set (so every instance has
a memory reading: the largest scrape), all running. Each round, in this
process (no interpreter start in any figure), in turn:

- ours: GET /metrics on a new connection (as Prometheus scrapes) -> the
  whole body read;
- floor 1: `status` over the control socket (the CLI's own client: the same
  status the scrape is built from, encoded as JSON) -> the whole reply;
- floor 2: GET of a path that is not there (404) -> the HTTP round-trip
  alone.

Medians over `--rounds`, and the 90th percentile. Target: /metrics median
under 50 ms. Also shown: the body's size and series count (read by
prometheus_client's parser) and `promtool check metrics` on one scrape
(when promtool is installed: a failed check fails the figure).
"""

from __future__ import annotations

import http.client
import math
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from harness import BenchError, median, ms  # noqa: E402
from runner import Bench, Options, main, run_selected  # noqa: E402

from supervise.config.locate import locate_state_dir  # noqa: E402
from supervise.control.client import Control  # noqa: E402
from supervise.wire import protocol  # noqa: E402
from supervise.wire.statedir import StatePaths  # noqa: E402

FIGURES = ("scrape",)
TARGET = 0.050  # seconds for one scrape of 1,000 instances


def get(port: int, path: str) -> tuple[int, bytes]:
    """One GET on a new connection, the whole body read."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def timed(call: Callable[[], object]) -> float:
    t0 = time.perf_counter()
    call()
    return time.perf_counter() - t0


def p90(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[max(0, math.ceil(0.9 * len(ordered)) - 1)]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def bench_scrape(b: Bench) -> None:
    n, rounds = b.args.instances, b.args.rounds
    port = free_port()
    config = ("[supervise]\n"
              f'metrics = "127.0.0.1:{port}"\n\n'
              "[apps.w]\n"
              'command = ["sleep", "3600"]\n'
              f"instances = {n}\n"
              'max_memory = "1G"\n'
              'stop_timeout = "5s"\n')
    d = b.supervised("scrape", config, n)
    d.start()
    b.say(f"scrape: starting {n} sleep instances")
    d.wait_running(n, timeout=300)
    control = Control(StatePaths(locate_state_dir(d.config)))

    def with_memory() -> bool:
        return all(i["rss"] is not None for a in control.request(protocol.Request("status"))["apps"]
                   for i in a["instances"])

    deadline = time.monotonic() + 60
    while not with_memory():
        if time.monotonic() > deadline:
            raise BenchError("the instances' memory was not sampled within 60 s")
        time.sleep(0.5)

    def scrape() -> bytes:
        status, body = get(port, "/metrics")
        if status != 200:
            raise BenchError(f"/metrics answered {status}")
        return body

    def status() -> None:
        control.request(protocol.Request("status"))

    def missing() -> None:
        if get(port, "/nothing-here")[0] != 404:
            raise BenchError("a missing path did not answer 404")

    for _ in range(3):  # warm up: caches, the first allocation of a large body
        scrape(), status(), missing()
    ours, floor_status, floor_http = [], [], []
    for _ in range(rounds):
        ours.append(timed(scrape))
        floor_status.append(timed(status))
        floor_http.append(timed(missing))
    body = scrape()
    from prometheus_client.parser import text_string_to_metric_families

    series = sum(len(f.samples) for f in text_string_to_metric_families(body.decode()))
    promtool = shutil.which("promtool")
    checked = "promtool not installed"
    if promtool:
        result = subprocess.run([promtool, "check", "metrics"], input=body, capture_output=True, timeout=120)
        checked = "promtool: ok" if result.returncode == 0 else f"promtool: FAILED {result.stdout[:200]!r}"
    b.say(f"scrape: {len(body) / 1024:.0f} KiB, {series} series; {checked}")
    b.say(f"scrape: /metrics median {ms(median(ours))}, p90 {ms(p90(ours))}, max {ms(max(ours))}; "
          f"status request median {ms(median(floor_status))}, p90 {ms(p90(floor_status))}; "
          f"404 median {ms(median(floor_http))}")
    b.raw["scrape"] = {"metrics": ours, "status": floor_status, "not_found": floor_http, "bytes": len(body),
                       "series": series}
    ok = median(ours) < TARGET and (promtool is None or checked == "promtool: ok")
    b.add(f"/metrics, {n} instances", ms(median(ours)), f"status {ms(median(floor_status))}",
          f"x{median(ours) / median(floor_status):.2f} of status; 404 {ms(median(floor_http))} (< 50 ms)", ok)
    d.shutdown(timeout=120)


def build_options() -> Options:
    options = Options(__doc__ or "", FIGURES)
    options.number("--instances", int, 1000, 1000, "sleep instances")
    options.number("--rounds", int, 30, 10, "scrapes (each with its two floors)")
    return options


if __name__ == "__main__":
    parsed = build_options().parse(None)
    sys.exit(main("metrics", parsed, lambda b: run_selected(b, ("scrape", bench_scrape))))
