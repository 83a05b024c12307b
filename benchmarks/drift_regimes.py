"""What known regimes cost the device (protocol/drift.py ``Regime``): scoring one telemetry window of
a 64-feature input against a profile with 0, 1 and 8 regimes, for a window that matches the reference
(the regimes are never looked at), one that matches the last regime (every regime is scored) and one
that matches nothing (every regime is scored, the verdict stays alarm).

Baselines in the same run: scoring against the profile without regimes, and binning the window's
inputs (what the agent does per window whatever the profile: regimes add no binning).
Usage: python benchmarks/drift_regimes.py [--window N] [--repeats R]
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import numpy as np

from edgefleet.protocol import drift


def best_of(fn: Callable[[], object], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--window", type=int, default=500, help="samples in the window")
    parser.add_argument("--repeats", type=int, default=50)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    reference = rng.random((2000, 64), dtype=np.float32)
    plain = drift.build_profile(reference, input_name="x")
    profiles = {0: plain}
    healed = plain
    for i in range(8):
        healed = drift.add_regime(healed, f"r{i}", np.clip(reference * 0.5 + 0.05 * (i + 1), 0, 1))
        profiles[i + 1] = healed
    binner = drift.FeatureBinner(plain)
    windows = {"reference": reference[rng.choice(2000, args.window)],
               "last regime": np.clip(reference[rng.choice(2000, args.window)] * 0.5 + 0.4, 0, 1),
               "nothing": np.clip(reference[rng.choice(2000, args.window)] * 0.2 + 0.8, 0, 1)}
    binning = best_of(lambda: binner.counts(windows["reference"]), args.repeats)
    print(f"binning one window of {args.window} x 64: {1e3 * binning:.3f} ms (the agent's cost per window "
          "either way)")
    for kind, x in windows.items():
        counts = binner.trim(binner.counts(x))
        base = best_of(lambda c=counts: drift.score(plain, c), args.repeats)
        cells = []
        for n in (1, 8):
            p = profiles[n]
            t = best_of(lambda c=counts, p=p: drift.score(p, c), args.repeats)
            cells.append(f"{n} regime{'s' if n > 1 else ''} {1e3 * t:.3f} ms ({t / base:.2f}x)")
        verdict = drift.score(profiles[8], counts)
        print(f"window matching {kind:<12} no regime {1e3 * base:.3f} ms; " + "; ".join(cells)
              + f" -> {verdict.level} ({verdict.regime or 'reference'})")


if __name__ == "__main__":
    main()
