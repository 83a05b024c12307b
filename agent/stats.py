"""Per-window inference statistics, cheap on the hot path.

``record()`` only appends references (latency, the profiled input, the first output) to
lists; the vectorised work (histograms, feature binning, argmax) happens in :meth:`fold`,
which the agent's loop calls between requests (never on the request path), and at the end of
the window. At most ``max_binned_rows`` inputs per window are binned for drift (the feature
histograms and drift scores say how many: ``drift.samples``); requests, samples, latencies and
predictions are always counted in full. Raw inputs never leave the device.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from edgefleet.protocol.drift import FeatureBinner, ReferenceProfile, score
from edgefleet.protocol.messages import MAX_CONFUSION_CELLS, MAX_LABEL_CHARS, DriftScores, Feedback, Histogram

LATENCY_BOUNDS_MS: tuple[float, ...] = (0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000)


@dataclass
class WindowSummary:
    start: float
    end: float
    requests: int
    batches: int
    samples: int
    errors: int
    latency_ms: Histogram
    features: list[list[int]]
    predictions: dict[str, int]
    drift: DriftScores | None
    feedback: Feedback | None = None


def histogram(values_ms: np.ndarray, bounds: Sequence[float] = LATENCY_BOUNDS_MS) -> list[int]:
    """Counts per bin ``(bounds[i-1], bounds[i]]``, last bin = overflow."""
    idx = np.searchsorted(np.asarray(bounds), values_ms, side="left")
    counts: list[int] = np.bincount(idx, minlength=len(bounds) + 1).astype(int).tolist()
    return counts


def predicted_classes(output: np.ndarray) -> np.ndarray:
    """Class index per sample: argmax for scores ``[N, C>1]``, threshold 0.5 for one score,
    the value itself for integer outputs."""
    out = np.asarray(output)
    if out.ndim == 0:
        out = out.reshape(1)
    if np.issubdtype(out.dtype, np.integer):
        return out.reshape(len(out), -1)[:, 0].astype(np.int64)
    flat = out.reshape(len(out), -1)
    if flat.shape[1] == 1:
        return (flat[:, 0] > 0.5).astype(np.int64)
    classes: np.ndarray = flat.argmax(axis=1)
    return classes


@dataclass
class _Buffers:
    latencies: list[float] = field(default_factory=list)
    inputs: list[np.ndarray] = field(default_factory=list)
    outputs: list[np.ndarray] = field(default_factory=list)
    rows: int = 0


class WindowStats:
    """Statistics of one model over one telemetry window (thread-safe)."""

    def __init__(self, *, profile: ReferenceProfile | None, labels: list[str] | None, output_name: str | None,
                 start: float, max_binned_rows: int = 16384) -> None:
        self.profile = profile
        self.labels = labels
        self.output_name = output_name
        self.max_binned_rows = max_binned_rows
        self._binner = FeatureBinner(profile) if profile is not None and profile.features else None
        self._lock = threading.Lock()
        self._start = start
        self._reset()

    def _reset(self) -> None:
        self._buf = _Buffers()
        self.requests = self.batches = self.samples = self.errors = 0
        self._features = np.zeros((self._binner.n_features, self._binner.n_bins), np.int64) if self._binner else None
        self._class_chunks: list[np.ndarray] = []
        self._sampled = 0
        self._confusion: dict[tuple[int, int], int] = {}

    def record(self, inputs: Mapping[str, np.ndarray], outputs: Mapping[str, np.ndarray], latency_s: float,
               n: int, *, request: bool = True) -> None:
        with self._lock:
            buf = self._buf
            self.requests += request
            self.batches += 1
            self.samples += n
            buf.latencies.append(latency_s)
            if self._binner is not None and self._sampled < self.max_binned_rows:
                buf.inputs.append(inputs[self._binner.profile.input])
                self._sampled += n
            if self.output_name is not None:
                buf.outputs.append(outputs[self.output_name])
            buf.rows += n

    def label(self, true: np.ndarray, predicted: np.ndarray) -> int:
        """Count labels the application gave back for served predictions (in the window they
        arrive in). Returns how many of them were right."""
        pairs = np.stack([np.asarray(true, np.int64).reshape(-1), np.asarray(predicted, np.int64).reshape(-1)], 1)
        cells, counts = np.unique(pairs, axis=0, return_counts=True)
        with self._lock:
            for (t, p), c in zip(cells.tolist(), counts.tolist(), strict=True):
                self._confusion[(t, p)] = self._confusion.get((t, p), 0) + c
        return int((pairs[:, 0] == pairs[:, 1]).sum())

    def error(self, *, request: bool = True) -> None:
        with self._lock:
            self.requests += request
            self.errors += 1

    def fold(self, min_rows: int = 0) -> None:
        """Bin buffered inputs/outputs (vectorised) and drop the references. The heavy part
        runs outside the lock, so concurrent ``record()`` calls never wait for it."""
        with self._lock:
            buf = self._buf
            if buf.rows < max(min_rows, 1):
                return
            inputs, outputs = buf.inputs, buf.outputs
            buf.inputs, buf.outputs, buf.rows = [], [], 0
            generation = self._features
        counts = classes = None
        if inputs and self._binner is not None:  # inputs are only buffered with a binner
            batch = np.concatenate([np.asarray(x).reshape(len(x), -1) for x in inputs])
            try:
                counts = self._binner.counts(batch)
            except ValueError:
                counts = None  # inputs that do not match the profile are counted as samples only
        if outputs:
            classes = np.concatenate([predicted_classes(o) for o in outputs])
        with self._lock:
            if generation is not self._features:
                return  # the window was flushed meanwhile; these rows belong to it, drop them
            if counts is not None:
                self._features += counts
            if classes is not None:
                self._class_chunks.append(classes)

    def flush(self, now: float) -> WindowSummary:
        """Close the window at ``now`` and start the next one."""
        self.fold()
        with self._lock:
            buf, features, chunks = self._buf, self._features, self._class_chunks
            requests, batches, samples, errors = self.requests, self.batches, self.samples, self.errors
            confusion = self._confusion
            start, self._start = self._start, now
            self._reset()
        if buf.inputs and self._binner is not None and features is not None:  # rows recorded since the fold above
            with contextlib.suppress(ValueError):
                features = features + self._binner.counts(
                    np.concatenate([np.asarray(x).reshape(len(x), -1) for x in buf.inputs]))
        if buf.outputs:
            chunks.append(np.concatenate([predicted_classes(o) for o in buf.outputs]))
        latencies = np.asarray(buf.latencies, dtype=np.float64) * 1000.0
        lat = Histogram(bounds=list(LATENCY_BOUNDS_MS), counts=histogram(latencies))
        feature_counts = self._binner.trim(features) if self._binner is not None and features is not None else []
        predictions: dict[str, int] = {}
        if chunks:
            idx, cnt = np.unique(np.concatenate(chunks), return_counts=True)
            for i, c in zip(idx.tolist(), cnt.tolist(), strict=True):
                key = self.labels[i] if self.labels and 0 <= i < len(self.labels) else str(i)
                predictions[key] = predictions.get(key, 0) + c
        drift = None
        if self.profile is not None and feature_counts and sum(feature_counts[0]):
            drift = score(self.profile, feature_counts, predictions)
        return WindowSummary(start=start, end=now, requests=requests, batches=batches, samples=samples,
                             errors=errors, latency_ms=lat, features=feature_counts, predictions=predictions,
                             drift=drift, feedback=self._feedback(confusion))

    def _name(self, index: int) -> str:
        """A class as the confusion table names it: its label (cut to the wire's 64 characters), else its index."""
        return self.labels[index][:MAX_LABEL_CHARS] if self.labels and 0 <= index < len(self.labels) else str(index)

    def _feedback(self, confusion: dict[tuple[int, int], int]) -> Feedback | None:
        """The window's labels as counts: labelled, correct and the confusion cells (true -> predicted);
        past :data:`MAX_CONFUSION_CELLS` cells the table is left out (the counts stay)."""
        if not confusion:
            return None
        table: dict[str, dict[str, int]] = {}
        if len(confusion) <= MAX_CONFUSION_CELLS:
            for (t, p), c in sorted(confusion.items()):
                row = table.setdefault(self._name(t), {})
                row[self._name(p)] = row.get(self._name(p), 0) + c
        return Feedback(labelled=sum(confusion.values()), correct=sum(c for (t, p), c in confusion.items() if t == p),
                        confusion=table)
