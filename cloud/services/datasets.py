"""Sample data for compression jobs and server-side bundle builds.

``digits`` is scikit-learn's bundled handwritten digits (nothing downloaded); ``dataset`` is the
``.npz`` a model's owner uploaded (``x``, optional labels ``y``), kept in the artifact store.
"""

from __future__ import annotations

import io
import zipfile
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from sqlmodel import Session

from edgefleet.cloud.services import audit
from edgefleet.cloud.services.registry import get_model
from edgefleet.cloud.store.blobs import BlobStore, Incoming
from edgefleet.cloud.store.tables import ModelDataset, row_id
from edgefleet.cloud.vocabulary import DataSource
from edgefleet.protocol.errors import ConflictError, InvalidRequestError, SizeLimitError

CALIBRATION_SAMPLES = 512


@dataclass(frozen=True)
class Samples:
    calibration: np.ndarray
    """Calibration inputs; also the reference samples of a server-built bundle."""
    eval_x: np.ndarray
    eval_y: np.ndarray | None


@lru_cache(maxsize=1)
def _digits() -> Samples:
    from edgefleet.compression.samples import load_digits_split

    data = load_digits_split()
    return Samples(data.x_train[:CALIBRATION_SAMPLES], data.x_test, data.y_test)


def read_npz(data: bytes, *, max_unpacked: int, hint: str | None = None) -> dict[str, np.ndarray]:
    """Every array of an ``.npz``, loaded without pickles after its unpacked size was checked against
    ``max_unpacked``; :class:`InvalidRequestError` / :class:`SizeLimitError` otherwise."""
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            unpacked = sum(info.file_size for info in archive.infolist())
    except (zipfile.BadZipFile, ValueError):
        raise InvalidRequestError("not an .npz archive", where="body", hint=hint) from None
    if unpacked > max_unpacked:
        raise SizeLimitError(f"dataset unpacks to {unpacked} bytes, more than {max_unpacked}", where="body")
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as npz:
            return {name: npz[name] for name in npz.files}
    except Exception as exc:  # numpy raises many kinds on corrupt members; translated here, at the boundary
        raise InvalidRequestError(f"unreadable .npz: {exc}", where="body") from None


def parse_npz(data: bytes, *, max_unpacked: int) -> tuple[np.ndarray, np.ndarray | None]:
    """``x`` (numeric, at least 2-D: samples first) and optional ``y`` (one integer label per sample).

    Raises :class:`InvalidRequestError` for anything else; the unpacked size is bounded before loading."""
    arrays = read_npz(data, max_unpacked=max_unpacked, hint="write it with numpy.savez(f, x=..., y=...)")
    unknown = sorted(set(arrays) - {"x", "y"})
    if "x" not in arrays or unknown:
        raise InvalidRequestError(f"the archive must hold 'x' and optionally 'y', not {sorted(arrays)}", where="body")
    x, y = arrays["x"], arrays.get("y")
    if x.dtype.kind not in "fiu" or x.ndim < 2 or len(x) == 0:
        raise InvalidRequestError(f"x must be a non-empty numeric array of at least 2 dimensions, not {x.dtype} "
                           f"{x.shape}", where="x")
    if y is not None and (y.dtype.kind not in "iu" or y.shape != (len(x),)):
        raise InvalidRequestError(f"y must hold one integer label per sample of x, not {y.dtype} {y.shape}", where="y")
    return x.astype(np.float32, copy=False), y


def store_dataset(session: Session, *, model_name: str, incoming: Incoming, store: BlobStore, max_unpacked: int,
                  actor: str, now: float) -> ModelDataset:
    """Validate and store a model's sample set (replacing the previous one); nothing is stored if invalid."""
    model = get_model(session, name=model_name)
    try:
        x, y = parse_npz(incoming.read(), max_unpacked=max_unpacked)
    except BaseException:
        store.discard(incoming)
        raise
    store.commit(incoming)
    row = session.get(ModelDataset, model.id) or ModelDataset(model_id=row_id(model), digest="", size=0, samples=0,
                                                              uploaded_at=now)
    row.digest, row.size, row.samples, row.labelled = incoming.digest, incoming.size, len(x), y is not None
    row.uploaded_at, row.uploaded_by = now, actor
    session.add(row)
    audit.record(session, actor=actor, action="model.dataset", target=f"model:{model_name}",
                 details={"digest": incoming.digest, "samples": len(x), "labelled": y is not None}, now=now)
    return row


def get_dataset(session: Session, *, model_name: str) -> ModelDataset:
    row = session.get(ModelDataset, get_model(session, name=model_name).id)
    if row is None:
        raise ConflictError(f"model {model_name!r} has no uploaded dataset", where="data",
                            hint=f"PUT an .npz (x, optional y) to /api/v1/models/{model_name}/dataset, "
                                 f"or use data '{DataSource.DIGITS}'")
    return row


def load_samples(session: Session, *, model_name: str, data: DataSource | str, store: BlobStore,
                 max_unpacked: int) -> Samples:
    if data == DataSource.DIGITS:
        return _digits()
    if data != DataSource.DATASET:
        raise InvalidRequestError(f"data must be one of {', '.join(DataSource)}", where="data")
    row = get_dataset(session, model_name=model_name)
    x, y = parse_npz(store.open_path(row.digest).read_bytes(), max_unpacked=max_unpacked)
    return Samples(x[:CALIBRATION_SAMPLES], x, y)
