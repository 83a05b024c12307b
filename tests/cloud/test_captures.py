"""Sample upload: the agent's uploader (agent/upload.py) against a real controller app served by uvicorn
(services/captures.py, routes/uploads.py, routes/captures.py): grants, resumable chunks after a cut
connection, idempotent repeats, refusals that store nothing, and the captured datasets' API and CLI."""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path

import httpx2 as httpx
import numpy as np
import pytest
import uvicorn
from proxykit import CutProxy

from edgefleet.agent.capture import Capture
from edgefleet.agent.upload import Result, Uploader, upload_batch
from edgefleet.cloud.app import create_app
from edgefleet.cloud.cli import main as cli
from edgefleet.cloud.services import captures
from edgefleet.cloud.settings import ControllerSettings
from edgefleet.cloud.store.tables import CaptureUpload
from edgefleet.cloud.vocabulary import UploadState
from edgefleet.protocol.bundle import build_bundle, parse_recipe
from edgefleet.protocol.errors import NotFoundError
from edgefleet.protocol.keys import TrustedKeys, generate_private_key
from edgefleet.protocol.manifest import CapturePolicy
from edgefleet.protocol.messages import UploadGrantMessage, decode
from edgefleet.protocol.uploads import sign_grant
from edgefleet.protocol.vocabulary import DriftLevel

from cloudkit import ADMIN, FakeTransport, Fleet, on_event_loop
from testkit import free_port, wait_until

CHUNK = 16 * 1024


@pytest.fixture
def live(tmp_path, release_pub, clock):
    """The controller app under uvicorn on a free port, behind a :class:`CutProxy` (its public URL)."""
    port = free_port()
    transport = FakeTransport()
    proxy = CutProxy(port)
    settings = ControllerSettings(data_dir=tmp_path / "controller", broker_url="mqtt://127.0.0.1:1",
                                  release_key_paths=[release_pub], admin_token=ADMIN, public_url=proxy.url,
                                  listen_port=port, max_capture_bytes=1024 * 1024)
    app = create_app(settings, clock=clock, transport_factory=lambda url, on_message: transport,
                     reconcile_in_background=False)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    wait_until(lambda: server.started, "uvicorn started")
    http = httpx.Client(base_url=f"http://127.0.0.1:{port}", headers={"Authorization": f"Bearer {ADMIN}"},
                       timeout=60)  # httpx waits 5 s by default; a bundle upload on a loaded machine can take longer
    yield Live(app.state.controller, http, transport, proxy, clock, tmp_path)
    http.close()
    proxy.close()
    server.should_exit = True
    thread.join(10)


class Live:
    def __init__(self, controller, http, transport, proxy, clock, tmp_path: Path) -> None:
        self.controller, self.http, self.transport, self.proxy, self.clock = controller, http, transport, proxy, clock
        self.tmp_path = tmp_path
        self.fleet = Fleet(http, controller, clock)
        self.keys = TrustedKeys.of([controller.controller_key.public_key()], role="controller")

    def bundle(self, release_key, onnx_model, *, capture: dict | None = None) -> str:
        recipe = {"bundle": {"name": "tiny", "version": "1.0.0", "build": 1 if capture else 2, "runtime": "onnx"}}
        if capture is not None:
            recipe["capture"] = capture
        samples = np.random.default_rng(1).normal(size=(64, 4)).astype(np.float32)
        built = build_bundle(parse_recipe(recipe), onnx_model, samples=samples, release_key=release_key)
        r = self.http.post("/api/v1/bundles", content=built.data, headers={"Content-Type": "application/octet-stream"})
        assert r.status_code == 201, r.text
        return built.digest

    def device(self, device_id: str, digest: str, *, samples: int = 300, labelled: int = 0, seed: int = 0) -> Capture:
        """A device with a reservoir holding one sealed batch of bundle ``digest``."""
        self.fleet.add(device_id)
        capture = Capture(self.tmp_path / device_id, clock=self.clock, rng=np.random.default_rng(seed))
        capture.set_model(digest, CapturePolicy(enabled=True, max_samples=1000, min_samples_to_upload=1))
        x = np.random.default_rng(seed).normal(size=(samples, 4)).astype(np.float32)
        served = _Served(f"{device_id}-p0", self.clock(), digest, {"x": x}, np.arange(samples) % 3)
        capture.on_served(served)
        capture.tick()
        if labelled:
            capture.on_labelled(served.prediction_id, np.arange(samples)[:labelled] % 3)
            capture.tick()
        capture.observe_window(digest, DriftLevel.ALARM)
        assert capture.tick() is not None
        return capture

    def uploader(self, capture: Capture, device_id: str, *, controller_url: str | None = None,
                 sent: list | None = None) -> Uploader:
        return Uploader(capture, device_id=device_id, controller_url=controller_url or self.proxy.url,
                        controller_keys=self.keys, send=(sent if sent is not None else []).append,
                        chunk_bytes=CHUNK, retry_s=0.01, timeout_s=10, clock=self.clock)

    def grant_for(self, capture: Capture, device_id: str) -> UploadGrantMessage:
        """The device asks (its request goes through ingest, as over MQTT); the controller answers."""
        batch = capture.reservoir.pending_batch()
        self.transport.published.clear()
        self.fleet.send(batch.request(device_id), "events")
        self.controller.publish_grants()
        grants = [decode("cmd", payload) for topic, payload in self.transport.published if topic.endswith("/cmd")]
        assert len(grants) == 1 and isinstance(grants[0], UploadGrantMessage), self.transport.published
        return grants[0]

    def upload_row(self, upload_id: str) -> CaptureUpload | None:
        with self.controller.session() as s:
            row = s.get(CaptureUpload, upload_id)
            if row is not None:
                s.expunge(row)
            return row

    def datasets(self) -> list[dict]:
        r = self.http.get("/api/v1/captures")
        assert r.status_code == 200, r.text
        return r.json()

    def part(self, upload_id: str) -> Path:
        return self.controller.upload_dir / f"{upload_id}.part"


