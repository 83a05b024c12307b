"""Delegated signing keys against the real agent process and a real broker (docs/security.md §6).

(a) A device played by the harness: a bundle signed by a delegated key installs; the same kind of
    bundle outside the delegation's name pattern, for another hardware class, under an expired
    delegation, or after the controller published a document that revokes the key is refused with
    the precise reason, and the device keeps serving the bundle it had; an older document is refused
    and counted; after a restart the installed bundle still serves.
(b) The whole ceremony from the CLI against a real controller process: delegate with the release key,
    push, build with the delegated key, deploy; revoke; the controller publishes the new document to the
    device first, and the device refuses a bundle of the revoked key that the controller had registered.
"""

from __future__ import annotations

import json
import secrets
import time
from pathlib import Path

import numpy as np
import pytest
from fleetkit import Agents, ControllerProcess, cli_json, run_cli

from edgefleet.protocol.bundle import bundle_digest
from edgefleet.protocol.delegation import make_delegation, sign_delegations
from edgefleet.protocol.messages import DelegationsDocument, DelegationsMessage, encode

from agentkit.bundles import make_bundle, samples
from testkit import wait_until

pytestmark = pytest.mark.integration


def _document(version: int, delegations: list, signer) -> object:
    return sign_delegations(DelegationsDocument(version=version, expires_at=int(time.time()) + 86_400,
                                                delegations=delegations), [signer])


def _delegation(pair, name: str, classes: list[str], expires_in: int = 3600):
    return make_delegation(name=name, public_key=pair.private.public_key(), name_patterns=["tiny-*"],
                           hardware_classes=classes, expires_at=int(time.time()) + expires_in)


def test_a_delegated_key_installs_inside_its_scope_and_is_refused_outside(agent_harness, make_key_pair):
    h = agent_harness
    agent = h.start(hardware_class="cam-v2")
    retrain, gpu, stale = make_key_pair("retrain"), make_key_pair("gpu"), make_key_pair("stale")
    v1 = _document(1, [_delegation(retrain, "retrain", ["cam-v2"]), _delegation(gpu, "gpu", ["gpu-box"]),
                       _delegation(stale, "stale", ["*"], expires_in=-60)], h.release_key.private)

    def bundle(key, name: str, build: int, classes: list[str], doc=v1) -> bytes:
        return make_bundle(h.model, key.private, name=name, version=f"1.0.{build}", build=build,
                           target={"hardware_classes": classes}, delegations=doc)

    good = bundle(retrain, "tiny-retrained", 1, ["cam-v2"])
    final = h.install(good)
    assert final["outcome"] == "committed", final
    stats = agent.get("/v1/stats")[1]
    assert stats["delegations_version"] == 1  # the document came inside the bundle
    assert stats["bundle"]["digest"] == bundle_digest(good)

    def refused(data: bytes) -> tuple[str, str]:
        final = h.install(data)
        assert final["outcome"] == "refused", final
        status, body = agent.predict({"x": samples(4).tolist()})
        assert status == 200, body  # still serving...
        assert agent.get("/v1/stats")[1]["bundle"]["digest"] == bundle_digest(good)  # ...the bundle it had
        return final["reason"], final["detail"]

    reason, detail = refused(bundle(retrain, "faces-mlp", 2, ["cam-v2"]))
    assert reason == "outside_delegation" and detail.startswith("manifest.name:"), detail
    reason, detail = refused(bundle(gpu, "tiny-gpu", 3, ["gpu-box"]))
    assert reason == "outside_delegation" and detail.startswith("device.hardware_class:"), detail
    reason, detail = refused(bundle(stale, "tiny-stale", 4, ["cam-v2"]))
    assert reason == "delegation_expired" and detail.startswith("delegations.stale.expires_at:"), detail

    # the controller publishes version 2 without "retrain"; the device takes it before the next order
    v2 = _document(2, [_delegation(gpu, "gpu", ["gpu-box"])], h.release_key.private)
    h.observer.publish("cmd", encode(DelegationsMessage(device_id=h.device_id, delegations=v2)))
    wait_until(lambda: agent.get("/v1/stats")[1]["delegations_version"] == 2, "the device took version 2")
    assert json.loads((h.agent.state_dir / "delegations.json").read_bytes())["signed"]["version"] == 2
    reason, detail = refused(bundle(retrain, "tiny-retrained", 5, ["cam-v2"]))  # still embeds version 1
    assert reason == "delegation_revoked" and "no longer delegates it" in detail, detail

    # an older document (a replay of version 1) is refused and counted, and changes nothing
    h.observer.publish("cmd", encode(DelegationsMessage(device_id=h.device_id, delegations=v1)))
    wait_until(lambda: agent.get("/v1/stats")[1]["delegations_refused"] == 1, "the replay refused and counted")
    assert agent.get("/v1/stats")[1]["delegations_version"] == 2

    # expiry and revocation stop installs, not the model that serves: after a restart it still does
    agent.terminate()
    h.start()
    stats = agent.get("/v1/stats")[1]
    assert stats["bundle"]["digest"] == bundle_digest(good) and stats["delegations_version"] == 2


RECIPE = """
[bundle]
name = "{name}"
version = "{version}"
build = {build}
runtime = "onnx"
model = "model.onnx"

[target]
hardware_classes = ["generic"]
"""


