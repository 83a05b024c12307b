"""ONNX -> TFLite on what the corpus's real models need: dynamic dimensions fixed to the data's
shapes (shape arithmetic folded), 1-D convolutions, LSTM, If, int32 inputs (one-hot embeddings),
comparisons and selects, and the elementwise operators of spectrograms and layer norms. Every
exported graph is compared with ONNX Runtime."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgefleet.compression import CompressionConfig, Mode, compress
from edgefleet.compression.onnx_to_tflite import export_tflite, fix_input_shapes, fold_constants
from edgefleet.compression.tflite_graph import load_tflite, operators
from edgefleet.protocol.errors import UnsupportedModelError

RNG = np.random.default_rng(23)
TOLERANCE = 1e-4
F = TensorProto.FLOAT


def _w(*shape: int) -> np.ndarray:
    return RNG.standard_normal(shape).astype(np.float32)


def _model(nodes, inputs, inits=None, opset=17, outputs=("y",)) -> bytes:
    """``inputs``: (name, elem type, shape); outputs typed by shape inference."""
    graph = helper.make_graph(
        nodes, "real", [helper.make_tensor_value_info(n, t, s) for n, t, s in inputs],
        [helper.make_tensor_value_info(o, F, None) for o in outputs],
        initializer=[numpy_helper.from_array(np.asarray(v), k) for k, v in (inits or {}).items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    inferred = onnx.shape_inference.infer_shapes(model)
    for i, out in enumerate(inferred.graph.output):
        model.graph.output[i].CopyFrom(out)
    onnx.checker.check_model(model, full_check=True)
    return model.SerializeToString()


def _run(runtime: str, model: bytes, feed: dict[str, np.ndarray]) -> list[np.ndarray]:
    if runtime == "onnx":
        return ort.InferenceSession(model, providers=["CPUExecutionProvider"]).run(None, feed)
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_content=model)
    details = {d["name"]: d for d in interpreter.get_input_details()}
    for name, array in feed.items():
        interpreter.resize_tensor_input(details[name]["index"], list(array.shape))
    interpreter.allocate_tensors()
    for name, array in feed.items():
        interpreter.set_tensor(details[name]["index"], array)
    interpreter.invoke()
    return [interpreter.get_tensor(d["index"]).copy() for d in interpreter.get_output_details()]


def _same(model: bytes, feed: dict[str, np.ndarray], shapes=None) -> bytes:
    exported = export_tflite(model, shapes)
    for actual, expected in zip(_run("tflite", exported, feed), _run("onnx", model, feed), strict=True):
        assert actual.shape == expected.shape
        np.testing.assert_allclose(actual, expected, atol=TOLERANCE, rtol=TOLERANCE)
    return exported


def _op_types(exported: bytes) -> list[str]:
    return [op.op_type for op in operators(load_tflite(exported))]


# -- dynamic dimensions fixed to the data --------------------------------------------------------


def _width_reshape() -> bytes:
    """x [N, 2, 4, W] -> Reshape to [N, 8 * W // 2, 2] computed from Shape (Gather, Mul,
    Concat), as OCR models fold their feature map into a sequence."""
    nodes = [helper.make_node("Shape", ["x"], ["s"]),
             helper.make_node("Gather", ["s", "i0"], ["n"], axis=0),
             helper.make_node("Gather", ["s", "i3"], ["w"], axis=0),
             helper.make_node("Mul", ["w", "four"], ["len"]),
             helper.make_node("Unsqueeze", ["n", "ax"], ["n1"]),
             helper.make_node("Unsqueeze", ["len", "ax"], ["len1"]),
             helper.make_node("Concat", ["n1", "len1", "two"], ["target"], axis=0),
             helper.make_node("Reshape", ["x", "target"], ["y"])]
    inits = {"i0": np.array(0, np.int64), "i3": np.array(3, np.int64), "four": np.array(4, np.int64),
             "ax": np.array([0], np.int64), "two": np.array([2], np.int64)}
    return _model(nodes, [("x", F, ["N", 2, 4, "W"])], inits)


def test_shape_arithmetic_on_unknown_dims_exports_once_the_shapes_are_fixed():
    model = _width_reshape()
    with pytest.raises(UnsupportedModelError, match="shape arithmetic on unknown dimensions"):
        export_tflite(model)
    x = _w(1, 2, 4, 6)
    exported = _same(model, {"x": x}, {"x": [1, 2, 4, 6]})
    assert "SHAPE" not in _op_types(exported) and "GATHER" not in _op_types(exported)
    assert list(load_tflite(exported).subgraphs[0].tensors[0].shape) == [1, 2, 4, 6]


def test_fold_constants_turns_shape_arithmetic_into_initializers():
    fixed = fold_constants(fix_input_shapes(onnx.load_model_from_string(_width_reshape()), {"x": [1, 2, 4, 6]}))
    assert [n.op_type for n in fixed.graph.node] == ["Reshape"]
    target = {t.name: numpy_helper.to_array(t) for t in fixed.graph.initializer}["target"]
    assert target.tolist() == [1, 24, 2]


def test_compress_fixes_the_shapes_to_the_data_and_says_so():
    x = _w(12, 2, 4, 6)
    result = compress(_width_reshape(), "tflite", CompressionConfig(mode=Mode.FP16, latency_runs=0,
                                                                     allow_no_gain=True),
                      calibration=x[:6], eval_x=x[6:])
    note = next(c for c in result.report.conversions if "fixed input shapes" in c)
    assert "x [1, 2, 4, 6]" in note and "shape arithmetic" in note
    assert result.report.gate.passed


# -- operators -----------------------------------------------------------------------------------


def _one(op: str, inputs: list[str], shape=("N", 3, 5), inits=None, **attrs) -> bytes:
    return _model([helper.make_node(op, inputs, ["y"], name=op.lower(), **attrs)], [("x", F, list(shape))], inits)


POSITIVE = {"Sqrt", "Log"}
CASES = {
    "max": lambda: _one("Max", ["x", "c"], inits={"c": _w(5)}),
    "min_three": lambda: _one("Min", ["x", "c", "d"], inits={"c": _w(5), "d": np.float32(0.1)}),
    "neg": lambda: _one("Neg", ["x"]),
    "abs": lambda: _one("Abs", ["x"]),
    "exp": lambda: _one("Exp", ["x"]),
    "sqrt": lambda: _one("Sqrt", ["x"]),
    "log": lambda: _one("Log", ["x"]),
    "reciprocal": lambda: _one("Reciprocal", ["x"]),
    "pow_2": lambda: _one("Pow", ["x", "e"], inits={"e": np.float32(2.0)}),
    "pow_3": lambda: _one("Pow", ["x", "e"], inits={"e": np.float32(3.0)}),
    "reduce_min": lambda: _one("ReduceMin", ["x"], axes=[2], keepdims=0),
    "softmax_middle": lambda: _one("Softmax", ["x"], axis=1),
    "global_max_pool_1d": lambda: _one("GlobalMaxPool", ["x"]),
    "cast_to_float": lambda: _one("Cast", ["x"], to=F),
    "expand": lambda: _model([helper.make_node("ReduceMax", ["x"], ["m"], axes=[2], keepdims=1),
                              helper.make_node("Expand", ["m", "s"], ["e"]),
                              helper.make_node("Sub", ["x", "e"], ["y"])],
                             [("x", F, [2, 3, 5])], {"s": np.array([2, 3, 5], np.int64)}),
    "clip_by_a_value": lambda: _model([helper.make_node("ReduceMax", ["x"], ["m"], keepdims=0),
                                       helper.make_node("Sub", ["m", "c"], ["floor"]),
                                       helper.make_node("Clip", ["x", "floor", ""], ["y"])],
                                      [("x", F, [1, 3, 5])], {"c": np.float32(1.0)}),
    "equal_where": lambda: _model([helper.make_node("ReduceMax", ["x"], ["m"], axes=[1, 2], keepdims=1),
                                   helper.make_node("Equal", ["m", "zero"], ["is_zero"]),
                                   helper.make_node("Div", ["x", "m"], ["q"]),
                                   helper.make_node("Where", ["is_zero", "zero", "q"], ["w"]),
                                   helper.make_node("Mul", ["w", "x"], ["y"])],  # a float, not a bool
                                  [("x", F, ["N", 3, 5])], {"zero": np.float32(0.0)}),
    "conv1d": lambda: _model([helper.make_node("Conv", ["x", "w", "b"], ["y"], name="conv", strides=[2],
                                               pads=[1, 2], dilations=[1])],
                             [("x", F, ["N", 3, 16])], {"w": _w(4, 3, 5), "b": _w(4)}),
    "conv1d_shared_weight": lambda: _model([helper.make_node("Conv", ["x", "w"], ["a"], name="c1", strides=[4]),
                                            helper.make_node("Conv", ["x", "w"], ["b"], name="c2", strides=[4]),
                                            helper.make_node("Mul", ["a", "b"], ["y"])],
                                           [("x", F, ["N", 1, 32])], {"w": _w(6, 1, 8)}),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_operator_matches_onnx_runtime(case):
    model = CASES[case]()
    shape = [d.dim_value or 2 for d in onnx.load_model_from_string(model).graph.input[0].type.tensor_type.shape.dim]
    x = _w(*shape)
    if case in ("sqrt", "log", "reciprocal"):
        x = np.abs(x) + 0.5
    _same(model, {"x": x})


def test_one_hot_of_an_int32_input_exports():
    """Magika's embedding: int32 bytes -> Equal against 0..V-1 -> Cast to float -> MatMul."""
    vocab = 7
    nodes = [helper.make_node("Unsqueeze", ["tokens", "ax"], ["t3"]),
             helper.make_node("Equal", ["t3", "ids"], ["hot"]),
             helper.make_node("Cast", ["hot"], ["hotf"], to=F),
             helper.make_node("MatMul", ["hotf", "table"], ["y"])]
    model = _model(nodes, [("tokens", TensorProto.INT32, [1, 6])],
                   {"ax": np.array([2], np.int64), "ids": np.arange(vocab, dtype=np.int32).reshape(1, 1, vocab),
                    "table": _w(vocab, 4)})
    tokens = RNG.integers(0, vocab, (1, 6)).astype(np.int32)
    exported = _same(model, {"tokens": tokens})
    assert {"EQUAL", "CAST", "FULLY_CONNECTED"} <= set(_op_types(exported))


