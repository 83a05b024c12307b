"""The mixture sequential probability ratio test (mSPRT; Johari, Pekelis and Walsh, "Always Valid Inference")
for the difference of means between a canary (treatment) and a control arm, read after every observation.

It gives an always-valid p-value for "the means are equal" and an always-valid confidence sequence for
mean(treatment) - mean(control): under the test's assumptions (independent observations, roughly normal arm
means), stopping at any look you like keeps the false-alarm rate at ``alpha`` or below.

The mixture over the difference is N(0, tau^2). Default tau: the pooled within-arm standard deviation at the
first look, frozen from then on, so the prior says "a shift of about one device-level standard deviation", the
size of regression a canary gate is there to catch. Set at one look and never changed, it cannot adapt to later
data (which would break validity); it depends on the data's scale only, so it does not favour any difference.
In simulations, power changed little for tau between a quarter of and one standard deviation.

Small samples: the variance is estimated (V = s_T^2/n_T + s_C^2/n_C), so each look uses the Student-t form of the
normal-mixture likelihood ratio (the Bayes factor of the t statistic) with the conservative Welch degrees of
freedom min(n_T, n_C) - 1; it tends to Johari et al.'s Gaussian formula as the arms grow. On skewed metrics
(error rates, latencies) the sample variance rises and falls with the sample mean, which pulls the confidence
sequence below the truth at small n when the canary is the more variable arm; hence no look before 20
observations per arm (``min_samples``). The observations must be independent: repeated windows of the same few
devices are not, unless device effects are negligible.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

__all__ = ["Observation", "SequentialResult", "decided", "msprt"]

Floats = NDArray[np.float64]


@dataclass(frozen=True, slots=True)
class Observation:
    """One device's aggregate over one telemetry window."""

    treatment: bool
    """True: canary (new bundle); False: control."""
    value: float


@dataclass(frozen=True, slots=True)
class SequentialResult:
    """What the test says after the last observation, with every earlier look taken into account."""

    n_treatment: int
    n_control: int
    difference: float
    """mean(treatment) - mean(control) at the last observation (nan while an arm is empty)."""
    lower: float
    """Lower end of the always-valid (1 - alpha) confidence sequence: the running maximum over looks."""
    upper: float
    """Upper end: the running minimum over looks. Both are infinite before the first look; lower > upper (an empty
    intersection) says the data do not fit the test's assumptions (e.g. a trend, or dependent observations)."""
    p_value: float
    """Always-valid p-value for a zero difference: the running minimum over looks (1.0 before the first)."""
    looks: int
    """How many prefixes of the observations were judged."""


@dataclass(frozen=True, slots=True)
class _Arm:
    """Count, mean and floored sample variance of one arm after each prefix of the observations."""

    count: Floats
    mean: Floats
    variance: Floats


def msprt(observations: Sequence[Observation], *, alpha: float = 0.05, tau: float | None = None,
          min_samples: int = 20, variance_floor: float = 1e-12) -> SequentialResult:
    """Judge ``observations`` (in arrival order) after each one, once both arms have ``min_samples``.

    ``tau`` is the standard deviation of the mixture over the difference, in the values' unit (default: the
    pooled standard deviation at the first look). Sample variances below ``variance_floor`` count as the floor.
    """
    _check_options(alpha=alpha, tau=tau, min_samples=min_samples, variance_floor=variance_floor)
    treatment, values = _as_arrays(observations)
    n_treatment = int(treatment.sum())
    n_control = len(values) - n_treatment
    difference = _mean_of(values[treatment]) - _mean_of(values[~treatment])
    canary = _running_arm(values, treatment, variance_floor)
    control = _running_arm(values, ~treatment, variance_floor)
    looking = (canary.count >= min_samples) & (control.count >= min_samples)
    looks = int(looking.sum())
    if looks == 0:
        return SequentialResult(n_treatment, n_control, difference, -math.inf, math.inf, 1.0, 0)
    first = int(np.argmax(looking))
    canary, control = _from(canary, first), _from(control, first)
    tau2 = tau * tau if tau is not None else _pooled_variance(canary, control)
    lower, upper, p_value = _judge(canary, control, tau2=tau2, alpha=alpha)
    return SequentialResult(n_treatment, n_control, difference, lower, upper, p_value, looks)


def decided(result: SequentialResult, alpha: float) -> bool:
    """Whether the test rejects a zero difference at level ``alpha``."""
    return result.p_value <= alpha


