"""TFLite files the way real converters leave them, and LiteRT/litert-quantizer limits: dynamic
inputs stored as a shape the model cannot run, shared inputs, tensor names repeated across
subgraphs, float16 biases and scalars behind DEQUANTIZE, hybrid depthwise convolutions, int8
DIV and BATCH_MATMUL under float16 casting."""

from __future__ import annotations

import copy

import numpy as np
import tflite_edit as te
from ai_edge_litert import schema_py_generated as tfl
from onnx import TensorProto, helper, numpy_helper

from edgefleet.compression import CompressionConfig, Mode, compress
from edgefleet.compression.onnx_to_tflite import export_tflite
from edgefleet.compression.quantize_tflite import candidates, quantize_tflite
from edgefleet.compression.tflite_graph import load_tflite, set_input_shapes, unique_tensor_names
from edgefleet.protocol.runtimes import open_session

from onnx_models import mlp_onnx

RNG = np.random.default_rng(29)
F = TensorProto.FLOAT


def _w(*shape: int) -> np.ndarray:
    return RNG.standard_normal(shape).astype(np.float32)


def _export(nodes, inputs, outputs, inits) -> bytes:
    graph = helper.make_graph(nodes, "quirks", [helper.make_tensor_value_info(n, F, s) for n, s in inputs],
                              [helper.make_tensor_value_info(n, F, s) for n, s in outputs],
                              initializer=[numpy_helper.from_array(v, k) for k, v in inits.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return export_tflite(model.SerializeToString())


def _conv_of_any_width() -> bytes:
    """x [N, 1, 8, W] -> 3x3 Conv: stored as [1, 1, 8, 1] (signature [-1, 1, 8, -1]), a width
    the 3-wide kernel cannot run, like openWakeWord's melspectrogram.tflite ([1, 1] for audio)."""
    return _export([helper.make_node("Conv", ["x", "w"], ["y"], kernel_shape=[3, 3])], [("x", ["N", 1, 8, "W"])],
                   [("y", ["N", 2, 6, "V"])], {"w": _w(2, 1, 3, 3)})


def test_a_dynamic_input_stored_too_small_is_resized_to_the_data():
    model = _conv_of_any_width()
    assert list(load_tflite(model).subgraphs[0].tensors[0].shape) == [1, 1, 8, 1]
    session = open_session("tflite", model)  # allocation waits for the first data
    assert session.run({"x": _w(1, 1, 8, 16)})["y"].shape == (1, 2, 6, 14)
    assert session.run({"x": _w(3, 1, 8, 10)})["y"].shape == (3, 2, 6, 8)  # every dim resized


def test_set_input_shapes_stores_the_data_shape_and_keeps_the_signature():
    model = _conv_of_any_width()
    fixed = load_tflite(set_input_shapes(model, {"x": (1, 1, 8, 16)}))
    tensor = fixed.subgraphs[0].tensors[fixed.subgraphs[0].inputs[0]]
    assert list(tensor.shape) == [1, 1, 8, 16] and list(tensor.shapeSignature) == [-1, 1, 8, -1]
    assert set_input_shapes(model, {"other": (1,)}) == model


def test_full_int8_calibrates_a_model_stored_too_small():
    x = _w(16, 1, 8, 16)
    result = compress(_conv_of_any_width(), "tflite", CompressionConfig(mode=Mode.STATIC_INT8, latency_runs=0,
                                                                        allow_no_gain=True),
                      calibration=x[:8], eval_x=x[8:])
    assert "TFLite input shapes stored as the data's (signature unchanged)" in result.report.conversions
    assert result.report.gate.passed


def test_a_shared_input_keeps_its_shape_whatever_the_batch():
    """x [N, 4] per sample, state [2, 4] shared: only x follows the batch (the first dimension
    of every input used to be resized to it)."""
    w = _w(4, 4)
    model = _export([helper.make_node("ReduceSum", ["state", "ax"], ["s"], keepdims=1),
                     helper.make_node("MatMul", ["x", "w"], ["m"]), helper.make_node("Add", ["m", "s"], ["y"])],
                    [("x", ["N", 4]), ("state", [2, 4])], [("y", ["N", 4])],
                    {"w": w, "ax": np.array([0], np.int64)})
    session = open_session("tflite", model)
    for batch in (3, 1, 5):
        x, state = _w(batch, 4), _w(2, 4)
        np.testing.assert_allclose(session.run({"x": x, "state": state})["y"], x @ w + state.sum(axis=0),
                                   rtol=1e-5, atol=1e-5)


def _with_a_second_subgraph(data: bytes) -> bytes:
    """A copy of subgraph 0 as subgraph 1: every tensor name twice (as IF branches have them)."""
    model = te.parse(data)
    model.subgraphs.append(copy.deepcopy(model.subgraphs[0]))
    return te.pack(model)


def test_tensor_names_repeated_across_subgraphs_are_made_unique():
    data = _with_a_second_subgraph(export_tflite(mlp_onnx(16, 32, 4)))
    model = load_tflite(data)
    before = [t.name for t in model.subgraphs[0].tensors]
    assert unique_tensor_names(model) == len(before)
    names = [t.name for sg in model.subgraphs for t in sg.tensors]
    assert len(set(names)) == len(names) and [t.name for t in model.subgraphs[0].tensors] == before
    quantized = quantize_tflite(data, Mode.DYNAMIC_INT8, per_channel=False, exclude=[])  # was: "not unique"
    assert open_session("tflite", quantized).run({"x": _w(2, 16)})["probs"].shape == (2, 4)


def test_hybrid_depthwise_convolution_is_quantized_per_channel():
    """Per tensor, LiteRT's hybrid depthwise kernel reads per-channel scales that are not there."""
    scale = np.arange(1, 9, dtype=np.float32).reshape(8, 1, 1, 1)
    model = _export([helper.make_node("Conv", ["x", "w"], ["c"], kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
                     helper.make_node("Conv", ["c", "d"], ["y"], kernel_shape=[3, 3], group=8, pads=[1, 1, 1, 1])],
                    [("x", ["N", 3, 8, 8])], [("y", ["N", 8, 8, 8])],
                    {"w": _w(8, 3, 3, 3), "d": _w(8, 1, 3, 3) * scale})
    x = _w(1, 3, 8, 8)
    expected = open_session("tflite", model).run({"x": x})["y"]
    quantized = quantize_tflite(model, Mode.DYNAMIC_INT8, per_channel=False, exclude=[])
    actual = open_session("tflite", quantized).run({"x": x})["y"]
    assert np.abs(actual - expected).max() < 0.05 * np.abs(expected).max()


def test_float16_biases_behind_dequantize_are_dequantized_with_the_weights():
    """XNNPack cannot delegate an int8 FULLY_CONNECTED whose bias a DEQUANTIZE computes (BirdNET's
    meta model): the biases become float32 constants too."""
    data = te.fp16_weights(export_tflite(mlp_onnx(16, 32, 4)), biases=True)
    quantized = quantize_tflite(data, Mode.DYNAMIC_INT8, per_channel=False, exclude=[])
    assert tfl.BuiltinOperator.DEQUANTIZE not in te.op_types(quantized)
    assert open_session("tflite", quantized).run({"x": _w(2, 16)})["probs"].shape == (2, 4)


def _scalar_fp16_behind_dequantize(data: bytes) -> bytes:
    """The scalar constant as float16 behind a DEQUANTIZE whose output has no stored shape."""
    model = te.parse(data)
    subgraph = model.subgraphs[0]
    entry = tfl.OperatorCodeT()
    entry.builtinCode = entry.deprecatedBuiltinCode = tfl.BuiltinOperator.DEQUANTIZE
    entry.version = 1
    model.operatorCodes.append(entry)
    index = next(i for i, t in enumerate(subgraph.tensors) if t.name.endswith(b"/scalar"))
    tensor = subgraph.tensors[index]
    buffer = tfl.BufferT()
    buffer.data = np.frombuffer(np.float16(0.5).tobytes(), np.uint8)
    model.buffers[tensor.buffer], tensor.type, tensor.shape = buffer, tfl.TensorType.FLOAT16, None
    out = tfl.TensorT()
    out.name, out.type, out.shape, out.buffer = tensor.name + b"_dequantize", tfl.TensorType.FLOAT32, None, 0
    subgraph.tensors.append(out)
    for op in subgraph.operators:
        op.inputs = [len(subgraph.tensors) - 1 if i == index else i for i in op.inputs]
    op = tfl.OperatorT()
    op.opcodeIndex, op.inputs, op.outputs = len(model.operatorCodes) - 1, [index], [len(subgraph.tensors) - 1]
    subgraph.operators.insert(0, op)
    return te.pack(model)


def test_full_int8_takes_scalars_without_a_stored_shape():
    model = _export([helper.make_node("MatMul", ["x", "w"], ["m"]), helper.make_node("Mul", ["m", "s"], ["y"])],
                    [("x", ["N", 8])], [("y", ["N", 4])], {"w": _w(8, 4), "s": np.array(0.5, np.float32)})
    quantized = quantize_tflite(_scalar_fp16_behind_dequantize(model), Mode.STATIC_INT8, per_channel=True,
                                exclude=[], calibration=_w(16, 8))  # was: "'NoneType' is not iterable"
    outputs = open_session("tflite", quantized).run({"x": _w(2, 8)})
    assert [o.shape for o in outputs.values()] == [(2, 4)]


def test_full_int8_keeps_div_in_float():
    model = _export([helper.make_node("MatMul", ["x", "w"], ["m"]), helper.make_node("Sigmoid", ["m"], ["s"]),
                     helper.make_node("Div", ["one", "s"], ["y"])], [("x", ["N", 8])], [("y", ["N", 4])],
                    {"w": _w(8, 4), "one": np.array(1.0, np.float32)})
    ops = {c.rsplit("/", 1)[0] for c in candidates(model, Mode.STATIC_INT8)}
    assert "m" in ops and "y" not in ops


def test_fp16_leaves_batch_matmul_weights_alone():
    """litert-quantizer's float16 casting has no BATCH_MATMUL: nothing to do, no crash."""
    model = _export([helper.make_node("MatMul", ["x", "w"], ["y"])], [("x", [2, 3, 4])], [("y", [2, 3, 5])],
                    {"w": _w(2, 4, 5)})
    assert candidates(model, Mode.FP16) == []
    assert quantize_tflite(model, Mode.FP16, per_channel=False, exclude=[]) == model


def test_weight_only_int8_quantizes_convolutions_per_channel():
    """Per tensor, one filter's scale sets every filter's: BirdNET's weight-only int8 missed SNR
    20 dB that way. Fully connected weights keep the per-tensor default."""
    model = _export([helper.make_node("Conv", ["x", "w"], ["c"], kernel_shape=[3, 3]),
                     helper.make_node("Flatten", ["c"], ["f"]), helper.make_node("MatMul", ["f", "d"], ["y"])],
                    [("x", ["N", 3, 6, 6])], [("y", ["N", 5])], {"w": _w(8, 3, 3, 3), "d": _w(128, 5)})
    quantized = load_tflite(quantize_tflite(model, Mode.WEIGHT_ONLY_INT8, per_channel=False, exclude=[]))
    scales = {tuple(t.shape): len(t.quantization.scale) for t in quantized.subgraphs[0].tensors
              if t.type == tfl.TensorType.INT8}
    assert scales == {(8, 3, 3, 3): 8, (5, 128): 1}
