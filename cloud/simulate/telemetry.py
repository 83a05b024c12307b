"""Statistics windows as a device's agent would send them: requests drawn around a device's own rate,
a log-normal latency histogram on fixed bounds, per-feature counts on the reference profile's bins
(ten bins of a standard normal), predictions, and drift scores of the window against the reference
(protocol/drift.py). A drifting device's inputs are shifted by ``magnitude`` standard deviations, so
its windows score as the agent would score them. Pure: the caller passes the generator and times."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from edgefleet.protocol import drift
from edgefleet.protocol.messages import DriftScores, Histogram, InstalledBundle, TelemetryWindow
from edgefleet.protocol.vocabulary import DriftLevel

LATENCY_BOUNDS = [0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0]
FEATURES = 4
EDGES = [-1.5, -1.0, -0.5, -0.25, 0.0, 0.25, 0.5, 1.0, 1.5]
"""Inner bin edges of every feature (ten bins), in reference standard deviations."""
CLASSES = ("ok", "defect")
WARN_PSI, ALARM_PSI = 0.1, 0.25
MIN_SAMPLES = 50


def _normal_cdf(x: float) -> float:
    return 0.5 * (1.0 + math.erf(x / math.sqrt(2.0)))


def bin_probabilities(shift: float) -> np.ndarray:
    """Probabilities of the ten bins for a normal input shifted by ``shift`` standard deviations."""
    cdf = [0.0] + [_normal_cdf(e - shift) for e in EDGES] + [1.0]
    return np.diff(np.array(cdf))


REFERENCE = bin_probabilities(0.0)


@dataclass(frozen=True)
class Profile:
    """What is constant about one device's traffic."""

    rate_per_s: float
    """Mean inference requests per second."""
    latency_mu: float
    """log(ms) of the median latency."""
    shift: float
    """Input shift in standard deviations (0: no drift)."""
    error_rate: float = 0.002


def level(psi: float, samples: int) -> DriftLevel:
    if samples < MIN_SAMPLES:
        return DriftLevel.INSUFFICIENT
    return DriftLevel.ALARM if psi >= ALARM_PSI else DriftLevel.WARN if psi >= WARN_PSI else DriftLevel.OK


def window(rng: np.random.Generator, profile: Profile, *, device_id: str, seq: int, start: float, end: float,
           bundle: InstalledBundle | None) -> TelemetryWindow:
    span = max(end - start, 0.0)
    requests = int(rng.poisson(profile.rate_per_s * span))
    samples = requests * 2
    errors = int(rng.binomial(requests, profile.error_rate)) if requests else 0
    latencies = rng.lognormal(profile.latency_mu, 0.5, size=requests)
    lat_counts = np.bincount(np.searchsorted(LATENCY_BOUNDS, latencies, side="left"),
                             minlength=len(LATENCY_BOUNDS) + 1)
    probs = bin_probabilities(profile.shift)
    features = [rng.multinomial(samples, probs) for _ in range(FEATURES)] if samples else \
        [np.zeros(len(REFERENCE), dtype=np.int64) for _ in range(FEATURES)]
    defect = int(rng.binomial(samples, min(0.9, 0.2 + 0.3 * abs(profile.shift)))) if samples else 0
    per_psi = [round(drift.psi(REFERENCE, f), 6) for f in features]
    mean_psi = float(np.mean(per_psi))
    scores = DriftScores(psi=mean_psi, js=float(np.mean([drift.js(REFERENCE, f) for f in features])),
                         ks=max(drift.ks(REFERENCE, f) for f in features), per_feature_psi=per_psi,
                         level=level(mean_psi, samples), samples=samples)
    return TelemetryWindow(device_id=device_id, window_seq=seq, window_start=start, window_end=end, bundle=bundle,
                           requests=requests, batches=requests, samples=samples, errors=errors,
                           latency_ms=Histogram(bounds=LATENCY_BOUNDS, counts=[int(c) for c in lat_counts]),
                           features=[[int(c) for c in f] for f in features],
                           predictions={CLASSES[0]: samples - defect, CLASSES[1]: defect}, drift=scores)
