"""Uploading sealed capture batches to the controller (docs/protocol.md, "Sample upload").

For the oldest sealed batch the agent publishes an ``upload_request`` (events topic, through the durable
outbox) and waits for a signed ``upload_grant`` on its cmd topic; it refuses a grant with a bad
signature, for another device, expired, or whose URL is not on its ``controller_url`` origin. With a
grant it asks ``HEAD <url>`` how many bytes the controller holds (``Upload-Offset``) and ``PUT``s the
rest in chunks (``Content-Range: bytes a-b/total``), so a cut connection, a controller restart or an
agent restart resumes where the bytes stopped. The batch file is deleted only once the controller
answers that it stored the dataset; an expired or refused grant makes the agent ask for a new one.

The HTTP work runs in one worker thread, never on the agent loop.
"""

from __future__ import annotations

import http.client
import json
import logging
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from email.message import Message as EmailMessage
from enum import Enum

from edgefleet.agent.capture import Batch, Capture
from edgefleet.protocol.errors import TransportError, VerificationError
from edgefleet.protocol.keys import TrustedKeys
from edgefleet.protocol.messages import Event, Message, SignedUploadGrant, UploadGrant, UploadGrantMessage
from edgefleet.protocol.uploads import verify_grant
from edgefleet.protocol.vocabulary import EventLevel

log = logging.getLogger(__name__)

GRANT_MARGIN_S = 5.0
"""A grant this close to its expiry is not started with (a new one is asked for)."""
OFFSET_HEADER = "Upload-Offset"
DATASET_HEADER = "EdgeFleet-Dataset-Id"
CAPTURE_DISCARDED = "capture_discarded"
"""Event kind when the controller refused a batch ``max_failures`` times and the agent gave it up."""


class Result(Enum):
    """How one upload attempt ended."""

    STORED = "stored"
    """The controller stored the dataset (now or before): the batch can go."""
    REGRANT = "regrant"
    """The grant no longer works (expired, unknown upload, token refused): ask for a new one."""
    RETRY = "retry"
    """The controller or the network failed: try again later with the same grant."""
    REFUSED = "refused"
    """The controller refused the bytes (size, digest, content): counts towards giving the batch up."""


@dataclass(frozen=True)
class Attempt:
    result: Result
    detail: str = ""
    dataset_id: str | None = None


class _Refused(Exception):
    def __init__(self, result: Result, detail: str) -> None:
        super().__init__(detail)
        self.result = result


