"""In-process inference: :class:`Predictor` serves the active bundle and records statistics.

The active model is one immutable :class:`LoadedModel`; switching bundles replaces the
reference in one assignment, so a request is served entirely by the old or entirely by the
new model, never a mix.
"""

from __future__ import annotations

import logging
import secrets
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from edgefleet.agent.stats import WindowStats, WindowSummary, predicted_classes
from edgefleet.protocol.bundle import VerifiedBundle
from edgefleet.protocol.bundle_arrays import SmokeVectors
from edgefleet.protocol.errors import InferenceError
from edgefleet.protocol.manifest import BundleManifest
from edgefleet.protocol.messages import InstalledBundle
from edgefleet.protocol.runtimes import Session, open_session
from edgefleet.protocol.vocabulary import Reason

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Prediction:
    outputs: dict[str, np.ndarray]
    bundle: InstalledBundle
    prediction_id: str = ""
    """Names this answer for feedback (``POST /v1/feedback``, docs/agent.md)."""


@dataclass(frozen=True, eq=False)
class Served:
    """One answered request, as the predictor's listeners see it (the feedback journal, sample
    capture): register with :meth:`Predictor.add_listener`. Listeners run on the request's thread,
    after the answer is computed and outside the predictor's lock; they must not keep ``inputs``
    longer than they need (the arrays are the request's own, not copies)."""

    prediction_id: str
    at: float
    """When it was answered (the predictor's clock, Unix seconds)."""
    bundle_digest: str
    inputs: Mapping[str, np.ndarray]
    """The feed as the model got it (one batch per input name)."""
    classes: np.ndarray
    """The predicted class of each sample (:func:`~edgefleet.agent.stats.predicted_classes` of the
    first output: argmax, or threshold 0.5 for one score); -1 for a model without outputs."""

    @property
    def samples(self) -> int:
        return len(self.classes)


Listener = Callable[[Served], None]

@dataclass(eq=False)
class LoadedModel:
    session: Session
    manifest: BundleManifest
    installed: InstalledBundle
    stats: WindowStats
    dtypes: dict[str, np.dtype]
    smoke: SmokeVectors | None = None
    """The bundle's smoke test (``VerifiedBundle.smoke_test()``, either bundle format)."""
    live_ok: int = 0
    live_errors: int = 0
    changed: threading.Condition = field(default_factory=threading.Condition)

    def count_live(self, ok: bool) -> None:
        with self.changed:
            if ok:
                self.live_ok += 1
            else:
                self.live_errors += 1
            self.changed.notify_all()

    def wait_live(self, n: int, timeout: float) -> tuple[int, int]:
        """Wait until ``n`` live inferences succeeded or one failed (or ``timeout``)."""
        deadline = time.monotonic() + timeout
        with self.changed:
            while self.live_ok < n and self.live_errors == 0:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self.changed.wait(left)
            return self.live_ok, self.live_errors


def load_model(bundle: VerifiedBundle, *, digest: str, slot: str, window_start: float,
               max_binned_rows: int = 16384) -> LoadedModel:
    """Open a session for a verified bundle (raises InferenceError / RuntimeUnavailableError)."""
    m = bundle.manifest
    session = open_session(m.runtime, bundle.model)
    installed = InstalledBundle(name=m.name, version=m.version, build=m.build, digest=digest,
                                runtime=m.runtime, slot=slot)
    first_output = session.outputs[0].name if session.outputs else None
    stats = WindowStats(profile=bundle.reference_profile(), labels=m.labels, output_name=first_output,
                        start=window_start, max_binned_rows=max_binned_rows)
    dtypes = {s.name: np.dtype(s.dtype) for s in session.inputs}
    return LoadedModel(session=session, manifest=m, installed=installed, stats=stats, dtypes=dtypes,
                       smoke=bundle.smoke_test())


