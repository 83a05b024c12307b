"""Delegated signing keys (protocol/delegation.py): the chain release keys -> delegations document ->
delegation -> bundle, and every refusal, named by code and where."""

from __future__ import annotations

import io
import json
import tarfile

import pytest

from edgefleet.protocol import keys
from edgefleet.protocol.bundle import DELEGATIONS, add_signature, build_bundle, pack, parse_recipe, verify_bundle
from edgefleet.protocol.delegation import (
    MAX_DOCUMENT_BYTES,
    DelegationCheck,
    delegations_json,
    make_delegation,
    parse_delegations,
    sign_delegations,
    verify_document,
)
from edgefleet.protocol.errors import (
    DelegationError,
    DelegationExpiredError,
    DelegationRevokedError,
    DelegationRollbackError,
    NotDelegatedError,
    SignatureError,
    SizeLimitError,
    UnknownKeyError,
    VerificationError,
)
from edgefleet.protocol.messages import (
    DelegationsDocument,
    DelegationsMessage,
    Signature,
    SignedDelegations,
    decode,
    encode,
)
from edgefleet.protocol.vocabulary import Reason

NOW = 1_800_000_000
DAY = 86_400


@pytest.fixture(scope="module")
def delegated_key():
    return keys.generate_private_key()


@pytest.fixture(scope="module")
def trusted(release_key) -> keys.TrustedKeys:
    return keys.TrustedKeys.of([release_key.public_key()], role="release")


def delegation(key, *, name="retrain", patterns=("digits-*",), classes=("cam-v2",), expires_at=NOW + 30 * DAY):
    return make_delegation(name=name, public_key=key.public_key(), name_patterns=list(patterns),
                           hardware_classes=list(classes), expires_at=expires_at)


def document(*delegations, version=1, expires_at=NOW + 365 * DAY, signers) -> SignedDelegations:
    return sign_delegations(DelegationsDocument(version=version, expires_at=expires_at, delegations=list(delegations)),
                            signers)


@pytest.fixture(scope="module")
def doc_v1(release_key, delegated_key) -> SignedDelegations:
    return document(delegation(delegated_key), signers=[release_key])


@pytest.fixture(scope="module")
def build(onnx_model, samples):
    def make(key, delegations: SignedDelegations | None, *, name="digits-mlp", classes=("cam-v2",)) -> bytes:
        recipe = parse_recipe({"bundle": {"name": name, "version": "1.0.0", "build": 1, "runtime": "onnx"},
                               "target": {"hardware_classes": list(classes)}})
        return build_bundle(recipe, onnx_model, samples=samples, release_key=key, delegations=delegations).data
    return make


@pytest.fixture(scope="module")
def delegated_bundle(build, delegated_key, doc_v1) -> bytes:
    return build(delegated_key, doc_v1)


def split(data: bytes) -> tuple[bytes, list[Signature], dict[str, bytes], bytes]:
    """(manifest bytes, signatures, stored files, delegations member) of a bundle, via plain tarfile."""
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        members = {i.name: tar.extractfile(i).read() for i in tar}
    sigs = [Signature.model_validate(s) for s in json.loads(members.pop("signatures.json"))]
    manifest, doc = members.pop("manifest.json"), members.pop(DELEGATIONS)
    return manifest, sigs, {k[len("files/"):]: v for k, v in members.items()}, doc


def device(now=NOW, hardware_class="cam-v2", known=None, installing=True) -> DelegationCheck:
    return DelegationCheck(now=now, known=known, hardware_class=hardware_class, installing=installing)


def refusal(data: bytes, trusted, check: DelegationCheck | None, expected: type[VerificationError]):
    with pytest.raises(expected) as info:
        verify_bundle(data, trusted=trusted, delegation=check)
    assert type(info.value) is expected
    return info.value


# --------------------------------------------------------------------------- accepted

def test_a_bundle_signed_by_a_delegated_key_verifies_through_the_chain(delegated_bundle, trusted, delegated_key,
                                                                       doc_v1):
    verified = verify_bundle(delegated_bundle, trusted=trusted, delegation=device())
    assert verified.signed_by == {keys.key_id(delegated_key.public_key())}
    assert verified.delegated is not None and verified.delegated.delegation.name == "retrain"
    assert verified.delegated.document == doc_v1
    assert verified.manifest.name == "digits-mlp"


