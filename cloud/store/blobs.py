"""Content-addressed file store: ``<root>/<sha256>``. Bytes are streamed into a temp file in
the same directory (size bound checked while streaming), then ``os.replace``d into place."""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

from edgefleet.protocol.errors import NotFoundError, SizeLimitError

_HEX = set("0123456789abcdef")


@dataclass
class Incoming:
    """A fully received upload, not yet in the store."""

    path: Path
    digest: str
    size: int

    def read(self) -> bytes:
        return self.path.read_bytes()


class BlobStore:
    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)

    def path(self, digest: str) -> Path:
        if len(digest) != 64 or not set(digest) <= _HEX:
            raise NotFoundError(f"{digest!r} is not a sha256 digest", where="digest")
        return self.root / digest

    def open_path(self, digest: str) -> Path:
        path = self.path(digest)
        if not path.is_file():
            raise NotFoundError(f"no stored file {digest}", where="digest")
        return path

    async def receive(self, chunks: AsyncIterator[bytes], *, max_bytes: int) -> Incoming:
        """Stream ``chunks`` into a temp file; raise :class:`SizeLimitError` past ``max_bytes``."""
        sha = hashlib.sha256()
        size = 0
        fd, name = tempfile.mkstemp(dir=self.root, prefix=".upload-")
        try:
            with os.fdopen(fd, "wb") as fh:
                async for chunk in chunks:
                    size += len(chunk)
                    if size > max_bytes:
                        raise SizeLimitError(f"upload exceeds {max_bytes} bytes", where="body",
                                             hint="raise EDGEFLEET_MAX_BUNDLE_BYTES if this is intended")
                    sha.update(chunk)
                    fh.write(chunk)
                fh.flush()
                os.fsync(fh.fileno())
        except BaseException:
            os.unlink(name)
            raise
        return Incoming(Path(name), sha.hexdigest(), size)

    def put(self, data: bytes) -> Incoming:
        """Write bytes made on the controller (a compressed model, a built bundle) to a temp file."""
        fd, name = tempfile.mkstemp(dir=self.root, prefix=".upload-")
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
        except BaseException:
            os.unlink(name)
            raise
        return Incoming(Path(name), hashlib.sha256(data).hexdigest(), len(data))

    def commit(self, incoming: Incoming) -> Path:
        target = self.path(incoming.digest)
        os.replace(incoming.path, target)
        return target

    def discard(self, incoming: Incoming) -> None:
        incoming.path.unlink(missing_ok=True)

    def delete(self, digest: str) -> None:
        self.path(digest).unlink(missing_ok=True)
