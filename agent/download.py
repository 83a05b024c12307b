"""Resumable HTTP(S) download bounded by the signed size, hashed while streaming.

The bytes go to ``<dest>.part``; a retry continues from its length with a ``Range`` request.
More bytes than the signed size are never written (the connection is cut off), and the
finished file is moved into place with ``os.replace`` only after size and sha256 match.
"""

from __future__ import annotations

import errno
import hashlib
import http.client
import logging
import os
import shutil
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO, Literal
from urllib.parse import urljoin

from edgefleet.protocol.errors import DigestMismatchError, NoSpaceError, SizeLimitError, TransportError
from edgefleet.protocol.vocabulary import Reason

log = logging.getLogger(__name__)

CHUNK = 256 * 1024
RESERVE = 256 * 1024
"""Bytes a download leaves free on its file system: the agent's own state (update record, outbox of
status reports) must still be writable to report what happened."""
_FULL = (errno.ENOSPC, errno.EDQUOT)


def _hash_existing(part: Path, limit: int) -> tuple[int, hashlib._Hash]:
    digest = hashlib.sha256()
    try:
        size = part.stat().st_size
    except FileNotFoundError:
        return 0, digest
    if size > limit:
        part.unlink()
        return 0, digest
    with open(part, "rb") as fh:
        while chunk := fh.read(1024 * 1024):
            digest.update(chunk)
    return size, digest


def download(url: str, dest: Path, *, expected_size: int, expected_sha256: str, timeout: float = 30.0,
             progress: Callable[[int], None] | None = None,
             should_stop: Callable[[], bool] | None = None,
             headers: dict[str, str] | None = None, check_url: Callable[[str], None] | None = None) -> Path:
    """Fetch ``url`` into ``dest``; raise TransportError (retryable), SizeLimitError,
    DigestMismatchError or NoSpaceError (not retryable: the part file is discarded). ``check_url`` judges every
    redirect target before it is followed (it raises to refuse; agent/url_policy.py)."""
    if dest.is_file() and dest.stat().st_size == expected_size:
        return dest
    part = dest.with_name(dest.name + ".part")
    done, digest = _hash_existing(part, expected_size)
    _check_room(dest.parent, expected_size - done, done)
    request = urllib.request.Request(url, headers=dict(headers or {}))
    if done:
        request.add_header("Range", f"bytes={done}-")
    if done < expected_size or expected_size == 0:
        response = _open(request, url, part, done=done, expected_size=expected_size, timeout=timeout,
                         check_url=check_url)
        if response is not None:
            with response:
                done, digest = _receive(response, url, part, done=done, digest=digest, expected_size=expected_size,
                                        progress=progress, should_stop=should_stop)
    if done < expected_size:
        raise TransportError(f"download truncated at {done} of {expected_size} bytes", code=Reason.TRUNCATED,
                             where=url)
    if digest.hexdigest() != expected_sha256:
        part.unlink(missing_ok=True)
        raise DigestMismatchError(f"bundle sha256 {digest.hexdigest()} differs from the order's "
                                  f"{expected_sha256}", where=url)
    os.replace(part, dest)
    return dest


class _CheckedRedirects(urllib.request.HTTPRedirectHandler):
    """Follows a redirect only to a URL ``check`` accepts (it raises VerificationError otherwise),
    judged before urllib's own scheme rule, so a redirect to ``file:`` is refused as such."""

    def __init__(self, check: Callable[[str], None]) -> None:
        self.check = check

    def http_error_302(self, req: urllib.request.Request, fp: Any, code: int, msg: str,
                       headers: Any) -> Any:
        target = headers.get("location") or headers.get("uri")
        if target:
            self.check(urljoin(req.full_url, target))
        return super().http_error_302(req, fp, code, msg, headers)

    http_error_301 = http_error_303 = http_error_307 = http_error_308 = http_error_302


def _open(request: urllib.request.Request, url: str, part: Path, *, done: int, expected_size: int,
          timeout: float, check_url: Callable[[str], None] | None = None) -> http.client.HTTPResponse | None:
    """Send the request; None when the part file already holds every byte (the server answers 416)."""
    response: http.client.HTTPResponse
    opener = urllib.request.build_opener(_CheckedRedirects(check_url)) if check_url else None
    try:
        response = (opener.open(request, timeout=timeout) if opener is not None
                    else urllib.request.urlopen(request, timeout=timeout))  # noqa: S310 (http/https only)
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and done == expected_size:
            return None
        if exc.code == 416:
            part.unlink(missing_ok=True)
        raise TransportError(f"HTTP {exc.code} from bundle server", code=f"http_{exc.code}",
                             where=url) from None
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise TransportError(f"cannot reach bundle server: {reason}", where=url) from None
    return response


