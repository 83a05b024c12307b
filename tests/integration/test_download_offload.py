"""Downloads that scale (docs/operations.md): the controller authorises every bundle download, and what
serves files best serves the bytes -- a real nginx (started here, running docs/nginx-edgefleet.conf) through
``X-Accel-Redirect``, or an S3-compatible server (moto's, the one that installs here from PyPI) through a
presigned URL. Checked with plain HTTP, with the agent's own resuming download code, and with a real agent."""

from __future__ import annotations

import hashlib
import http.client
import json
import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest

from edgefleet.agent.download import download
from edgefleet.agent.url_policy import UrlPolicy
from edgefleet.cloud.server import BackgroundServer
from edgefleet.cloud.services.auth import download_token
from edgefleet.cloud.settings import ControllerSettings
from edgefleet.protocol.errors import VerificationError

from agentkit.bundles import make_bundle
from offloadkit import NGINX_BIN, Nginx, s3_client, s3_settings
from testkit import free_port, missing_part

pytestmark = pytest.mark.integration

ADMIN = "eft_offload-admin"
BUCKET = "edgefleet-bundles"


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes

    def error(self) -> dict:
        return json.loads(self.body)["error"]


def fetch(url: str, method: str = "GET", *, headers: dict[str, str] | None = None, body: bytes | None = None) -> Answer:
    """One request, redirects not followed."""
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
    try:
        conn.request(method, parts.path + (f"?{parts.query}" if parts.query else ""), body=body,
                     headers=headers or {})
        r = conn.getresponse()
        return Answer(r.status, {k.lower(): v for k, v in r.getheaders()}, r.read())
    finally:
        conn.close()


def with_token(url: str, token: str) -> str:
    return url.split("?")[0] + f"?token={token}"


@contextmanager
def controller(tmp_path: Path, name: str, *, broker, prefix: str, release_key, controller_key,
               **settings) -> Iterator[BackgroundServer]:
    values = {"data_dir": tmp_path / name, "listen_port": free_port(), "broker_url": broker.url,
              "topic_prefix": f"{name}-{prefix}", "release_key_paths": [release_key.public_path],
              "controller_key_path": controller_key.private_path, "admin_token": ADMIN}
    server = BackgroundServer(ControllerSettings(**(values | settings))).start()
    try:
        yield server
    finally:
        server.stop()


def upload(base: str, data: bytes) -> Answer:
    return fetch(f"{base}/api/v1/bundles", "POST", body=data, headers={"Authorization": f"Bearer {ADMIN}"})


@dataclass
class Site:
    server: BackgroundServer
    front: str
    """Where devices download from (nginx, or the controller itself with an S3 store)."""

    def signed_url(self, digest: str, ttl: int = 600) -> str:
        return self.server.controller.issuer.bundle_url(digest, expires_at=int(time.time() + ttl))


@pytest.fixture
def nginx_site(tmp_path, mqtt_broker, topic_prefix, release_key, controller_key) -> Iterator[Site]:
    if not Path(NGINX_BIN).exists():
        missing_part("nginx is not installed (apt-get install -y nginx)")
    port = free_port()
    with controller(tmp_path, "accel", broker=mqtt_broker, prefix=topic_prefix, release_key=release_key,
                    controller_key=controller_key, download_offload="nginx",
                    public_url=f"http://127.0.0.1:{port}") as server:
        nginx = Nginx(tmp_path / "nginx", port=port, controller=f"127.0.0.1:{server.settings.listen_port}",
                      bundle_dir=server.settings.bundle_dir).start()
        try:
            yield Site(server, nginx.url)
        finally:
            nginx.stop()


@pytest.fixture
def moto_endpoint() -> Iterator[str]:
    try:
        from moto.server import ThreadedMotoServer
    except ImportError:
        missing_part("moto's S3 server is not installed (pip install -c constraints.txt -e '.[dev]')")
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.stop()


@pytest.fixture
def s3_site(tmp_path, mqtt_broker, topic_prefix, release_key, controller_key, moto_endpoint) -> Iterator[Site]:
    s3_client(moto_endpoint).create_bucket(Bucket=BUCKET)
    with controller(tmp_path, "s3", broker=mqtt_broker, prefix=topic_prefix, release_key=release_key,
                    controller_key=controller_key, **s3_settings(moto_endpoint, BUCKET)) as server:
        yield Site(server, server.url)


