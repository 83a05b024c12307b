"""A small, realistic fleet for the UI tests, stored through the controller's own services:
a model with a compressed variant, two signed bundles (built from a tiny ONNX model made with
onnx.helper), devices enrolled with one-time tokens that then say hello and report state,
telemetry windows (latency histograms, predictions, drift) and a deployment whose devices are
downloading, committed and failed. Device messages go through the real ingest path (topic ->
decode -> store), exactly as the MQTT bridge hands them over."""

from __future__ import annotations

import hashlib
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edgefleet.cloud.controller import Controller
from edgefleet.cloud.mqtt.ingest import Raw
from edgefleet.cloud.services import deployments, devices, registry
from edgefleet.cloud.store.blobs import Incoming as Upload
from edgefleet.protocol import keys
from edgefleet.protocol.bundle import BuiltBundle, build_bundle, parse_recipe
from edgefleet.protocol.manifest import Lineage
from edgefleet.protocol.messages import (
    DriftScores,
    Event,
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

from onnx_models import mlp_onnx
from testkit import DeviceKey

LABELS = ["cat", "dog", "bird"]
LATENCY_BOUNDS = [0.5, 1.0, 2.0, 3.0, 5.0, 8.0, 12.0, 20.0, 35.0, 60.0, 100.0]
XSS_TAG = '<img src=x onerror="window.__xss=1">'
XSS_TEXT = '</li><script>window.__xss=2</script>'
WINDOWS = 36
WINDOW_S = 60.0


@dataclass
class Fleet:
    """What was seeded (ids and digests the tests look for)."""

    bundles: dict[str, BuiltBundle] = field(default_factory=dict)
    devices: dict[str, dict] = field(default_factory=dict)
    deployment_id: str = ""
    targets: dict[str, dict] = field(default_factory=dict)

    @property
    def online(self) -> list[str]:
        return [d for d, spec in self.devices.items() if spec["online"]]

    @property
    def offline(self) -> list[str]:
        return [d for d, spec in self.devices.items() if not spec["online"]]


DEVICES = {
    # id: tags, online, drift profile
    "cam-01": {"tags": ["site-a", "camera"], "online": True, "drift": "ok", "latency": 2.2},
    "cam-02": {"tags": ["site-a", "camera"], "online": True, "drift": "ok", "latency": 3.0},
    "cam-03": {"tags": ["site-b", "camera"], "online": True, "drift": "alarm", "latency": 2.6},
    "gate-01": {"tags": ["site-b", XSS_TAG], "online": True, "drift": "warn", "latency": 6.0},
    "gate-02": {"tags": ["site-b"], "online": False, "drift": None, "latency": 4.0},
}


def _upload(controller: Controller, data: bytes) -> Upload:
    fd, name = tempfile.mkstemp(dir=controller.bundles.root, prefix=".upload-")
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
    return Upload(Path(name), hashlib.sha256(data).hexdigest(), len(data))


KEYS: dict[tuple[int, str], DeviceKey] = {}
"""``(id(controller), device id)`` -> the message key :func:`enroll` gave the device (what its agent
would sign with); per controller, since several seeded fleets live in one test session."""


def ingest(controller: Controller, device_id: str, kind: str, message: Message, now: float) -> None:
    topic = device_topic(device_id, kind, controller.settings.topic_prefix)
    sealed = KEYS[id(controller), device_id].seal(topic, encode(message))
    result = controller.ingestor.process([Raw(topic, sealed, now)])
    assert result.stored == 1, (kind, device_id, result)


def installed(bundle: BuiltBundle, slot: str = "a") -> InstalledBundle:
    m = bundle.manifest
    return InstalledBundle(name=m.name, version=m.version, build=m.build, digest=bundle.digest, runtime=m.runtime,
                           slot=slot)


def _window(device_id: str, seq: int, end: float, bundle: BuiltBundle, spec: dict,
            rng: np.random.Generator) -> TelemetryWindow:
    requests = int(rng.integers(80, 160))
    latencies = rng.lognormal(mean=np.log(spec["latency"]), sigma=0.45, size=requests)
    latencies *= 1.0 + 0.25 * np.sin(seq / 5.0)
    counts = np.bincount(np.searchsorted(LATENCY_BOUNDS, latencies), minlength=len(LATENCY_BOUNDS) + 1)
    progress = seq / (WINDOWS - 1)
    reference = bundle.reference_profile().predictions
    shares = np.asarray([reference.get(label, 0.0) + 0.02 for label in LABELS])
    if spec["drift"] == "alarm":
        psi = 0.03 + 0.42 * progress ** 1.6 + rng.uniform(0, 0.02)
        shares = shares * (1 - 0.6 * progress) + np.asarray([0.5, 0.1, 0.4]) * 0.6 * progress
    elif spec["drift"] == "warn":
        psi = 0.05 + 0.09 * progress + rng.uniform(0, 0.02)
        shares = shares * 0.8 + np.asarray([0.2, 0.0, 0.0])
    else:
        psi = rng.uniform(0.01, 0.05)
    level = "alarm" if psi >= 0.25 else "warn" if psi >= 0.1 else "ok"
    preds = rng.multinomial(requests, shares / shares.sum())
    return TelemetryWindow(
        device_id=device_id, window_seq=seq, window_start=end - WINDOW_S, window_end=end, sent_at=end,
        bundle=installed(bundle), requests=requests, batches=requests, samples=requests,
        errors=int(rng.random() < 0.08),
        latency_ms=Histogram(bounds=LATENCY_BOUNDS, counts=[int(c) for c in counts]),
        predictions={label: int(c) for label, c in zip(LABELS, preds, strict=True)},
        drift=DriftScores(psi=round(float(psi), 4), js=round(float(psi) * 0.35, 4), level=level, samples=requests))


ACTOR = "admin:ui-test"


@dataclass
class Release:
    """Two signed versions (1.2.0, 1.3.0) of the tiny animal classifier and the key that trusts them."""

    bundles: dict[str, BuiltBundle]
    trusted: keys.TrustedKeys
    source: bytes


def build_release() -> Release:
    release = keys.generate_private_key()
    source = mlp_onnx(seed=0, layers=0)
    samples = np.random.default_rng(1).normal(size=(200, 4)).astype(np.float32)
    bundles = {}
    reports = {"1.2.0": LEGACY_REPORT, "1.3.0": compression_report()}
    for version, build in (("1.2.0", 3), ("1.3.0", 4)):
        recipe = parse_recipe({"bundle": {"name": "animals", "version": version, "build": build, "runtime": "onnx",
                                          "labels": LABELS, "description": "Tiny animal classifier for the UI tests"},
                               "target": {"min_agent_version": "0.1.0"}})
        bundles[version] = build_bundle(recipe, source, samples=samples, release_key=release,
                                        compression_report=reports[version],
                                        lineage=Lineage(source="tests/ui/ui_fleet.py"))
    return Release(bundles, keys.TrustedKeys.of([release.public_key()], role="release"), source)


LEGACY_REPORT = {"method": "dynamic_int8", "size_ratio": 0.27, "accuracy": {"original": 0.962, "compressed": 0.958},
                 "gate": {"max_drop": 0.01, "passed": True}}
"""A report of another shape (another tool's, an older one): shown as labelled values."""


def compression_report() -> dict:
    """The report ``edgefleet.compression`` writes, for a tiny model compressed here (dynamic int8)."""
    from edgefleet.compression import CompressionConfig, compress

    x = np.random.default_rng(0).normal(size=(64, 16)).astype(np.float32)
    result = compress(mlp_onnx(n_in=16, n_hidden=128, n_out=3, layers=2), "onnx", CompressionConfig(latency_runs=0),
                      calibration=x)
    return result.report.manifest_dict()


def register_release(controller: Controller, release: Release, *, now: float) -> None:
    """The model, its source and compressed versions, and both bundles in the registry."""
    with controller.session() as session:
        registry.create_model(session, name="animals", description="animal classifier", actor=ACTOR, now=now)
        src = registry.create_model_version(session, model_name="animals", version="1.0.0", actor=ACTOR, now=now)
        src.artifact_digest = hashlib.sha256(release.source).hexdigest()
        registry.create_model_version(session, model_name="animals", version="1.0.0-int8", kind="compressed",
                                      parent_version="1.0.0", actor=ACTOR, now=now,
                                      report=release.bundles["1.3.0"].manifest.compression)
        for built in release.bundles.values():
            registry.register_bundle(session, incoming=_upload(controller, built.data), store=controller.bundles,
                                     trusted=release.trusted, max_bytes=controller.settings.max_bundle_bytes,
                                     model_name="animals", model_version="1.0.0-int8", actor=ACTOR,
                                     now=now - 3600 + built.manifest.build)


def enroll(controller: Controller, device_id: str, tags: list[str], *, now: float) -> None:
    """Enroll a device with a one-time token (its first tag on the token, as a hardware class would be)."""
    with controller.session() as session:
        _, token = devices.create_enrollment_token(session, actor=ACTOR, now=now, tags=tags[:1])
        key = KEYS[id(controller), device_id] = DeviceKey()
        devices.enroll(session, token=token, device_id=device_id, now=now, public_key_pem=key.pem)


def hello(controller: Controller, device_id: str, tags: list[str], bundle: BuiltBundle, *, now: float) -> None:
    ingest(controller, device_id, "hello", Hello(
        device_id=device_id, agent_version="0.1.0", arch="x86_64", os="linux", runtimes=["onnx", "tflite"],
        hardware_class="edge-small", installed=installed(bundle), free_disk_bytes=3 * 1024 ** 3,
        tags=tags, sent_at=now), now)


def seed(controller: Controller, *, now: float, hostile: bool = True) -> Fleet:
    """Store the fleet; ``hostile`` puts HTML into a device tag and an event text (escaping tests)."""
    fleet = Fleet()
    specs = {d: dict(s, tags=[t for t in s["tags"] if hostile or t != XSS_TAG]) for d, s in DEVICES.items()}
    release = build_release()
    fleet.bundles = release.bundles
    register_release(controller, release, now=now)
    for device_id, spec in specs.items():
        enroll(controller, device_id, spec["tags"], now=now - 7200)
    old = fleet.bundles["1.2.0"]
    rng = np.random.default_rng(7)
    for device_id, spec in specs.items():
        fleet.devices[device_id] = spec
        hello(controller, device_id, spec["tags"], old, now=now - 3000)
        for seq in range(WINDOWS if spec["online"] else 0):
            end = now - (WINDOWS - 1 - seq) * WINDOW_S
            ingest(controller, device_id, "telemetry", _window(device_id, seq, end, old, spec, rng), end)
        ingest(controller, device_id, "state", State(
            device_id=device_id, status="online", update_state="committed", installed=installed(old),
            heartbeat_interval_s=30, sent_at=now - 5), now - 5)
    ingest(controller, "gate-01", "events", Event(
        device_id="gate-01", level="warning", kind="inference.slow",
        text=XSS_TEXT if hostile else "p95 latency above 10 ms in 3 consecutive windows", sent_at=now - 60), now - 60)
    ingest(controller, "gate-02", "state", State(device_id="gate-02", status="offline", sent_at=now - 1), now - 1)

    new = fleet.bundles["1.3.0"]
    targets = ["cam-01", "cam-02", "cam-03", "gate-01"]
    with controller.session() as session:
        dep = deployments.create_deployment(session, bundle_digest=new.digest, issuer=controller.issuer, actor=ACTOR,
                                            now=now - 120, timeout_s=1800, device_ids=targets,
                                            note="roll out 1.3.0 to the cameras")
        fleet.deployment_id = dep.id
        sequences = {t.device_id: t.sequence for t in deployments.targets_of(session, deployment_id=dep.id)}
    size = len(new.data)
    reports = {
        "cam-01": dict(state="committed", final=True, outcome="committed", bytes_done=size, bytes_total=size),
        "cam-02": dict(state="downloading", bytes_done=size * 2 // 5, bytes_total=size),
        "cam-03": dict(state="health_check", bytes_done=size, bytes_total=size),
        "gate-01": dict(state="failed", final=True, outcome="failed", reason="smoke_test_failed",
                        detail="output 0 differs by 0.31 (atol 1e-4)", bytes_done=size, bytes_total=size),
    }
    for device_id, report in reports.items():
        ingest(controller, device_id, "status", StatusReport(
            device_id=device_id, deployment_id=dep.id, sequence=sequences[device_id], bundle_digest=new.digest,
            sent_at=now - 30, **report), now - 30)
        fleet.targets[device_id] = report
    return fleet
