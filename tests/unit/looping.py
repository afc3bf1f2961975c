"""Running a real asyncio loop from a synchronous test until a condition holds."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable


def pump(loop: asyncio.AbstractEventLoop, until: Callable[[], object], timeout: float = 10.0) -> None:
    """Run the loop until `until()` holds (a deadline, not a fixed wait)."""
    deadline = time.monotonic() + timeout
    while not until():
        assert time.monotonic() < deadline, f"timed out waiting for {until}"
        loop.run_until_complete(asyncio.sleep(0.002))