def _lstm(direction: str, steps: int = 4, batch: int = 1, with_state: bool = True) -> bytes:
    hidden, features, dirs = 3, 5, 2 if direction == "bidirectional" else 1
    inputs = ["x", "w", "r", "b", "", "h0", "c0"] if with_state else ["x", "w", "r", "b"]
    nodes = [helper.make_node("LSTM", inputs, ["y", "yh"], name="lstm", hidden_size=hidden, direction=direction),
             helper.make_node("Add", ["yh", "one"], ["h_next"])]
    inits = {"w": _w(dirs, 4 * hidden, features) * 0.5, "r": _w(dirs, 4 * hidden, hidden) * 0.5,
             "b": _w(dirs, 8 * hidden) * 0.1, "one": np.float32(1.0)}
    if with_state:
        inits |= {"h0": _w(dirs, batch, hidden) * 0.3, "c0": _w(dirs, batch, hidden) * 0.3}
    return _model(nodes, [("x", F, [steps, batch, features])], inits, outputs=("y", "h_next"))


@pytest.mark.parametrize(("direction", "with_state"), [("forward", True), ("reverse", False),
                                                       ("bidirectional", True)])
def test_lstm_is_unrolled_over_its_fixed_sequence(direction, with_state):
    exported = _same(_lstm(direction, with_state=with_state), {"x": _w(4, 1, 5)})
    types = _op_types(exported)
    assert "FULLY_CONNECTED" in types and "LOGISTIC" in types
    # the recurrent weights are one tensor per direction, shared by every step
    subgraph = load_tflite(exported).subgraphs[0]
    assert sum(1 for t in subgraph.tensors if t.name.decode().endswith("/r")) == (2 if direction == "bidirectional"
                                                                                    else 1)


