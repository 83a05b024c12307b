"""Inference runtimes behind one interface: ONNX Runtime and LiteRT/TFLite.

They live in ``protocol`` because the bundle format defines what a smoke test means: the
builder computes a bundle's expected outputs with exactly the code a device uses to check
them. The runtime libraries are imported lazily, so importing this module costs nothing and a
device only needs the runtime its bundles use. LiteRT is ``ai_edge_litert``; a device that has
only the older ``tflite_runtime`` falls back to it.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Mapping
from typing import Protocol

import numpy as np
from pydantic import BaseModel

from edgefleet.protocol.errors import InferenceError, RuntimeUnavailableError
from edgefleet.protocol.vocabulary import Reason, Runtime


class TensorSpec(BaseModel):
    name: str
    dtype: str
    shape: list[int | None]


class Session(Protocol):
    @property
    def runtime(self) -> str: ...

    inputs: list[TensorSpec]
    outputs: list[TensorSpec]

    def run(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]: ...


_ORT_DTYPES = {"tensor(float)": "float32", "tensor(float16)": "float16", "tensor(double)": "float64",
               "tensor(int64)": "int64", "tensor(int32)": "int32", "tensor(int8)": "int8",
               "tensor(uint8)": "uint8", "tensor(bool)": "bool"}


def _tflite_module() -> str | None:
    for name in ("ai_edge_litert.interpreter", "tflite_runtime.interpreter"):
        if importlib.util.find_spec(name.split(".")[0]) is not None:
            return name
    return None


def available_runtimes() -> list[Runtime]:
    found: list[Runtime] = []
    if importlib.util.find_spec("onnxruntime") is not None:
        found.append(Runtime.ONNX)
    if _tflite_module() is not None:
        found.append(Runtime.TFLITE)
    return found


def _check_inputs(specs: list[TensorSpec], inputs: Mapping[str, np.ndarray]) -> None:
    names = {s.name for s in specs}
    missing = names - set(inputs)
    extra = set(inputs) - names
    if missing or extra:
        raise InferenceError(f"inputs do not match the model: missing {sorted(missing)}, unexpected {sorted(extra)}",
                             code=Reason.BAD_INPUT, where="inputs")
    for s in specs:
        arr = inputs[s.name]
        if not _fits(s, arr):
            raise InferenceError(f"input {s.name!r} has shape {list(arr.shape)}, model expects {s.shape}",
                                 code=Reason.BAD_INPUT, where=f"inputs.{s.name}")


def _fits(spec: TensorSpec, arr: np.ndarray) -> bool:
    """Whether ``arr`` has the spec's rank and fixed dimensions (the batch dimension is free)."""
    if arr.ndim != len(spec.shape):
        return False
    return all(d is None or d == a for d, a in zip(spec.shape[1:], arr.shape[1:], strict=True))


def _as_arrays(inputs: Mapping[str, np.ndarray], dtypes: Mapping[str, np.dtype]) -> dict[str, np.ndarray]:
    """Inputs (arrays or nested lists, e.g. from JSON) as arrays of the model's dtypes."""
    try:
        return {k: np.asarray(v, dtype=dtypes.get(k)) for k, v in inputs.items()}
    except (ValueError, TypeError) as exc:  # ragged lists, strings for numbers, ...
        raise InferenceError(f"inputs cannot be converted to the model's types: {exc}".splitlines()[0],
                             code=Reason.BAD_INPUT, where="inputs") from None