class _Served:
    def __init__(self, prediction_id, at, bundle_digest, inputs, classes) -> None:
        self.prediction_id, self.at, self.bundle_digest, self.inputs, self.classes = \
            prediction_id, at, bundle_digest, inputs, classes


CAPTURE = {"enabled": True, "max_samples": 1000, "min_samples_to_upload": 1}


def drive(uploader: Uploader, done: Callable[[], bool], what: str) -> None:
    """Run the uploader's loop (as the agent does) until ``done``."""
    def step() -> bool:
        uploader.tick()
        return done()
    wait_until(step, what)


def test_a_batch_goes_up_through_a_grant_and_becomes_a_captured_dataset(live, release_key, onnx_model, monkeypatch):
    on_loop: list[bool] = []   # the upload route's database work runs off the event loop (cloud/api/transfer.py)
    for name in ("get_upload", "_store_dataset"):
        real = getattr(captures, name)
        monkeypatch.setattr(captures, name,
                            lambda *a, _real=real, **k: on_loop.append(on_event_loop()) or _real(*a, **k))
    digest = live.bundle(release_key, onnx_model, capture=CAPTURE)
    capture = live.device("dev-1", digest, samples=300, labelled=120)
    batch = capture.reservoir.pending_batch()
    sent: list = []
    uploader = live.uploader(capture, "dev-1", sent=sent)
    uploader.tick()
    (request,) = sent
    assert (request.type, request.upload_id, request.size) == ("upload_request", batch.upload_id, batch.size)
    live.fleet.send(request, "events")           # what the broker delivers; the controller grants at once
    (topic, payload), = [(t, p) for t, p in live.transport.published if t.endswith("dev-1/cmd")]
    uploader.on_grant(decode("cmd", payload))
    drive(uploader, lambda: capture.reservoir.pending_batch() is None, "the batch uploaded")
    assert not batch.path.exists() and uploader.uploaded == 1
    (dataset,) = live.datasets()
    assert (dataset["device_id"], dataset["bundle_digest"], dataset["samples"], dataset["labelled"]) == \
        ("dev-1", digest, 300, 120)
    assert (dataset["bundle_name"], dataset["bundle_version"]) == ("tiny", "1.0.0")
    assert len(on_loop) >= 2 and not any(on_loop)
    with live.controller.session() as s:
        (row,) = captures.list_captured(s, device_ids=["dev-1"])
        assert captures.list_captured(s, device_ids=["dev-2"]) == []
        assert captures.list_captured(s, since=row.t_to + 1) == []
    inputs, labels = captures.load_captured(live.controller.captures, [row])
    assert inputs["x"].shape == (300, 4) and labels.shape == (300,)
    assert (labels >= 0).sum() == 120 and set(labels[labels >= 0]) <= {0, 1, 2}


