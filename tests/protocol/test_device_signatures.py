"""Device message signatures: the seal round-trips, and no change to a sealed payload, its topic or
its signer goes unnoticed; whatever bytes arrive, the check fails with a MessageError, nothing else."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from edgefleet.protocol.device_signatures import raw_public_key, seal, unseal, verify
from edgefleet.protocol.errors import MessageError
from edgefleet.protocol.keys import generate_private_key
from edgefleet.protocol.messages import Hello, decode, encode

KEY = generate_private_key()
PUBLIC = raw_public_key(KEY.public_key())
TOPIC = "edgefleet/v1/devices/d1/hello"
BODY = encode(Hello(device_id="d1", agent_version="0.1.0", arch="x86_64", os="linux", runtimes=["onnx"]))
SEALED = seal(KEY, TOPIC, BODY)


def test_a_sealed_payload_is_still_the_message_and_verifies():
    verify(PUBLIC, TOPIC, SEALED)
    assert json.loads(SEALED)["device_sig"] and decode("hello", SEALED).arch == "x86_64"
    data, sig = unseal(TOPIC, SEALED)
    assert data.endswith(BODY) and len(sig) == 64


@pytest.mark.parametrize(("topic", "payload", "code"), [
    ("edgefleet/v1/devices/d2/hello", SEALED, "bad_signature"),          # another device's topic
    ("edgefleet/v1/devices/d1/state", SEALED, "bad_signature"),          # another kind
    (TOPIC, SEALED.replace(b"x86_64", b"x86_65"), "bad_signature"),      # one byte of the body
    (TOPIC, BODY, "unsigned"),
    (TOPIC, SEALED[:-1], "unsigned"),
    (TOPIC, SEALED + b" ", "unsigned"),
])
def test_what_does_not_verify(topic, payload, code):
    with pytest.raises(MessageError) as caught:
        verify(PUBLIC, topic, payload)
    assert caught.value.code == code and caught.value.where == "device_sig"


def test_another_devices_key_does_not_verify():
    with pytest.raises(MessageError, match="does not verify"):
        verify(raw_public_key(generate_private_key().public_key()), TOPIC, SEALED)


def test_only_a_json_object_can_be_sealed():
    for body in (b"[]", b"{}", b"", b"not json"):
        with pytest.raises(ValueError):
            seal(KEY, TOPIC, body)


@given(st.binary(max_size=300))
def test_any_bytes_fail_cleanly(payload):
    with pytest.raises(MessageError):
        verify(PUBLIC, TOPIC, payload)


@given(st.integers(min_value=0, max_value=len(SEALED) - 1), st.integers(min_value=1, max_value=255))
def test_any_single_byte_change_is_refused(position, flip):
    changed = bytearray(SEALED)
    changed[position] ^= flip
    with pytest.raises(MessageError):
        verify(PUBLIC, TOPIC, bytes(changed))


def test_a_second_spelling_of_the_signature_is_refused():
    """The last base64 character before the padding carries 4 unused bits: a non-canonical spelling
    decodes to the same signature, and is refused all the same (one message, one payload)."""
    assert SEALED.endswith(b'=="}')
    text = SEALED[-5:-4]
    alphabet = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
    index = alphabet.index(text)
    twin = alphabet[(index & ~0xF) | ((index + 1) & 0xF):][:1]
    assert twin != text
    with pytest.raises(MessageError, match="canonical"):
        verify(PUBLIC, TOPIC, SEALED[:-5] + twin + SEALED[-4:])
