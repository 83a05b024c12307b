"""Large bodies in and out of the API: streaming uploads into a blob store, file downloads.

The upload routes are ``async`` (they stream the body) but the database is not: every database call
they make goes through ``run_in_threadpool``. On the event loop, a write waiting for SQLite's lock
(up to its 30 s busy timeout) would block the loop -- and with it the commit of the request that
holds the lock, whose session dependency ends in the thread pool scheduled from the loop: the wait
always ran out, and the upload failed with "database is locked"."""

from __future__ import annotations

from fastapi import Request
from fastapi.responses import FileResponse

from edgefleet.cloud.store.blobs import BlobStore, Incoming
from edgefleet.protocol.errors import InvalidRequestError, SizeLimitError

OCTET_BODY = {"requestBody": {"required": True, "content": {"application/octet-stream": {
    "schema": {"type": "string", "format": "binary"}}}}}
"""OpenAPI description of a raw-bytes request body."""


class LargeFileResponse(FileResponse):
    chunk_size = 1024 * 1024


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
