"""Sample capture on the device: a bounded, drift-weighted reservoir of served inputs, kept on disk
and sealed into batches for upload (docs/agent.md "Sample capture", docs/security.md).

Off unless the active bundle's *signed* manifest opts in (``capture.enabled``). Sampling is
Efraimidis-Spirakis A-Res: every served sample draws ``key = ln(u) / w`` (the log of ``u ** (1/w)``,
``u`` uniform in (0, 1]), and the reservoir keeps the ``max_samples`` highest keys; the weight ``w`` is
1 while the model's latest telemetry window was ``ok`` and ``drift_weight`` while it was at warn or
alarm, so inputs served while the model drifts are over-represented.

Threads: :meth:`Capture.on_served` runs on the request thread and :meth:`Capture.on_labelled` on the
feedback thread; both only queue (bounded, never raise, never block on disk). The agent loop calls
:meth:`Capture.tick`, which writes the queue to SQLite in one transaction, evicts the lowest keys past
the caps and seals a batch when one is due. Batches move samples out of the reservoir atomically (the
file is written and synced first, then one transaction records the batch and deletes its samples), so
a crash at any point neither loses nor duplicates a sample; :mod:`edgefleet.agent.upload` sends them.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import math
import os
import sqlite3
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgefleet.agent.inference import Served
from edgefleet.protocol.manifest import CapturePolicy
from edgefleet.protocol.messages import UploadRequest
from edgefleet.protocol.vocabulary import DriftLevel

log = logging.getLogger(__name__)

DB_NAME = "capture.sqlite"
BATCHES_DIR = "batches"
ROW_OVERHEAD = 64
"""Bytes a sample costs on disk besides its inputs and id (key, times, classes, bookkeeping): counted
against ``max_bytes`` so the cap holds for tiny inputs too."""
INPUT_PREFIX = "input:"
"""Batch files hold each model input as ``input:<name>`` (so no input name can shadow a column)."""
WAL_PAGES = 256
"""SQLite write-ahead log pages before a checkpoint: the disk beyond ``max_bytes`` stays about 1 MiB."""
MAX_LABEL_OPS = 10_000
"""Labels waiting in memory for the next tick, at most (each holds one request's labels)."""

SCHEMA = """
CREATE TABLE IF NOT EXISTS samples (
    prediction_id TEXT NOT NULL,
    idx INTEGER NOT NULL,
    at REAL NOT NULL,
    bundle_digest TEXT NOT NULL,
    key REAL NOT NULL,
    layout TEXT NOT NULL,
    inputs BLOB NOT NULL,
    size INTEGER NOT NULL,
    predicted INTEGER NOT NULL,
    label INTEGER,
    PRIMARY KEY (prediction_id, idx)
);
CREATE INDEX IF NOT EXISTS samples_by_key ON samples (key);
CREATE TABLE IF NOT EXISTS batches (
    upload_id TEXT PRIMARY KEY,
    bundle_digest TEXT NOT NULL,
    size INTEGER NOT NULL,
    sha256 TEXT NOT NULL,
    samples INTEGER NOT NULL,
    labelled INTEGER NOT NULL,
    t_from REAL NOT NULL,
    t_to REAL NOT NULL,
    sealed_at REAL NOT NULL,
    grant_json TEXT,
    failures INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS meta (
    name TEXT PRIMARY KEY,
    value REAL NOT NULL
);
"""


@dataclass(frozen=True)
class Sample:
    prediction_id: str
    idx: int
    at: float
    bundle_digest: str
    key: float
    layout: str
    """JSON ``[[name, dtype, shape], ...]`` of the inputs, in the order their bytes are concatenated."""
    inputs: bytes
    predicted: int

    @property
    def size(self) -> int:
        """What the sample counts against ``max_bytes``: about what it takes in the SQLite file and,
        later, in a batch file (whose ids are 4-byte unicode)."""
        return len(self.inputs) + 4 * len(self.prediction_id) + ROW_OVERHEAD


@dataclass(frozen=True)
class Batch:
    """A sealed batch waiting for upload: its file and what the upload request says about it."""

    upload_id: str
    path: Path
    bundle_digest: str
    size: int
    sha256: str
    samples: int
    labelled: int
    t_from: float
    t_to: float
    grant_json: str | None = None
    failures: int = 0

    def request(self, device_id: str) -> UploadRequest:
        return UploadRequest(device_id=device_id, upload_id=self.upload_id, bundle_digest=self.bundle_digest,
                             size=self.size, sha256=self.sha256, samples=self.samples, labelled=self.labelled,
                             t_from=self.t_from, t_to=self.t_to)


def layout_of(row: Mapping[str, np.ndarray]) -> str:
    return json.dumps([[name, row[name].dtype.str, list(row[name].shape)] for name in sorted(row)],
                      separators=(",", ":"))


def encode_inputs(row: Mapping[str, np.ndarray]) -> bytes:
    return b"".join(np.ascontiguousarray(row[name]).tobytes() for name in sorted(row))


def decode_inputs(layout: str, data: bytes) -> dict[str, np.ndarray]:
    out: dict[str, np.ndarray] = {}
    offset = 0
    for name, dtype, shape in json.loads(layout):
        dt = np.dtype(dtype)
        count = math.prod(shape)
        out[name] = np.frombuffer(data, dtype=dt, count=count, offset=offset).reshape(shape)
        offset += count * dt.itemsize
    return out


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class Reservoir:
    """The samples and sealed batches on disk (``<directory>/capture.sqlite`` + ``batches/*.npz``).
    Thread-safe; the caps are enforced on every insert."""

    def __init__(self, directory: Path, *, max_samples: int, max_bytes: int,
                 clock: Callable[[], float] = time.time) -> None:
        self.directory = directory
        self.batches_dir = directory / BATCHES_DIR
        # raw model inputs live here: the agent's user only, whatever the umask or the state dir's mode
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(directory, 0o700)
        self.batches_dir.mkdir(mode=0o700, exist_ok=True)
        self.max_samples, self.max_bytes = max_samples, max_bytes
        self.clock = clock
        self._lock = threading.Lock()
        self._db = sqlite3.connect(directory / DB_NAME, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute(f"PRAGMA wal_autocheckpoint={WAL_PAGES}")   # the write-ahead log stays small...
        self._db.execute(f"PRAGMA journal_size_limit={WAL_PAGES * 4096}")  # ...and is truncated back after
        self._db.executescript(SCHEMA)
        self._db.execute("INSERT OR IGNORE INTO meta (name, value) VALUES ('last_seal_at', ?)", (clock(),))
        self._clean_batch_files()
        self._count, self._bytes = self._db.execute("SELECT COUNT(*), COALESCE(SUM(size), 0) FROM samples").fetchone()
        self._batch_bytes = int(self._db.execute("SELECT COALESCE(SUM(size), 0) FROM batches").fetchone()[0])
        self._min_key = self._lowest_key()

    # ------------------------------------------------------------------ bookkeeping

    def close(self) -> None:
        with self._lock:
            self._db.close()

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield self._db
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    def _clean_batch_files(self) -> None:
        """Remove what a crash between writing a batch file and recording it left behind."""
        recorded = {r[0] for r in self._db.execute("SELECT upload_id FROM batches")}
        for path in self.batches_dir.iterdir():
            if path.stem not in recorded or path.suffix != ".npz":
                path.unlink(missing_ok=True)
        for upload_id in recorded:
            if not (self.batches_dir / f"{upload_id}.npz").is_file():
                log.error("capture batch %s lost its file; dropping its record", upload_id)
                self._db.execute("DELETE FROM batches WHERE upload_id = ?", (upload_id,))

    def _lowest_key(self) -> float:
        row = self._db.execute("SELECT MIN(key) FROM samples").fetchone()
        return float(row[0]) if row[0] is not None else -math.inf

    @property
    def count(self) -> int:
        return int(self._count)

    @property
    def bytes(self) -> int:
        """Bytes the samples and the sealed batches take (what ``max_bytes`` bounds)."""
        return int(self._bytes) + self._batch_bytes

    def threshold(self) -> float:
        """A key at or below this cannot enter a full reservoir (``-inf`` while there is room)."""
        return self._min_key if self._count >= self.max_samples else -math.inf

    def set_caps(self, *, max_samples: int, max_bytes: int) -> None:
        with self._lock, self._transaction():
            self.max_samples, self.max_bytes = max_samples, max_bytes
            self._make_room(0, math.inf)

    # ------------------------------------------------------------------ samples

    def insert(self, samples: Sequence[Sample], labels: Sequence[tuple[str, np.ndarray]] = ()) -> int:
        """Store ``samples`` (keeping the highest keys within the caps), then attach ``labels``
        (``(prediction_id, labels)``), in one transaction. Returns how many samples were kept."""
        kept = 0
        with self._lock, self._transaction() as db:
            for s in samples:
                if not self._make_room(s.size, s.key):
                    continue
                cur = db.execute("INSERT OR IGNORE INTO samples (prediction_id, idx, at, bundle_digest, key, layout, "
                                 "inputs, size, predicted) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                                 (s.prediction_id, s.idx, s.at, s.bundle_digest, s.key, s.layout, s.inputs, s.size,
                                  s.predicted))
                if cur.rowcount:
                    self._count += 1
                    self._bytes += s.size
                    kept += 1
            for prediction_id, values in labels:
                db.executemany("UPDATE samples SET label = ? WHERE prediction_id = ? AND idx = ?",
                               [(int(v), prediction_id, i) for i, v in enumerate(values)])
            self._min_key = self._lowest_key()
        return kept

    def _make_room(self, size: int, key: float) -> bool:
        """Evict the lowest keys (all below ``key``) until one more sample of ``size`` fits; False,
        evicting nothing, when it cannot."""
        if size > self.max_bytes:
            return False
        need_rows = self._count + (1 if size else 0) - self.max_samples
        need_bytes = self._bytes + self._batch_bytes + size - self.max_bytes
        if need_rows <= 0 and need_bytes <= 0:
            return True
        victims: list[tuple[int, int]] = []
        freed = 0
        for rowid, victim_key, victim_size in self._db.execute("SELECT rowid, key, size FROM samples ORDER BY key"):
            if len(victims) >= need_rows and freed >= need_bytes:
                break
            if victim_key >= key:
                return False
            victims.append((rowid, victim_size))
            freed += victim_size
        if len(victims) < need_rows or freed < need_bytes:
            return False
        self._db.executemany("DELETE FROM samples WHERE rowid = ?", [(rowid,) for rowid, _ in victims])
        self._count -= len(victims)
        self._bytes -= freed
        return True

    def labelled(self) -> int:
        with self._lock:
            return int(self._db.execute("SELECT COUNT(*) FROM samples WHERE label IS NOT NULL").fetchone()[0])

    def samples(self) -> list[tuple[str, int, float, str, int, int | None]]:
        """``(prediction_id, idx, key, bundle_digest, predicted, label)`` of every sample (tests, stats)."""
        with self._lock:
            return list(self._db.execute("SELECT prediction_id, idx, key, bundle_digest, predicted, label "
                                         "FROM samples ORDER BY prediction_id, idx"))

    # ------------------------------------------------------------------ batches

    def last_seal_at(self) -> float:
        with self._lock:
            return float(self._db.execute("SELECT value FROM meta WHERE name = 'last_seal_at'").fetchone()[0])

    def group_sizes(self) -> dict[tuple[str, str], int]:
        """Samples per ``(bundle_digest, input layout)``: a batch holds one such group."""
        with self._lock:
            return {(d, lay): n for d, lay, n in self._db.execute(
                "SELECT bundle_digest, layout, COUNT(*) FROM samples GROUP BY bundle_digest, layout")}

    def seal(self, bundle_digest: str, layout: str) -> Batch | None:
        """Move the samples of one group into a new batch file; None if the group is empty."""
        with self._lock:
            rows = self._db.execute("SELECT rowid, prediction_id, idx, at, inputs, predicted, label FROM samples "
                                    "WHERE bundle_digest = ? AND layout = ? ORDER BY at, prediction_id, idx",
                                    (bundle_digest, layout)).fetchall()
            if not rows:
                return None
            decoded = [decode_inputs(layout, r[4]) for r in rows]
            arrays = {INPUT_PREFIX + name: np.stack([d[name] for d in decoded]) for name in decoded[0]}
            labels = np.array([-1 if r[6] is None else r[6] for r in rows], dtype=np.int64)
            arrays |= {"prediction_id": np.array([r[1] for r in rows]), "sample_index": np.array(
                [r[2] for r in rows], dtype=np.int64), "at": np.array([r[3] for r in rows], dtype=np.float64),
                "predicted": np.array([r[5] for r in rows], dtype=np.int64), "label": labels,
                "bundle_digest": np.array(bundle_digest)}
            buf = io.BytesIO()
            np.savez(buf, allow_pickle=False, **arrays)
            data = buf.getvalue()
            upload_id = uuid.uuid4().hex
            path = self.batches_dir / f"{upload_id}.npz"
            tmp = path.with_suffix(".tmp")
            with open(tmp, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, path)
            _fsync_dir(self.batches_dir)
            batch = Batch(upload_id=upload_id, path=path, bundle_digest=bundle_digest, size=len(data),
                          sha256=hashlib.sha256(data).hexdigest(), samples=len(rows),
                          labelled=int((labels >= 0).sum()), t_from=rows[0][3], t_to=rows[-1][3])
            freed = int(self._db.execute("SELECT SUM(size) FROM samples WHERE bundle_digest = ? AND layout = ?",
                                         (bundle_digest, layout)).fetchone()[0])
            with self._transaction() as db:
                db.execute("INSERT INTO batches (upload_id, bundle_digest, size, sha256, samples, labelled, t_from, "
                           "t_to, sealed_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                           (upload_id, bundle_digest, batch.size, batch.sha256, batch.samples, batch.labelled,
                            batch.t_from, batch.t_to, self.clock()))
                db.executemany("DELETE FROM samples WHERE rowid = ?", [(r[0],) for r in rows])
                db.execute("UPDATE meta SET value = ? WHERE name = 'last_seal_at'", (self.clock(),))
            self._count -= len(rows)
            self._bytes -= freed
            self._batch_bytes += batch.size
            self._min_key = self._lowest_key()
        log.info("sealed capture batch %s: %d samples (%d labelled), %d bytes, bundle %s", upload_id, batch.samples,
                 batch.labelled, batch.size, bundle_digest[:12])
        return batch

    def pending_batch(self) -> Batch | None:
        """The oldest sealed batch (uploaded one at a time)."""
        with self._lock:
            row = self._db.execute("SELECT upload_id, bundle_digest, size, sha256, samples, labelled, t_from, t_to, "
                                   "grant_json, failures FROM batches ORDER BY sealed_at, upload_id LIMIT 1").fetchone()
        if row is None:
            return None
        return Batch(upload_id=row[0], path=self.batches_dir / f"{row[0]}.npz", bundle_digest=row[1], size=row[2],
                     sha256=row[3], samples=row[4], labelled=row[5], t_from=row[6], t_to=row[7], grant_json=row[8],
                     failures=row[9])

    def set_grant(self, upload_id: str, grant_json: str | None) -> None:
        with self._lock:
            self._db.execute("UPDATE batches SET grant_json = ? WHERE upload_id = ?", (grant_json, upload_id))

    def count_failure(self, upload_id: str) -> int:
        with self._lock:
            self._db.execute("UPDATE batches SET failures = failures + 1, grant_json = NULL WHERE upload_id = ?",
                             (upload_id,))
            row = self._db.execute("SELECT failures FROM batches WHERE upload_id = ?", (upload_id,)).fetchone()
        return int(row[0]) if row else 0

    def finish(self, upload_id: str) -> None:
        """Forget a batch the controller has confirmed (or that is given up): record, then file."""
        with self._lock:
            row = self._db.execute("SELECT size FROM batches WHERE upload_id = ?", (upload_id,)).fetchone()
            if row is None:
                return
            self._db.execute("DELETE FROM batches WHERE upload_id = ?", (upload_id,))
            self._batch_bytes -= int(row[0])
            (self.batches_dir / f"{upload_id}.npz").unlink(missing_ok=True)


