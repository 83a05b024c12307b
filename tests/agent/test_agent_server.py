"""The local inference endpoint, in process (no broker)."""

from __future__ import annotations

import io
import json
import time
import urllib.error
import urllib.request

import numpy as np
import pytest

from edgefleet.agent.inference import Predictor, load_model
from edgefleet.agent.server import InferenceServer
from edgefleet.protocol.bundle import bundle_digest, verify_bundle


@pytest.fixture
def served(keys):
    data = keys.bundle()
    bundle = verify_bundle(data, trusted=keys.trusted_release)
    predictor = Predictor()
    server = InferenceServer(("127.0.0.1", 0), predictor, lambda: {"ok": True}, max_request_bytes=1 << 20)
    server.start()
    base = f"http://127.0.0.1:{server.address[1]}"
    yield base, predictor, lambda: predictor.activate(
        load_model(bundle, digest=bundle_digest(data), slot="a", window_start=time.time()))
    server.stop()


def call(base, path, body=None, ctype="application/json", accept=None):
    req = urllib.request.Request(base + path, data=body, method="POST" if body is not None else "GET")
    if body is not None:
        req.add_header("Content-Type", ctype)
    if accept:
        req.add_header("Accept", accept)
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, dict(r.headers), r.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read()


def test_no_model_is_503_then_json_and_binary_predictions(served):
    base, predictor, install = served
    assert call(base, "/v1/health")[0] == 503
    status, _, body = call(base, "/v1/predict", json.dumps({"inputs": {"x": [[0, 0, 0, 0]]}}).encode())
    assert status == 503 and json.loads(body)["error"]["code"] == "no_model"
    install()
    x = np.random.default_rng(0).normal(size=(3, 4)).astype(np.float32)
    status, _, body = call(base, "/v1/predict", json.dumps({"inputs": {"x": x.tolist()}}).encode())
    out = json.loads(body)
    assert status == 200 and out["bundle"]["version"] == "1.0.0" and np.asarray(out["outputs"]["probs"]).shape == (3, 3)
    buf = io.BytesIO()
    np.savez(buf, x=x)
    status, headers, body = call(base, "/v1/predict", buf.getvalue(), "application/x-npz")
    assert status == 200 and headers["Content-Type"] == "application/x-npz"
    np.testing.assert_allclose(np.load(io.BytesIO(body))["probs"], out["outputs"]["probs"], rtol=1e-6)
    buf = io.BytesIO()
    np.save(buf, x)
    status, _, body = call(base, "/v1/predict", buf.getvalue(), "application/x-npy", accept="application/json")
    assert status == 200 and json.loads(body)["bundle"]["name"] == "tiny"
    assert call(base, "/v1/stats")[2] == b'{"ok": true}'
    assert predictor.model.stats.requests == 3


@pytest.mark.parametrize("body,ctype,status,code", [
    (b"not json", "application/json", 400, "bad_input"),
    (b'{"inputs": [1]}', "application/json", 400, "bad_input"),
    (b'{"inputs": {"x": [[1, 2]]}}', "application/json", 400, "bad_input"),
    (b'{"inputs": {"y": [[1, 2, 3, 4]]}}', "application/json", 400, "bad_input"),
    (b'{"inputs": {"x": [["a", "b", "c", "d"]]}}', "application/json", 400, "bad_input"),
    (b"\x93NUMPY garbage", "application/x-npy", 400, "bad_input"),
    (b"x", "text/plain", 400, "bad_input"),
    (b"x" * (2 << 20), "application/json", 413, "too_large"),
])
def test_bad_requests_are_4xx_json(served, body, ctype, status, code):
    base, predictor, install = served
    install()
    got, _, raw = call(base, "/v1/predict", body, ctype)
    assert got == status and json.loads(raw)["error"]["code"] == code
    assert call(base, "/v1/health")[0] == 200  # still serving


def test_unknown_path_is_404(served):
    base, _, _ = served
    assert call(base, "/nope")[0] == 404
