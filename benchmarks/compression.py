"""Compression benchmark: every sample model and mode side by side, one run, one table.

    python benchmarks/compression.py [--latency-runs 200]

For each digits sample model (MLP, CNN) and mode: model-file and bundle size ratio against the
fp32 model, test accuracy and drop, top-1 agreement with fp32, latency ratio (p50 of
single-sample inference against fp32 in the same runtime, interleaved rounds, this CPU, one
thread), and the accuracy gate (default: <= 1.0 point drop). The baseline row is
``onnxruntime.quantization.quantize_dynamic`` with default settings, measured the same way.
Ratios and medians only: the machines are shared and noisy.
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgefleet.compression import (
    CalibrationConfig,
    CalibrationMethod,
    CompressionConfig,
    Mode,
    PruningConfig,
    PruningKind,
    compress,
    stored_size,
)
from edgefleet.compression.config import GateConfig
from edgefleet.compression.evaluate import latency, measure, reference
from edgefleet.compression.samples import load_digits_split, train_cnn, train_mlp
from edgefleet.protocol.errors import AccuracyGateError


@dataclass
class Row:
    model: str
    runtime: str
    variant: str
    file_ratio: float
    bundle_ratio: float
    accuracy: float
    drop: float
    agreement: float
    latency_ratio: float
    gate: str


VARIANTS: list[tuple[str, CompressionConfig]] = [
    ("dynamic int8", CompressionConfig(mode=Mode.DYNAMIC_INT8)),
    ("static int8 minmax", CompressionConfig(mode=Mode.STATIC_INT8)),
    ("static int8 minmax per-tensor", CompressionConfig(mode=Mode.STATIC_INT8, per_channel=False)),
    ("static int8 entropy", CompressionConfig(
        mode=Mode.STATIC_INT8, calibration=CalibrationConfig(method=CalibrationMethod.ENTROPY))),
    ("static int8 percentile", CompressionConfig(
        mode=Mode.STATIC_INT8, calibration=CalibrationConfig(method=CalibrationMethod.PERCENTILE))),
    ("weight-only int8", CompressionConfig(mode=Mode.WEIGHT_ONLY_INT8)),
    ("fp16", CompressionConfig(mode=Mode.FP16)),
    ("prune 75% + dynamic int8", CompressionConfig(
        mode=Mode.DYNAMIC_INT8, pruning=PruningConfig(sparsity=0.75))),
    ("prune 75% + static int8", CompressionConfig(
        mode=Mode.STATIC_INT8, pruning=PruningConfig(sparsity=0.75))),
    ("structured 50%", CompressionConfig(
        mode=Mode.NONE, pruning=PruningConfig(kind=PruningKind.STRUCTURED, sparsity=0.5))),
    ("structured 75%", CompressionConfig(
        mode=Mode.NONE, pruning=PruningConfig(kind=PruningKind.STRUCTURED, sparsity=0.75))),
    ("structured 50% + dynamic int8", CompressionConfig(
        mode=Mode.DYNAMIC_INT8, pruning=PruningConfig(kind=PruningKind.STRUCTURED,
                                                      sparsity=0.5))),
]

ONNX_ONLY = {"static int8 entropy", "static int8 percentile"}
TFLITE_ONLY = {"weight-only int8"}


def _row(model: str, runtime: str, variant: str, report: dict) -> Row:
    acc = report["accuracy"]
    return Row(model, runtime, variant, report["size"]["ratio"], report["size"]["stored_ratio"],
               acc["compressed"] * 100, acc["drop_points"], report["fidelity"]["top1_agreement"] * 100,
               report["latency"]["ratio"] if report["latency"] else float("nan"),
               ("PASS" if report["gate"]["passed"] else "FAIL")
               + (f" ({len(report['float_operators'])} in float)" if report["float_operators"]
                  else ""))


def _baseline(name: str, model: bytes, eval_x: np.ndarray, eval_y: np.ndarray,
              runs: int) -> Row:
    """onnxruntime.quantization.quantize_dynamic with its default settings."""
    import onnx
    from onnxruntime.quantization import quantize_dynamic

    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "baseline.onnx"
        quantize_dynamic(onnx.load_model_from_string(model), out)
        quantized = out.read_bytes()
    ref = reference(model, "onnx", eval_x, 1)
    m = measure(ref, quantized, "onnx", eval_x, eval_y, GateConfig(), 1)
    lat = latency(ref, quantized, "onnx", eval_x, runs)
    return Row(name, "onnx", "baseline: ORT quantize_dynamic (defaults)", len(model) / len(quantized),
               stored_size(model) / stored_size(quantized), m.accuracy.compressed * 100,
               m.accuracy.drop_points, m.fidelity.top1_agreement * 100, lat.ratio,
               "PASS" if m.gate.passed else "FAIL")


def run(latency_runs: int) -> list[Row]:
    data = load_digits_split()
    models = {
        "MLP": (train_mlp(data), data.x_train, data.x_test),
        "CNN": (train_cnn(data), data.images(data.x_train), data.images(data.x_test)),
    }
    rows = []
    for name, (model, calibration, eval_x) in models.items():
        rows.append(_baseline(name, model, eval_x, data.y_test, latency_runs))
        for runtime in ("onnx", "tflite"):
            for variant, config in VARIANTS:
                if (runtime == "onnx" and variant in TFLITE_ONLY) or (
                        runtime == "tflite" and variant in ONNX_ONLY):
                    continue
                config = config.model_copy(update={"latency_runs": latency_runs})
                try:
                    report = compress(model, runtime, config, calibration=calibration,
                                      eval_x=eval_x, eval_y=data.y_test).report
                    report_dict = report.model_dump(mode="json")
                except AccuracyGateError as exc:
                    report_dict = exc.report
                rows.append(_row(name, runtime, variant, report_dict))
                print(f"  {name} {runtime} {variant}: done", file=sys.stderr)
    return rows


def table(rows: list[Row]) -> str:
    head = ("| model | runtime | variant | file × smaller | bundle × smaller | accuracy % "
            "| drop pt | top-1 agree % | latency × fp32 | gate |")
    lines = [head, "|" + "---|" * 10]
    for r in rows:
        lines.append(f"| {r.model} | {r.runtime} | {r.variant} | {r.file_ratio:.2f} | "
                     f"{r.bundle_ratio:.2f} | {r.accuracy:.2f} | {r.drop:+.2f} | "
                     f"{r.agreement:.2f} | {r.latency_ratio:.2f} | {r.gate} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--latency-runs", type=int, default=200)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    start = time.perf_counter()
    rows = run(args.latency_runs)
    print(table(rows))
    print(f"\n{len(rows)} rows in {time.perf_counter() - start:.0f} s; fp32 accuracy: "
          + ", ".join(f"{r.model} {r.accuracy - (-r.drop):.2f}%" for r in rows
                      if r.variant.startswith("baseline")))


if __name__ == "__main__":
    main()
