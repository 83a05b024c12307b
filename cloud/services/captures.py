"""Samples captured on devices: upload requests, signed upload grants, resumable uploads, and the
captured datasets they become (docs/protocol.md "Sample upload", docs/operations.md).

A device whose bundle opts in (``[capture]`` in the signed manifest) asks for a grant with an
``upload_request`` on its events topic (:func:`record_request`, from ingest). The controller answers
on the device's cmd topic with an ``upload_grant`` signed by the controller key (:func:`publish_grants`):
a URL ``/api/v1/uploads/<upload_id>?token=...`` whose token is Ed25519-signed, expiring and scoped to
that device, that upload and its size. The bytes arrive in chunks (:func:`receive_chunk`) appended to
``<upload_dir>/<upload_id>.part``, whose length is the offset a device resumes from (``HEAD``). The last
chunk is checked (sha256, a strict ``.npz`` parse, the counts the request announced), the file moves
into the capture store and a :class:`CapturedDataset` row is written; a repeat of a completed upload
answers with the same dataset.
"""

from __future__ import annotations

import asyncio
import base64
import fcntl
import hashlib
import logging
import os
import re
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlmodel import Session, col, select

from edgefleet.cloud.services import audit
from edgefleet.cloud.services.auth import AuthenticationError
from edgefleet.cloud.services.datasets import read_npz
from edgefleet.cloud.services.deployments import Publish
from edgefleet.cloud.store.blobs import BlobStore, Incoming
from edgefleet.cloud.store.tables import Bundle, CapturedDataset, CaptureUpload, Model, ModelVersion
from edgefleet.cloud.vocabulary import UploadState
from edgefleet.protocol.errors import (
    ConflictError,
    DigestMismatchError,
    InvalidRequestError,
    NotFoundError,
    SizeLimitError,
    VerificationError,
)
from edgefleet.protocol.messages import UploadGrant, UploadGrantMessage, UploadRequest, encode
from edgefleet.protocol.topics import cmd
from edgefleet.protocol.uploads import UPLOADS_PATH, sign_grant

log = logging.getLogger(__name__)

INPUT_PREFIX = "input:"
COLUMNS = {"prediction_id", "sample_index", "at", "predicted", "label", "bundle_digest"}
"""The members of a captured batch besides its inputs (``input:<name>``), docs/protocol.md."""
_RANGE = re.compile(r"^bytes (\d+)-(\d+)/(\d+)$")
_HEX64 = re.compile(r"^[0-9a-f]{64}$")


class OffsetMismatchError(ConflictError):
    """A chunk that does not start where the received bytes end; ``offset`` is where they end."""

    def __init__(self, offset: int, start: int) -> None:
        super().__init__(f"chunk starts at byte {start}, the controller holds {offset}", where="Content-Range",
                         hint=f"HEAD the upload URL and continue from Upload-Offset ({offset})")
        self.offset = offset


# --------------------------------------------------------------------------- tokens and grants

def _token_message(device_id: str, upload_id: str, size: int, expires_at: int) -> bytes:
    return f"edgefleet-upload:{device_id}:{upload_id}:{size}:{expires_at}".encode()


def upload_token(key: Ed25519PrivateKey, *, device_id: str, upload_id: str, size: int, expires_at: int) -> str:
    """The ``?token=`` of an upload URL: signed by the controller key, good for this device, this
    upload and this size until ``expires_at`` (like the download token of a bundle URL)."""
    sig = key.sign(_token_message(device_id, upload_id, size, expires_at))
    return f"{expires_at}.{base64.urlsafe_b64encode(sig).decode().rstrip('=')}"


def check_upload_token(key: Ed25519PrivateKey, *, upload: CaptureUpload, token: str | None, now: float) -> None:
    """Raise :class:`AuthenticationError` unless ``token`` was issued for ``upload`` and is still good."""
    try:
        if not token:
            raise ValueError("no token")
        expires_text, sig_text = token.split(".", 1)
        expires_at = int(expires_text)
        sig = base64.urlsafe_b64decode(sig_text + "=" * (-len(sig_text) % 4))
        key.public_key().verify(sig, _token_message(upload.device_id, upload.upload_id, upload.size, expires_at))
    except (ValueError, InvalidSignature):
        raise AuthenticationError("invalid upload token", where="token",
                                  hint="upload with the URL of this upload's grant") from None
    if now >= expires_at:
        raise AuthenticationError("upload token expired", where="token",
                                  hint="the device asks for a new grant and resumes")


