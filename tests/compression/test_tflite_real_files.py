"""TFLite files as older converters and real packages write them: deprecated operator codes,
float16 weights behind DEQUANTIZE, no signatures, several inputs; quantizer errors that name
the operator."""

from __future__ import annotations

import numpy as np
import pytest
import tflite_edit as te
from ai_edge_litert import schema_py_generated as tfl
from onnx import TensorProto, helper, numpy_helper

from edgefleet.compression import CompressionConfig, Mode, compress
from edgefleet.compression.onnx_to_tflite import export_tflite
from edgefleet.compression.quantize_tflite import candidates, quantize_tflite
from edgefleet.compression.tflite_graph import (
    count_quantized_weights,
    load_tflite,
    normalise_operator_codes,
    operators,
)
from edgefleet.protocol.errors import CompressionError, ConfigError

FC = tfl.BuiltinOperator.FULLY_CONNECTED
DEQUANTIZE = tfl.BuiltinOperator.DEQUANTIZE
INT8_MODES = [Mode.DYNAMIC_INT8, Mode.WEIGHT_ONLY_INT8, Mode.STATIC_INT8]
MIN_RATIO = {Mode.DYNAMIC_INT8: 3.3, Mode.STATIC_INT8: 3.3, Mode.WEIGHT_ONLY_INT8: 3.3, Mode.FP16: 1.9}


def _quantize(model: bytes, mode: Mode, calibration: np.ndarray | dict | None = None,
              exclude: list[str] | None = None) -> bytes:
    return quantize_tflite(model, mode, per_channel=mode is Mode.STATIC_INT8, exclude=exclude or [],
                           calibration=calibration)


# -- operator codes ----------------------------------------------------------------------------


def test_normalise_operator_codes_restores_the_real_codes(mlp_tflite):
    gelu = tfl.BuiltinOperator.GELU  # above 127: 127 in the deprecated field
    old = te.deprecated_codes(mlp_tflite, extra=(gelu,))
    assert all(builtin == 0 for builtin, deprecated in te.codes(old) if deprecated < te.PLACEHOLDER)
    fixed = te.codes(normalise_operator_codes(old))
    expected = [(code, code) for code, _ in te.codes(mlp_tflite)] + [(gelu, te.PLACEHOLDER)]
    assert fixed == expected
    assert te.op_types(normalise_operator_codes(old)) == te.op_types(mlp_tflite)


def test_normalise_operator_codes_leaves_modern_files_alone(mlp_tflite):
    assert normalise_operator_codes(mlp_tflite) == mlp_tflite


def test_operators_read_deprecated_codes(mlp_tflite):
    old = te.deprecated_codes(mlp_tflite)
    assert operators(load_tflite(old)) == operators(load_tflite(mlp_tflite))
    assert "FULLY_CONNECTED" in {op.op_type for op in operators(load_tflite(old))}


@pytest.mark.parametrize("mode", [*INT8_MODES, Mode.FP16], ids=str)
def test_deprecated_codes_are_quantized(mlp_tflite, samples, mode):
    _, calibration, eval_x, eval_y = samples["mlp"]
    old = te.deprecated_codes(mlp_tflite)
    result = compress(old, "tflite", CompressionConfig(mode=mode, latency_runs=0),
                      calibration=calibration, eval_x=eval_x, eval_y=eval_y)
    assert result.report.size.ratio >= MIN_RATIO[mode]
    assert result.report.gate.enabled and result.report.gate.passed
    assert count_quantized_weights(result.model, mode) == (3, 3)


# -- counting weights ---------------------------------------------------------------------------


def test_count_quantized_weights_per_mode(mlp_tflite, samples):
    calibration = samples["mlp"][1]
    assert count_quantized_weights(mlp_tflite) == (0, 3)
    for mode in INT8_MODES:
        quantized = _quantize(mlp_tflite, mode, calibration)
        assert count_quantized_weights(quantized) == (3, 3), mode
        assert count_quantized_weights(quantized, Mode.FP16) == (0, 3), mode
    fp16 = _quantize(mlp_tflite, Mode.FP16)
    assert count_quantized_weights(fp16) == (3, 3)
    assert count_quantized_weights(fp16, Mode.FP16) == (3, 3)
    assert count_quantized_weights(fp16, Mode.DYNAMIC_INT8) == (0, 3)


def test_count_quantized_weights_counts_only_quantized_operators(mlp_tflite):
    first = candidates(mlp_tflite, Mode.DYNAMIC_INT8)[0]
    partly = _quantize(mlp_tflite, Mode.DYNAMIC_INT8, exclude=[first])
    assert count_quantized_weights(partly) == (2, 3)


