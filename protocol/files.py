"""The one atomic file writer: a crash leaves either the old or the new content, never a mix.

The data goes to a uniquely named temp file in the target's directory, is fsynced, and is
``os.replace``d over the target; then the directory is fsynced so the rename itself survives a
power cut. Secrets (private keys, device credentials) are created with mode 0600 and never widened.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterable
from pathlib import Path

SECRET_MODE = 0o600
PUBLIC_MODE = 0o644


def atomic_write(path: str | Path, data: bytes | Iterable[bytes], *, secret: bool = False) -> Path:
    """Write ``data`` (bytes, or chunks of bytes) to ``path`` atomically; create the directory."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, SECRET_MODE if secret else PUBLIC_MODE)
        with os.fdopen(fd, "wb") as fh:
            for chunk in (data,) if isinstance(data, bytes | bytearray | memoryview) else data:
                fh.write(chunk)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)
    return path


def _fsync_dir(directory: Path) -> None:
    dirfd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(dirfd)
    finally:
        os.close(dirfd)