@dataclass
class GrantIssuer:
    key: Ed25519PrivateKey
    public_url: str
    lifetime_s: float
    """How long a grant (and the token in its URL) works."""
    max_bytes: int
    """The largest upload granted (``max_capture_bytes``)."""

    def grant(self, upload: CaptureUpload, *, now: float) -> UploadGrantMessage:
        expires = int(now + self.lifetime_s)
        token = upload_token(self.key, device_id=upload.device_id, upload_id=upload.upload_id, size=upload.size,
                             expires_at=expires)
        body = UploadGrant(device_id=upload.device_id, upload_id=upload.upload_id,
                           url=f"{self.public_url}{UPLOADS_PATH}{upload.upload_id}?token={token}",
                           max_bytes=upload.size, issued_at=int(now), expires_at=expires)
        return UploadGrantMessage(device_id=upload.device_id, sent_at=now, grant=sign_grant(body, self.key))


def record_request(session: Session, *, device_id: str, request: UploadRequest, now: float) -> None:
    """Note an upload request (ingest, for an enrolled device); the grant goes out with
    :func:`publish_grants`. A repeated request asks for a fresh grant of the same upload."""
    row = session.get(CaptureUpload, request.upload_id)
    if row is None:
        session.add(CaptureUpload(upload_id=request.upload_id, device_id=device_id,
                                  bundle_digest=request.bundle_digest, size=request.size, sha256=request.sha256,
                                  samples=request.samples, labelled=request.labelled, t_from=request.t_from,
                                  t_to=request.t_to, state=UploadState.REQUESTED, requested_at=now, updated_at=now))
        session.flush()
    elif row.device_id != device_id or (row.size, row.sha256) != (request.size, request.sha256):
        log.warning("upload request %s from %s ignored: it names an upload of %s with other contents",
                    request.upload_id, device_id, row.device_id)
    elif row.state != UploadState.REFUSED:
        row.grant_due, row.updated_at = True, now
        session.add(row)


def _refusal(session: Session, upload: CaptureUpload, *, max_bytes: int) -> str | None:
    bundle = session.exec(select(Bundle).where(Bundle.digest == upload.bundle_digest)).first()
    if bundle is None:
        return f"bundle {upload.bundle_digest[:16]}... is not in the registry"
    capture = bundle.manifest.get("capture") or {}
    if not capture.get("enabled"):
        return f"bundle {bundle.name} {bundle.version} does not opt in to sample capture"
    if upload.size > max_bytes:
        return f"upload of {upload.size} bytes exceeds max_capture_bytes ({max_bytes})"
    return None


def publish_grants(session: Session, *, publish: Publish, prefix: str, issuer: GrantIssuer, now: float) -> int:
    """Answer every request no grant answered yet; a new request is refused (and never granted)
    when its bundle is unknown or does not opt in to capture, or it is too large. Returns grants sent."""
    sent = 0
    due = session.exec(select(CaptureUpload).where(col(CaptureUpload.grant_due) == True)  # noqa: E712
                       .order_by(col(CaptureUpload.requested_at)))
    for upload in list(due):
        if upload.state == UploadState.REQUESTED and upload.granted_at is None:
            refusal = _refusal(session, upload, max_bytes=issuer.max_bytes)
            if refusal is not None:
                upload.state, upload.reason = UploadState.REFUSED, refusal
                upload.grant_due, upload.updated_at = False, now
                session.add(upload)
                log.warning("upload %s of device %s refused: %s", upload.upload_id, upload.device_id, refusal)
                continue
        if not publish(cmd(upload.device_id, prefix), encode(issuer.grant(upload, now=now))):
            break
        upload.grant_due, upload.granted_at, upload.updated_at = False, now, now
        session.add(upload)
        sent += 1
    return sent


# --------------------------------------------------------------------------- receiving

def get_upload(session: Session, *, upload_id: str, token: str | None, key: Ed25519PrivateKey,
               now: float) -> CaptureUpload:
    """The upload ``token`` authorizes (404 for an unknown id, 401 for a token not of this upload)."""
    upload = session.get(CaptureUpload, upload_id)
    if upload is None:
        raise NotFoundError(f"no upload {upload_id[:64]}", where="upload_id", hint="the device asks for a new grant")
    check_upload_token(key, upload=upload, token=token, now=now)
    return upload


