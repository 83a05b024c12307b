"""Quantized files without the bytes they do not need (issue 10: per-channel static int8 no bigger
than ONNX Runtime's plain quantize_dynamic, TFLite int8 >= 3.5x where weights dominate), and
dynamic int8 quantizing exactly what quantize_dynamic quantizes (fidelity at least ONNX Runtime's).

Small models built here with the traits of the corpus models: per-channel convolutions with
biases (ddddocr-det, open-nsfw), a final Gemm feeding the output of an opset-12 model
(ddddocr-ocr), small TFLite convolutions whose per-channel zero points weigh in (openWakeWord).
"""

from __future__ import annotations

import collections

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from ai_edge_litert import schema_py_generated as tfl
from onnx import TensorProto, helper, numpy_helper

from edgefleet.compression import CompressionConfig, GateConfig, Mode, compress
from edgefleet.compression import quantize_tflite as qtflite
from edgefleet.compression.onnx_compact import compact_quantized
from edgefleet.compression.onnx_to_tflite import export_tflite
from edgefleet.compression.tflite_compact import compact_tflite

RNG = np.random.default_rng(7)
X = RNG.random((16, 3, 12, 12), dtype=np.float32)


def _init(name: str, *shape: int, scale: float = 0.2) -> onnx.TensorProto:
    # channels of very different ranges, as BatchNorm-folded convolutions have
    values = RNG.standard_normal(shape) * scale
    if len(shape) > 1:
        values *= np.geomspace(0.05, 2.0, shape[0]).reshape(-1, *[1] * (len(shape) - 1))
    return numpy_helper.from_array(values.astype(np.float32), name)


