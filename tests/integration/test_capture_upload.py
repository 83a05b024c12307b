"""Sample capture end to end: a real controller (``edgefleet serve``), the real Mosquitto and real
``edgefleet-agent`` processes. A bundle whose recipe opts in ([capture]) is deployed to one device and a
bundle without it to another; predictions are served and labels fed back; the first device's captured
batch arrives at the controller as one dataset of the right device, bundle, count and labels, although
the controller is killed in the middle of the upload and restarted (its link cut at that moment by a
proxy in front of it): no sample is lost or duplicated. The second device keeps no samples at all.
"""

from __future__ import annotations

import io
import json
import secrets
import threading
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from fleetkit import Agents, ControllerProcess, cli_json, feedback, predict, run_cli
from proxykit import CutProxy

from edgefleet.compression.samples import load_digits_split, train_mlp

from testkit import wait_until

pytestmark = pytest.mark.integration

RECIPE = """
[bundle]
name = "{name}"
version = "1.0.0"
build = 1
runtime = "onnx"
model = "model.onnx"
labels = ["0", "1", "2", "3", "4", "5", "6", "7", "8", "9"]

[drift]
min_samples = 40
{capture}"""
CAPTURE = """
[capture]
enabled = true
max_samples = 500
min_samples_to_upload = 100
upload_interval_s = 1
"""
REQUESTS, BATCH, LABELLED_REQUESTS = 5, 20, 4


@pytest.fixture
def fleet(tmp_path, monkeypatch, topic_prefix, capsys, mqtt_broker):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "keys").mkdir()
    assert run_cli(capsys, "keys", "generate", "release", "--out", str(tmp_path / "keys"))[0] == 0
    admin = "efa_test_" + secrets.token_urlsafe(12)
    controller = ControllerProcess(tmp_path, admin_token=admin, broker_url=mqtt_broker.url, prefix=topic_prefix,
                                   release_pub=tmp_path / "keys" / "release.pub", reconcile_interval_s=0.5)
    proxy = CutProxy(controller.port)   # devices reach the controller through it (its public URL)
    controller.env["EDGEFLEET_PUBLIC_URL"] = proxy.url
    controller.start()
    monkeypatch.setenv("EDGEFLEET_URL", controller.url)
    monkeypatch.setenv("EDGEFLEET_TOKEN", admin)
    monkeypatch.setenv("EDGEFLEET_CLI_CONFIG", str(tmp_path / "no-cli.toml"))
    # the agent processes inherit these: small chunks, quick retries
    monkeypatch.setenv("EDGEFLEET_AGENT_UPLOAD_CHUNK_BYTES", "4096")
    monkeypatch.setenv("EDGEFLEET_AGENT_UPLOAD_RETRY_S", "0.5")
    agents = Agents(tmp_path)
    try:
        yield controller, proxy, agents
    finally:
        agents.stop()
        controller.stop()
        proxy.close()


def build_and_deploy(capsys, base: Path, name: str, capture: str, device_id: str) -> str:
    data = load_digits_split()
    folder = base / name
    folder.mkdir()
    (folder / "model.onnx").write_bytes(train_mlp(data, hidden=(16,), seed=0))
    (folder / "recipe.toml").write_text(RECIPE.format(name=name, capture=capture))
    np.save(folder / "samples.npy", data.x_train[:300])
    built = cli_json(capsys, "bundle", "build", str(folder / "recipe.toml"), "--key", "keys/release.key",
                     "--samples", str(folder / "samples.npy"), "--out", str(folder / "b.efb"))
    cli_json(capsys, "bundle", "push", built["bundle"])
    dep = cli_json(capsys, "deploy", built["digest"], "--device", device_id, "--wait")
    assert dep["status"] == "succeeded", dep
    return built["digest"]


def agent_stats(state_dir: Path) -> dict:
    addr = (state_dir / "inference.addr").read_text().strip()
    with urllib.request.urlopen(f"http://{addr}/v1/stats", timeout=10) as resp:
        return json.loads(resp.read())


def test_captured_samples_arrive_once_across_a_controller_restart(capsys, tmp_path, fleet):
    controller, proxy, agents = fleet
    capturing = agents.start(capsys, controller.url, "cap-1")
    plain = agents.start(capsys, controller.url, "plain-1")
    wait_until(lambda: len(cli_json(capsys, "devices", "list", "--online")) == 2, "both agents online", timeout=90)
    digest = build_and_deploy(capsys, tmp_path, "digits-capture", CAPTURE, "cap-1")
    build_and_deploy(capsys, tmp_path, "digits-plain", "", "plain-1")

    # the controller dies while the batch is on its way, after the first bytes of a chunk reached it
    uploads = tmp_path / "controller" / "uploads"

    def kill_and_restart() -> None:
        wait_until(lambda: any(p.stat().st_size for p in uploads.glob("*.part")), "the first bytes of the upload")
        controller.kill()
        restarted.set()
        controller.start()

    restarted = threading.Event()
    proxy.cut_next(2000, kill_and_restart)

    x = load_digits_split().x_test[: REQUESTS * BATCH].astype(np.float32)
    sent: dict[str, np.ndarray] = {}
    labels: dict[str, list[int]] = {}
    for i in range(REQUESTS):
        for state_dir in (capturing, plain):
            reply = predict(state_dir, x[i * BATCH:(i + 1) * BATCH])
            if state_dir == capturing:
                pid = reply["prediction_id"]
                sent[pid] = x[i * BATCH:(i + 1) * BATCH]
                if i < LABELLED_REQUESTS:  # labels come back before the batch is sealed
                    labels[pid] = [int(v) for v in np.arange(BATCH) % 10]
                    assert feedback(state_dir, pid, labels[pid])["labelled"] == BATCH

    def captured() -> list[dict] | None:   # the controller may be restarting: not there yet is no answer
        rc, out, _ = run_cli(capsys, "captures", "list", "--json")
        return json.loads(out) if rc == 0 and json.loads(out) else None

    datasets = wait_until(captured, "the captured dataset", timeout=120)
    assert restarted.is_set() and proxy.cuts == 1
    (dataset,) = datasets
    assert (dataset["device_id"], dataset["bundle_digest"], dataset["samples"], dataset["labelled"]) == \
        ("cap-1", digest, REQUESTS * BATCH, LABELLED_REQUESTS * BATCH)
    assert (dataset["bundle_name"], dataset["bundle_version"]) == ("digits-capture", "1.0.0")

    out = tmp_path / "capture.npz"
    cli_json(capsys, "captures", "download", str(dataset["id"]), "--out", str(out))
    with np.load(io.BytesIO(out.read_bytes()), allow_pickle=False) as npz:
        ids = list(zip(npz["prediction_id"].tolist(), npz["sample_index"].tolist(), strict=True))
        assert sorted(ids) == sorted((pid, i) for pid in sent for i in range(BATCH))   # none lost, none twice
        for (pid, i), row, label in zip(ids, npz["input:input"], npz["label"], strict=True):
            np.testing.assert_array_equal(row, sent[pid][i])
            assert label == (labels[pid][i] if pid in labels else -1)

    wait_until(lambda: agent_stats(capturing)["capture"]["pending_upload"] is None, "the agent forgetting the batch")
    assert not list((capturing / "capture" / "batches").iterdir())
    assert agent_stats(capturing)["capture"]["uploaded"] == 1
    assert not (plain / "capture").exists() and agent_stats(plain)["capture"]["samples"] == 0
    assert len(cli_json(capsys, "captures", "list")) == 1   # a repeat after the restart stored nothing twice