def smoke_test(model: LoadedModel) -> None:
    """Run the bundle's smoke-test vectors; raise InferenceError on any mismatch."""
    test = model.smoke
    if test is None:
        return
    inputs = {k: np.asarray(v, dtype=model.dtypes.get(k)) for k, v in test.inputs.items()}
    got = model.session.run(inputs)
    for name, expected in test.expected.items():
        if name not in got:
            raise InferenceError(f"smoke test: output {name!r} missing", code=Reason.SMOKE_TEST_FAILED, where=name)
        want = np.asarray(expected, dtype=np.float64)
        have = np.asarray(got[name], dtype=np.float64)
        if have.shape != want.shape:
            raise InferenceError(f"smoke test: output {name!r} has shape {list(have.shape)}, expected "
                                 f"{list(want.shape)}", code=Reason.SMOKE_TEST_FAILED, where=name)
        if not np.all(np.abs(have - want) <= test.atol + test.rtol * np.abs(want)):
            worst = float(np.max(np.abs(have - want)))
            raise InferenceError(f"smoke test: output {name!r} differs from the expected values by up to {worst:.3g}",
                                 code=Reason.SMOKE_TEST_FAILED, where=name)


class Predictor:
    """The in-process inference API. Thread-safe; ``predict`` is the hot path."""

    def __init__(self, *, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._model: LoadedModel | None = None
        self._retired: list[tuple[LoadedModel, WindowSummary]] = []
        self._lock = threading.Lock()
        self._listeners: list[Listener] = []
        self.total_requests = 0
        self.total_errors = 0

    def add_listener(self, listener: Listener) -> None:
        """Call ``listener`` after every answered request, on the request's thread; a listener that
        raises is logged and never fails the request."""
        self._listeners.append(listener)

    @property
    def model(self) -> LoadedModel | None:
        return self._model

    def activate(self, model: LoadedModel | None) -> None:
        """Serve ``model`` from now on; the old model's open window is closed and kept for
        the next telemetry flush."""
        with self._lock:
            old, self._model = self._model, model
            if old is not None:
                summary = old.stats.flush(self._clock())
                if summary.requests or summary.errors:
                    self._retired.append((old, summary))

    def predict(self, inputs: Mapping[str, Any]) -> Prediction:
        model = self._model
        self.total_requests += 1
        if model is None:
            self.total_errors += 1
            raise InferenceError("no model is installed", code=Reason.NO_MODEL)
        try:
            feed = {k: (v if type(v) is np.ndarray and v.dtype == model.dtypes.get(k)
                        else np.asarray(v, dtype=model.dtypes.get(k))) for k, v in inputs.items()}
            t0 = time.perf_counter()
            outputs = model.session.run(feed)
        except (InferenceError, ValueError, TypeError) as exc:
            self.total_errors += 1
            model.stats.error()
            model.count_live(False)
            if isinstance(exc, InferenceError):
                raise
            raise InferenceError(f"bad input: {exc}", code=Reason.BAD_INPUT) from None
        latency = time.perf_counter() - t0
        n = len(next(iter(feed.values()))) if feed else 0
        model.stats.record(feed, outputs, latency, n)
        model.count_live(True)
        prediction_id = secrets.token_hex(16)
        if self._listeners:
            first = model.stats.output_name
            classes = predicted_classes(outputs[first]) if first in outputs else None
            if classes is None or len(classes) != n:   # no output, or not one row per sample: no class
                classes = np.full(n, -1, np.int64)
            served = Served(prediction_id, self._clock(), model.installed.digest, feed, classes)
            for listener in self._listeners:
                try:
                    listener(served)
                except Exception:  # a listener must never fail a request
                    log.exception("listener %r failed for prediction %s", listener, prediction_id)
        return Prediction(outputs, model.installed, prediction_id)

    def fold(self, min_rows: int = 1024) -> None:
        """Do the statistics' vectorised work now (called from the agent loop, off the request path)."""
        model = self._model
        if model is not None:
            model.stats.fold(min_rows)

    def flush(self) -> list[tuple[InstalledBundle, WindowSummary]]:
        """Close the current window (and hand out windows of models replaced since)."""
        with self._lock:
            out = [(m.installed, s) for m, s in self._retired]
            self._retired = []
            if self._model is not None:
                out.append((self._model.installed, self._model.stats.flush(self._clock())))
        return out
