"""Fidelity measures per kind of model output, and the rule that infers an output's kind.

Pure numpy: arrays in, numbers out. Every array has the samples on its first axis (what
:func:`edgefleet.compression.inference.predict` returns per output). The gate
(:mod:`edgefleet.compression.evaluate`) picks thresholds; this module only measures.
"""

from __future__ import annotations

import numpy as np

from edgefleet.compression.config import OutputKind

#: |row sum - 1| allowed for rows to count as probabilities (fp32 softmax is within ~1e-6).
PROBABILITY_SUM_TOLERANCE = 1e-3
#: A vector of at least this many values per sample is an embedding (fewer: a regression).
EMBEDDING_MIN_SIZE = 64
#: SNR is clipped to +-this many dB (an exact match would be infinite; JSON has no infinity).
SNR_CLIP_DB = 200.0


def _rows(a: np.ndarray) -> np.ndarray:
    return a.reshape(len(a), -1).astype(np.float64)


def _is_probabilities(a: np.ndarray) -> bool:
    """Rows along the last axis are non-negative and sum to 1 (softmax output)."""
    if a.shape[-1] < 2 or a.size == 0:
        return False
    if float(a.min()) < -1e-6 or float(a.max()) > 1.0 + 1e-6:
        return False
    sums = a.astype(np.float64).sum(axis=-1)
    return bool(np.all(np.abs(sums - 1.0) <= PROBABILITY_SUM_TOLERANCE))


def _is_binary(a: np.ndarray) -> bool:
    return a.size > 0 and bool(np.all((a == 0) | (a == 1)))


def infer_kind(ref: np.ndarray) -> tuple[OutputKind, str]:
    """The kind of an output from the original model's values on the evaluation set, and the
    rule that decided it (docs/compression.md has the table). First match wins:

    1. one value per sample -> regression
    2. ``[N, C]``, rows non-negative summing to 1 -> class_scores
    3. ``[N, C]``, C >= 64 -> embedding; C < 64 -> regression (logits: declare class_scores)
    4. ``[N, T, C]``, rows along the last axis probabilities -> class_scores (per position)
    5. ``[N, K, 2|3]`` -> coordinates
    6. ``[N, ...]`` of 2+ dims per sample, every value exactly 0 or 1 -> mask
    7. anything else of 2+ dims per sample (``[N, C, H, W]``, ``[N, H, W, C]``, ``[N, H, W]``) -> map
    """
    per_sample = ref.shape[1:]
    if int(np.prod(per_sample)) == 1:
        return OutputKind.REGRESSION, "one value per sample"
    if len(per_sample) == 1:
        if _is_probabilities(ref):
            return OutputKind.CLASS_SCORES, "[N, C] rows are probabilities (>= 0, sum to 1)"
        if per_sample[0] >= EMBEDDING_MIN_SIZE:
            return OutputKind.EMBEDDING, f"[N, D] vector, D >= {EMBEDDING_MIN_SIZE}, not probabilities"
        return OutputKind.REGRESSION, f"[N, C] vector, C < {EMBEDDING_MIN_SIZE}, not probabilities"
    if len(per_sample) == 2 and _is_probabilities(ref):
        return OutputKind.CLASS_SCORES, "[N, T, C] rows along the last axis are probabilities"
    if len(per_sample) == 2 and per_sample[1] in (2, 3):
        return OutputKind.COORDINATES, f"[N, K, {per_sample[1]}] points"
    if _is_binary(ref):
        return OutputKind.MASK, "spatial output, every value 0 or 1"
    return OutputKind.MAP, f"{len(per_sample)}-D output per sample"


def top_k_agreement(ref: np.ndarray, out: np.ndarray, k: int) -> float:
    """Fraction of rows (last axis = classes) where the original's top-1 class is among the
    compressed model's top ``k`` (k = 1: top-1 agreement)."""
    classes = ref.shape[-1]
    a = ref.reshape(-1, classes)
    b = out.reshape(-1, classes)
    top = a.argmax(axis=1)
    if k <= 1:
        return float((top == b.argmax(axis=1)).mean())
    best = np.argpartition(-b, min(k, classes) - 1, axis=1)[:, :k]
    return float((best == top[:, None]).any(axis=1).mean())


