#!/usr/bin/env python3
"""How long the leader's placement takes: ``place()`` for 1,000 instances over 20 nodes.

    python benchmarks/placement.py            # the table
    python benchmarks/placement.py --runs 50

Three cases, each the median of ``--runs`` timed calls (after one untimed):
(a) initial placement from nothing, (b) re-placement after losing one node,
(c) steady state (nothing changed). Also how many writes ``plan()`` makes for
(a) and (b). The function is pure, so ``time.perf_counter`` around the call
is all there is to it; the target is well under 50 ms. ``figures()`` gives
the same numbers to another script.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from supervise.core.placement import (  # noqa: E402
    AppSpec,
    Assignment,
    Node,
    Slot,
    SlotReport,
    place,
    plan,
)

NODES = 20
TARGET_MS = 50.0
LOST = "n07"


def cluster() -> tuple[list[Node], list[AppSpec]]:
    """20 nodes (4 zones, half with ssd, room for 1,500) and apps of 1,000 instances in all."""
    nodes = [Node(f"n{i:02d}", 75, {"zone": "abcd"[i % 4], "disk": "ssd" if i % 2 else "hdd"},
                  frozenset({"db", "agent", "web", "api", "worker", "cron"})) for i in range(NODES)]
    apps = [
        AppSpec("db", 1, "cluster", singleton=True, constraints={"disk": "ssd"}),
        AppSpec("agent", 1, "every-node"),  # 20
        AppSpec("web", 400, "cluster", spread="zone"),
        AppSpec("api", 300, "cluster", spread="zone"),
        AppSpec("worker", 200, "cluster", constraints={"disk": "ssd"}),
        AppSpec("cron", 79, "cluster"),
    ]
    return nodes, apps


def median_ms(call: Callable[[], object], runs: int) -> float:
    call()
    samples = []
    for _ in range(runs):
        start = time.perf_counter()
        call()
        samples.append((time.perf_counter() - start) * 1000)
    return statistics.median(samples)


def figures(runs: int = 25) -> dict[str, float]:
    """The benchmark's numbers: medians in ms (``place_*_ms``) and write counts (``plan_*_writes``)."""
    nodes, apps = cluster()
    initial = place(nodes, apps, {})
    survivors = [n for n in nodes if n.name != LOST]
    assignments = {slot: (Assignment(node), revision)
                   for revision, (slot, node) in enumerate(sorted(initial.items()), 1)}
    reports: dict[str, dict[Slot, SlotReport]] = {n.name: {} for n in survivors}
    for slot, node in initial.items():
        if node in reports:
            reports[node][slot] = SlotReport(active=True, ready=True)
    return {
        "instances": float(len(initial)),
        "place_initial_ms": median_ms(lambda: place(nodes, apps, {}), runs),
        "place_lose_node_ms": median_ms(lambda: place(survivors, apps, initial), runs),
        "place_steady_ms": median_ms(lambda: place(nodes, apps, initial), runs),
        "plan_initial_writes": float(len(plan(nodes, apps, {}, {}))),
        "plan_lose_node_writes": float(len(plan(survivors, apps, assignments, reports))),
        "plan_steady_writes": float(len(plan(nodes, apps, assignments, reports))),
        "plan_lose_node_ms": median_ms(lambda: plan(survivors, apps, assignments, reports), runs),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=25, help="timed calls per case (median; at least 20)")
    args = parser.parse_args()
    f = figures(max(args.runs, 20))
    n = int(f["instances"])
    rows = [
        ("(a) initial placement", f["place_initial_ms"], int(f["plan_initial_writes"])),
        (f"(b) lose 1 node ({LOST})", f["place_lose_node_ms"], int(f["plan_lose_node_writes"])),
        ("(c) steady state", f["place_steady_ms"], int(f["plan_steady_writes"])),
    ]
    runs = max(args.runs, 20)
    print(f"place(): {n} instances over {NODES} nodes, median of {runs} runs, target < {TARGET_MS:.0f} ms")
    print(f"{'case':<26} {'place() ms':>10} {'plan() writes':>14}  {'':4}")
    for name, ms, writes in rows:
        print(f"{name:<26} {ms:>10.2f} {writes:>14}  {'pass' if ms < TARGET_MS else 'MISS'}")
    print(f"plan() after losing a node (place() included): {f['plan_lose_node_ms']:.2f} ms")
    return 0 if all(ms < TARGET_MS for _, ms, _ in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
