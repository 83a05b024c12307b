"""Drift math shared by the bundle builder (reference profile) and the agent (live scores).

Pure numpy, no I/O. The reference profile is built from sample inputs at bundle build time:
per input feature, bin edges at the sample's quantiles and the fraction of samples per bin,
plus the distribution of predicted classes. On the device, live inputs are counted on the same
bins (mergeable integer histograms) and compared with PSI, Jensen-Shannon and a binned KS.

Thresholds adapt to the window size: with few samples the histograms are noisy, so the alarm
level is raised by the noise floor expected without any drift (chi-squared with bins-1 degrees
of freedom scaled by 1/n + 1/m), which keeps false alarms rare in small windows while large
windows still detect small shifts.
"""

from __future__ import annotations

import math
from typing import Literal

import numpy as np
from numpy.typing import ArrayLike
from pydantic import BaseModel, ConfigDict, Field, model_validator

from edgefleet.protocol.messages import DriftScores
from edgefleet.protocol.vocabulary import DriftLevel

EPS = 1e-4
"""Probability floor so empty bins do not make PSI infinite."""
MAX_FEATURES = 256
"""Inputs with more features are profiled by per-sample summaries (mean, std, min, max)."""


class FeatureProfile(BaseModel):
    model_config = ConfigDict(extra="allow")
    edges: list[float] = Field(description="inner bin edges; bin i holds values in (edges[i-1], edges[i]]")
    probs: list[float] = Field(description="reference fraction per bin, len(edges)+1")


class DriftThresholds(BaseModel):
    model_config = ConfigDict(extra="allow")
    psi_warn: float = 0.1
    psi_alarm: float = 0.25
    min_samples: int = 50
    alpha: float = 0.001
    """False-alarm probability used for the small-window noise floor."""


MAX_REGIMES = 8
"""A profile describes at most this many known regimes besides its reference."""


class Regime(BaseModel):
    """Another input distribution the model is known to handle -- typically the drifted inputs a
    retrained model learnt from (``incident inc-...``). A window that matches a regime is judged
    against it, not as drift: after a rollout back to health the healed devices' inputs are what the
    model was trained for, while a device whose inputs match neither the reference nor a regime still
    drifts. A regime is counted on the reference's bins (``probs`` per feature, like
    :attr:`FeatureProfile.probs`), so a window is binned once whatever the number of regimes, and a
    profile of a mixture (which would make both populations drift) is never needed."""

    model_config = ConfigDict(extra="allow")
    name: str = Field(min_length=1, max_length=64)
    probs: list[list[float]] = Field(description="per feature, the regime's fraction per reference bin")
    predictions: dict[str, float] = {}
    samples: int


class ReferenceProfile(BaseModel):
    model_config = ConfigDict(extra="allow")
    input: str = Field(description="name of the profiled model input")
    mode: Literal["each", "summary"] = "each"
    """``each``: one histogram per input feature; ``summary``: per-sample mean/std/min/max."""
    features: list[FeatureProfile]
    predictions: dict[str, float] = {}
    samples: int
    thresholds: DriftThresholds = DriftThresholds()
    regimes: list[Regime] = Field(default=[], max_length=MAX_REGIMES)
    """Other input distributions the model is known to handle, on the same bins (see :class:`Regime`)."""

    @model_validator(mode="after")
    def _regimes_on_the_bins(self) -> ReferenceProfile:
        sizes = [len(f.probs) for f in self.features]
        for r in self.regimes:
            if [len(p) for p in r.probs] != sizes:
                raise ValueError(f"regime {r.name!r} is not counted on the profile's bins")
        return self


def feature_matrix(batch: np.ndarray, mode: str) -> np.ndarray:
    """Flatten a batch ``[N, ...]`` into the ``[N, F]`` matrix the profile describes."""
    x = np.asarray(batch, dtype=np.float32)
    x = x.reshape(len(x), int(np.prod(x.shape[1:])))  # not -1: an empty batch has no inferable width
    if mode == "summary":
        return np.stack([x.mean(1), x.std(1), x.min(1), x.max(1)], axis=1)
    return x


