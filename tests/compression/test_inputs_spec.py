"""Inputs the way models take them: specs inferred and overridden, shared state and scalars,
dynamic dimensions, dtypes kept, .npz data by input name, through the API and the CLI."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgefleet.cloud.cli import main
from edgefleet.compression import CompressionConfig, GateConfig, Mode, compress, quantize_onnx
from edgefleet.compression.config import CalibrationConfig, InputsConfig, load_compression_recipe
from edgefleet.compression.inputs import (
    InputSet,
    InputSpec,
    count,
    infer_input_specs,
    load_npz_inputs,
    normalise_inputs,
    resolve_specs,
    take,
)
from edgefleet.compression.onnx_graph import load_onnx, normalise
from edgefleet.protocol.errors import ConfigError

RNG = np.random.default_rng(7)
N = 48
#: One flipped near-tie among 48 random samples is 97.9 % agreement: these tests are about inputs.
GATE = GateConfig(min_top1_agreement=0.9)


def _stateful() -> bytes:
    """x [N, 32] with a recurrent state [2, 1, 64] (shared) and a scalar int64 sample rate:
    y = softmax(x @ W + mean(state) * v + sr / 16000 * u), new_state = state * 0.5."""
    w = RNG.standard_normal((32, 10)).astype(np.float32) * 0.5
    v = RNG.standard_normal(10).astype(np.float32)
    u = RNG.standard_normal(10).astype(np.float32)
    nodes = [
        helper.make_node("MatMul", ["x", "w"], ["xw"]),
        helper.make_node("ReduceMean", ["state"], ["s_mean"], keepdims=0),
        helper.make_node("Mul", ["s_mean", "v"], ["sv"]),
        helper.make_node("Cast", ["sr"], ["sr_f"], to=TensorProto.FLOAT),
        helper.make_node("Div", ["sr_f", "base"], ["sr_n"]),
        helper.make_node("Mul", ["sr_n", "u"], ["su"]),
        helper.make_node("Add", ["xw", "sv"], ["h"]),
        helper.make_node("Add", ["h", "su"], ["logits"]),
        helper.make_node("Softmax", ["logits"], ["y"], axis=-1),
        helper.make_node("Mul", ["state", "half"], ["new_state"]),
    ]
    graph = helper.make_graph(
        nodes, "stateful",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 32]),
         helper.make_tensor_value_info("state", TensorProto.FLOAT, [2, 1, 64]),
         helper.make_tensor_value_info("sr", TensorProto.INT64, [])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 10]),
         helper.make_tensor_value_info("new_state", TensorProto.FLOAT, [2, 1, 64])],
        initializer=[numpy_helper.from_array(w, "w"), numpy_helper.from_array(v, "v"),
                     numpy_helper.from_array(u, "u"),
                     numpy_helper.from_array(np.array(16000.0, np.float32), "base"),
                     numpy_helper.from_array(np.array(0.5, np.float32), "half")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    return model.SerializeToString()


def _stateful_data() -> dict[str, np.ndarray]:
    return {"x": RNG.standard_normal((N, 32)).astype(np.float32),
            "state": RNG.standard_normal((2, 1, 64)).astype(np.float32),
            "sr": np.array(16000, dtype=np.int64)}


def _dynamic_image() -> bytes:
    """x [1, 3, 'h', 'w'] (a fixed batch of one, dynamic height and width) -> conv -> pooled scores."""
    w = RNG.standard_normal((8, 3, 3, 3)).astype(np.float32) * 0.3
    fc = RNG.standard_normal((8, 5)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),
         helper.make_node("Relu", ["c"], ["r"]),
         helper.make_node("GlobalAveragePool", ["r"], ["g"]),
         helper.make_node("Flatten", ["g"], ["f"]),
         helper.make_node("MatMul", ["f", "fc"], ["y"])],
        "dynamic_image", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, "h", "w"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 5])],
        initializer=[numpy_helper.from_array(w, "w"), numpy_helper.from_array(fc, "fc")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model.SerializeToString()


def test_specs_are_inferred_with_symbolic_dims_dtypes_and_sharing():
    specs = {s.name: s for s in infer_input_specs(_stateful())}
    assert specs["x"] == InputSpec("x", "float32", ("N", 32), per_sample=True)
    assert specs["state"] == InputSpec("state", "float32", (2, 1, 64), per_sample=False)
    assert specs["sr"] == InputSpec("sr", "int64", (), per_sample=False)
    image = infer_input_specs(_dynamic_image())[0]
    assert image.shape == (1, 3, "h", "w") and image.per_sample


def test_tflite_specs_are_inferred(mlp_tflite):
    (spec,) = infer_input_specs(mlp_tflite)
    assert spec.dtype == "float32" and spec.shape == (None, 64) and spec.per_sample


def test_recipe_overrides_the_inferred_specs():
    config = load_compression_recipe({"compression": {"inputs": {
        "state": {"per_sample": True}, "x": {"shape": [-1, 32], "range": [-10, 10]},
        "sr": {"dtype": "int32"}}}})
    specs = {s.name: s for s in resolve_specs(infer_input_specs(_stateful()), config.inputs)}
    assert specs["state"].per_sample and specs["x"].range == (-10.0, 10.0)
    assert specs["x"].shape == (None, 32) and specs["sr"].dtype == "int32"
    with pytest.raises(ConfigError, match="no input 'nope'") as info:
        resolve_specs(infer_input_specs(_stateful()), {"nope": InputsConfig(per_sample=False)})
    assert info.value.where == "[compression.inputs.nope]"


@pytest.mark.parametrize(("table", "problem"), [({"dtype": "floaty"}, "unknown dtype"),
                                                ({"range": [1, 0]}, "low < high"),
                                                ({"shape": [1, -3]}, "dimensions")])
def test_bad_input_tables_are_config_errors(table, problem):
    with pytest.raises(ConfigError, match=problem):
        load_compression_recipe({"compression": {"inputs": {"x": table}}})


def test_shared_and_scalar_inputs_are_fed_as_is_and_dtypes_kept():
    specs = infer_input_specs(_stateful())
    data = normalise_inputs(_stateful_data(), "calibration", specs)
    assert isinstance(data, InputSet) and data.shared == {"state", "sr"}
    assert data["sr"].dtype == np.int64 and data["sr"].ndim == 0
    assert count(data) == N
    part = take(data, 4, 9)
    assert part["x"].shape == (5, 32) and part["state"].shape == (2, 1, 64) and part["sr"] == 16000
    assert part["sr"].dtype == np.int64


def test_a_scalar_without_specs_no_longer_breaks_count():
    data = normalise_inputs({"x": np.zeros((3, 4)), "sr": np.array(8000)}, "eval_x")
    assert count(data) == 3 and take(data, 0, 1)["sr"] == 8000


@pytest.mark.parametrize(("inputs", "message"), [
    ({"x": np.zeros((4, 32), np.float32)}, "'state' is missing"),
    ({**_stateful_data(), "extra": np.zeros(3)}, "no input 'extra'"),
    ({**_stateful_data(), "state": np.zeros((2, 4, 64), np.float32)}, r"\[2, 4, 64\] does not fit input state"),
    ({**_stateful_data(), "x": np.zeros((4, 31), np.float32)}, r"samples of shape \[31\]"),
])
def test_inputs_that_do_not_match_the_model_are_config_errors(inputs, message):
    with pytest.raises(ConfigError, match=message):
        normalise_inputs(inputs, "calibration", infer_input_specs(_stateful()))


def test_one_array_for_a_model_with_several_inputs_is_refused():
    with pytest.raises(ConfigError, match="3 inputs") as info:
        normalise_inputs(np.zeros((4, 32), np.float32), "eval_x", infer_input_specs(_stateful()))
    assert "state float32 [2, 1, 64] (shared)" in info.value.hint


def test_the_declared_range_catches_wrongly_scaled_data():
    specs = resolve_specs(infer_input_specs(_stateful()), {"x": InputsConfig(range=(0.0, 1.0))})
    with pytest.raises(ConfigError, match="outside the declared range"):
        normalise_inputs(_stateful_data(), "calibration", specs)


def test_dynamic_dims_compare_only_fixed_dims():
    specs = infer_input_specs(_dynamic_image())
    assert normalise_inputs(RNG.random((6, 3, 48, 192), dtype=np.float32), "x", specs).shape == (6, 3, 48, 192)
    with pytest.raises(ConfigError, match="does not fit"):
        normalise_inputs(RNG.random((6, 4, 48, 192), dtype=np.float32), "x", specs)


@pytest.mark.parametrize("mode", [Mode.DYNAMIC_INT8, Mode.STATIC_INT8])
def test_a_model_with_dynamic_height_and_width_compresses(mode):
    x = RNG.random((24, 3, 20, 28), dtype=np.float32)
    config = CompressionConfig(mode=mode, latency_runs=2, gate=GATE, allow_no_gain=mode is Mode.STATIC_INT8)
    result = compress(_dynamic_image(), "onnx", config, calibration=x, eval_x=x)
    assert result.report.fidelity.samples == 24
    assert result.report.weights_quantized == 2


@pytest.mark.parametrize("mode", [Mode.DYNAMIC_INT8, Mode.STATIC_INT8, Mode.FP16])
def test_state_and_scalar_inputs_through_compress(mode):
    data = _stateful_data()
    # QDQ nodes (static) and Casts (fp16) outweigh 320 weights: larger (see test_no_silent_noop)
    config = CompressionConfig(mode=mode, latency_runs=3, gate=GATE, allow_no_gain=mode is not Mode.DYNAMIC_INT8)
    result = compress(_stateful(), "onnx", config, calibration=data, eval_x=data)
    assert result.report.gate.passed
    assert result.report.fidelity.samples == N
    assert result.report.weights_quantized == 1 and result.report.weights_total == 1


def test_calibration_reader_feeds_every_input(monkeypatch):
    seen = []
    original = quantize_onnx.BatchReader.get_next

    def spy(self):
        batch = original(self)
        if batch is not None:
            seen.append({k: v.shape for k, v in batch.items()})
        return batch

    monkeypatch.setattr(quantize_onnx.BatchReader, "get_next", spy)
    specs = infer_input_specs(_stateful())
    data = normalise_inputs(_stateful_data(), "calibration", specs)
    quantize_onnx.quantize_static_int8(normalise(load_onnx(_stateful())), data,
                                       config=CalibrationConfig(batch_size=16), per_channel=True, exclude=[])
    assert seen and all(s == {"x": s["x"], "state": (2, 1, 64), "sr": ()} for s in seen)
    assert {s["x"] for s in seen} == {(16, 32)}


def test_a_fixed_batch_of_one_calibrates_one_sample_at_a_time():
    x = RNG.random((10, 3, 12, 12), dtype=np.float32)
    quantized = quantize_onnx.quantize_static_int8(normalise(load_onnx(_dynamic_image())), x,
                                                   config=CalibrationConfig(batch_size=32),
                                                   per_channel=True, exclude=[])
    assert len(quantized) > 0


def test_npz_by_input_name_with_roles_and_labels(tmp_path):
    data = _stateful_data()
    path = tmp_path / "data.npz"
    np.savez(path, **data, **{"eval_x/x": data["x"][:10]}, eval_y=np.arange(10))
    loaded = load_npz_inputs(path, infer_input_specs(_stateful()))
    assert count(loaded.calibration) == N and count(loaded.eval_x) == 10
    assert loaded.eval_x["sr"].dtype == np.int64 and loaded.eval_x.shared == {"state", "sr"}
    assert list(loaded.eval_y) == list(range(10))
    np.savez(path, **data, bogus=np.zeros(3))
    with pytest.raises(ConfigError, match="'bogus' is no input"):
        load_npz_inputs(path, infer_input_specs(_stateful()))


def _cli(args, capsys):
    capsys.readouterr()
    rc = main(args)
    out = capsys.readouterr()
    return rc, out.out, out.err


def test_cli_takes_an_npz_with_every_input(tmp_path, capsys):
    model = tmp_path / "stateful.onnx"
    model.write_bytes(_stateful())
    data = tmp_path / "data.npz"
    np.savez(data, **_stateful_data())
    out = tmp_path / "out.onnx"
    rc, stdout, stderr = _cli(["compress", str(model), "-o", str(out), "--data", str(data), "--json",
                               "--min-agreement", "0.9"], capsys)
    assert rc == 0, stderr
    report = json.loads(stdout)
    assert report["fidelity"]["samples"] == N and report["weights_quantized"] == 1
    assert out.exists()


def test_cli_refuses_an_npz_missing_an_input_in_one_line(tmp_path, capsys):
    model = tmp_path / "stateful.onnx"
    model.write_bytes(_stateful())
    data = tmp_path / "data.npz"
    np.savez(data, x=np.zeros((4, 32), np.float32))
    rc, _, stderr = _cli(["compress", str(model), "-o", str(tmp_path / "o.onnx"), "--data", str(data)], capsys)
    assert rc == 2
    assert "'state' is missing" in stderr and len(stderr.strip().splitlines()) == 1


def test_cli_accepts_dynamic_dims_from_an_npz(tmp_path, capsys):
    model = tmp_path / "image.onnx"
    model.write_bytes(_dynamic_image())
    data = tmp_path / "data.npz"
    np.savez(data, x=RNG.random((8, 3, 48, 192), dtype=np.float32))
    rc, stdout, stderr = _cli(["compress", str(model), "-o", str(tmp_path / "o.onnx"), "--data", str(data),
                               "--no-gate", "--allow-no-gain", "--json"], capsys)
    assert rc == 0, stderr
    assert json.loads(stdout)["fidelity"]["samples"] == 8


def test_data_shapes_fix_the_dynamic_dimensions_to_the_data():
    from edgefleet.compression.inputs import InputSet, InputSpec, data_shapes

    specs = [InputSpec("x", "float32", (None, 3, "h", "w")), InputSpec("state", "float32", (2, None), per_sample=False),
             InputSpec("fixed", "float32", (None, 4))]
    calibration = InputSet({"x": np.zeros((5, 3, 8, 16)), "state": np.zeros((2, 7)), "fixed": np.zeros((5, 4))},
                           shared=["state"])
    eval_x = InputSet({"x": np.zeros((2, 3, 8, 12)), "state": np.zeros((2, 7)), "fixed": np.zeros((2, 4))},
                      shared=["state"])
    # w differs between the sets: it stays dynamic; the batch only when asked
    assert data_shapes(specs, [calibration, eval_x], None) == {"x": (None, 3, 8, None), "state": (2, 7)}
    assert data_shapes(specs, [calibration, None], 1) == {"x": (1, 3, 8, 16), "state": (2, 7), "fixed": (1, 4)}
    assert data_shapes(specs[:1], [np.zeros((4, 3, 8, 16))], None) == {"x": (None, 3, 8, 16)}
