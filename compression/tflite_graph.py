"""Reading TFLite flatbuffers through the schema shipped with LiteRT (no TensorFlow)."""

from __future__ import annotations

from dataclasses import dataclass

from ai_edge_litert import schema_py_generated as tfl

from edgefleet.protocol.errors import CompressionError

TFLITE_IDENTIFIER = b"TFL3"

_OP_NAMES = {value: name for name, value in vars(tfl.BuiltinOperator).items()
             if not name.startswith("_")}


@dataclass(frozen=True)
class Operator:
    """One operator of the main subgraph: its builtin name and the name of its first output."""

    op_type: str
    output: str


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


def operators(model: tfl.ModelT) -> list[Operator]:
    subgraph = model.subgraphs[0]
    result = []
    for op in subgraph.operators or []:
        code = model.operatorCodes[op.opcodeIndex]
        builtin = max(code.builtinCode, code.deprecatedBuiltinCode)
        name = subgraph.tensors[op.outputs[0]].name
        result.append(Operator(_OP_NAMES.get(builtin, f"BUILTIN_{builtin}"),
                               name.decode() if isinstance(name, bytes) else name))
    return result
