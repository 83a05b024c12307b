"""Device message signatures: who published a message, whatever the broker allows.

Every message a device publishes carries an Ed25519 signature by the device's own key (made at
enrollment; the private key never leaves the device) over a domain tag, the topic and the exact
payload bytes. The signature travels as the payload's last member, so the payload stays one JSON
object and the signed bytes are recovered without parsing or re-serialising anything::

    body     = {"schema_version":1,"type":"telemetry",...}
    signed   = b"edgefleet/device-message/v1\\n" + topic + b"\\n" + body
    payload  = body[:-1] + ',"device_sig":"<base64 of the 64-byte signature>"}'

Binding the topic means a message cannot be replayed under another device's topics or as another
kind; replays of the same message on its own topic are de-duplicated by ``msg_id`` (docs/security.md
"Message signatures").

The controller verifies with libsodium (PyNaCl, a dependency of the controller only; the agent only
seals, with ``cryptography``): about 1.5x faster than OpenSSL's Ed25519 here, and it releases the GIL.
libsodium is also the stricter verifier (it refuses small-order keys and ``R`` points, and
non-canonical ``S``), so nothing OpenSSL would refuse gets through.
"""

from __future__ import annotations

import base64
import binascii

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from edgefleet.protocol.errors import MessageError
from edgefleet.protocol.vocabulary import Reason

DOMAIN = b"edgefleet/device-message/v1\n"
FIELD = "device_sig"
_MARK = b',"' + FIELD.encode() + b'":"'
_SIG_CHARS = 88   # base64 of 64 bytes, padded
_TAIL = len(_MARK) + _SIG_CHARS + 2   # ,"device_sig":"...."}
_KEY_BYTES, _SIG_BYTES = 32, 64


def signed_bytes(topic: str, body: bytes) -> bytes:
    """The bytes a device signs for ``body`` published on ``topic``."""
    return DOMAIN + topic.encode("utf-8") + b"\n" + body


def seal(key: Ed25519PrivateKey, topic: str, body: bytes) -> bytes:
    """``body`` (one JSON object with at least one member) with the device's signature appended."""
    if not (body.startswith(b"{") and body.endswith(b"}")) or body.strip() == b"{}":
        raise ValueError("only a non-empty JSON object can be sealed")
    sig = base64.b64encode(key.sign(signed_bytes(topic, body)))
    return body[:-1] + _MARK + sig + b'"}'


def unseal(topic: str, payload: bytes) -> tuple[bytes, bytes]:
    """Split a sealed payload into ``(signed bytes, signature)``; :class:`MessageError` with code
    ``unsigned`` when it carries no signature in the one place it may be."""
    tail = payload[-_TAIL:]
    if len(payload) < _TAIL + 2 or not tail.startswith(_MARK) or not tail.endswith(b'"}'):
        raise MessageError("the message carries no device signature (device_sig, its last member)",
                           code=Reason.UNSIGNED, where=FIELD,
                           hint="upgrade the agent (agents of this release sign every message) or re-enroll the device")
    text = tail[len(_MARK):-2]
    try:
        sig = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        sig = b""
    if base64.b64encode(sig) != text:   # canonical only: no second spelling of one signature
        raise MessageError("device_sig is not the canonical base64 of a signature", code=Reason.BAD_SIGNATURE,
                           where=FIELD)
    return signed_bytes(topic, payload[:-_TAIL] + b"}"), sig


def verify(public_key: bytes, topic: str, payload: bytes) -> None:
    """Check ``payload`` on ``topic`` was sealed by the device whose raw public key is given, or
    raise :class:`MessageError` (``unsigned`` or ``bad_signature``)."""
    from nacl.bindings import crypto_sign_open  # the controller's verifier (the agent never verifies)
    from nacl.exceptions import BadSignatureError

    data, sig = unseal(topic, payload)
    try:
        if len(public_key) != _KEY_BYTES or len(sig) != _SIG_BYTES:   # libsodium reads exactly these sizes
            raise BadSignatureError("wrong key or signature size")
        crypto_sign_open(sig + data, public_key)
    except BadSignatureError:
        raise MessageError("the device signature does not verify with the key the device enrolled with",
                           code=Reason.BAD_SIGNATURE, where=FIELD,
                           hint="a forged or altered message, or a device re-enrolled with a new key") from None


def raw_public_key(key: Ed25519PublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def encode_public_key(key: Ed25519PublicKey) -> str:
    """How the controller stores a device key: base64 of the 32 raw bytes."""
    return base64.b64encode(raw_public_key(key)).decode("ascii")


def decode_public_key(text: str) -> bytes:
    return base64.b64decode(text, validate=True)
