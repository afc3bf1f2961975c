"""Resident memory of many process trees in one pass over /proc.

psutil would build a Process object per pid and walk children per root;
this reads each /proc/<pid>/stat once to map parents, then statm for the
members of each tree. A cgroup leaf, when the instance has one, names its
members directly (including grandchildren that double-forked away), so no
walk is needed at all. Runs off the event loop, in the daemon's worker thread.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")


@dataclass(frozen=True, slots=True)
class Root:
    """One instance to measure: its main pid, and its cgroup leaf if it has one."""

    key: int  # the caller's identifier (a spawn id)
    pid: int
    cgroup: Path | None = None


def sample_trees(roots: Iterable[Root]) -> tuple[dict[int, int | None], dict[int, int]]:
    """RSS of each root's whole tree (None when the root is gone), and how many processes it has."""
    roots = list(roots)
    result: dict[int, int | None] = {}
    counts: dict[int, int] = {}
    needs_walk = []
    for root in roots:
        members = _cgroup_members(root.cgroup) if root.cgroup is not None else None
        if members is None:
            needs_walk.append(root)
        elif root.pid not in members and not os.path.exists(f"/proc/{root.pid}"):
            result[root.key] = None
        else:
            tree = members | {root.pid}
            result[root.key] = sum(_rss(pid) for pid in tree)
            counts[root.key] = len(tree)
    if needs_walk:
        children = _children_map()
        for root in needs_walk:
            own = _rss(root.pid)
            if own == 0 and not os.path.exists(f"/proc/{root.pid}"):
                result[root.key] = None
                continue
            below = _descendants(root.pid, children)
            result[root.key] = own + sum(_rss(pid) for pid in below)
            counts[root.key] = 1 + len(below)
    return result, counts


def _cgroup_members(path: Path) -> set[int] | None:
    try:
        # On cgroupfs a directory's link count is 2 + its sub-cgroups: a leaf
        # (the usual case) is read directly, without the cost of os.walk.
        dirs = [str(path)] if os.stat(path).st_nlink == 2 else [d for d, _, _ in os.walk(path)]
        pids: set[int] = set()
        for directory in dirs:
            with open(os.path.join(directory, "cgroup.procs")) as f:
                pids.update(int(line) for line in f.read().split())
    except (OSError, ValueError):
        return None
    return pids


def _children_map() -> dict[int, list[int]]:
    children: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat", "rb") as f:
                data = f.read()
        except OSError:
            continue
        # comm may hold spaces and parentheses: the fields start after the last ')'.
        fields = data[data.rfind(b")") + 2:].split(b" ", 2)
        try:
            children.setdefault(int(fields[1]), []).append(int(entry.name))
        except (IndexError, ValueError):
            continue
    return children


def _descendants(pid: int, children: dict[int, list[int]]) -> list[int]:
    found, stack = [], list(children.get(pid, ()))
    while stack:
        child = stack.pop()
        found.append(child)
        stack.extend(children.get(child, ()))
    return found


def _rss(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/statm", "rb") as f:
            return int(f.read().split()[1]) * PAGE_SIZE
    except (OSError, ValueError, IndexError):
        return 0
