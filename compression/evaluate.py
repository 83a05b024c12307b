"""Measure a compressed model against its original: accuracy, fidelity, latency, and the gate."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from edgefleet.compression.config import GateConfig
from edgefleet.compression.inference import Session, latency_ms, predict
from edgefleet.compression.inputs import Inputs
from edgefleet.compression.report import AccuracyReport, FidelityReport, GateResult, LatencyReport
from edgefleet.protocol.vocabulary import Runtime


@dataclass(frozen=True)
class Reference:
    """The original model's outputs on the evaluation set, computed once."""

    model: bytes
    runtime: Runtime
    outputs: np.ndarray


def reference(model: bytes, runtime: Runtime, eval_x: Inputs, batch_size: int) -> Reference:
    return Reference(model, runtime, predict(Session(runtime, model), eval_x, batch_size))


def fidelity(original: np.ndarray, compressed: np.ndarray) -> FidelityReport:
    a = original.reshape(len(original), -1).astype(np.float64)
    b = compressed.reshape(len(compressed), -1).astype(np.float64)
    diff = np.abs(a - b)
    norms = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    cosine = np.where(norms > 0, (a * b).sum(axis=1) / np.maximum(norms, 1e-30), 1.0)
    return FidelityReport(
        samples=len(a),
        top1_agreement=float((a.argmax(axis=1) == b.argmax(axis=1)).mean()),
        max_abs_error=float(diff.max()),
        mean_abs_error=float(diff.mean()),
        cosine_similarity=float(cosine.mean()),
    )


def accuracy(original: np.ndarray, compressed: np.ndarray, labels: np.ndarray) -> AccuracyReport:
    labels = np.asarray(labels).reshape(-1)
    return AccuracyReport(
        samples=len(labels),
        original=float((original.reshape(len(original), -1).argmax(axis=1) == labels).mean()),
        compressed=float((compressed.reshape(len(compressed), -1).argmax(axis=1) == labels).mean()),
    )


def gate(config: GateConfig, acc: AccuracyReport | None, fid: FidelityReport) -> GateResult:
    """Apply the gate: accuracy drop when labelled, else top-1 agreement (+ optional mean error)."""
    if acc is not None:
        criterion, value, threshold = "accuracy_drop_points", acc.drop_points, config.max_accuracy_drop
        passed = value <= threshold + 1e-9
        detail = f"accuracy drop {value:+.2f} pt (max {threshold:.2f})"
    else:
        criterion, value, threshold = "top1_agreement", fid.top1_agreement, config.min_top1_agreement
        passed = value >= threshold - 1e-12
        detail = f"top-1 agreement {value:.2%} (min {threshold:.2%})"
    if config.max_mean_abs_error is not None:
        ok = fid.mean_abs_error <= config.max_mean_abs_error
        detail += f"; mean |error| {fid.mean_abs_error:.2e} (max {config.max_mean_abs_error:.2e})"
        if passed and not ok:
            criterion, value, threshold = ("mean_abs_error", fid.mean_abs_error,
                                           config.max_mean_abs_error)
        passed = passed and ok
    if not config.enabled:
        return GateResult(enabled=False, passed=True, criterion=criterion, value=value,
                          threshold=threshold, detail=f"disabled; {detail}")
    return GateResult(enabled=True, passed=passed, criterion=criterion, value=value,
                      threshold=threshold, detail=detail)


@dataclass(frozen=True)
class Measurement:
    accuracy: AccuracyReport | None
    fidelity: FidelityReport
    gate: GateResult


def measure(ref: Reference, model: bytes, runtime: Runtime, eval_x: Inputs,
            eval_y: np.ndarray | None, config: GateConfig, batch_size: int) -> Measurement:
    outputs = predict(Session(runtime, model), eval_x, batch_size)
    fid = fidelity(ref.outputs, outputs)
    acc = accuracy(ref.outputs, outputs, eval_y) if eval_y is not None else None
    return Measurement(acc, fid, gate(config, acc, fid))


def latency(ref: Reference, model: bytes, runtime: Runtime, sample: Inputs,
            runs: int) -> LatencyReport:
    """Interleave the two models' timing runs in rounds so machine noise hits both alike."""
    original, compressed = Session(ref.runtime, ref.model), Session(runtime, model)
    rounds = 5
    per_round = max(runs // rounds, 1)
    o50: list[float] = []
    o95: list[float] = []
    c50: list[float] = []
    c95: list[float] = []
    for _ in range(rounds):
        p50, p95 = latency_ms(original, sample, per_round)
        o50.append(p50)
        o95.append(p95)
        p50, p95 = latency_ms(compressed, sample, per_round)
        c50.append(p50)
        c95.append(p95)
    return LatencyReport(runs=per_round * rounds,
                         original_p50_ms=float(np.median(o50)), original_p95_ms=float(np.median(o95)),
                         compressed_p50_ms=float(np.median(c50)), compressed_p95_ms=float(np.median(c95)))