def test_the_delegations_member_is_reproducible_and_survives_add_signature(build, delegated_key, doc_v1,
                                                                           delegated_bundle, release_key, trusted):
    assert build(delegated_key, doc_v1) == delegated_bundle  # byte-identical
    both = add_signature(delegated_bundle, release_key)  # now also release-signed: the release path wins
    verified = verify_bundle(both, trusted=trusted, delegation=device(hardware_class="other"))
    assert verified.delegated is None and keys.key_id(release_key.public_key()) in verified.signed_by
    only_delegated = verify_bundle(add_signature(delegated_bundle, delegated_key), trusted=trusted, delegation=device())
    assert only_delegated.delegated is not None


def test_any_hardware_class_covers_every_device_and_untargeted_bundles(build, delegated_key, release_key, trusted):
    doc = document(delegation(delegated_key, classes=("*",)), signers=[release_key])
    data = build(delegated_key, doc, classes=())
    assert verify_bundle(data, trusted=trusted, delegation=device(hardware_class="anything")).delegated is not None
    assert verify_bundle(data, trusted=trusted, delegation=DelegationCheck(now=NOW)).delegated is not None


def test_threshold_of_two_release_keys(build, delegated_key, release_key, release_key2):
    two = keys.TrustedKeys.of([release_key.public_key(), release_key2.public_key()], role="release", threshold=2)
    one_signer = build(delegated_key, document(delegation(delegated_key), signers=[release_key]))
    error = refusal(one_signer, two, device(), SignatureError)
    assert error.where == "delegations.json.signatures" and "1 valid release signature(s), 2 required" in error.message
    both_signers = build(delegated_key, document(delegation(delegated_key), signers=[release_key, release_key2]))
    assert verify_bundle(both_signers, trusted=two, delegation=device()).delegated is not None


# --------------------------------------------------------------------------- refusals: scope

def test_outside_the_name_pattern(build, delegated_key, doc_v1, trusted):
    error = refusal(build(delegated_key, doc_v1, name="faces-mlp"), trusted, device(), DelegationError)
    assert (error.code, error.where) == (Reason.OUTSIDE_DELEGATION, "manifest.name")
    assert "'faces-mlp'" in error.message and "digits-*" in error.message


def test_outside_the_hardware_class_of_the_device(delegated_bundle, trusted):
    error = refusal(delegated_bundle, trusted, device(hardware_class="gpu-box"), DelegationError)
    assert (error.code, error.where) == (Reason.OUTSIDE_DELEGATION, "device.hardware_class")
    assert "'gpu-box'" in error.message


@pytest.mark.parametrize(("classes", "needle"), [(("cam-v2", "gpu-box"), "gpu-box"), ((), "every hardware class")])
def test_outside_the_hardware_classes_the_manifest_targets(build, delegated_key, doc_v1, trusted, classes, needle):
    data = build(delegated_key, doc_v1, classes=classes)
    for check in (device(), DelegationCheck(now=NOW)):  # a device in scope, and the controller (no device)
        error = refusal(data, trusted, check, DelegationError)
        assert (error.code, error.where) == (Reason.OUTSIDE_DELEGATION, "manifest.target.hardware_classes")
        assert needle in error.message


def test_delegation_expired(delegated_bundle, trusted):
    error = refusal(delegated_bundle, trusted, device(now=NOW + 30 * DAY), DelegationExpiredError)
    assert (error.code, error.where) == (Reason.DELEGATION_EXPIRED, "delegations.retrain.expires_at")


def test_document_expired(build, delegated_key, release_key, trusted):
    short = document(delegation(delegated_key, expires_at=NOW + 60 * DAY), expires_at=NOW + DAY, signers=[release_key])
    error = refusal(build(delegated_key, short), trusted, device(now=NOW + 2 * DAY), DelegationExpiredError)
    assert (error.code, error.where) == (Reason.DELEGATION_EXPIRED, "delegations.json.expires_at")