class OnnxSession:
    runtime = Runtime.ONNX

    def __init__(self, model: bytes, threads: int = 1) -> None:
        if importlib.util.find_spec("onnxruntime") is None:
            raise RuntimeUnavailableError("ONNX Runtime is not installed", where="runtime onnx",
                                          hint="pip install 'edgefleet[agent]'")
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        opts.log_severity_level = 3
        try:
            self._sess = ort.InferenceSession(model, sess_options=opts, providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own untyped errors
            raise InferenceError(f"ONNX Runtime cannot load the model: {exc}".splitlines()[0],
                                 code=Reason.BAD_MODEL, where="model") from None
        self.inputs = [TensorSpec(name=i.name, dtype=_ORT_DTYPES.get(i.type, i.type),
                                  shape=[d if isinstance(d, int) else None for d in i.shape])
                       for i in self._sess.get_inputs()]
        self.outputs = [TensorSpec(name=o.name, dtype=_ORT_DTYPES.get(o.type, o.type),
                                   shape=[d if isinstance(d, int) else None for d in o.shape])
                        for o in self._sess.get_outputs()]
        self._output_names = [o.name for o in self.outputs]
        self._dtypes = {s.name: np.dtype(s.dtype) for s in self.inputs}

    def run(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        feed = _as_arrays(inputs, self._dtypes)
        try:
            out = self._sess.run(self._output_names, feed)
        except Exception as exc:
            _check_inputs(self.inputs, feed)
            raise InferenceError(f"inference failed: {exc}".splitlines()[0]) from None
        return dict(zip(self._output_names, out, strict=True))


class TFLiteSession:
    runtime = Runtime.TFLITE

    def __init__(self, model: bytes, threads: int = 1) -> None:
        module = _tflite_module()
        if module is None:
            raise RuntimeUnavailableError("no LiteRT/TFLite interpreter installed", where="runtime tflite",
                                          hint="pip install 'edgefleet[agent,tflite]'")
        Interpreter = importlib.import_module(module).Interpreter
        try:
            self._interp = Interpreter(model_content=bytes(model), num_threads=threads)
            self._in = self._interp.get_input_details()
        except Exception as exc:  # the interpreter raises ValueError/RuntimeError with C++ text
            raise InferenceError(f"LiteRT cannot load the model: {exc}".splitlines()[0],
                                 code=Reason.BAD_MODEL, where="model") from None
        try:
            self._interp.allocate_tensors()
            self._allocated = True
        except Exception as exc:
            # a dynamic input stored as a shape the model cannot run (e.g. [1, 1] for audio of any
            # length) is allocated once resized to the first data given
            if not any(int(s) < 0 for d in self._in for s in d.get("shape_signature", d["shape"])):
                raise InferenceError(f"LiteRT cannot load the model: {exc}".splitlines()[0],
                                     code=Reason.BAD_MODEL, where="model") from None
            self._allocated = False
        self._out = self._interp.get_output_details()
        self.inputs = [TensorSpec(name=d["name"], dtype=np.dtype(d["dtype"]).name,
                                  shape=[None if s < 0 else int(s) for s in d.get("shape_signature", d["shape"])])
                       for d in self._in]
        self.outputs = [TensorSpec(name=d["name"], dtype=np.dtype(d["dtype"]).name,
                                   shape=[None if s < 0 else int(s) for s in d.get("shape_signature", d["shape"])])
                        for d in self._out]
        self._shapes = {d["name"]: tuple(int(v) for v in d["shape"]) for d in self._in}

    def run(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        arrays = _as_arrays(inputs, {d["name"]: np.dtype(d["dtype"]) for d in self._in})
        _check_inputs(self.inputs, arrays)
        feed = {d["name"]: arrays[d["name"]] for d in self._in}
        try:
            # every input resized to the shape its array has (the batch of per-sample inputs, the
            # dynamic dims of e.g. audio of any length; shared inputs such as a state keep theirs)
            changed = [d for d in self._in if feed[d["name"]].shape != self._shapes[d["name"]]]
            for d in changed:
                self._interp.resize_tensor_input(d["index"], list(feed[d["name"]].shape))
                self._shapes[d["name"]] = feed[d["name"]].shape
            if changed or not self._allocated:
                self._interp.allocate_tensors()
                self._allocated = True
            for d in self._in:
                self._interp.set_tensor(d["index"], feed[d["name"]])
            self._interp.invoke()
            return {d["name"]: self._interp.get_tensor(d["index"]).copy() for d in self._out}
        except (ValueError, RuntimeError) as exc:
            raise InferenceError(f"inference failed: {exc}".splitlines()[0]) from None


def open_session(runtime: str, model: bytes, *, threads: int = 1) -> Session:
    """Load ``model`` in ``runtime`` ("onnx" or "tflite")."""
    if runtime == Runtime.ONNX:
        return OnnxSession(model, threads)
    if runtime == Runtime.TFLITE:
        return TFLiteSession(model, threads)
    raise RuntimeUnavailableError(f"unknown runtime {runtime!r}", where="runtime", hint="use 'onnx' or 'tflite'")