def resumed_download(url: str, data: bytes, dest: Path, policy: UrlPolicy, caplog) -> bytes:
    """The agent's download code resuming after half the bytes; fails if the server ignored the Range."""
    half = len(data) // 2
    dest.with_name(dest.name + ".part").write_bytes(data[:half])
    with caplog.at_level(logging.INFO, logger="edgefleet.agent.download"):
        download(url, dest, expected_size=len(data), expected_sha256=hashlib.sha256(data).hexdigest(),
                 check_url=policy.check)
    assert "ignored Range" not in caplog.text
    return dest.read_bytes()


def test_behind_nginx_the_controller_authorises_and_nginx_serves(nginx_site, release_key, controller_key, tiny_onnx,
                                                                 tmp_path, caplog):
    data = make_bundle(tiny_onnx, release_key.private, name="accel")
    digest = hashlib.sha256(data).hexdigest()
    assert upload(nginx_site.front, data).status == 201             # uploads stream through nginx too
    url = nginx_site.signed_url(digest)
    assert url.startswith(nginx_site.front)                         # orders name nginx (public_url)

    # the controller itself answers with no bytes, only the internal path
    direct = fetch(url.replace(nginx_site.front, nginx_site.server.url))
    assert (direct.status, direct.body) == (200, b"")
    assert direct.headers["x-accel-redirect"] == f"/_edgefleet/bundles/{digest}"

    got = fetch(url)
    assert got.status == 200 and hashlib.sha256(got.body).hexdigest() == digest
    assert got.headers["content-type"] == "application/x-tar"
    assert got.headers["content-disposition"] == 'attachment; filename="accel-1.0.0+1.efb"'
    assert "x-accel-redirect" not in got.headers and got.headers["server"].startswith("nginx")

    half = len(data) // 2
    part = fetch(url, headers={"Range": f"bytes={half}-"})
    assert (part.status, part.headers["content-range"]) == (206, f"bytes {half}-{len(data) - 1}/{len(data)}")
    assert part.body == data[half:]
    head = fetch(url, "HEAD")
    assert (head.status, head.headers["content-length"], head.body) == (200, str(len(data)), b"")
    api = fetch(url.split("?")[0], headers={"Authorization": f"Bearer {ADMIN}"})
    assert api.status == 200 and api.body == data                   # an API token works through nginx too

    policy = UrlPolicy.from_config(controller_url=None, bundle_origins=[nginx_site.front], allow_http=True)
    assert resumed_download(url, data, tmp_path / "accel.efb", policy, caplog) == data

    # refusals are the controller's, with its error body, and carry no bytes
    forged = fetch(with_token(url, url.split("token=")[1][:-4] + "AAAA"))
    expired = fetch(with_token(url, download_token(controller_key.private, digest=digest,
                                                   expires_at=int(time.time()) - 5)))
    anonymous = fetch(url.split("?")[0])
    assert (forged.status, forged.error()["message"]) == (401, "invalid download token")
    assert (expired.status, expired.error()["message"]) == (401, "download token expired")
    assert anonymous.status == 401
    other = "1" * 64
    missing = fetch(nginx_site.signed_url(other))
    assert (missing.status, missing.error()["code"]) == (404, "not_found")
    # the internal location cannot be reached from outside, nor walked out of
    for path in (f"/_edgefleet/bundles/{digest}", "/_edgefleet/bundles/../controller.db"):
        outside = fetch(nginx_site.front + path)
        assert outside.status == 404 and data not in outside.body
    for refused in (forged, expired, anonymous, missing):
        assert data[:64] not in refused.body and "x-accel-redirect" not in refused.headers


