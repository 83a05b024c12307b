"""Fixtures for the protocol tests: a tiny ONNX classifier built with onnx.helper, keys, a recipe
and one signed bundle (built once per session; tests that tamper work on copies of its bytes)."""

from __future__ import annotations

import numpy as np
import pytest

from edgefleet.protocol import keys
from edgefleet.protocol.bundle import build_bundle, parse_recipe

from protocolkit import N_IN, RECIPE, make_onnx_model


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


@pytest.fixture(scope="session")
def recipe():
    return parse_recipe(RECIPE)


@pytest.fixture(scope="session")
def built(recipe, onnx_model, samples, release_key):
    # A mostly-zero extra file (compresses well -> deflate) and a random one (-> identity).
    extra = {"extra/zeros.bin": bytes(5000) + b"tail", "extra/random.bin": np.random.default_rng(3).bytes(2000)}
    return build_bundle(recipe, onnx_model, samples=samples, release_key=release_key, extra_files=extra)
