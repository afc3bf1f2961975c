"""Several supervise daemons on one machine, joined into one cluster through a real etcd.

Each node is a real daemon (``supervise run``) with its own state dir and
node name, driven through the real CLI. A node may reach etcd through a
``TcpProxy`` of its own, so that a test can cut it off (a partition).
"""

from __future__ import annotations

import json
import os
import signal
import sys
import textwrap
from collections.abc import Iterable, Sequence
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from helpers import Supervisor, wait_until  # noqa: E402

WORKERS = Path(__file__).parent / "workers"


def activity_command() -> str:
    return json.dumps([sys.executable, str(WORKERS / "activity.py")])


class Node(Supervisor):
    """One daemon of the cluster."""

    def __init__(self, tmp: Path, name: str, endpoints: Sequence[str], apps: str, *, cluster: str = "test",
                 lease_ttl: int = 3, capacity: int | None = None, labels: dict[str, str] | None = None,
                 activity: Path | None = None) -> None:
        tmp.mkdir(parents=True, exist_ok=True)
        lines = [f'etcd = {json.dumps(list(endpoints))}', f'name = "{cluster}"', f'node = "{name}"',
                 f"lease_ttl = {lease_ttl}"]
        if capacity is not None:
            lines.append(f"capacity = {capacity}")
        if labels:
            lines.append("labels = { " + ", ".join(f'{k} = "{v}"' for k, v in labels.items()) + " }")
        config = "[supervise]\nlog_level = \"debug\"\n\n[cluster]\n" + "\n".join(lines) + "\n\n" + textwrap.dedent(apps)
        config = config.replace("{activity}", activity_command())
        super().__init__(tmp, config)
        self.name = name
        self.env["NODE"] = name
        if activity is not None:
            self.env["ACTIVITY_DIR"] = str(activity)

    # -- what the CLI says ---------------------------------------------------------------

    def cluster(self) -> dict:
        result = self.cli("status", "--cluster", "--json")
        assert result.returncode == 0, result.stderr
        return json.loads(result.stdout)

    def local(self) -> dict[str, dict]:
        """This node's instances by name (`status --json`)."""
        return self.status()

    def running_here(self, app: str | None = None) -> dict[str, dict]:
        return {n: i for n, i in self.local().items() if i["state"] == "running" and (app is None or
                                                                                        n.startswith(app + ":"))}

    # -- harm ------------------------------------------------------------------------------

    def workers(self) -> list[psutil.Process]:
        assert self.proc is not None
        try:
            return psutil.Process(self.proc.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            return []

    def kill_node(self) -> None:
        """Node loss: SIGKILL the daemon and every process it started."""
        assert self.proc is not None
        doomed = self.workers()
        self.proc.kill()
        self.proc.wait()
        for proc in doomed:
            try:
                proc.kill()
            except psutil.NoSuchProcess:
                pass
        psutil.wait_procs(doomed, timeout=5)

    def pause(self) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGSTOP)

    def resume(self) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGCONT)


def placement(nodes: Iterable[Node], app: str | None = None) -> dict[str, str]:
    """Instance name -> the node that runs it, from what each live node says it runs."""
    where: dict[str, str] = {}
    for node in nodes:
        if node.proc is None or node.proc.poll() is not None:
            continue
        for name in node.running_here(app):
            assert name not in where, f"{name} runs on {where[name]} and {node.name}"
            where[name] = node.name
    return where


def wait_placed(nodes: Sequence[Node], app: str, count: int, timeout: float = 20.0) -> dict[str, str]:
    """Wait until `count` instances of `app` run across the live nodes; returns where."""
    return wait_until(lambda: (p := placement(nodes, app)) and len(p) == count and p, timeout, interval=0.05,
                      message=f"{count} instances of {app} running across the cluster")


def activity(directory: Path, name: str) -> list[tuple[int, float, float, int, str]]:
    """Each process of instance `name` as (token, first tick, last tick, pid, node), in order of start."""
    runs = []
    for path in directory.glob(f"{name.replace(':', '-')}.*.log"):
        lines = path.read_text().split("\n")
        ticks = [float(x) for x in lines[1:] if x.strip()]
        if ticks:
            head = lines[0].split()
            runs.append((int(head[1]), ticks[0], ticks[-1], int(path.name.split(".")[1]), head[3]))
    return sorted(runs, key=lambda run: run[1])
