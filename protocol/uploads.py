"""Upload grants: the controller's signed permission for one device to upload one batch of captured
samples (docs/protocol.md, "Sample upload"), signed and checked like deployment orders.

A device accepts a grant only if it is signed by a trusted controller key, addressed to this device,
not expired, and its URL is on the origin (scheme, host, port) of the controller the device enrolled
with: captured inputs are never sent anywhere else.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edgefleet.protocol.canonical import canonical_json
from edgefleet.protocol.errors import ExpiredError, SignatureError, TargetMismatchError, VerificationError
from edgefleet.protocol.keys import TrustedKeys, key_id, sign
from edgefleet.protocol.messages import SignedUploadGrant, UploadGrant
from edgefleet.protocol.orders import CLOCK_SKEW_S

UPLOADS_PATH = "/api/v1/uploads/"
"""Upload URLs are ``<controller>/api/v1/uploads/<upload_id>?token=...``."""
_DEFAULT_PORTS = {"http": 80, "https": 443}


def grant_bytes(grant: UploadGrant) -> bytes:
    return canonical_json(grant.model_dump(mode="json"))


def sign_grant(grant: UploadGrant, private_key: Ed25519PrivateKey) -> SignedUploadGrant:
    grant = grant.model_copy(update={"key_id": key_id(private_key.public_key())})
    return SignedUploadGrant(signed=grant, signatures=[sign(private_key, grant_bytes(grant))])


def origin(url: str) -> tuple[str, str, int]:
    """``(scheme, host, port)`` of an http(s) URL (the port made explicit); ValueError otherwise."""
    parts = urlsplit(url)
    if parts.scheme not in _DEFAULT_PORTS or not parts.hostname:
        raise ValueError(f"{url[:200]!r} is not an http(s) URL")
    return parts.scheme, parts.hostname.lower(), parts.port or _DEFAULT_PORTS[parts.scheme]


def verify_grant(signed: SignedUploadGrant, *, trusted: TrustedKeys, device_id: str, controller_url: str | None,
                 now: float) -> UploadGrant:
    """Return the grant if this device may upload with it; raise a VerificationError otherwise.
    The signature is checked first, so no unverified field is trusted."""
    grant = signed.signed
    try:
        body = grant_bytes(grant)
    except ValueError:
        raise SignatureError("the signed grant has no canonical JSON form", where="grant.signed") from None
    trusted.verify(body, signed.signatures)
    if grant.device_id != device_id:
        raise TargetMismatchError(f"grant is for device {grant.device_id!r}, this is {device_id!r}",
                                  where="grant.device_id")
    if now >= grant.expires_at:
        raise ExpiredError(f"grant expired at {grant.expires_at} (now {int(now)})", where="grant.expires_at",
                           hint="the device asks for a new one")
    if grant.issued_at > now + CLOCK_SKEW_S:
        raise ExpiredError(f"grant issued in the future ({grant.issued_at}, now {int(now)})",
                           where="grant.issued_at", hint="check the device clock (NTP)")
    if controller_url is None:
        raise VerificationError("no controller_url is configured, so no upload URL can be trusted",
                                where="grant.url", hint="set controller_url in the agent config (enroll sets it)")
    try:
        same_origin = origin(grant.url) == origin(controller_url)
    except ValueError as exc:
        raise VerificationError(str(exc), where="grant.url") from None
    if not same_origin:
        raise VerificationError(f"upload URL {grant.url.split('?')[0][:200]!r} is not on the controller's origin "
                                f"{controller_url!r}", where="grant.url",
                                hint="captured samples are only ever sent to the enrolled controller")
    if not urlsplit(grant.url).path.endswith(UPLOADS_PATH + grant.upload_id):
        raise VerificationError("upload URL does not name the granted upload", where="grant.url")
    return grant