def test_lstm_with_an_unknown_sequence_length_names_the_fix():
    model = _model([helper.make_node("LSTM", ["x", "w", "r"], ["y"], name="lstm", hidden_size=2)],
                   [("x", F, ["T", 1, 3])], {"w": _w(1, 8, 3), "r": _w(1, 8, 2)})
    with pytest.raises(UnsupportedModelError, match="fix the input shapes"):
        export_tflite(model)


def _if_model() -> bytes:
    """score = sigmoid(x @ w); if score >= 0.5: verifier(x) else score (openWakeWord's heads)."""
    verify = helper.make_graph([helper.make_node("MatMul", ["x", "v"], ["vm"]),
                                helper.make_node("Sigmoid", ["vm"], ["verified"])], "then", [],
                               [helper.make_tensor_value_info("verified", F, None)])
    keep = helper.make_graph([helper.make_node("Identity", ["score"], ["kept"])], "else", [],
                             [helper.make_tensor_value_info("kept", F, None)])
    nodes = [helper.make_node("MatMul", ["x", "w"], ["m"]), helper.make_node("Sigmoid", ["m"], ["score"]),
             helper.make_node("GreaterOrEqual", ["score", "half"], ["cond"]),
             helper.make_node("If", ["cond"], ["y"], name="if", then_branch=verify, else_branch=keep)]
    return _model(nodes, [("x", F, [1, 6])], {"w": _w(6, 1), "v": _w(6, 1), "half": np.float32(0.5)})