def test_a_cut_connection_resumes_and_every_byte_arrives_once(live, release_key, onnx_model):
    digest = live.bundle(release_key, onnx_model, capture=CAPTURE)
    capture = live.device("dev-1", digest, samples=400)
    batch = capture.reservoir.pending_batch()
    original = batch.path.read_bytes()
    grant = captures_grant(live, capture, "dev-1")
    part = live.part(batch.upload_id)
    # the second chunk's connection drops after 3 KiB of its body reached the controller
    first = upload_offsets(live, batch, grant, chunks=1)
    assert first == CHUNK
    live.proxy.cut_next(3000, lambda: wait_until(lambda: part.exists() and part.stat().st_size > CHUNK,
                                                 "the controller taking the bytes before the cut"))
    attempt = upload_batch(batch, grant, chunk_bytes=CHUNK, timeout=10)
    assert attempt.result == Result.RETRY and live.proxy.cuts == 1
    held = wait_until(lambda: part.exists() and part.stat().st_size, "the partial chunk on disk")
    head = live.http.head(f"/api/v1/uploads/{batch.upload_id}", params={"token": token_of(grant)})
    assert CHUNK < int(head.headers["Upload-Offset"]) == held < 2 * CHUNK   # the cut chunk's bytes were kept
    attempt = upload_batch(batch, grant, chunk_bytes=CHUNK, timeout=10)
    assert attempt.result == Result.STORED
    (dataset,) = live.datasets()
    stored = live.controller.captures.open_path(dataset["blob_digest"]).read_bytes()
    assert stored == original and dataset["size"] == len(original) and dataset["samples"] == 400


def test_a_completed_upload_repeated_answers_the_same_dataset(live, release_key, onnx_model):
    digest = live.bundle(release_key, onnx_model, capture=CAPTURE)
    capture = live.device("dev-1", digest, samples=50)
    batch = capture.reservoir.pending_batch()
    grant = captures_grant(live, capture, "dev-1")
    first = upload_batch(batch, grant, chunk_bytes=CHUNK, timeout=10)
    again = upload_batch(batch, grant, chunk_bytes=CHUNK, timeout=10)   # e.g. the agent died before forgetting it
    assert first.result == again.result == Result.STORED and first.dataset_id == again.dataset_id
    data = batch.path.read_bytes()
    put = live.http.put(f"/api/v1/uploads/{batch.upload_id}", params={"token": token_of(grant)}, content=data,
                        headers={"Content-Range": f"bytes 0-{len(data) - 1}/{len(data)}"})
    assert put.status_code == 200 and str(put.json()["id"]) == first.dataset_id
    assert len(live.datasets()) == 1
    live.grant_for(capture, "dev-1")  # a late request for a stored upload is granted again (to learn it is done)


def test_uploads_are_refused_outside_their_scope_and_store_nothing(live, release_key, onnx_model, clock):
    digest = live.bundle(release_key, onnx_model, capture=CAPTURE)
    one, two = live.device("dev-1", digest, samples=40), live.device("dev-2", digest, samples=40, seed=1)
    b1, b2 = one.reservoir.pending_batch(), two.reservoir.pending_batch()
    g1, g2 = captures_grant(live, one, "dev-1"), captures_grant(live, two, "dev-2")
    data = b1.path.read_bytes()

    def put(upload_id: str, token: str, content: bytes, total: int):
        return live.http.put(f"/api/v1/uploads/{upload_id}", params={"token": token}, content=content,
                             headers={"Content-Range": f"bytes 0-{len(content) - 1}/{total}"})

    assert put(b1.upload_id, token_of(g2), data, len(data)).status_code == 401     # another device's token
    assert live.http.head(f"/api/v1/uploads/{b1.upload_id}", params={"token": token_of(g2)}).status_code == 401
    r = put(b1.upload_id, token_of(g1), data + b"x", len(data) + 1)                  # more than granted
    assert r.status_code == 413 and r.json()["error"]["code"] == "size_limit"
    assert put(b1.upload_id, "", data, len(data)).status_code == 401
    assert put("f" * 32, token_of(g1), data, len(data)).status_code == 404          # no such upload
    r = live.http.put(f"/api/v1/uploads/{b1.upload_id}", params={"token": token_of(g1)}, content=data[:100],
                      headers={"Content-Range": f"bytes 0-49/{len(data)}"})              # longer than its range
    assert r.status_code == 413
    assert live.part(b1.upload_id).stat().st_size == 0                                # the chunk was dropped
    r = live.http.put(f"/api/v1/uploads/{b1.upload_id}", params={"token": token_of(g1)}, content=data[10:20],
                      headers={"Content-Range": f"bytes 10-19/{len(data)}"})               # not at the offset
    assert r.status_code == 409 and r.headers["Upload-Offset"] == "0"
    clock.advance(live.controller.settings.upload_grant_lifetime_s + 1)
    r = put(b2.upload_id, token_of(g2), b2.path.read_bytes(), b2.size)                # expired
    assert r.status_code == 401 and "expired" in r.json()["error"]["message"]
    assert live.datasets() == []
    assert not live.part(b2.upload_id).exists()


