"""The trust root on the controller side (docs/security.md §9): ``edgefleet keys root init``, ``keys rotate
release`` and ``keys revoke`` against the controller app, the revocation that would leave a role empty
refused, a revoked release key's bundles refused afterwards, and the controller refusing a pushed root
that does not continue its own (an attacker's, a gap, an older version)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from edgefleet.cloud.cli import trust_root as cli_trust_root
from edgefleet.protocol import keys
from edgefleet.protocol.delegation import raw_public_key
from edgefleet.protocol.messages import RootDocument, SignedRoot
from edgefleet.protocol.root import sign_root

from cloudkit import cli_runner

LONG = "3650d"  # the controller's fake clock runs ahead of the real one the CLI signs with


@pytest.fixture
def ceremony(tmp_path, release_key, client, capsys, monkeypatch):
    """Key files in tmp_path/k (root, the session's release key, a second release key); ``run``."""
    monkeypatch.chdir(tmp_path)
    for name, key in (("root", keys.generate_private_key()), ("release", release_key),
                      ("release2", keys.generate_private_key()), ("attacker", keys.generate_private_key())):
        keys.save_private_key(key, tmp_path / "k" / f"{name}.key")
        keys.save_public_key(key.public_key(), tmp_path / "k" / f"{name}.pub")
    return cli_runner(capsys, monkeypatch, client, cli_trust_root)


def _root(client) -> SignedRoot:
    r = client.get("/api/v1/trust/root")
    assert r.status_code == 200, r.text
    return SignedRoot.model_validate(r.json())


def keys_path(name: str) -> Path:
    return Path("k") / name


def test_revoking_a_release_key_needs_another_and_refuses_its_bundles_afterwards(ceremony, client, release_key,
                                                                                  make_bundle, upload):
    run = ceremony
    first = json.loads(run("keys", "root", "init", "--root-key", "k/root.key", "--expires", LONG, "--json"))
    assert first["signed"]["version"] == 1
    old = raw_public_key(release_key.public_key())
    assert _root(client).signed.release.keys == [old]
    old_id = keys.key_id(release_key.public_key())

    # the only release key: revoking it would leave devices trusting nothing; refused, nothing changes
    out = run("keys", "revoke", old_id[:12], "--root-key", "k/root.key", "--expires", LONG, rc=2)
    assert "leaves no release key" in out and "rotate first" in out
    assert _root(client).signed.version == 1

    # an id that is in no role: refused by name
    out = run("keys", "revoke", "f" * 16, "--root-key", "k/root.key", "--expires", LONG, rc=2)
    assert "no release or controller key" in out
    assert _root(client).signed.version == 1

    run("keys", "rotate", "release", "--root-key", "k/root.key", "--add", "k/release2.pub", "--expires", LONG)
    assert _root(client).signed.version == 2
    upload(make_bundle(name="before-revoke"))        # still trusted: accepted

    run("keys", "revoke", old_id[:12], "--root-key", "k/root.key", "--expires", LONG)
    root = _root(client).signed
    assert root.version == 3 and old not in root.release.keys
    assert root.release.keys == [raw_public_key(keys.load_public_key(keys_path("release2.pub")))]

    refused = client.post("/api/v1/bundles", content=make_bundle(name="after-revoke").data,
                          headers={"Content-Type": "application/octet-stream"})
    assert refused.status_code in (400, 403, 422), refused.text
    assert "key" in refused.json()["error"]["message"].lower()
    release2 = keys.load_private_key(keys_path("release2.key"))
    upload(make_bundle(name="after-revoke", key=release2))   # the key that stays: accepted


def test_the_controller_refuses_a_root_that_does_not_continue_its_own(ceremony, client):
    run = ceremony
    run("keys", "root", "init", "--root-key", "k/root.key", "--expires", LONG)
    current = _root(client)
    root_key = keys.load_private_key(keys_path("root.key"))
    attacker = keys.load_private_key(keys_path("attacker.key"))

    def document(version: int, *, root_keys: list[str] | None = None) -> RootDocument:
        data = current.signed.model_dump(mode="json") | {"version": version}
        if root_keys is not None:
            data["root"] = {"keys": root_keys, "threshold": 1}
        return RootDocument.model_validate(data)

    attacker_hex = raw_public_key(attacker.public_key())
    cases = {
        # made by someone without the root keys: it names its own key as root and signs with it
        "attacker": sign_root(document(2, root_keys=[attacker_hex]), [attacker]),
        # signed by the right key, but skipping version 2
        "gap": sign_root(document(3), [root_key]),
        # signed by the right key, but not newer than the one in force (a different body at version 1)
        "rollback": sign_root(document(1, root_keys=[attacker_hex]), [root_key, attacker]),
    }
    for name, signed in cases.items():
        r = client.post("/api/v1/trust/roots", json=signed.model_dump(mode="json"))
        assert 400 <= r.status_code < 500, (name, r.status_code, r.text)
        assert r.json()["error"]["code"] in ("root_chain_broken", "root_rollback", "conflict", "signature_invalid",
                                             "unknown_key"), (name, r.json())
        assert _root(client) == current, name           # nothing changed
    listed = client.get("/api/v1/trust/roots").json()
    assert [r["signed"]["version"] for r in listed] == [1]
