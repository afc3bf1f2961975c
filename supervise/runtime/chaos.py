"""Built-in chaos: harm a running app's instances at random, to watch supervise hold.

Fault tolerance should be seen, not taken on trust. `supervise chaos web`
asks the daemon to signal random live instances of `web` — SIGKILL (a
crash), SIGTERM (an unexpected stop) or SIGSTOP (a hang, for heartbeat
detection; continued when the chaos ends) — at a random rate around
`--kill-rate` (a Poisson process) for `--duration`, and reports each harm
as an event. It refuses apps not marked `chaos = true` unless forced, so it
cannot hit production by accident. A seed makes a run's choices repeatable
(which instance, and when), though not what the instances do meanwhile.
"""

from __future__ import annotations

import random
import re
import signal
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

SIGNALS = {"KILL": signal.SIGKILL, "TERM": signal.SIGTERM, "STOP": signal.SIGSTOP}
MAX_RATE = 1000.0  # harms per second
MAX_DURATION = 86_400.0
_RATE = re.compile(r"\s*(\d+(?:\.\d+)?)\s*(?:/\s*(s|sec|m|min|h))?\s*")
_PER = {None: 1.0, "s": 1.0, "sec": 1.0, "m": 60.0, "min": 60.0, "h": 3600.0}


class ChaosError(ValueError):
    """A chaos setting that cannot be used; the message says what is expected."""


def parse_rate(text: str) -> float:
    """Harms per second from "2/s", "30/m", "120/h" or a bare number (per second)."""
    match = _RATE.fullmatch(str(text))
    if not match:
        raise ChaosError(f"a rate like 2/s, 30/m or 120/h, not {text!r}")
    rate = float(match[1]) / _PER[match[2]]
    if not 0 < rate <= MAX_RATE:
        raise ChaosError(f"a rate above 0 and at most {MAX_RATE:g}/s, not {text!r}")
    return rate


@dataclass
class ChaosPlan:
    rate: float  # harms per second, on average
    duration: float  # seconds
    signal: str = "KILL"
    seed: int = 0
    rng: random.Random = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if not 0 < self.rate <= MAX_RATE:
            raise ChaosError(f"rate must be above 0 and at most {MAX_RATE:g}/s")
        if not 0 < self.duration <= MAX_DURATION:
            raise ChaosError(f"duration must be above 0 and at most {MAX_DURATION:g}s")
        if self.signal not in SIGNALS:
            raise ChaosError(f"signal must be one of {', '.join(SIGNALS)}")
        self.rng = random.Random(self.seed)

    @classmethod
    def from_options(cls, options: Mapping[str, object]) -> ChaosPlan:
        """From a request's options; ChaosError for anything missing or of the wrong type."""
        rate, duration, seed = options.get("rate"), options.get("duration"), options.get("seed")
        if not all(isinstance(v, int | float) and not isinstance(v, bool) for v in (rate, duration)):
            raise ChaosError(f"chaos needs a numeric rate and duration, got {rate!r} and {duration!r}")
        if seed is not None and (not isinstance(seed, int) or isinstance(seed, bool)):
            raise ChaosError("seed must be an integer")
        return cls(float(rate), float(duration),  # type: ignore[arg-type]  # numbers, checked above
                   str(options.get("signal", "KILL")).upper().removeprefix("SIG"),
                   random.randrange(2**31) if seed is None else seed)

    def next_delay(self) -> float:
        return self.rng.expovariate(self.rate)

    def pick(self, candidates: Sequence[str]) -> str | None:
        return self.rng.choice(sorted(candidates)) if candidates else None

