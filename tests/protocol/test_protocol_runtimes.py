import importlib.util

import numpy as np
import pytest

from edgefleet.protocol import runtimes
from edgefleet.protocol.errors import InferenceError, RuntimeUnavailableError
from edgefleet.protocol.runtimes import available_runtimes, open_session

from onnx_models import reference_forward
from protocolkit import make_onnx_model


@pytest.fixture(scope="module")
def tflite_model(onnx_model) -> bytes:
    from edgefleet.compression.onnx_to_tflite import export_tflite  # the dev install has every extra

    return export_tflite(onnx_model)


@pytest.fixture(params=["onnx", "tflite"])
def session(request, onnx_model):
    if request.param == "onnx":
        return open_session("onnx", onnx_model)
    return open_session("tflite", request.getfixturevalue("tflite_model"))


X = np.random.default_rng(9).normal(size=(6, 4)).astype(np.float32)


def test_available_runtimes_has_onnx():
    assert "onnx" in available_runtimes()


def test_session_runs(session, onnx_model):
    assert session.runtime in ("onnx", "tflite")
    assert [(s.name, s.dtype, s.shape) for s in session.inputs] == [("x", "float32", [None, 4])]
    assert [(s.name, s.dtype, s.shape) for s in session.outputs] == [("probs", "float32", [None, 3])]
    out = session.run({"x": X})
    assert set(out) == {"probs"} and out["probs"].shape == (6, 3) and out["probs"].dtype == np.float32
    np.testing.assert_allclose(out["probs"], reference_forward(onnx_model, X), rtol=1e-5, atol=1e-6)


def test_batch_size_changes_and_lists(session):
    one = session.run({"x": X[:1].tolist()})["probs"]       # JSON-style nested lists, batch 1
    many = session.run({"x": X.astype(np.float64)})["probs"]  # other dtype: converted to the model's
    again = session.run({"x": X[:2]})["probs"]
    np.testing.assert_allclose(one, many[:1], rtol=1e-6)
    np.testing.assert_allclose(again, many[:2], rtol=1e-6)


@pytest.mark.parametrize("inputs,where", [
    ({"x": np.zeros((2, 5), np.float32)}, "inputs.x"),
    ({"x": np.zeros((4,), np.float32)}, "inputs.x"),
    ({"x": np.zeros((2, 4, 1), np.float32)}, "inputs.x"),
    ({"y": np.zeros((2, 4), np.float32)}, "inputs"),
    ({}, "inputs"),
    ({"x": X, "extra": X}, "inputs"),
    ({"x": [["a", "b", "c", "d"]]}, "inputs"),
    ({"x": [[1.0, 2.0], [3.0]]}, "inputs"),
])
def test_bad_input(session, inputs, where):
    with pytest.raises(InferenceError) as ei:
        session.run(inputs)
    assert ei.value.code == "bad_input"
    assert ei.value.where == where


@pytest.mark.parametrize("runtime", ["onnx", "tflite"])
@pytest.mark.parametrize("garbage", [b"", b"garbage bytes", bytes(1000), b"\x08\x01" * 64])
def test_garbage_model(runtime, garbage):
    with pytest.raises(InferenceError) as ei:
        open_session(runtime, garbage)
    assert ei.value.code == "bad_model" and ei.value.where == "model"
    assert "\n" not in ei.value.message


def test_onnx_model_in_tflite_runtime_is_bad_model(onnx_model):
    if "tflite" not in available_runtimes():
        pytest.skip("no LiteRT/TFLite interpreter installed")
    with pytest.raises(InferenceError) as ei:
        open_session("tflite", onnx_model)
    assert ei.value.code == "bad_model"


@pytest.mark.parametrize("name", ["pytorch", "", "ONNX"])
def test_unknown_runtime(onnx_model, name):
    with pytest.raises(RuntimeUnavailableError) as ei:
        open_session(name, onnx_model)
    assert ei.value.code == "runtime_unavailable" and ei.value.where == "runtime"


def test_missing_runtime_libraries(monkeypatch, onnx_model):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name.split(".")[0] in
                        {"onnxruntime", "ai_edge_litert", "tflite_runtime"} else real(name, *a))
    assert available_runtimes() == []
    for runtime in ("onnx", "tflite"):
        with pytest.raises(RuntimeUnavailableError) as ei:
            open_session(runtime, onnx_model)
        assert ei.value.hint and "edgefleet[" in ei.value.hint


def test_tflite_falls_back_to_tflite_runtime(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "ai_edge_litert" else
                        (object() if name == "tflite_runtime" else real(name, *a)))
    assert runtimes._tflite_module() == "tflite_runtime.interpreter"


def test_tflite_bundle_round_trip(tflite_model, recipe, samples, release_key, trusted_release):
    from edgefleet.protocol.bundle import build_bundle, parse_recipe, verify_bundle
    r = parse_recipe({**recipe.model_dump(mode="json", exclude={"path"}),
                      "bundle": {**recipe.bundle.model_dump(), "runtime": "tflite"}})
    built = build_bundle(r, tflite_model, samples=samples, release_key=release_key)
    v = verify_bundle(built.data, trusted=trusted_release, expected_digest=built.digest)
    assert v.manifest.runtime == "tflite" and v.manifest.model_file == "model.tflite"
    smoke = v.smoke_test()
    got = open_session("tflite", v.model).run(smoke.inputs)
    exp = smoke.expected["probs"]
    assert np.all(np.abs(got["probs"] - exp) <= smoke.atol + smoke.rtol * np.abs(exp))
    # the ONNX and TFLite builds of one model agree with each other too
    onnx_out = open_session("onnx", make_onnx_model()).run({"x": np.asarray(smoke.inputs["x"], np.float32)})
    np.testing.assert_allclose(got["probs"], onnx_out["probs"], rtol=1e-5, atol=1e-6)