def _call(method: str, url: str, *, timeout: float, data: bytes | None = None,
          headers: dict[str, str] | None = None) -> tuple[int, EmailMessage[str, str], bytes]:
    request = urllib.request.Request(url, data=data, method=method, headers=dict(headers or {}))
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310 (http/https: the grant's)
            return response.status, response.headers, response.read()
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, exc.headers, exc.read()
    except (urllib.error.URLError, OSError, http.client.HTTPException) as exc:
        raise TransportError(f"cannot reach the controller: {getattr(exc, 'reason', exc)}",
                             where=url.split("?")[0]) from None


def _offset(headers: EmailMessage[str, str], url: str) -> int:
    value = headers.get(OFFSET_HEADER)
    if value is None or not value.isdigit():
        raise TransportError(f"answer without a valid {OFFSET_HEADER} header", where=url.split("?")[0])
    return int(value)


def _classify(status: int, body: bytes) -> _Refused:
    try:
        error = json.loads(body).get("error", {})
        detail = f"{status} {error.get('code')}: {error.get('message')}"
    except (ValueError, AttributeError):
        detail = f"HTTP {status}"
    if status in (401, 403, 404, 410):
        return _Refused(Result.REGRANT, detail)
    if 400 <= status < 500:
        return _Refused(Result.REFUSED, detail)
    return _Refused(Result.RETRY, detail)


def upload_batch(batch: Batch, grant: UploadGrant, *, chunk_bytes: int, timeout: float,
                 should_stop: Callable[[], bool] = lambda: False) -> Attempt:
    """Send the bytes of ``batch`` the controller does not have yet; never raises."""
    url = grant.url
    try:
        status, headers, body = _call("HEAD", url, timeout=timeout)
        if status != 200:
            raise _classify(status, body)
        if headers.get(DATASET_HEADER):
            return Attempt(Result.STORED, "already stored", headers[DATASET_HEADER])
        offset = _offset(headers, url)
        with open(batch.path, "rb") as fh:
            while True:
                if should_stop():
                    return Attempt(Result.RETRY, "stopped")
                if offset > batch.size:
                    raise _Refused(Result.REFUSED, f"controller holds {offset} bytes of {batch.size}")
                fh.seek(offset)
                chunk = fh.read(min(chunk_bytes, batch.size - offset))
                end = offset + len(chunk) - 1
                status, headers, body = _call("PUT", url, data=chunk, timeout=timeout, headers={
                    "Content-Type": "application/octet-stream",
                    "Content-Range": f"bytes {offset}-{end}/{batch.size}"})
                if status in (200, 201):
                    return Attempt(Result.STORED, "stored", str(json.loads(body).get("id")))
                if status in (204, 409):   # chunk taken, or the controller holds another offset
                    offset = _offset(headers, url)
                    continue
                raise _classify(status, body)
    except _Refused as exc:
        return Attempt(exc.result, str(exc))
    except TransportError as exc:
        return Attempt(Result.RETRY, str(exc))
    except (OSError, ValueError) as exc:  # the batch file vanished, or a garbled answer
        return Attempt(Result.RETRY, f"{type(exc).__name__}: {exc}")


class Uploader:
    """Drives the oldest sealed batch to the controller: request, grant, upload, forget."""

    def __init__(self, capture: Capture, *, device_id: str, controller_url: str | None, controller_keys: TrustedKeys,
                 send: Callable[[Message], None], chunk_bytes: int, retry_s: float, timeout_s: float,
                 max_failures: int = 3, clock: Callable[[], float] = time.time) -> None:
        self.capture = capture
        self.device_id = device_id
        self.controller_url = controller_url
        self.controller_keys = controller_keys
        self.send = send
        self.chunk_bytes, self.retry_s, self.timeout_s = chunk_bytes, retry_s, timeout_s
        self.max_failures = max_failures
        self.clock = clock
        self.refused_grants = 0
        self.uploaded = 0
        self._requested: dict[str, float] = {}
        self._retry_at = 0.0
        self._worker: threading.Thread | None = None
        self._attempt: tuple[Batch, Attempt] | None = None
        self._stop = threading.Event()

    def on_grant(self, message: UploadGrantMessage) -> None:
        """A grant from the cmd topic (agent loop thread); refused ones are logged and counted."""
        reservoir = self.capture.reservoir
        batch = reservoir.pending_batch() if reservoir is not None else None
        try:
            grant = verify_grant(message.grant, trusted=self.controller_keys, device_id=self.device_id,
                                 controller_url=self.controller_url, now=self.clock())
            if batch is None or grant.upload_id != batch.upload_id:
                raise VerificationError(f"grant for upload {grant.upload_id}, which is not waiting here",
                                        where="grant.upload_id")
            if grant.max_bytes < batch.size:
                raise VerificationError(f"grant allows {grant.max_bytes} bytes, the batch has {batch.size}",
                                        where="grant.max_bytes")
        except VerificationError as exc:
            self.refused_grants += 1
            log.warning("refused upload grant: %s [%s]", exc, exc.code)
            return
        assert reservoir is not None and batch is not None
        reservoir.set_grant(batch.upload_id, message.grant.model_dump_json())
        self._retry_at = 0.0
        log.info("upload grant for batch %s until %d", batch.upload_id, grant.expires_at)

    def _usable_grant(self, batch: Batch, now: float) -> UploadGrant | None:
        if batch.grant_json is None:
            return None
        grant = SignedUploadGrant.model_validate_json(batch.grant_json).signed
        return grant if grant.expires_at > now + GRANT_MARGIN_S else None

    def tick(self, *, online: bool = True) -> None:
        """Agent loop: take the last attempt's result, then request, start or wait. While the broker
        is away (``online`` false) no request is queued: one per outage reaches the controller, not one
        per ``retry_s``."""
        if self._worker is not None:
            if self._worker.is_alive():
                return
            self._worker = None
        if self._attempt is not None:
            tried, attempt = self._attempt
            self._attempt = None
            self._settle(tried, attempt)
        reservoir = self.capture.reservoir
        batch = reservoir.pending_batch() if reservoir is not None else None
        if batch is None:
            return
        now = self.clock()
        grant = self._usable_grant(batch, now)
        if grant is None:
            if online and now >= self._requested.get(batch.upload_id, -float("inf")) + self.retry_s:
                self._requested = {batch.upload_id: now}
                self.send(batch.request(self.device_id))
                log.info("asked for an upload grant for batch %s (%d bytes, %d samples)", batch.upload_id,
                         batch.size, batch.samples)
        elif now >= self._retry_at:
            self._worker = threading.Thread(target=self._run, args=(batch, grant), name="capture-upload", daemon=True)
            self._worker.start()

    def _run(self, batch: Batch, grant: UploadGrant) -> None:
        self._attempt = (batch, upload_batch(batch, grant, chunk_bytes=self.chunk_bytes, timeout=self.timeout_s,
                                             should_stop=self._stop.is_set))

    def _settle(self, batch: Batch, attempt: Attempt) -> None:
        reservoir = self.capture.reservoir
        assert reservoir is not None
        if attempt.result == Result.STORED:
            reservoir.finish(batch.upload_id)
            self.uploaded += 1
            self._requested.pop(batch.upload_id, None)
            log.info("capture batch %s stored by the controller as dataset %s", batch.upload_id, attempt.dataset_id)
        elif attempt.result == Result.REGRANT:
            log.info("upload grant of batch %s no longer works (%s); asking for a new one", batch.upload_id,
                     attempt.detail)
            reservoir.set_grant(batch.upload_id, None)
            self._requested.pop(batch.upload_id, None)
        elif attempt.result == Result.RETRY:
            log.info("upload of batch %s interrupted (%s); retrying in %.1f s", batch.upload_id, attempt.detail,
                     self.retry_s)
            self._retry_at = self.clock() + self.retry_s
        else:
            failures = reservoir.count_failure(batch.upload_id)
            log.warning("controller refused batch %s (%s), %d of %d", batch.upload_id, attempt.detail, failures,
                        self.max_failures)
            self._requested[batch.upload_id] = self.clock()
            if failures >= self.max_failures:
                reservoir.finish(batch.upload_id)
                self.send(Event(device_id=self.device_id, level=EventLevel.WARNING, kind=CAPTURE_DISCARDED,
                                text=f"capture batch {batch.upload_id} given up after {failures} refusals: "
                                     f"{attempt.detail}"[:2000],
                                data={"upload_id": batch.upload_id, "samples": batch.samples, "bytes": batch.size}))

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        if self._worker is not None:
            self._worker.join(timeout)
