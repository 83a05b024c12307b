"""The mixture sequential test of staged rollouts: A/A false alarms stay at alpha although it looks after every
observation, a real regression is found, the confidence sequence covers the true difference, edge cases."""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable

import numpy as np
import pytest

from edgefleet.cloud.services.rollouts.sequential import Observation, SequentialResult, decided, msprt

ALPHA = 0.05
WINDOWS, CANARY_DEVICES, CONTROL_DEVICES = 40, 4, 12
"""Each telemetry window adds one observation per device, the devices reporting in a random order."""

Draw = Callable[[np.random.Generator, int], np.ndarray]


def _beta(a: float, b: float) -> Draw:
    return lambda rng, n: rng.beta(a, b, n)


def _lognormal(median: float, sigma: float) -> Draw:
    return lambda rng, n: rng.lognormal(math.log(median), sigma, n)


def _normal(mean: float, sd: float) -> Draw:
    return lambda rng, n: rng.normal(mean, sd, n)


def _lognormal_mean(median: float, sigma: float) -> float:
    return median * math.exp(sigma * sigma / 2)


def arrivals(rng: np.random.Generator, canary: Draw, control: Draw) -> list[Observation]:
    """``WINDOWS`` windows of one observation per canary and control device, interleaved as they arrive."""
    slots = np.tile(np.array([True] * CANARY_DEVICES + [False] * CONTROL_DEVICES), (WINDOWS, 1))
    flags = rng.permuted(slots, axis=1).ravel()
    values = np.empty(flags.size)
    values[flags] = canary(rng, int(flags.sum()))
    values[~flags] = control(rng, int((~flags).sum()))
    return [Observation(t, v) for t, v in zip(flags.tolist(), values.tolist(), strict=True)]


def trials(seed: int, count: int, canary: Draw, control: Draw, **options: int) -> list[SequentialResult]:
    rng = np.random.default_rng(seed)
    return [msprt(arrivals(rng, canary, control), alpha=ALPHA, **options) for _ in range(count)]


def share(flags: list[bool]) -> float:
    return sum(flags) / len(flags)


# A/A: both arms from one distribution. Error rates per window are skewed towards 0 (Beta), p95 latencies
# are right-skewed (lognormal); the skewed cases are the hard ones for a plug-in variance with 4 canaries.
A_A = {
    "error_rate_beta_2_98": _beta(2, 98),
    "error_rate_beta_0.5_50": _beta(0.5, 50),
    "p95_latency_lognormal": _lognormal(120.0, 0.4),
    "gaussian": _normal(10.0, 2.0),
}


@pytest.mark.parametrize("options", [{}, {"min_samples": 5}], ids=["default", "min_samples_5"])
@pytest.mark.parametrize("name", sorted(A_A))
def test_a_a_false_alarms_stay_at_alpha_although_it_looks_after_every_observation(name, options):
    draw = A_A[name]
    results = trials(sorted(A_A).index(name) + 100 + 10 * len(options), 1000, draw, draw, **options)
    assert all(r.looks > 0 for r in results)
    false_alarms = share([r.p_value <= ALPHA for r in results])
    print(f"A/A {name} {options}: false alarms {false_alarms:.3f}")
    assert false_alarms <= ALPHA
    assert share([r.lower <= 0.0 <= r.upper for r in results]) >= 1 - ALPHA


POWER = {
    "p95_latency_3x": (_lognormal(360.0, 0.4), _lognormal(120.0, 0.4)),
    "error_rate_0.2_vs_0.01": (_beta(2, 8), _beta(1, 99)),
}


@pytest.mark.parametrize("name", sorted(POWER))
def test_a_real_regression_is_found_and_the_confidence_sequence_is_above_zero(name):
    canary, control = POWER[name]
    results = trials(sorted(POWER).index(name) + 200, 200, canary, control)
    power = share([decided(r, ALPHA) for r in results])
    print(f"power {name}: {power:.3f}")
    assert power >= 0.95
    assert share([r.lower > 0.0 for r in results]) >= 0.95
    assert not any(r.upper < 0.0 for r in results)


