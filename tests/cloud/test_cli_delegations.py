"""Delegations on the controller side: ``edgefleet keys delegate / delegations [push] / revoke-delegation``
against the controller app (its REST answered by the test client), the API's refusals, the document
sent to every device (and again after a hello), bundle registration under the document in force, and
:func:`trust.bundle_signer` for server-side builds."""

from __future__ import annotations

import json

import numpy as np
import pytest
from fastapi.testclient import TestClient

from edgefleet.cloud.app import create_app
from edgefleet.cloud.cli import keys as cli_keys
from edgefleet.cloud.services import trust
from edgefleet.compression.samples import load_digits_split, train_mlp
from edgefleet.protocol import keys
from edgefleet.protocol.bundle import build_bundle, parse_recipe, verify_bundle
from edgefleet.protocol.delegation import DelegationCheck, make_delegation, sign_delegations
from edgefleet.protocol.errors import ConflictError
from edgefleet.protocol.messages import DelegationsDocument, DelegationsMessage, decode
from edgefleet.protocol.topics import parse_device_topic

from cloudkit import ADMIN, cli_runner

LONG = "3650d"  # the controller's fake clock runs ahead of the real one the CLI signs with


@pytest.fixture
def ceremony(tmp_path, release_key, client, capsys, monkeypatch):
    """Key files in tmp_path/k, the CLI pointed at the app; ``run(*args, rc=0)`` -> output."""
    monkeypatch.chdir(tmp_path)
    keys.save_private_key(release_key, tmp_path / "k" / "release.key")
    for name in ("retrain", "nightly"):
        key = keys.generate_private_key()
        keys.save_private_key(key, tmp_path / "k" / f"{name}.key")
        keys.save_public_key(key.public_key(), tmp_path / "k" / f"{name}.pub")
    return cli_runner(capsys, monkeypatch, client, cli_keys)


def delegate(run, public: str, *extra: str, rc: int = 0) -> dict | str:
    out = run("keys", "delegate", "--release-key", "k/release.key", "--public-key", f"k/{public}.pub",
              "--expires", LONG, "--document-expires", LONG, *extra, rc=rc)
    return json.loads(out) if rc == 0 and "--json" in extra else out


def sent_documents(transport) -> dict[str, int]:
    """device id -> version of the delegations messages published so far."""
    out = {}
    for topic, payload in transport.published:
        msg = decode("cmd", payload)
        if isinstance(msg, DelegationsMessage):
            out[parse_device_topic(topic)[0]] = msg.delegations.signed.version
    return out


def test_delegate_push_list_and_revoke_from_the_cli(ceremony, fleet, transport, client):
    run = ceremony
    fleet.add("cam-1")
    fleet.add("cam-2")
    assert "no delegations document" in run("keys", "delegations")
    first = delegate(run, "retrain", "--name", "digits-*", "--hardware-class", "cam-v2", "--out", "d1.json",
                     "--json")
    assert first["version"] == 1 and first["out"] == "d1.json"
    (d,) = first["document"]["signed"]["delegations"]
    assert (d["name"], d["name_patterns"], d["hardware_classes"]) == ("retrain", ["digits-*"], ["cam-v2"])
    second = delegate(run, "nightly", "--name", "faces-*", "--name", "tiny-?", "--hardware-class", "*",
                      "--from", "d1.json", "--out", "d2.json", "--json")
    assert second["version"] == 2
    assert [d["name"] for d in second["document"]["signed"]["delegations"]] == ["retrain", "nightly"]

    out = run("keys", "delegations", "push", "d2.json")
    assert "delegations version 2 in force: retrain, nightly" in out
    assert sent_documents(transport) == {"cam-1": 2, "cam-2": 2}  # every enrolled device at once
    transport.published.clear()
    run("keys", "delegations", "push", "d2.json")  # the same again: nothing changes, nothing is sent
    assert sent_documents(transport) == {}
    shown = run("keys", "delegations")
    assert "retrain" in shown and "faces-* tiny-?" in shown and "version" in shown
    listed = json.loads(run("keys", "delegations", "--json"))
    assert listed["version"] == 2 and listed["pushed_by"] and len(listed["delegations"]) == 2
    # a lower version is refused (by the API, with its code)
    out = run("keys", "delegations", "push", "d1.json", rc=1)
    assert "older than the accepted version 2" in out and "body.version" in out

    revoked = json.loads(run("keys", "revoke-delegation", "retrain", "--release-key", "k/release.key",
                             "--document-expires", LONG, "--json"))
    assert revoked["version"] == 3 and revoked["out"] == "delegations-v3.json" and revoked["revoked"] == "retrain"
    assert [d["name"] for d in revoked["document"]["signed"]["delegations"]] == ["nightly"]
    assert json.loads(run("keys", "delegations", "--json"))["version"] == 3
    assert sent_documents(transport) == {"cam-1": 3, "cam-2": 3}
    assert "no delegation 'retrain' in version 3" in run("keys", "revoke-delegation", "retrain",
                                                         "--release-key", "k/release.key", rc=1)
    audit = [e for e in client.get("/api/v1/audit").json() if e["action"] == "delegations.push"]
    assert {tuple(e["details"]["revoked"]) for e in audit} == {(), ("retrain",)}


