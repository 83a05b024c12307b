"""No silent no-op: a mode that leaves the model unchanged or makes it larger fails with one
line, unless allowed; the report always says how many weights were quantized."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgefleet.cloud.cli import main
from edgefleet.compression import CompressionConfig, GateConfig, Mode, compress
from edgefleet.compression.config import load_compression_recipe
from edgefleet.compression.onnx_graph import count_quantized_weights
from edgefleet.protocol.errors import CompressionError

RNG = np.random.default_rng(5)


def _no_weights() -> bytes:
    """Twelve activations-only MatMuls (x @ x^T ...): nothing a weight quantizer can reach."""
    nodes, prev = [], "x"
    for i in range(12):
        nodes += [helper.make_node("Transpose", [prev], [f"t{i}"]),
                  helper.make_node("MatMul", [prev, f"t{i}"], [f"m{i}"]),
                  helper.make_node("Tanh", [f"m{i}"], [f"h{i}"]),
                  helper.make_node("MatMul", [f"h{i}", prev], [f"o{i}"])]
        prev = f"o{i}"
    nodes.append(helper.make_node("Identity", [prev], ["y"]))
    graph = helper.make_graph(nodes, "no_weights", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4, 4])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model.SerializeToString()


def _tiny() -> bytes:
    """A 4 x 3 linear layer: the quantizer's scales and nodes outweigh its 12 weights."""
    w = RNG.standard_normal((4, 3)).astype(np.float32)
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "tiny",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3])],
                              initializer=[numpy_helper.from_array(w, "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model.SerializeToString()


NO_GATE = GateConfig(enabled=False)
X4 = RNG.standard_normal((8, 4)).astype(np.float32)


def test_a_mode_that_quantizes_nothing_fails_in_one_line():
    with pytest.raises(CompressionError) as info:
        compress(_no_weights(), "onnx", CompressionConfig(latency_runs=0, gate=NO_GATE))
    assert str(info.value.message).startswith("dynamic_int8 left the model unchanged (0 of 0 weight tensors "
                                              "quantized); nothing to gain")
    assert info.value.where == "mode" and "allow_no_gain" in info.value.hint
    assert len(str(info.value).splitlines()) == 1


@pytest.mark.parametrize("mode", [Mode.DYNAMIC_INT8, Mode.STATIC_INT8, Mode.FP16])
def test_a_mode_that_makes_the_model_larger_fails_naming_the_sizes(mode):
    with pytest.raises(CompressionError, match=rf"{mode.value} made it larger: [\d,]+ -> [\d,]+ bytes") as info:
        compress(_tiny(), "onnx", CompressionConfig(mode=mode, latency_runs=0, gate=NO_GATE), calibration=X4)
    assert "1 of 1 weight tensors quantized" in info.value.message


def test_allow_no_gain_accepts_it_and_the_report_says_what_happened():
    result = compress(_tiny(), "onnx", CompressionConfig(latency_runs=0, gate=NO_GATE, allow_no_gain=True))
    assert result.report.size.compressed_bytes > result.report.size.original_bytes
    assert (result.report.weights_quantized, result.report.weights_total) == (1, 1)
    assert "weights quantized  1 of 1 tensors" in result.report.to_table()


def test_mode_none_is_exempt():
    result = compress(_no_weights(), "onnx", CompressionConfig(mode=Mode.NONE, latency_runs=0, gate=NO_GATE))
    assert (result.report.weights_quantized, result.report.weights_total) == (0, 0)


def test_a_fallback_that_keeps_every_weight_in_float_is_no_gain(samples):
    """The gate holds only with every operator in float: the result is the float model again."""
    model, calibration, eval_x, _ = samples["mlp"]
    impossible = GateConfig(min_top1_agreement=1.0, max_mean_abs_error=1e-9)
    with pytest.raises(CompressionError, match="nothing to gain|made it larger"):
        compress(model, "onnx", CompressionConfig(latency_runs=0, gate=impossible), eval_x=eval_x[:40])


def test_an_already_quantized_model_is_no_gain(samples):
    model = samples["mlp"][0]
    once = compress(model, "onnx", CompressionConfig(latency_runs=0, gate=NO_GATE)).model
    with pytest.raises(CompressionError, match=r"left the model unchanged \(3 of 3 weight tensors quantized, "
                                               r"as before\)"):
        compress(once, "onnx", CompressionConfig(latency_runs=0, gate=NO_GATE))


@pytest.mark.parametrize(("mode", "expected"), [(Mode.DYNAMIC_INT8, (3, 3)), (Mode.STATIC_INT8, (3, 3)),
                                                (Mode.FP16, (3, 3)), (Mode.NONE, (0, 3))])
def test_the_report_counts_quantized_weights(samples, mode, expected):
    model, calibration, eval_x, _ = samples["mlp"]
    result = compress(model, "onnx", CompressionConfig(mode=mode, latency_runs=0),
                      calibration=calibration[:64], eval_x=eval_x[:64])
    assert (result.report.weights_quantized, result.report.weights_total) == expected
    assert count_quantized_weights(result.model, mode) == expected
    dumped = result.report.model_dump(mode="json")
    assert dumped["weights_quantized"] == expected[0] and dumped["conversions"] == []


def test_count_follows_the_mode():
    fp16 = compress(_tiny(), "onnx", CompressionConfig(mode=Mode.FP16, latency_runs=0, gate=NO_GATE,
                                                       allow_no_gain=True)).model
    assert count_quantized_weights(fp16) == (1, 1)
    assert count_quantized_weights(fp16, Mode.DYNAMIC_INT8) == (0, 1)
    assert count_quantized_weights(fp16, Mode.FP16) == (1, 1)


def test_the_recipe_key_and_the_cli_flag(tmp_path, capsys):
    assert load_compression_recipe({"compression": {"allow_no_gain": True}}).allow_no_gain
    model = tmp_path / "tiny.onnx"
    model.write_bytes(_tiny())
    out = tmp_path / "out.onnx"
    capsys.readouterr()
    assert main(["compress", str(model), "-o", str(out), "--no-gate"]) == 1
    err = capsys.readouterr().err
    assert "dynamic_int8 made it larger" in err and len(err.strip().splitlines()) == 1
    assert not out.exists()
    assert main(["compress", str(model), "-o", str(out), "--no-gate", "--allow-no-gain", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["weights_total"] == 1
    assert onnx.load_model_from_string(out.read_bytes()).graph.node
