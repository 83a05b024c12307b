"""Jittered, capped exponential backoff as a pure function (no sleeping here)."""

from __future__ import annotations

import random


def delay(attempt: int, rng: random.Random, *, base: float = 1.0, cap: float = 60.0) -> float:
    """Seconds to wait before retry number ``attempt`` (0-based).

    "Equal jitter": half of the capped exponential step is fixed, half is random, so retries
    of many devices spread out but never collapse to zero.
    """
    step = min(cap, base * (2.0 ** min(attempt, 32)))
    return step / 2.0 + rng.uniform(0.0, step / 2.0)
