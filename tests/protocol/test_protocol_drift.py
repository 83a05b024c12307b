import math

import numpy as np
import pytest

from edgefleet.protocol import drift
from edgefleet.protocol.drift import DriftThresholds, FeatureBinner, build_profile, score

REF_N = 5000


@pytest.fixture(scope="module")
def profile():
    rng = np.random.default_rng(123)
    ref = rng.normal(size=(REF_N, 4)).astype(np.float32)
    ref[:, 3] = rng.integers(0, 3, size=REF_N)  # a discrete feature: ties on the edges
    return build_profile(ref, input_name="x", bins=10)


def _window(rng, n, shift=0.0):
    w = rng.normal(size=(n, 4)).astype(np.float32)
    w[:, 3] = rng.integers(0, 3, size=n)
    w[:, :3] += shift
    return w


def _naive_counts(profile, batch):
    x = drift.feature_matrix(batch, profile.mode)
    return [np.bincount(np.searchsorted(np.asarray(f.edges, dtype=np.float32), x[:, i], side="left"),
                        minlength=len(f.edges) + 1).tolist() for i, f in enumerate(profile.features)]


def test_profile_shape(profile):
    assert profile.input == "x" and profile.mode == "each" and profile.samples == REF_N
    assert len(profile.features) == 4
    for f in profile.features[:3]:
        assert len(f.edges) == 9 and len(f.probs) == 10
        assert f.edges == sorted(f.edges)
        assert all(abs(p - 0.1) < 0.01 for p in f.probs)  # quantile bins hold equal shares
    discrete = profile.features[3]
    assert len(discrete.edges) < 9  # duplicate quantiles collapse
    for f in profile.features:
        assert math.isclose(sum(f.probs), 1.0)


def test_profile_predictions_and_labels():
    x = np.zeros((10, 2), dtype=np.float32)
    p = build_profile(x, input_name="in", predictions=np.array([0, 0, 1, 2, 2, 2, 2, 2, 2, 2]),
                      labels=["cat", "dog"])
    assert p.predictions == {"cat": 0.2, "dog": 0.1, "2": 0.7}  # unlabeled index -> its number
    assert build_profile(x, input_name="in").predictions == {}


def test_constant_feature_profile():
    p = build_profile(np.ones((20, 1), dtype=np.float32), input_name="x")
    assert p.features[0].edges == [1.0] and p.features[0].probs == [1.0, 0.0]


def test_summary_mode_for_wide_inputs():
    x = np.random.default_rng(0).normal(size=(100, 1, 28, 28)).astype(np.float32)
    p = build_profile(x, input_name="img", bins=5)
    assert p.mode == "summary" and len(p.features) == 4  # mean, std, min, max per sample
    b = FeatureBinner(p)
    assert b.counts(x).sum() == 4 * 100
    assert b.trim(b.counts(x)) == _naive_counts(p, x)


def test_binner_matches_naive_searchsorted(profile):
    rng = np.random.default_rng(7)
    batch = _window(rng, 997, shift=0.3)
    # put values exactly on edges (bin i holds (edges[i-1], edges[i]]) and beyond the ends
    batch[0, :3] = [profile.features[i].edges[0] for i in range(3)]
    batch[1, :3] = [profile.features[i].edges[-1] for i in range(3)]
    batch[2, :3] = [-1e30, 1e30, np.float32(profile.features[2].edges[4])]
    b = FeatureBinner(profile)
    counts = b.counts(batch)
    assert counts.shape == (4, 10) and counts.dtype.kind == "i"
    assert b.trim(counts) == _naive_counts(profile, batch)
    assert [len(r) for r in b.trim(counts)] == [len(f.probs) for f in profile.features]
    assert counts[3, len(profile.features[3].probs):].sum() == 0  # padding bins stay empty


def test_binner_edge_semantics():
    p = drift.ReferenceProfile(input="x", features=[drift.FeatureProfile(edges=[0.0, 1.0], probs=[0.3, 0.4, 0.3])],
                               samples=10)
    b = FeatureBinner(p)
    x = np.array([[-1.0], [0.0], [0.5], [1.0], [1.5]], dtype=np.float32)
    assert b.trim(b.counts(x)) == [[2, 2, 1]]


def test_binner_refuses_wrong_width(profile):
    with pytest.raises(ValueError):
        FeatureBinner(profile).counts(np.zeros((3, 5), dtype=np.float32))


def test_counts_are_mergeable(profile):
    rng = np.random.default_rng(11)
    whole = _window(rng, 1000)
    b = FeatureBinner(profile)
    for cut in (0, 1, 333, 999):
        assert np.array_equal(b.counts(whole[:cut]) + b.counts(whole[cut:]), b.counts(whole))
    halves = [b.trim(b.counts(whole[:400])), b.trim(b.counts(whole[400:]))]
    # the wire form adds up too
    merged = [[x + y for x, y in zip(r1, r2, strict=True)] for r1, r2 in zip(*halves, strict=True)]
    assert merged == b.trim(b.counts(whole))
    assert score(profile, merged) == score(profile, b.trim(b.counts(whole)))


