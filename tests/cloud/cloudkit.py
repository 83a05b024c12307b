"""Test helpers for the controller tests: fake clock and MQTT transport, a tiny ONNX model, and
:class:`Fleet`, which plays devices against the controller."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from fastapi.testclient import TestClient

from edgefleet.cloud.controller import Controller
from edgefleet.cloud.mqtt.decoding import Raw
from edgefleet.protocol.messages import (
    DriftScores,
    Hello,
    Histogram,
    InstalledBundle,
    Message,
    State,
    StatusReport,
    TelemetryWindow,
    encode,
)
from edgefleet.protocol.topics import device_topic

from onnx_models import mlp_onnx as make_onnx_model  # noqa: F401  (used by conftest)
from testkit import DeviceKey

ADMIN = "eft_test-admin-token"


class FakeClock:
    def __init__(self, start: float = 1_800_000_000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@dataclass
class FakeTransport:
    """Stands in for the MQTT bridge: publishes are recorded (delivery acknowledgements apart)."""

    connected: bool = True
    published: list[tuple[str, bytes]] = field(default_factory=list)
    acks: list[tuple[str, bytes]] = field(default_factory=list)
    """What went to the devices' ``ack`` topics (docs/protocol.md "Delivery acknowledgements")."""

    def start(self) -> None: ...

    def stop(self) -> None: ...

    def publish(self, topic: str, payload: bytes) -> bool:
        if not self.connected:
            return False
        (self.acks if topic.endswith("/ack") else self.published).append((topic, payload))
        return True


class Fleet:
    """Plays devices against the controller: enroll over HTTP, then 'publish' messages straight
    into the ingest path (as the MQTT bridge would)."""

    def __init__(self, client: TestClient, controller: Controller, clock: FakeClock) -> None:
        self.client, self.controller, self.clock = client, controller, clock
        self.keys: dict[str, DeviceKey] = {}
        """Each enrolled device's own message key (it signs what the device sends)."""

    def enroll(self, device_id: str, *, tags: list[str] | None = None) -> dict:
        r = self.client.post("/api/v1/enrollment-tokens", json={"device_id": device_id, "tags": tags or []})
        assert r.status_code == 201, r.text
        key = DeviceKey()
        r = self.client.post("/api/v1/enroll", json={"token": r.json()["token"], "device_id": device_id,
                                                     "device_public_key_pem": key.pem}, headers={"Authorization": ""})
        assert r.status_code == 201, r.text
        self.keys[device_id] = key
        return r.json()

    def sealed(self, topic: str, body: bytes, *, signer: str | None = None) -> bytes:
        """``body`` signed by the key of ``signer`` (default: the device the topic names)."""
        return self.keys[signer or topic.split("/")[-2]].seal(topic, body)

    def send(self, message: Message, kind: str, *, topic_device: str | None = None) -> None:
        topic = device_topic(topic_device or message.device_id, kind)
        self.send_raw(topic, self.sealed(topic, encode(message), signer=topic_device or message.device_id)
                      if (topic_device or message.device_id) in self.keys else encode(message))

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
               outcome: str | None = None, reason: str | None = None, detail: str | None = None) -> StatusReport:
        msg = StatusReport(device_id=device_id, deployment_id=deployment_id, sequence=sequence, state=state,
                           final=final, outcome=outcome, reason=reason, detail=detail, sent_at=self.clock())
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


class CliClient:
    """The CLI's controller client, answered by the test client (no network); refusals raise
    :class:`ApiError` like the real one. ``monkeypatch.setattr(module, "client_from_env",
    lambda url, token: CliClient(client))`` points a CLI module at the app under test."""

    def __init__(self, client: TestClient) -> None:
        self.client, self.url = client, "http://testserver"

    def __enter__(self) -> CliClient:
        return self

    def __exit__(self, *exc: object) -> None: ...

    def request(self, method: str, path: str, **kwargs):
        from edgefleet.cloud.cli.client import ApiError

        r = self.client.request(method, path, **kwargs)
        if r.status_code >= 400:
            raise ApiError(r.status_code, r.json())
        return r.json() if r.content else None

    def get(self, path: str, **params):
        return self.request("GET", path, params={k: v for k, v in params.items() if v is not None})

    def post(self, path: str, body=None):
        return self.request("POST", path, json=body)

    def download(self, path: str, dest):
        from edgefleet.cloud.cli.client import ApiError

        r = self.client.get(path)
        if r.status_code >= 400:
            raise ApiError(r.status_code, r.json())
        dest.write_bytes(r.content)
        return len(r.content)


def cli_runner(capsys, monkeypatch=None, client: TestClient | None = None, *modules):
    """``run(*args, rc=0) -> stdout + stderr`` of one ``edgefleet`` command, asserting its exit code;
    with ``client``, the CLI modules given talk to that in-process app instead of a URL."""
    from edgefleet.cloud.cli import main as cli

    for module in modules:
        monkeypatch.setattr(module, "client_from_env", lambda url, token: CliClient(client))

    def run(*args: str, rc: int = 0) -> str:
        capsys.readouterr()
        code = cli(list(args))
        out = capsys.readouterr()
        assert code == rc, out
        return out.out + out.err
    return run


def on_event_loop() -> bool:
    """Whether the caller runs on an asyncio event loop (a blocking call there stalls the server)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True