def test_the_newer_document_the_device_holds_decides_and_can_expire(delegated_bundle, delegated_key, release_key,
                                                                    trusted):
    v2 = document(delegation(delegated_key), version=2, expires_at=NOW + DAY, signers=[release_key])
    assert verify_bundle(delegated_bundle, trusted=trusted, delegation=device(known=v2)).delegated.document == v2
    error = refusal(delegated_bundle, trusted, device(now=NOW + DAY, known=v2), DelegationExpiredError)
    assert error.where == "delegations.expires_at" and "version 2" in error.message


# --------------------------------------------------------------------------- refusals: the chain

def test_revoked_delegation_a_newer_document_without_it(delegated_bundle, release_key, trusted):
    v2 = document(version=2, signers=[release_key])  # retrain removed
    error = refusal(delegated_bundle, trusted, device(known=v2), DelegationRevokedError)
    assert (error.code, error.where) == (Reason.DELEGATION_REVOKED, "delegations.delegations")
    assert "'retrain'" in error.message and "version 2" in error.message


def test_a_bundle_carrying_the_newer_document_replaces_the_known_one(build, delegated_key, release_key, trusted,
                                                                     doc_v1):
    v3 = document(delegation(delegated_key, patterns=("digits-*", "faces-*")), version=3, signers=[release_key])
    verified = verify_bundle(build(delegated_key, v3, name="faces-mlp"), trusted=trusted,
                             delegation=device(known=doc_v1))
    assert verified.delegated.document == v3


def test_document_rollback_to_a_lower_version(release_key, delegated_key, trusted, doc_v1):
    v2 = document(delegation(delegated_key), version=2, signers=[release_key])
    with pytest.raises(DelegationRollbackError) as error:
        verify_document(doc_v1, trusted=trusted, known=v2.signed, now=NOW)
    assert (error.value.code, error.value.where) == (Reason.DELEGATION_ROLLBACK, "delegations.version")
    other_v2 = document(delegation(delegated_key, patterns=("*",)), version=2, signers=[release_key])
    with pytest.raises(DelegationRollbackError, match="already accepted with other content"):
        verify_document(other_v2, trusted=trusted, known=v2.signed, now=NOW)
    assert verify_document(v2, trusted=trusted, known=v2.signed, now=NOW) == v2.signed  # the same one again
    assert verify_document(v2, trusted=trusted, known=doc_v1.signed, now=NOW) == v2.signed


def test_a_bundle_embedding_another_document_of_the_known_version_is_refused(build, delegated_key, release_key,
                                                                             trusted, doc_v1):
    forked = document(delegation(delegated_key, patterns=("*",)), version=1, signers=[release_key])
    error = refusal(build(delegated_key, forked), trusted, device(known=doc_v1), DelegationRollbackError)
    assert error.where == "delegations.json.version"


def test_signature_by_a_key_that_is_not_delegated(build, doc_v1, trusted):
    stranger = keys.generate_private_key()
    error = refusal(build(stranger, doc_v1), trusted, device(), NotDelegatedError)
    assert (error.code, error.where) == (Reason.NOT_DELEGATED, "signatures.json")
    # without a delegations member nothing says the bundle is delegated: the release verdict stands
    error = refusal(build(stranger, None), trusted, device(known=doc_v1), UnknownKeyError)
    assert error.code == Reason.UNKNOWN_KEY


def test_tampered_document(delegated_bundle, trusted):
    manifest_raw, sigs, stored, doc_raw = split(delegated_bundle)
    doc = json.loads(doc_raw)
    doc["signed"]["delegations"][0]["name_patterns"] = ["*"]  # widen the scope without the release keys
    error = refusal(pack(manifest_raw, sigs, stored, json.dumps(doc).encode()), trusted, device(), SignatureError)
    assert (error.code, error.where) == (Reason.BAD_SIGNATURE, "delegations.json.signatures")


def test_tampered_manifest_under_a_delegated_signature(delegated_bundle, trusted):
    manifest_raw, sigs, stored, doc_raw = split(delegated_bundle)
    altered = manifest_raw.replace(b'"digits-mlp"', b'"digits-mlq"')
    error = refusal(pack(altered, sigs, stored, doc_raw), trusted, device(), SignatureError)
    assert error.where == "signatures.json" and "'retrain'" in error.message