def test_with_an_s3_store_the_controller_authorises_and_the_bucket_serves(s3_site, moto_endpoint, release_key,
                                                                          controller_key, tiny_onnx, tmp_path,
                                                                          caplog):
    from botocore.exceptions import ClientError

    s3 = s3_client(moto_endpoint)
    data = make_bundle(tiny_onnx, release_key.private, name="s3")
    digest = hashlib.sha256(data).hexdigest()
    assert upload(s3_site.front, data).status == 201
    stored = s3.get_object(Bucket=BUCKET, Key=f"bundles/{digest}")
    assert stored["ContentType"] == "application/x-tar" and stored["Body"].read() == data

    url = s3_site.signed_url(digest)
    answer = fetch(url)
    location = answer.headers["location"]
    assert (answer.status, answer.headers["cache-control"], answer.body) == (307, "no-store", b"")
    assert location.startswith(f"{moto_endpoint}/{BUCKET}/bundles/{digest}?")
    assert parse_qs(urlsplit(location).query)["X-Amz-Expires"] == ["300"]
    presigned = fetch(location)
    assert presigned.status == 200 and presigned.body == data
    assert presigned.headers["content-disposition"] == 'attachment; filename="s3-1.0.0+1.efb"'
    half = len(data) // 2
    part = fetch(location, headers={"Range": f"bytes={half}-"})
    assert (part.status, part.body) == (206, data[half:])
    head = fetch(fetch(url, "HEAD").headers["location"], "HEAD")    # a HEAD gets a URL signed for HEAD
    assert (head.status, head.headers["content-length"]) == (200, str(len(data)))
    # the presigned URL never outlives the token that authorised it
    soon = fetch(s3_site.signed_url(digest, ttl=20)).headers["location"]
    assert 1 <= int(parse_qs(urlsplit(soon).query)["X-Amz-Expires"][0]) <= 20

    # the agent follows the redirect (checked against its URL policy) and resumes with Range
    origins = [s3_site.front, moto_endpoint]
    policy = UrlPolicy.from_config(controller_url=None, bundle_origins=origins, allow_http=True)
    assert resumed_download(url, data, tmp_path / "s3.efb", policy, caplog) == data
    only_controller = UrlPolicy.from_config(controller_url=None, bundle_origins=[s3_site.front], allow_http=True)
    with pytest.raises(VerificationError) as refused:
        download(url, tmp_path / "refused.efb", expected_size=len(data), expected_sha256=digest,
                 check_url=only_controller.check)
    assert refused.value.code == "url_refused" and not (tmp_path / "refused.efb.part").exists()

    forged = fetch(with_token(url, url.split("token=")[1][:-4] + "AAAA"))
    expired = fetch(with_token(url, download_token(controller_key.private, digest=digest,
                                                   expires_at=int(time.time()) - 5)))
    for bad in (forged, expired):
        assert bad.status == 401 and "location" not in bad.headers and data[:64] not in bad.body

    # devices that reach the store under another name get URLs naming it (s3_presign_endpoint_url)
    from edgefleet.cloud.store.s3 import S3BlobStore
    public = S3BlobStore.connect(tmp_path / "public", bucket=BUCKET, prefix="bundles/", endpoint_url=moto_endpoint,
                                 presign_endpoint_url="https://bundles.example.com", addressing_style="path",
                                 access_key_id="k", secret_access_key="s")
    assert public.presigned_url(digest).startswith(f"https://bundles.example.com/{BUCKET}/bundles/{digest}?")

    # a controller without the file in its cache (another replica) reads it from the bucket
    store = s3_site.server.controller.bundles
    (store.root / digest).unlink()
    assert store.open_path(digest).read_bytes() == data

    # deleting the bundle deletes the object; with the bucket gone, an upload fails whole (503, nothing stored)
    assert fetch(f"{s3_site.front}/api/v1/bundles/{digest}", "DELETE",
                 headers={"Authorization": f"Bearer {ADMIN}"}).status == 204
    with pytest.raises(ClientError):
        s3.head_object(Bucket=BUCKET, Key=f"bundles/{digest}")
    s3.delete_bucket(Bucket=BUCKET)
    failed = upload(s3_site.front, data)
    assert (failed.status, failed.error()["code"], failed.error()["where"]) == (503, "transport_failed", "bundle_store")
    assert "NoSuchBucket" in failed.error()["message"] and str(tmp_path) not in failed.error()["message"]
    listed = fetch(f"{s3_site.front}/api/v1/bundles", headers={"Authorization": f"Bearer {ADMIN}"})
    assert json.loads(listed.body) == [] and not list(store.root.glob(".upload-*"))


def test_a_real_agent_installs_through_nginx_then_from_s3(agent_harness, nginx_site, s3_site, moto_endpoint):
    h = agent_harness
    h.start(bundle_origins=[nginx_site.front, s3_site.front, moto_endpoint])
    first = h.bundle(name="offload", version="1.0.0", build=1)
    second = h.bundle(name="offload", version="2.0.0", build=2)
    assert upload(nginx_site.front, first).status == 201 and upload(s3_site.front, second).status == 201

    via_nginx = h.install(first, url=nginx_site.signed_url(hashlib.sha256(first).hexdigest()))
    assert (via_nginx["outcome"], via_nginx["state"]) == ("committed", "committed"), via_nginx
    access = (nginx_site.server.settings.data_dir.parent / "nginx" / "logs" / "access.log").read_text()
    assert f"GET /api/v1/bundles/{hashlib.sha256(first).hexdigest()}/download?token=" in access

    via_s3 = h.install(second, url=s3_site.signed_url(hashlib.sha256(second).hexdigest()))
    assert (via_s3["outcome"], via_s3["state"]) == ("committed", "committed"), via_s3
    status, body = h.agent.predict({"x": [[0.1, 0.2, 0.3, 0.4]]})
    assert status == 200 and body["bundle"]["version"] == "2.0.0"
