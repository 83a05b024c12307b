"""End-to-end delivery, controller side: after a batch is committed, every device gets one signed
acknowledgement on its ``ack`` topic listing the messages stored (or stored before); nothing
rejected, unknown or uncommitted is acknowledged."""

from __future__ import annotations

import pytest
from sqlalchemy.exc import OperationalError

from edgefleet.cloud.mqtt import ingest as ingest_module
from edgefleet.cloud.mqtt.decoding import Raw
from edgefleet.protocol import acks
from edgefleet.protocol.errors import SignatureError, TargetMismatchError, UnknownKeyError
from edgefleet.protocol.keys import TrustedKeys, generate_private_key
from edgefleet.protocol.messages import MAX_ACKED, AckMessage, Event, decode, encode
from edgefleet.protocol.topics import device_topic


def _trusted(controller) -> TrustedKeys:
    return TrustedKeys.of([controller.controller_key.public_key()], role="controller")


def _acked(controller, transport, device_id: str) -> list[str]:
    """Every id acknowledged to ``device_id`` so far, each ack verified as the device would."""
    ids = []
    for topic, payload in transport.acks:
        if topic == device_topic(device_id, "ack"):
            msg = decode("ack", payload)
            assert isinstance(msg, AckMessage)
            ids += acks.verify_ack(msg, trusted=_trusted(controller), device_id=device_id)
    return ids


def test_a_stored_window_is_acknowledged_signed_on_the_devices_ack_topic(fleet, controller, transport):
    fleet.enroll("a1")
    hello = fleet.hello("a1")
    window = fleet.telemetry("a1", 0)
    assert _acked(controller, transport, "a1") == [hello.msg_id, window.msg_id]
    assert [t for t, _ in transport.acks] == [device_topic("a1", "ack")] * 2   # one per committed batch


def test_a_duplicate_is_acknowledged_again(fleet, controller, transport):
    fleet.add("a2")
    window = fleet.telemetry("a2", 0)
    transport.acks.clear()
    fleet.send(window, "telemetry")   # the agent re-sent it: its first ack was lost
    assert _acked(controller, transport, "a2") == [window.msg_id]


def test_status_and_events_are_acknowledged_state_is_not(fleet, controller, transport):
    fleet.add("a3")
    transport.acks.clear()
    status = fleet.status("a3", "dep-x", 1, "downloading")
    event = Event(device_id="a3", kind="k", text="t")
    fleet.send(event, "events")
    fleet.state("a3")
    assert _acked(controller, transport, "a3") == [status.msg_id, event.msg_id]


def test_rejected_and_unknown_messages_are_not_acknowledged(fleet, controller, transport, clock):
    fleet.add("a4")
    window = fleet.telemetry("a4", 0).model_copy(update={"msg_id": "forged-1"})
    transport.acks.clear()
    topic = device_topic("a4", "telemetry")
    forged = fleet.sealed(topic, encode(window), signer=None)[:-10] + b'AAAAAAAA"}'   # signature altered
    result = controller.ingestor.process([Raw(topic, forged, clock()),
                                          Raw(device_topic("nobody", "telemetry"), encode(window), clock())])
    assert result.stored == 0 and sum(result.rejected.values()) == 2
    assert transport.acks == []


def test_one_batch_gives_one_ack_per_device_split_past_the_limit(fleet, controller, transport, clock):
    fleet.add("a5")
    fleet.add("a6")
    transport.acks.clear()
    raws, ids = [], {"a5": [], "a6": []}
    for i in range(MAX_ACKED + 5):
        for device_id in ("a5", "a6"):
            msg = Event(device_id=device_id, kind="tick", text=str(i))
            topic = device_topic(device_id, "events")
            raws.append(Raw(topic, fleet.sealed(topic, encode(msg)), clock()))
            ids[device_id].append(msg.msg_id)
    result = controller.ingestor.process(raws)
    assert result.stored == 2 * (MAX_ACKED + 5)
    assert [t.rsplit("/", 2)[1] for t, _ in transport.acks] == ["a5", "a5", "a6", "a6"]
    assert _acked(controller, transport, "a5") == ids["a5"] and _acked(controller, transport, "a6") == ids["a6"]


