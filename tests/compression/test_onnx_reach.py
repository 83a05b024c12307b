"""Reach every ONNX weight: old opsets upgraded (and reported), Constant weights lifted also
out of If/Loop subgraphs, so dynamic int8 quantizes them (smaller, not bigger)."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgefleet.compression import CompressionConfig, GateConfig, Mode, compress
from edgefleet.compression.onnx_graph import count_quantized_weights, load_onnx, normalise
from edgefleet.protocol.errors import UnsupportedModelError

RNG = np.random.default_rng(11)
X = RNG.standard_normal((100, 64)).astype(np.float32)
#: Random weights give near-ties: a flip or two in 100 samples is not what these tests are about.
GATE = GateConfig(min_top1_agreement=0.95)


def _opset11() -> bytes:
    """Gemm -> Relu -> Gemm -> Softmax(axis=1) -> Squeeze(axes attribute: an input since 13)."""
    w1 = RNG.standard_normal((64, 96)).astype(np.float32) * 0.2
    w2 = RNG.standard_normal((96, 10)).astype(np.float32) * 0.5
    graph = helper.make_graph(
        [helper.make_node("Gemm", ["x", "w1"], ["h"]), helper.make_node("Relu", ["h"], ["a"]),
         helper.make_node("Gemm", ["a", "w2"], ["logits"]),
         helper.make_node("Softmax", ["logits"], ["p"], axis=1),
         helper.make_node("Unsqueeze", ["p"], ["p3"], axes=[2]),
         helper.make_node("Squeeze", ["p3"], ["y"], axes=[2])],
        "old", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 64])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 10])],
        initializer=[numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(w2, "w2")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 11)])
    model.ir_version = 6
    onnx.checker.check_model(model, full_check=True)
    return model.SerializeToString()


def _constant(name: str, array: np.ndarray) -> onnx.NodeProto:
    return helper.make_node("Constant", [], [name], value=numpy_helper.from_array(array, name))


def _branch(tag: str, weight_name: str) -> onnx.GraphProto:
    w = RNG.standard_normal((64, 128)).astype(np.float32) * 0.2
    return helper.make_graph(
        [_constant(weight_name, w), helper.make_node("MatMul", ["x", weight_name], [f"o_{tag}"])], tag, [],
        [helper.make_tensor_value_info(f"o_{tag}", TensorProto.FLOAT, None)])


def _weights_in_if(same_names: bool = False) -> bytes:
    """The MatMul weights live in Constant nodes inside the If's branches (a flag input picks
    one); ``same_names``: both branches name their weight alike (only valid inside each)."""
    then = _branch("then", "w" if same_names else "w_then")
    other = _branch("else", "w" if same_names else "w_else")
    w_out = RNG.standard_normal((128, 10)).astype(np.float32) * 0.3
    graph = helper.make_graph(
        [helper.make_node("If", ["flag"], ["h"], then_branch=then, else_branch=other),
         helper.make_node("Relu", ["h"], ["a"]),
         helper.make_node("MatMul", ["a", "w_out"], ["logits"]),
         helper.make_node("Softmax", ["logits"], ["y"], axis=-1)],
        "branches",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 64]),
         helper.make_tensor_value_info("flag", TensorProto.BOOL, [])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 10])],
        initializer=[numpy_helper.from_array(w_out, "w_out")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    return model.SerializeToString()


def _run(model: bytes, feed: dict[str, np.ndarray]) -> np.ndarray:
    return ort.InferenceSession(model, providers=["CPUExecutionProvider"]).run(None, feed)[0]


def test_opset_11_is_upgraded_and_reported():
    conversions: list[str] = []
    model = load_onnx(_opset11(), conversions)
    assert next(o.version for o in model.opset_import if o.domain == "") == 13
    assert conversions == ["opset 11 -> 13 (onnx.version_converter)"]
    result = compress(_opset11(), "onnx", CompressionConfig(latency_runs=0, gate=GATE), eval_x=X)
    assert result.report.conversions == ["opset 11 -> 13 (onnx.version_converter)"]
    assert result.report.weights_quantized == 2 and result.report.size.ratio > 3
    assert "opset 11 -> 13" in result.report.to_table()


@pytest.mark.parametrize("runtime", ["onnx", "tflite"])
def test_upgraded_model_matches_the_original(runtime, run_model):
    source = _opset11()
    result = compress(source, runtime, CompressionConfig(mode=Mode.FP16, latency_runs=0), eval_x=X)
    np.testing.assert_allclose(run_model(runtime, result.model, X[:5]), _run(source, {"x": X[:5]}), atol=2e-3)


def test_a_conversion_that_fails_names_the_operator():
    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["r"]), helper.make_node("Crop", ["r"], ["y"], border=[0, 0, 0, 0])],
        "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 4, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 1, 4, 4])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 1)])
    model.ir_version = 3
    with pytest.raises(UnsupportedModelError, match="opset 1 -> 13 conversion failed at operator Crop") as info:
        load_onnx(model.SerializeToString())
    assert info.value.where == "model.opset_import" and "re-export" in info.value.hint


@pytest.mark.parametrize("same_names", [False, True])
def test_constants_in_if_branches_become_initializers(same_names):
    source = _weights_in_if(same_names)
    model = normalise(load_onnx(source))
    branches = {a.name: a.g for a in model.graph.node[0].attribute}
    assert all(n.op_type != "Constant" for g in branches.values() for n in g.node)
    main = {t.name for t in model.graph.initializer}
    local = {t.name for g in branches.values() for t in g.initializer}
    if same_names:  # "w" twice: each branch keeps its own
        assert local == {"w"} and "w" not in main
    else:  # unique names: the main graph holds them, the branches see them from outer scope
        assert {"w_then", "w_else"} <= main and not local
    onnx.checker.check_model(model, full_check=True)
    feed = {"x": X[:4], "flag": np.array(True)}
    np.testing.assert_allclose(_run(model.SerializeToString(), feed), _run(source, feed), rtol=1e-6)


@pytest.mark.parametrize("same_names", [False, True])
def test_dynamic_int8_quantizes_weights_inside_if_and_gets_smaller(same_names):
    source = _weights_in_if(same_names)
    assert count_quantized_weights(source) == (0, 3)
    data = {"x": X, "flag": np.array(True)}
    result = compress(source, "onnx", CompressionConfig(latency_runs=0, gate=GATE), calibration=data, eval_x=data)
    assert result.report.weights_quantized == 3 and result.report.weights_total == 3
    assert result.report.size.ratio > 3  # the issue saw a *bigger* file
    assert count_quantized_weights(result.model) == (3, 3)
    for flag in (True, False):
        feed = {"x": X[:8], "flag": np.array(flag)}
        assert (_run(result.model, feed).argmax(1) == _run(source, feed).argmax(1)).mean() >= 0.75


def test_fp16_reaches_weights_inside_if():
    data = {"x": X, "flag": np.array(False)}
    result = compress(_weights_in_if(), "onnx", CompressionConfig(mode=Mode.FP16, latency_runs=0),
                      calibration=data, eval_x=data)
    assert result.report.weights_quantized == 3 and result.report.size.ratio > 1.9


def test_constants_inside_a_loop_body_are_lifted():
    w = RNG.standard_normal((8, 8)).astype(np.float32) * 0.3
    body = helper.make_graph(
        [_constant("w_body", w), helper.make_node("MatMul", ["v_in", "w_body"], ["v_out"]),
         helper.make_node("Identity", ["cond_in"], ["cond_out"])], "body",
        [helper.make_tensor_value_info("i", TensorProto.INT64, []),
         helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
         helper.make_tensor_value_info("v_in", TensorProto.FLOAT, None)],
        [helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
         helper.make_tensor_value_info("v_out", TensorProto.FLOAT, None)])
    graph = helper.make_graph(
        [helper.make_node("Loop", ["n", "", "x"], ["y"], body=body)], "loop",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 8])],
        initializer=[numpy_helper.from_array(np.array(3, np.int64), "n")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    lifted = normalise(model)
    assert "w_body" in {t.name for t in lifted.graph.initializer}
    x = RNG.standard_normal((2, 8)).astype(np.float32)
    np.testing.assert_allclose(_run(lifted.SerializeToString(), {"x": x}), x @ w @ w @ w, rtol=1e-4)
    assert count_quantized_weights(lifted.SerializeToString()) == (0, 1)
