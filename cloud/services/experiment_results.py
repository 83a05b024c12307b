"""What an A/B experiment found, as a pure function of its telemetry windows (no storage, no I/O).

Per metric (error rate, p95 latency, input drift; lower is better for each): the mean of arm A
(control) and arm B (treatment), the difference B - A with its always-valid confidence interval and
p-value from the mixture sequential test of :mod:`.rollouts.sequential` (the one the rollout gates
use, so the results may be read after every window without inflating false alarms), and a verdict.
One observation is one device's telemetry window; windows are taken in the order they ended. Plus
how far apart the two arms' prediction distributions are (Jensen-Shannon, as the rollout prediction
gate computes it).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from enum import StrEnum

from edgefleet.cloud.services.rollouts.gates import COMPARED, WindowSample
from edgefleet.cloud.services.rollouts.sequential import Observation, SequentialResult, msprt
from edgefleet.protocol.drift import js

METRICS = ("error_rate", "latency_p95", "drift_psi")
"""The compared metrics, by their names in :data:`~.rollouts.gates.COMPARED`; lower is better for each."""


class Verdict(StrEnum):
    B_BETTER = "b_better"
    """B - A is below zero with confidence 1 - alpha."""
    B_WORSE = "b_worse"
    """B - A is above zero with confidence 1 - alpha."""
    NO_DIFFERENCE_YET = "no_difference_yet"
    """The confidence interval still contains zero."""
    TOO_FEW_WINDOWS = "too_few_windows"
    """An arm has fewer than ``min_windows`` windows: no look yet."""
    INCONSISTENT = "inconsistent"
    """The confidence sequence is empty: the windows do not fit the test's assumptions (a trend over
    time, or windows that depend on each other through their devices)."""


@dataclass(frozen=True)
class MetricResult:
    metric: str
    label: str
    unit: str
    windows_a: int
    windows_b: int
    mean_a: float | None
    mean_b: float | None
    difference: float | None
    """mean B - mean A (``None`` while an arm has no window)."""
    lower: float | None
    """Lower end of the always-valid (1 - alpha) confidence interval for B - A (``None``: unbounded)."""
    upper: float | None
    p_value: float
    """Always-valid p-value for "no difference" (1.0 before the first look)."""
    verdict: Verdict


@dataclass(frozen=True)
class PredictionResult:
    predictions_a: int
    predictions_b: int
    js: float | None
    """Jensen-Shannon divergence (base 2, 0 to 1) of B's prediction distribution from A's (``None``
    while an arm has none)."""


@dataclass(frozen=True)
class Results:
    alpha: float
    min_windows: int
    metrics: list[MetricResult]
    predictions: PredictionResult

    def verdicts(self) -> dict[str, str]:
        return {m.metric: m.verdict for m in self.metrics}


def compare_arms(samples: Sequence[WindowSample], *, alpha: float, min_windows: int) -> Results:
    """The experiment's results from its windows: ``canary`` marks arm B's. ``alpha`` and
    ``min_windows`` (per arm, before the first look) are the test's, as in the rollout gates."""
    ordered = sorted(samples, key=lambda s: (s.window_end, s.device_id))
    return Results(alpha=alpha, min_windows=min_windows,
                   metrics=[compare_metric(name, ordered, alpha=alpha, min_windows=min_windows) for name in METRICS],
                   predictions=compare_predictions(ordered))


def compare_metric(name: str, samples: Sequence[WindowSample], *, alpha: float, min_windows: int) -> MetricResult:
    """One metric, over ``samples`` in the order given (windows without the metric are left out)."""
    compared = COMPARED[name]
    observations = []
    for s in samples:
        value = compared.value(s)
        if value is not None and math.isfinite(value):
            observations.append(Observation(treatment=s.canary, value=value))
    result = msprt(observations, alpha=alpha, min_samples=min_windows)
    return MetricResult(
        metric=name, label=compared.label, unit=compared.unit.strip(), windows_a=result.n_control,
        windows_b=result.n_treatment, mean_a=_mean(o.value for o in observations if not o.treatment),
        mean_b=_mean(o.value for o in observations if o.treatment), difference=_finite(result.difference),
        lower=_finite(result.lower), upper=_finite(result.upper), p_value=result.p_value, verdict=verdict(result))


def verdict(result: SequentialResult) -> Verdict:
    """What the test says about B - A for a metric where lower is better."""
    if result.looks == 0:
        return Verdict.TOO_FEW_WINDOWS
    if result.lower > result.upper:
        return Verdict.INCONSISTENT
    if result.lower > 0:
        return Verdict.B_WORSE
    if result.upper < 0:
        return Verdict.B_BETTER
    return Verdict.NO_DIFFERENCE_YET


def compare_predictions(samples: Sequence[WindowSample]) -> PredictionResult:
    a: Counter[str] = Counter()
    b: Counter[str] = Counter()
    for s in samples:
        (b if s.canary else a).update({k: int(v) for k, v in s.predictions.items()})
    n_a, n_b = sum(a.values()), sum(b.values())
    if not n_a or not n_b:
        return PredictionResult(n_a, n_b, None)
    labels = sorted(set(a) | set(b))
    return PredictionResult(n_a, n_b, js([a[k] / n_a for k in labels], [b[k] for k in labels]))


def _mean(values: Iterable[float]) -> float | None:
    items = list(values)
    return sum(items) / len(items) if items else None


def _finite(value: float) -> float | None:
    return value if math.isfinite(value) else None
