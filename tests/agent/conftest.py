"""Fixtures for the agent's unit tests: keys, a tiny model, signed bundles and orders."""

from __future__ import annotations

import time

import numpy as np
import pytest

from edgefleet.protocol.bundle import build_bundle, bundle_digest, parse_recipe
from edgefleet.protocol.keys import TrustedKeys, generate_private_key
from edgefleet.protocol.messages import DeploymentOrder
from edgefleet.protocol.orders import sign_order

from onnx_models import mlp_onnx


class Keys:
    def __init__(self) -> None:
        self.release = generate_private_key()
        self.controller = generate_private_key()
        self.trusted_release = TrustedKeys.of([self.release.public_key()], role="release")
        self.trusted_controller = TrustedKeys.of([self.controller.public_key()], role="controller")

    def bundle(self, version: str = "1.0.0", build: int = 1, seed: int = 0, **recipe) -> bytes:
        r = parse_recipe({"bundle": {"name": "tiny", "version": version, "build": build, "runtime": "onnx"}, **recipe})
        x = np.random.default_rng(1).normal(size=(64, 4)).astype(np.float32)
        return build_bundle(r, mlp_onnx(seed=seed, layers=0), samples=x, release_key=self.release).data

    def order(self, data: bytes, *, device_id: str = "dev-1", sequence: int = 1, deployment_id: str = "dep-1",
              now: float | None = None, ttl: int = 600, action: str = "install", health_check=None):
        now = int(time.time() if now is None else now)
        order = DeploymentOrder(device_id=device_id, deployment_id=deployment_id, action=action,
                                bundle_digest=bundle_digest(data), bundle_size=len(data),
                                bundle_url="http://bundles.invalid/b", sequence=sequence, issued_at=now,
                                expires_at=now + ttl, health_check=health_check)
        return sign_order(order, self.controller)


@pytest.fixture(scope="session")
def keys() -> Keys:
    return Keys()