def test_nothing_is_acknowledged_when_the_batch_cannot_be_stored(fleet, controller, transport, clock, monkeypatch):
    fleet.add("a7")
    transport.acks.clear()

    def broken(session, items, result):
        raise OperationalError("INSERT", {}, Exception("disk I/O error"))
    monkeypatch.setattr(ingest_module, "store_batch", broken)
    window = fleet.telemetry("a7", 0)
    assert transport.acks == [] and window.msg_id not in _acked(controller, transport, "a7")


def test_acks_can_be_switched_off(tmp_path, release_pub, clock, transport):
    from fastapi.testclient import TestClient

    from edgefleet.cloud.app import create_app
    from edgefleet.cloud.settings import ControllerSettings

    from cloudkit import ADMIN, Fleet
    settings = ControllerSettings(data_dir=tmp_path / "c", broker_url="mqtt://127.0.0.1:1",
                                  release_key_paths=[release_pub], admin_token=ADMIN, delivery_acks=False)
    app = create_app(settings, clock=clock, transport_factory=lambda url, on_message: transport,
                     reconcile_in_background=False)
    with TestClient(app) as client:
        client.headers["Authorization"] = f"Bearer {ADMIN}"
        fleet = Fleet(client, app.state.controller, clock)
        fleet.add("a8")
        fleet.telemetry("a8", 0)
    assert transport.acks == []


# ---------------------------------------------------------------- the ack itself (protocol/acks.py)

def test_an_ack_verifies_only_with_a_trusted_key_and_for_its_own_device():
    key, other = generate_private_key(), generate_private_key()
    ((topic, payload),) = acks.ack_messages({"d1": ["m1", "m2", "m1"]}, key=key, prefix="edgefleet/v1", issued_at=5)
    assert topic == "edgefleet/v1/devices/d1/ack"
    msg = decode("ack", payload)
    trusted = TrustedKeys.of([key.public_key()], role="controller")
    assert acks.verify_ack(msg, trusted=trusted, device_id="d1") == ["m1", "m2"]
    with pytest.raises(UnknownKeyError):
        acks.verify_ack(msg, trusted=TrustedKeys.of([other.public_key()], role="controller"), device_id="d1")
    with pytest.raises(TargetMismatchError):
        acks.verify_ack(msg, trusted=trusted, device_id="d2")
    altered = msg.model_copy(update={"ack": msg.ack.model_copy(update={
        "signed": msg.ack.signed.model_copy(update={"acked": ["m1", "m2", "someone-elses"]})})})
    with pytest.raises(SignatureError):
        acks.verify_ack(altered, trusted=trusted, device_id="d1")


def test_an_ack_signed_by_libsodium_is_the_signature_openssl_makes():
    """ack_messages signs with libsodium for speed; Ed25519 is deterministic, so the bytes are the
    ones ``cryptography`` gives for the same key and body, and they name the key's id."""
    from edgefleet.protocol.keys import key_id, sign

    key = generate_private_key()
    ((_, payload),) = acks.ack_messages({"d1": ["m1"]}, key=key, prefix="edgefleet/v1", issued_at=5)
    signed = decode("ack", payload).ack
    assert signed.signed.key_id == key_id(key.public_key())
    assert signed.signatures == [sign(key, acks.ack_bytes(signed.signed))]


def test_the_documented_ack_verifies_with_the_documented_key():
    """docs/protocol.md §9 "ack" is a test vector: its signature verifies over the bytes shown."""
    import json
    import re
    from pathlib import Path

    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    text = (Path(__file__).resolve().parents[2] / "docs" / "protocol.md").read_text()
    raw = bytes.fromhex(re.search(r"public key of the example order, raw, is\n`([0-9a-f]{64})`", text).group(1))
    body = re.search(r"Topic `edgefleet/v1/devices/cam-0042/ack`\n\n```json\n(.*?)\n```", text, re.S).group(1)
    msg = decode("ack", json.dumps(json.loads(body)).encode())
    trusted = TrustedKeys.of([Ed25519PublicKey.from_public_bytes(raw)], role="controller")
    assert acks.verify_ack(msg, trusted=trusted, device_id="cam-0042") == [
        "6f1c0d2a9b7e4c3f8a5d2e1b0c9f8a7d", "b1e4d2c3a5f60718293a4b5c6d7e8f90"]
    shown = re.search(r"canonical JSON of `ack.signed`\):\n```\n(.*?)\n```", text, re.S).group(1)
    assert acks.ack_bytes(msg.ack.signed) == shown.encode()
