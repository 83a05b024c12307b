"""Models, versions with lineage, bundle upload (signature checked), download with Range."""

from __future__ import annotations

import hashlib
import io
import tarfile

from edgefleet.protocol import keys
from edgefleet.protocol.bundle import add_signature


def test_model_versions_and_lineage(client, onnx_model, make_bundle, upload):
    assert client.post("/api/v1/models", json={"name": "digits"}).status_code == 201
    assert client.post("/api/v1/models", json={"name": "digits"}).status_code == 409
    assert client.post("/api/v1/models/digits/versions", json={"version": "1"}).status_code == 201
    r = client.post("/api/v1/models/digits/versions", json={"version": "1-int8", "kind": "compressed"})
    assert r.status_code == 409  # a compressed variant needs its parent
    r = client.post("/api/v1/models/digits/versions",
                    json={"version": "1-int8", "kind": "compressed", "parent": "1", "report": {"size_ratio": 0.3}})
    assert r.status_code == 201
    r = client.put("/api/v1/models/digits/versions/1/artifact", content=onnx_model,
                   headers={"Content-Type": "application/octet-stream"})
    assert r.status_code == 200 and r.json()["artifact_digest"] == hashlib.sha256(onnx_model).hexdigest()
    assert client.get("/api/v1/models/digits/versions/1/artifact").content == onnx_model
    bundle = upload(make_bundle(name="digits-lineage"))  # manifest lineage.source_digest = sha256(model)
    lineage = client.get("/api/v1/models/digits").json()["lineage"]
    assert lineage[0]["version"] == "1" and lineage[0]["children"][0]["version"] == "1-int8"
    assert lineage[0]["bundles"][0]["digest"] == bundle["digest"]


def test_model_bad_input(client):
    assert client.post("/api/v1/models", json={"name": "../etc"}).status_code == 422
    assert client.post("/api/v1/models", json={}).status_code == 422
    assert client.get("/api/v1/models/none").status_code == 404
    assert client.post("/api/v1/models/none/versions", json={"version": "1"}).status_code == 404
    client.post("/api/v1/models", json={"name": "m"})
    client.post("/api/v1/models/m/versions", json={"version": "1"})
    r = client.put("/api/v1/models/m/versions/1/artifact", content=b"")
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_request"


def test_bundle_upload_is_verified_and_idempotent(client, make_bundle, upload, controller):
    built = make_bundle()
    body = upload(built)
    assert body["digest"] == built.digest and body["name"] == "tiny" and body["size"] == len(built.data)
    assert (controller.settings.bundle_dir / built.digest).read_bytes() == built.data
    again = client.post("/api/v1/bundles", content=built.data)
    assert again.status_code == 200 and again.json()["digest"] == built.digest
    assert [b["digest"] for b in client.get("/api/v1/bundles").json()] == [built.digest]
    detail = client.get(f"/api/v1/bundles/{built.digest[:12]}").json()
    assert detail["manifest"]["name"] == "tiny" and detail["download_path"].endswith("/download")


def _stored(controller) -> list[str]:
    return sorted(p.name for p in controller.settings.bundle_dir.iterdir())


def test_bundle_signed_by_unknown_key_is_refused_and_not_stored(client, make_bundle, controller):
    stranger = keys.generate_private_key()
    r = client.post("/api/v1/bundles", content=make_bundle(name="evil", key=stranger).data)
    assert r.status_code == 422 and r.json()["error"]["code"] == "unknown_key"
    assert _stored(controller) == [] and client.get("/api/v1/bundles").json() == []


def test_tampered_bundle_is_refused(client, make_bundle, controller):
    data = bytearray(make_bundle(name="tamper").data)
    data[-2000] ^= 0xFF
    r = client.post("/api/v1/bundles", content=bytes(data))
    assert r.status_code == 422
    assert _stored(controller) == []


def test_garbage_empty_and_oversized_uploads(client, controller, make_bundle):
    r = client.post("/api/v1/bundles", content=b"not a tar archive at all" * 100)
    assert r.status_code == 422 and r.json()["error"]["code"] == "unsafe_archive"
    assert client.post("/api/v1/bundles", content=b"").status_code == 400
    controller.settings.max_bundle_bytes = 1000
    r = client.post("/api/v1/bundles", content=make_bundle().data)
    assert r.status_code == 413 and r.json()["error"]["code"] == "size_limit"
    assert _stored(controller) == []


