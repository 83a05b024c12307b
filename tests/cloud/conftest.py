"""Fixtures for the controller tests: a controller app on a temp SQLite file with a fake MQTT
transport (records what is published, nothing on the network), a fake clock, a release key,
a tiny ONNX model and signed bundles built from it, and a fleet of played devices."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from edgefleet.cloud.app import create_app
from edgefleet.cloud.controller import Controller
from edgefleet.cloud.settings import ControllerSettings
from edgefleet.protocol import keys
from edgefleet.protocol.bundle import BuiltBundle, build_bundle, parse_recipe

from cloudkit import ADMIN, FakeClock, FakeTransport, Fleet, make_onnx_model
from testkit import postgres_database


@pytest.fixture(scope="session")
def onnx_model() -> bytes:
    return make_onnx_model()


@pytest.fixture(scope="session")
def release_key():
    return keys.generate_private_key()


@pytest.fixture(scope="session")
def release_pub(tmp_path_factory, release_key) -> Path:
    return keys.save_public_key(release_key.public_key(), tmp_path_factory.mktemp("keys") / "release.pub")


@pytest.fixture(scope="session")
def make_bundle(onnx_model, release_key) -> Callable[..., BuiltBundle]:
    cache: dict = {}
    samples = np.random.default_rng(1).normal(size=(64, 4)).astype(np.float32)

    def make(name: str = "tiny", version: str = "1.0.0", build: int = 1, runtime: str = "onnx",
             key=None, **target) -> BuiltBundle:
        cache_key = (name, version, build, runtime, id(key), tuple(sorted((k, tuple(v) if isinstance(v, list) else v)
                                                                          for k, v in target.items())))
        if cache_key not in cache:
            recipe = parse_recipe({"bundle": {"name": name, "version": version, "build": build, "runtime": runtime},
                                   "target": target})
            cache[cache_key] = build_bundle(recipe, onnx_model, samples=samples, release_key=key or release_key)
        return cache[cache_key]
    return make


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def transport() -> FakeTransport:
    return FakeTransport()


@pytest.fixture
def settings(tmp_path, release_pub) -> ControllerSettings:
    return ControllerSettings(data_dir=tmp_path / "controller", broker_url="mqtt://127.0.0.1:1",
                              release_key_paths=[release_pub], admin_token=ADMIN,
                              public_url="http://controller.test", heartbeat_timeout_s=60,
                              deployment_timeout_s=600)


@pytest.fixture
def app(settings, clock, transport):
    return create_app(settings, clock=clock, transport_factory=lambda url, on_message: transport,
                      reconcile_in_background=False)


@pytest.fixture
def controller(app) -> Controller:
    return app.state.controller


@pytest.fixture
def client(app):
    with TestClient(app) as c:
        c.headers["Authorization"] = f"Bearer {ADMIN}"
        yield c


@pytest.fixture
def fleet(client, controller, clock) -> Fleet:
    return Fleet(client, controller, clock)


@pytest.fixture
def upload(client) -> Callable[[BuiltBundle], dict]:
    def do(built: BuiltBundle) -> dict:
        r = client.post("/api/v1/bundles", content=built.data, headers={"Content-Type": "application/octet-stream"})
        assert r.status_code == 201, r.text
        return r.json()
    return do


@pytest.fixture(scope="module")
def pg_url():
    """A PostgreSQL database of its own for the module (``testkit.postgres_database``)."""
    with postgres_database() as url:
        yield url