def test_a_wrong_digest_discards_the_bytes(live, release_key, onnx_model):
    digest = live.bundle(release_key, onnx_model, capture=CAPTURE)
    capture = live.device("dev-1", digest, samples=40)
    batch = capture.reservoir.pending_batch()
    grant = captures_grant(live, capture, "dev-1")
    with open(batch.path, "r+b") as fh:   # the file changed after its sha256 was announced
        fh.seek(batch.size - 100)
        fh.write(b"\0" * 10)
    attempt = upload_batch(batch, grant, chunk_bytes=CHUNK, timeout=10)
    assert attempt.result == Result.REFUSED and "digest_mismatch" in attempt.detail
    assert live.datasets() == [] and not live.part(batch.upload_id).exists()
    assert live.upload_row(batch.upload_id).state == UploadState.REQUESTED


def test_the_agent_refuses_grants_it_must_not_use(live, release_key, onnx_model, clock):
    digest = live.bundle(release_key, onnx_model, capture=CAPTURE)
    capture = live.device("dev-1", digest, samples=20)
    batch = capture.reservoir.pending_batch()
    good = live.grant_for(capture, "dev-1")
    forged_key = generate_private_key()
    cases = {
        "another origin": (live.proxy.url.replace("127.0.0.1", "localhost"), good),
        "bad signature": (None, good.model_copy(update={"grant": sign_grant(good.grant.signed, forged_key)})),
        "tampered": (None, good.model_copy(update={"grant": good.grant.model_copy(update={
            "signed": good.grant.signed.model_copy(update={"max_bytes": 10**6})})})),
        "another device": (None, good.model_copy(update={"grant": sign_grant(
            good.grant.signed.model_copy(update={"device_id": "dev-2"}), live.controller.controller_key)})),
        "another upload": (None, good.model_copy(update={"grant": sign_grant(
            good.grant.signed.model_copy(update={"upload_id": "e" * 32}), live.controller.controller_key)})),
        "elsewhere": (None, good.model_copy(update={"grant": sign_grant(good.grant.signed.model_copy(update={
            "url": good.grant.signed.url.replace(live.proxy.url, "https://evil.example")}),
            live.controller.controller_key)})),
    }
    for what, (controller_url, message) in cases.items():
        uploader = live.uploader(capture, "dev-1", controller_url=controller_url)
        uploader.on_grant(message)
        assert uploader.refused_grants == 1, what
        assert capture.reservoir.pending_batch().grant_json is None, what
    clock.advance(live.controller.settings.upload_grant_lifetime_s + 1)
    uploader = live.uploader(capture, "dev-1")
    uploader.on_grant(good)
    assert uploader.refused_grants == 1 and capture.reservoir.pending_batch().grant_json is None   # expired
    assert live.datasets() == [] and not live.part(batch.upload_id).exists()


def test_an_expired_grant_makes_the_agent_ask_again_and_resume(live, release_key, onnx_model, clock):
    digest = live.bundle(release_key, onnx_model, capture=CAPTURE)
    capture = live.device("dev-1", digest, samples=300)
    batch = capture.reservoir.pending_batch()
    original = batch.path.read_bytes()
    grant = captures_grant(live, capture, "dev-1")
    assert upload_offsets(live, batch, grant, chunks=1) == CHUNK
    sent: list = []
    uploader = live.uploader(capture, "dev-1", sent=sent)
    uploader.on_grant(live.grant_for(capture, "dev-1"))
    clock.advance(live.controller.settings.upload_grant_lifetime_s + 1)   # the stored grant ran out
    uploader.tick()
    assert [m.upload_id for m in sent] == [batch.upload_id]               # a new request, same upload
    uploader.on_grant(live.grant_for(capture, "dev-1"))
    drive(uploader, lambda: capture.reservoir.pending_batch() is None, "the batch uploaded")
    (dataset,) = live.datasets()
    assert live.controller.captures.open_path(dataset["blob_digest"]).read_bytes() == original


