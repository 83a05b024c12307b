"""Run a model in its target runtime (ONNX Runtime or LiteRT) for evaluation and calibration.

A thin adapter: one input array in, the first output array out, with the batch dimension
resized as needed. Runtime errors are translated into :class:`CompressionError`.
"""

from __future__ import annotations

import logging
import time
from typing import Literal, Protocol

import numpy as np

from edgefleet.protocol.errors import CompressionError

logger = logging.getLogger(__name__)

Runtime = Literal["onnx", "tflite"]


class Session(Protocol):
    input_name: str

    def run(self, x: np.ndarray) -> np.ndarray: ...


class OnnxSession:
    def __init__(self, model: bytes) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        options.log_severity_level = 3
        try:
            self._session = ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own untyped errors
            raise CompressionError(f"ONNX Runtime cannot load the model: {exc}",
                                   where="model") from exc
        self.input_name = self._session.get_inputs()[0].name
        self._output_name = self._session.get_outputs()[0].name

    def run(self, x: np.ndarray) -> np.ndarray:
        try:
            return self._session.run([self._output_name], {self.input_name: x})[0]
        except Exception as exc:
            raise CompressionError(f"ONNX Runtime inference failed: {exc}", where="model") from exc


class TfliteSession:
    def __init__(self, model: bytes) -> None:
        from ai_edge_litert.interpreter import Interpreter

        self._model = bytes(model)  # the interpreter keeps a pointer into this buffer
        try:
            self._interpreter = Interpreter(model_content=self._model, num_threads=1)
            self._interpreter.allocate_tensors()
        except Exception as exc:  # LiteRT raises ValueError/RuntimeError with C++ text
            raise CompressionError(f"LiteRT cannot load the model: {exc}", where="model") from exc
        detail = self._interpreter.get_input_details()[0]
        self.input_name = detail["name"]
        self._input_index = detail["index"]
        self._output_index = self._interpreter.get_output_details()[0]["index"]
        self._shape = tuple(detail["shape"])

    def run(self, x: np.ndarray) -> np.ndarray:
        try:
            if tuple(x.shape) != self._shape:
                self._interpreter.resize_tensor_input(self._input_index, list(x.shape))
                self._interpreter.allocate_tensors()
                self._shape = tuple(x.shape)
            self._interpreter.set_tensor(self._input_index, np.ascontiguousarray(x))
            self._interpreter.invoke()
            return self._interpreter.get_tensor(self._output_index).copy()
        except Exception as exc:
            raise CompressionError(f"LiteRT inference failed: {exc}", where="model") from exc


def open_session(runtime: Runtime, model: bytes) -> Session:
    if runtime == "onnx":
        return OnnxSession(model)
    if runtime == "tflite":
        return TfliteSession(model)
    raise CompressionError(f"unknown runtime {runtime!r}", where="runtime",
                           hint="use 'onnx' or 'tflite'")


def predict(session: Session, x: np.ndarray, batch_size: int) -> np.ndarray:
    """Run ``x`` through the session in batches and concatenate the outputs."""
    parts = [session.run(x[i:i + batch_size]) for i in range(0, len(x), batch_size)]
    return np.concatenate(parts, axis=0).astype(np.float32)


def latency_ms(session: Session, sample: np.ndarray, runs: int, warmup: int = 5) -> tuple[float, float]:
    """p50 and p95 latency in milliseconds of single-sample inference."""
    one = sample[:1]
    for _ in range(warmup):
        session.run(one)
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        session.run(one)
        times.append((time.perf_counter() - start) * 1000.0)
    return float(np.percentile(times, 50)), float(np.percentile(times, 95))