def _conv_model(opset: int = 17) -> onnx.ModelProto:
    nodes = [helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1], group=1,
                              dilations=[1, 1], strides=[1, 1], name="conv1"),
             helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
             helper.make_node("Conv", ["r1", "w2", "b2"], ["c2"], pads=[1, 1, 1, 1], strides=[2, 2], name="conv2"),
             helper.make_node("Relu", ["c2"], ["r2"], name="relu2"),
             helper.make_node("Conv", ["r2", "w3", "b3"], ["y"], name="conv3")]
    inits = [_init("w1", 16, 3, 3, 3), _init("b1", 16), _init("w2", 24, 16, 3, 3), _init("b2", 24),
             _init("w3", 8, 24, 1, 1), _init("b3", 8)]
    graph = helper.make_graph(nodes, "convs", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 12, 12])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8, 6, 6])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def _qdq(model: onnx.ModelProto, tmp_path, activation: str = "QInt8") -> onnx.ModelProto:
    """ONNX Runtime's per-channel static QDQ of ``model``, as the quantizer writes it."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self._batches = iter([{"x": X[i:i + 1]} for i in range(8)])

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self._batches, None)

    source, out = tmp_path / "m.onnx", tmp_path / "m.qdq.onnx"
    onnx.save(model, source)
    quantize_static(source, out, Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=getattr(QuantType, activation), weight_type=QuantType.QInt8,
                    extra_options={"WeightSymmetric": True, "ActivationSymmetric": False})
    return onnx.load(out)


def _session(model: onnx.ModelProto, optimized=None) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.log_severity_level = 3
    if optimized is not None:
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
        options.optimized_model_filepath = str(optimized)
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def _outputs(model: onnx.ModelProto) -> list[np.ndarray]:
    session = _session(model)
    return [session.run(None, {"x": X[i:i + 1]})[0] for i in range(4)]


def _copy(model: onnx.ModelProto) -> onnx.ModelProto:
    out = onnx.ModelProto()
    out.CopyFrom(model)
    return out


def test_compacted_qdq_model_computes_the_same_and_drops_zero_zero_points(tmp_path):
    quantized = _qdq(_conv_model(), tmp_path)
    compact = _copy(quantized)
    compact_quantized(compact)

    assert len(compact.SerializeToString()) < len(quantized.SerializeToString()) - 300
    for before, after in zip(_outputs(quantized), _outputs(compact), strict=True):
        np.testing.assert_array_equal(before, after)
    inits = {t.name for t in compact.graph.initializer}
    constant_dqs = [n for n in compact.graph.node if n.op_type == "DequantizeLinear" and n.input[0] in inits]
    assert len(constant_dqs) == 6  # three weights and three biases
    assert all(len(n.input) == 2 for n in constant_dqs)  # symmetric: zero points 0, the default
    activation_dqs = [n for n in compact.graph.node if n.op_type == "DequantizeLinear" and n.input[0] not in inits]
    assert activation_dqs and all(len(n.input) == 3 for n in activation_dqs)  # a Q/DQ pair keeps its zero point


def test_per_channel_bias_scales_become_the_product_they_are(tmp_path):
    quantized = _qdq(_conv_model(), tmp_path)
    compact = _copy(quantized)
    compact_quantized(compact)
    producers = {o: n for n in compact.graph.node for o in n.output}
    inits = {t.name: t for t in compact.graph.initializer}
    bias_dqs = [n for n in compact.graph.node if n.op_type == "DequantizeLinear"
                and n.input[0] in inits and inits[n.input[0]].data_type == TensorProto.INT32]
    assert len(bias_dqs) == 3
    for dq in bias_dqs:
        mul = producers[dq.input[1]]  # the scale is computed, not stored
        assert mul.op_type == "Mul" and all(name in inits for name in mul.input)


def test_compaction_keeps_onnx_runtime_fusing_the_qdq_groups(tmp_path):
    quantized = _qdq(_conv_model(), tmp_path, activation="QUInt8")
    compact = _copy(quantized)
    compact_quantized(compact)
    fused = []
    for index, model in enumerate((quantized, compact)):
        _session(model, optimized=tmp_path / f"opt{index}.onnx")
        fused.append(collections.Counter(n.op_type for n in onnx.load(tmp_path / f"opt{index}.onnx").graph.node))
    assert fused[0]["QLinearConv"] == 3
    assert fused[1] == fused[0]


def test_identical_initializers_are_stored_once_also_where_a_subgraph_reads_them():
    one = numpy_helper.from_array(np.full(4, 0.5, np.float32), "a")
    two = numpy_helper.from_array(np.full(4, 0.5, np.float32), "b")
    then_graph = helper.make_graph([helper.make_node("Mul", ["sum", "b"], ["t"])], "then", [],
                                   [helper.make_tensor_value_info("t", TensorProto.FLOAT, [4])])
    else_graph = helper.make_graph([helper.make_node("Sub", ["sum", "b"], ["e"])], "else", [],
                                   [helper.make_tensor_value_info("e", TensorProto.FLOAT, [4])])
    nodes = [helper.make_node("Add", ["x", "a"], ["xa"]), helper.make_node("Add", ["xa", "b"], ["sum"]),
             helper.make_node("ReduceSum", ["sum"], ["total"], keepdims=0),
             helper.make_node("Greater", ["total", "zero"], ["cond"]),
             helper.make_node("If", ["cond"], ["y"], then_branch=then_graph, else_branch=else_graph)]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4])],
                              [one, two, numpy_helper.from_array(np.array(0.0, np.float32), "zero")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    compact = _copy(model)
    compact_quantized(compact)

    assert sorted(t.name for t in compact.graph.initializer) == ["a", "zero"]
    branches = [a.g for a in compact.graph.node[-1].attribute]
    assert all(list(b.node[0].input) == ["sum", "a"] for b in branches)  # renamed inside the If too
    for x in (np.ones(4, np.float32), -np.ones(4, np.float32) * 3):
        expected = _session(model).run(None, {"x": x})[0]
        np.testing.assert_array_equal(_session(compact).run(None, {"x": x})[0], expected)


def test_default_attributes_and_empty_fields_are_dropped(tmp_path):
    model = _conv_model()
    model.graph.node[0].domain = ""
    compact_quantized(model)
    conv1, conv2 = model.graph.node[0], model.graph.node[2]
    assert {a.name for a in conv1.attribute} == {"pads"}  # group 1, dilations 1, strides 1: defaults
    assert {a.name for a in conv2.attribute} == {"pads", "strides"}  # strides 2 kept
    assert not conv1.HasField("domain")


def _gemm_model() -> bytes:
    """x [N, 24] -> Gemm (transB) -> Relu -> Gemm (transB) -> logits, opset 12: ddddocr-ocr's
    final classifier (a Gemm feeding the output of an opset-12 export)."""
    inits = [_init("w1", 32, 24), _init("b1", 32), _init("w2", 40, 32), _init("b2", 40)]
    nodes = [helper.make_node("Gemm", ["x", "w1", "b1"], ["h"], transB=1, name="fc1"),
             helper.make_node("Relu", ["h"], ["r"], name="relu"),
             helper.make_node("Gemm", ["r", "w2", "b2"], ["logits"], transB=1, name="fc2")]
    graph = helper.make_graph(nodes, "gemm", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 24])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 40])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 12)])
    model.ir_version = 7
    onnx.checker.check_model(model)
    return model.SerializeToString()


def test_dynamic_int8_quantizes_what_quantize_dynamic_does_with_the_same_fidelity(tmp_path):
    from onnxruntime.quantization import quantize_dynamic

    model = _gemm_model()
    source, baseline = tmp_path / "m.onnx", tmp_path / "baseline.onnx"
    source.write_bytes(model)
    quantize_dynamic(source, baseline)  # ONNX Runtime's defaults: it quantizes the Gemms too
    x = RNG.standard_normal((32, 24)).astype(np.float32)
    result = compress(model, "onnx", CompressionConfig(mode=Mode.DYNAMIC_INT8, latency_runs=0,
                                                       gate=GateConfig(min_cosine=0.99)), eval_x=x)
    ours, theirs = onnx.load_model_from_string(result.model), onnx.load(baseline)
    assert sorted(n.op_type for n in ours.graph.node if "Integer" in n.op_type) == ["MatMulInteger"] * 2
    assert sorted(n.op_type for n in theirs.graph.node if "Integer" in n.op_type) == ["MatMulInteger"] * 2
    assert result.report.weights_quantized == result.report.weights_total == 2
    assert result.report.size.compressed_bytes <= baseline.stat().st_size
    for i in range(0, 32, 4):
        ref = _session(onnx.load_model_from_string(model)).run(None, {"x": x[i:i + 1]})[0]
        mine = _session(ours).run(None, {"x": x[i:i + 1]})[0]
        np.testing.assert_allclose(mine, _session(theirs).run(None, {"x": x[i:i + 1]})[0], rtol=1e-5, atol=1e-6)
        assert not np.array_equal(mine, ref)  # it is quantized


# --- TFLite ------------------------------------------------------------------------------------

def _vector_position(table: object, field: int) -> int:
    tab = table._tab  # type: ignore[attr-defined]
    return int(tab.Vector(tab.Offset(field)))


@pytest.fixture(scope="module")
def static_tflite_pair(cnn, samples):
    """The digits CNN as TFLite, static int8 per channel: as litert-quantizer writes it, and compacted."""
    _, calibration, _, _ = samples["cnn"]
    monkeypatch = pytest.MonkeyPatch()
    monkeypatch.setattr(qtflite, "compact_tflite", lambda data: data)
    try:
        plain = qtflite.quantize_tflite(export_tflite(cnn), Mode.STATIC_INT8, per_channel=True, exclude=[],
                                        calibration=calibration[:32])
    finally:
        monkeypatch.undo()
    return plain, compact_tflite(plain), calibration[:8]


def test_tflite_zero_points_are_stored_once_and_the_model_computes_the_same(static_tflite_pair, run_model):
    plain, compact, x = static_tflite_pair
    assert len(compact) < len(plain)
    for i in range(len(x)):
        np.testing.assert_array_equal(run_model("tflite", compact, x[i:i + 1]), run_model("tflite", plain, x[i:i + 1]))
    model = tfl.Model.GetRootAs(compact, 0)
    graph = model.Subgraphs(0)
    positions: dict[int, set[int]] = collections.defaultdict(set)
    for index in range(graph.TensorsLength()):
        quantization = graph.Tensors(index).Quantization()
        if quantization is None or quantization.ScaleLength() < 2:
            continue
        zeros = quantization.ZeroPointAsNumpy()
        assert len(zeros) == quantization.ScaleLength() and not zeros.any()  # LiteRT needs one per scale
        positions[len(zeros)].add(_vector_position(quantization, 10))  # field zero_point
    assert positions and all(len(p) == 1 for p in positions.values())  # one vector per channel count


def test_tflite_buffers_stay_16_byte_aligned(static_tflite_pair):
    _, compact, _ = static_tflite_pair
    model = tfl.Model.GetRootAs(compact, 0)
    starts = [_vector_position(model.Buffers(i), 4) for i in range(model.BuffersLength())
              if model.Buffers(i).DataLength() > 0]
    assert starts and all(start % 16 == 0 for start in starts)


def test_compact_tflite_returns_the_input_when_nothing_is_gained(mlp_tflite):
    once = compact_tflite(mlp_tflite)
    assert compact_tflite(once) == once