def test_delegate_refuses_what_it_must_not_sign(ceremony, tmp_path):
    run = ceremony
    delegate(run, "retrain", "--name", "digits-*", "--hardware-class", "*", "--out", "d1.json")
    out = delegate(run, "retrain", "--name", "x-*", "--hardware-class", "*", "--label", "other", "--from", "d1.json",
                   rc=2)
    assert "already delegated as 'retrain'" in out and "--label retrain" in out
    # the same label replaces the delegation (a renewal, a new scope)
    renewed = delegate(run, "retrain", "--name", "digits-v2-*", "--hardware-class", "*", "--from", "d1.json",
                       "--out", "d2.json", "--json")
    assert [d["name_patterns"] for d in renewed["document"]["signed"]["delegations"]] == [["digits-v2-*"]]
    # a base document the release key never signed is not re-signed (someone edited it)
    doc = json.loads((tmp_path / "d1.json").read_text())
    doc["signed"]["delegations"][0]["name_patterns"] = ["*"]
    (tmp_path / "edited.json").write_text(json.dumps(doc))
    out = delegate(run, "nightly", "--name", "n-*", "--hardware-class", "*", "--from", "edited.json", rc=1)
    assert "edited.json.signatures" in out and "0 valid release signature(s), 1 required" in out
    assert not (tmp_path / "delegations.json").exists()  # nothing written
    out = delegate(run, "nightly", "--name", "Bad/Name", "--hardware-class", "*", rc=2)
    assert "name_patterns" in out
    out = delegate(run, "nightly", "--name", "n-*", "--hardware-class", "*", "--hardware-class", "cam", rc=2)
    assert "give it alone" in out
    out = run("keys", "delegate", "--release-key", "k/release.key", "--public-key", "k/nightly.pub", "--name", "n-*",
              "--hardware-class", "*", "--expires", "soon", rc=2)
    assert "Invalid value for '--expires'" in out


def _doc(release_key, delegated, *, version, patterns=("tiny-*",), classes=("*",), expires_at=2_000_000_000):
    body = DelegationsDocument(version=version, expires_at=expires_at, delegations=[
        make_delegation(name="retrain", public_key=delegated.public_key(), name_patterns=list(patterns),
                        hardware_classes=list(classes), expires_at=expires_at)])
    return sign_delegations(body, [release_key])


