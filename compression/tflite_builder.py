"""Writing one-subgraph TFLite flatbuffers through the schema shipped with LiteRT (no TensorFlow).

:class:`TfliteBuilder` accumulates tensors, constant buffers and builtin operators, then packs
them with a ``serving_default`` signature (litert-quantizer calibrates through it).
"""

from __future__ import annotations

import hashlib

import flatbuffers
import numpy as np
from ai_edge_litert import schema_py_generated as tfl

from edgefleet.compression.tflite_graph import TFLITE_IDENTIFIER

SIGNATURE_KEY = "serving_default"

Shape = list[int | None]

FLOAT32 = np.dtype(np.float32)
INT32 = np.dtype(np.int32)

_TENSOR_TYPES = {
    FLOAT32: tfl.TensorType.FLOAT32,
    INT32: tfl.TensorType.INT32,
    np.dtype(np.int64): tfl.TensorType.INT64,
    np.dtype(np.bool_): tfl.TensorType.BOOL,
}

#: Operators whose first registered kernel version is above 1.
_VERSIONS = {tfl.BuiltinOperator.BROADCAST_TO: 2}


def options(name: str, **fields: object) -> tuple[object, int]:
    """A builtin options object ``<name>T`` with ``fields`` set, and its union type."""
    opts = getattr(tfl, f"{name}T")()
    for key, value in fields.items():
        setattr(opts, key, value)
    return opts, getattr(tfl.BuiltinOptions, name)


class TfliteBuilder:
    """Accumulates tensors, buffers and operators of one TFLite subgraph."""

    def __init__(self) -> None:
        self.tensors: list[tfl.TensorT] = []
        self.buffers: list[tfl.BufferT] = [tfl.BufferT()]  # buffer 0 is the empty sentinel
        self.operators: list[tfl.OperatorT] = []
        self.opcodes: dict[int, int] = {}
        self._names: set[str] = set()
        self._shared: dict[tuple[str, tuple[int, ...], bytes], int] = {}

    def tensor(self, name: str, shape: Shape, dtype: np.dtype = FLOAT32,
               data: np.ndarray | None = None) -> int:
        """A new tensor; unknown dimensions (None) are stored as 1 with ``shape_signature`` -1.
        A name already taken gets a numbered suffix (litert-quantizer needs unique names)."""
        unique, number = name, 1
        while unique in self._names:
            unique, number = f"{name}_{number}", number + 1
        self._names.add(unique)
        t = tfl.TensorT()
        t.name = unique
        t.type = _TENSOR_TYPES[np.dtype(dtype)]
        t.shape = [1 if d is None else int(d) for d in shape]
        if any(d is None for d in shape):
            t.shapeSignature = [-1 if d is None else int(d) for d in shape]
        t.buffer = 0
        if data is not None:
            buf = tfl.BufferT()
            buf.data = np.frombuffer(np.ascontiguousarray(data, dtype=dtype).tobytes(), np.uint8)
            self.buffers.append(buf)
            t.buffer = len(self.buffers) - 1
        self.tensors.append(t)
        return len(self.tensors) - 1

    def const(self, name: str, array: np.ndarray, shared: bool = False) -> int:
        """A constant tensor; int64 is stored as int32 and float64 as float32. ``shared``: one
        tensor for equal contents (weights several operators use, as ONNX shares initializers)."""
        array = np.asarray(array)
        if array.dtype == np.int64:
            array = array.astype(np.int32)
        elif array.dtype == np.float64:
            array = array.astype(np.float32)
        key = (array.dtype.str, array.shape, hashlib.sha256(np.ascontiguousarray(array).tobytes()).digest())
        if shared and key in self._shared:
            return self._shared[key]
        index = self.tensor(name, list(array.shape), array.dtype, array)
        if shared:
            self._shared[key] = index
        return index

    def op(self, code: int, inputs: list[int], outputs: list[int],
           opts: object | None = None, options_type: int = 0) -> None:
        if code not in self.opcodes:
            self.opcodes[code] = len(self.opcodes)
        op = tfl.OperatorT()
        op.opcodeIndex = self.opcodes[code]
        op.inputs = inputs
        op.outputs = outputs
        if opts is not None:
            op.builtinOptionsType = options_type
            op.builtinOptions = opts
        self.operators.append(op)

    def pack(self, inputs: list[tuple[str, int]], outputs: list[tuple[str, int]]) -> bytes:
        """The flatbuffer with one subgraph and a ``serving_default`` signature over (name, tensor)."""
        subgraph = tfl.SubGraphT()
        subgraph.tensors = self.tensors
        subgraph.inputs = [i for _, i in inputs]
        subgraph.outputs = [i for _, i in outputs]
        subgraph.operators = self.operators
        subgraph.name = "main"
        codes = []
        for code in sorted(self.opcodes, key=self.opcodes.__getitem__):
            oc = tfl.OperatorCodeT()
            oc.builtinCode = code
            oc.deprecatedBuiltinCode = min(code, tfl.BuiltinOperator.PLACEHOLDER_FOR_GREATER_OP_CODES)
            oc.version = _VERSIONS.get(code, 1)
            codes.append(oc)
        signature = tfl.SignatureDefT()
        signature.signatureKey = SIGNATURE_KEY
        signature.subgraphIndex = 0
        signature.inputs = [_tensor_map(name, i) for name, i in inputs]
        signature.outputs = [_tensor_map(name, i) for name, i in outputs]
        model = tfl.ModelT()
        model.version = 3
        model.description = "edgefleet.compression ONNX export"
        model.operatorCodes = codes
        model.subgraphs = [subgraph]
        model.buffers = self.buffers
        model.signatureDefs = [signature]
        builder = flatbuffers.Builder(1024)
        builder.Finish(model.Pack(builder), file_identifier=TFLITE_IDENTIFIER)
        return bytes(builder.Output())


def _tensor_map(name: str, index: int) -> tfl.TensorMapT:
    tm = tfl.TensorMapT()
    tm.name = name
    tm.tensorIndex = index
    return tm
