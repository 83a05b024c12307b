"""Malformed and oversized messages, both runtimes, and the agent's import closure."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from edgefleet.protocol.bundle import read_manifest

from agentkit.bundles import samples
from onnx_models import reference_forward

pytestmark = pytest.mark.integration


def test_malformed_and_oversized_commands_are_counted_and_ignored(agent_harness):
    h = agent_harness
    agent = h.start()
    h.wait_online()
    assert h.install(h.bundle())["outcome"] == "committed"
    _, valid = h.order(h.bundle(version="1.0.1"))
    bad_payloads = [
        b"\xff\xfe not json",
        b"[1, 2, 3]",
        json.dumps({"schema_version": 99, "type": "order"}).encode(),
        json.dumps({"schema_version": 1, "type": "order", "device_id": h.device_id, "order": {}}).encode(),
        b"{" + b" " * (64 * 1024) + b"}",
        valid.replace(h.device_id.encode(), b"other-device", 1),  # envelope for someone else
    ]
    for payload in bad_payloads:
        h.observer.publish("cmd", payload)
    event = h.observer.wait_for(lambda o: next((e for e in o.of("events") if e["kind"] == "malformed_message"), None),
                                what="malformed_message event")
    assert event["level"] == "warning"
    stats = h.observer.wait_for(lambda o: (lambda s: s if s["malformed_messages"] == len(bad_payloads) else None)(
        agent.get("/v1/stats")[1]), what="all malformed messages counted")
    assert stats["update_state"] == "committed"
    assert agent.predict({"x": samples(n=1).tolist()})[0] == 200
    dep = json.loads(valid)["order"]["signed"]["deployment_id"]
    h.observer.publish("cmd", valid)  # still takes orders
    assert h.observer.final_status(dep)["outcome"] == "committed"
    # the events are rate-limited (one per MALFORMED_EVENT_EVERY_S): a flood of bad commands costs the
    # fleet's event log one line, while the counter above still counts every one. The final status left
    # the outbox after any later event would have, so none is still on its way.
    assert [e["kind"] for e in h.observer.of("events")].count("malformed_message") == 1
    assert agent.proc.poll() is None


def _tflite(onnx_model: bytes) -> bytes:
    from edgefleet.compression.onnx_to_tflite import export_tflite  # the dev install has every extra

    return export_tflite(onnx_model)


@pytest.mark.parametrize("runtime", ["onnx", "tflite"])
def test_both_runtimes_serve_a_real_model_matching_reference(agent_harness, runtime):
    h = agent_harness
    model = h.model if runtime == "onnx" else _tflite(h.model)
    data = h.bundle(model=model, runtime=runtime)
    name = read_manifest(data).inputs[0].name
    agent = h.start()
    final = h.install(data)
    assert final["outcome"] == "committed", final
    x = samples(n=16, seed=5)
    status, body = agent.predict({name: x.tolist()})
    assert status == 200, body
    (out,) = body["outputs"].values()
    np.testing.assert_allclose(np.asarray(out), reference_forward(h.model, x), rtol=1e-4, atol=1e-5)
    hello = agent.get("/v1/health")[1]
    assert hello["bundle"]["name"] == "tiny"


def test_agent_import_closure_is_light():
    code = ("import sys, edgefleet.agent.daemon, edgefleet.agent.inference, edgefleet.agent.server;"
            "bad = sorted(m for m in sys.modules if m.split('.')[0] in "
            "{'fastapi', 'sqlmodel', 'sqlalchemy', 'onnx', 'starlette', 'uvicorn'} "
            "or m.startswith(('edgefleet.cloud', 'edgefleet.compression')));"
            "print(','.join(bad))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def test_bad_config_is_one_line_naming_the_key(tmp_path):
    cfg = tmp_path / "agent.toml"
    cfg.write_text('device_id = "dev-1"\nstate_dir = "state"\ntelemetry_interval_s = -1\n')
    out = subprocess.run([sys.executable, "-m", "edgefleet.agent.daemon", "--config", str(cfg)],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 2
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and "telemetry_interval_s" in lines[0] and str(cfg) in lines[0], out.stderr


def test_crash_publishes_the_last_will_offline_state(agent_harness):
    h = agent_harness
    h.start()
    h.wait_online()
    h.agent.kill()
    offline = h.observer.wait_for(lambda o: next((m for m in o.of("state") if m["status"] == "offline"), None),
                                  what="last will")
    assert offline["device_id"] == h.device_id


def test_mqtt5_session_installs_and_serves(agent_harness):
    h = agent_harness
    agent = h.start(mqtt_protocol="5")
    h.wait_online()
    assert h.install(h.bundle())["outcome"] == "committed"
    assert agent.predict({"x": samples(n=2).tolist()})[0] == 200