@pytest.mark.parametrize("n", [50, 80, 200, 1000, 5000])
def test_same_distribution_rarely_alarms(profile, n):
    rng = np.random.default_rng(1000 + n)
    b = FeatureBinner(profile)
    levels = {"ok": 0, "warn": 0, "alarm": 0, "insufficient": 0}
    floor = drift.noise_floor(10, n, REF_N, profile.thresholds.alpha)
    psis = []
    for _ in range(200):
        s = score(profile, b.trim(b.counts(_window(rng, n))))
        levels[s.level] += 1
        psis.append(s.psi)
        assert s.samples == n
        assert 0 <= s.js <= 1 and 0 <= s.ks <= 1
    assert levels["alarm"] == 0
    assert levels["warn"] <= 2  # <= 1 % false warnings
    assert np.median(psis) < floor / 2
    assert np.median(psis) < 12 / n + 0.005  # ~ (bins-1)/n: near 0 for large windows


@pytest.mark.parametrize("n", [2, 10, 49])
def test_small_windows_are_insufficient(profile, n):
    b = FeatureBinner(profile)
    s = score(profile, b.trim(b.counts(_window(np.random.default_rng(n), n, shift=5.0))))
    assert s.level == "insufficient" and s.samples == n
    assert s.psi > 0.3  # the score is still reported


@pytest.mark.parametrize("n,shift", [(60, 3.0), (500, 1.0), (5000, 1.0)])
def test_shifted_inputs_alarm(profile, n, shift):
    b = FeatureBinner(profile)
    s = score(profile, b.trim(b.counts(_window(np.random.default_rng(n), n, shift=shift))))
    assert s.level == "alarm"
    assert s.psi > profile.thresholds.psi_alarm and s.ks > 0.2
    assert max(s.per_feature_psi[:3]) > 10 * s.per_feature_psi[3]  # the untouched feature stays calm


def test_moderate_shift_warns_in_large_windows_only(profile):
    b = FeatureBinner(profile)
    big = score(profile, b.trim(b.counts(_window(np.random.default_rng(1), 20000, shift=0.5))))
    small = score(profile, b.trim(b.counts(_window(np.random.default_rng(2), 60, shift=0.5))))
    assert big.level in ("warn", "alarm")
    assert small.level == "ok"


def test_prediction_psi(profile):
    p = profile.model_copy(update={"predictions": {"a": 0.5, "b": 0.5}})
    counts = FeatureBinner(p).trim(FeatureBinner(p).counts(_window(np.random.default_rng(0), 100)))
    assert score(p, counts, {"a": 50, "b": 50}).prediction_psi < 0.01
    assert score(p, counts, {"a": 100}).prediction_psi > 1
    assert score(p, counts, {"c": 100}).prediction_psi > 1  # an unseen class counts as drift
    assert score(p, counts).prediction_psi is None
    assert score(profile, counts, {"a": 1}).prediction_psi is None  # profile without predictions


def test_divergences_basic_properties():
    ref = [0.25, 0.25, 0.25, 0.25]
    assert drift.psi(ref, [0, 0, 0, 0]) == 0.0 and drift.js(ref, [0, 0, 0, 0]) == 0.0 and drift.ks(ref, [0] * 4) == 0
    assert drift.psi(ref, [1000, 1000, 1000, 1000]) < 1e-6
    assert drift.js(ref, [1000, 1000, 1000, 1000]) < 1e-6
    far = [0, 0, 0, 10000]
    assert drift.psi(ref, far) > 3 and 0.5 < drift.js(ref, far) <= 1.0
    assert drift.ks([1, 0, 0, 0], far) == pytest.approx(1.0)
    assert all(np.isfinite([drift.psi([1, 0, 0, 0], far), drift.js([1, 0, 0, 0], far)]))


def test_noise_floor_and_chi2():
    # chi2(9) 99.9 % quantile is 27.877; Wilson-Hilferty is within 1 %
    assert drift._chi2_quantile(0.999, 9) == pytest.approx(27.877, rel=0.01)
    assert drift._chi2_quantile(0.95, 1) == pytest.approx(3.841, rel=0.05)
    assert drift._normal_quantile(0.975) == pytest.approx(1.959964, abs=1e-6)
    assert drift.noise_floor(10, 0, 100, 0.001) == math.inf
    floors = [drift.noise_floor(10, n, 5000, 0.001) for n in (50, 100, 1000, 10000)]
    assert floors == sorted(floors, reverse=True)


def test_thresholds_from_profile():
    x = np.random.default_rng(0).normal(size=(500, 1)).astype(np.float32)
    strict = build_profile(x, input_name="x", thresholds=DriftThresholds(psi_warn=0.0, psi_alarm=0.0, min_samples=5,
                                                                         alpha=0.5))
    b = FeatureBinner(strict)
    assert score(strict, b.trim(b.counts(x[:100] + 0.5))).level in ("warn", "alarm")
    lax = strict.model_copy(update={"thresholds": DriftThresholds(min_samples=1000)})
    assert score(lax, b.trim(b.counts(x[:100]))).level == "insufficient"


