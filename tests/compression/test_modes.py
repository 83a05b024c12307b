"""Every mode: the output loads and runs in its target runtime and meets its gate."""

from __future__ import annotations

import numpy as np
import pytest

from edgefleet.compression import CalibrationConfig, CalibrationMethod, CompressionConfig, Mode, compress
from edgefleet.compression.tflite_graph import is_tflite

CASES = [
    ("mlp", "onnx", Mode.DYNAMIC_INT8),
    ("mlp", "onnx", Mode.STATIC_INT8),
    ("mlp", "onnx", Mode.FP16),
    ("cnn", "onnx", Mode.DYNAMIC_INT8),
    ("cnn", "onnx", Mode.STATIC_INT8),
    ("cnn", "onnx", Mode.FP16),
    ("mlp", "tflite", Mode.DYNAMIC_INT8),
    ("mlp", "tflite", Mode.WEIGHT_ONLY_INT8),
    ("mlp", "tflite", Mode.STATIC_INT8),
    ("mlp", "tflite", Mode.FP16),
    ("cnn", "tflite", Mode.DYNAMIC_INT8),
    ("cnn", "tflite", Mode.WEIGHT_ONLY_INT8),
    ("cnn", "tflite", Mode.STATIC_INT8),
    ("cnn", "tflite", Mode.FP16),
]

MIN_RATIO = {Mode.DYNAMIC_INT8: 3.3, Mode.STATIC_INT8: 3.3, Mode.WEIGHT_ONLY_INT8: 3.3,
             Mode.FP16: 1.9}


@pytest.mark.parametrize(("name", "runtime", "mode"), CASES, ids=lambda v: str(v))
def test_mode_runs_in_target_runtime_and_meets_gate(samples, run_model, name, runtime, mode):
    model, calibration, eval_x, eval_y = samples[name]
    result = compress(model, runtime, CompressionConfig(mode=mode, latency_runs=10),
                      calibration=calibration, eval_x=eval_x, eval_y=eval_y)
    report = result.report
    assert is_tflite(result.model) == (runtime == "tflite")
    out = run_model(runtime, result.model, eval_x)
    assert out.shape == (len(eval_x), 10)
    assert report.gate.enabled and report.gate.passed
    assert report.accuracy is not None and report.accuracy.drop_points <= 1.0
    # the report evaluates one sample per call; dynamic int8 may differ slightly on a batch
    assert (out.argmax(1) == eval_y).mean() == pytest.approx(report.accuracy.compressed, abs=0.02)
    assert report.size.ratio >= MIN_RATIO[mode]
    assert report.latency is not None and report.latency.compressed_p50_ms > 0
    assert report.float_operators == []


@pytest.mark.parametrize("method", list(CalibrationMethod))
def test_static_onnx_calibration_methods(samples, method):
    model, calibration, eval_x, eval_y = samples["mlp"]
    config = CompressionConfig(mode=Mode.STATIC_INT8, latency_runs=0,
                               calibration=CalibrationConfig(method=method, batch_size=16))
    result = compress(model, "onnx", config, calibration=calibration, eval_x=eval_x, eval_y=eval_y)
    assert result.report.gate.passed
    assert result.report.calibration_method is method


def test_unlabelled_gate_uses_top1_agreement(samples):
    model, calibration, eval_x, _ = samples["cnn"]
    result = compress(model, "onnx", CompressionConfig(mode=Mode.DYNAMIC_INT8, latency_runs=0),
                      eval_x=eval_x)
    report = result.report
    assert report.accuracy is None
    assert report.gate.criterion == "top1_agreement"
    assert report.fidelity.top1_agreement >= 0.99
    assert 0.99 < report.fidelity.cosine_similarity <= 1.0 + 1e-9
    assert report.fidelity.max_abs_error >= report.fidelity.mean_abs_error > 0


def test_tflite_source_model_is_quantized_directly(mlp_tflite, samples, run_model):
    _, calibration, eval_x, eval_y = samples["mlp"]
    result = compress(mlp_tflite, "tflite", CompressionConfig(mode=Mode.STATIC_INT8, latency_runs=0),
                      calibration=calibration, eval_x=eval_x, eval_y=eval_y)
    assert result.report.source_format == "tflite"
    assert result.report.gate.passed
    out = run_model("tflite", result.model, eval_x[:5])
    assert out.dtype == np.float32  # full int8 keeps float32 inputs and outputs


def test_report_serialises_and_renders(samples):
    model, calibration, eval_x, eval_y = samples["mlp"]
    report = compress(model, "onnx", CompressionConfig(mode=Mode.FP16, latency_runs=5),
                      eval_x=eval_x, eval_y=eval_y).report
    data = report.model_dump(mode="json")
    assert data["mode"] == "fp16" and data["size"]["ratio"] > 1.9
    assert data["gate"]["passed"] is True
    table = report.to_table()
    assert "fp16" in table and "PASS" in table and "latency" in table