COVERAGE = {
    "p95_latency_3x": (_lognormal(360.0, 0.4), _lognormal(120.0, 0.4),
                       _lognormal_mean(360.0, 0.4) - _lognormal_mean(120.0, 0.4)),
    "error_rate_0.2_vs_0.01": (_beta(2, 8), _beta(1, 99), 0.19),
    "p95_latency_1.2x": (_lognormal(144.0, 0.4), _lognormal(120.0, 0.4),
                         _lognormal_mean(144.0, 0.4) - _lognormal_mean(120.0, 0.4)),
    "error_rate_0.03_vs_0.02": (_beta(3, 97), _beta(2, 98), 0.01),
    "gaussian_half_sd": (_normal(11.0, 2.0), _normal(10.0, 2.0), 1.0),
}


@pytest.mark.parametrize("name", sorted(COVERAGE))
def test_the_confidence_sequence_covers_the_true_difference(name):
    canary, control, truth = COVERAGE[name]
    results = trials(sorted(COVERAGE).index(name) + 300, 1000, canary, control)
    coverage = share([r.lower <= truth <= r.upper for r in results])
    print(f"coverage {name}: {coverage:.3f}")
    assert coverage >= 1 - ALPHA


def test_the_p_value_and_the_confidence_sequence_agree():
    rng = np.random.default_rng(7)
    for effect in (0.0, 0.3, 0.6, 1.0):
        for _ in range(50):
            r = msprt(arrivals(rng, _normal(effect, 1.0), _normal(0.0, 1.0)), alpha=ALPHA)
            assert decided(r, ALPHA) == (r.lower > 0.0 or r.upper < 0.0)


def test_appending_observations_only_lowers_the_p_value_and_narrows_the_sequence():
    observations = arrivals(np.random.default_rng(11), _normal(0.4, 1.0), _normal(0.0, 1.0))
    prefixes = [msprt(observations[:k], alpha=ALPHA) for k in range(len(observations) + 1)]
    for before, after in zip(prefixes, prefixes[1:], strict=False):
        assert after.p_value <= before.p_value
        assert after.lower >= before.lower and after.upper <= before.upper
        assert after.looks - before.looks == (1 if after.looks else 0)
    whole = msprt(observations, alpha=ALPHA)
    assert whole == prefixes[-1]
    assert whole.p_value == min(p.p_value for p in prefixes)
    assert whole.looks == sum(1 for p in prefixes if p.looks) and whole.p_value < 1.0


def test_one_look_matches_the_formula_and_the_default_tau_is_the_pooled_sd_at_the_first_look():
    canary, control = [1.0, 2.5, 3.0, 4.5, 2.0], [0.5, 1.0, 0.0, 1.5, 2.0, 1.0]
    observations = [Observation(True, v) for v in canary] + [Observation(False, v) for v in control]
    n_t, n_c = len(canary), len(control)
    s2_t, s2_c = statistics.variance(canary), statistics.variance(control)
    pooled = ((n_t - 1) * s2_t + (n_c - 1) * s2_c) / (n_t + n_c - 2)
    v = s2_t / n_t + s2_c / n_c
    d = statistics.mean(canary) - statistics.mean(control)
    df, ratio = min(n_t, n_c) - 1, pooled / v
    t2 = d * d / v
    lr = (1 + ratio) ** -0.5 * ((1 + t2 / df) / (1 + t2 / (df * (1 + ratio)))) ** ((df + 1) / 2)
    r = msprt(observations, alpha=ALPHA, min_samples=5)
    assert (r.n_treatment, r.n_control, r.looks) == (5, 6, 2)  # the canary's 5th arrives first: looks at 10, 11
    assert r.difference == pytest.approx(d)
    late = msprt(observations, alpha=ALPHA, min_samples=6)
    assert late.looks == 0
    only = msprt(list(reversed(observations)), alpha=ALPHA, min_samples=5)  # control first: one look, at the end
    assert only.looks == 1
    assert only.p_value == pytest.approx(min(1.0, 1 / lr))
    given = msprt(list(reversed(observations)), alpha=ALPHA, tau=math.sqrt(pooled), min_samples=5)
    assert given.p_value == pytest.approx(only.p_value)


