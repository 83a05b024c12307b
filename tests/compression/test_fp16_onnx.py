"""ONNX fp16 on real-model traits: shape values cast to float for a Range (a real conversion, not a
round trip to drop), and values beyond float16's range (kept in float32, weights still float16)."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from edgefleet.compression import CompressionConfig, Mode, compress
from edgefleet.compression.fp16_range import LIMIT, overflowing_nodes
from edgefleet.compression.onnx_graph import count_quantized_weights, load_onnx, normalise
from edgefleet.compression.quantize_onnx import to_fp16

RNG = np.random.default_rng(5)


def _model(nodes, inputs, outputs, inits) -> bytes:
    graph = helper.make_graph(nodes, "g", inputs, outputs, initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    return model.SerializeToString()


def _range_of_shape() -> bytes:
    """y = x @ w + Range(0, float(shape(x)[1]), 1): an int64 shape value Cast to float feeds
    Range (which fp16 keeps in float32), as YOLO heads compute their anchor grids."""
    w = RNG.standard_normal((8, 8)).astype(np.float32)
    f = TensorProto.FLOAT
    return _model(
        [helper.make_node("Shape", ["x"], ["s"]),
         helper.make_node("Gather", ["s", "one"], ["n"], axis=0),
         helper.make_node("Cast", ["n"], ["nf"], to=f),
         helper.make_node("Range", ["zero", "nf", "step"], ["r"]),
         helper.make_node("MatMul", ["x", "w"], ["m"]),
         helper.make_node("Add", ["m", "r"], ["y"])],
        [helper.make_tensor_value_info("x", f, ["N", 8])], [helper.make_tensor_value_info("y", f, ["N", 8])],
        [numpy_helper.from_array(w, "w"), numpy_helper.from_array(np.array(1, np.int64), "one"),
         numpy_helper.from_array(np.array(0.0, np.float32), "zero"),
         numpy_helper.from_array(np.array(1.0, np.float32), "step")])


def test_shape_value_cast_to_float_for_range_survives_fp16():
    x = RNG.standard_normal((4, 8)).astype(np.float32)
    source = _range_of_shape()
    converted = to_fp16(normalise(load_onnx(source)), exclude=[])
    session = ort.InferenceSession(converted, providers=["CPUExecutionProvider"])  # loads: Range gets floats
    expected = ort.InferenceSession(source, providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    np.testing.assert_allclose(session.run(None, {"x": x})[0], expected, rtol=1e-2, atol=1e-2)


def _power_spectrum() -> bytes:
    """int16-scale audio x [N, 1, 256] -> Conv (an STFT: 1e5) -> Transpose -> squared (1e10: inf
    in float16) -> Clip(1e-6, inf) -> Log -> y [N, 7, 32], like openWakeWord's melspectrogram."""
    basis = RNG.standard_normal((32, 1, 64)).astype(np.float32) * 0.1
    f = TensorProto.FLOAT
    return _model(
        [helper.make_node("Conv", ["x", "basis"], ["spec"], strides=[32]),
         helper.make_node("Transpose", ["spec"], ["frames"], perm=[0, 2, 1]),
         helper.make_node("Mul", ["frames", "frames"], ["power"]),
         helper.make_node("Clip", ["power", "eps", "inf"], ["floored"]),
         helper.make_node("Log", ["floored"], ["y"])],
        [helper.make_tensor_value_info("x", f, ["N", 1, 256])],
        [helper.make_tensor_value_info("y", f, ["N", 7, 32])],
        [numpy_helper.from_array(basis, "basis"), numpy_helper.from_array(np.array(1e-6, np.float32), "eps"),
         numpy_helper.from_array(np.array(np.inf, np.float32), "inf")])


def test_operators_whose_values_overflow_float16_compute_in_float32():
    audio = RNG.uniform(-32768, 32767, (12, 1, 256)).astype(np.float32)
    source = _power_spectrum()
    kept = overflowing_nodes(normalise(load_onnx(source)), audio)
    # x (32767 > LIMIT) and spec/frames/power/floored are beyond range; Log's output is not
    assert [k.op_type for k in kept] == ["Conv", "Transpose", "Mul", "Clip", "Log"]
    assert all(k.peak > LIMIT for k in kept)

    result = compress(source, "onnx", CompressionConfig(mode=Mode.FP16, latency_runs=0),
                      calibration=audio[:8], eval_x=audio[8:])
    report = result.report
    assert report.gate.passed and report.fidelity.cosine_similarity > 0.999
    assert len(report.float_operators) == 5
    assert any("compute in float32" in c and "calibration" in c for c in report.conversions)
    assert count_quantized_weights(result.model, Mode.FP16) == (1, 1)  # stored float16, computed float32
    assert report.size.compressed_bytes < report.size.original_bytes - 3000  # 8 kB of weights -> 4 kB


def test_without_the_range_check_fp16_breaks_that_model():
    """What the check prevents: converted blindly, the power spectrum is inf in float16."""
    audio = RNG.uniform(-32768, 32767, (4, 1, 256)).astype(np.float32)
    source = _power_spectrum()
    converted = to_fp16(normalise(load_onnx(source)), exclude=[])
    out = ort.InferenceSession(converted, providers=["CPUExecutionProvider"]).run(None, {"x": audio})[0]
    ref = ort.InferenceSession(source, providers=["CPUExecutionProvider"]).run(None, {"x": audio})[0]
    assert not np.allclose(out, ref, rtol=0.1, atol=0.1)  # inf, nan or far off