def cosine_similarity(ref: np.ndarray, out: np.ndarray) -> float:
    """Mean over samples of the cosine between the flattened outputs (1 when both are zero)."""
    a, b = _rows(ref), _rows(out)
    norms = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    both_zero = (np.linalg.norm(a, axis=1) == 0) & (np.linalg.norm(b, axis=1) == 0)
    cosine = np.where(norms > 0, (a * b).sum(axis=1) / np.maximum(norms, 1e-300),
                      np.where(both_zero, 1.0, 0.0))
    return float(cosine.mean())


def snr_db(ref: np.ndarray, out: np.ndarray) -> float:
    """Signal-to-noise ratio ``10 log10(||ref||^2 / ||ref - out||^2)`` over the whole output,
    clipped to +-:data:`SNR_CLIP_DB`."""
    a, b = _rows(ref), _rows(out)
    signal = float((a * a).sum())
    noise = float(((a - b) ** 2).sum())
    if noise == 0.0:
        return SNR_CLIP_DB
    if signal == 0.0:
        return -SNR_CLIP_DB
    return float(np.clip(10.0 * np.log10(signal / noise), -SNR_CLIP_DB, SNR_CLIP_DB))


def value_range(ref: np.ndarray) -> float:
    """The original output's range (max - min); its largest magnitude when constant, else 1."""
    span = float(ref.max() - ref.min()) if ref.size else 0.0
    if span > 0:
        return span
    peak = float(np.abs(ref).max()) if ref.size else 0.0
    return peak if peak > 0 else 1.0


def relative_mae(ref: np.ndarray, out: np.ndarray) -> float:
    """Mean absolute error divided by :func:`value_range` of the original."""
    return float(np.abs(_rows(ref) - _rows(out)).mean()) / value_range(ref)


def mask_threshold(ref: np.ndarray) -> float:
    """0.5 for values in [0, 1] (probabilities, binary masks); the original's median otherwise
    (logits)."""
    if ref.size and float(ref.min()) >= 0.0 and float(ref.max()) <= 1.0:
        return 0.5
    return float(np.median(ref))


def iou(ref: np.ndarray, out: np.ndarray, threshold: float) -> float:
    """Mean over samples of the IoU of ``value > threshold`` masks (1 when both are empty)."""
    a, b = _rows(ref) > threshold, _rows(out) > threshold
    union = (a | b).sum(axis=1)
    inter = (a & b).sum(axis=1)
    return float(np.where(union > 0, inter / np.maximum(union, 1), 1.0).mean())


def measures(kind: OutputKind, ref: np.ndarray, out: np.ndarray, *, top_k: int,
             threshold: float | None = None) -> dict[str, float]:
    """Every measure of one output: the generic ones (absolute and relative error, cosine, SNR)
    and those of its kind (``top1_agreement``/``top{k}_agreement`` for class scores — top-k only
    when there are more than k classes —, ``iou`` and ``mask_threshold`` for masks).
    ``threshold``: the mask threshold (default :func:`mask_threshold`)."""
    diff = np.abs(_rows(ref) - _rows(out))
    result = {
        "max_abs_error": float(diff.max()) if diff.size else 0.0,
        "mean_abs_error": float(diff.mean()) if diff.size else 0.0,
        "relative_mae": relative_mae(ref, out),
        "cosine_similarity": cosine_similarity(ref, out),
        "snr_db": snr_db(ref, out),
    }
    broken = int(np.count_nonzero(~np.isfinite(out) & np.isfinite(ref)))
    if broken:  # inf/nan where the original is finite: an overflow in the compressed model
        result["non_finite"] = float(broken)
    if kind is OutputKind.CLASS_SCORES:
        result["top1_agreement"] = top_k_agreement(ref, out, 1)
        if ref.shape[-1] > top_k:
            result[f"top{top_k}_agreement"] = top_k_agreement(ref, out, top_k)
    if kind is OutputKind.MASK:
        cut = mask_threshold(ref) if threshold is None else threshold
        result["mask_threshold"] = cut
        result["iou"] = iou(ref, out, cut)
    return result


def flat_top1_agreement(ref: np.ndarray, out: np.ndarray) -> float:
    """Agreement of the argmax of each flattened sample (the report's legacy ``top1_agreement``
    of the first output; meaningful for class scores only)."""
    return float((_rows(ref).argmax(axis=1) == _rows(out).argmax(axis=1)).mean())


def accuracy(scores: np.ndarray, labels: np.ndarray) -> float:
    """Fraction of samples whose top-1 class (``[N, C]`` scores) is the label."""
    return float((_rows(scores).argmax(axis=1) == np.asarray(labels).reshape(-1)).mean())
