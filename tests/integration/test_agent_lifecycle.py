"""The real agent daemon against the real Mosquitto: install, serve, report, roll back."""

from __future__ import annotations

import io

import numpy as np
import pytest

from agentkit.bundles import replace_smoke_expected, resign, samples, split
from onnx_models import mlp_onnx, reference_forward

pytestmark = pytest.mark.integration


def test_installs_signed_bundle_serves_and_reports_telemetry_with_drift(agent_harness):
    h = agent_harness
    agent = h.start()
    hello = h.observer.wait_for(lambda o: o.of("hello"), what="hello")[0]
    assert hello["runtimes"] and "onnx" in hello["runtimes"] and hello["installed"] is None
    h.wait_online()
    status, body = agent.get("/v1/health")
    assert status == 503

    data = h.bundle(labels=["cat", "dog", "cow"])
    final = h.install(data)
    assert (final["outcome"], final["state"]) == ("committed", "committed"), final
    assert h.observer.states_of(final["deployment_id"]) == ["downloading", "verifying", "staged", "activating",
                                                             "health_check"]

    x = samples(n=8, seed=7)
    status, body = agent.predict({"x": x.tolist()})
    assert status == 200, body
    np.testing.assert_allclose(np.asarray(body["outputs"]["probs"]), reference_forward(h.model, x),
                               rtol=1e-5, atol=1e-6)
    assert body["bundle"]["name"] == "tiny" and body["bundle"]["version"] == "1.0.0"

    # binary form: .npy in, .npz out
    buf = io.BytesIO()
    np.save(buf, x)
    status, headers, raw = agent.request("POST", "/v1/predict", buf.getvalue(), "application/x-npy")
    assert status == 200
    out = np.load(io.BytesIO(raw))["probs"]
    np.testing.assert_allclose(out, reference_forward(h.model, x), rtol=1e-5, atol=1e-6)
    assert headers["X-EdgeFleet-Bundle-Version"] == "1.0.0"

    # drifted traffic: shifted inputs -> a drift alarm in telemetry
    for _ in range(5):
        agent.predict({"x": samples(n=100, seed=11, shift=3.0).tolist()})
    window = h.observer.wait_for(
        lambda o: next((t for t in o.of("telemetry") if t["samples"] >= 100 and t["drift"]), None),
        what="telemetry with drift")
    assert window["bundle"]["name"] == "tiny"
    assert window["drift"]["level"] == "alarm" and window["drift"]["psi"] > 0.25
    assert sum(window["latency_ms"]["counts"]) == window["batches"]
    assert len(window["features"]) == 4 and sum(window["features"][0]) == window["samples"]
    assert set(window["predictions"]) <= {"cat", "dog", "cow"}

    status, stats = agent.get("/v1/stats")
    assert stats["requests_total"] >= 7 and stats["bundle"]["version"] == "1.0.0"
    assert agent.terminate() == 0
    offline = h.observer.wait_for(lambda o: next((m for m in reversed(o.of("state")) if m["status"] == "offline"),
                                                 None), what="offline state")
    assert offline["installed"]["name"] == "tiny"


def test_bundle_failing_its_smoke_test_is_rolled_back(agent_harness):
    h = agent_harness
    agent = h.start()
    good = h.bundle(version="1.0.0", build=1)
    assert h.install(good)["outcome"] == "committed"

    manifest, _, stored = split(h.bundle(version="2.0.0", build=2, model=mlp_onnx(seed=5)))
    replace_smoke_expected(manifest, stored, "probs", lambda out: out + 0.5)
    bad = resign(manifest, stored, h.release_key.private)
    final = h.install(bad)
    assert (final["state"], final["outcome"], final["reason"]) == ("rolled_back", "rolled_back", "smoke_test_failed")
    status, body = agent.predict({"x": samples(n=2).tolist()})
    assert status == 200 and body["bundle"]["version"] == "1.0.0"


def test_live_inference_errors_during_health_check_roll_back(agent_harness):
    h = agent_harness
    agent = h.start(health_check_inferences=3, health_check_timeout_s=30.0)
    first = h.deploy(h.bundle(version="1.0.0"))
    h.observer.wait_for(lambda o: "health_check" in o.states_of(first), what="health_check")
    for _ in range(3):  # the first N live inferences succeed -> commit
        assert agent.predict({"x": samples(n=1).tolist()})[0] == 200
    assert h.observer.final_status(first)["outcome"] == "committed"
    # second bundle expects 4 features as well; a wrong-shaped live request fails -> rollback
    dep = h.deploy(h.bundle(version="1.1.0", build=2, model=mlp_onnx(seed=9)))
    h.observer.wait_for(lambda o: "health_check" in o.states_of(dep), what="health_check")
    status, body = agent.predict({"x": [[1.0, 2.0]]})
    assert status == 400 and body["error"]["code"] == "bad_input"
    final = h.observer.final_status(dep)
    assert (final["outcome"], final["reason"]) == ("rolled_back", "live_inference_failed")
    status, body = agent.get("/v1/health")
    assert body["bundle"]["version"] == "1.0.0"


def test_old_model_serves_until_the_new_one_is_activated(agent_harness):
    h = agent_harness
    agent = h.start()
    old, new = mlp_onnx(seed=1), mlp_onnx(seed=2)
    assert h.install(h.bundle(version="1.0.0", model=old))["outcome"] == "committed"
    h.files.faults.hold_after = 10  # the next download stalls after 10 bytes
    dep = h.deploy(h.bundle(version="2.0.0", build=2, model=new))
    h.observer.wait_for(lambda o: "downloading" in o.states_of(dep), what="downloading")
    x = samples(n=3, seed=4)
    for _ in range(3):
        status, body = agent.predict({"x": x.tolist()})
        assert status == 200 and body["bundle"]["version"] == "1.0.0"
        np.testing.assert_allclose(np.asarray(body["outputs"]["probs"]), reference_forward(old, x),
                                   rtol=1e-5, atol=1e-6)
    h.files.faults.release.set()
    assert h.observer.final_status(dep)["outcome"] == "committed"
    status, body = agent.predict({"x": x.tolist()})
    assert body["bundle"]["version"] == "2.0.0"
    np.testing.assert_allclose(np.asarray(body["outputs"]["probs"]), reference_forward(new, x), rtol=1e-5, atol=1e-6)
