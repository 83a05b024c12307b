import json

import pytest

from edgefleet.protocol import keys, messages
from edgefleet.protocol.canonical import canonical_json
from edgefleet.protocol.errors import (
    ExpiredError,
    ReplayError,
    SignatureError,
    TargetMismatchError,
    UnknownKeyError,
    VerificationError,
)
from edgefleet.protocol.messages import DeploymentOrder, SignedOrder
from edgefleet.protocol.orders import CLOCK_SKEW_S, order_bytes, sign_order, verify_order
from edgefleet.protocol.vocabulary import OrderAction

NOW = 1_800_000_000


def _order(**kw) -> DeploymentOrder:
    base = dict(device_id="dev1", deployment_id="dep-1", bundle_digest="ab" * 32, bundle_size=1234,
                bundle_url="http://controller/bundles/x", bundle_name="clf", bundle_version="1.0.0",
                sequence=5, issued_at=NOW - 10, expires_at=NOW + 3600)
    base.update(kw)
    return DeploymentOrder(**base)


@pytest.fixture()
def trusted(controller_key):
    return keys.TrustedKeys.of([controller_key.public_key()], role="controller")


def _verify(signed, trusted, **kw):
    args = dict(trusted=trusted, device_id="dev1", last_sequence=4, now=NOW)
    args.update(kw)
    return verify_order(signed, **args)


def test_valid_order(controller_key, trusted):
    signed = sign_order(_order(), controller_key)
    assert signed.signed.key_id == keys.key_id(controller_key.public_key())
    got = _verify(signed, trusted)
    assert got.deployment_id == "dep-1" and got.sequence == 5


def test_signed_bytes_are_canonical_json(controller_key):
    signed = sign_order(_order(), controller_key)
    raw = order_bytes(signed.signed)
    assert raw == canonical_json(json.loads(raw))
    assert b" " not in raw.replace(b"http://controller/bundles/x", b"")
    assert raw.startswith(b'{"action":"install","bundle_digest":')
    assert b'"issued_at":1799999990' in raw  # integer seconds, no fraction


def test_order_survives_the_wire(controller_key, trusted):
    msg = messages.OrderMessage(device_id="dev1", order=sign_order(_order(), controller_key))
    back = messages.decode("cmd", messages.encode(msg))
    assert _verify(back.order, trusted).sequence == 5


def test_unknown_signed_field_is_covered_by_the_signature(controller_key, trusted):
    order = _order().model_copy(update={"priority": "high"})
    signed = sign_order(order, controller_key)
    wire = json.loads(signed.model_dump_json())
    assert _verify(SignedOrder.model_validate(wire), trusted)
    wire["signed"]["priority"] = "low"
    with pytest.raises(SignatureError):
        _verify(SignedOrder.model_validate(wire), trusted)


@pytest.mark.parametrize("field,value", [("device_id", "dev2"), ("sequence", 99), ("expires_at", NOW + 10**6),
                                         ("bundle_digest", "cd" * 32), ("bundle_size", 1),
                                         ("bundle_url", "http://evil/x"), ("action", OrderAction.CANCEL)])
def test_tampered_field_bad_signature(controller_key, trusted, field, value):
    signed = sign_order(_order(), controller_key)
    tampered = signed.model_copy(update={"signed": signed.signed.model_copy(update={field: value})})
    with pytest.raises(SignatureError) as ei:
        _verify(tampered, trusted, device_id=tampered.signed.device_id)
    assert ei.value.code == "bad_signature"


def test_unknown_key(release_key, trusted):
    with pytest.raises(UnknownKeyError) as ei:
        _verify(sign_order(_order(), release_key), trusted)  # the release key is not a controller key
    assert ei.value.code == "unknown_key"


def test_other_device(controller_key, trusted):
    signed = sign_order(_order(device_id="dev2"), controller_key)
    with pytest.raises(TargetMismatchError) as ei:
        _verify(signed, trusted)
    assert ei.value.where == "order.device_id"


