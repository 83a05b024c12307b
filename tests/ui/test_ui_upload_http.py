"""Bundle upload from the UI over plain HTTP: the form on ``/ui/bundles`` (operators only), a signed
bundle verified by the same service call as ``POST /api/v1/bundles`` and then listed, with its audit
entry; a tampered file, a file signed by an unknown key, a file over the bundle bound, no file, a
viewer and a post without the CSRF token are refused with a precise page and store nothing."""

from __future__ import annotations

import time

import numpy as np
import pytest
from fastapi.testclient import TestClient

from edgefleet.cloud.app import create_app
from edgefleet.cloud.services import audit, auth, registry
from edgefleet.cloud.settings import ControllerSettings
from edgefleet.protocol import keys
from edgefleet.protocol.bundle import build_bundle, parse_recipe

from .test_ui_http import ADMIN, NoTransport, login
from onnx_models import mlp_onnx

MAX_BYTES = 256 * 1024


@pytest.fixture(scope="module")
def release(tmp_path_factory):
    """A release key the controller trusts, one it does not, and a bundle signed by each."""
    trusted, stranger = keys.generate_private_key(), keys.generate_private_key()
    pub = keys.save_public_key(trusted.public_key(), tmp_path_factory.mktemp("keys") / "release.pub")
    recipe = parse_recipe({"bundle": {"name": "uploaded", "version": "2.0.0", "build": 7, "runtime": "onnx"}})
    samples = np.random.default_rng(1).normal(size=(32, 4)).astype(np.float32)
    model = mlp_onnx(seed=0, layers=0)
    return pub, build_bundle(recipe, model, samples=samples, release_key=trusted), \
        build_bundle(recipe, model, samples=samples, release_key=stranger)


@pytest.fixture
def app(tmp_path, release):
    settings = ControllerSettings(data_dir=tmp_path / "controller", broker_url="mqtt://127.0.0.1:1", admin_token=ADMIN,
                                  release_key_paths=[release[0]], max_bundle_bytes=MAX_BYTES)
    return create_app(settings, transport_factory=lambda url, on_message: NoTransport(),
                      reconcile_in_background=False)


def stored(app) -> tuple[int, int, list[str]]:
    """Bundles in the registry, uploads entries, and the files in the bundle store (temp files too)."""
    controller = app.state.controller
    with controller.session() as session:
        return (len(registry.list_bundles(session)), len(audit.list_entries(session, action="bundle.upload")),
                sorted(p.name for p in controller.bundles.root.rglob("*") if p.is_file()))


def post(client: TestClient, data: bytes, name: str = "uploaded.efb", **fields: str):
    return client.post("/ui/bundles/upload", files={"bundle": (name, data, "application/x-tar")}, data=fields)


def test_an_operator_uploads_a_signed_bundle_and_it_is_listed(app, client, release):
    _, good, _ = release
    with app.state.controller.session() as session:
        operator = auth.create_token(session, name="op", role="operator", actor="admin:test", now=time.time())[1]
    login(client, token=operator)
    page = client.get("/ui/bundles").text
    assert 'id="upload-form"' in page and 'enctype="multipart/form-data"' in page and "No bundle yet" in page
    r = post(client, good.data)
    assert r.status_code == 303 and r.headers["location"] == "/ui/bundles"
    listed = client.get("/ui/bundles").text
    assert f"/ui/bundles/{good.digest}" in listed and "<b>2.0.0</b>" in listed
    with app.state.controller.session() as session:
        (entry,) = audit.list_entries(session, action="bundle.upload")
        assert entry.actor.startswith("operator:") and entry.target == f"bundle:{good.digest}"
        assert registry.get_bundle(session, digest=good.digest).uploaded_by == entry.actor
    assert post(client, good.data).status_code == 303                 # the same bytes again: the same bundle
    assert stored(app)[:2] == (1, 1)


def test_a_bad_file_is_refused_with_a_precise_page_and_nothing_is_stored(app, client, release):
    _, good, foreign = release
    login(client)
    assert good.data.count(b'"2.0.0"') == 1
    tampered = good.data.replace(b'"2.0.0"', b'"2.0.1"')           # the signed manifest, changed after signing
    cases = {
        "tampered": (tampered, 422, "0 valid release signature(s), 1 required"),
        "unknown key": (foreign.data, 422, "no signature by a trusted release key"),
        "too large": (b"x" * (MAX_BYTES + 1), 413, f"exceeds {MAX_BYTES} bytes"),
        "over the form bound": (b"x" * (MAX_BYTES + 100_000), 413, "larger than the bundle limit"),
        "empty": (b"", 400, "is empty"),
        "no file": (None, 400, "no bundle file was chosen"),
    }
    for case, (data, status, text) in cases.items():
        before = stored(app)
        if data is None:
            r = client.post("/ui/bundles/upload", data={"model": ""}, files={"other": ("x", b"1")})
        else:
            r = post(client, data)
        assert r.status_code == status, (case, r.text[:500])
        assert f'class="card error-page" data-status="{status}"' in r.text, case     # the styled page, not JSON
        assert text in r.text, (case, r.text[:2000])
        assert stored(app) == before, case


def test_a_viewer_or_a_post_without_the_csrf_token_stores_nothing(app, client, release):
    _, good, _ = release
    with app.state.controller.session() as session:
        viewer = auth.create_token(session, name="v", role="viewer", actor="admin:test", now=time.time())[1]
    login(client, token=viewer)
    assert 'id="upload-form"' not in client.get("/ui/bundles").text
    r = post(client, good.data)
    assert r.status_code == 403 and "viewer) may not do this" in r.text
    login(client)
    client.headers.pop("X-CSRF-Token")
    r = post(client, good.data)
    assert r.status_code == 403 and "CSRF" in r.text
    assert stored(app)[:2] == (0, 0)