def part_path(upload_dir: Path, upload: CaptureUpload) -> Path:
    return upload_dir / f"{upload.upload_id}.part"


def received(upload: CaptureUpload, *, upload_dir: Path) -> int:
    """Bytes of ``upload`` the controller holds: where the device continues."""
    if upload.state == UploadState.STORED:
        return upload.size
    try:
        return part_path(upload_dir, upload).stat().st_size
    except FileNotFoundError:
        return 0


def stored_dataset(session: Session, upload: CaptureUpload) -> CapturedDataset | None:
    if upload.state != UploadState.STORED or upload.dataset_id is None:
        return None
    return session.get(CapturedDataset, upload.dataset_id)


def parse_content_range(value: str | None, *, size: int) -> tuple[int, int]:
    """``(first, last)`` byte of ``Content-Range: bytes first-last/total``; ``total`` must be the granted
    size (larger: :class:`SizeLimitError`, nothing is read)."""
    m = _RANGE.match(value or "")
    if m is None:
        raise InvalidRequestError("Content-Range must be 'bytes <first>-<last>/<total>'", where="Content-Range")
    first, last, total = (int(g) for g in m.groups())
    if total > size:
        raise SizeLimitError(f"upload of {total} bytes exceeds the {size} bytes granted", where="Content-Range")
    if total != size or first > last or last >= total:
        raise InvalidRequestError(f"range {first}-{last}/{total} does not fit the granted {size} bytes",
                                  where="Content-Range")
    return first, last


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(1024 * 1024):
            digest.update(chunk)
    return digest.hexdigest()


async def receive_chunk(session: Session, *, upload: CaptureUpload, content_range: str | None,
                        chunks: AsyncIterator[bytes], upload_dir: Path, store: BlobStore, max_unpacked: int,
                        now: float) -> int | CapturedDataset:
    """Append one chunk at the received offset. Returns the new offset, or the captured dataset once
    the last byte arrived and checked out (also for a repeat of a completed upload). A connection cut
    mid-chunk keeps the bytes that arrived. Refusals store nothing: a range past the granted size
    (413), a chunk longer than its range (413, the chunk is dropped), a chunk not at the offset (409),
    a wrong sha256 or content at the end (422, the received bytes are discarded)."""
    if upload.state == UploadState.STORED:
        done = stored_dataset(session, upload)
        if done is None:
            raise ConflictError(f"upload {upload.upload_id} was stored as dataset {upload.dataset_id}, since deleted",
                                where="upload_id")
        return done
    if upload.state == UploadState.REFUSED:
        raise ConflictError(f"upload {upload.upload_id} was refused: {upload.reason}", where="upload_id")
    first, last = parse_content_range(content_range, size=upload.size)
    upload_dir.mkdir(parents=True, exist_ok=True)
    path = part_path(upload_dir, upload)
    with open(path, "ab", buffering=0) as fh:   # unbuffered: what arrived is what HEAD reports
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise OffsetMismatchError(path.stat().st_size, first) from None
        offset = fh.seek(0, os.SEEK_END)
        if first != offset:
            raise OffsetMismatchError(offset, first)
        expected = last - first + 1
        got = 0
        try:
            async for chunk in chunks:
                if got + len(chunk) > expected:
                    fh.truncate(offset)
                    raise SizeLimitError(f"chunk is longer than its range {first}-{last}", where="body")
                fh.write(chunk)
                got += len(chunk)
        finally:
            os.fsync(fh.fileno())
        if offset + got < upload.size:
            return offset + got
        return await _complete(session, upload=upload, path=path, store=store, max_unpacked=max_unpacked, now=now)