def _receive(response: http.client.HTTPResponse, url: str, part: Path, *, done: int, digest: hashlib._Hash,
             expected_size: int, progress: Callable[[int], None] | None,
             should_stop: Callable[[], bool] | None) -> tuple[int, hashlib._Hash]:
    """Write the response body to the part file: appended to the ``done`` bytes already there when
    the server resumed at exactly that offset, from scratch when it ignored the Range. Returns the
    part file's length and sha256."""
    mode: Literal["ab", "wb"]
    if response.status == 206:
        start = _content_range_start(response.headers.get("Content-Range"))
        if start != done:
            part.unlink(missing_ok=True)
            raise TransportError(f"server resumed at {start}, expected {done}", where=url)
        mode = "ab"
    else:
        if done:
            log.info("server ignored Range; restarting download of %s", url)
        done, digest, mode = 0, hashlib.sha256(), "wb"
    length = response.headers.get("Content-Length")
    if length is not None and length.isdigit() and done + int(length) > expected_size:
        raise SizeLimitError(f"server announces {done + int(length)} bytes, the order signs "
                             f"{expected_size}", where=url)
    try:
        with open(part, mode, buffering=0) as fh:
            try:
                done = _stream(response, fh, digest, url, done=done, expected_size=expected_size, progress=progress,
                               should_stop=should_stop)
            finally:
                fh.flush()
                os.fsync(fh.fileno())
    except OSError as exc:
        if exc.errno not in _FULL:
            raise
        written = part.stat().st_size if part.exists() else done
        part.unlink(missing_ok=True)   # nothing half-written stays behind; the space is given back
        raise _no_space(part.parent, expected_size, written) from None
    return done, digest


def _stream(response: http.client.HTTPResponse, fh: BinaryIO, digest: hashlib._Hash, url: str, *, done: int,
            expected_size: int, progress: Callable[[int], None] | None,
            should_stop: Callable[[], bool] | None) -> int:
    """Copy the body chunk by chunk, never writing past ``expected_size``; returns the bytes done."""
    try:
        while True:
            if should_stop is not None and should_stop():
                raise TransportError("download stopped", code=Reason.STOPPED, where=url)
            chunk = response.read1(min(CHUNK, expected_size - done + 1))
            if not chunk:
                return done
            if done + len(chunk) > expected_size:
                fh.flush()
                raise SizeLimitError(f"server sent more than the signed {expected_size} bytes",
                                     where=url)
            try:
                fh.write(chunk)
            except OSError as exc:
                if exc.errno in _FULL:
                    raise   # not a transport fault: _receive reports it as such
                raise TransportError(f"cannot write the download at {done} bytes: {exc}", where=url) from None
            digest.update(chunk)
            done += len(chunk)
            if progress is not None:
                progress(done)
    except (OSError, ValueError, http.client.HTTPException) as exc:
        if isinstance(exc, OSError) and exc.errno in _FULL:
            raise
        raise TransportError(f"download interrupted at {done} bytes: {exc}", where=url) from None


def _check_room(directory: Path, needed: int, done: int) -> None:
    """Refuse before reading anything when the file system cannot take the rest of the signed size
    (and :data:`RESERVE`): a device with a full disk fails at once with a precise reason instead of
    writing until it runs out."""
    try:
        free = shutil.disk_usage(directory).free
    except OSError:
        return   # cannot tell: the write itself will say
    if needed > 0 and free < needed + RESERVE:
        raise _no_space(directory, done + needed, done, free=free)


def _no_space(directory: Path, size: int, done: int, *, free: int | None = None) -> NoSpaceError:
    have = f"{free} bytes free" if free is not None else f"the disk filled up after {done} bytes"
    return NoSpaceError(f"no space for the {size}-byte bundle: {have} (the download needs its size plus "
                        f"{RESERVE} bytes for the agent's own state)", where=str(directory),
                        hint="free space on the agent's state_dir file system or give it a larger one, then deploy "
                             "again; the current model keeps serving")


def _content_range_start(value: str | None) -> int:
    # "bytes 100-199/200"
    if value is None:
        return -1
    try:
        return int(value.split()[1].split("-")[0])
    except (IndexError, ValueError):
        return -1
