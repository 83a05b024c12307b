"""Reading and rewriting TFLite flatbuffers through the schema shipped with LiteRT (no TensorFlow).

The rewrites work on the object API (:class:`tfl.ModelT`) and are packed back once
(:func:`pack_tflite`): operator codes in their modern form (:func:`normalise_codes`), float16
weights behind DEQUANTIZE turned into float32 constants (:func:`dequantize_fp16_weights`) and a
signature for files without one (:func:`add_signature`).
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass

import flatbuffers
import numpy as np
from ai_edge_litert import schema_py_generated as tfl

from edgefleet.compression.modes import Mode
from edgefleet.protocol.errors import CompressionError

TFLITE_IDENTIFIER = b"TFL3"

_OP_NAMES = {value: name for name, value in vars(tfl.BuiltinOperator).items()
             if not name.startswith("_")}

#: The int8 ``deprecated_builtin_code`` field holds codes up to 127; larger ones put this there.
_PLACEHOLDER = tfl.BuiltinOperator.PLACEHOLDER_FOR_GREATER_OP_CODES

#: Weight operators and the input slots their weights sit in.
WEIGHT_SLOTS = {
    "FULLY_CONNECTED": (1,), "CONV_2D": (1,), "DEPTHWISE_CONV_2D": (1,), "BATCH_MATMUL": (0, 1),
    "TRANSPOSE_CONV": (1,), "EMBEDDING_LOOKUP": (1,),
}

#: Bias inputs of those operators: dequantized with the weights (XNNPack cannot delegate a
#: quantized operator whose bias is computed at run time by a DEQUANTIZE).
BIAS_SLOTS = {"FULLY_CONNECTED": (2,), "CONV_2D": (2,), "DEPTHWISE_CONV_2D": (2,), "TRANSPOSE_CONV": (3,)}

_INTEGER_TYPES = {tfl.TensorType.INT8, tfl.TensorType.INT16, tfl.TensorType.INT4}


@dataclass(frozen=True)
class Operator:
    """One operator of the main subgraph: its builtin name and the name of its first output."""

    op_type: str
    output: str


@dataclass(frozen=True)
class WeightTensor:
    """A constant weight input of a weight operator, seen through a DEQUANTIZE if there is one."""

    op_index: int  # the weight operator in its subgraph
    slot: int  # which of its inputs
    tensor: int  # the constant tensor holding the data
    type: int  # its tfl.TensorType
    dequantize: int | None  # the DEQUANTIZE operator between the constant and the weight operator


def is_tflite(data: bytes) -> bool:
    """True when ``data`` carries the TFLite flatbuffer file identifier."""
    return len(data) >= 8 and bytes(data[4:8]) == TFLITE_IDENTIFIER


def load_tflite(data: bytes) -> tfl.ModelT:
    """Parse a TFLite flatbuffer; raise :class:`CompressionError` when malformed or truncated."""
    if not data:
        raise CompressionError("the model file is empty", where="model")
    if not is_tflite(data):
        raise CompressionError("not a TFLite model (no TFL3 file identifier)", where="model")
    try:
        model = tfl.ModelT.InitFromPackedBuf(bytearray(data), 0)
        subgraph = model.subgraphs[0]
        for op in subgraph.operators or []:
            model.operatorCodes[op.opcodeIndex]
            for index in list(op.inputs) + list(op.outputs):
                if index >= 0:
                    subgraph.tensors[index]
    except Exception as exc:  # flatbuffers raises struct.error/IndexError/TypeError on damage
        raise CompressionError(f"not a valid TFLite model (truncated or corrupt?): "
                               f"{type(exc).__name__}", where="model") from exc
    return model


def pack_tflite(model: tfl.ModelT) -> bytes:
    """Serialise ``model`` (with the TFL3 file identifier)."""
    builder = flatbuffers.Builder(1024)
    builder.Finish(model.Pack(builder), file_identifier=TFLITE_IDENTIFIER)
    return bytes(builder.Output())


def real_code(code: tfl.OperatorCodeT) -> int:
    """The operator's builtin code whichever field holds it (the schema's rule: the larger)."""
    return int(max(code.builtinCode, code.deprecatedBuiltinCode))


def normalise_codes(model: tfl.ModelT) -> bool:
    """Put the real code in ``builtin_code`` and ``deprecated_builtin_code`` (127 for codes above
    127), as current converters write them; older converters leave ``builtin_code`` 0 (ADD).
    True when anything changed."""
    changed = False
    for code in model.operatorCodes or []:
        real = real_code(code)
        if (code.builtinCode, code.deprecatedBuiltinCode) != (real, min(real, _PLACEHOLDER)):
            code.builtinCode, code.deprecatedBuiltinCode = real, min(real, _PLACEHOLDER)
            changed = True
    return changed


def normalise_operator_codes(data: bytes) -> bytes:
    """``data`` with every operator code in its modern form (unchanged bytes when already so)."""
    model = load_tflite(data)
    return pack_tflite(model) if normalise_codes(model) else bytes(data)


def _name(tensor: tfl.TensorT) -> str:
    name = tensor.name
    return name.decode() if isinstance(name, bytes) else str(name)


def _op_type(model: tfl.ModelT, op: tfl.OperatorT) -> str:
    builtin = real_code(model.operatorCodes[op.opcodeIndex])
    return str(_OP_NAMES.get(builtin, f"BUILTIN_{builtin}"))


def operators(model: tfl.ModelT) -> list[Operator]:
    subgraph = model.subgraphs[0]
    return [Operator(_op_type(model, op), _name(subgraph.tensors[op.outputs[0]]))
            for op in subgraph.operators or []]


def _is_constant(model: tfl.ModelT, tensor: tfl.TensorT) -> bool:
    if tensor.buffer <= 0 or tensor.buffer >= len(model.buffers or []):
        return False
    buffer = model.buffers[tensor.buffer]
    return (buffer.data is not None and len(buffer.data) > 0) or buffer.size > 0


def weight_tensors(model: tfl.ModelT, subgraph_index: int = 0,
                   slots: Mapping[str, tuple[int, ...]] = WEIGHT_SLOTS) -> list[WeightTensor]:
    """Every constant weight input of the weight operators (:data:`WEIGHT_SLOTS`, or ``slots``)
    of a subgraph, directly or behind a DEQUANTIZE (how float16 and weight-only int8 weights are
    stored)."""
    subgraph = model.subgraphs[subgraph_index]
    ops = subgraph.operators or []
    producer = {int(out): i for i, op in enumerate(ops) for out in op.outputs}
    result = []
    for i, op in enumerate(ops):
        for slot in slots.get(_op_type(model, op), ()):
            if slot >= len(op.inputs) or op.inputs[slot] < 0:
                continue
            index, dequantize = int(op.inputs[slot]), None
            source = producer.get(index)
            if source is not None and _op_type(model, ops[source]) == "DEQUANTIZE":
                index, dequantize = int(ops[source].inputs[0]), source
            tensor = subgraph.tensors[index]
            if _is_constant(model, tensor):
                result.append(WeightTensor(i, slot, index, int(tensor.type), dequantize))
    return result


def count_quantized_weights(data: bytes, mode: Mode | None = None) -> tuple[int, int]:
    """(quantized, all) weight tensors of the weight operators, over every subgraph.

    Quantized: stored as int8/int16/int4, or as float16 (behind DEQUANTIZE); with ``mode`` given,
    float16 counts only for :attr:`Mode.FP16` and the integer types only for the other modes.
    A tensor shared by several operators counts once.
    """
    model = load_tflite(data)
    quantized = total = 0
    for index in range(len(model.subgraphs)):
        seen: dict[int, int] = {w.tensor: w.type for w in weight_tensors(model, index)}
        total += len(seen)
        integer = sum(kind in _INTEGER_TYPES for kind in seen.values())
        half = sum(kind == tfl.TensorType.FLOAT16 for kind in seen.values())
        quantized += (integer if mode is not Mode.FP16 else 0) + (half if mode in (None, Mode.FP16) else 0)
    return quantized, total


def dequantize_fp16_weights(model: tfl.ModelT, outputs: Collection[str]) -> int:
    """Turn the float16 weights (and biases) behind DEQUANTIZE of the weight operators whose
    first output is in ``outputs`` into float32 constants feeding the operator directly
    (DEQUANTIZE removed), so an int8 quantizer reaches them. A DEQUANTIZE that also feeds
    anything else is left alone. Subgraph 0; returns how many weights were rewritten (biases
    not counted)."""
    subgraph = model.subgraphs[0]
    ops = subgraph.operators or []
    wanted = {i for i, op in enumerate(ops) if _name(subgraph.tensors[op.outputs[0]]) in outputs}
    uses: dict[int, list[tuple[int, int]]] = {}
    for i, op in enumerate(ops):
        for slot, index in enumerate(op.inputs):
            uses.setdefault(int(index), []).append((i, slot))
    graph_outputs = {int(t) for t in subgraph.outputs}
    buffer_refs: dict[int, int] = {}
    for sg in model.subgraphs:
        for tensor in sg.tensors or []:
            buffer_refs[tensor.buffer] = buffer_refs.get(tensor.buffer, 0) + 1
    weights = {w.dequantize: w for w in [*weight_tensors(model), *weight_tensors(model, 0, BIAS_SLOTS)]
               if w.dequantize is not None and w.type == tfl.TensorType.FLOAT16 and w.op_index in wanted}
    removed, rewritten = set(), 0
    for dequantize, w in weights.items():
        dequantized = int(ops[dequantize].outputs[0])
        consumers = uses.get(dequantized, [])
        if (dequantized in graph_outputs or len(uses.get(w.tensor, [])) != 1
                or any(i not in wanted or slot not in (*WEIGHT_SLOTS[_op_type(model, ops[i])],
                                                       *BIAS_SLOTS.get(_op_type(model, ops[i]), ()))
                       for i, slot in consumers)):
            continue
        tensor = subgraph.tensors[w.tensor]
        if model.buffers[tensor.buffer].data is None:  # stored outside the flatbuffer
            continue
        values = np.frombuffer(np.asarray(model.buffers[tensor.buffer].data, np.uint8).tobytes(),
                               np.float16).astype(np.float32)
        buffer = tfl.BufferT()
        buffer.data = np.frombuffer(values.tobytes(), np.uint8)
        if buffer_refs.get(tensor.buffer, 0) == 1:
            model.buffers[tensor.buffer] = buffer
        else:
            model.buffers.append(buffer)
            tensor.buffer = len(model.buffers) - 1
        tensor.type = tfl.TensorType.FLOAT32
        for i, slot in consumers:
            ops[i].inputs[slot] = w.tensor
        removed.add(dequantize)
        rewritten += w.slot in WEIGHT_SLOTS[_op_type(model, ops[w.op_index])]
    subgraph.operators = [op for i, op in enumerate(ops) if i not in removed]
    return rewritten


def add_signature(model: tfl.ModelT, key: str) -> bool:
    """Give a model without signatures one named ``key``, from subgraph 0's inputs and outputs
    (named after their tensors). True when one was added."""
    if model.signatureDefs:
        return False
    subgraph = model.subgraphs[0]

    def tensor_map(index: int) -> tfl.TensorMapT:
        entry = tfl.TensorMapT()
        entry.name, entry.tensorIndex = _name(subgraph.tensors[index]), int(index)
        return entry

    signature = tfl.SignatureDefT()
    signature.signatureKey, signature.subgraphIndex = key, 0
    signature.inputs = [tensor_map(i) for i in subgraph.inputs]
    signature.outputs = [tensor_map(i) for i in subgraph.outputs]
    model.signatureDefs = [signature]
    return True


def set_input_shapes(data: bytes, shapes: Mapping[str, Sequence[int | None]]) -> bytes:
    """``data`` with the stored shape of subgraph 0's dynamic inputs (``shape_signature`` -1)
    set to ``shapes`` (by tensor name; None keeps a dimension), the signature unchanged.

    Converters store such an input as e.g. ``[1, 1]`` (signature ``[-1, -1]``), a shape the
    model cannot run with (an STFT needs 512 samples): interpreters that allocate before being
    resized (litert-quantizer's calibration) then fail. Unchanged bytes when nothing applies.
    """
    model = load_tflite(data)
    subgraph = model.subgraphs[0]
    changed = False
    for index in subgraph.inputs if subgraph.inputs is not None else []:
        tensor = subgraph.tensors[index]
        wanted = shapes.get(_name(tensor))
        signature = list(tensor.shapeSignature) if tensor.shapeSignature is not None else None
        if wanted is None or signature is None or len(wanted) != len(signature):
            continue
        stored = [int(d) for d in tensor.shape]
        new = [s if w is None or sig >= 0 else int(w) for s, w, sig in zip(stored, wanted, signature, strict=True)]
        if new != stored:
            tensor.shape = new
            changed = True
    return pack_tflite(model) if changed else bytes(data)


def unique_tensor_names(model: tfl.ModelT) -> int:
    """Rename tensors so that every name is unique across all subgraphs (converters reuse e.g.
    ``arg0`` in each ``IF`` branch; litert-quantizer keys tensors by name). Subgraph 0 keeps its
    names; a later one's duplicate gets ``/subgraph<i>`` appended. How many were renamed."""
    seen: set[str] = set()
    renamed = 0
    for number, subgraph in enumerate(model.subgraphs):
        for tensor in subgraph.tensors or []:
            name = _name(tensor)
            if name in seen and number > 0:
                candidate, k = f"{name}/subgraph{number}", 1
                while candidate in seen:
                    candidate, k = f"{name}/subgraph{number}_{k}", k + 1
                tensor.name = candidate
                name = candidate
                renamed += 1
            seen.add(name)
    return renamed


def scalar_shapes(model: tfl.ModelT) -> int:
    """Give tensors stored without a shape (scalars, as older converters write them) the empty
    shape ``[]``, which means the same to LiteRT; litert-quantizer reads the shape as a list.
    How many were changed."""
    changed = 0
    for subgraph in model.subgraphs:
        for tensor in subgraph.tensors or []:
            if tensor.shape is None:
                tensor.shape = np.zeros(0, np.int32)
                changed += 1
    return changed