def build_profile(samples: np.ndarray, *, input_name: str, bins: int = 10,
                  predictions: np.ndarray | None = None, labels: list[str] | None = None,
                  thresholds: DriftThresholds | None = None) -> ReferenceProfile:
    """Profile ``samples`` (``[N, ...]``); ``predictions`` are the model's class indices."""
    n = len(samples)
    flat = np.asarray(samples, dtype=np.float32).reshape(n, -1)
    mode: Literal["each", "summary"] = "each" if flat.shape[1] <= MAX_FEATURES else "summary"
    x = feature_matrix(samples, mode)
    qs = np.linspace(0, 1, bins + 1)[1:-1]
    features = []
    for col in x.T:
        edges = np.unique(np.quantile(col, qs).astype(np.float32))
        counts = np.bincount(np.searchsorted(edges, col, side="left"), minlength=len(edges) + 1)
        features.append(FeatureProfile(edges=[float(e) for e in edges],
                                       probs=[float(c) / n for c in counts]))
    preds = _class_fractions(predictions, labels)
    return ReferenceProfile(input=input_name, mode=mode, features=features, predictions=preds,
                            samples=n, thresholds=thresholds or DriftThresholds())


def _class_fractions(predictions: np.ndarray | None, labels: list[str] | None) -> dict[str, float]:
    """The fraction of ``predictions`` (class indices) per class, keyed by label (else the index)."""
    if predictions is None or not len(predictions):
        return {}
    idx, cnt = np.unique(np.asarray(predictions), return_counts=True)
    return {(labels[i] if labels and i < len(labels) else str(int(i))): float(c) / len(predictions)
            for i, c in zip(idx, cnt, strict=True)}


def add_regime(profile: ReferenceProfile, name: str, samples: np.ndarray, *,
               predictions: np.ndarray | None = None, labels: list[str] | None = None) -> ReferenceProfile:
    """A copy of ``profile`` that also knows ``samples`` (``[N, ...]``, the profiled input) as the
    regime ``name``, counted on the profile's bins; ``predictions`` are the model's class indices."""
    if not profile.features:
        raise ValueError("a profile without features has no bins to count a regime on")
    if len(profile.regimes) >= MAX_REGIMES:
        raise ValueError(f"the profile already has {MAX_REGIMES} regimes, the most it may have")
    if name in {r.name for r in profile.regimes}:
        raise ValueError(f"the profile already has a regime {name!r}")
    if len(samples) == 0:
        raise ValueError(f"regime {name!r} has no samples")
    binner = FeatureBinner(profile)
    counts = binner.trim(binner.counts(samples))
    n = len(samples)
    preds = _class_fractions(predictions, labels)
    regime = Regime(name=name, probs=[[c / n for c in row] for row in counts], predictions=preds, samples=n)
    return profile.model_copy(update={"regimes": [*profile.regimes, regime]})