def test_the_api_refuses_unsigned_expired_and_older_documents(client, release_key, clock):
    delegated = keys.generate_private_key()
    stranger = _doc(keys.generate_private_key(), delegated, version=1)
    r = client.post("/api/v1/delegations", json=stranger.model_dump(mode="json"))
    assert (r.status_code, r.json()["error"]["code"], r.json()["error"]["where"]) == \
        (422, "unknown_key", "body.signatures")
    expired = _doc(release_key, delegated, version=1, expires_at=int(clock()) - 1)
    r = client.post("/api/v1/delegations", json=expired.model_dump(mode="json"))
    assert (r.status_code, r.json()["error"]["code"]) == (422, "delegation_expired")
    r = client.post("/api/v1/delegations", json={"signed": {"version": 1}, "signatures": []})
    assert r.status_code == 422 and r.json()["error"]["code"] == "invalid_request"
    assert client.get("/api/v1/delegations").json() is None
    assert client.post("/api/v1/delegations", json=_doc(release_key, delegated, version=2).model_dump(mode="json")) \
        .status_code == 201
    r = client.post("/api/v1/delegations", json=_doc(release_key, delegated, version=1).model_dump(mode="json"))
    assert (r.status_code, r.json()["error"]["code"]) == (422, "delegation_rollback")
    forked = _doc(release_key, delegated, version=2, patterns=("*",))
    r = client.post("/api/v1/delegations", json=forked.model_dump(mode="json"))
    assert r.status_code == 422 and "already accepted with other content" in r.json()["error"]["message"]
    viewer = client.post("/api/v1/tokens", json={"name": "v", "role": "viewer"}).json()["token"]
    r = client.post("/api/v1/delegations", json=forked.model_dump(mode="json"),
                    headers={"Authorization": f"Bearer {viewer}"})
    assert r.status_code == 403


def test_a_device_gets_the_document_after_its_hello(client, fleet, transport, release_key):
    fleet.enroll("cam-1")
    doc = _doc(release_key, keys.generate_private_key(), version=1)
    assert client.post("/api/v1/delegations", json=doc.model_dump(mode="json")).status_code == 201
    transport.published.clear()
    fleet.hello("cam-1")
    assert sent_documents(transport) == {"cam-1": 1}


@pytest.fixture
def delegated_bundle(onnx_model):
    x = np.random.default_rng(1).normal(size=(64, 4)).astype(np.float32)

    def make(key, doc, *, name="tiny-auto", build=1, classes=("generic",)):
        recipe = parse_recipe({"bundle": {"name": name, "version": "1.0.0", "build": build, "runtime": "onnx"},
                               "target": {"hardware_classes": list(classes)}})
        return build_bundle(recipe, onnx_model, samples=x, release_key=key, delegations=doc).data
    return make


def upload(client, data: bytes):
    return client.post("/api/v1/bundles", content=data, headers={"Content-Type": "application/octet-stream"})


def test_registration_accepts_delegated_bundles_under_the_document_in_force(client, release_key, delegated_bundle):
    delegated = keys.generate_private_key()
    v1 = _doc(release_key, delegated, version=1, classes=("generic",))
    r = upload(client, delegated_bundle(delegated, v1))
    assert r.status_code == 201, r.text
    (entry,) = [e for e in client.get("/api/v1/audit").json() if e["action"] == "bundle.upload"]
    assert entry["details"]["delegation"] == "retrain" and entry["details"]["delegations_version"] == 1
    r = upload(client, delegated_bundle(delegated, v1, name="faces", build=2))
    assert (r.status_code, r.json()["error"]["code"], r.json()["error"]["where"]) == \
        (422, "outside_delegation", "manifest.name")
    r = upload(client, delegated_bundle(delegated, v1, build=3, classes=("generic", "gpu-box")))
    assert (r.json()["error"]["code"], r.json()["error"]["where"]) == \
        ("outside_delegation", "manifest.target.hardware_classes")
    # once version 2 (without the key) is in force, the key's bundles are refused even with version 1 inside
    v2 = sign_delegations(DelegationsDocument(version=2, expires_at=2_000_000_000), [release_key])
    assert client.post("/api/v1/delegations", json=v2.model_dump(mode="json")).status_code == 201
    r = upload(client, delegated_bundle(delegated, v1, build=4))
    assert (r.status_code, r.json()["error"]["code"]) == (422, "delegation_revoked")