def test_requests_for_a_bundle_without_capture_are_refused(live, release_key, onnx_model):
    digest = live.bundle(release_key, onnx_model, capture=None)
    capture = live.device("dev-1", digest, samples=20)   # a device that captures anyway (a bug, or tampered)
    batch = capture.reservoir.pending_batch()
    live.fleet.send(batch.request("dev-1"), "events")
    assert [t for t, _ in live.transport.published if t.endswith("/cmd")] == []
    row = live.upload_row(batch.upload_id)
    assert row.state == UploadState.REFUSED and "does not opt in" in row.reason
    live.fleet.send(batch.request("dev-1"), "events")   # asking again changes nothing
    assert live.controller.publish_grants() == 0


def test_requests_for_a_bundle_not_in_the_registry_are_refused(live, release_key, onnx_model):
    """A device asking to upload samples of a bundle the controller never registered (a sideloaded or
    forged model) gets no grant, and asking again changes nothing."""
    live.bundle(release_key, onnx_model, capture=CAPTURE)            # some bundle is registered, not this one
    capture = live.device("dev-1", "5e" * 32, samples=20)
    batch = capture.reservoir.pending_batch()
    live.fleet.send(batch.request("dev-1"), "events")
    assert live.controller.publish_grants() == 0
    assert [t for t, _ in live.transport.published if t.endswith("/cmd")] == []
    row = live.upload_row(batch.upload_id)
    assert row.state == UploadState.REFUSED and "not in the registry" in row.reason
    live.fleet.send(batch.request("dev-1"), "events")
    assert live.controller.publish_grants() == 0 and live.datasets() == []


def test_a_request_naming_another_devices_upload_is_ignored(live, release_key, onnx_model):
    digest = live.bundle(release_key, onnx_model, capture=CAPTURE)
    capture = live.device("dev-1", digest, samples=20)
    live.fleet.add("dev-2")
    batch = capture.reservoir.pending_batch()
    live.grant_for(capture, "dev-1")
    live.transport.published.clear()
    live.fleet.send(batch.request("dev-2"), "events")
    assert live.controller.publish_grants() == 0 and live.upload_row(batch.upload_id).device_id == "dev-1"


def test_captured_datasets_api_and_cli(live, release_key, onnx_model, tmp_path, capsys):
    digest = live.bundle(release_key, onnx_model, capture=CAPTURE)
    capture = live.device("dev-1", digest, samples=30)
    batch = capture.reservoir.pending_batch()
    assert upload_batch(batch, captures_grant(live, capture, "dev-1"), chunk_bytes=CHUNK,
                        timeout=10).result == Result.STORED
    (dataset,) = live.datasets()
    viewer = live.http.post("/api/v1/tokens", json={"name": "v", "role": "viewer"}).json()["token"]
    assert live.http.get("/api/v1/captures", headers={"Authorization": f"Bearer {viewer}"}).status_code == 403
    assert live.http.get(f"/api/v1/captures/{dataset['id']}").json()["samples"] == 30
    assert live.http.get("/api/v1/captures/999").status_code == 404
    url = str(live.http.base_url)
    out = tmp_path / "c.npz"
    assert cli(["captures", "download", str(dataset["id"]), "--out", str(out), "--url", url, "--token", ADMIN]) == 0
    assert out.read_bytes() == live.controller.captures.open_path(dataset["blob_digest"]).read_bytes()
    capsys.readouterr()
    assert cli(["captures", "list", "--device", "dev-1", "--url", url, "--token", ADMIN]) == 0
    assert "dev-1" in capsys.readouterr().out
    audit = live.http.get("/api/v1/audit", params={"action": "capture."}).json()
    assert {a["action"] for a in audit} == {"capture.store", "capture.download"}
    assert cli(["captures", "delete", str(dataset["id"]), "--url", url, "--token", ADMIN]) == 0
    assert live.datasets() == []
    with pytest.raises(NotFoundError):
        live.controller.captures.open_path(dataset["blob_digest"])
    assert cli(["captures", "download", str(dataset["id"]), "--out", str(out), "--url", url, "--token", ADMIN]) == 1


