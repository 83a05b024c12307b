"""Fixtures for the controller tests: a controller app on a temp SQLite file with a fake MQTT
transport (records what is published, nothing on the network), a fake clock, a release key,
a tiny ONNX model and signed bundles built from it, and helpers that play a device."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
import pytest
from fastapi.testclient import TestClient
from onnx import TensorProto, helper, numpy_helper

from edgefleet.cloud.app import create_app
from edgefleet.cloud.controller import Controller
from edgefleet.cloud.decoding import Raw
from edgefleet.cloud.settings import ControllerSettings
from edgefleet.protocol import keys
from edgefleet.protocol.bundle import BuiltBundle, build_bundle, parse_recipe
from edgefleet.protocol.messages import (DriftScores, Hello, Histogram, InstalledBundle, Message, State, StatusReport,
                                         TelemetryWindow, encode)
from edgefleet.protocol.topics import device_topic

ADMIN = "eft_test-admin-token"


def make_onnx_model(n_in: int = 4, n_out: int = 3, seed: int = 0) -> bytes:
    rng = np.random.default_rng(seed)
    w = numpy_helper.from_array(rng.normal(size=(n_in, n_out)).astype(np.float32), "W")
    b = numpy_helper.from_array(rng.normal(size=(n_out,)).astype(np.float32), "B")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "W"], ["xw"]), helper.make_node("Add", ["xw", "B"], ["logits"]),
         helper.make_node("Softmax", ["logits"], ["probs"], axis=-1)], "tiny",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", n_in])],
        [helper.make_tensor_value_info("probs", TensorProto.FLOAT, ["N", n_out])], initializer=[w, b])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    return model.SerializeToString()


class FakeClock:
    def __init__(self, start: float = 1_800_000_000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@dataclass
class FakeTransport:
    """Stands in for the MQTT bridge: publishes are recorded."""

    connected: bool = True
    published: list[tuple[str, bytes]] = field(default_factory=list)

    def start(self) -> None: ...

    def stop(self) -> None: ...

    def publish(self, topic: str, payload: bytes) -> bool:
        if not self.connected:
            return False
        self.published.append((topic, payload))
        return True


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


class Fleet:
    """Plays devices against the controller: enroll over HTTP, then 'publish' messages straight
    into the ingest path (as the MQTT bridge would)."""

    def __init__(self, client: TestClient, controller: Controller, clock: FakeClock) -> None:
        self.client, self.controller, self.clock = client, controller, clock

    def enroll(self, device_id: str, *, tags: list[str] | None = None) -> dict:
        r = self.client.post("/api/v1/enrollment-tokens", json={"device_id": device_id, "tags": tags or []})
        assert r.status_code == 201, r.text
        r = self.client.post("/api/v1/enroll", json={"token": r.json()["token"], "device_id": device_id},
                             headers={"Authorization": ""})
        assert r.status_code == 201, r.text
        return r.json()

    def send(self, message: Message, kind: str, *, topic_device: str | None = None) -> None:
        self.send_raw(device_topic(topic_device or message.device_id, kind), encode(message))

    def send_raw(self, topic: str, payload: bytes):
        return self.controller.ingestor.process([Raw(topic, payload, self.clock())])

    def hello(self, device_id: str, *, runtimes=("onnx",), arch: str = "x86_64", agent_version: str = "0.1.0",
              hardware_class: str = "generic") -> Hello:
        msg = Hello(device_id=device_id, agent_version=agent_version, arch=arch, os="linux",
                    runtimes=list(runtimes), hardware_class=hardware_class, sent_at=self.clock())
        self.send(msg, "hello")
        return msg

    def add(self, device_id: str, **facts) -> dict:
        creds = self.enroll(device_id)
        self.hello(device_id, **facts)
        return creds

    def status(self, device_id: str, deployment_id: str, sequence: int, state: str, *, final: bool = False,
               outcome: str | None = None, reason: str | None = None) -> StatusReport:
        msg = StatusReport(device_id=device_id, deployment_id=deployment_id, sequence=sequence, state=state,
                           final=final, outcome=outcome, reason=reason, sent_at=self.clock())
        self.send(msg, "status")
        return msg

    def state(self, device_id: str, status: str = "online", **kw) -> State:
        msg = State(device_id=device_id, status=status, sent_at=self.clock(), **kw)
        self.send(msg, "state")
        return msg

    def telemetry(self, device_id: str, seq: int, *, counts=(5, 3, 2, 0), psi: float = 0.01, level: str = "ok",
                  bundle: InstalledBundle | None = None, requests: int = 10) -> TelemetryWindow:
        msg = TelemetryWindow(device_id=device_id, window_seq=seq, window_start=self.clock() - 60,
                              window_end=self.clock(), bundle=bundle, requests=requests, batches=requests,
                              samples=requests, latency_ms=Histogram(bounds=[1.0, 2.0, 5.0], counts=list(counts)),
                              predictions={"0": requests}, drift=DriftScores(psi=psi, js=psi / 2, level=level,
                                                                             samples=requests),
                              sent_at=self.clock())
        self.send(msg, "telemetry")
        return msg


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
