"""One controller key signs two kinds of things (docs/security.md §3): deployment orders (the canonical
JSON of the order) and download-link tokens (``edgefleet-download:<digest>:<expires_at>``). Neither
signature can be taken for the other: the signed byte strings never coincide (JSON starts with ``{``)."""

from __future__ import annotations

import base64

import pytest

from edgefleet.cloud.services.auth import AuthenticationError, check_download_token, download_token
from edgefleet.protocol.errors import SignatureError
from edgefleet.protocol.keys import TrustedKeys, generate_private_key, key_id
from edgefleet.protocol.messages import DeploymentOrder, Signature, SignedOrder
from edgefleet.protocol.orders import sign_order, verify_order

NOW = 1_800_000_000
DIGEST = "ab" * 32


@pytest.fixture
def key():
    return generate_private_key()


def _order(key) -> DeploymentOrder:
    return DeploymentOrder(device_id="dev1", deployment_id="dep-1", bundle_digest=DIGEST, bundle_size=1234,
                           bundle_url=f"https://controller.test/api/v1/bundles/{DIGEST}/download",
                           bundle_name="clf", bundle_version="1.0.0", sequence=5, issued_at=NOW - 10,
                           expires_at=NOW + 3600, key_id=key_id(key.public_key()))


def _raw(token: str) -> bytes:
    sig = token.split(".", 1)[1]
    return base64.urlsafe_b64decode(sig + "=" * (-len(sig) % 4))


def test_a_download_token_is_not_an_order_signature(key):
    order = _order(key)
    token = download_token(key, digest=DIGEST, expires_at=order.expires_at)
    forged = SignedOrder(signed=order, signatures=[Signature(keyid=key_id(key.public_key()),
                                                             sig=base64.b64encode(_raw(token)).decode())])
    trusted = TrustedKeys.of([key.public_key()], role="controller")
    with pytest.raises(SignatureError):
        verify_order(forged, trusted=trusted, device_id="dev1", last_sequence=0, now=NOW)
    # the genuine signature of the same order verifies: the refusal above is the domain, not the setup
    assert verify_order(sign_order(order, key), trusted=trusted, device_id="dev1", last_sequence=0,
                        now=NOW).sequence == 5


def test_an_order_signature_is_not_a_download_token(key):
    order = _order(key)
    sig = base64.b64decode(sign_order(order, key).signatures[0].sig)
    token = f"{order.expires_at}.{base64.urlsafe_b64encode(sig).decode().rstrip('=')}"
    with pytest.raises(AuthenticationError, match="invalid download token"):
        check_download_token(key, digest=DIGEST, token=token, now=NOW)
    genuine = download_token(key, digest=DIGEST, expires_at=order.expires_at)
    check_download_token(key, digest=DIGEST, token=genuine, now=NOW)     # no exception