def test_the_ends_of_the_sequence_are_where_the_p_value_is_alpha():
    rng = np.random.default_rng(5)
    canary, control = rng.normal(1.0, 1.0, 30).tolist(), rng.normal(0.0, 1.0, 40).tolist()

    def last_look(shift: float) -> SequentialResult:
        observations = [Observation(False, v) for v in control] + [Observation(True, v - shift) for v in canary]
        return msprt(observations, alpha=ALPHA, tau=1.0, min_samples=30)   # one look, at the very end

    r = last_look(0.0)
    assert r.looks == 1 and math.isfinite(r.lower) and math.isfinite(r.upper)
    assert last_look(r.lower).p_value == pytest.approx(ALPHA)
    assert last_look(r.upper).p_value == pytest.approx(ALPHA)
    assert last_look((r.lower + r.upper) / 2).p_value == 1.0


def test_with_many_observations_it_is_the_gaussian_msprt_of_johari_et_al():
    rng = np.random.default_rng(3)
    n = 20_000
    canary, control = rng.normal(0.02, 1.0, n), rng.normal(0.0, 1.0, n)
    observations = [Observation(False, v) for v in control.tolist()] + [Observation(True, v) for v in canary.tolist()]
    tau = 0.1
    r = msprt(observations, alpha=ALPHA, tau=tau, min_samples=n)
    v = canary.var(ddof=1) / n + control.var(ddof=1) / n
    d = canary.mean() - control.mean()
    lr = math.sqrt(v / (v + tau**2)) * math.exp(tau**2 * d * d / (2 * v * (v + tau**2)))
    h = math.sqrt(2 * v * (v + tau**2) / tau**2 * (math.log(1 / ALPHA) + 0.5 * math.log((v + tau**2) / v)))
    assert r.p_value == pytest.approx(min(1.0, 1 / lr), rel=1e-3)
    assert (r.lower, r.upper) == pytest.approx((d - h, d + h), rel=1e-3)


def test_too_few_observations_in_an_arm_is_no_look():
    few = [Observation(True, float(v % 3)) for v in range(19)] + [Observation(False, float(v)) for v in range(50)]
    r = msprt(few)   # 20 per arm by default
    assert (r.n_treatment, r.n_control, r.looks) == (19, 50, 0)
    assert (r.p_value, r.lower, r.upper) == (1.0, -math.inf, math.inf)
    assert msprt(few, min_samples=19).looks == 50 - 19 + 1   # every prefix from the control's 19th on
    empty = msprt([])
    assert (empty.n_treatment, empty.n_control, empty.looks, empty.p_value) == (0, 0, 0, 1.0)
    assert math.isnan(empty.difference)
    assert math.isnan(msprt([Observation(False, 2.0)] * 9).difference)


def test_all_equal_values_do_not_crash_and_reject_nothing():
    same = [Observation(i % 2 == 0, 0.25) for i in range(40)]
    r = msprt(same)
    assert r.looks > 0 and r.p_value == 1.0 and r.difference == 0.0
    assert r.lower <= 0.0 <= r.upper
    assert not decided(r, ALPHA)
    constant_arms = [Observation(i % 2 == 0, 1.0 if i % 2 == 0 else 0.0) for i in range(40)]
    apart = msprt(constant_arms)
    assert apart.difference == 1.0 and apart.p_value < ALPHA and apart.lower > 0.0


@pytest.mark.parametrize("options", [{"alpha": 0.0}, {"alpha": 1.0}, {"alpha": -0.1}, {"alpha": math.nan},
                                     {"tau": 0.0}, {"tau": -1.0}, {"tau": math.inf}, {"tau": math.nan},
                                     {"min_samples": 1}, {"min_samples": 0}, {"min_samples": 2.5},
                                     {"variance_floor": 0.0}])
def test_bad_options_are_refused(options):
    name = next(iter(options))
    with pytest.raises(ValueError, match=name):
        msprt([Observation(True, 1.0), Observation(False, 2.0)], **options)


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_a_value_that_is_not_finite_is_refused_by_index(bad):
    observations = [Observation(i % 2 == 0, float(i)) for i in range(10)]
    observations[7] = Observation(False, bad)
    with pytest.raises(ValueError, match=r"observations\[7\]"):
        msprt(observations)


def test_decided_is_the_p_value_against_alpha():
    result = SequentialResult(10, 10, 1.0, 0.1, 2.0, 0.04, 5)
    assert decided(result, 0.05) and not decided(result, 0.01)
    assert decided(SequentialResult(10, 10, 1.0, 0.1, 2.0, 0.05, 5), 0.05)
