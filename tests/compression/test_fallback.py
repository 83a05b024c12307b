"""Automatic fallback: the most harmful operators stay in float until the gate holds."""

from __future__ import annotations

import pytest

from edgefleet.compression import CompressionConfig, FallbackConfig, GateConfig, Mode, compress
from edgefleet.protocol.errors import AccuracyGateError


def _mean_error(model, runtime, mode, calibration, eval_x):
    config = CompressionConfig(mode=mode, latency_runs=0, gate=GateConfig(enabled=False))
    return compress(model, runtime, config, calibration=calibration,
                    eval_x=eval_x).report.fidelity.mean_abs_error


@pytest.mark.parametrize(("runtime", "mode"), [("onnx", Mode.STATIC_INT8),
                                               ("tflite", Mode.STATIC_INT8),
                                               ("onnx", Mode.DYNAMIC_INT8),
                                               ("onnx", Mode.FP16),
                                               ("tflite", Mode.FP16)])
def test_fallback_keeps_harmful_operators_in_float_until_gate_holds(samples, runtime, mode):
    model, calibration, eval_x, _ = samples["cnn"]
    full = _mean_error(model, runtime, mode, calibration, eval_x)
    gate = GateConfig(min_top1_agreement=0.0, max_mean_abs_error=full * 0.7)
    result = compress(model, runtime, CompressionConfig(mode=mode, gate=gate, latency_runs=0),
                      calibration=calibration, eval_x=eval_x)
    report = result.report
    assert report.gate.passed
    assert len(report.float_operators) >= 1
    assert report.fidelity.mean_abs_error <= full * 0.7
    assert len(set(report.float_operators)) == len(report.float_operators)


def test_gate_failure_raises_with_report(samples):
    model, calibration, eval_x, eval_y = samples["cnn"]
    gate = GateConfig(min_top1_agreement=0.0, max_mean_abs_error=0.0)
    config = CompressionConfig(mode=Mode.DYNAMIC_INT8, gate=gate, latency_runs=0,
                               fallback=FallbackConfig(max_float_operators=1))
    with pytest.raises(AccuracyGateError) as info:
        compress(model, "onnx", config, calibration=calibration, eval_x=eval_x, eval_y=eval_y)
    error = info.value
    assert error.code == "accuracy_gate_failed"
    assert error.report["gate"]["passed"] is False
    assert len(error.report["float_operators"]) == 1
    assert "mean |error|" in str(error)


def test_fallback_disabled_fails_immediately(samples):
    model, calibration, eval_x, _ = samples["mlp"]
    gate = GateConfig(max_mean_abs_error=0.0)
    config = CompressionConfig(mode=Mode.DYNAMIC_INT8, gate=gate, latency_runs=0,
                               fallback=FallbackConfig(enabled=False))
    with pytest.raises(AccuracyGateError) as info:
        compress(model, "onnx", config, eval_x=eval_x)
    assert info.value.report["float_operators"] == []


def test_disabled_gate_reports_without_refusing(samples):
    model, _, eval_x, eval_y = samples["mlp"]
    config = CompressionConfig(mode=Mode.DYNAMIC_INT8, latency_runs=0,
                               gate=GateConfig(enabled=False, max_mean_abs_error=0.0))
    report = compress(model, "onnx", config, eval_x=eval_x, eval_y=eval_y).report
    assert report.gate.passed and not report.gate.enabled


def test_fallback_is_skipped_when_the_loss_is_not_from_quantization(samples):
    from edgefleet.compression import PruningConfig, PruningKind

    model, calibration, eval_x, eval_y = samples["mlp"]
    config = CompressionConfig(mode=Mode.DYNAMIC_INT8, latency_runs=0,
                               pruning=PruningConfig(kind=PruningKind.STRUCTURED, sparsity=0.97))  # far past the gate
    with pytest.raises(AccuracyGateError) as info:
        compress(model, "onnx", config, calibration=calibration, eval_x=eval_x, eval_y=eval_y)
    assert info.value.report["float_operators"] == []
    assert info.value.report["size"]["ratio"] > 8  # the numbers of the refused model itself


def test_fp16_with_every_node_in_float_is_exact(samples, run_model):
    from edgefleet.compression.onnx_graph import load_onnx, normalise
    from edgefleet.compression.quantize_onnx import to_fp16

    model, _, eval_x, _ = samples["cnn"]
    graph = normalise(load_onnx(model))
    converted = to_fp16(graph, exclude=[n.name for n in graph.graph.node])
    assert (run_model("onnx", converted, eval_x) == run_model("onnx", model, eval_x)).all()
