"""Fixtures for the protocol tests: a tiny ONNX classifier built with onnx.helper, keys, a recipe
and one signed bundle (built once per session; tests that tamper work on copies of its bytes)."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgefleet.protocol import keys
from edgefleet.protocol.bundle import build_bundle, parse_recipe

N_IN, N_OUT = 4, 3


def make_onnx_model(n_in: int = N_IN, n_out: int = N_OUT, seed: int = 0) -> bytes:
    """y = softmax(x @ W + b) with a dynamic batch dimension; opset 13, IR 8 (any ORT loads it)."""
    rng = np.random.default_rng(seed)
    w = numpy_helper.from_array(rng.normal(size=(n_in, n_out)).astype(np.float32), "W")
    b = numpy_helper.from_array(rng.normal(size=(n_out,)).astype(np.float32), "B")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "W"], ["xw"]),
         helper.make_node("Add", ["xw", "B"], ["logits"]),
         helper.make_node("Softmax", ["logits"], ["probs"], axis=-1)],
        "tiny",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", n_in])],
        [helper.make_tensor_value_info("probs", TensorProto.FLOAT, ["N", n_out])],
        initializer=[w, b])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model.SerializeToString()


@pytest.fixture(scope="session")
def onnx_model() -> bytes:
    return make_onnx_model()


@pytest.fixture(scope="session")
def samples() -> np.ndarray:
    return np.random.default_rng(42).normal(size=(200, N_IN)).astype(np.float32)


@pytest.fixture(scope="session")
def release_key():
    return keys.generate_private_key()


@pytest.fixture(scope="session")
def release_key2():
    return keys.generate_private_key()


@pytest.fixture(scope="session")
def controller_key():
    return keys.generate_private_key()


@pytest.fixture(scope="session")
def trusted_release(release_key) -> keys.TrustedKeys:
    return keys.TrustedKeys.of([release_key.public_key()], role="release")


RECIPE = {
    "bundle": {"name": "tiny-clf", "version": "1.2.3", "build": 7, "runtime": "onnx",
               "labels": ["a", "b", "c"], "description": "test bundle"},
    "target": {"archs": ["x86_64", "aarch64"], "hardware_classes": ["cam-v2"], "min_agent_version": "0.1.0"},
    "preprocessing": {"scale": 1.0},
    "smoke_test": {"vectors": 3, "atol": 1e-5, "rtol": 1e-4},
    "profile": {"bins": 8},
}


@pytest.fixture(scope="session")
def recipe():
    return parse_recipe(RECIPE)


@pytest.fixture(scope="session")
def built(recipe, onnx_model, samples, release_key):
    # A mostly-zero extra file (compresses well -> deflate) and a random one (-> identity).
    extra = {"extra/zeros.bin": bytes(5000) + b"tail", "extra/random.bin": np.random.default_rng(3).bytes(2000)}
    return build_bundle(recipe, onnx_model, samples=samples, release_key=release_key, extra_files=extra)
