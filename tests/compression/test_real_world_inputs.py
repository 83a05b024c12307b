"""Real-world export quirks: Constant weights, several outputs, control flow, dynamic batch."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgefleet.compression import CompressionConfig, GateConfig, Mode, compress

RNG = np.random.default_rng(3)


def _constant(name: str, array: np.ndarray) -> onnx.NodeProto:
    return helper.make_node("Constant", [], [name], value=numpy_helper.from_array(array, name))


def _mlp_with_constants(extra_output: bool = False, control_flow: bool = False) -> bytes:
    w1 = RNG.standard_normal((32, 64)).astype(np.float32) * 0.3
    w2 = RNG.standard_normal((64, 10)).astype(np.float32) * 0.3
    nodes = [_constant("w1", w1), _constant("w2", w2),
             helper.make_node("MatMul", ["x", "w1"], ["h"]),  # unnamed nodes, as exported
             helper.make_node("Relu", ["h"], ["a"]),
             helper.make_node("MatMul", ["a", "w2"], ["logits"])]
    outputs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 10])]
    if control_flow:
        then = helper.make_graph([helper.make_node("Identity", ["logits"], ["t"])], "then", [],
                                 [helper.make_tensor_value_info("t", TensorProto.FLOAT, None)])
        other = helper.make_graph([helper.make_node("Neg", ["logits"], ["e"])], "else", [],
                                  [helper.make_tensor_value_info("e", TensorProto.FLOAT, None)])
        nodes += [_constant("flag", np.array(True)),
                  helper.make_node("If", ["flag"], ["chosen"], then_branch=then, else_branch=other),
                  helper.make_node("Softmax", ["chosen"], ["y"], axis=-1)]
    else:
        nodes.append(helper.make_node("Softmax", ["logits"], ["y"], axis=-1))
    if extra_output:
        outputs.append(helper.make_tensor_value_info("a", TensorProto.FLOAT, ["batch", 64]))
    graph = helper.make_graph(nodes, "exported",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 32])],
                              outputs)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()


X = RNG.random((200, 32), dtype=np.float32)


@pytest.mark.parametrize("mode", [Mode.DYNAMIC_INT8, Mode.STATIC_INT8, Mode.FP16])
def test_constant_weights_and_two_outputs(run_model, mode):
    model = _mlp_with_constants(extra_output=True)
    result = compress(model, "onnx", CompressionConfig(mode=mode, latency_runs=0),
                      calibration=X, eval_x=X)
    assert result.report.gate.passed
    assert result.report.size.ratio > 1.8  # a 2.7k-weight model: graph overhead weighs in
    assert run_model("onnx", result.model, X[:7]).shape == (7, 10)


def test_constant_weights_export_to_tflite(run_model):
    result = compress(_mlp_with_constants(), "tflite",
                      CompressionConfig(mode=Mode.DYNAMIC_INT8, latency_runs=0), eval_x=X)
    assert result.report.gate.passed
    assert run_model("tflite", result.model, X[:3]).shape == (3, 10)


@pytest.mark.parametrize("runtime", ["onnx", "tflite"])
def test_control_flow_quantizes(run_model, runtime):
    """An If on a constant flag: ONNX keeps it, the TFLite export keeps the branch it takes."""
    model = _mlp_with_constants(control_flow=True)
    # random weights give near-ties; at 0.99 the fallback kept both MatMuls in float (no gain)
    result = compress(model, runtime, CompressionConfig(mode=Mode.DYNAMIC_INT8, latency_runs=0,
                                                        gate=GateConfig(min_top1_agreement=0.95)),
                      eval_x=X)
    assert result.report.gate.passed and result.report.weights_quantized == 2
    assert run_model(runtime, result.model, X[:2]).shape == (2, 10)


def _two_inputs() -> bytes:
    w = RNG.standard_normal((24, 10)).astype(np.float32) * 0.5
    graph = helper.make_graph(
        [helper.make_node("Concat", ["a", "b"], ["ab"], name="cat", axis=1),
         helper.make_node("MatMul", ["ab", "w"], ["logits"], name="fc"),
         helper.make_node("Softmax", ["logits"], ["y"], name="softmax", axis=-1)],
        "two_inputs",
        [helper.make_tensor_value_info("a", TensorProto.FLOAT, ["N", 16]),
         helper.make_tensor_value_info("b", TensorProto.FLOAT, ["N", 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 10])],
        initializer=[numpy_helper.from_array(w, "w")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()


@pytest.mark.parametrize(("runtime", "mode"), [("onnx", Mode.DYNAMIC_INT8),
                                               ("onnx", Mode.STATIC_INT8),
                                               ("tflite", Mode.STATIC_INT8),
                                               ("tflite", Mode.FP16)])
def test_several_inputs_are_fed_by_name(runtime, mode):
    inputs = {"a": RNG.random((120, 16), dtype=np.float32),
              "b": RNG.random((120, 8), dtype=np.float32)}
    # 240 weights: QDQ nodes outweigh them (static ONNX is larger, which is refused by default)
    result = compress(_two_inputs(), runtime, CompressionConfig(mode=mode, latency_runs=5, allow_no_gain=True),
                      calibration=inputs, eval_x=inputs)
    assert result.report.gate.passed
    assert result.report.fidelity.samples == 120
    assert result.report.latency is not None


def test_ragged_inputs_are_a_config_error():
    from edgefleet.protocol.errors import ConfigError

    with pytest.raises(ConfigError, match="sample counts"):
        compress(_two_inputs(), "onnx", CompressionConfig(),
                 eval_x={"a": np.zeros((3, 16)), "b": np.zeros((4, 8))})
