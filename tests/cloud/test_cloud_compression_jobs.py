"""Compression jobs (model version → compressed variant, with lineage), sample-set uploads, and
bundles built on the controller (opt-in release signing key)."""

from __future__ import annotations

import io
import threading
from contextlib import contextmanager

import numpy as np
import pytest
from fastapi.testclient import TestClient

from edgefleet.cloud.app import create_app
from edgefleet.cloud.background import BackgroundLoop
from edgefleet.cloud.store.tables import CompressionJob
from edgefleet.compression.samples import load_digits_split, train_mlp
from edgefleet.protocol import keys
from edgefleet.protocol.bundle import verify_bundle
from edgefleet.protocol.keys import TrustedKeys

from cloudkit import ADMIN

OCTETS = {"Content-Type": "application/octet-stream"}
FAST = {"latency_runs": 2}


@pytest.fixture(scope="module")
def mlp() -> bytes:
    return train_mlp(load_digits_split(), hidden=(32,))


@pytest.fixture
def source(client, mlp) -> str:
    """Model ``digits`` with version ``1.0.0`` holding the MLP (uploaded through the API)."""
    assert client.post("/api/v1/models", json={"name": "digits"}).status_code == 201
    assert client.post("/api/v1/models/digits/versions", json={"version": "1.0.0"}).status_code == 201
    r = client.put("/api/v1/models/digits/versions/1.0.0/artifact", content=mlp, headers=OCTETS)
    assert r.status_code == 200, r.text
    return "/api/v1/models/digits/versions/1.0.0"


def _job(client, job_id: int) -> dict:
    r = client.get(f"/api/v1/compression-jobs/{job_id}")
    assert r.status_code == 200, r.text
    return r.json()


def test_dynamic_int8_job_registers_a_variant_with_lineage(client, controller, source, mlp):
    r = client.post(f"{source}/compress", json={"variant": "1.0.0-int8", "runtime": "onnx",
                                                 "config": {"mode": "dynamic_int8", **FAST}})
    assert r.status_code == 202, r.text
    job = r.json()
    assert job["state"] == "pending" and job["config"]["mode"] == "dynamic_int8"
    assert controller.run_pending_jobs() == [job["id"]]
    job = _job(client, job["id"])
    assert job["state"] == "succeeded", job
    assert job["report"]["gate"]["passed"] and job["report"]["size"]["compressed_bytes"] < len(mlp)
    variant = client.get("/api/v1/models/digits/versions/1.0.0-int8").json()
    assert variant["kind"] == "compressed" and variant["format"] == "onnx" and variant["id"] == job["result_version_id"]
    assert variant["report"] == job["report"] and variant["artifact_size"] < len(mlp)
    lineage = client.get("/api/v1/models/digits").json()["lineage"]
    assert [n["version"] for n in lineage] == ["1.0.0"]
    assert [c["version"] for c in lineage[0]["children"]] == ["1.0.0-int8"]
    assert [j["id"] for j in client.get("/api/v1/compression-jobs", params={"model": "digits"}).json()] == [job["id"]]
    actions = [e["action"] for e in client.get("/api/v1/audit").json()]
    assert "compression_job.create" in actions
    assert controller.run_pending_jobs() == []   # nothing left; a second pass changes nothing
    again = client.post(f"{source}/compress", json={"variant": "1.0.0-int8"})
    assert again.status_code == 409 and again.json()["error"]["where"] == "variant"


def test_failed_gate_keeps_the_report_and_registers_nothing(client, controller, source):
    config = {"mode": "static_int8", "pruning": {"kind": "unstructured", "sparsity": 0.95},
              "gate": {"max_accuracy_drop": 0.0}, "fallback": {"enabled": False}, **FAST}
    r = client.post(f"{source}/compress", json={"variant": "1.0.0-bad", "config": config})
    assert r.status_code == 202, r.text
    controller.run_pending_jobs()
    job = _job(client, r.json()["id"])
    assert job["state"] == "failed" and job["error_code"] == "accuracy_gate_failed", job
    assert job["report"] is not None and not job["report"]["gate"]["passed"]
    assert job["result_version_id"] is None
    assert client.get("/api/v1/models/digits/versions/1.0.0-bad").status_code == 404
    assert [v["version"] for v in client.get("/api/v1/models/digits").json()["versions"]] == ["1.0.0"]


