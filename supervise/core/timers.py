"""Deadlines by key, earliest first: the one timer the shell re-arms comes from here."""

from __future__ import annotations

import heapq
from collections.abc import Hashable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)


class Timers(Generic[K]):
    """Deadlines by key, earliest first; stale heap entries are skipped lazily.

    Setting a key's deadline again only pushes a new entry: the old one is
    recognised as stale when it reaches the top (its time no longer matches),
    so re-arming costs O(log n) and nothing is searched.
    """

    def __init__(self) -> None:
        self._when: dict[K, float] = {}
        self._heap: list[tuple[float, int, K]] = []
        self._seq = 0

    def set(self, key: K, when: float | None) -> None:
        if when is None:
            self._when.pop(key, None)
            return
        if self._when.get(key) == when:
            return
        self._when[key] = when
        self._seq += 1
        heapq.heappush(self._heap, (when, self._seq, key))
        if len(self._heap) > 64 and len(self._heap) > 4 * len(self._when):
            self._heap = [(w, i, k) for w, i, k in self._heap if self._when.get(k) == w]
            heapq.heapify(self._heap)

    def _drop_stale(self) -> None:
        while self._heap and self._when.get(self._heap[0][2]) != self._heap[0][0]:
            heapq.heappop(self._heap)

    def next(self) -> float | None:
        self._drop_stale()
        return self._heap[0][0] if self._heap else None

    def pop_due(self, now: float) -> list[K]:
        due = []
        self._drop_stale()
        while self._heap and self._heap[0][0] <= now:
            _, _, key = heapq.heappop(self._heap)
            del self._when[key]
            due.append(key)
            self._drop_stale()
        return due