def test_if_becomes_a_select_between_both_branches():
    model = _if_model()
    exported = export_tflite(model)
    assert "SELECT_V2" in _op_types(exported)
    seen = set()
    for _ in range(40):  # both branches taken
        x = _w(1, 6)
        score = 1 / (1 + np.exp(-(x @ onnx_init(model, "w"))))
        seen.add(bool(score[0, 0] >= 0.5))
        np.testing.assert_allclose(_run("tflite", exported, {"x": x})[0], _run("onnx", model, {"x": x})[0],
                                   atol=TOLERANCE)
    assert seen == {True, False}


def onnx_init(model: bytes, name: str) -> np.ndarray:
    return next(numpy_helper.to_array(t) for t in onnx.load_model_from_string(model).graph.initializer
                if t.name == name)


def test_loop_is_still_refused_by_name():
    body = helper.make_graph([helper.make_node("Identity", ["cond_in"], ["cond_out"]),
                              helper.make_node("Identity", ["v_in"], ["v_out"])], "body",
                             [helper.make_tensor_value_info("i", TensorProto.INT64, []),
                              helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
                              helper.make_tensor_value_info("v_in", F, [1, 3])],
                             [helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
                              helper.make_tensor_value_info("v_out", F, [1, 3])])
    graph = helper.make_graph([helper.make_node("Loop", ["n", "", "x"], ["y"], name="loop", body=body)], "loop",
                              [helper.make_tensor_value_info("x", F, [1, 3])],
                              [helper.make_tensor_value_info("y", F, [1, 3])],
                              initializer=[numpy_helper.from_array(np.array(2, np.int64), "n")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()
    with pytest.raises(UnsupportedModelError, match="Loop.*control flow"):
        export_tflite(model)


def test_a_weight_shared_by_several_operators_is_stored_once():
    """Basic Pitch's CQT applies two filter banks to nine octaves: 9 weights in ONNX, 32 in the
    export (3.6x larger) before constants were shared."""
    model = CASES["conv1d_shared_weight"]()
    subgraph = load_tflite(export_tflite(model)).subgraphs[0]
    weights = [t for t in subgraph.tensors if list(t.shape) == [6, 1, 8, 1]]
    assert len(weights) == 1