@pytest.fixture(scope="module")
def wide_profile():
    ref = np.random.default_rng(7).normal(size=(REF_N, 64)).astype(np.float32)
    return build_profile(ref, input_name="x", bins=10)


def test_drift_in_one_of_many_features_is_not_diluted_by_the_mean(wide_profile):
    b = FeatureBinner(wide_profile)
    w = np.random.default_rng(8).normal(size=(2000, 64)).astype(np.float32)
    w[:, 17] += 2.0  # one sensor of 64 drifts by two standard deviations
    s = score(wide_profile, b.trim(b.counts(w)))
    assert s.psi < wide_profile.thresholds.psi_warn  # the mean alone would call this fine
    assert s.level == "alarm"
    assert int(np.argmax(s.per_feature_psi)) == 17


@pytest.mark.parametrize("n", [60, 300, 3000])
def test_many_features_do_not_multiply_false_alarms(wide_profile, n):
    rng = np.random.default_rng(n)
    b = FeatureBinner(wide_profile)
    levels = [score(wide_profile, b.trim(b.counts(rng.normal(size=(n, 64)).astype(np.float32)))).level
              for _ in range(100)]
    assert levels.count("alarm") == 0
    assert levels.count("warn") <= 2


# ---------------------------------------------------------------- known regimes


@pytest.fixture(scope="module")
def healed(profile):
    """The profile plus the shifted inputs (+2 sd on three features) as a known regime."""
    rng = np.random.default_rng(7)
    return drift.add_regime(profile, "incident inc-1", _window(rng, 3000, shift=2.0),
                            predictions=rng.integers(0, 2, 3000), labels=["a", "b"])


def test_a_regime_is_counted_on_the_reference_bins(profile, healed):
    (regime,) = healed.regimes
    assert regime.name == "incident inc-1" and regime.samples == 3000
    assert [len(p) for p in regime.probs] == [len(f.probs) for f in profile.features]
    assert all(math.isclose(sum(p), 1.0) for p in regime.probs)
    assert 0.72 < regime.probs[0][-1] < 0.80   # +2 sd: P(z + 2 > 1.28, the top decile edge) = 0.76
    assert set(regime.predictions) == {"a", "b"} and profile.regimes == []   # a copy, the original unchanged
    assert drift.ReferenceProfile.model_validate(healed.model_dump()) == healed


@pytest.mark.parametrize("n", [200, 1000])
def test_a_window_that_matches_a_known_regime_is_not_drift(profile, healed, n):
    rng = np.random.default_rng(n)
    binner = FeatureBinner(healed)
    shifted = [score(healed, binner.trim(binner.counts(_window(rng, n, shift=2.0)))) for _ in range(50)]
    assert all(s.regime == "incident inc-1" for s in shifted)
    assert sum(s.level != "ok" for s in shifted) <= 2
    assert all(score(profile, binner.trim(binner.counts(_window(rng, n, shift=2.0)))).level == "alarm"
               for _ in range(5))   # without the regime the same windows alarm


def test_reference_windows_stay_on_the_reference_and_other_shifts_still_alarm(healed):
    rng = np.random.default_rng(11)
    binner = FeatureBinner(healed)
    clean = [score(healed, binner.trim(binner.counts(_window(rng, 500)))) for _ in range(50)]
    assert sum(s.level != "ok" for s in clean) <= 2 and all(s.regime is None for s in clean if s.level == "ok")
    for shift in (-2.0, 4.0):   # the other way, or further: drift against the reference and the regime
        s = score(healed, binner.trim(binner.counts(_window(rng, 500, shift=shift))))
        assert s.level == "alarm", shift


def test_regimes_are_refused_off_the_bins_twice_or_past_the_limit(profile, healed):
    data = healed.model_dump()
    data["regimes"][0]["probs"][0] = [1.0]
    with pytest.raises(ValueError, match="regime 'incident inc-1' is not counted on the profile's bins"):
        drift.ReferenceProfile.model_validate(data)
    with pytest.raises(ValueError, match="already has a regime 'incident inc-1'"):
        drift.add_regime(healed, "incident inc-1", _window(np.random.default_rng(1), 10))
    with pytest.raises(ValueError, match="has no samples"):
        drift.add_regime(profile, "empty", _window(np.random.default_rng(1), 0))
    full = profile
    for i in range(drift.MAX_REGIMES):
        full = drift.add_regime(full, f"r{i}", _window(np.random.default_rng(i), 10))
    with pytest.raises(ValueError, match=f"already has {drift.MAX_REGIMES} regimes"):
        drift.add_regime(full, "one more", _window(np.random.default_rng(1), 10))
