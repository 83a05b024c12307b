"""Static int8 on convolutional models: no dependence on symbolic shape inference (fall back and
say so), temporary files only in a private directory, errors naming the cause and the operator,
per-channel static int8 no bigger than ONNX Runtime's plain dynamic quantization."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgefleet.compression import CompressionConfig, GateConfig, Mode, compress, quantize_onnx
from edgefleet.compression.config import CalibrationConfig
from edgefleet.compression.onnx_graph import count_quantized_weights, load_onnx, normalise
from edgefleet.protocol.errors import CompressionError

RNG = np.random.default_rng(13)
X = RNG.random((48, 3, 16, 16), dtype=np.float32)


def _init(name: str, *shape: int, scale: float) -> onnx.TensorProto:
    return numpy_helper.from_array((RNG.standard_normal(shape) * scale).astype(np.float32), name)


def _conv_net(runtime_axes: bool = False) -> bytes:
    """x [1, 3, h, w] -> 3 x (Conv + Relu) -> pool -> MatMul -> Softmax. ``runtime_axes``: the pooling
    is a ReduceMean whose axes are computed at run time (keepdims=0), on which ONNX Runtime's symbolic
    shape inference fails with a bare AssertionError."""
    nodes = [helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1], name="conv1"),
             helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
             helper.make_node("Conv", ["r1", "w2", "b2"], ["c2"], pads=[1, 1, 1, 1], strides=[2, 2], name="conv2"),
             helper.make_node("Relu", ["c2"], ["r2"], name="relu2"),
             helper.make_node("Conv", ["r2", "w3", "b3"], ["c3"], pads=[1, 1, 1, 1], name="conv3"),
             helper.make_node("Relu", ["c3"], ["r3"], name="relu3")]
    inits = [_init("w1", 16, 3, 3, 3, scale=0.3), _init("b1", 16, scale=0.1),
             _init("w2", 32, 16, 3, 3, scale=0.1), _init("b2", 32, scale=0.1),
             _init("w3", 32, 32, 3, 3, scale=0.08), _init("b3", 32, scale=0.1), _init("wf", 32, 10, scale=0.5)]
    if runtime_axes:
        nodes += [helper.make_node("ReduceMax", ["x"], ["xmax"], keepdims=0, name="xmax"),
                  helper.make_node("Mul", ["xmax", "zero"], ["z"], name="z"),
                  helper.make_node("Add", ["z", "hw"], ["axes_f"], name="axes_f"),
                  helper.make_node("Cast", ["axes_f"], ["axes"], to=TensorProto.INT64, name="axes"),
                  helper.make_node("ReduceSum", ["r3", "axes"], ["f"], keepdims=0, name="pool")]
        inits += [numpy_helper.from_array(np.array(0.0, np.float32), "zero"),
                  numpy_helper.from_array(np.array([2.0, 3.0], np.float32), "hw")]
    else:
        nodes += [helper.make_node("GlobalAveragePool", ["r3"], ["g"], name="pool"),
                  helper.make_node("Flatten", ["g"], ["f"], name="flatten")]
    nodes += [helper.make_node("MatMul", ["f", "wf"], ["logits"], name="fc"),
              helper.make_node("Softmax", ["logits"], ["y"], axis=-1, name="softmax")]
    graph = helper.make_graph(nodes, "conv", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, "h", "w"])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 10])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    return model.SerializeToString()


GATE = GateConfig(min_top1_agreement=0.9)


@pytest.fixture
def empty_cwd(tmp_path, monkeypatch):
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    return cwd


def test_symbolic_shape_inference_failing_falls_back_and_says_so(empty_cwd, run_model):
    model = _conv_net(runtime_axes=True)
    result = compress(model, "onnx", CompressionConfig(mode=Mode.STATIC_INT8, latency_runs=0, gate=GATE),
                      calibration=X, eval_x=X)
    (note,) = result.report.conversions
    assert note.startswith("symbolic shape inference failed (AssertionError at ReduceSum node 'pool')")
    assert note.endswith("plain ONNX shape inference used")
    assert result.report.weights_quantized == 4 and result.report.size.ratio > 3
    assert run_model("onnx", result.model, X[:1]).shape == (1, 10)
    assert list(empty_cwd.iterdir()) == []


@pytest.mark.parametrize("runtime_axes", [False, True])
def test_no_temporary_file_lands_in_the_working_directory(empty_cwd, runtime_axes):
    graph = normalise(load_onnx(_conv_net(runtime_axes)))
    quantized = quantize_onnx.quantize_static_int8(graph, X, config=CalibrationConfig(batch_size=8),
                                                   per_channel=True, exclude=[])
    assert count_quantized_weights(quantized) == (4, 4)
    assert list(empty_cwd.iterdir()) == []


def test_per_channel_static_int8_is_no_bigger_than_plain_dynamic_quantization(tmp_path):
    from onnxruntime.quantization import quantize_dynamic

    model = _conv_net()
    source, baseline = tmp_path / "m.onnx", tmp_path / "baseline.onnx"
    source.write_bytes(model)
    quantize_dynamic(source, baseline)  # ONNX Runtime's defaults
    result = compress(model, "onnx", CompressionConfig(mode=Mode.STATIC_INT8, latency_runs=0, gate=GATE),
                      calibration=X, eval_x=X)
    assert result.report.per_channel
    assert result.report.gate.passed and result.report.float_operators == []
    assert result.report.size.compressed_bytes <= baseline.stat().st_size
    assert result.report.conversions == []  # symbolic shape inference worked here


def test_quantized_files_keep_the_model_interface_and_source_node_names():
    quantized = onnx.load_model_from_string(quantize_onnx.quantize_static_int8(
        normalise(load_onnx(_conv_net())), X, config=CalibrationConfig(), per_channel=True, exclude=[]))
    assert [i.name for i in quantized.graph.input] == ["x"] and [o.name for o in quantized.graph.output] == ["y"]
    names = {n.name for n in quantized.graph.node if n.name}
    assert {"conv1", "conv2", "conv3", "fc"} <= names
    assert not any("QuantizeLinear" in n for n in names)  # generated names are dropped


def test_a_quantizer_failure_names_the_cause_and_the_operator(monkeypatch):
    import onnxruntime.quantization as ortq

    graph = normalise(load_onnx(_conv_net()))
    conv2 = next(n for n in graph.graph.node if n.name == "conv2")

    def failing_quantizer(*args, **kwargs):
        def quantize_node(node):
            raise ValueError("unexpected weight layout")
        quantize_node(conv2)

    monkeypatch.setattr(ortq, "quantize_static", failing_quantizer)
    with pytest.raises(CompressionError) as info:
        quantize_onnx.quantize_static_int8(graph, X, config=CalibrationConfig(), per_channel=True, exclude=[])
    assert info.value.message == ("static int8 quantization failed: ValueError: unexpected weight layout "
                                  "at Conv node 'conv2'")
    assert info.value.where == "model" and "float" in info.value.hint


def test_prepare_static_reports_nothing_when_symbolic_inference_works():
    prepared, notes = quantize_onnx.prepare_static(normalise(load_onnx(_conv_net())))
    assert notes == [] and len(prepared.graph.value_info) > 0