def test_a_document_signed_by_an_unknown_key(build, delegated_key, trusted):
    stranger = keys.generate_private_key()
    error = refusal(build(delegated_key, document(delegation(delegated_key), signers=[stranger])), trusted, device(),
                    UnknownKeyError)
    assert error.where == "delegations.json.signatures"


def test_without_a_delegation_check_the_release_path_is_unchanged(delegated_bundle, trusted):
    assert refusal(delegated_bundle, trusted, None, UnknownKeyError).where == "release signatures"


def test_an_oversized_delegations_member(delegated_bundle, trusted):
    manifest_raw, sigs, stored, _ = split(delegated_bundle)
    error = refusal(pack(manifest_raw, sigs, stored, b" " * (MAX_DOCUMENT_BYTES + 1)), trusted, device(),
                    SizeLimitError)
    assert error.where == DELEGATIONS


# --------------------------------------------------------------------------- an installed bundle

def test_an_installed_bundle_still_loads_after_expiry_and_revocation_not_outside_its_scope(delegated_bundle,
                                                                                           release_key, trusted):
    v2 = document(version=2, signers=[release_key])
    later = device(now=NOW + 400 * DAY, known=v2, installing=False)
    assert verify_bundle(delegated_bundle, trusted=trusted, delegation=later).delegated.delegation.name == "retrain"
    refusal(delegated_bundle, trusted, device(known=v2), DelegationRevokedError)  # what an install meets
    refusal(delegated_bundle, trusted, device(hardware_class="gpu-box", installing=False), DelegationError)


# --------------------------------------------------------------------------- the document itself

def test_delegation_rules(delegated_key):
    good = delegation(delegated_key).model_dump(mode="json")
    for change, needle in [({"keyid": "0" * 64}, "keyid is not the sha256"),
                           ({"hardware_classes": ["*", "cam-v2"]}, "give it alone"),
                           ({"hardware_classes": []}, "at least 1"),
                           ({"name_patterns": ["Digits/*"]}, "pattern"),
                           ({"max_build": 9}, "Extra inputs are not permitted")]:  # fails closed
        with pytest.raises(ValueError, match=needle):
            DelegationsDocument(version=1, expires_at=NOW, delegations=[{**good, **change}])
    with pytest.raises(ValueError, match="share a name"):
        DelegationsDocument(version=1, expires_at=NOW, delegations=[good, good])
    with pytest.raises(ValueError, match="greater than or equal to 1"):
        DelegationsDocument(version=0, expires_at=NOW)


def test_parse_errors_name_the_field():
    with pytest.raises(VerificationError) as info:
        parse_delegations(b'{"signed": {"version": 1}, "signatures": []}', where="d.json")
    assert info.value.where.startswith("d.json: signed.")
    with pytest.raises(VerificationError, match="invalid"):
        parse_delegations(b"not json", where="d.json")


def test_the_delegations_message_round_trips_on_the_cmd_topic(doc_v1):
    payload = encode(DelegationsMessage(device_id="cam-1", delegations=doc_v1))
    msg = decode("cmd", payload)
    assert isinstance(msg, DelegationsMessage) and msg.delegations == doc_v1
    assert delegations_json(msg.delegations) == delegations_json(doc_v1)


def test_the_documented_example_decodes_and_verifies():
    """docs/protocol.md §4.8: the example is real (test keys from bytes 0..31 and 32..63)."""
    import re
    from pathlib import Path

    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from edgefleet.protocol.delegation import document_bytes

    text = (Path(__file__).resolve().parents[2] / "docs" / "protocol.md").read_text()
    section = text[text.index("### 4.8 `delegations`"):text.index("## 5. Idempotence")]
    body, signed = re.findall(r"```(?:json)?\n(.*?)\n```", section, re.S)
    msg = decode("cmd", json.dumps(json.loads(body)).encode())
    assert isinstance(msg, DelegationsMessage)
    release = Ed25519PrivateKey.from_private_bytes(bytes(range(32))).public_key()
    delegated = Ed25519PrivateKey.from_private_bytes(bytes(range(32, 64))).public_key()
    trusted = keys.TrustedKeys.of([release], role="release")
    document = verify_document(msg.delegations, trusted=trusted, known=None, now=msg.sent_at)
    assert document_bytes(document).decode() == signed
    assert document.by_keyid(keys.key_id(delegated)).name == "retrain"
