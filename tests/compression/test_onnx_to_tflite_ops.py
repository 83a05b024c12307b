"""The operators real convolutional models need: each exported graph matches ONNX Runtime."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgefleet.compression.onnx_to_tflite import export_model, export_tflite, fold_batch_norm
from edgefleet.compression.resize_modes import Axis, linear_flags, nearest_flags
from edgefleet.compression.tflite_graph import load_tflite, operators
from edgefleet.protocol.errors import UnsupportedModelError

RNG = np.random.default_rng(11)
TOLERANCE = 1e-4
IMAGE = ["N", 3, 6, 6]


def _w(*shape):
    return RNG.standard_normal(shape).astype(np.float32)


def _model(nodes, inits=None, shape=IMAGE, opset=17) -> onnx.ModelProto:
    """x -> nodes -> y, the output typed by ONNX shape inference."""
    graph = helper.make_graph(
        nodes, "ops", [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        initializer=[numpy_helper.from_array(np.asarray(v), k) for k, v in (inits or {}).items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    inferred = onnx.shape_inference.infer_shapes(model)
    assert inferred.graph.output[0].type.tensor_type.HasField("shape")
    model.graph.output[0].CopyFrom(inferred.graph.output[0])
    return model


def _conv(output="c", channels=4, kernel=3):
    """A Conv from the 3-channel input, so what follows sees an NHWC value."""
    return (helper.make_node("Conv", ["x", "cw", "cb"], [output], name="conv", kernel_shape=[kernel, kernel],
                             pads=[kernel // 2] * 4),
            {"cw": _w(channels, 3, kernel, kernel), "cb": _w(channels)})


def _after_conv(*nodes, opset=17, **inits):
    conv, conv_inits = _conv()
    return _model([conv, *nodes], {**conv_inits, **inits}, opset=opset)


def _node(op, inputs, **attrs):
    return helper.make_node(op, inputs, ["y"], name=op.lower(), **attrs)


def _bn_inits(c):
    return {"g": _w(c), "bb": _w(c), "mean": _w(c), "var": np.abs(_w(c)) + 0.5}


def _resize(mode, coord, scales=(1, 1, 2, 2), sizes=None, **attrs):
    inputs = ["c", "", "s"] if sizes is None else ["c", "", "", "sz"]
    inits = {"s": np.array(scales, np.float32)} if sizes is None else {"sz": np.array(sizes, np.int64)}
    return _after_conv(_node("Resize", inputs, mode=mode, coordinate_transformation_mode=coord, **attrs), **inits)


def _flatten_by_shape():
    """What PyTorch exports for x.view(x.size(0), -1) with a dynamic batch."""
    conv, inits = _conv()
    nodes = [conv, helper.make_node("Shape", ["c"], ["s"]), helper.make_node("Gather", ["s", "i0"], ["n"]),
             helper.make_node("Unsqueeze", ["n", "ax0"], ["n1"]),
             helper.make_node("Concat", ["n1", "minus1"], ["target"], axis=0),
             _node("Reshape", ["c", "target"])]
    return _model(nodes, {**inits, "i0": np.array(0, np.int64), "ax0": np.array([0], np.int64),
                          "minus1": np.array([-1], np.int64)})


def _split_and_swap(opset=17, **attrs):
    conv, inits = _conv()
    split_inputs = ["c", "sizes"] if "sizes" not in attrs and opset < 18 else ["c"]
    attrs.pop("sizes", None)
    nodes = [conv, helper.make_node("Split", split_inputs, ["a", "b"], name="split", axis=1, **attrs),
             _node("Concat", ["b", "a"], axis=1)]
    return _model(nodes, {**inits, **({"sizes": np.array([1, 3], np.int64)} if split_inputs[1:] else {})},
                  opset=opset)


CASES = {
    # BatchNormalization
    "bn_folded_into_conv": lambda: _after_conv(_node("BatchNormalization", ["c", "g", "bb", "mean", "var"],
                                                     epsilon=1e-3), **_bn_inits(4)),
    "bn_standalone_nchw_input": lambda: _model([_node("BatchNormalization", ["x", "g", "bb", "mean", "var"])],
                                               _bn_inits(3)),
    "bn_standalone_on_nhwc": lambda: _after_conv(
        helper.make_node("BatchNormalization", ["c", "g", "bb", "mean", "var"], ["n"], name="bn"),
        _node("Add", ["n", "c"]), **_bn_inits(4)),  # the Conv feeds two nodes: not folded
    "bn_2d": lambda: _model([_node("BatchNormalization", ["x", "g", "bb", "mean", "var"])], _bn_inits(5),
                            shape=["N", 5]),
    # activations
    "prelu_channels": lambda: _after_conv(_node("PRelu", ["c", "slope"]), slope=_w(4, 1, 1)),
    "prelu_2d": lambda: _model([_node("PRelu", ["x", "slope"])], {"slope": _w(5)}, shape=["N", 5]),
    "leaky_relu": lambda: _after_conv(_node("LeakyRelu", ["c"], alpha=0.1)),
    "hard_sigmoid": lambda: _after_conv(_node("HardSigmoid", ["c"], alpha=0.3, beta=0.4)),
    "hard_swish": lambda: _after_conv(_node("HardSwish", ["c"])),
    "elu": lambda: _after_conv(_node("Elu", ["c"])),
    "sigmoid_nhwc": lambda: _after_conv(_node("Sigmoid", ["c"])),
    "tanh_nhwc": lambda: _after_conv(_node("Tanh", ["c"])),
    "clip_relu_n1_to_1": lambda: _after_conv(_node("Clip", ["c", "lo", "hi"]), lo=np.array(-1.0, np.float32),
                                             hi=np.array(1.0, np.float32)),
    "clip_max_only": lambda: _after_conv(_node("Clip", ["c", "", "hi"]), hi=np.array(0.5, np.float32)),
    # Resize (opset 13+) and Upsample
    "resize_nearest_half_pixel": lambda: _resize("nearest", "half_pixel"),
    "resize_nearest_asymmetric_floor": lambda: _resize("nearest", "asymmetric", nearest_mode="floor"),
    "resize_nearest_align_corners_sizes": lambda: _resize("nearest", "align_corners", sizes=[2, 4, 11, 9],
                                                          nearest_mode="round_prefer_ceil"),
    "resize_nearest_downscale": lambda: _resize("nearest", "half_pixel", scales=(1, 1, 0.5, 0.5)),
    "resize_nearest_1_5": lambda: _resize("nearest", "pytorch_half_pixel", scales=(1, 1, 1.5, 1.5)),
    "resize_linear_half_pixel": lambda: _resize("linear", "half_pixel"),
    "resize_linear_pytorch_half_pixel": lambda: _resize("linear", "pytorch_half_pixel", scales=(1, 1, 1.5, 1.5)),
    "resize_linear_align_corners": lambda: _resize("linear", "align_corners", sizes=[2, 4, 7, 13]),
    "resize_linear_asymmetric": lambda: _resize("linear", "asymmetric", scales=(1, 1, 0.5, 0.5)),
    "resize_axes_attribute": lambda: _after_conv(_node("Resize", ["c", "", "s"], mode="linear", axes=[2, 3]),
                                                 opset=18, s=np.array([2, 2], np.float32)),
    # Pad
    "pad_zeros_plain": lambda: _model([_node("Pad", ["x", "p"])], {"p": np.array([0, 0, 1, 2, 0, 1, 2, 0])}),
    "pad_value_nhwc": lambda: _after_conv(_node("Pad", ["c", "p", "v"]), p=np.array([0, 1, 1, 0, 0, 0, 2, 1]),
                                          v=np.array(1.5, np.float32)),
    "pad_reflect_nhwc": lambda: _after_conv(_node("Pad", ["c", "p"], mode="reflect"),
                                            p=np.array([0, 0, 2, 1, 0, 0, 1, 2])),
    "pad_axes": lambda: _after_conv(_node("Pad", ["c", "p", "", "axes"]), opset=18,
                                    p=np.array([1, 2, 0, 3]), axes=np.array([2, 3])),
    # Transpose, Reshape chains, Flatten, Squeeze / Unsqueeze
    "transpose_to_nhwc": lambda: _after_conv(_node("Transpose", ["c"], perm=[0, 2, 3, 1])),
    "transpose_hw_of_nhwc": lambda: _after_conv(_node("Transpose", ["c"], perm=[0, 1, 3, 2])),
    "transpose_3d": lambda: _model([_node("Transpose", ["x"], perm=[2, 0, 1])], shape=["N", 4, 5]),
    "transpose_then_reshape": lambda: _after_conv(
        helper.make_node("Transpose", ["c"], ["t"], name="t", perm=[0, 2, 3, 1]),
        _node("Reshape", ["t", "s"]), s=np.array([0, -1, 2], np.int64)),
    "reshape_by_shape_chain": _flatten_by_shape,
    "reshape_chain": lambda: _after_conv(helper.make_node("Reshape", ["c", "s1"], ["r"], name="r1"),
                                         _node("Reshape", ["r", "s2"]), s1=np.array([0, 4, 36], np.int64),
                                         s2=np.array([0, 2, 2, -1], np.int64)),
    "flatten_axis_2": lambda: _after_conv(_node("Flatten", ["c"], axis=2)),
    "unsqueeze_squeeze": lambda: _after_conv(helper.make_node("Unsqueeze", ["c", "a"], ["u"], name="u"),
                                             _node("Squeeze", ["u", "a"]), a=np.array([1], np.int64)),
    "squeeze_pooled": lambda: _after_conv(helper.make_node("GlobalAveragePool", ["c"], ["p"], name="gap"),
                                          _node("Squeeze", ["p", "a"]), a=np.array([2, 3], np.int64)),
    # Concat, Split, Slice
    "concat_two_convs": lambda: _model([_conv("c1")[0], helper.make_node("Conv", ["x", "w2"], ["c2"], name="c2",
                                                                         kernel_shape=[1, 1]),
                                        _node("Concat", ["c1", "c2"], axis=1)],
                                       {**_conv("c1")[1], "w2": _w(2, 3, 1, 1)}),
    "split_channels": _split_and_swap,
    "split_equal": lambda: _split_and_swap(opset=18, num_outputs=2),
    "slice_hw_steps": lambda: _after_conv(_node("Slice", ["c", "st", "en", "ax", "sp"]), st=np.array([1, 0]),
                                          en=np.array([2**62, 5]), ax=np.array([2, 3]), sp=np.array([2, 2])),
    "slice_negative_step": lambda: _after_conv(_node("Slice", ["c", "st", "en", "ax", "sp"]), st=np.array([-1]),
                                               en=np.array([-(2**62)]), ax=np.array([3]), sp=np.array([-1])),
    "slice_channels": lambda: _after_conv(_node("Slice", ["c", "st", "en", "ax"]), st=np.array([1]),
                                          en=np.array([-1]), ax=np.array([1])),
    "slice_2d": lambda: _model([_node("Slice", ["x", "st", "en"])], {"st": np.array([0, 2]),
                                                                      "en": np.array([2**62, 4])}, shape=["N", 6]),
    # reductions and pools
    "reduce_mean_hw_keepdims": lambda: _after_conv(_node("ReduceMean", ["c"], axes=[2, 3])),
    "reduce_mean_hw": lambda: _after_conv(_node("ReduceMean", ["c"], axes=[-2, -1], keepdims=0)),
    "reduce_mean_channels": lambda: _after_conv(_node("ReduceMean", ["c"], axes=[1], keepdims=0)),
    "reduce_max_axes_input": lambda: _after_conv(_node("ReduceMax", ["c", "a"], keepdims=0), opset=18,
                                                 a=np.array([1, 3])),
    "reduce_sum_batch": lambda: _after_conv(_node("ReduceSum", ["c", "a"], keepdims=0), a=np.array([0])),
    "global_max_pool": lambda: _after_conv(_node("GlobalMaxPool", ["c"])),
    "maxpool_same_pads": lambda: _after_conv(_node("MaxPool", ["c"], kernel_shape=[2, 2], pads=[0, 0, 1, 1])),
    "maxpool_explicit_pads": lambda: _after_conv(_node("MaxPool", ["c"], kernel_shape=[2, 2], pads=[1, 0, 0, 1])),
    "maxpool_ceil_mode": lambda: _after_conv(_node("MaxPool", ["c"], kernel_shape=[3, 3], strides=[2, 2],
                                                   ceil_mode=1, pads=[0, 0, 0, 0])),
    "avgpool_pads_exclude": lambda: _after_conv(_node("AveragePool", ["c"], kernel_shape=[3, 3],
                                                      pads=[1, 0, 0, 1])),
    "avgpool_pads_include": lambda: _after_conv(_node("AveragePool", ["c"], kernel_shape=[3, 3],
                                                      pads=[1, 1, 1, 1], count_include_pad=1)),
    "avgpool_ceil_mode": lambda: _after_conv(_node("AveragePool", ["c"], kernel_shape=[2, 2], strides=[2, 2],
                                                   ceil_mode=1, pads=[1, 1, 0, 0])),
}


def _compare(model: onnx.ModelProto, run_model, batch=2) -> bytes:
    """Export, then run both on one random input (unknown dimensions: ``batch``)."""
    data = model.SerializeToString()
    exported = export_tflite(data)
    shape = [d.dim_value or batch for d in model.graph.input[0].type.tensor_type.shape.dim]
    x = RNG.standard_normal(shape).astype(np.float32)
    expected = run_model("onnx", data, x)
    actual = run_model("tflite", exported, x)
    assert actual.shape == expected.shape
    np.testing.assert_allclose(actual, expected, atol=TOLERANCE, rtol=TOLERANCE)
    return exported


@pytest.mark.parametrize("case", sorted(CASES))
def test_operator_matches_onnx_runtime(case, run_model):
    _compare(CASES[case](), run_model)


def _op_types(exported: bytes) -> list[str]:
    return [op.op_type for op in operators(load_tflite(exported))]


def test_batch_norm_after_conv_is_folded_into_its_weights(run_model):
    model = CASES["bn_folded_into_conv"]()
    ops = _op_types(_compare(model, run_model))
    assert ops == ["TRANSPOSE", "CONV_2D", "TRANSPOSE"]
    folded = fold_batch_norm(model)
    assert [n.op_type for n in folded.graph.node] == ["Conv"]
    assert folded.graph.node[0].output[0] == "y"


def test_max_pool_pads_with_the_lowest_float(run_model):
    assert "PADV2" in _op_types(_compare(CASES["maxpool_explicit_pads"](), run_model))


def test_standalone_batch_norm_is_mul_and_add(run_model):
    assert _op_types(_compare(CASES["bn_standalone_nchw_input"](), run_model)) == ["MUL", "ADD"]


def test_transpose_to_channels_last_reuses_the_nhwc_tensor(run_model):
    assert _op_types(_compare(CASES["transpose_to_nhwc"](), run_model)) == ["TRANSPOSE", "CONV_2D"]


def test_shape_arithmetic_is_resolved_for_a_dynamic_batch(run_model):
    exported = _compare(_flatten_by_shape(), run_model, batch=3)
    assert "SHAPE" not in _op_types(exported) and "GATHER" not in _op_types(exported)


def test_resize_with_unknown_spatial_size_computes_the_size(run_model):
    conv, inits = _conv()
    model = _model([conv, _node("Resize", ["c", "", "s"], mode="nearest", coordinate_transformation_mode="asymmetric",
                                nearest_mode="floor")],
                   {**inits, "s": np.array([1, 1, 2, 3], np.float32)}, shape=["N", 3, "H", "W"])
    exported = model.SerializeToString()
    for shape in [(1, 3, 5, 7), (2, 3, 4, 4)]:
        x = RNG.standard_normal(shape).astype(np.float32)
        np.testing.assert_allclose(run_model("tflite", export_tflite(exported), x),
                                   run_model("onnx", exported, x), atol=TOLERANCE)
    assert "SHAPE" in _op_types(export_tflite(exported))


@pytest.mark.parametrize("mode", ["nearest", "linear"])
@pytest.mark.parametrize(("op", "opset", "scales"), [("Upsample", 9, [1, 1, 2, 3]), ("Resize", 10, [1, 1, 0.5, 0.5]),
                                                     ("Resize", 10, [1, 1, 1.5, 1.5])])
def test_upsample_and_resize_of_old_opsets(run_model, mode, op, opset, scales):
    model = _model([_node(op, ["x", "s"], mode=mode)], {"s": np.array(scales, np.float32)}, opset=opset)
    x = RNG.standard_normal((2, 3, 6, 6)).astype(np.float32)
    np.testing.assert_allclose(run_model("tflite", export_model(model), x),
                               run_model("onnx", model.SerializeToString(), x), atol=TOLERANCE)


def _refusal(model: onnx.ModelProto) -> str:
    with pytest.raises(UnsupportedModelError) as info:
        export_tflite(model.SerializeToString())
    return str(info.value)


@pytest.mark.parametrize(("model", "words"), [
    (lambda: _resize("cubic", "half_pixel"), ["Resize", "resize", "cubic"]),
    (lambda: _resize("linear", "tf_crop_and_resize"), ["Resize", "tf_crop_and_resize"]),
    (lambda: _resize("nearest", "asymmetric", scales=(1, 1, 3, 3), nearest_mode="round_prefer_ceil"),
     ["asymmetric", "round_prefer_ceil"]),
    (lambda: _resize("linear", "half_pixel", scales=(1, 1, 1.3, 1.3)), ["1.3", "whole"]),
    (lambda: _after_conv(_node("Pad", ["c", "p"], mode="edge"), p=np.array([0, 0, 1, 1, 0, 0, 1, 1])),
     ["Pad", "'pad'", "edge"]),
    (lambda: _after_conv(_node("Pad", ["c", "p"]), p=np.array([0, 0, -1, 0, 0, 0, 0, 0])), ["Pad", "negative"]),
    (lambda: _after_conv(_node("Elu", ["c"], alpha=0.5)), ["Elu", "alpha"]),
    (lambda: _after_conv(_node("ConvTranspose", ["c", "w"]), w=_w(4, 2, 2, 2)),
     ["ConvTranspose", "'convtranspose'", "no TFLite mapping"]),
    (lambda: _after_conv(_node("Slice", ["c", "st", "en", "ax", "sp"]), st=np.array([0]), en=np.array([2]),
                         ax=np.array([0]), sp=np.array([-1])), ["Slice", "negative step", "unknown length"]),
])
def test_what_tflite_cannot_express_is_refused_by_name(model, words):
    message = _refusal(model())
    for word in words:
        assert word in message


def test_nearest_flags_follow_the_onnx_rounding():
    up2 = [Axis(4, 8, 2.0)]
    assert nearest_flags("half_pixel", "round_prefer_floor", up2) == (False, False)  # same pixels as floor(x/2)
    assert nearest_flags("half_pixel", "round_prefer_ceil", [Axis(4, 6, 1.5)]) == (False, True)
    assert nearest_flags("asymmetric", "floor", up2) == (False, False)
    assert nearest_flags("align_corners", "round_prefer_ceil", [Axis(4, 7, 7 / 4)]) == (True, False)
    assert nearest_flags("asymmetric", "ceil", [Axis(6, 9, 1.5)]) is None
    assert nearest_flags("half_pixel_symmetric", "floor", up2) is None


def test_linear_flags_map_the_modes_tflite_has():
    axes = [Axis(4, 8, 2.0)]
    assert linear_flags("half_pixel", axes) == (False, True)
    assert linear_flags("align_corners", axes) == (True, False)
    assert linear_flags("asymmetric", axes) == (False, False)
    assert linear_flags("pytorch_half_pixel", [Axis(4, 1, 0.25)]) is None
    assert linear_flags("tf_crop_and_resize", axes) is None
