"""Upload requests and grants (protocol/messages.py, protocol/uploads.py): strict decoding, and what a
device checks before it sends captured samples anywhere. The grant example in docs/protocol.md verifies."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edgefleet.protocol.errors import (
    ExpiredError,
    MessageError,
    SignatureError,
    TargetMismatchError,
    UnknownKeyError,
    VerificationError,
)
from edgefleet.protocol.keys import TrustedKeys, generate_private_key
from edgefleet.protocol.messages import UploadGrant, UploadGrantMessage, UploadRequest, decode, encode
from edgefleet.protocol.uploads import grant_bytes, origin, sign_grant, verify_grant

DOC = Path(__file__).resolve().parents[2] / "docs" / "protocol.md"
NOW = 1_800_000_000
UPLOAD = "0f" * 16
KEY = generate_private_key()
TRUSTED = TrustedKeys.of([KEY.public_key()], role="controller")


def grant(**kw) -> UploadGrant:
    values = {"device_id": "d1", "upload_id": UPLOAD, "url": f"https://c.example:8443/api/v1/uploads/{UPLOAD}?token=t",
              "max_bytes": 100, "issued_at": NOW, "expires_at": NOW + 900} | kw
    return UploadGrant(**values)


def check(signed, *, controller_url="https://c.example:8443", device_id="d1", now=NOW + 1):
    return verify_grant(signed, trusted=TRUSTED, device_id=device_id, controller_url=controller_url, now=now)


def test_a_good_grant_verifies():
    assert check(sign_grant(grant(), KEY)).upload_id == UPLOAD
    assert check(sign_grant(grant(url=f"http://c.example/api/v1/uploads/{UPLOAD}"), KEY),
                 controller_url="http://C.example:80/").max_bytes == 100   # default port, host case


@pytest.mark.parametrize(("what", "signed", "kw", "error"), [
    ("forged", lambda: sign_grant(grant(), generate_private_key()), {}, UnknownKeyError),
    ("tampered", lambda: sign_grant(grant(), KEY).model_copy(update={"signed": grant(max_bytes=10**6)}), {},
     SignatureError),
    ("another device", lambda: sign_grant(grant(device_id="d2"), KEY), {}, TargetMismatchError),
    ("expired", lambda: sign_grant(grant(), KEY), {"now": NOW + 900}, ExpiredError),
    ("from the future", lambda: sign_grant(grant(issued_at=NOW + 3600, expires_at=NOW + 7200), KEY), {},
     ExpiredError),
    ("another host", lambda: sign_grant(grant(url=f"https://evil.example:8443/api/v1/uploads/{UPLOAD}"), KEY), {},
     VerificationError),
    ("another port", lambda: sign_grant(grant(url=f"https://c.example/api/v1/uploads/{UPLOAD}"), KEY), {},
     VerificationError),
    ("plain http", lambda: sign_grant(grant(url=f"http://c.example:8443/api/v1/uploads/{UPLOAD}"), KEY), {},
     VerificationError),
    ("not http", lambda: sign_grant(grant(url="file:///etc/passwd"), KEY), {}, VerificationError),
    ("another upload path", lambda: sign_grant(grant(url="https://c.example:8443/api/v1/bundles/x"), KEY), {},
     VerificationError),
    ("no controller_url", lambda: sign_grant(grant(), KEY), {"controller_url": None}, VerificationError),
])
def test_a_device_refuses(what, signed, kw, error):
    with pytest.raises(error):
        check(signed(), **kw)


def test_origin_needs_http_and_a_host():
    assert origin("https://h:1/x") == ("https", "h", 1)
    for bad in ("ftp://h/x", "https:///x", "h:80"):
        with pytest.raises(ValueError):
            origin(bad)


def test_requests_are_decoded_strictly():
    req = UploadRequest(device_id="d1", upload_id=UPLOAD, bundle_digest="ab" * 32, size=10, sha256="cd" * 32,
                        samples=3, labelled=1, t_from=1.0, t_to=2.0)
    assert decode("events", encode(req)) == req
    obj = json.loads(encode(req))
    for bad in ({"labelled": 4}, {"t_from": 3.0}, {"size": 0}, {"upload_id": "x"}, {"size": 2 ** 31}):
        with pytest.raises(MessageError):
            decode("events", json.dumps(obj | bad).encode())
    with pytest.raises(MessageError, match="unknown events message type"):
        decode("events", json.dumps(obj | {"type": "upload_grant"}).encode())
    with pytest.raises(MessageError, match="unknown cmd message type"):
        decode("cmd", json.dumps(obj | {"type": "upload_request"}).encode())


def test_the_documented_grant_verifies_with_the_documented_key():
    text = DOC.read_text()
    section = text[text.index("### 10.2 `upload_grant`"):text.index("### 10.3")]
    body = re.search(r"```json\n(.*?)\n```", section, re.S).group(1)
    message = decode("cmd", json.dumps(json.loads(body)).encode())
    assert isinstance(message, UploadGrantMessage)
    signed_bytes = re.search(r"The signed bytes of that grant:\n\n```\n(.*?)\n```", section, re.S).group(1)
    assert grant_bytes(message.grant.signed) == signed_bytes.encode()
    doc_key = Ed25519PrivateKey.from_private_bytes(bytes(range(32)))   # the test key of docs/protocol.md §9
    trusted = TrustedKeys.of([doc_key.public_key()], role="controller")
    got = verify_grant(message.grant, trusted=trusted, device_id="cam-0042", controller_url="https://fleet.example:8080",
                       now=message.grant.signed.issued_at)
    assert got.max_bytes == 43632
