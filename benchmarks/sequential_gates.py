"""Why the rollout gates use a sequential test: false alarms when looking after every telemetry
window, the mixture SPRT of the gates against the naive baseline (a Welch t-test repeated at every
look), on the same simulated A/A trials, and the windows each needs to catch a real regression.

A trial: 4 canary and 12 control devices, 40 telemetry windows, one observation per device and
window (a window's p95 latency: lognormal, median 120 ms); a look after every observation.

    python benchmarks/sequential_gates.py [--trials 1000] [--alpha 0.05]
"""

from __future__ import annotations

import argparse
import math

import numpy as np
from scipy import stats

from edgefleet.cloud.services.rollouts.sequential import Observation, msprt

WINDOWS, CANARY, CONTROL = 40, 4, 12


def arrivals(rng: np.random.Generator, effect: float) -> list[Observation]:
    flags = rng.permuted(np.tile(np.array([True] * CANARY + [False] * CONTROL), (WINDOWS, 1)), axis=1).ravel()
    values = rng.lognormal(math.log(120.0), 0.4, flags.size)
    values[flags] *= effect
    return [Observation(bool(t), float(v)) for t, v in zip(flags, values, strict=True)]


def first_alarm_msprt(observations: list[Observation], alpha: float) -> int | None:
    """The first look (observation count) at which the mSPRT rejects; ``None``: never. Its p-value
    is a running minimum, so a bisection over prefixes finds it."""
    if msprt(observations, alpha=alpha).p_value > alpha:
        return None
    low, high = 1, len(observations)
    while low < high:
        mid = (low + high) // 2
        low, high = (low, mid) if msprt(observations[:mid], alpha=alpha).p_value <= alpha else (mid + 1, high)
    return low


def first_alarm_t(observations: list[Observation], alpha: float, min_samples: int = 20) -> int | None:
    canary: list[float] = []
    control: list[float] = []
    for n, o in enumerate(observations, start=1):
        (canary if o.treatment else control).append(o.value)
        if min(len(canary), len(control)) >= min_samples and \
                stats.ttest_ind(canary, control, equal_var=False).pvalue <= alpha:
            return n
    return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=1000)
    parser.add_argument("--alpha", type=float, default=0.05)
    args = parser.parse_args()
    rng = np.random.default_rng(2026)
    aa = [arrivals(rng, 1.0) for _ in range(args.trials)]
    # the mSPRT's own running minimum is what the gate reads, so one call on the whole trial suffices
    msprt_alarms = sum(msprt(o, alpha=args.alpha).p_value <= args.alpha for o in aa) / len(aa)
    t_alarms = sum(first_alarm_t(o, args.alpha) is not None for o in aa) / len(aa)
    print(f"A/A false alarms, a look after every window ({args.trials} trials, alpha {args.alpha}):")
    print(f"  mixture SPRT (the gates)      {msprt_alarms:.3f}")
    print(f"  repeated Welch t-test (naive) {t_alarms:.3f}   ({t_alarms / max(msprt_alarms, 1e-9):.1f}x the mSPRT)")
    power_trials = max(50, args.trials // 10)
    for effect in (1.1, 1.2, 1.5, 3.0):
        hits = [first_alarm_msprt(arrivals(rng, effect), args.alpha) for _ in range(power_trials)]
        caught = [h for h in hits if h is not None]
        windows = [h / (CANARY + CONTROL) for h in caught]
        print(f"p95 latency x{effect:g}: caught in {len(caught)}/{power_trials} trials, after a median of "
              f"{np.median(windows):.1f} windows" if caught else f"p95 latency x{effect:g}: never caught")


if __name__ == "__main__":
    main()
