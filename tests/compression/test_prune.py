"""Pruning: unstructured sparsity really shrinks the bundle; structured pruning shrinks shapes."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from edgefleet.compression import (
    CompressionConfig,
    GateConfig,
    Mode,
    PruningConfig,
    PruningKind,
    PruningScope,
    compress,
    stored_size,
)
from edgefleet.compression.onnx_graph import load_onnx, normalise
from edgefleet.compression.prune import prune_structured, prune_unstructured


def _weights(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    return {t.name: numpy_helper.to_array(t) for t in model.graph.initializer
            if t.name.endswith("weight")}


@pytest.mark.parametrize("scope", list(PruningScope))
def test_unstructured_reaches_target_sparsity(mlp, scope):
    result = prune_unstructured(normalise(load_onnx(mlp)), 0.6, scope)
    assert result.sparsity == pytest.approx(0.6, abs=0.01)
    weights = _weights(result.model).values()
    zeros = sum(int((w == 0).sum()) for w in weights) / sum(w.size for w in weights)
    assert zeros == pytest.approx(0.6, abs=0.01)
    per_layer = [float((w == 0).mean()) for w in _weights(result.model).values()]
    if scope is PruningScope.PER_LAYER:
        assert all(s == pytest.approx(0.6, abs=0.01) for s in per_layer)
    else:
        assert max(per_layer) - min(per_layer) > 0.01  # one threshold, uneven layers


def test_unstructured_zeros_shrink_stored_bytes(mlp):
    pruned = prune_unstructured(normalise(load_onnx(mlp)), 0.75).model.SerializeToString()
    assert len(pruned) == pytest.approx(len(mlp), rel=0.01)
    assert stored_size(pruned) < 0.5 * stored_size(mlp)


def test_stored_size_deflates_only_when_it_saves_ten_percent():
    assert stored_size(b"\0" * 10_000) < 100
    random = np.random.default_rng(0).bytes(10_000)
    assert stored_size(random) == 10_000


def test_pruning_75_plus_int8_is_eight_times_smaller_in_the_bundle(samples, run_model):
    model, calibration, eval_x, eval_y = samples["mlp"]
    config = CompressionConfig(mode=Mode.DYNAMIC_INT8, latency_runs=0,
                               pruning=PruningConfig(sparsity=0.75))
    result = compress(model, "onnx", config, calibration=calibration, eval_x=eval_x, eval_y=eval_y)
    assert result.report.size.stored_ratio >= 8.0
    assert result.report.sparsity == pytest.approx(0.75, abs=0.01)
    assert result.report.gate.passed
    assert run_model("onnx", result.model, eval_x[:3]).shape == (3, 10)


@pytest.mark.parametrize("name", ["mlp", "cnn"])
def test_structured_removes_units_and_rewrites_shapes(samples, run_model, name):
    model, calibration, eval_x, _ = samples[name]
    result = prune_structured(normalise(load_onnx(model)), 0.5, calibration)
    before, after = _weights(load_onnx(model)), _weights(result.model)
    assert sum(w.size for w in after.values()) < 0.6 * sum(w.size for w in before.values())
    assert result.sparsity == pytest.approx(0.5, abs=0.02)
    pruned = result.model.SerializeToString()
    assert len(pruned) < 0.6 * len(model)
    out = run_model("onnx", pruned, eval_x)
    assert out.shape == (len(eval_x), 10)
    np.testing.assert_allclose(out.sum(axis=1), 1.0, atol=1e-5)


@pytest.mark.parametrize(("name", "runtime"), [("mlp", "onnx"), ("mlp", "tflite"),
                                               ("cnn", "onnx"), ("cnn", "tflite")])
def test_structured_pruning_through_compress_meets_gate(samples, run_model, name, runtime):
    model, calibration, eval_x, eval_y = samples[name]
    config = CompressionConfig(mode=Mode.NONE, latency_runs=20,
                               pruning=PruningConfig(kind=PruningKind.STRUCTURED, sparsity=0.5))
    result = compress(model, runtime, config, calibration=calibration, eval_x=eval_x, eval_y=eval_y)
    assert result.report.gate.passed
    assert result.report.size.ratio > 2.5
    assert result.report.latency.ratio > 0
    assert run_model(runtime, result.model, eval_x[:4]).shape == (4, 10)


def test_structured_pruning_without_calibration_uses_weight_norms(mlp, cnn):
    assert prune_structured(normalise(load_onnx(mlp)), 0.5).pruned == ["fc0", "fc1"]
    assert prune_structured(normalise(load_onnx(cnn)), 0.5).pruned == ["conv1", "conv2", "fc1"]


def test_refit_beats_plain_removal(samples):
    model, calibration, eval_x, eval_y = samples["mlp"]
    graph = normalise(load_onnx(model))
    from edgefleet.compression.evaluate import measure, reference

    ref = reference(model, "onnx", eval_x, 256)
    errors = []
    for data in (None, calibration):
        pruned = prune_structured(graph, 0.5, data).model.SerializeToString()
        errors.append(measure(ref, pruned, "onnx", eval_x, eval_y, GateConfig(), 256)
                      .fidelity.mean_abs_error)
    assert errors[1] < errors[0] / 3


def test_pruned_model_is_refused_when_it_loses_too_much(samples):
    model, calibration, eval_x, eval_y = samples["mlp"]
    config = CompressionConfig(mode=Mode.NONE, latency_runs=0,
                               pruning=PruningConfig(kind=PruningKind.STRUCTURED, sparsity=0.9),
                               gate=GateConfig(max_accuracy_drop=1.0))
    from edgefleet.protocol.errors import AccuracyGateError

    with pytest.raises(AccuracyGateError):
        compress(model, "onnx", config, calibration=calibration, eval_x=eval_x, eval_y=eval_y)


def _conv_add_conv(bias_shape: tuple[int, ...]) -> onnx.ModelProto:
    from onnx import TensorProto, helper

    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.standard_normal((8, 3, 3, 3)).astype(np.float32), "w1"),
             numpy_helper.from_array(rng.standard_normal(bias_shape).astype(np.float32), "b"),
             numpy_helper.from_array(rng.standard_normal((4, 8, 1, 1)).astype(np.float32), "w2")]
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
         helper.make_node("Add", ["c1", "b"], ["a"], name="add"),
         helper.make_node("Relu", ["a"], ["r"], name="relu"),
         helper.make_node("Conv", ["r", "w2"], ["y"], name="conv2")],
        "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4, 8, 8])], initializer=inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_structured_conv_chain_slices_per_channel_constants(run_model):
    x = np.random.default_rng(1).random((5, 3, 8, 8), dtype=np.float32)
    result = prune_structured(_conv_add_conv((8, 1, 1)), 0.5, x)
    assert result.pruned == ["conv1"]
    shapes = {t.name: list(t.dims) for t in result.model.graph.initializer}
    assert shapes["w1"] == [4, 3, 3, 3] and shapes["b"] == [4, 1, 1] and shapes["w2"] == [4, 4, 1, 1]
    assert run_model("onnx", result.model.SerializeToString(), x).shape == (5, 4, 8, 8)


def test_structured_chain_stops_at_a_constant_that_is_not_per_channel():
    assert prune_structured(_conv_add_conv((8, 8, 8)), 0.5).pruned == []
