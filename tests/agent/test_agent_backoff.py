from __future__ import annotations

import random

from edgefleet.agent.backoff import delay


def test_delay_grows_is_capped_and_jittered():
    rng = random.Random(1)
    waits = [delay(a, rng, base=1.0, cap=8.0) for a in range(8)]
    for attempt, w in enumerate(waits):
        step = min(8.0, 2.0 ** attempt)
        assert step / 2 <= w <= step
    assert max(waits) <= 8.0
    assert len({round(delay(5, random.Random(s), cap=8.0), 6) for s in range(20)}) > 10  # spread


def test_delay_is_pure_given_the_rng():
    assert delay(3, random.Random(42)) == delay(3, random.Random(42))


def test_huge_attempt_numbers_do_not_overflow():
    assert delay(10_000, random.Random(0), cap=60.0) <= 60.0