def test_bundle_signer_gives_the_delegated_key_and_its_document(controller, release_key, delegated_bundle):
    delegated = keys.generate_private_key()
    with controller.session() as session:
        with pytest.raises(ConflictError) as error:
            trust.bundle_signer(session, delegated_key=None, release_key=None, now=controller.now())
        assert error.value.where == "release_signing_key_path"
        with pytest.raises(ConflictError, match="not delegated"):
            trust.bundle_signer(session, delegated_key=delegated, release_key=release_key, now=controller.now())
        trust.push_delegations(session, document=_doc(release_key, delegated, version=1), actor="test",
                               trusted=controller.trusted_release_keys(session), now=controller.now())
    with controller.session() as session:
        signer = trust.bundle_signer(session, delegated_key=delegated, release_key=release_key, now=controller.now())
        assert signer.key_id == keys.key_id(delegated.public_key()) and signer.delegation.name == "retrain"
        with pytest.raises(ConflictError, match="expired"):
            trust.bundle_signer(session, delegated_key=delegated, release_key=None, now=2_000_000_000)
        released = trust.bundle_signer(session, delegated_key=None, release_key=release_key, now=controller.now())
        assert released.delegations is None
        check = trust.delegation_check(session, now=controller.now())
    data = delegated_bundle(signer.key, signer.delegations)
    assert verify_bundle(data, trusted=controller.trusted_release_keys(session), delegation=check).delegated
    assert isinstance(check, DelegationCheck) and check.hardware_class is None


def test_a_server_side_build_signs_with_the_delegated_key(settings, clock, transport, release_key, tmp_path):
    delegated = keys.generate_private_key()
    settings.delegated_signing_key_path = keys.save_private_key(delegated, tmp_path / "retrain.key")
    app = create_app(settings, clock=clock, transport_factory=lambda url, on_message: transport,
                     reconcile_in_background=False)
    recipe = {"bundle": {"name": "digits-auto", "version": "1.0.0", "build": 1, "runtime": "onnx"},
              "target": {"hardware_classes": ["generic"]}, "smoke_test": {"vectors": 2}, "data": "digits"}
    with TestClient(app) as client:
        client.headers["Authorization"] = f"Bearer {ADMIN}"
        client.post("/api/v1/models", json={"name": "digits"})
        client.post("/api/v1/models/digits/versions", json={"version": "1.0.0"})
        client.put("/api/v1/models/digits/versions/1.0.0/artifact", content=train_mlp(load_digits_split(), hidden=(8,)),
                   headers={"Content-Type": "application/octet-stream"})
        r = client.post("/api/v1/models/digits/versions/1.0.0/bundles", json=recipe)
        assert r.status_code == 409 and r.json()["error"]["where"] == "delegated_signing_key_path"  # no document yet
        doc = _doc(release_key, delegated, version=1, patterns=("digits-*",))
        assert client.post("/api/v1/delegations", json=doc.model_dump(mode="json")).status_code == 201
        r = client.post("/api/v1/models/digits/versions/1.0.0/bundles", json=recipe)
        assert r.status_code == 201, r.text
        data = client.get(f"/api/v1/bundles/{r.json()['digest']}/download").content
        outside = recipe | {"bundle": recipe["bundle"] | {"name": "faces-auto", "build": 2}}
        r = client.post("/api/v1/models/digits/versions/1.0.0/bundles", json=outside)
        assert (r.status_code, r.json()["error"]["code"]) == (422, "outside_delegation")
    verified = verify_bundle(data, trusted=keys.TrustedKeys.of([release_key.public_key()], role="release"),
                             delegation=DelegationCheck(now=clock()))
    assert verified.delegated.delegation.name == "retrain" and verified.delegated.document == doc
