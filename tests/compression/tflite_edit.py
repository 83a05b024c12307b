"""Edit TFLite flatbuffers the way real converters and packages leave them (test helper).

Independent of the code under test: parses with the LiteRT schema's object API and re-packs
with a plain ``flatbuffers.Builder``.
"""

from __future__ import annotations

import flatbuffers
import numpy as np
from ai_edge_litert import schema_py_generated as tfl

PLACEHOLDER = tfl.BuiltinOperator.PLACEHOLDER_FOR_GREATER_OP_CODES


def parse(data: bytes) -> tfl.ModelT:
    return tfl.ModelT.InitFromPackedBuf(bytearray(data), 0)


def pack(model: tfl.ModelT) -> bytes:
    builder = flatbuffers.Builder(1024)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output())


def codes(data: bytes) -> list[tuple[int, int]]:
    """(builtin_code, deprecated_builtin_code) of every operator code."""
    return [(c.builtinCode, c.deprecatedBuiltinCode) for c in parse(data).operatorCodes]


def op_types(data: bytes) -> list[int]:
    """The real builtin code of every operator of subgraph 0."""
    model = parse(data)
    return [max(model.operatorCodes[op.opcodeIndex].builtinCode,
                model.operatorCodes[op.opcodeIndex].deprecatedBuiltinCode)
            for op in model.subgraphs[0].operators]


def deprecated_codes(data: bytes, extra: tuple[int, ...] = ()) -> bytes:
    """Operator codes as older converters write them: the code in ``deprecated_builtin_code`` and
    ``builtin_code`` 0 (ADD); codes above 127 as 127 plus the real one in ``builtin_code``.
    ``extra`` adds unused operator codes (to reach codes above 127)."""
    model = parse(data)
    for code in extra:
        entry = tfl.OperatorCodeT()
        entry.builtinCode, entry.version = code, 1
        model.operatorCodes.append(entry)
    for entry in model.operatorCodes:
        real = max(entry.builtinCode, entry.deprecatedBuiltinCode)
        if real > PLACEHOLDER:
            entry.builtinCode, entry.deprecatedBuiltinCode = real, PLACEHOLDER
        else:
            entry.builtinCode, entry.deprecatedBuiltinCode = 0, real
    return pack(model)


def without_signatures(data: bytes) -> bytes:
    model = parse(data)
    model.signatureDefs = []
    return pack(model)


def fp16_weights(data: bytes, biases: bool = False) -> bytes:
    """Store the weights (and with ``biases`` the biases) of every FULLY_CONNECTED as float16
    behind a DEQUANTIZE (fp16 -> fp32), as float16 converter output does."""
    model = parse(data)
    subgraph = model.subgraphs[0]
    dequantize = next((i for i, c in enumerate(model.operatorCodes)
                       if max(c.builtinCode, c.deprecatedBuiltinCode) == tfl.BuiltinOperator.DEQUANTIZE),
                      None)
    if dequantize is None:
        entry = tfl.OperatorCodeT()
        entry.builtinCode = entry.deprecatedBuiltinCode = tfl.BuiltinOperator.DEQUANTIZE
        entry.version = 1
        model.operatorCodes.append(entry)
        dequantize = len(model.operatorCodes) - 1
    fc = [i for i, c in enumerate(model.operatorCodes)
          if max(c.builtinCode, c.deprecatedBuiltinCode) == tfl.BuiltinOperator.FULLY_CONNECTED]
    inserted = []
    for op, slot in [(op, slot) for op in subgraph.operators if op.opcodeIndex in fc
                     for slot in ((1, 2) if biases else (1,)) if slot < len(op.inputs) and op.inputs[slot] >= 0]:
        weight = subgraph.tensors[op.inputs[slot]]
        values = np.frombuffer(np.asarray(model.buffers[weight.buffer].data, np.uint8).tobytes(),
                               np.float32)
        buffer = tfl.BufferT()
        buffer.data = np.frombuffer(values.astype(np.float16).tobytes(), np.uint8)
        model.buffers[weight.buffer] = buffer
        weight.type = tfl.TensorType.FLOAT16
        dequantized = tfl.TensorT()
        dequantized.name = (weight.name.decode() if isinstance(weight.name, bytes) else weight.name) + "/dequantized"
        dequantized.shape, dequantized.type, dequantized.buffer = list(weight.shape), tfl.TensorType.FLOAT32, 0
        subgraph.tensors.append(dequantized)
        new = tfl.OperatorT()
        new.opcodeIndex, new.inputs, new.outputs = dequantize, [op.inputs[slot]], [len(subgraph.tensors) - 1]
        inserted.append(new)
        op.inputs[slot] = len(subgraph.tensors) - 1
    subgraph.operators = inserted + list(subgraph.operators)
    return pack(model)
