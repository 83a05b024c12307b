"""Keys that rotate (docs/security.md §9), with real agents, a real controller and Mosquitto: the first
trust root from the CLI, then a release key rotation and a controller key rotation — devices follow
without re-enrollment, one of them offline through both — and the rotated-away release key refused."""

from __future__ import annotations

import secrets
from pathlib import Path

import numpy as np
import pytest
from fleetkit import Agents, cli_json, run_cli

from edgefleet.cloud.cli import main as cli
from edgefleet.cloud.server import BackgroundServer
from edgefleet.cloud.settings import ControllerSettings
from edgefleet.compression.samples import load_digits_split, train_mlp

from testkit import free_port, wait_until

pytestmark = pytest.mark.integration

RECIPE = """
[bundle]
name = "digits"
version = "{version}"
build = {build}
runtime = "onnx"
model = "model.onnx"
labels = ["0", "1", "2", "3", "4", "5", "6", "7", "8", "9"]
"""


@pytest.fixture
def fleet(tmp_path, monkeypatch, mqtt_broker, topic_prefix):
    monkeypatch.chdir(tmp_path)
    for name in ("root", "release", "release2"):
        assert cli(["keys", "generate", name, "--out", str(tmp_path / "keys")]) == 0
    admin = "efa_test_" + secrets.token_urlsafe(12)
    settings = ControllerSettings(data_dir=tmp_path / "controller", listen_port=free_port(),
                                  broker_url=mqtt_broker.url, topic_prefix=topic_prefix,
                                  release_key_paths=[tmp_path / "keys" / "release.pub"], admin_token=admin,
                                  reconcile_interval_s=0.5, heartbeat_timeout_s=30, deployment_timeout_s=90)
    server = BackgroundServer(settings).start()
    monkeypatch.setenv("EDGEFLEET_URL", server.url)
    monkeypatch.setenv("EDGEFLEET_TOKEN", admin)
    monkeypatch.setenv("EDGEFLEET_CLI_CONFIG", str(tmp_path / "no-cli.toml"))
    data = load_digits_split()
    (tmp_path / "model.onnx").write_bytes(train_mlp(data, hidden=(16,)))
    np.save(tmp_path / "samples.npy", data.x_train[:100])
    agents = Agents(tmp_path)
    yield server, agents
    agents.stop()
    server.stop()


def _bundle(capsys, version: str, build: int, key: str) -> str:
    recipe = Path(f"digits-{version}.toml")
    recipe.write_text(RECIPE.format(version=version, build=build))
    built = cli_json(capsys, "bundle", "build", str(recipe), "--key", f"keys/{key}.key", "--samples", "samples.npy",
                     "--out", f"digits-{version}.efb")
    return built["bundle"]


def _root_version(capsys, device_id: str) -> int | None:
    return cli_json(capsys, "devices", "show", device_id)["device"]["root_version"]


def test_release_and_controller_keys_rotate_without_re_enrollment(capsys, fleet):
    server, agents = fleet
    root = cli_json(capsys, "keys", "root", "init", "--root-key", "keys/root.key")
    assert root["signed"]["version"] == 1
    old_controller = server.controller.controller_key_id
    awake = agents.start(capsys, server.url, "awake")
    asleep_dir = agents.enroll(capsys, server.url, "asleep")      # pins version 1 too
    asleep = agents.run(asleep_dir)
    for device in ("awake", "asleep"):
        wait_until(lambda d=device: _root_version(capsys, d) == 1, f"{device} holds root 1", timeout=60)
    asleep.terminate()
    asleep.wait(10)

    # rotate the release key, then the controller key, while "asleep" is offline
    rc, out, err = run_cli(capsys, "keys", "rotate", "release", "--root-key", "keys/root.key",
                           "--add", "keys/release2.pub", "--remove", _key_id("keys/release.pub"))
    assert rc == 0, err
    assert cli_json(capsys, "keys", "rotate", "controller", "--root-key", "keys/root.key")["signed"]["version"] == 3
    assert server.controller.controller_key_id != old_controller   # the controller signs with its new key
    wait_until(lambda: _root_version(capsys, "awake") == 3, "awake follows roots 2 and 3", timeout=60)

    # the old release key is refused; the new one installs, with orders by the new controller key
    rc, _, err = run_cli(capsys, "bundle", "push", _bundle(capsys, "1.0.1", 2, "release"))
    assert rc != 0 and "release" in err
    assert cli_json(capsys, "bundle", "push", _bundle(capsys, "1.1.0", 3, "release2"))["version"] == "1.1.0"
    dep = cli_json(capsys, "deploy", "digits:1.1.0", "--device", "awake", "--wait")
    assert dep["status"] == "succeeded", dep

    # the device that slept through both rotations walks them when it is back, and installs
    agents.run(asleep_dir)
    dep = cli_json(capsys, "deploy", "digits:1.1.0", "--device", "asleep", "--wait")
    assert dep["status"] == "succeeded", dep
    assert _root_version(capsys, "asleep") == 3
    assert (asleep_dir / "root.json").exists() and awake.exists()


def _key_id(path: str) -> str:
    from edgefleet.protocol.keys import key_id, load_public_key

    return key_id(load_public_key(path))[:16]