class Capture:
    """The capture front: policy of the active bundle, the drift weight, the bounded queue between
    the request threads and the reservoir, and when a batch is due."""

    def __init__(self, directory: Path, *, clock: Callable[[], float] = time.time,
                 rng: np.random.Generator | None = None) -> None:
        self.directory = directory
        self.clock = clock
        self._rng = rng or np.random.default_rng()
        self._rng_lock = threading.Lock()
        self.policy: CapturePolicy | None = None
        self.digest: str | None = None
        self.weight = 1.0
        self._alarm = False
        self._queue: deque[Sample | tuple[str, np.ndarray]] = deque()
        self._queued_samples = self._queued_bytes = self._queued_labels = 0
        self._queue_lock = threading.Lock()
        self.dropped = 0
        """Samples that found the queue full (the agent loop fell behind), or failed to encode."""
        self.reservoir: Reservoir | None = None
        if (directory / DB_NAME).exists():  # samples or batches of an earlier run: keep draining them
            default = CapturePolicy()
            self.reservoir = Reservoir(directory, max_samples=default.max_samples, max_bytes=default.max_bytes,
                                       clock=clock)

    # ------------------------------------------------------------------ the agent loop

    def set_model(self, digest: str | None, policy: CapturePolicy | None) -> None:
        """The active bundle and its capture policy (``None`` or not ``enabled``: capture nothing)."""
        policy = policy if policy is not None and policy.enabled else None
        if digest != self.digest:
            self.weight, self._alarm = 1.0, False
        if policy is not None:
            if self.reservoir is None:
                self.reservoir = Reservoir(self.directory, max_samples=policy.max_samples,
                                           max_bytes=policy.max_bytes, clock=self.clock)
            elif (self.reservoir.max_samples, self.reservoir.max_bytes) != (policy.max_samples, policy.max_bytes):
                self.reservoir.set_caps(max_samples=policy.max_samples, max_bytes=policy.max_bytes)
        if (digest, policy) != (self.digest, self.policy):
            log.info("sample capture %s for bundle %s", "on" if policy else "off", (digest or "-")[:12])
        self.digest, self.policy = digest, policy

    def observe_window(self, digest: str, level: DriftLevel | str | None) -> None:
        """A telemetry window of bundle ``digest`` closed at drift ``level``: weight what follows."""
        if digest != self.digest or self.policy is None:
            return
        drifting = level in (DriftLevel.WARN, DriftLevel.ALARM)
        self.weight = self.policy.drift_weight if drifting else 1.0
        self._alarm = self._alarm or level == DriftLevel.ALARM

    def tick(self) -> Batch | None:
        """Write what was queued; seal a batch when one is due (and none waits). Returns it."""
        reservoir = self.reservoir
        if reservoir is None:
            return None
        samples, labels = self._take()
        if samples or labels:
            reservoir.insert(samples, labels)
        if reservoir.pending_batch() is not None:
            return None
        group = self._due_group(reservoir)
        if group is None:
            return None
        self._alarm = False
        return reservoir.seal(*group)

    def _due_group(self, reservoir: Reservoir) -> tuple[str, str] | None:
        groups = reservoir.group_sizes()
        if not groups:
            return None
        stale = [g for g in groups if g[0] != self.digest or self.policy is None]
        if stale:  # samples of a bundle no longer active (opted in when served): upload them first
            return max(stale, key=lambda g: groups[g])
        assert self.policy is not None
        group = max(groups, key=lambda g: groups[g])
        due = self._alarm or self.clock() - reservoir.last_seal_at() >= self.policy.upload_interval_s
        return group if due and groups[group] >= self.policy.min_samples_to_upload else None

    def _take(self) -> tuple[list[Sample], list[tuple[str, np.ndarray]]]:
        with self._queue_lock:
            items, self._queue = list(self._queue), deque()
            self._queued_samples = self._queued_bytes = self._queued_labels = 0
        samples = [i for i in items if isinstance(i, Sample)]
        labels = [i for i in items if not isinstance(i, Sample)]
        return samples, labels

    # ------------------------------------------------------------------ request and feedback threads

    def on_served(self, served: Served) -> None:
        """Listener of :class:`~edgefleet.agent.inference.Predictor`: queue the samples whose keys can
        enter the reservoir. Never raises (a failure is logged and the request is unaffected)."""
        policy, reservoir = self.policy, self.reservoir
        if policy is None or reservoir is None or served.bundle_digest != self.digest:
            return
        try:
            self._offer(served, policy, reservoir.threshold())
        except Exception:  # capture must never fail a request
            self.dropped += 1
            log.exception("sample capture failed for prediction %s", served.prediction_id)

    def _offer(self, served: Served, policy: CapturePolicy, threshold: float) -> None:
        first = next(iter(served.inputs.values()), None)
        n = len(first) if first is not None and np.ndim(first) else 0
        if n == 0:
            return
        with self._rng_lock:
            u = 1.0 - self._rng.random(n)          # (0, 1]
        keys = np.log(u) / self.weight              # ln(u ** (1 / w)): same order as A-Res keys
        kept = np.flatnonzero(keys > threshold)
        if kept.size == 0:                          # the usual case once the reservoir is full
            return
        classes = np.asarray(served.classes).reshape(-1)
        for i in kept:
            row = {name: np.asarray(batch)[i] for name, batch in served.inputs.items()}
            sample = Sample(prediction_id=served.prediction_id, idx=int(i), at=served.at,
                            bundle_digest=served.bundle_digest, key=float(keys[i]), layout=layout_of(row),
                            inputs=encode_inputs(row), predicted=int(classes[i]))
            with self._queue_lock:
                if self._queued_samples >= policy.max_samples or self._queued_bytes + sample.size > policy.max_bytes:
                    self.dropped += 1
                    continue
                self._queue.append(sample)
                self._queued_samples += 1
                self._queued_bytes += sample.size

    def on_labelled(self, prediction_id: str, labels: np.ndarray) -> None:
        """Listener of the feedback API: attach ``labels`` (one class index per sample of the request)
        to the samples of ``prediction_id`` still in the reservoir. Never raises."""
        if self.reservoir is None:
            return
        with self._queue_lock:
            if self._queued_labels >= MAX_LABEL_OPS:
                log.warning("capture label queue full; labels of prediction %s not attached", prediction_id)
                return
            self._queue.append((prediction_id, np.asarray(labels, dtype=np.int64).reshape(-1).copy()))
            self._queued_labels += 1

    # ------------------------------------------------------------------ reporting

    def stats(self) -> dict[str, object]:
        r = self.reservoir
        batch = r.pending_batch() if r is not None else None
        return {"enabled": self.policy is not None, "samples": r.count if r else 0, "bytes": r.bytes if r else 0,
                "dropped": self.dropped, "weight": self.weight,
                "pending_upload": batch.upload_id if batch else None}

    def close(self) -> None:
        if self.reservoir is not None:
            self.reservoir.close()
