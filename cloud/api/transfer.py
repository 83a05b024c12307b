"""Large bodies in and out of the API: streaming uploads into a blob store, file downloads.

The upload routes are ``async`` (they stream the body) but the database is not: every database call
they make goes through ``run_in_threadpool``. On the event loop, a write waiting for SQLite's lock
(up to its 30 s busy timeout) would block the loop -- and with it the commit of the request that
holds the lock, whose session dependency ends in the thread pool scheduled from the loop: the wait
always ran out, and the upload failed with "database is locked".

Downloads that scale (docs/operations.md): after the controller has authorized a download, the bytes may
come from nginx (:func:`accel_redirect`) or from an S3-compatible bucket (:func:`presigned_redirect`)."""

from __future__ import annotations

import re
from typing import Literal, Protocol, runtime_checkable

from fastapi import Request
from fastapi.responses import FileResponse, RedirectResponse, Response

from edgefleet.cloud.store.blobs import BlobStore, Incoming
from edgefleet.protocol.errors import ConfigError, InvalidRequestError, SizeLimitError

BUNDLE_MEDIA_TYPE = "application/x-tar"

OCTET_BODY = {"requestBody": {"required": True, "content": {"application/octet-stream": {
    "schema": {"type": "string", "format": "binary"}}}}}
"""OpenAPI description of a raw-bytes request body."""


class LargeFileResponse(FileResponse):
    chunk_size = 1024 * 1024


@runtime_checkable
class PresigningStore(Protocol):
    """A store that hands out short-lived URLs of its objects (cloud/store/s3.py)."""

    def presigned_url(self, digest: str, *, method: Literal["GET", "HEAD"] = "GET", expires_in: int = 300,
                      disposition: str | None = None) -> str: ...


def accel_redirect(prefix: str, digest: str, *, headers: dict[str, str], media_type: str) -> Response:
    """An empty answer that tells nginx to serve ``<prefix><digest>`` from its ``internal`` location (with the
    client's Range and method); these headers go out with the file."""
    return Response(status_code=200, media_type=media_type, headers=headers | {"x-accel-redirect": f"{prefix}{digest}"})


def presigned_redirect(store: BlobStore, digest: str, *, method: str, expires_in: int,
                       disposition: str | None = None) -> Response:
    """A 307 to a presigned URL of the object (a ``HEAD`` gets a URL signed for ``HEAD``); never cached."""
    if not isinstance(store, PresigningStore):
        raise ConfigError("bundle_store is 's3' but the bundle store cannot presign URLs", where="bundle_store")
    url = store.presigned_url(digest, method="HEAD" if method == "HEAD" else "GET", expires_in=expires_in,
                              disposition=disposition)
    return RedirectResponse(url, status_code=307, headers={"cache-control": "no-store"})


def token_expiry(token: str) -> int:
    """When a download token (already checked: ``<expires_at>.<signature>``) stops working."""
    return int(token.split(".", 1)[0])


_UNSAFE_FILENAME = re.compile(r"[^A-Za-z0-9._+-]")


def attachment(filename: str) -> str:
    """A ``Content-Disposition`` naming the file, reduced to characters that need no quoting rules."""
    return f'attachment; filename="{_UNSAFE_FILENAME.sub("_", filename)[:200]}"'


async def receive_upload(request: Request, store: BlobStore, max_bytes: int) -> Incoming:
    """Stream the request body into ``store`` (bounded by ``max_bytes``, also when the client lies
    about or omits Content-Length); an empty body is refused."""
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.isdigit():
            raise InvalidRequestError("Content-Length is not a number", where="Content-Length")
        if int(declared) > max_bytes:
            raise SizeLimitError(f"upload of {declared} bytes exceeds {max_bytes} bytes", where="body")
    incoming = await store.receive(request.stream(), max_bytes=max_bytes)
    if incoming.size == 0:
        store.discard(incoming)
        raise InvalidRequestError("empty upload", where="body", hint="send the file as the raw request body")
    return incoming
