"""End-to-end delivery acknowledgements: the controller says which of a device's messages it has
stored, the device deletes exactly those from its outbox (docs/protocol.md "Delivery acknowledgements").

An acknowledgement is signed by the controller key, like an order: a forged one would make a device
drop windows nobody stored (docs/security.md "Delivery acknowledgements"). It lists message ids,
which are random and never reused, so a replayed acknowledgement deletes nothing that is still
waiting; it carries no expiry and no sequence. Pure functions: no clock, no I/O.

Acknowledging is on the controller's ingest path (one per device and batch while a backlog drains),
so :func:`ack_messages` derives the key's id once per call and signs with libsodium (PyNaCl, a
dependency of the controller only, imported here only): 25 us a signature against OpenSSL's 41 us.
Ed25519 is deterministic, so the signature is byte for byte the one ``cryptography`` makes.
"""

from __future__ import annotations

import base64
from collections.abc import Callable, Iterable, Mapping

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edgefleet.protocol.canonical import canonical_json
from edgefleet.protocol.errors import SignatureError, TargetMismatchError
from edgefleet.protocol.keys import TrustedKeys, key_id
from edgefleet.protocol.messages import MAX_ACKED, AckBody, AckMessage, Signature, SignedAck, encode
from edgefleet.protocol.topics import ack as ack_topic


def ack_bytes(body: AckBody) -> bytes:
    return canonical_json(body.model_dump(mode="json"))


def _libsodium_signer(key: Ed25519PrivateKey) -> Callable[[bytes], bytes]:
    from nacl.bindings import crypto_sign, crypto_sign_seed_keypair  # the controller's (the agent never signs acks)

    seed = key.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw,
                             serialization.NoEncryption())
    _, secret = crypto_sign_seed_keypair(seed)
    return lambda data: crypto_sign(data, secret)[:64]   # signature || message


def ack_messages(acked: Mapping[str, Iterable[str]], *, key: Ed25519PrivateKey, prefix: str,
                 issued_at: int) -> list[tuple[str, bytes]]:
    """``(topic, payload)`` of the signed acknowledgements for ``device id -> stored message ids``,
    at most :data:`~edgefleet.protocol.messages.MAX_ACKED` ids each."""
    signer_id, sign = key_id(key.public_key()), _libsodium_signer(key)
    out = []
    for device_id, msg_ids in acked.items():
        ids = list(dict.fromkeys(msg_ids))
        for start in range(0, len(ids), MAX_ACKED):
            body = AckBody(device_id=device_id, acked=ids[start:start + MAX_ACKED], issued_at=issued_at,
                           key_id=signer_id)
            signature = Signature(keyid=signer_id, sig=base64.b64encode(sign(ack_bytes(body))).decode("ascii"))
            out.append((ack_topic(device_id, prefix),
                        encode(AckMessage(device_id=device_id, ack=SignedAck(signed=body, signatures=[signature])))))
    return out


def verify_ack(message: AckMessage, *, trusted: TrustedKeys, device_id: str) -> list[str]:
    """The message ids a device may delete, once the acknowledgement is known to come from a trusted
    controller key and to be meant for this device; else a VerificationError."""
    body = message.ack.signed
    try:
        data = ack_bytes(body)
    except ValueError:  # a lone surrogate has no canonical JSON form
        raise SignatureError("the signed acknowledgement has no canonical JSON form", where="ack.signed") from None
    trusted.verify(data, message.ack.signatures)
    if body.device_id != device_id or message.device_id != device_id:
        raise TargetMismatchError(f"acknowledgement is for device {body.device_id!r}, this is {device_id!r}",
                                  where="ack.signed.device_id")
    return list(body.acked)