class FeatureBinner:
    """Counts batches on a profile's bins, vectorised over features (no per-sample loop)."""

    def __init__(self, profile: ReferenceProfile) -> None:
        self.profile = profile
        self.n_features = len(profile.features)
        self.n_bins = max(len(f.edges) for f in profile.features) + 1 if profile.features else 1
        edges = np.full((self.n_features, self.n_bins - 1), np.inf, dtype=np.float32)
        for i, f in enumerate(profile.features):
            edges[i, : len(f.edges)] = f.edges
        self._edges = edges
        self._offsets = np.arange(self.n_features) * self.n_bins
        self.sizes = [len(f.edges) + 1 for f in profile.features]

    def counts(self, batch: np.ndarray) -> np.ndarray:
        """Return ``[F, B]`` integer counts (B = widest feature's bins; padded bins stay 0)."""
        x = feature_matrix(batch, self.profile.mode)
        if x.shape[1] != self.n_features:
            raise ValueError(f"batch has {x.shape[1]} features, profile has {self.n_features}")
        # One [N, F] comparison per bin edge (edges are sorted; padding edges are +inf), so the
        # temporary stays the size of the batch instead of N x F x B.
        idx = np.broadcast_to(self._offsets, x.shape).copy()
        for j in range(self._edges.shape[1]):
            idx += x > self._edges[:, j]
        return np.bincount(idx.ravel(), minlength=self.n_features * self.n_bins).reshape(
            self.n_features, self.n_bins)

    def trim(self, counts: np.ndarray) -> list[list[int]]:
        """Per-feature count lists without the padding bins (the wire form)."""
        return [[int(c) for c in row[:size]] for row, size in zip(counts, self.sizes, strict=True)]


def _smooth(p: ArrayLike) -> np.ndarray:
    floored: np.ndarray = np.maximum(np.asarray(p, dtype=np.float64), EPS)
    smoothed: np.ndarray = floored / floored.sum()
    return smoothed


def _live(counts: np.ndarray) -> np.ndarray:
    """Live window probabilities with half a pseudo-count per bin (Jeffreys prior).

    A bin that is empty only by chance in a small window must not weigh like a vanished
    category: with a plain EPS floor it adds ``p * ln(p / EPS)`` (~0.7 for p = 0.1) to the PSI,
    which made same-distribution windows of 50 samples "warn" about 5 % of the time."""
    probs: np.ndarray = (counts + 0.5) / (counts.sum() + 0.5 * len(counts))
    return probs


def psi(ref_probs: ArrayLike, counts: ArrayLike) -> float:
    """Population stability index of live ``counts`` against reference probabilities."""
    live = np.asarray(counts, dtype=np.float64)
    if live.sum() <= 0:
        return 0.0
    p, q = _smooth(ref_probs), _live(live)
    return float(np.sum((q - p) * np.log(q / p)))


def js(ref_probs: ArrayLike, counts: ArrayLike) -> float:
    """Jensen-Shannon divergence (base 2, in [0, 1])."""
    live = np.asarray(counts, dtype=np.float64)
    if live.sum() <= 0:
        return 0.0
    p, q = _smooth(ref_probs), _live(live)
    m = 0.5 * (p + q)
    return float(0.5 * np.sum(p * np.log2(p / m)) + 0.5 * np.sum(q * np.log2(q / m)))


def ks(ref_probs: ArrayLike, counts: ArrayLike) -> float:
    """Binned Kolmogorov-Smirnov statistic: largest gap between the two CDFs."""
    live = np.asarray(counts, dtype=np.float64)
    if live.sum() <= 0:
        return 0.0
    return float(np.max(np.abs(np.cumsum(ref_probs) - np.cumsum(live / live.sum()))))


def _chi2_quantile(p: float, dof: int) -> float:
    """Wilson-Hilferty approximation of the chi-squared quantile (no scipy on devices)."""
    z = _normal_quantile(p)
    k = max(dof, 1)
    return k * (1 - 2 / (9 * k) + z * math.sqrt(2 / (9 * k))) ** 3


def _normal_quantile(p: float) -> float:
    # Acklam-free bisection on erf: accurate enough for thresholds and dependency-free.
    lo, hi = -10.0, 10.0
    for _ in range(80):
        mid = (lo + hi) / 2
        if 0.5 * (1 + math.erf(mid / math.sqrt(2))) < p:
            lo = mid
        else:
            hi = mid
    return (lo + hi) / 2


def noise_floor(bins: int, n: int, m: int, alpha: float) -> float:
    """PSI a window of ``n`` samples reaches with probability ``alpha`` without any drift,
    against a reference of ``m`` samples (PSI ~ chi2(bins-1) * (1/n + 1/m))."""
    if n <= 0:
        return math.inf
    return _chi2_quantile(1 - alpha, bins - 1) * (1 / n + 1 / max(m, 1))