# -- float16 weights behind DEQUANTIZE ----------------------------------------------------------


def test_fp16_weights_helper_stores_float16_behind_dequantize(mlp_tflite):
    fp16 = te.fp16_weights(mlp_tflite)
    assert te.op_types(fp16).count(DEQUANTIZE) == 3
    assert len(fp16) < 0.6 * len(mlp_tflite)
    assert count_quantized_weights(fp16) == (3, 3)
    assert count_quantized_weights(fp16, Mode.DYNAMIC_INT8) == (0, 3)


@pytest.mark.parametrize("mode", INT8_MODES, ids=str)
def test_fp16_weights_are_dequantized_then_quantized(mlp_tflite, samples, mode):
    _, calibration, eval_x, eval_y = samples["mlp"]
    fp16 = te.fp16_weights(mlp_tflite)
    assert len(candidates(fp16, mode)) >= 3
    result = compress(fp16, "tflite", CompressionConfig(mode=mode, latency_runs=0),
                      calibration=calibration, eval_x=eval_x, eval_y=eval_y)
    assert count_quantized_weights(result.model, mode) == (3, 3)
    assert result.report.size.ratio >= 1.6  # float16 -> int8 weights, from an already small file
    assert result.report.gate.enabled and result.report.gate.passed
    if mode is Mode.DYNAMIC_INT8:  # the float16 constants and their DEQUANTIZE are gone
        assert DEQUANTIZE not in te.op_types(result.model)


def test_fp16_mode_on_float16_weights_changes_nothing(mlp_tflite):
    fp16 = te.fp16_weights(mlp_tflite)
    assert candidates(fp16, Mode.FP16) == []
    assert _quantize(fp16, Mode.FP16) == fp16


def test_weights_kept_in_float_stay_float16(mlp_tflite):
    fp16 = te.fp16_weights(mlp_tflite)
    first = candidates(fp16, Mode.DYNAMIC_INT8)[0]
    partly = _quantize(fp16, Mode.DYNAMIC_INT8, exclude=[first])
    assert count_quantized_weights(partly, Mode.DYNAMIC_INT8) == (2, 3)
    assert count_quantized_weights(partly, Mode.FP16) == (1, 3)  # the excluded one: not made float32
    assert len(partly) < len(fp16)


# -- full int8 without signatures ---------------------------------------------------------------


def test_full_int8_without_signature(mlp_tflite, samples, run_model):
    _, calibration, eval_x, eval_y = samples["mlp"]
    bare = te.without_signatures(mlp_tflite)
    assert not te.parse(bare).signatureDefs
    result = compress(bare, "tflite", CompressionConfig(mode=Mode.STATIC_INT8, latency_runs=0),
                      calibration=calibration, eval_x=eval_x, eval_y=eval_y)
    assert result.report.gate.enabled and result.report.gate.passed
    assert result.report.size.ratio >= 3.3
    assert count_quantized_weights(result.model) == (3, 3)
    out = run_model("tflite", result.model, eval_x[:20])
    assert (out.argmax(1) == eval_y[:20]).mean() >= 0.85


def _two_input_onnx(seed: int = 0) -> bytes:
    """x[N, 4] and state[N, 4] -> Concat -> MatMul+Relu -> MatMul -> y[N, 4]."""
    rng = np.random.default_rng(seed)
    w1 = rng.normal(0, 0.4, (8, 256)).astype(np.float32)
    w2 = rng.normal(0, 0.1, (256, 4)).astype(np.float32)
    nodes = [helper.make_node("Concat", ["x", "state"], ["xs"], axis=1),
             helper.make_node("MatMul", ["xs", "w1"], ["m1"]),
             helper.make_node("Relu", ["m1"], ["h"]),
             helper.make_node("MatMul", ["h", "w2"], ["y"])]
    graph = helper.make_graph(
        nodes, "two_inputs",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4]),
         helper.make_tensor_value_info("state", TensorProto.FLOAT, ["N", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])],
        [numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(w2, "w2")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    return model.SerializeToString()


def _two_input_data(n: int = 200) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(1)
    return {"x": rng.normal(size=(n, 4)).astype(np.float32),
            "state": rng.normal(size=(n, 4)).astype(np.float32)}


def _run(model: bytes, data: dict[str, np.ndarray]) -> np.ndarray:
    """The first output, straight from LiteRT, every input fed by tensor name."""
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_content=model)
    interpreter.allocate_tensors()
    for detail in interpreter.get_input_details():
        interpreter.set_tensor(detail["index"], data[detail["name"]][:1])
    interpreter.invoke()
    return interpreter.get_tensor(interpreter.get_output_details()[0]["index"]).copy()


