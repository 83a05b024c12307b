"""Helpers shared by the protocol tests (a uniquely named module: every test folder has a conftest)."""

from __future__ import annotations

from edgefleet.protocol import messages as m

from onnx_models import mlp_onnx as make_onnx_model  # noqa: F401  (re-exported to the tests)

N_IN, N_OUT = 4, 3


RECIPE = {
    "bundle": {"name": "tiny-clf", "version": "1.2.3", "build": 7, "runtime": "onnx",
               "labels": ["a", "b", "c"], "description": "test bundle"},
    "target": {"archs": ["x86_64", "aarch64"], "hardware_classes": ["cam-v2"], "min_agent_version": "0.1.0"},
    "preprocessing": {"scale": 1.0},
    "smoke_test": {"vectors": 3, "atol": 1e-5, "rtol": 1e-4},
    "profile": {"bins": 8},
}


BUNDLE = {"name": "clf", "version": "1.0.0", "build": 3, "digest": "ab" * 32, "runtime": "onnx", "slot": "A"}


def message_examples() -> dict[str, m.Message]:
    """One valid message per topic kind (fresh ids each call)."""
    return {
        "hello": m.Hello(device_id="d1", agent_version="0.1.0", arch="x86_64", os="Linux", runtimes=["onnx"],
                         installed=m.InstalledBundle(**BUNDLE), free_disk_bytes=10),
        "state": m.State(device_id="d1", status="online", update_state="downloading", deployment_id="dep1"),
        "telemetry": m.TelemetryWindow(device_id="d1", window_seq=4, window_start=10.0, window_end=70.0,
                                       latency_ms=m.Histogram(bounds=[1.0, 5.0], counts=[3, 1, 0]),
                                       features=[[1, 2], [3, 0]], predictions={"a": 2},
                                       drift=m.DriftScores(psi=0.01, js=0.001, level="ok", samples=3)),
        "events": m.Event(device_id="d1", level="warning", kind="malformed_message", text="x", data={"n": 1}),
        "status": m.StatusReport(device_id="d1", deployment_id="dep1", sequence=5, state="committed", final=True,
                                 outcome="committed"),
        "cmd": m.OrderMessage(device_id="d1", order=m.SignedOrder(
            signed=m.DeploymentOrder(device_id="d1", deployment_id="dep1", bundle_digest="cd" * 32,
                                     bundle_size=100, bundle_url="http://c/b", sequence=1, issued_at=1, expires_at=2),
            signatures=[m.Signature(keyid="ef" * 32, sig="AAAA")])),
        "ack": m.AckMessage(device_id="d1", ack=m.SignedAck(
            signed=m.AckBody(device_id="d1", acked=["a1", "a2"], issued_at=1),
            signatures=[m.Signature(keyid="ef" * 32, sig="AAAA")])),
    }