def test_bad_requests_store_no_job(client, source):
    r = client.post(f"{source}/compress", json={"variant": "v2", "config": {"pruning": {"sparsity": 1.5}}})
    assert r.status_code == 422 and r.json()["error"]["where"] == "body.config.pruning.sparsity"
    r = client.post(f"{source}/compress", json={"variant": "v2", "config": {"mode": "int3"}})
    assert r.status_code == 422 and "config.mode" in r.json()["error"]["where"]
    assert client.post(f"{source}/compress", json={"variant": "v2", "runtime": "coreml"}).status_code == 422
    r = client.post(f"{source}/compress", json={"variant": "v2", "data": "dataset"})
    assert r.status_code == 409 and "dataset" in r.json()["error"]["hint"]
    client.post("/api/v1/models/digits/versions", json={"version": "empty"})
    r = client.post("/api/v1/models/digits/versions/empty/compress", json={"variant": "v2"})
    assert r.status_code == 409 and "no model file" in r.json()["error"]["message"]
    assert "/artifact" in r.json()["error"]["hint"]
    assert client.post("/api/v1/models/digits/versions/none/compress", json={"variant": "v2"}).status_code == 404
    assert client.get("/api/v1/compression-jobs").json() == []
    assert client.get("/api/v1/compression-jobs/999").status_code == 404


def test_interrupted_job_is_recovered_on_start(client, controller, source, settings, clock, transport):
    r = client.post(f"{source}/compress", json={"variant": "1.0.0-fp16", "config": {"mode": "fp16", **FAST}})
    job_id = r.json()["id"]
    with controller.session() as session:        # as if a controller died in the middle of the job
        job = session.get(CompressionJob, job_id)
        job.state, job.attempts, job.started_at = "running", 1, clock()
    restarted = create_app(settings, clock=clock, transport_factory=lambda url, on_message: transport,
                           reconcile_in_background=False)
    with TestClient(restarted) as other:
        other.headers["Authorization"] = f"Bearer {ADMIN}"
        assert _job(other, job_id)["state"] == "pending"
        assert restarted.state.controller.run_pending_jobs() == [job_id]
        job = _job(other, job_id)
        assert job["state"] == "succeeded" and job["attempts"] == 2
    with controller.session() as session:        # a job that keeps killing its controller is given up
        job = session.get(CompressionJob, job_id)
        job.state, job.attempts = "running", 3
    with TestClient(create_app(settings, clock=clock, transport_factory=lambda url, on_message: transport,
                               reconcile_in_background=False)):
        pass
    job = _job(client, job_id)
    assert job["state"] == "failed" and job["error_code"] == "interrupted"


def _npz(**arrays) -> bytes:
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    return buf.getvalue()


def test_dataset_upload_feeds_a_job(client, controller, source):
    data = load_digits_split()
    r = client.put("/api/v1/models/digits/dataset", content=_npz(x=data.x_test, y=data.y_test), headers=OCTETS)
    assert r.status_code == 200, r.text
    assert r.json()["samples"] == len(data.x_test) and r.json()["labelled"]
    assert client.get("/api/v1/models/digits/dataset").json()["digest"] == r.json()["digest"]
    r = client.post(f"{source}/compress", json={"variant": "1.0.0-ds", "data": "dataset", "config": FAST})
    assert r.status_code == 202, r.text
    controller.run_pending_jobs()
    job = _job(client, r.json()["id"])
    assert job["state"] == "succeeded", job
    assert job["report"]["accuracy"] is not None


@pytest.mark.parametrize("body, where", [
    (b"not a zip", "body"),
    (_npz(y=np.arange(3)), "body"),                                     # no x
    (_npz(x=np.zeros((4, 64), np.float32), z=np.zeros(2)), "body"),      # unknown array
    (_npz(x=np.array(["a", "b"])), "x"),                                  # not numeric
    (_npz(x=np.zeros((4, 64), np.float32), y=np.zeros(3, np.int64)), "y"),  # labels don't match
])
def test_malformed_dataset_is_refused_and_not_stored(client, controller, source, body, where):
    before = sorted(p.name for p in controller.artifacts.root.iterdir())
    r = client.put("/api/v1/models/digits/dataset", content=body, headers=OCTETS)
    assert r.status_code == 400 and r.json()["error"]["where"] == where, r.text
    assert sorted(p.name for p in controller.artifacts.root.iterdir()) == before
    assert client.get("/api/v1/models/digits/dataset").status_code == 409


def test_oversized_dataset_is_refused(client, controller, source):
    controller.settings.max_dataset_bytes = 1000
    r = client.put("/api/v1/models/digits/dataset", content=_npz(x=np.zeros((100, 64), np.float32)), headers=OCTETS)
    assert r.status_code == 413


RECIPE = {"bundle": {"name": "digits-mlp", "version": "1.0.0", "build": 1, "runtime": "onnx"},
          "target": {"archs": ["x86_64"]}, "smoke_test": {"vectors": 2}, "drift": {}}


@contextmanager
def _controller_with_source(settings, clock, transport, model: bytes):
    """A controller (jobs run on demand) with model ``digits`` version 1.0.0 holding ``model``."""
    app = create_app(settings, clock=clock, transport_factory=lambda url, on_message: transport,
                     reconcile_in_background=False)
    with TestClient(app) as client:
        client.headers["Authorization"] = f"Bearer {ADMIN}"
        client.post("/api/v1/models", json={"name": "digits"})
        client.post("/api/v1/models/digits/versions", json={"version": "1.0.0"})
        client.put("/api/v1/models/digits/versions/1.0.0/artifact", content=model, headers=OCTETS)
        yield app, client