@pytest.mark.parametrize("last", [5, 6, 1000])
def test_replay_or_stale_sequence(controller_key, trusted, last):
    signed = sign_order(_order(sequence=5), controller_key)
    with pytest.raises(ReplayError) as ei:
        _verify(signed, trusted, last_sequence=last)
    assert ei.value.code == "replayed_order" and ei.value.where == "order.sequence"


def test_accepting_updates_sequence_then_replay_refused(controller_key, trusted):
    signed = sign_order(_order(sequence=5), controller_key)
    accepted = _verify(signed, trusted, last_sequence=4)
    with pytest.raises(ReplayError):
        _verify(signed, trusted, last_sequence=accepted.sequence)


def test_rollback_is_a_new_order(controller_key, trusted):
    old = _order(sequence=6, bundle_digest="00" * 32, bundle_version="0.9.0")
    assert _verify(sign_order(old, controller_key), trusted, last_sequence=5).bundle_digest == "00" * 32


@pytest.mark.parametrize("now", [NOW + 3600, NOW + 3601, NOW + 10**6])
def test_expired(controller_key, trusted, now):
    with pytest.raises(ExpiredError) as ei:
        _verify(sign_order(_order(), controller_key), trusted, now=now)
    assert ei.value.where == "order.expires_at" and ei.value.code == "expired"


def test_just_before_expiry_ok(controller_key, trusted):
    assert _verify(sign_order(_order(), controller_key), trusted, now=NOW + 3599.5)


def test_future_issued(controller_key, trusted):
    signed = sign_order(_order(issued_at=NOW + CLOCK_SKEW_S + 1, expires_at=NOW + 7200), controller_key)
    with pytest.raises(ExpiredError) as ei:
        _verify(signed, trusted)
    assert ei.value.where == "order.issued_at"
    skewed = sign_order(_order(issued_at=NOW + CLOCK_SKEW_S, expires_at=NOW + 7200), controller_key)
    assert _verify(skewed, trusted)  # within the tolerated clock skew


@pytest.mark.parametrize("missing", ["bundle_digest", "bundle_size", "bundle_url"])
def test_install_order_missing_fields(controller_key, trusted, missing):
    signed = sign_order(_order(**{missing: None}), controller_key)
    with pytest.raises(TargetMismatchError) as ei:
        _verify(signed, trusted)
    assert ei.value.where == "order"


def test_cancel_order_needs_no_bundle(controller_key, trusted):
    signed = sign_order(_order(action="cancel", bundle_digest=None, bundle_size=None, bundle_url=None),
                        controller_key)
    assert _verify(signed, trusted).action == "cancel"


def test_signature_is_checked_before_anything_else(controller_key, release_key, trusted):
    # an unsigned-by-us order that is also stale, expired and for another device: the key is the reason
    bad = sign_order(_order(device_id="dev2", sequence=1, expires_at=NOW - 1), release_key)
    with pytest.raises(UnknownKeyError):
        _verify(bad, trusted)


def test_threshold_two_controller_keys(controller_key, release_key):
    trusted = keys.TrustedKeys.of([controller_key.public_key(), release_key.public_key()],
                                  role="controller", threshold=2)
    signed = sign_order(_order(), controller_key)
    with pytest.raises(SignatureError):
        _verify(signed, trusted)
    second = keys.sign(release_key, order_bytes(signed.signed))
    both = signed.model_copy(update={"signatures": [*signed.signatures, second]})
    assert _verify(both, trusted)


def test_all_refusals_are_verification_errors():
    for exc in (ExpiredError, ReplayError, SignatureError, TargetMismatchError, UnknownKeyError):
        assert issubclass(exc, VerificationError)


def test_order_without_canonical_form_is_refused_not_crashing(controller_key, trusted):
    wire = messages.encode(messages.OrderMessage(device_id="dev1", order=sign_order(_order(), controller_key)))
    wire = wire.replace(b'"signed":{', b'"signed":{"note":"\\udc00",')  # a lone surrogate, legal JSON text
    order = messages.decode("cmd", wire).order
    with pytest.raises(SignatureError) as ei:
        _verify(order, trusted)
    assert ei.value.where == "order.signed"