async def _complete(session: Session, *, upload: CaptureUpload, path: Path, store: BlobStore, max_unpacked: int,
                    now: float) -> CapturedDataset:
    digest = await asyncio.to_thread(_file_sha256, path)
    try:
        if digest != upload.sha256:
            raise DigestMismatchError(f"upload sha256 {digest[:16]}... differs from the requested "
                                      f"{upload.sha256[:16]}...", where="body", hint="upload the batch again")
        arrays = parse_captured(path.read_bytes(), max_unpacked=max_unpacked)
        announced = (upload.samples, upload.labelled, upload.bundle_digest)
        if (arrays.samples, arrays.labelled, arrays.bundle_digest) != announced:
            raise VerificationError(f"the batch holds {arrays.samples} samples ({arrays.labelled} labelled) of bundle "
                                    f"{arrays.bundle_digest[:16]}..., the request announced {announced[0]} "
                                    f"({announced[1]}) of {announced[2][:16]}...", where="body")
    except BaseException:
        path.unlink(missing_ok=True)
        raise
    store.commit(Incoming(path, digest, upload.size))
    return await asyncio.to_thread(_store_dataset, session, upload=upload, arrays=arrays, digest=digest, now=now)


def _store_dataset(session: Session, *, upload: CaptureUpload, arrays: CapturedArrays, digest: str,
                   now: float) -> CapturedDataset:
    """The database half of completing an upload, run off the event loop (cloud/api/transfer.py)."""
    bundle = session.exec(select(Bundle).where(Bundle.digest == upload.bundle_digest)).first()
    dataset = CapturedDataset(upload_id=upload.upload_id, device_id=upload.device_id,
                              bundle_digest=upload.bundle_digest, bundle_name=bundle.name if bundle else None,
                              bundle_version=bundle.version if bundle else None,
                              model_name=_model_name(session, bundle), t_from=float(arrays.at.min()),
                              t_to=float(arrays.at.max()), samples=arrays.samples, labelled=arrays.labelled,
                              blob_digest=digest, size=upload.size, stored_at=now)
    session.add(dataset)
    session.flush()
    upload.state, upload.dataset_id, upload.updated_at = UploadState.STORED, dataset.id, now
    session.add(upload)
    audit.record(session, actor=f"device:{upload.device_id}", action="capture.store", target=f"capture:{dataset.id}",
                 details={"upload_id": upload.upload_id, "bundle_digest": upload.bundle_digest,
                          "samples": arrays.samples, "labelled": arrays.labelled, "bytes": upload.size}, now=now)
    log.info("captured dataset %s stored: %d samples (%d labelled) from device %s", dataset.id, arrays.samples,
             arrays.labelled, upload.device_id)
    return dataset


def _model_name(session: Session, bundle: Bundle | None) -> str | None:
    if bundle is None or bundle.model_version_id is None:
        return None
    version = session.get(ModelVersion, bundle.model_version_id)
    model = session.get(Model, version.model_id) if version is not None else None
    return model.name if model is not None else None


# --------------------------------------------------------------------------- captured data

@dataclass(frozen=True)
class CapturedArrays:
    """A captured batch, parsed: inputs per input name (samples first) and one row per sample."""

    inputs: dict[str, np.ndarray]
    prediction_id: np.ndarray
    sample_index: np.ndarray
    at: np.ndarray
    predicted: np.ndarray
    label: np.ndarray
    """-1: no label came back for that sample."""
    bundle_digest: str

    @property
    def samples(self) -> int:
        return len(self.label)

    @property
    def labelled(self) -> int:
        return int((self.label >= 0).sum())


def parse_captured(data: bytes, *, max_unpacked: int) -> CapturedArrays:
    """Parse a captured batch strictly (no pickles, unpacked size bounded, every column checked);
    raise :class:`InvalidRequestError` naming the member at fault."""
    arrays = read_npz(data, max_unpacked=max_unpacked)
    names = set(arrays)
    missing = sorted(COLUMNS - names)
    unknown = sorted(n for n in names - COLUMNS if not n.startswith(INPUT_PREFIX) or n == INPUT_PREFIX)
    inputs = {n[len(INPUT_PREFIX):]: arrays[n] for n in sorted(names - COLUMNS) if n not in unknown}
    if missing or unknown or not inputs:
        raise InvalidRequestError(f"a captured batch holds {sorted(COLUMNS)} and input:<name> arrays; missing "
                                  f"{missing}, unexpected {unknown}", where="body")
    label = arrays["label"]
    n = len(label) if label.ndim == 1 else 0
    if n == 0 or label.dtype.kind not in "iu" or int(label.min()) < -1:
        raise InvalidRequestError("label must be a non-empty 1-D integer array (-1: unlabelled)", where="label")
    kinds = {"prediction_id": "US", "sample_index": "iu", "at": "f", "predicted": "iu"}
    for name, kind in kinds.items():
        a = arrays[name]
        if a.shape != (n,) or a.dtype.kind not in kind:
            raise InvalidRequestError(f"{name} must be a 1-D array of {n} values, not {a.dtype} {a.shape}", where=name)
    for name, a in inputs.items():
        if a.dtype.kind not in "biuf" or a.ndim < 1 or len(a) != n:
            raise InvalidRequestError(f"input {name!r} must be a numeric array of {n} samples, not {a.dtype} "
                                      f"{a.shape}", where=INPUT_PREFIX + name)
    digest = arrays["bundle_digest"]
    if digest.shape != () or digest.dtype.kind != "U" or not _HEX64.match(str(digest)):
        raise InvalidRequestError("bundle_digest must be one sha256 hex string", where="bundle_digest")
    return CapturedArrays(inputs=inputs, prediction_id=arrays["prediction_id"], sample_index=arrays["sample_index"],
                          at=arrays["at"], predicted=arrays["predicted"], label=label, bundle_digest=str(digest))