@pytest.fixture
def signing_settings(settings, release_key, tmp_path):
    settings.release_signing_key_path = keys.save_private_key(release_key, tmp_path / "release.key")
    return settings


def test_server_build_with_the_key(signing_settings, clock, transport, release_key, mlp):
    with _controller_with_source(signing_settings, clock, transport, mlp) as (app, client):
        r = client.post("/api/v1/models/digits/versions/1.0.0/compress", json={"variant": "1.0.0-int8",
                                                                              "config": FAST})
        app.state.controller.run_pending_jobs()
        r = client.post("/api/v1/models/digits/versions/1.0.0-int8/bundles", json=RECIPE | {"data": "digits"})
        assert r.status_code == 201, r.text
        bundle = r.json()
        data = client.get(f"/api/v1/bundles/{bundle['digest']}/download").content
        verified = verify_bundle(data, trusted=TrustedKeys.of([release_key.public_key()], role="release"))
        variant = client.get("/api/v1/models/digits/versions/1.0.0-int8").json()
        source = client.get("/api/v1/models/digits/versions/1.0.0").json()
        assert verified.manifest.lineage.source_digest == variant["artifact_digest"]
        assert verified.manifest.lineage.parent_digest == source["artifact_digest"]
        assert verified.manifest.compression == variant["report"]
        lineage = client.get("/api/v1/models/digits").json()["lineage"]
        assert lineage[0]["children"][0]["bundles"][0]["digest"] == bundle["digest"]
        assert "bundle.build" in [e["action"] for e in client.get("/api/v1/audit").json()]
        assert "/api/v1/compression-jobs/{job_id}" in client.get("/openapi.json").json()["paths"]
        again = client.post("/api/v1/models/digits/versions/1.0.0-int8/bundles", json=RECIPE)
        assert again.status_code == 200 and again.json()["digest"] == bundle["digest"]   # reproducible
        wrong = RECIPE | {"bundle": RECIPE["bundle"] | {"runtime": "tflite", "build": 2}}
        r = client.post("/api/v1/models/digits/versions/1.0.0-int8/bundles", json=wrong)
        assert r.status_code == 409 and r.json()["error"]["where"] == "bundle.runtime"
        r = client.post("/api/v1/models/digits/versions/1.0.0/bundles", json={"bundle": {"name": "Bad Name"}})
        assert r.status_code == 422


def test_server_build_needs_a_trusted_key(signing_settings, clock, transport, mlp, tmp_path):
    signing_settings.release_signing_key_path = keys.save_private_key(keys.generate_private_key(),
                                                                      tmp_path / "stranger.key")
    with _controller_with_source(signing_settings, clock, transport, mlp) as (app, client):
        r = client.post("/api/v1/models/digits/versions/1.0.0/bundles", json=RECIPE)
        assert r.status_code == 409 and "not a trusted release key" in r.json()["error"]["message"]
        assert "release-keys" in r.json()["error"]["hint"]
        assert client.get("/api/v1/bundles").json() == []


def test_server_build_without_the_key_is_refused(client, source):
    r = client.post(f"{source}/bundles", json=RECIPE)
    assert r.status_code == 409
    error = r.json()["error"]
    assert error["where"] == "release_signing_key_path" and "edgefleet bundle build" in error["hint"]
    assert client.get("/api/v1/bundles").json() == []


def test_background_worker_runs_a_new_job(settings, clock, transport, mlp):
    app = create_app(settings, clock=clock, transport_factory=lambda url, on_message: transport)
    worker = app.state.controller._jobs
    passes, done = worker.step, threading.Event()

    def step() -> None:
        passes()
        done.set()
    worker.step = step
    with TestClient(app) as client:
        client.headers["Authorization"] = f"Bearer {ADMIN}"
        client.post("/api/v1/models", json={"name": "digits"})
        client.post("/api/v1/models/digits/versions", json={"version": "1.0.0"})
        client.put("/api/v1/models/digits/versions/1.0.0/artifact", content=mlp, headers=OCTETS)
        r = client.post("/api/v1/models/digits/versions/1.0.0/compress", json={"variant": "v-int8", "config": FAST})
        assert r.status_code == 202
        while _job(client, r.json()["id"])["state"] in ("pending", "running"):
            assert done.wait(30), "the worker was not woken"
            done.clear()
        assert _job(client, r.json()["id"])["state"] == "succeeded"


def test_background_loop_survives_a_failing_pass():
    calls: list[int] = []
    second = threading.Event()

    def step() -> None:
        calls.append(1)
        if len(calls) == 1:
            worker.wake()           # ask for another pass, then fail this one
            raise RuntimeError("boom")
        second.set()
    worker = BackgroundLoop(step, interval_s=3600, name="test")
    worker.start()
    try:
        worker.wake()
        assert second.wait(10) and len(calls) == 2
    finally:
        worker.stop()
