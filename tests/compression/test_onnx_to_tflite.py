"""The ONNX -> TFLite exporter matches ONNX Runtime on every supported operator."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgefleet.compression.onnx_to_tflite import export_tflite
from edgefleet.protocol.errors import UnsupportedModelError

RNG = np.random.default_rng(7)
TOLERANCE = 1e-4


def _model(nodes, inputs, output_shape, initializers=(), output="y"):
    graph = helper.make_graph(
        nodes, "single_op",
        [helper.make_tensor_value_info(name, TensorProto.FLOAT, shape) for name, shape in inputs],
        [helper.make_tensor_value_info(output, TensorProto.FLOAT, output_shape)],
        initializer=[numpy_helper.from_array(np.asarray(v, np.float32) if v.dtype.kind == "f"
                                             else v, k) for k, v in dict(initializers).items()],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()


def _w(*shape):
    return RNG.standard_normal(shape).astype(np.float32)


def _conv_model(out_shape, weight, bias=None, **attrs):
    inits = {"w": weight}
    inputs = ["x", "w"]
    if bias is not None:
        inits["b"] = bias
        inputs.append("b")
    return _model([helper.make_node("Conv", inputs, ["y"], name="conv", **attrs)],
                  [("x", ["N", weight.shape[1] * attrs.get("group", 1), 9, 9])], out_shape, inits)


CASES = {
    "gemm": (_model([helper.make_node("Gemm", ["x", "w", "b"], ["y"], name="g")],
                    [("x", ["N", 6])], ["N", 5], {"w": _w(6, 5), "b": _w(5)}), (3, 6)),
    "gemm_transB_alpha_beta": (_model([helper.make_node("Gemm", ["x", "w", "b"], ["y"], name="g",
                                                         transB=1, alpha=0.5, beta=2.0)],
                                      [("x", ["N", 6])], ["N", 5], {"w": _w(5, 6), "b": _w(1, 5)}),
                               (3, 6)),
    "matmul_const": (_model([helper.make_node("MatMul", ["x", "w"], ["y"], name="m")],
                            [("x", ["N", 6])], ["N", 4], {"w": _w(6, 4)}), (2, 6)),
    "matmul_3d": (_model([helper.make_node("MatMul", ["x", "w"], ["y"], name="m")],
                         [("x", [2, 3, 6])], [2, 3, 4], {"w": _w(6, 4)}), (2, 3, 6)),
    "add": (_model([helper.make_node("Add", ["x", "c"], ["y"], name="a")],
                   [("x", ["N", 4])], ["N", 4], {"c": _w(4)}), (3, 4)),
    "sub": (_model([helper.make_node("Sub", ["x", "c"], ["y"], name="s")],
                   [("x", ["N", 4])], ["N", 4], {"c": _w(4)}), (3, 4)),
    "mul": (_model([helper.make_node("Mul", ["x", "c"], ["y"], name="m")],
                   [("x", ["N", 4])], ["N", 4], {"c": _w(1, 4)}), (3, 4)),
    "div": (_model([helper.make_node("Div", ["x", "c"], ["y"], name="d")],
                   [("x", ["N", 4])], ["N", 4], {"c": np.abs(_w(4)) + 0.5}), (3, 4)),
    "relu": (_model([helper.make_node("Relu", ["x"], ["y"], name="r")], [("x", ["N", 7])],
                    ["N", 7]), (3, 7)),
    "relu6_clip": (_model([helper.make_node("Clip", ["x", "lo", "hi"], ["y"], name="c")],
                          [("x", ["N", 7])], ["N", 7],
                          {"lo": np.array(0.0, np.float32), "hi": np.array(6.0, np.float32)}),
                   (3, 7)),
    "clip_range": (_model([helper.make_node("Clip", ["x", "lo", "hi"], ["y"], name="c")],
                          [("x", ["N", 7])], ["N", 7],
                          {"lo": np.array(-0.5, np.float32), "hi": np.array(0.7, np.float32)}),
                   (3, 7)),
    "sigmoid": (_model([helper.make_node("Sigmoid", ["x"], ["y"], name="s")], [("x", ["N", 7])],
                       ["N", 7]), (3, 7)),
    "tanh": (_model([helper.make_node("Tanh", ["x"], ["y"], name="t")], [("x", ["N", 7])],
                    ["N", 7]), (3, 7)),
    "softmax": (_model([helper.make_node("Softmax", ["x"], ["y"], name="s", axis=-1)],
                       [("x", ["N", 10])], ["N", 10]), (3, 10)),
    "conv_same": (_conv_model(["N", 4, 9, 9], _w(4, 3, 3, 3), _w(4), kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
                  (2, 3, 9, 9)),
    "conv_valid_stride": (_conv_model(["N", 4, 4, 4], _w(4, 3, 3, 3), None, kernel_shape=[3, 3],
                                      strides=[2, 2]),
                          (2, 3, 9, 9)),
    "conv_asymmetric_pads": (_conv_model(["N", 2, 9, 9], _w(2, 3, 2, 2), _w(2), kernel_shape=[2, 2],
                                         pads=[0, 1, 1, 0]), (1, 3, 9, 9)),
    "conv_dilated": (_conv_model(["N", 2, 5, 5], _w(2, 3, 3, 3), _w(2), kernel_shape=[3, 3],
                                 dilations=[2, 2]),
                     (1, 3, 9, 9)),
    "depthwise_conv": (_conv_model(["N", 3, 9, 9], _w(3, 1, 3, 3), _w(3), kernel_shape=[3, 3],
                                   pads=[1, 1, 1, 1],
                                   group=3), (2, 3, 9, 9)),
    "depthwise_multiplier": (_conv_model(["N", 6, 7, 7], _w(6, 1, 3, 3), _w(6), kernel_shape=[3, 3],
                                         group=3),
                             (1, 3, 9, 9)),
    "maxpool": (_model([helper.make_node("MaxPool", ["x"], ["y"], name="p", kernel_shape=[2, 2],
                                         strides=[2, 2])], [("x", ["N", 3, 8, 8])], ["N", 3, 4, 4]),
                (2, 3, 8, 8)),
    "maxpool_same": (_model([helper.make_node("MaxPool", ["x"], ["y"], name="p",
                                              kernel_shape=[3, 3], pads=[1, 1, 1, 1])],
                            [("x", ["N", 3, 8, 8])], ["N", 3, 8, 8]), (2, 3, 8, 8)),
    "averagepool": (_model([helper.make_node("AveragePool", ["x"], ["y"], name="p",
                                             kernel_shape=[3, 3], strides=[1, 1])],
                           [("x", ["N", 3, 8, 8])], ["N", 3, 6, 6]), (2, 3, 8, 8)),
    "global_average_pool": (_model([helper.make_node("GlobalAveragePool", ["x"], ["y"], name="g")],
                                   [("x", ["N", 5, 4, 4])], ["N", 5, 1, 1]), (2, 5, 4, 4)),
    "flatten_nchw": (_model([helper.make_node("Conv", ["x", "w"], ["c"], name="conv",
                                              kernel_shape=[1, 1]),
                             helper.make_node("Flatten", ["c"], ["y"], name="f", axis=1)],
                            [("x", ["N", 3, 4, 4])], ["N", 32], {"w": _w(2, 3, 1, 1)}), (2, 3, 4, 4)),
    "reshape": (_model([helper.make_node("Conv", ["x", "w"], ["c"], name="conv",
                                         kernel_shape=[1, 1]),
                        helper.make_node("Reshape", ["c", "s"], ["y"], name="r")],
                       [("x", ["N", 3, 4, 4])], ["N", 2, 16],
                       {"w": _w(2, 3, 1, 1), "s": np.array([0, 2, 16], np.int64)}), (2, 3, 4, 4)),
    "concat_channels": (_model([helper.make_node("Conv", ["x", "w"], ["c"], name="conv",
                                                 kernel_shape=[1, 1]),
                                helper.make_node("Concat", ["c", "x"], ["y"], name="cat", axis=1)],
                               [("x", ["N", 3, 4, 4])], ["N", 5, 4, 4], {"w": _w(2, 3, 1, 1)}),
                        (2, 3, 4, 4)),
    "softmax_channels": (_model([helper.make_node("Conv", ["x", "w"], ["c"], name="conv",
                                                  kernel_shape=[1, 1]),
                                 helper.make_node("Softmax", ["c"], ["y"], name="s", axis=1)],
                                [("x", ["N", 3, 4, 4])], ["N", 2, 4, 4], {"w": _w(2, 3, 1, 1)}),
                         (2, 3, 4, 4)),
    "concat_2d": (_model([helper.make_node("Concat", ["x", "c"], ["y"], name="cat", axis=1)],
                         [("x", [2, 3])], [2, 5], {"c": _w(2, 2)}), (2, 3)),
    "add_nhwc_bias": (_model([helper.make_node("Conv", ["x", "w"], ["c"], name="conv",
                                               kernel_shape=[1, 1]),
                              helper.make_node("Add", ["c", "b"], ["y"], name="add")],
                             [("x", ["N", 3, 4, 4])], ["N", 2, 4, 4],
                             {"w": _w(2, 3, 1, 1), "b": _w(2, 1, 1)}), (2, 3, 4, 4)),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_exporter_matches_onnx_runtime(case, run_model):
    model, shape = CASES[case]
    x = RNG.standard_normal(shape).astype(np.float32)
    expected = run_model("onnx", model, x)
    actual = run_model("tflite", export_tflite(model), x)
    assert actual.shape == expected.shape
    np.testing.assert_allclose(actual, expected, atol=TOLERANCE, rtol=TOLERANCE)


@pytest.mark.parametrize("name", ["mlp", "cnn"])
def test_sample_models_match(samples, run_model, name):
    model, _, eval_x, _ = samples[name]
    np.testing.assert_allclose(run_model("tflite", export_tflite(model), eval_x),
                               run_model("onnx", model, eval_x), atol=TOLERANCE)


def test_unsupported_operator_is_named():
    model = _model([helper.make_node("Relu", ["x"], ["r"], name="first"),
                    helper.make_node("Erf", ["r"], ["y"], name="my_erf")],
                   [("x", ["N", 4])], ["N", 4])
    with pytest.raises(UnsupportedModelError) as info:
        export_tflite(model)
    assert "Erf" in str(info.value)
    assert "my_erf" in str(info.value)
    assert info.value.code == "unsupported_model"


def test_softmax_over_a_middle_axis_is_moved_last_and_back(run_model):
    model = _model([helper.make_node("Softmax", ["x"], ["y"], name="sm", axis=1)],
                   [("x", ["N", 3, 5])], ["N", 3, 5])
    x = RNG.standard_normal((2, 3, 5)).astype(np.float32)
    np.testing.assert_allclose(run_model("tflite", export_tflite(model), x), run_model("onnx", model, x),
                               atol=TOLERANCE)


def test_grouped_convolution_is_rejected_clearly():
    model = _conv_model(["N", 4, 7, 7], _w(4, 2, 3, 3), None, kernel_shape=[3, 3], group=2)
    with pytest.raises(UnsupportedModelError, match="group"):
        export_tflite(model)


def test_constant_node_weights_are_exported(run_model):
    weight = _w(4, 3)
    nodes = [helper.make_node("Constant", [], ["w"], name="const",
                              value=numpy_helper.from_array(weight, "w")),
             helper.make_node("MatMul", ["x", "w"], ["y"], name="mm")]
    model = _model(nodes, [("x", ["N", 4])], ["N", 3])
    x = RNG.standard_normal((5, 4)).astype(np.float32)
    np.testing.assert_allclose(run_model("tflite", export_tflite(model), x),
                               run_model("onnx", model, x), atol=TOLERANCE)
    onnx.checker.check_model(onnx.load_model_from_string(model))
