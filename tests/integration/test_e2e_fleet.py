"""End to end, as an engineer does it from the CLI: a real controller, a real broker (Mosquitto on
127.0.0.1:1883, and the embedded broker) and real ``edgefleet-agent`` processes.

enroll -> bundle build -> push -> deploy --wait -> installed -> predictions on the device ->
telemetry (with drift) visible through the REST API and ``edgefleet telemetry``.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

import numpy as np
import pytest
from fleetkit import Agents, cli_json, predict, run_cli

from edgefleet.cloud.cli import main as cli
from edgefleet.cloud.cli.client import ControllerClient
from edgefleet.cloud.server import BackgroundServer
from edgefleet.cloud.settings import ControllerSettings
from edgefleet.compression import export_tflite
from edgefleet.compression.samples import load_digits_split, train_mlp

from testkit import free_port, wait_until

pytestmark = pytest.mark.integration

RECIPE = """
[bundle]
name = "digits-{runtime}"
version = "1.2.0"
build = 7
runtime = "{runtime}"
model = "model.{runtime}"
labels = ["0", "1", "2", "3", "4", "5", "6", "7", "8", "9"]

[smoke_test]
vectors = 3
atol = 1e-3
rtol = 1e-2

[drift]
min_samples = 40
"""


@pytest.fixture(scope="module")
def digits_models(tmp_path_factory) -> dict[str, Path]:
    data = load_digits_split()
    onnx_model = train_mlp(data, hidden=(32,))
    out = tmp_path_factory.mktemp("models")
    paths = {}
    for runtime, model in (("onnx", onnx_model), ("tflite", export_tflite(onnx_model))):
        (out / f"model.{runtime}").write_bytes(model)
        (out / f"digits-{runtime}.toml").write_text(RECIPE.format(runtime=runtime))
        paths[runtime] = out / f"digits-{runtime}.toml"
    np.save(out / "samples.npy", data.x_train[:300])
    paths["samples"] = out / "samples.npy"
    return paths


@pytest.fixture(params=["mosquitto", "embedded"])
def fleet(request, tmp_path, monkeypatch, topic_prefix):
    """A controller on the requested broker, and an admin token in the CLI's environment."""
    broker_url = None
    if request.param == "mosquitto":
        broker_url = request.getfixturevalue("mqtt_broker").url
    monkeypatch.chdir(tmp_path)
    (tmp_path / "keys").mkdir()
    admin = "efa_test_" + secrets.token_urlsafe(12)
    assert cli(["keys", "generate", "release", "--out", str(tmp_path / "keys")]) == 0
    settings = ControllerSettings(data_dir=tmp_path / "controller", listen_port=free_port(),
                                  broker_url=broker_url, topic_prefix=topic_prefix,
                                  release_key_paths=[tmp_path / "keys" / "release.pub"], admin_token=admin,
                                  reconcile_interval_s=0.5, heartbeat_timeout_s=30, deployment_timeout_s=90)
    server = BackgroundServer(settings).start()
    monkeypatch.setenv("EDGEFLEET_URL", server.url)
    monkeypatch.setenv("EDGEFLEET_TOKEN", admin)
    monkeypatch.setenv("EDGEFLEET_CLI_CONFIG", str(tmp_path / "no-cli.toml"))
    agents = Agents(tmp_path)
    yield server, agents
    agents.stop()
    server.stop()


