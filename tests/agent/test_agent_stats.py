from __future__ import annotations

import numpy as np

from edgefleet.agent.stats import LATENCY_BOUNDS_MS, WindowStats, histogram, predicted_classes
from edgefleet.protocol.drift import add_regime, build_profile
from edgefleet.protocol.messages import histogram_quantile


def _profile(seed=0):
    x = np.random.default_rng(seed).normal(size=(2000, 3)).astype(np.float32)
    return build_profile(x, input_name="x", predictions=np.arange(2000) % 2, labels=["no", "yes"])


def test_histogram_bins_are_upper_inclusive_with_overflow():
    counts = histogram(np.array([0.05, 0.06, 1.0, 99999.0]))
    assert len(counts) == len(LATENCY_BOUNDS_MS) + 1
    assert counts[0] == 1 and counts[2] == 0 and counts[1] == 1 and counts[-1] == 1


def test_quantiles_from_histogram_fall_in_the_right_bins():
    counts = histogram(np.array([0.3] * 50 + [3.0] * 45 + [30.0] * 5))
    b = LATENCY_BOUNDS_MS

    def bin_of(v):
        i = int(np.searchsorted(b, v, side="left"))
        return (b[i - 1] if i else 0.0), b[i]

    for q, value in ((0.5, 0.3), (0.95, 3.0), (0.99, 30.0)):
        lower, upper = bin_of(value)
        assert lower < histogram_quantile(b, counts, q) <= upper
    assert histogram_quantile(b, [0] * len(counts), 0.5) is None


def test_predicted_classes_by_output_kind():
    assert predicted_classes(np.array([[0.1, 0.9], [0.8, 0.2]])).tolist() == [1, 0]
    assert predicted_classes(np.array([[0.7], [0.2]], np.float32)).tolist() == [1, 0]
    assert predicted_classes(np.array([3, 1], np.int64)).tolist() == [3, 1]


def test_window_counts_features_predictions_and_drift():
    profile = _profile()
    stats = WindowStats(profile=profile, labels=["no", "yes"], output_name="p", start=0.0)
    rng = np.random.default_rng(1)
    for i in range(30):  # 30 batches of 10, folded now and then as the agent loop does
        x = rng.normal(size=(10, 3)).astype(np.float32)
        stats.record({"x": x}, {"p": np.eye(2, dtype=np.float32)[rng.integers(0, 2, 10)]}, 0.0004, 10)
        if i % 7 == 0:
            stats.fold()
    stats.error()
    w = stats.flush(10.0)
    assert (w.requests, w.batches, w.samples, w.errors) == (31, 30, 300, 1)
    assert sum(w.latency_ms.counts) == 30 and w.latency_ms.counts[3] == 30  # 0.4 ms -> (0.2, 0.5]
    assert [sum(f) for f in w.features] == [300, 300, 300]
    assert sum(w.predictions.values()) == 300 and set(w.predictions) == {"no", "yes"}
    assert w.drift is not None and w.drift.level == "ok" and w.drift.samples == 300
    # the next window starts empty
    nxt = stats.flush(20.0)
    assert (nxt.start, nxt.requests, nxt.samples) == (10.0, 0, 0)


def test_shifted_inputs_raise_a_drift_alarm():
    stats = WindowStats(profile=_profile(), labels=None, output_name=None, start=0.0)
    x = np.random.default_rng(2).normal(loc=2.5, size=(500, 3)).astype(np.float32)
    stats.record({"x": x}, {}, 0.001, 500)
    assert stats.flush(1.0).drift.level == "alarm"


def test_inputs_of_a_known_regime_are_judged_against_it_and_the_window_says_which():
    rng = np.random.default_rng(3)
    healed = add_regime(_profile(), "incident inc-1", rng.normal(loc=2.5, size=(2000, 3)).astype(np.float32))
    stats = WindowStats(profile=healed, labels=None, output_name=None, start=0.0)
    stats.record({"x": rng.normal(loc=2.5, size=(500, 3)).astype(np.float32)}, {}, 0.001, 500)
    drift = stats.flush(1.0).drift
    assert (drift.level, drift.regime) == ("ok", "incident inc-1")
    stats.record({"x": rng.normal(size=(500, 3)).astype(np.float32)}, {}, 0.001, 500)   # the reference's inputs
    assert stats.flush(2.0).drift.regime is None
    stats.record({"x": rng.normal(loc=-2.5, size=(500, 3)).astype(np.float32)}, {}, 0.001, 500)   # neither
    assert stats.flush(3.0).drift.level == "alarm"


def test_no_profile_means_no_feature_counts():
    stats = WindowStats(profile=None, labels=None, output_name="p", start=0.0)
    stats.record({"x": np.zeros((2, 3))}, {"p": np.array([[0.2, 0.8], [0.9, 0.1]])}, 0.001, 2)
    w = stats.flush(1.0)
    assert w.features == [] and w.drift is None and w.predictions == {"1": 1, "0": 1}


def test_drift_binning_is_bounded_per_window_but_counts_are_complete():
    stats = WindowStats(profile=_profile(), labels=None, output_name=None, start=0.0, max_binned_rows=100)
    x = np.random.default_rng(3).normal(size=(60, 3)).astype(np.float32)
    for _ in range(5):
        stats.record({"x": x}, {}, 0.001, 60)
    w = stats.flush(1.0)
    assert w.samples == 300 and sum(w.features[0]) == 120 and w.drift.samples == 120