def test_same_name_and_build_with_other_content_conflicts(client, make_bundle, upload, release_key):
    upload(make_bundle(name="dup", build=7))
    other = make_bundle(name="dup", build=7, version="1.0.1")
    r = client.post("/api/v1/bundles", content=other.data)
    assert r.status_code == 409


def test_bundle_with_link_member_is_refused(client, make_bundle):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        info = tarfile.TarInfo("manifest.json")
        info.type = tarfile.SYMTYPE
        info.linkname = "/etc/passwd"
        tar.addfile(info)
    r = client.post("/api/v1/bundles", content=buf.getvalue())
    assert r.status_code == 422 and r.json()["error"]["code"] == "unsafe_archive"


def test_extra_release_signature_still_verifies(client, make_bundle, upload):
    built = make_bundle(name="twice")
    data = add_signature(built.data, keys.generate_private_key())
    r = client.post("/api/v1/bundles", content=data)
    assert r.status_code == 201


def test_release_keys_can_be_registered(client, make_bundle):
    other = keys.generate_private_key()
    pem = keys.public_key_pem(other.public_key()).decode()
    assert client.post("/api/v1/bundles", content=make_bundle(name="other", key=other).data).status_code == 422
    r = client.post("/api/v1/release-keys", json={"name": "team-b", "pem": pem})
    assert r.status_code == 201
    assert client.post("/api/v1/release-keys", json={"name": "again", "pem": pem}).status_code == 409
    assert client.post("/api/v1/release-keys", json={"pem": "garbage"}).status_code == 400
    assert client.post("/api/v1/bundles", content=make_bundle(name="other", key=other).data).status_code == 201
    assert len(client.get("/api/v1/release-keys").json()) == 2


def test_download_with_range_and_auth(client, make_bundle, upload, controller):
    built = make_bundle(name="dl")
    upload(built)
    url = f"/api/v1/bundles/{built.digest}/download"
    assert client.get(url, headers={"Authorization": ""}).status_code == 401
    full = client.get(url)
    assert full.status_code == 200 and full.content == built.data
    part = client.get(url, headers={"Range": "bytes=10-99"})
    assert part.status_code == 206 and part.content == built.data[10:100]
    assert part.headers["content-range"] == f"bytes 10-99/{len(built.data)}"
    tail = client.get(url, headers={"Range": "bytes=-5"})
    assert tail.status_code == 206 and tail.content == built.data[-5:]
    bad = client.get(url, headers={"Range": f"bytes={len(built.data) + 10}-"})
    assert bad.status_code == 416 and bad.headers["content-range"] == f"bytes */{len(built.data)}"
    assert client.get(f"/api/v1/bundles/{'0' * 64}/download").status_code == 404
    head = client.head(url)
    assert head.status_code == 200 and int(head.headers["content-length"]) == len(built.data) and not head.content
    assert head.headers["etag"] == f'"{built.digest}"' and head.headers["accept-ranges"] == "bytes"


def test_download_with_signed_url_token(client, make_bundle, upload, controller, clock):
    built = make_bundle(name="signedurl")
    upload(built)
    url = controller.issuer.bundle_url(built.digest, expires_at=int(clock() + 60))
    path = url.removeprefix(controller.settings.resolved_public_url)
    anon = {"Authorization": ""}
    assert client.get(path, headers=anon).content == built.data
    other = f"/api/v1/bundles/{'1' * 64}/download?" + path.split("?")[1]
    assert client.get(other, headers=anon).status_code == 401   # token is bound to the digest
    clock.advance(61)
    r = client.get(path, headers=anon)
    assert r.status_code == 401 and "expired" in r.json()["error"]["message"]
    assert client.get(path.split("?")[0] + "?token=123.abc", headers=anon).status_code == 401


def test_device_token_can_download_but_not_manage(client, fleet, make_bundle, upload):
    built = make_bundle(name="devdl")
    upload(built)
    creds = fleet.enroll("d1")
    device = {"Authorization": f"Bearer {creds['api_token']}"}
    assert client.get(f"/api/v1/bundles/{built.digest}/download", headers=device).content == built.data
    assert client.get("/api/v1/devices", headers=device).status_code == 403


def test_delete_bundle(client, make_bundle, upload, controller):
    built = make_bundle(name="gone")
    upload(built)
    assert client.delete(f"/api/v1/bundles/{built.digest}").status_code == 204
    assert _stored(controller) == []
    assert client.get(f"/api/v1/bundles/{built.digest}").status_code == 404
