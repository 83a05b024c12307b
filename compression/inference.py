"""Run a model in its target runtime for evaluation, through the device's own runtime adapters.

:mod:`edgefleet.protocol.runtimes` is the code an agent runs, so the evaluation and the latency
in a report are what a device gets. This wrapper feeds one array (the first input) or a mapping
of arrays by input name, and returns every output by name; runtime errors become
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
    """A model loaded in ONNX Runtime or LiteRT: inputs in, every output out (by name)."""

    def __init__(self, runtime: Runtime, model: bytes) -> None:
        try:
            self._session = runtimes.open_session(runtime, model)
        except EdgeFleetError as exc:
            raise CompressionError(f"{runtime} runtime cannot load the model: {exc.message}",
                                   where="model") from exc
        self.input_name = self._session.inputs[0].name
        self.output_names = [o.name for o in self._session.outputs]

    def run(self, x: Inputs) -> dict[str, np.ndarray]:
        """Every output of the model, in the model's order."""
        try:
            outputs = self._session.run(feed(x, self.input_name))
        except EdgeFleetError as exc:
            raise CompressionError(f"inference failed: {exc.message}", where="model") from exc
        return {name: outputs[name] for name in self.output_names}


def predict(session: Session, x: Inputs, batch_size: int) -> dict[str, np.ndarray]:
    """Run ``x`` through the session in batches; every output's batches concatenated on the
    first axis (float32). An output without dimensions (a scalar) gives one value per batch."""
    n = count(x)
    parts = [session.run(take(x, i, i + batch_size)) for i in range(0, n, batch_size)]
    return {name: np.concatenate([np.atleast_1d(p[name]) for p in parts], axis=0).astype(np.float32)
            for name in session.output_names}


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