def list_captured(session: Session, *, model_name: str | None = None, device_ids: Sequence[str] | None = None,
                  since: float | None = None) -> list[CapturedDataset]:
    """Captured datasets, oldest first: of a model's bundles, of some devices, with samples from ``since`` on."""
    query = select(CapturedDataset)
    if model_name is not None:
        query = query.where(CapturedDataset.model_name == model_name)
    if device_ids is not None:
        query = query.where(col(CapturedDataset.device_id).in_(list(device_ids)))
    if since is not None:
        query = query.where(col(CapturedDataset.t_to) >= since)
    return list(session.exec(query.order_by(col(CapturedDataset.id))))


def get_captured(session: Session, *, dataset_id: int) -> CapturedDataset:
    dataset = session.get(CapturedDataset, dataset_id)
    if dataset is None:
        raise NotFoundError(f"no captured dataset {dataset_id}", where="dataset_id")
    return dataset


def load_captured(store: BlobStore, datasets: Sequence[CapturedDataset], *, max_unpacked: int = 1 << 30,
                  since: float | None = None) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """The inputs of ``datasets`` concatenated per input name, and their labels (-1: unlabelled);
    with ``since``, only the samples served from then on (device time, as windows are stamped)."""
    parts = [parse_captured(store.open_path(d.blob_digest).read_bytes(), max_unpacked=max_unpacked)
             for d in datasets]
    if since is not None:
        parts = [_rows(p, p.at >= since) for p in parts]
    if not parts:
        return {}, np.empty(0, dtype=np.int64)
    names = set(parts[0].inputs)
    for d, p in zip(datasets, parts, strict=True):
        shapes = {n: p.inputs[n].shape[1:] for n in p.inputs}
        if set(p.inputs) != names or any(shapes[n] != parts[0].inputs[n].shape[1:] for n in names):
            raise InvalidRequestError(f"captured dataset {d.id} has other inputs than dataset {datasets[0].id}",
                                      where="datasets", hint="load the datasets of one model's bundles together")
    inputs = {n: np.concatenate([p.inputs[n] for p in parts]) for n in sorted(names)}
    return inputs, np.concatenate([p.label.astype(np.int64) for p in parts])


def _rows(part: CapturedArrays, keep: np.ndarray) -> CapturedArrays:
    return CapturedArrays(inputs={n: a[keep] for n, a in part.inputs.items()}, prediction_id=part.prediction_id[keep],
                          sample_index=part.sample_index[keep], at=part.at[keep], predicted=part.predicted[keep],
                          label=part.label[keep], bundle_digest=part.bundle_digest)


def record_download(session: Session, *, dataset: CapturedDataset, actor: str, now: float) -> None:
    audit.record(session, actor=actor, action="capture.download", target=f"capture:{dataset.id}",
                 details={"device_id": dataset.device_id, "samples": dataset.samples}, now=now)


def delete_captured(session: Session, *, dataset_id: int, store: BlobStore, actor: str, now: float) -> None:
    """Delete a captured dataset: its row and its file (the upload record stays, so a late retry of the
    same upload is not stored again)."""
    dataset = get_captured(session, dataset_id=dataset_id)
    session.delete(dataset)
    store.delete(dataset.blob_digest)
    audit.record(session, actor=actor, action="capture.delete", target=f"capture:{dataset_id}",
                 details={"device_id": dataset.device_id, "samples": dataset.samples}, now=now)
