"""Malformed, truncated or unsupported inputs give clear errors, never tracebacks from deep inside."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper

from edgefleet.compression import CompressionConfig, GateConfig, Mode, PruningConfig, compress
from edgefleet.protocol.errors import CompressionError, ConfigError, EdgeFleetError, UnsupportedModelError


def _quick(mode: Mode = Mode.DYNAMIC_INT8) -> CompressionConfig:
    return CompressionConfig(mode=mode, latency_runs=0)


@pytest.mark.parametrize("cut", [0.1, 0.5, 0.9])
@pytest.mark.parametrize("runtime", ["onnx", "tflite"])
def test_truncated_onnx_is_a_compression_error(samples, runtime, cut):
    model, calibration, eval_x, _ = samples["mlp"]
    with pytest.raises(CompressionError) as info:
        compress(model[: int(len(model) * cut)], runtime, _quick(), eval_x=eval_x)
    assert "model" in str(info.value)


@pytest.mark.parametrize("cut", [0.05, 0.5, 0.95])
def test_truncated_tflite_is_a_compression_error(mlp_tflite, samples, cut):
    _, _, eval_x, _ = samples["mlp"]
    with pytest.raises(CompressionError):
        compress(mlp_tflite[: int(len(mlp_tflite) * cut)], "tflite", _quick(), eval_x=eval_x)


@pytest.mark.parametrize("data", [b"", b"garbage that is not a model", bytes(range(256)) * 4])
def test_garbage_is_a_compression_error(data, samples):
    _, _, eval_x, _ = samples["mlp"]
    with pytest.raises(CompressionError):
        compress(data, "onnx", _quick(), eval_x=eval_x)


def test_unsupported_operator_for_tflite_target_is_named(samples):
    graph = helper.make_graph(
        [helper.make_node("Erf", ["input"], ["probabilities"], name="the_erf")], "g",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 10])],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["N", 10])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    x = np.random.default_rng(0).standard_normal((8, 10)).astype(np.float32)
    with pytest.raises(UnsupportedModelError, match="Erf.*the_erf|the_erf.*Erf"):
        compress(model.SerializeToString(), "tflite", _quick(), eval_x=x)


def test_old_opset_is_upgraded():  # no longer refused (issue 10): see test_onnx_reach.py
    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"])], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 9)])
    model.ir_version = 4
    result = compress(model.SerializeToString(), "onnx", _quick(Mode.NONE),
                      eval_x=np.zeros((1, 2), np.float32))
    assert result.report.conversions == ["opset 9 -> 13 (onnx.version_converter)"]


def test_tflite_model_cannot_target_onnx(mlp_tflite, samples):
    with pytest.raises(UnsupportedModelError):
        compress(mlp_tflite, "onnx", _quick(), eval_x=samples["mlp"][2])


def test_pruning_a_tflite_model_is_unsupported(mlp_tflite, samples):
    config = CompressionConfig(mode=Mode.NONE, pruning=PruningConfig(sparsity=0.5))
    with pytest.raises(UnsupportedModelError, match="ONNX source"):
        compress(mlp_tflite, "tflite", config, eval_x=samples["mlp"][2])


@pytest.mark.parametrize(("config", "kwargs", "where"), [
    (CompressionConfig(mode=Mode.STATIC_INT8), {"eval_x": "x"}, "calibration"),
    (CompressionConfig(mode=Mode.WEIGHT_ONLY_INT8), {"eval_x": "x"}, "mode"),
    (CompressionConfig(), {}, "eval_x"),
    (CompressionConfig(), {"eval_x": "x", "eval_y": np.zeros(3)}, "eval_y"),
])
def test_contradictory_settings_are_config_errors(samples, config, kwargs, where):
    model, _, eval_x, _ = samples["mlp"]
    kwargs = {k: (eval_x if isinstance(v, str) else v) for k, v in kwargs.items()}
    with pytest.raises(ConfigError) as info:
        compress(model, "onnx", config, **kwargs)
    assert info.value.where == where


def test_unknown_runtime(samples):
    model, _, eval_x, _ = samples["mlp"]
    with pytest.raises(ConfigError):
        compress(model, "tensorrt", CompressionConfig(), eval_x=eval_x)  # type: ignore[arg-type]


def test_no_data_with_gate_disabled_still_compresses(samples):
    model = samples["mlp"][0]
    result = compress(model, "onnx", CompressionConfig(gate=GateConfig(enabled=False)))
    assert result.report.fidelity is None and result.report.latency is None
    assert result.report.size.ratio > 3


def test_errors_share_the_hierarchy():
    assert issubclass(CompressionError, EdgeFleetError)
