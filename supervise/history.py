"""The bounded, numbered history of published events.

Sequence numbers never repeat within a daemon's life, so a client that saw
event N asks for ``since=N`` and gets exactly what it missed, or learns from
``first`` that older events have been dropped from the bounded history.
"""

from __future__ import annotations

from collections import deque


class History:
    def __init__(self, limit: int = 10_000) -> None:
        self._events: deque[dict] = deque(maxlen=limit)
        self.last_seq = 0

    def append(self, event: dict, wall_time: float) -> dict:
        self.last_seq += 1
        stamped = {"seq": self.last_seq, "time": round(wall_time, 6), **event}
        self._events.append(stamped)
        return stamped

    def since(self, seq: int) -> list[dict]:
        """Events numbered above ``seq`` that are still held, oldest first."""
        if not self._events or seq >= self.last_seq:
            return []
        first = self._events[0]["seq"]
        start = max(0, seq + 1 - first)
        return list(self._events)[start:]

    @property
    def first_seq(self) -> int:
        return self._events[0]["seq"] if self._events else self.last_seq + 1