@pytest.fixture
def controlled(tmp_path, monkeypatch, topic_prefix, capsys, mqtt_broker, tiny_onnx):
    monkeypatch.chdir(tmp_path)
    assert run_cli(capsys, "keys", "generate", "release", "--out", "keys")[0] == 0
    assert run_cli(capsys, "keys", "generate", "retrain", "--out", "keys")[0] == 0
    (tmp_path / "model.onnx").write_bytes(tiny_onnx)
    np.save(tmp_path / "samples.npy", samples(128))
    for name, version, build in (("tiny-auto", "1.0.0", 1), ("tiny-auto", "1.0.1", 2), ("tiny-auto", "1.0.2", 3),
                                 ("faces", "1.0.0", 1)):
        (tmp_path / f"{name}-{build}.toml").write_text(RECIPE.format(name=name, version=version, build=build))
    admin = "efa_test_" + secrets.token_urlsafe(12)
    controller = ControllerProcess(tmp_path, admin_token=admin, broker_url=mqtt_broker.url, prefix=topic_prefix,
                                   release_pub=tmp_path / "keys" / "release.pub", reconcile_interval_s=0.5,
                                   heartbeat_timeout_s=30, deployment_timeout_s=90)
    controller.start()
    monkeypatch.setenv("EDGEFLEET_URL", controller.url)
    monkeypatch.setenv("EDGEFLEET_TOKEN", admin)
    monkeypatch.setenv("EDGEFLEET_CLI_CONFIG", str(tmp_path / "no-cli.toml"))
    agents = Agents(tmp_path)
    yield controller, agents
    agents.stop()
    controller.stop()


def _device_stats(state_dir: Path) -> dict:
    import urllib.request

    with urllib.request.urlopen(f"http://{(state_dir / 'inference.addr').read_text().strip()}/v1/stats",
                                timeout=10) as resp:
        return json.loads(resp.read())


def test_the_key_ceremony_from_the_cli_delegate_build_deploy_revoke(capsys, controlled):
    controller, agents = controlled
    state_dir = agents.start(capsys, controller.url, "cam-1")
    wait_until(lambda: [d["id"] for d in cli_json(capsys, "devices", "list", "--online")] == ["cam-1"], "online")
    wait_until(lambda: (state_dir / "inference.addr").exists(), "the inference endpoint")

    made = cli_json(capsys, "keys", "delegate", "--release-key", "keys/release.key", "--name", "tiny-*",
                    "--hardware-class", "*", "--expires", "30d", "--public-key", "keys/retrain.pub",
                    "--out", "delegations.json")
    assert made["version"] == 1 and made["document"]["signed"]["delegations"][0]["name"] == "retrain"
    pushed = cli_json(capsys, "keys", "delegations", "push", "delegations.json")
    assert pushed["version"] == 1 and [d["name"] for d in pushed["delegations"]] == ["retrain"]
    assert cli_json(capsys, "keys", "delegations")["version"] == 1
    wait_until(lambda: _device_stats(state_dir)["delegations_version"] == 1, "the controller sent version 1")

    built = {}
    for build in (1, 2):
        built[build] = cli_json(capsys, "bundle", "build", f"tiny-auto-{build}.toml", "--key", "keys/retrain.key",
                                "--delegation", "delegations.json", "--samples", "samples.npy",
                                "--out", f"tiny-{build}.efb")
        assert cli_json(capsys, "bundle", "push", built[build]["bundle"])["digest"] == built[build]["digest"]
    rc, _, err = run_cli(capsys, "bundle", "build", "faces-1.toml", "--key", "keys/retrain.key", "--delegation",
                         "delegations.json", "--samples", "samples.npy")
    assert rc == 1 and "manifest.name: bundle name 'faces' is outside delegation 'retrain'" in err, err

    dep = cli_json(capsys, "deploy", built[1]["digest"], "--device", "cam-1", "--wait")
    assert [(t["device_id"], t["outcome"]) for t in dep["targets"]] == [("cam-1", "committed")], dep

    revoked = cli_json(capsys, "keys", "revoke-delegation", "retrain", "--release-key", "keys/release.key")
    assert revoked["version"] == 2 and revoked["document"]["signed"]["delegations"] == []
    assert cli_json(capsys, "keys", "delegations")["version"] == 2
    wait_until(lambda: _device_stats(state_dir)["delegations_version"] == 2, "the controller sent version 2")

    dep = cli_json(capsys, "deploy", built[2]["digest"], "--device", "cam-1", "--wait")
    (target,) = dep["targets"]
    assert (target["outcome"], target["reason"]) == ("refused", "delegation_revoked"), dep
    assert _device_stats(state_dir)["bundle"]["digest"] == built[1]["digest"]  # keeps serving what it had

    # the controller refuses the revoked key's new bundles, and an older document
    late = cli_json(capsys, "bundle", "build", "tiny-auto-3.toml", "--key", "keys/retrain.key", "--delegation",
                    "delegations.json", "--samples", "samples.npy", "--out", "tiny-3.efb")
    rc, _, err = run_cli(capsys, "bundle", "push", late["bundle"])
    assert rc == 1 and "no longer delegates it" in err, err
    rc, _, err = run_cli(capsys, "keys", "delegations", "push", "delegations.json")
    assert rc == 1 and "older than the accepted version 2" in err, err