def test_full_int8_without_signature_feeds_every_input():
    bare = te.without_signatures(export_tflite(_two_input_onnx()))
    data = _two_input_data()
    result = compress(bare, "tflite", CompressionConfig(mode=Mode.STATIC_INT8, latency_runs=0),
                      calibration=data, eval_x=data)
    assert result.report.gate.enabled and result.report.gate.passed
    assert count_quantized_weights(result.model) == (2, 2)
    original, quantized = _run(bare, data), _run(result.model, data)
    cosine = float((original * quantized).sum() / np.linalg.norm(original) / np.linalg.norm(quantized))
    assert cosine > 0.99


def test_calibration_by_tensor_name_when_signature_names_differ():
    model = te.parse(export_tflite(_two_input_onnx()))
    for entry in model.signatureDefs[0].inputs:  # as TF converters name them
        entry.name = "serving_" + (entry.name.decode() if isinstance(entry.name, bytes) else entry.name)
    quantized = _quantize(te.pack(model), Mode.STATIC_INT8, _two_input_data(50))
    assert count_quantized_weights(quantized) == (2, 2)


def test_calibration_missing_an_input_says_which():
    bare = te.without_signatures(export_tflite(_two_input_onnx()))
    with pytest.raises(ConfigError, match="state") as info:
        _quantize(bare, Mode.STATIC_INT8, {"x": _two_input_data(10)["x"]})
    assert info.value.where == "calibration"


# -- quantizer errors name the operator ---------------------------------------------------------


def _failing_on(monkeypatch, index: int, error: Exception) -> None:
    """Make litert-quantizer fail while it works on the operator at ``index`` of subgraph 0."""
    from litert_quantizer import algorithm_manager

    real = algorithm_manager.get_quantization_func

    def patched(algorithm, op_name, mode):
        func = real(algorithm, op_name, mode)

        def quantize(op_info, **kwargs):
            if op_info.subgraph_op_index == index:
                raise error
            return func(op_info=op_info, **kwargs)
        return quantize

    monkeypatch.setattr(algorithm_manager, "get_quantization_func", patched)


def test_quantizer_failure_names_the_operator(mlp_tflite, monkeypatch):
    ops = operators(load_tflite(mlp_tflite))
    index = [i for i, op in enumerate(ops) if op.op_type == "FULLY_CONNECTED"][1]
    _failing_on(monkeypatch, index, ValueError("unsupported weight shape"))
    with pytest.raises(CompressionError) as info:
        _quantize(mlp_tflite, Mode.DYNAMIC_INT8)
    error = info.value
    assert f"FULLY_CONNECTED {ops[index].output!r}" in error.message
    assert "unsupported weight shape" in error.message
    assert error.where == f"operator {ops[index].output!r}"
    assert error.hint


def test_quantizer_failure_named_in_the_message(mlp_tflite, monkeypatch):
    ops = operators(load_tflite(mlp_tflite))
    name = [op.output for op in ops if op.op_type == "FULLY_CONNECTED"][-1]
    from litert_quantizer import quantizer

    def broken(self, *args, **kwargs):
        raise KeyError(f"tensor {name} has no quantization parameters")

    monkeypatch.setattr(quantizer.Quantizer, "quantize", broken)
    with pytest.raises(CompressionError) as info:
        _quantize(mlp_tflite, Mode.FP16)
    assert info.value.where == f"operator {name!r}"
    assert "FULLY_CONNECTED" in info.value.message



def test_a_model_with_a_fixed_batch_of_one_is_calibrated_one_sample_at_a_time():
    """An export with a fixed batch of 1 and a fixed-shape Reshape (as keras/onnx exports of
    wake-word heads have): calibration batches of 32 made XNNPack fail to reshape it."""
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.normal(size=(16, 64)).astype(np.float32), "w1"),
             numpy_helper.from_array(np.array([1, 64], np.int64), "shape"),
             numpy_helper.from_array(rng.normal(size=(64, 4)).astype(np.float32), "w2")]
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w1"], ["h0"]),
                               helper.make_node("Reshape", ["h0", "shape"], ["h"]),
                               helper.make_node("Relu", ["h"], ["r"]), helper.make_node("MatMul", ["r", "w2"], ["y"])],
                              "fixed", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 16])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    x = rng.random((32, 16)).astype(np.float32)
    result = compress(model.SerializeToString(), "tflite",
                      CompressionConfig(mode=Mode.STATIC_INT8, latency_runs=0), calibration=x)
    assert result.report.gate.passed and result.report.weights_quantized >= 1
    assert result.report.size.compressed_bytes < result.report.size.original_bytes
