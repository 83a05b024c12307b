"""The gate judges every output by a measure suited to its kind (declared or inferred)."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgefleet.compression import CompressionConfig, FallbackConfig, GateConfig, Mode, compress
from edgefleet.compression import fidelity as fm
from edgefleet.compression.config import OutputKind, OutputSpec, load_compression_recipe
from edgefleet.protocol.errors import AccuracyGateError, ConfigError

RNG = np.random.default_rng(10)
X = RNG.random((160, 16), dtype=np.float32)
X[:, 0] = 0.0  # feature 0 is always off: a weight on it costs nothing in float, all in int8


def _config(**settings) -> CompressionConfig:
    """Tiny models: the graph overhead of quantization outweighs what their weights save."""
    return CompressionConfig(**{"latency_runs": 0, "allow_no_gain": True, **settings})


def _model(nodes: list, inits: dict[str, np.ndarray], outputs: list, n_in: int = 16,
           x_shape: list | None = None) -> bytes:
    graph = helper.make_graph(
        nodes, "gate", [helper.make_tensor_value_info("x", TensorProto.FLOAT, x_shape or ["N", n_in])],
        outputs, [numpy_helper.from_array(v, k) for k, v in inits.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model.SerializeToString()


def _out(name: str, *dims: int) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, ["N", *dims])


def _weights(n_out: int, outlier: bool = False, scale: float = 0.3, seed: int = 0) -> np.ndarray:
    """A linear head's weights; with ``outlier`` a huge weight on the dead feature 0 makes the
    per-tensor int8 scale so coarse that every real weight rounds to zero."""
    w = np.random.default_rng(seed).normal(0, scale, (16, n_out)).astype(np.float32)
    if outlier:
        w[0, 0] = 1000.0
    return w


def _two_heads(landmarks_outlier: bool = False) -> bytes:
    """x[N, 16] -> probs[N, 5] (softmax) and landmarks[N, 4, 2] (a coordinate head)."""
    return _model(
        [helper.make_node("MatMul", ["x", "wc"], ["logits"], name="cls_fc"),
         helper.make_node("Softmax", ["logits"], ["probs"], name="softmax", axis=-1),
         helper.make_node("MatMul", ["x", "wl"], ["flat"], name="landmark_fc"),
         helper.make_node("Reshape", ["flat", "shape"], ["landmarks"], name="to_points")],
        {"wc": _weights(5, scale=3.0, seed=1), "wl": _weights(8, landmarks_outlier, seed=2),
         "shape": np.array([-1, 4, 2], dtype=np.int64)},
        [_out("probs", 5), _out("landmarks", 4, 2)])


def _regression(outlier: bool = False) -> bytes:
    """x[N, 16] -> y[N, 1]: one value per sample."""
    return _model([helper.make_node("MatMul", ["x", "w"], ["y"], name="fc")],
                  {"w": _weights(1, outlier)}, [_out("y", 1)])


def _embedding() -> bytes:
    """x[N, 16] -> Relu(x W1) W2 -> embedding[N, 128]."""
    return _model([helper.make_node("MatMul", ["x", "w1"], ["h"], name="fc1"),
                   helper.make_node("Relu", ["h"], ["a"], name="relu"),
                   helper.make_node("MatMul", ["a", "w2"], ["embedding"], name="fc2")],
                  {"w1": _weights(64, seed=3),
                   "w2": np.random.default_rng(4).normal(0, 0.2, (64, 128)).astype(np.float32)},
                  [_out("embedding", 128)])


def _probability_map() -> bytes:
    """x[N, 2, 32, 32] -> Sigmoid(Conv 1x1, weights [1, 1.0001]) -> map[N, 1, 32, 32]: a
    probability per pixel. fp16 rounds the weight 1.0001 to 1."""
    w = np.array([1.0, 1.0001], np.float32).reshape(1, 2, 1, 1)
    return _model([helper.make_node("Conv", ["x", "w"], ["c"], name="conv"),
                   helper.make_node("Sigmoid", ["c"], ["map"], name="sigmoid")],
                  {"w": w}, [_out("map", 1, 32, 32)], x_shape=["N", 2, 32, 32])


def _near_ties(n: int = 40) -> np.ndarray:
    """Background in [0, 0.5] and two peaks per image that differ by 5e-5 in float32 (pixel B,
    from channel 1, wins by a hair) and swap places once the weight is rounded to fp16."""
    x = np.zeros((n, 2, 32, 32), np.float32)
    x[:, 0] = 0.5 * RNG.random((n, 32, 32), dtype=np.float32)
    for i in range(n):
        a, b = RNG.choice(32 * 32, 2, replace=False)
        x[i, 0].flat[a], x[i, 0].flat[b] = 0.7, 0.0
        x[i, 1].flat[b] = 0.69995
    return x


def _by_name(report, name):
    return next(o for o in report.fidelity.outputs if o.name == name)


def _checks(report, name):
    return {c.measure: c for c in report.gate.checks if c.output == name}


# -- the kind inference rule (docs/compression.md has the table) --------------------------

def _softmax(a: np.ndarray) -> np.ndarray:
    e = np.exp(a - a.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


@pytest.mark.parametrize(("array", "kind"), [
    (RNG.normal(size=(8, 1)), OutputKind.REGRESSION),
    (RNG.normal(size=(8,)), OutputKind.REGRESSION),
    (_softmax(RNG.normal(size=(8, 10))), OutputKind.CLASS_SCORES),
    (RNG.normal(size=(8, 10)), OutputKind.REGRESSION),  # logits: declare class_scores
    (RNG.normal(size=(8, 4)), OutputKind.REGRESSION),  # a box
    (RNG.normal(size=(8, 128)), OutputKind.EMBEDDING),
    (_softmax(RNG.normal(size=(8, 20, 37))), OutputKind.CLASS_SCORES),  # a sequence
    (_softmax(RNG.normal(size=(8, 300, 2))), OutputKind.CLASS_SCORES),  # per-anchor scores
    (RNG.normal(size=(8, 68, 2)), OutputKind.COORDINATES),
    (RNG.normal(size=(8, 21, 3)), OutputKind.COORDINATES),
    (RNG.random((8, 1, 16, 16)), OutputKind.MAP),  # a probability map stays a map
    (_softmax(RNG.normal(size=(8, 3, 16, 16)).transpose(0, 2, 3, 1)).transpose(0, 3, 1, 2),
     OutputKind.MAP),
    ((RNG.random((8, 16, 16)) > 0.7).astype(np.float32), OutputKind.MASK),
    (RNG.normal(size=(8, 16, 16)), OutputKind.MAP),
])
def test_kind_is_inferred_from_shape_and_values(array, kind):
    assert fm.infer_kind(np.asarray(array, dtype=np.float32))[0] is kind


def test_measures_follow_their_definitions():
    ref = np.array([[1.0, 2.0], [3.0, 4.0]])
    out = ref + np.array([[0.1, -0.1], [0.0, 0.2]])
    assert fm.snr_db(ref, out) == pytest.approx(10 * np.log10(30.0 / 0.06))
    assert fm.relative_mae(ref, out) == pytest.approx(0.1 / 3.0)
    assert fm.snr_db(ref, ref) == fm.SNR_CLIP_DB
    masks = np.array([[0.9, 0.8, 0.1, 0.0]]), np.array([[0.9, 0.2, 0.7, 0.0]])
    assert fm.iou(*masks, threshold=0.5) == pytest.approx(1 / 3)
    assert fm.mask_threshold(np.array([-3.0, -1.0, 2.0])) == -1.0  # logits: the median
    scores = np.array([[0.5, 0.3, 0.2], [0.1, 0.6, 0.3]])
    swapped = np.array([[0.3, 0.5, 0.2], [0.1, 0.6, 0.3]])
    assert fm.top_k_agreement(scores, swapped, 1) == 0.5
    assert fm.top_k_agreement(scores, swapped, 2) == 1.0


# -- the three failure cases of the old gate -------------------------------------------------

def test_fp16_probability_map_with_near_ties_passes():
    x = _near_ties()
    report = compress(_probability_map(), "onnx", _config(mode=Mode.FP16),
                      eval_x=x).report
    out = _by_name(report, "map")
    assert (out.kind, out.kind_source) == (OutputKind.MAP, "inferred")
    assert report.gate.passed
    assert set(_checks(report, "map")) == {"cosine_similarity", "snr_db"}
    assert out.measures["cosine_similarity"] > 0.9999 and out.measures["snr_db"] > 40
    assert report.fidelity.top1_agreement < 0.99  # the flattened argmax the old gate used


def test_one_value_regression_is_refused_when_it_breaks():
    config = _config(mode=Mode.DYNAMIC_INT8,
                               fallback=FallbackConfig(enabled=False))
    with pytest.raises(AccuracyGateError, match="y: relative mean |error|") as info:
        compress(_regression(outlier=True), "onnx", config, eval_x=X)
    check = info.value.report["gate"]["checks"][0]
    assert (check["output"], check["kind"], check["measure"]) == ("y", "regression", "relative_mae")
    assert check["value"] > 0.02 and not check["passed"]
    assert info.value.report["fidelity"]["top1_agreement"] == 1.0  # what the old gate looked at


def test_one_value_regression_passes_when_it_holds():
    report = compress(_regression(), "onnx", _config(mode=Mode.DYNAMIC_INT8),
                      eval_x=X).report
    assert report.gate.passed
    assert report.fidelity.outputs[0].kind is OutputKind.REGRESSION
    assert 0 < _checks(report, "y")["relative_mae"].value <= 0.02


@pytest.mark.parametrize(("runtime", "mode"), [("onnx", Mode.DYNAMIC_INT8), ("onnx", Mode.FP16),
                                               ("onnx", Mode.STATIC_INT8), ("tflite", Mode.FP16),
                                               ("tflite", Mode.STATIC_INT8)])
def test_two_outputs_each_judged_by_its_kind(runtime, mode):
    report = compress(_two_heads(), runtime, _config(mode=mode),
                      calibration=X, eval_x=X).report
    assert report.gate.passed
    assert [(o.name, o.kind, o.shape) for o in report.fidelity.outputs] == [
        ("probs", OutputKind.CLASS_SCORES, [5]), ("landmarks", OutputKind.COORDINATES, [4, 2])]
    assert set(_checks(report, "probs")) == {"top1_agreement"}
    assert set(_checks(report, "landmarks")) == {"relative_mae"}  # no argmax of coordinates
    assert "top1_agreement" not in _by_name(report, "landmarks").measures
    table = report.to_table()
    assert "output landmarks" in table and "coordinates (inferred)" in table


def test_second_output_breaking_is_refused_naming_it():
    config = _config(mode=Mode.DYNAMIC_INT8,
                               fallback=FallbackConfig(enabled=False))
    with pytest.raises(AccuracyGateError) as info:
        compress(_two_heads(landmarks_outlier=True), "onnx", config, eval_x=X)
    assert "landmarks: relative mean |error|" in str(info.value)
    verdicts = {c["output"]: c["passed"] for c in info.value.report["gate"]["checks"]}
    assert verdicts == {"probs": True, "landmarks": False}
    assert info.value.report["gate"]["criterion"] == "relative_mae"


def test_fallback_keeps_the_breaking_head_in_float():
    result = compress(_two_heads(landmarks_outlier=True), "onnx",
                      _config(mode=Mode.DYNAMIC_INT8), eval_x=X)
    assert result.report.gate.passed
    assert result.report.float_operators == ["landmark_fc"]


def test_embedding_is_judged_by_cosine_and_snr():
    report = compress(_embedding(), "onnx", _config(mode=Mode.DYNAMIC_INT8),
                      eval_x=X).report
    out = report.fidelity.outputs[0]
    assert out.kind is OutputKind.EMBEDDING and out.kind_source == "inferred"
    checks = _checks(report, "embedding")
    assert set(checks) == {"cosine_similarity", "snr_db"}
    assert checks["snr_db"].threshold == 20.0 and checks["snr_db"].passed
    strict = GateConfig(min_snr_db=200.0)
    with pytest.raises(AccuracyGateError, match="embedding: SNR"):
        compress(_embedding(), "onnx", _config(mode=Mode.DYNAMIC_INT8, gate=strict,
                                                         fallback=FallbackConfig(enabled=False)), eval_x=X)


# -- declared kinds -------------------------------------------------------------------------

RECIPE = {"compression": {"mode": "dynamic_int8", "latency_runs": 0, "allow_no_gain": True, "gate": {"outputs": {
    "probs": {"kind": "class_scores", "min_top1_agreement": 0.5},
    "landmarks": {"kind": "map", "min_cosine": 0.999, "min_snr_db": 25.0}}}}}


def test_declared_kinds_and_thresholds_from_a_recipe_table():
    config = load_compression_recipe(RECIPE)
    assert config.gate.outputs["landmarks"].kind is OutputKind.MAP
    report = compress(_two_heads(), "onnx", config, eval_x=X).report
    landmarks = _by_name(report, "landmarks")
    assert (landmarks.kind, landmarks.kind_source) == (OutputKind.MAP, "declared")
    checks = _checks(report, "landmarks")
    assert (checks["cosine_similarity"].threshold, checks["snr_db"].threshold) == (0.999, 25.0)
    assert _checks(report, "probs")["top1_agreement"].threshold == 0.5


def test_declared_mask_is_judged_by_iou():
    x = RNG.random((40, 2, 32, 32), dtype=np.float32)
    config = _config(mode=Mode.FP16, gate=GateConfig(
        outputs={"map": OutputSpec(kind=OutputKind.MASK, min_iou=0.5, mask_threshold=0.5)}))
    report = compress(_probability_map(), "onnx", config, eval_x=x).report
    checks = _checks(report, "map")
    assert set(checks) == {"iou"} and checks["iou"].threshold == 0.5
    assert 0.5 <= checks["iou"].value <= 1.0


@pytest.mark.parametrize(("table", "problem"), [
    ({"probs": {"kind": "map", "min_iou": 0.9}}, "min_iou"),
    ({"probs": {"kind": "tensor"}}, "gate.outputs.probs.kind"),
    ({"probs": {"min_cosine": 0.9}}, "min_cosine"),  # probs is inferred class_scores
    ({"scores": {"kind": "class_scores"}}, "no output 'scores'"),
])
def test_wrong_output_tables_are_config_errors(table, problem):
    recipe = {"compression": {"latency_runs": 0, "allow_no_gain": True, "gate": {"outputs": table}}}
    with pytest.raises(ConfigError, match=problem):  # when read, or when the model is known
        compress(_two_heads(), "onnx", load_compression_recipe(recipe), eval_x=X)


# -- labels ---------------------------------------------------------------------------------

def test_labels_belong_to_the_first_class_scores_output():
    labels = RNG.integers(0, 5, len(X))
    report = compress(_two_heads(), "onnx", _config(mode=Mode.DYNAMIC_INT8),
                      eval_x=X, eval_y=labels).report
    assert report.accuracy is not None and report.gate.criterion == "accuracy_drop_points"
    assert set(_checks(report, "probs")) == {"accuracy_drop_points"}
    assert set(_checks(report, "landmarks")) == {"relative_mae"}


def test_labels_make_a_logits_head_class_scores():
    logits = _model([helper.make_node("MatMul", ["x", "w"], ["logits"], name="fc")],
                    {"w": _weights(6, scale=1.0)}, [_out("logits", 6)])
    labels = RNG.integers(0, 6, len(X))
    report = compress(logits, "onnx", _config(mode=Mode.DYNAMIC_INT8),
                      eval_x=X, eval_y=labels).report
    out = report.fidelity.outputs[0]
    assert (out.kind, out.kind_source) == (OutputKind.CLASS_SCORES, "labels")
    assert report.gate.criterion == "accuracy_drop_points"
    with pytest.raises(ConfigError, match="class_scores"):
        compress(_regression(), "onnx", _config(), eval_x=X, eval_y=labels)
