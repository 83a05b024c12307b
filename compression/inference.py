"""Run a model in its target runtime for evaluation, through the device's own runtime adapters.

:mod:`edgefleet.protocol.runtimes` is the code an agent runs, so the evaluation and the latency
in a report are what a device gets. This wrapper feeds one array (the first input) or a mapping
of arrays by input name, and returns the first output; runtime errors become
:class:`CompressionError` (the model under test is at fault).
"""

from __future__ import annotations

import time

import numpy as np

from edgefleet.compression.inputs import Inputs, count, feed, take
from edgefleet.protocol import runtimes
from edgefleet.protocol.errors import CompressionError, EdgeFleetError
from edgefleet.protocol.vocabulary import Runtime


class Session:
    """A model loaded in ONNX Runtime or LiteRT: inputs in, first output out."""

    def __init__(self, runtime: Runtime, model: bytes) -> None:
        try:
            self._session = runtimes.open_session(runtime, model)
        except EdgeFleetError as exc:
            raise CompressionError(f"{runtime} runtime cannot load the model: {exc.message}",
                                   where="model") from exc
        self.input_name = self._session.inputs[0].name
        self._output_name = self._session.outputs[0].name

    def run(self, x: Inputs) -> np.ndarray:
        try:
            return self._session.run(feed(x, self.input_name))[self._output_name]
        except EdgeFleetError as exc:
            raise CompressionError(f"inference failed: {exc.message}", where="model") from exc


def predict(session: Session, x: Inputs, batch_size: int) -> np.ndarray:
    """Run ``x`` through the session in batches and concatenate the outputs."""
    n = count(x)
    parts = [session.run(take(x, i, i + batch_size)) for i in range(0, n, batch_size)]
    return np.concatenate(parts, axis=0).astype(np.float32)


def latency_ms(session: Session, sample: Inputs, runs: int,
               warmup: int = 5) -> tuple[float, float]:
    """p50 and p95 latency in milliseconds of single-sample inference."""
    one = take(sample, 0, 1)
    for _ in range(warmup):
        session.run(one)
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        session.run(one)
        times.append((time.perf_counter() - start) * 1000.0)
    return float(np.percentile(times, 50)), float(np.percentile(times, 95))