def test_engineer_flow_from_the_cli(capsys, fleet, digits_models):
    server, agents = fleet
    dirs = {"dev-onnx": agents.start(capsys, server.url, "dev-onnx", "onnx"),
            "dev-tflite": agents.start(capsys, server.url, "dev-tflite", "tflite")}
    wait_until(lambda: {d["id"] for d in cli_json(capsys, "devices", "list", "--online")} == set(dirs),
               "both agents online")
    status = cli_json(capsys, "status", "--wait", "5")
    assert status["health"]["status"] == "ok" and (status["devices"], status["online"]) == (2, 2)
    assert status["info"]["release_key_ids"] and status["url"] == server.url
    rc, out, _ = run_cli(capsys, "status", "--token", "eft_wrong")
    assert rc == 0 and "no valid API token" in out

    digests = {}
    for runtime in ("onnx", "tflite"):
        built = cli_json(capsys, "bundle", "build", str(digits_models[runtime]), "--key", "keys/release.key",
                         "--samples", str(digits_models["samples"]), "--out", f"digits-{runtime}.efb")
        pushed = cli_json(capsys, "bundle", "push", built["bundle"])
        assert pushed["digest"] == built["digest"]
        digests[runtime] = built["digest"]
        dep = cli_json(capsys, "deploy", f"digits-{runtime}:1.2.0", "--tag", runtime, "--wait")
        assert dep["status"] == "succeeded", dep
        assert [(t["device_id"], t["outcome"]) for t in dep["targets"]] == [(f"dev-{runtime}", "committed")]

    listed = {b["digest"] for b in cli_json(capsys, "bundle", "list")}
    assert set(digests.values()) <= listed
    for device_id, runtime in (("dev-onnx", "onnx"), ("dev-tflite", "tflite")):
        wait_until(lambda d=device_id: cli_json(capsys, "devices", "show", d)["device"]["installed"],
                   "installed bundle")
        shown = cli_json(capsys, "devices", "show", device_id)["device"]
        assert shown["installed"]["digest"] == digests[runtime]

    data = load_digits_split()
    x, y = data.x_test[:200], data.y_test[:200]
    for device_id, state_dir in dirs.items():
        batch = x if device_id == "dev-onnx" else np.clip(0.5 * x + 0.45, 0, 1)  # dev-tflite sees drifted inputs
        replies = [predict(state_dir, batch[i:i + 20]) for i in range(0, len(batch), 20)]
        assert {r["bundle"]["version"] for r in replies} == {"1.2.0"}
        probs = np.concatenate([np.asarray(next(iter(r["outputs"].values()))) for r in replies])
        if device_id == "dev-onnx":
            assert (probs.argmax(1) == y).mean() > 0.85

    def telemetry_complete():
        summary = cli_json(capsys, "telemetry", "--by", "device")
        return summary if all(summary.get(d, {}).get("samples", 0) >= 200 for d in dirs) else None

    summary = wait_until(telemetry_complete, "telemetry windows from both devices")
    assert summary["dev-onnx"]["requests"] == 10 and summary["dev-tflite"]["requests"] == 10
    assert summary["dev-onnx"]["latency_ms"]["p50"] is not None
    assert summary["dev-onnx"]["drift"]["levels"].get("alarm", 0) == 0
    assert summary["dev-tflite"]["drift"]["levels"].get("alarm", 0) >= 1
    with ControllerClient(server.url, os.environ["EDGEFLEET_TOKEN"]) as api:
        windows = api.get("/api/v1/telemetry/windows", device_id="dev-tflite")
        by_bundle = api.get("/api/v1/telemetry/summary", group_by="bundle", key=digests["tflite"])
    assert windows and all(w["bundle_digest"] == digests["tflite"] for w in windows if w["samples"])
    assert by_bundle[digests["tflite"]]["samples"] == 200
    rc, out, _ = run_cli(capsys, "telemetry")
    assert rc == 0 and "dev-onnx" in out and "dev-tflite" in out


def test_cli_errors_are_one_line(capsys, fleet):
    server, _ = fleet
    rc, _, err = run_cli(capsys, "deploy", "nosuchbundle", "--all")
    assert rc != 0 and "no bundle named 'nosuchbundle'" in err and "Traceback" not in err
    rc, _, err = run_cli(capsys, "devices", "show", "ghost")
    assert rc != 0 and "ghost" in err and len(err.strip().splitlines()) == 1
    rc, _, err = run_cli(capsys, "devices", "list", "--token", "efa_wrong")
    assert rc != 0 and "401" in err and "Traceback" not in err
    rc, _, err = run_cli(capsys, "devices", "list", "--url", f"http://127.0.0.1:{free_port()}")
    assert rc != 0 and "cannot reach the controller" in err


@pytest.mark.parametrize("fleet", ["embedded"], indirect=True)
def test_model_registry_and_compression_job_from_the_cli(capsys, fleet, tmp_path):
    """Source model -> controller compression job -> compressed variant -> bundle, all from the CLI."""
    onnx_model = train_mlp(load_digits_split(), hidden=(32,))
    (tmp_path / "digits.onnx").write_bytes(onnx_model)
    assert cli_json(capsys, "models", "create", "digits")["name"] == "digits"
    uploaded = cli_json(capsys, "models", "upload", "digits", "1.0.0", str(tmp_path / "digits.onnx"))
    assert uploaded["artifact_size"] == len(onnx_model)
    job = cli_json(capsys, "models", "compress", "digits", "1.0.0", "--variant", "1.0.0-int8",
                   "--mode", "dynamic_int8", "--wait")
    assert job["state"] == "succeeded", job
    assert job["report"]["gate"]["passed"] is True
    failing = cli_json(capsys, "models", "compress", "digits", "1.0.0", "--variant", "1.0.0-bad", "--wait",
                       "--recipe", str(_write(tmp_path / "bad.toml", BAD_COMPRESSION)))
    assert (failing["state"], failing["error_code"]) == ("failed", "accuracy_gate_failed")
    lineage = cli_json(capsys, "models", "show", "digits")["lineage"]
    (source,) = lineage
    assert source["version"] == "1.0.0" and [c["version"] for c in source["children"]] == ["1.0.0-int8"]
    rc, out, _ = run_cli(capsys, "models", "show", "digits")
    assert rc == 0 and "1.0.0-int8" in out and "compressed" in out
    jobs = cli_json(capsys, "models", "jobs", "--model", "digits")
    assert sorted(j["state"] for j in jobs) == ["failed", "succeeded"]


BAD_COMPRESSION = """
[compression]
mode = "static_int8"
[compression.pruning]
kind = "unstructured"
sparsity = 0.95
[compression.gate]
max_accuracy_drop = 0.0
[compression.fallback]
enabled = false
"""


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path