def _check_options(*, alpha: float, tau: float | None, min_samples: int, variance_floor: float) -> None:
    if not (isinstance(alpha, int | float) and 0.0 < alpha < 1.0):
        raise ValueError(f"alpha must be strictly between 0 and 1, got {alpha!r}")
    if tau is not None and not (isinstance(tau, int | float) and 0.0 < tau < math.inf):
        raise ValueError(f"tau must be a finite number > 0 (or None for the default), got {tau!r}")
    if isinstance(min_samples, bool) or not isinstance(min_samples, int) or min_samples < 2:
        raise ValueError(f"min_samples must be an integer >= 2 (a sample variance needs two values), "
                         f"got {min_samples!r}")
    if not (isinstance(variance_floor, int | float) and 0.0 < variance_floor < math.inf):
        raise ValueError(f"variance_floor must be a finite number > 0, got {variance_floor!r}")


def _as_arrays(observations: Sequence[Observation]) -> tuple[NDArray[np.bool_], Floats]:
    """The arms (True: treatment) and the values, in order; a value that is not finite is an error."""
    count = len(observations)
    treatment = np.fromiter((bool(o.treatment) for o in observations), dtype=np.bool_, count=count)
    values = np.fromiter((o.value for o in observations), dtype=np.float64, count=count)
    bad = np.flatnonzero(~np.isfinite(values))
    if bad.size:
        index = int(bad[0])
        raise ValueError(f"observations[{index}].value is not finite: {observations[index].value!r}")
    return treatment, values


def _mean_of(values: Floats) -> float:
    return float(values.mean()) if values.size else math.nan


def _running_arm(values: Floats, member: NDArray[np.bool_], variance_floor: float) -> _Arm:
    """Running moments of the arm ``member`` marks, from sums shifted by its first value (for accuracy)."""
    count = np.cumsum(member, dtype=np.float64)
    shift = values[np.argmax(member)] if member.any() else 0.0
    deviation = np.where(member, values - shift, 0.0)
    total = np.cumsum(deviation)
    squares = np.cumsum(deviation * deviation)
    with np.errstate(divide="ignore", invalid="ignore"):
        mean = shift + total / count
        variance = (squares - total * total / count) / (count - 1.0)
    return _Arm(count, mean, np.maximum(variance, variance_floor))


def _from(arm: _Arm, start: int) -> _Arm:
    return _Arm(arm.count[start:], arm.mean[start:], arm.variance[start:])


def _pooled_variance(canary: _Arm, control: _Arm) -> float:
    """The within-arm pooled variance at the first look (the default tau^2)."""
    n_t, n_c = canary.count[0], control.count[0]
    return float(((n_t - 1.0) * canary.variance[0] + (n_c - 1.0) * control.variance[0]) / (n_t + n_c - 2.0))


def _judge(canary: _Arm, control: _Arm, *, tau2: float, alpha: float) -> tuple[float, float, float]:
    """Lower and upper end of the confidence sequence and the p-value, over every look given."""
    variance = canary.variance / canary.count + control.variance / control.count
    difference = canary.mean - control.mean
    df = np.minimum(canary.count, control.count) - 1.0
    ratio = tau2 / variance
    log_lr = _log_mixture_ratio(difference * difference / variance, ratio, df)
    half = _half_width(variance, ratio, df, alpha)
    p_value = min(1.0, math.exp(-float(log_lr.max())))
    return float((difference - half).max()), float((difference + half).min()), p_value


def _log_mixture_ratio(t2: Floats, ratio: Floats, df: Floats) -> Floats:
    """log of the normal-mixture likelihood ratio for a squared t statistic ``t2`` against a zero difference.

    ``ratio`` is tau^2 / V. With ``df`` infinite it is Johari et al.'s
    log(sqrt(V / (V + tau^2))) + tau^2 D^2 / (2 V (V + tau^2)).
    """
    tail = np.log1p(t2 / df) - np.log1p(t2 / (df * (1.0 + ratio)))
    log_lr: Floats = -0.5 * np.log1p(ratio) + 0.5 * (df + 1.0) * tail
    return log_lr


def _half_width(variance: Floats, ratio: Floats, df: Floats, alpha: float) -> Floats:
    """Half-width of the set of differences the test does not reject at ``alpha`` (infinite: no bound yet).

    With ``df`` infinite it is Johari et al.'s sqrt(2 V (V + tau^2) / tau^2 (log(1/alpha) + log((V + tau^2)/V)/2)).
    """
    level = math.log(1.0 / alpha) + 0.5 * np.log1p(ratio)
    grow = np.expm1(2.0 * level / (df + 1.0))
    bounded = ratio > grow
    with np.errstate(divide="ignore", invalid="ignore"):
        t2 = np.where(bounded, df * grow * (1.0 + ratio) / (ratio - grow), np.inf)
    return np.sqrt(t2 * variance)
