"""Static int8 on real-model traits: an LSTM (no QDQ form: quantized dynamically inside the
static mode), a Conv bias shared under names the quantizer's own names collide with; and the
gate's line for outputs that turn inf/nan."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from edgefleet.compression import CompressionConfig, GateConfig, Mode, compress
from edgefleet.compression.config import OutputKind
from edgefleet.compression.fidelity import measures
from edgefleet.compression.onnx_graph import count_quantized_weights
from edgefleet.compression.report import GateCheck

RNG = np.random.default_rng(31)
F = TensorProto.FLOAT


def _w(*shape: int) -> np.ndarray:
    return RNG.standard_normal(shape).astype(np.float32)


def _model(nodes, inputs, output_shape, inits) -> bytes:
    graph = helper.make_graph(nodes, "static", [helper.make_tensor_value_info(n, F, s) for n, s in inputs],
                              [helper.make_tensor_value_info("y", F, output_shape)],
                              initializer=[numpy_helper.from_array(v, k) for k, v in inits.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    return model.SerializeToString()


def _conv_lstm() -> bytes:
    """x [N, 4, 8] -> Conv1d -> [T=8, N, C] -> LSTM (hidden 64: most of the weights) -> Y_h -> MatMul."""
    hidden = 64
    nodes = [helper.make_node("Conv", ["x", "cw"], ["c"], kernel_shape=[3], pads=[1, 1]),
             helper.make_node("Transpose", ["c"], ["seq"], perm=[2, 0, 1]),
             helper.make_node("LSTM", ["seq", "w", "r", "b"], ["", "h"], name="lstm", hidden_size=hidden),
             helper.make_node("Squeeze", ["h", "ax"], ["last"]),
             helper.make_node("MatMul", ["last", "out"], ["y"])]
    inits = {"cw": _w(16, 4, 3) * 0.3, "w": _w(1, 4 * hidden, 16) * 0.2, "r": _w(1, 4 * hidden, hidden) * 0.1,
             "b": _w(1, 8 * hidden) * 0.1, "ax": np.array([0], np.int64), "out": _w(hidden, 5) * 0.3}
    return _model(nodes, [("x", ["N", 4, 8])], ["N", 5], inits)


def test_static_int8_quantizes_an_lstm_dynamically():
    model = _conv_lstm()
    x = _w(24, 4, 8)
    config = CompressionConfig(mode=Mode.STATIC_INT8, latency_runs=0, gate=GateConfig(min_cosine=0.98))
    result = compress(model, "onnx", config, calibration=x[:16], eval_x=x[16:])
    ops = {n.op_type for n in onnx.load_model_from_string(result.model).graph.node}
    assert "DynamicQuantizeLSTM" in ops and "QuantizeLinear" in ops
    assert count_quantized_weights(result.model, Mode.STATIC_INT8) == (4, 4)  # conv, W, R, out
    assert any("LSTM 'lstm' quantized dynamically" in c for c in result.report.conversions)
    dynamic = compress(model, "onnx", CompressionConfig(mode=Mode.DYNAMIC_INT8, latency_runs=0,
                                                        gate=GateConfig(enabled=False)), eval_x=x[16:])
    assert result.report.size.compressed_bytes < 1.1 * dynamic.report.size.compressed_bytes  # was 2x


def test_a_shared_bias_named_like_the_quantizers_names_still_loads():
    """Three Convs share bias "b" and write "b1", "b2", "b3" (tf2onnx names values so): ONNX
    Runtime's static quantizer names the per-Conv bias copies the same way and rewired a
    DequantizeLinear of the bias into the Neg. Values are renamed before quantizing."""
    nodes = [helper.make_node("Conv", ["x", f"w{i}", "b"], [f"b{i}"], kernel_shape=[3, 3], pads=[1, 1, 1, 1])
             for i in (1, 2, 3)]
    nodes += [helper.make_node("Neg", ["b2"], ["n"]), helper.make_node("Add", ["b1", "n"], ["s"]),
              helper.make_node("Add", ["s", "b3"], ["y"])]
    model = _model(nodes, [("x", ["N", 3, 8, 8])], ["N", 4, 8, 8],
                   {**{f"w{i}": _w(4, 3, 3, 3) for i in (1, 2, 3)}, "b": _w(4)})
    x = _w(16, 3, 8, 8)
    result = compress(model, "onnx", CompressionConfig(mode=Mode.STATIC_INT8, latency_runs=0, allow_no_gain=True),
                      calibration=x[:8], eval_x=x[8:])
    assert result.report.gate.passed
    ort.InferenceSession(result.model, providers=["CPUExecutionProvider"])
    assert [o.name for o in onnx.load_model_from_string(result.model).graph.output] == ["y"]


def test_non_finite_outputs_fail_the_gate_with_their_own_line():
    ref = np.ones((2, 8), np.float32)
    out = ref.copy()
    out[0, :3] = np.nan
    found = measures(OutputKind.MAP, ref, out, top_k=5)
    assert found["non_finite"] == 3.0
    assert "non_finite" not in measures(OutputKind.MAP, ref, ref, top_k=5)
    check = GateCheck(output="y", kind=OutputKind.MAP, measure="non_finite", value=3.0, threshold=0.0,
                      bound="max", passed=False)
    assert check.text() == "y: 3 non-finite value(s) (inf/nan) where the original is finite"


def _gemm_in_if() -> bytes:
    """score = x @ w; If score > 0 (per the first sample): Gemm(x, v, transB) in the branch, as
    openWakeWord's heads verify a detection; else the score repeated."""
    verify = helper.make_graph([helper.make_node("Constant", [], ["v"], value=numpy_helper.from_array(_w(8, 32), "v")),
                                helper.make_node("Gemm", ["x", "v"], ["g"], name="verifier", transB=1)], "then", [],
                               [helper.make_tensor_value_info("g", F, None)])
    keep = helper.make_graph([helper.make_node("Tile", ["score", "eight"], ["k"], name="keep")], "else", [],
                             [helper.make_tensor_value_info("k", F, None)])
    nodes = [helper.make_node("MatMul", ["x", "w"], ["score"], name="score"),
             helper.make_node("ReduceSum", ["score"], ["total"], keepdims=0, name="total"),
             helper.make_node("Greater", ["total", "zero"], ["cond"], name="cond"),
             helper.make_node("If", ["cond"], ["y"], name="if", then_branch=verify, else_branch=keep)]
    return _model(nodes, [("x", [1, 32])], [1, 8], {"w": _w(32, 1), "zero": np.array(0.0, np.float32),
                                                    "eight": np.array([1, 8], np.int64)})


def test_static_and_dynamic_int8_reach_gemm_weights_inside_if():
    model = _gemm_in_if()
    x = _w(8, 32)
    for mode in (Mode.DYNAMIC_INT8, Mode.STATIC_INT8):
        result = compress(model, "onnx", CompressionConfig(mode=mode, latency_runs=0, gate=GateConfig(enabled=False)),
                          calibration=x, eval_x=x)
        assert count_quantized_weights(result.model, mode) == (2, 2), mode  # w, and v in the branch
        if mode is Mode.STATIC_INT8:
            assert any("MatMul 'verifier' quantized dynamically" in c for c in result.report.conversions)
        ort.InferenceSession(result.model, providers=["CPUExecutionProvider"])
