"""Ground truth from the application: labels for predictions the agent served.

Every answered ``POST /v1/predict`` carries a ``prediction_id``. The :class:`FeedbackJournal`
remembers recent ones (a listener of the predictor) so that ``POST /v1/feedback`` can give a label
per sample of that request. Labels are counted in the telemetry window they arrive in (labelled,
correct, confusion cells; :class:`~edgefleet.protocol.messages.Feedback`), so they reach the
controller through the durable outbox like every other count.

Bounds: at most ``max_samples`` samples are remembered (oldest first out) and none older than
``window_s``. An entry holds the predicted class of each sample (int32), not the inputs or outputs,
so memory does not depend on the model: measured about 190 bytes per request plus 4 per sample
(18 MiB for the default 100,000 samples served one per request, 2 MiB in batches of 10;
docs/agent.md). The journal lives in memory: after an agent restart earlier
predictions can no longer be labelled (404), the documented trade-off against writing every answer
to disk.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from edgefleet.agent.inference import Predictor, Served
from edgefleet.protocol.errors import EdgeFleetError
from edgefleet.protocol.vocabulary import Reason

log = logging.getLogger(__name__)

LabelListener = Callable[[str, np.ndarray], None]
"""Called with ``(prediction_id, labels)`` (class indices) after labels were accepted."""


class FeedbackError(EdgeFleetError):
    """A label the agent cannot take; ``status`` is the HTTP answer of the local endpoint."""

    def __init__(self, message: str, *, code: str, status: int, where: str = "prediction_id",
                 hint: str | None = None) -> None:
        super().__init__(message, code=code, where=where, hint=hint)
        self.status = status


@dataclass(frozen=True)
class Accepted:
    labelled: int
    correct: int


@dataclass(slots=True)
class _Entry:
    at: float
    bundle_digest: str
    classes: bytes
    """The predicted class of each sample of the request, int32 (bytes: a fifth of an array's overhead)."""
    labelled: bool = False

    @property
    def samples(self) -> int:
        return len(self.classes) // 4


class FeedbackJournal:
    """Recent predictions by id, so the application can label them (thread-safe, bounded)."""

    def __init__(self, predictor: Predictor, *, window_s: float, max_samples: int,
                 clock: Callable[[], float] = time.time) -> None:
        self.predictor, self.window_s, self.max_samples, self._clock = predictor, window_s, max_samples, clock
        self._entries: OrderedDict[str, _Entry] = OrderedDict()
        self._samples = 0
        self._lock = threading.Lock()
        self.listeners: list[LabelListener] = []
        self.accepted = 0
        """Samples labelled since start."""

    def remember(self, served: Served) -> None:
        """The predictor's listener: keep ``served`` until it is labelled, expires or is pushed out."""
        classes = np.asarray(served.classes, np.int32).reshape(-1)
        n = len(classes)
        with self._lock:
            self._entries[served.prediction_id] = _Entry(served.at, served.bundle_digest, classes.tobytes())
            self._samples += n
            self._evict(self._clock())

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def samples(self) -> int:
        return self._samples

    def _evict(self, now: float) -> None:
        while self._entries:
            entry = next(iter(self._entries.values()))
            if self._samples <= self.max_samples and now - entry.at <= self.window_s:
                return
            self._entries.popitem(last=False)
            self._samples -= entry.samples

    def label(self, prediction_id: str, labels: Sequence[object]) -> Accepted:
        """Count ``labels`` (one per sample of the request; class indices, or the bundle's label
        names) for the bundle that served ``prediction_id``. Raises :class:`FeedbackError`."""
        with self._lock:
            self._evict(self._clock())
            entry = self._entries.get(prediction_id)
            if entry is None:
                raise FeedbackError(f"no prediction {prediction_id!r} to label: never served, older than "
                                    f"{self.window_s:g} s, pushed out, or served before the agent restarted",
                                    code=Reason.UNKNOWN_PREDICTION, status=404)
            if entry.labelled:
                raise FeedbackError(f"prediction {prediction_id!r} is already labelled",
                                    code=Reason.ALREADY_LABELLED, status=409)
            model = self.predictor.model
            if model is None or model.installed.digest != entry.bundle_digest:
                raise FeedbackError(f"prediction {prediction_id!r} was served by bundle {entry.bundle_digest[:12]}, "
                                    "which no longer serves", code=Reason.BUNDLE_REPLACED, status=410,
                                    hint="labels count for the bundle that serves; this one was replaced")
            truth = _classes(labels, model.manifest.labels, expected=entry.samples)
            entry.labelled = True
            self.accepted += len(truth)
        correct = model.stats.label(truth, np.frombuffer(entry.classes, np.int32))
        for listener in self.listeners:
            try:
                listener(prediction_id, truth)
            except Exception:  # a listener must never fail the feedback call
                log.exception("label listener %r failed for prediction %s", listener, prediction_id)
        return Accepted(len(truth), correct)


def _classes(labels: Sequence[object], names: list[str] | None, *, expected: int) -> np.ndarray:
    if not isinstance(labels, list) or len(labels) != expected:
        got = len(labels) if isinstance(labels, list) else type(labels).__name__
        raise FeedbackError(f"labels must be a list of {expected} (one per sample of the request), got {got}",
                            code=Reason.BAD_INPUT, status=400, where="labels")
    out = []
    for i, value in enumerate(labels):
        if type(value) is int and value >= 0 and (not names or value < len(names)):
            out.append(value)
        elif type(value) is str and names and value in names:
            out.append(names.index(value))
        else:
            known = f"0..{len(names) - 1} or one of the bundle's labels" if names else "a class index >= 0"
            raise FeedbackError(f"labels[{i}] = {value!r} is not {known}", code=Reason.BAD_INPUT, status=400,
                                where=f"labels[{i}]")
    return np.asarray(out, np.int64)
