"""Signing and verifying deployment orders (the *director* role of Uptane).

The controller signs one order per device. A device accepts an order only if it is signed by
a trusted controller key, addressed to this device, not expired, and its ``sequence`` is
greater than the last one the device accepted (so a captured order cannot be replayed and a
rollback is always a *new* order pointing at an older bundle).
"""

from __future__ import annotations

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edgefleet.protocol.canonical import canonical_json
from edgefleet.protocol.errors import ExpiredError, ReplayError, SignatureError, TargetMismatchError
from edgefleet.protocol.keys import TrustedKeys, key_id, sign
from edgefleet.protocol.messages import DeploymentOrder, SignedOrder
from edgefleet.protocol.vocabulary import OrderAction

CLOCK_SKEW_S = 300
"""Tolerated clock difference between controller and device when checking ``issued_at``."""


def order_bytes(order: DeploymentOrder) -> bytes:
    return canonical_json(order.model_dump(mode="json"))


def sign_order(order: DeploymentOrder, private_key: Ed25519PrivateKey) -> SignedOrder:
    order = order.model_copy(update={"key_id": key_id(private_key.public_key())})
    return SignedOrder(signed=order, signatures=[sign(private_key, order_bytes(order))])


def verify_order(signed: SignedOrder, *, trusted: TrustedKeys, device_id: str, last_sequence: int,
                 now: float) -> DeploymentOrder:
    """Return the order if this device may act on it; raise a VerificationError otherwise.

    Checks run in an order that never trusts an unverified field: signature first.
    """
    order = signed.signed
    try:
        body = order_bytes(order)
    except ValueError:  # a lone surrogate or a non-finite number has no canonical JSON form
        raise SignatureError("the signed order has no canonical JSON form", where="order.signed") from None
    trusted.verify(body, signed.signatures)
    if order.device_id != device_id:
        raise TargetMismatchError(f"order is for device {order.device_id!r}, this is {device_id!r}",
                                  where="order.device_id")
    if order.sequence <= last_sequence:
        raise ReplayError(f"order sequence {order.sequence} is not above the last accepted {last_sequence}",
                          where="order.sequence", hint="a replayed or stale order; the controller must issue a new one")
    if now >= order.expires_at:
        raise ExpiredError(f"order expired at {order.expires_at} (now {int(now)})", where="order.expires_at")
    if order.issued_at > now + CLOCK_SKEW_S:
        raise ExpiredError(f"order issued in the future ({order.issued_at}, now {int(now)})",
                           where="order.issued_at", hint="check the device clock (NTP)")
    if order.action == OrderAction.INSTALL and (order.bundle_digest is None or order.bundle_size is None
                                      or not order.bundle_url):
        raise TargetMismatchError("install order lacks bundle digest, size or url", where="order")
    return order