def test_parse_captured_is_strict():
    import io

    def npz(**arrays) -> bytes:
        buf = io.BytesIO()
        np.savez(buf, **arrays)
        return buf.getvalue()

    good = {"prediction_id": np.array(["a", "b"]), "sample_index": np.array([0, 1]), "at": np.array([1.0, 2.0]),
            "predicted": np.array([0, 2]), "label": np.array([-1, 1]), "bundle_digest": np.array("ab" * 32),
            "input:x": np.zeros((2, 4), np.float32)}
    parsed = captures.parse_captured(npz(**good), max_unpacked=10**6)
    assert (parsed.samples, parsed.labelled, parsed.bundle_digest) == (2, 1, "ab" * 32)
    for bad in ({"input:x": np.zeros((3, 4))}, {"label": np.array([-2, 1])}, {"extra": np.zeros(2)},
                {"at": np.array(["x", "y"])}, {"bundle_digest": np.array("nope")},
                {"input:x": np.array([["a"] * 4] * 2)}):
        with pytest.raises(Exception) as exc:
            captures.parse_captured(npz(**(good | bad)), max_unpacked=10**6)
        assert getattr(exc.value, "code", None) == "invalid_request", bad
    with pytest.raises(Exception) as exc:
        captures.parse_captured(npz(**good), max_unpacked=100)
    assert exc.value.code == "size_limit"
    obj = good | {"input:x": np.array([object(), object()], dtype=object)}
    buf = io.BytesIO()
    np.savez(buf, allow_pickle=True, **obj)
    with pytest.raises(Exception) as exc:
        captures.parse_captured(buf.getvalue(), max_unpacked=10**6)
    assert exc.value.code == "invalid_request"   # pickles are never loaded


# ------------------------------------------------------------------ helpers

def captures_grant(live: Live, capture: Capture, device_id: str):
    return live.grant_for(capture, device_id).grant.signed


def token_of(grant) -> str:
    return grant.url.split("token=", 1)[1]


def upload_offsets(live: Live, batch, grant, *, chunks: int) -> int:
    """PUT the first ``chunks`` chunks by hand; return the controller's offset."""
    data = batch.path.read_bytes()
    offset = 0
    for _ in range(chunks):
        piece = data[offset: offset + CHUNK]
        r = live.http.put(f"/api/v1/uploads/{batch.upload_id}", params={"token": token_of(grant)}, content=piece,
                          headers={"Content-Range": f"bytes {offset}-{offset + len(piece) - 1}/{len(data)}"})
        assert r.status_code == 204, r.text
        offset = int(r.headers["Upload-Offset"])
    return offset


def test_an_agent_restart_resumes_with_its_stored_grant(live, release_key, onnx_model):
    digest = live.bundle(release_key, onnx_model, capture=CAPTURE)
    capture = live.device("dev-1", digest, samples=800)
    batch = capture.reservoir.pending_batch()
    original = batch.path.read_bytes()
    uploader = live.uploader(capture, "dev-1")
    uploader.on_grant(live.grant_for(capture, "dev-1"))
    grant = captures_grant(live, capture, "dev-1")
    assert upload_offsets(live, batch, grant, chunks=2) == 2 * CHUNK    # ...and then the agent died
    capture.close()
    again = Capture(live.tmp_path / "dev-1", clock=live.clock)         # the next agent process
    sent: list = []
    resumed = live.uploader(again, "dev-1", sent=sent)
    drive(resumed, lambda: again.reservoir.pending_batch() is None, "the batch uploaded")
    assert sent == []                                                    # the stored grant was enough
    (dataset,) = live.datasets()
    assert live.controller.captures.open_path(dataset["blob_digest"]).read_bytes() == original


def test_no_requests_pile_up_while_the_broker_is_away(live, release_key, onnx_model, clock):
    digest = live.bundle(release_key, onnx_model, capture=CAPTURE)
    capture = live.device("dev-1", digest, samples=20)
    sent: list = []
    uploader = live.uploader(capture, "dev-1", sent=sent)
    for _ in range(5):
        uploader.tick(online=False)
        clock.advance(60)
    assert sent == []
    uploader.tick()
    uploader.tick()                      # within retry_s of the first: not again
    assert [m.upload_id for m in sent] == [capture.reservoir.pending_batch().upload_id]