def score(profile: ReferenceProfile, feature_counts: list[list[int]] | np.ndarray,
          prediction_counts: dict[str, int] | None = None) -> DriftScores:
    """Drift scores of one window (or of merged windows) against the profile: against its reference,
    and when that is not ``ok``, against each known regime too -- the closest one is the verdict
    (``regime`` names it; ``None``: the reference)."""
    rows = [np.asarray(r[: len(f.probs)], dtype=np.float64)
            for r, f in zip(feature_counts, profile.features, strict=True)]
    best = _score_against(profile, [f.probs for f in profile.features], profile.predictions, profile.samples,
                          rows, prediction_counts, regime=None)
    if best.level in (DriftLevel.OK, DriftLevel.INSUFFICIENT):
        return best
    for regime in profile.regimes:
        other = _score_against(profile, regime.probs, regime.predictions, regime.samples, rows, prediction_counts,
                               regime=regime.name)
        if (_RANK[other.level], other.psi) < (_RANK[best.level], best.psi):
            best = other
    return best


def _score_against(profile: ReferenceProfile, probs: list[list[float]], predictions: dict[str, float],
                   samples: int, rows: list[np.ndarray], prediction_counts: dict[str, int] | None, *,
                   regime: str | None) -> DriftScores:
    n = int(rows[0].sum()) if rows else 0
    per_psi = [psi(p, r) for p, r in zip(probs, rows, strict=True)]
    per_js = [js(p, r) for p, r in zip(probs, rows, strict=True)]
    per_ks = [ks(p, r) for p, r in zip(probs, rows, strict=True)]
    mean_psi = float(np.mean(per_psi)) if per_psi else 0.0
    pred_psi = None
    if prediction_counts and predictions:
        names = sorted(set(predictions) | set(prediction_counts))
        pred_psi = psi([predictions.get(k, 0.0) for k in names], [prediction_counts.get(k, 0) for k in names])
    level = (DriftLevel.INSUFFICIENT if n < profile.thresholds.min_samples
             else _level(profile, per_psi, mean_psi, n, samples))
    return DriftScores(psi=mean_psi, js=float(np.mean(per_js)) if per_js else 0.0,
                       ks=float(np.max(per_ks)) if per_ks else 0.0,
                       per_feature_psi=[round(v, 6) for v in per_psi], prediction_psi=pred_psi,
                       level=level, samples=n, regime=regime)


_RANK = {DriftLevel.OK: 0, DriftLevel.WARN: 1, DriftLevel.ALARM: 2}


def _level(profile: ReferenceProfile, per_psi: list[float], mean_psi: float, n: int, samples: int) -> DriftLevel:
    """The worse of two judgements, each against the usual PSI thresholds raised to the window's
    noise floor: the mean over features (broad drift), and each feature on its own (drift in one
    feature that the mean would dilute), whose floor is Bonferroni-corrected for the number of
    features so that many features do not multiply the false alarms."""
    if not profile.features:
        return DriftLevel.OK
    t = profile.thresholds

    def judge(value: float, floor: float) -> DriftLevel:
        if value >= max(t.psi_alarm, 2 * floor):
            return DriftLevel.ALARM
        return DriftLevel.WARN if value >= max(t.psi_warn, floor) else DriftLevel.OK

    bins = int(np.median([len(f.probs) for f in profile.features]))
    levels = [judge(mean_psi, noise_floor(bins, n, samples, t.alpha))]
    alpha_each = t.alpha / len(profile.features)
    levels += [judge(v, noise_floor(len(f.probs), n, samples, alpha_each))
               for f, v in zip(profile.features, per_psi, strict=True) if v >= t.psi_warn]
    return max(levels, key=_RANK.__getitem__)
