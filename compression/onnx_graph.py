"""Loading and normalising ONNX graphs before they are quantized, pruned or exported.

Real-world exports use old opsets (upgraded here), hold weights in ``Constant`` nodes (also inside
control-flow subgraphs), leave nodes unnamed and use Gemm where the quantizers only handle MatMul;
these rewrites make such graphs uniform. Malformed or
truncated files become :class:`CompressionError` here, at the boundary.
"""

from __future__ import annotations

import logging
import re
from collections import Counter
from collections.abc import Iterator
from typing import Any

import numpy as np
import onnx
from google.protobuf.message import DecodeError  # no stubs (types-protobuf)
from onnx import helper, numpy_helper, version_converter

from edgefleet.compression.modes import Mode
from edgefleet.protocol.errors import CompressionError, UnsupportedModelError

logger = logging.getLogger(__name__)

MIN_OPSET = 13
_MIN_IR = 7  # the IR version opset 13 needs


def parse_onnx(data: bytes) -> onnx.ModelProto:
    """Parse ONNX bytes (no checks beyond a non-empty graph); :class:`CompressionError` when
    malformed or truncated."""
    if not data:
        raise CompressionError("the model file is empty", where="model")
    try:
        model = onnx.load_model_from_string(bytes(data))
    except (DecodeError, ValueError, RuntimeError) as exc:
        raise CompressionError(f"not a valid ONNX model (truncated or corrupt?): {exc}",
                               where="model") from exc
    if not model.graph.node:
        raise CompressionError("not a valid ONNX model: the graph has no nodes (truncated?)",
                               where="model")
    return model


def load_onnx(data: bytes, conversions: list[str] | None = None) -> onnx.ModelProto:
    """Parse and check ONNX bytes; raise :class:`CompressionError` on anything malformed.

    Opsets below :data:`MIN_OPSET` are upgraded with ``onnx.version_converter``; ``conversions``,
    when given, gets one line per conversion made. A conversion that fails raises
    :class:`UnsupportedModelError` naming the operator.
    """
    model = parse_onnx(data)
    try:
        onnx.checker.check_model(model)
    except onnx.checker.ValidationError as exc:
        first_line = str(exc).strip().splitlines()[0]
        raise CompressionError(f"ONNX model fails the checker: {first_line}", where="model") from exc
    opset = default_opset(model)
    if opset == 0:
        raise UnsupportedModelError("the model imports no ai.onnx opset", where="model.opset_import")
    if opset < MIN_OPSET:
        model = _upgrade(model, opset)
        if conversions is not None:
            conversions.append(f"opset {opset} -> {MIN_OPSET} (onnx.version_converter)")
        logger.info("upgraded the model from opset %d to %d", opset, MIN_OPSET)
    return model


def default_opset(model: onnx.ModelProto) -> int:
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)


def _upgrade(model: onnx.ModelProto, opset: int) -> onnx.ModelProto:
    try:
        converted = version_converter.convert_version(model, MIN_OPSET)
        converted.ir_version = max(converted.ir_version, _MIN_IR)
        onnx.checker.check_model(converted)
    except Exception as exc:  # the converter raises bare RuntimeError with C++ assertion text
        text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        text = text.split(" failed: ", 1)[-1]
        if "%s" in text:  # an unformatted C++ message: the operator name is glued to its end
            text = "no conversion is registered for it"
        operator = _named_operator(str(exc), model)
        raise UnsupportedModelError(
            f"opset {opset} -> {MIN_OPSET} conversion failed"
            + (f" at operator {operator}" if operator else "") + f": {text}",
            where="model.opset_import", hint=f"re-export the model with opset {MIN_OPSET} or newer") from exc
    return converted


def _named_operator(message: str, model: onnx.ModelProto) -> str | None:
    """The model's operator type the converter's message names (the longest that matches)."""
    op_types = sorted({n.op_type for g in all_graphs(model.graph) for n in g.node}, key=len, reverse=True)
    return next((op for op in op_types if re.search(rf"(?<![A-Za-z]){re.escape(op)}", message)), None)


def subgraphs(node: onnx.NodeProto) -> Iterator[onnx.GraphProto]:
    for attr in node.attribute:
        if attr.type == onnx.AttributeProto.GRAPH:
            yield attr.g
        elif attr.type == onnx.AttributeProto.GRAPHS:
            yield from attr.graphs


def all_graphs(graph: onnx.GraphProto) -> Iterator[onnx.GraphProto]:
    """``graph`` and every subgraph in it, depth first."""
    yield graph
    for node in graph.node:
        for sub in subgraphs(node):
            yield from all_graphs(sub)


def _constant_tensor(node: onnx.NodeProto) -> onnx.TensorProto | None:
    """The tensor of a ``Constant`` node holding a ``value`` (weights), named after its output."""
    value = next((a for a in node.attribute if a.name == "value"), None)
    if node.op_type != "Constant" or value is None or len(node.output) != 1:
        return None
    tensor = onnx.TensorProto()
    tensor.CopyFrom(value.t)
    tensor.name = node.output[0]
    return tensor


def _definitions(model: onnx.ModelProto) -> Counter[str]:
    """How often each value name is defined (input, initializer, node output) in all graphs."""
    defined: Counter[str] = Counter()
    for graph in all_graphs(model.graph):
        defined.update(i.name for i in graph.input)
        defined.update(t.name for t in graph.initializer)
        defined.update(o for n in graph.node for o in n.output if o)
    return defined


def _lift_constants(graph: onnx.GraphProto, main: onnx.GraphProto, defined: Counter[str]) -> int:
    """Turn ``graph``'s Constant weights (and its subgraphs') into initializers: of the main
    graph where the name is defined only once in the whole model (subgraphs see the main
    graph's values), else of the subgraph itself. A Constant that is a subgraph's output stays."""
    lifted = 0
    kept = []
    outputs = {o.name for o in graph.output}
    for node in graph.node:
        for sub in subgraphs(node):
            lifted += _lift_constants(sub, main, defined)
        tensor = _constant_tensor(node)
        if tensor is None or (graph is not main and tensor.name in outputs):
            kept.append(node)
            continue
        target = main if graph is main or defined[tensor.name] == 1 else graph
        target.initializer.append(tensor)
        lifted += 1
    if len(kept) < len(graph.node):
        del graph.node[:]
        graph.node.extend(kept)
    return lifted


def normalise(model: onnx.ModelProto) -> onnx.ModelProto:
    """Copy of ``model`` with Constant weights as initializers (also inside ``If``/``Loop``/
    ``Scan`` subgraphs) and every node uniquely named."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    lifted = _lift_constants(out.graph, out.graph, _definitions(out))
    if lifted:
        logger.info("moved %d Constant node(s) to initializers", lifted)
    seen: set[str] = set()
    index = 0
    for graph in all_graphs(out.graph):
        for node in graph.node:
            if not node.name or node.name in seen:
                node.name = f"{node.op_type.lower()}_{index}"
                while node.name in seen:
                    node.name += "_"
            seen.add(node.name)
            index += 1
    return out


def compact_names(model: onnx.ModelProto, keep_nodes: set[str]) -> None:
    """Rename every value but the model's inputs and outputs to a short name, in all graphs
    alike, and drop the names of nodes not in ``keep_nodes``: a quantizer's generated names
    ("conv1_output_QuantizeLinear_Output", ...) weigh more than small models' weights."""
    graph = model.graph
    kept = {v.name for v in graph.input} | {v.name for v in graph.output}
    short: dict[str, str] = {}

    def rename(name: str) -> str:
        if not name or name in kept:
            return name
        if name not in short:
            candidate = format(len(short), "x")
            while candidate in kept:
                candidate = "_" + candidate
            short[name] = candidate
        return short[name]

    for sub in all_graphs(graph):
        for tensor in sub.initializer:
            tensor.name = rename(tensor.name)
        for sparse in sub.sparse_initializer:
            sparse.values.name = rename(sparse.values.name)
            sparse.indices.name = rename(sparse.indices.name)
        for value in [*sub.input, *sub.output, *sub.value_info]:
            value.name = rename(value.name)
        for node in sub.node:
            node.input[:] = [rename(n) for n in node.input]
            node.output[:] = [rename(n) for n in node.output]
            if node.name not in keep_nodes:
                node.ClearField("name")  # not "": an empty name is still stored


#: Weight operators and the input slots that hold a weight when it is a constant.
_WEIGHT_INPUTS: dict[str, tuple[int, ...]] = {
    "MatMul": (0, 1), "Gemm": (0, 1), "Conv": (1,), "ConvTranspose": (1,), "Gather": (0,),
    "LSTM": (1, 2), "GRU": (1, 2), "RNN": (1, 2), "Attention": (1,),
    # as the quantizers write them
    "MatMulInteger": (0, 1), "ConvInteger": (1,), "QLinearConv": (3,), "QLinearMatMul": (0, 3),
    "MatMulIntegerToFloat": (0, 1), "DynamicQuantizeMatMul": (1,), "QGemm": (0, 3),
    "DynamicQuantizeLSTM": (1, 2), "QAttention": (1,), "MatMulNBits": (1,), "GatherBlockQuantized": (0,),
}
def weight_inputs(node: onnx.NodeProto) -> list[str]:
    """The names in ``node``'s weight slots (whether constant or not)."""
    return [node.input[i] for i in _WEIGHT_INPUTS.get(node.op_type, ()) if i < len(node.input) and node.input[i]]


#: Operators between a stored weight and its user (QDQ, layout and type changes).
_WEIGHT_PATH = {"DequantizeLinear", "Cast", "Transpose", "Reshape", "Identity", "Squeeze", "Unsqueeze", "Flatten"}
_T = onnx.TensorProto
_INTEGER_TYPES = {_T.INT8, _T.UINT8, _T.INT4, _T.UINT4, _T.INT16, _T.UINT16}
_HALF_TYPES = {_T.FLOAT16, _T.BFLOAT16}
_FLOAT_TYPES = {_T.FLOAT, _T.DOUBLE}


def count_quantized_weights(data: bytes, mode: Mode | None = None) -> tuple[int, int]:
    """(quantized, all) weight tensors of the weight operators, over every subgraph.

    A weight is a constant (initializer or Constant node) of a float or quantized type feeding
    a weight slot, directly or through DequantizeLinear/Cast/Transpose/Reshape...; it is
    quantized when stored as an integer type or as float16. With ``mode`` given (as in
    :func:`tflite_graph.count_quantized_weights`), float16 counts only for :attr:`Mode.FP16`
    and the integer types only for the other modes. A tensor shared by several operators counts
    once.
    """
    weights: dict[str, int] = {}
    _find_weights(parse_onnx(data).graph, "", {}, {}, weights)
    quantized = sum(1 for t in weights.values()
                    if (t in _INTEGER_TYPES and mode is not Mode.FP16)
                    or (t in _HALF_TYPES and mode in (None, Mode.FP16)))
    return quantized, len(weights)


#: A constant in scope: (where it is defined: graph path and name, data type).
_Stored = tuple[str, int]


def _find_weights(graph: onnx.GraphProto, path: str, outer: dict[str, _Stored],
                  outer_producers: dict[str, onnx.NodeProto], weights: dict[str, int]) -> None:
    """Add the weights ``graph`` (at ``path``) and its subgraphs feed to weight operators to
    ``weights`` (definition -> data type); names resolve as in ONNX: local first, then outer."""
    constants = {**outer, **{t.name: (f"{path}/{t.name}", t.data_type) for t in graph.initializer}}
    producers = dict(outer_producers)
    for node in graph.node:
        value = next((a for a in node.attribute if a.name == "value"), None)
        if node.op_type == "Constant" and value is not None and len(node.output) == 1:
            constants[node.output[0]] = (f"{path}/{node.output[0]}", value.t.data_type)
        producers.update({o: node for o in node.output if o})
    for index, node in enumerate(graph.node):
        for slot in _WEIGHT_INPUTS.get(node.op_type, ()):
            stored = _stored(node.input[slot] if slot < len(node.input) else "", constants, producers)
            if stored is not None and stored[1] in _INTEGER_TYPES | _HALF_TYPES | _FLOAT_TYPES:
                weights[stored[0]] = stored[1]
        for number, sub in enumerate(subgraphs(node)):
            _find_weights(sub, f"{path}/{index}.{number}", constants, producers, weights)


def _stored(name: str, constants: dict[str, _Stored], producers: dict[str, onnx.NodeProto]) -> _Stored | None:
    """The constant ``name`` is read from, following the weight path; None for activations."""
    for _ in range(8):
        if name in constants:
            return constants[name]
        node = producers.get(name)
        if node is None or node.op_type not in _WEIGHT_PATH or not node.input:
            return None
        name = node.input[0]
    return None


def initializers(model: onnx.ModelProto) -> dict[str, onnx.TensorProto]:
    return {t.name: t for t in model.graph.initializer}


def attribute(node: onnx.NodeProto, name: str, default: Any) -> Any:
    for attr in node.attribute:
        if attr.name == name:
            return helper.get_attribute_value(attr)
    return default


def gemm_to_matmul(model: onnx.ModelProto) -> onnx.ModelProto:
    """Rewrite plain Gemm nodes (constant B, alpha=beta=1, no transA) as MatMul + Add, in the
    main graph and in If/Loop/Scan bodies (whose weights normalise lifted to the main graph).

    onnxruntime's dynamic quantizer handles MatMul but not Gemm, and per-channel static
    quantization is reliable on MatMul.
    """
    out = onnx.ModelProto()
    out.CopyFrom(model)
    main = initializers(out)
    transposed: set[str] = set()  # a weight shared by several Gemms is transposed once
    # children before their parents: rewriting a parent's node list copies its nodes (and the
    # subgraphs in them), so the children must be final by then
    for graph in reversed(list(all_graphs(out.graph))):
        inits = {**main, **initializers_of(graph)}
        nodes = []
        for node in graph.node:
            if (node.op_type != "Gemm" or node.input[1] not in inits
                    or attribute(node, "transA", 0) or attribute(node, "alpha", 1.0) != 1.0
                    or attribute(node, "beta", 1.0) != 1.0):
                nodes.append(node)
                continue
            weight = inits[node.input[1]]
            if attribute(node, "transB", 0) and weight.name not in transposed:
                array = numpy_helper.to_array(weight).T
                weight.CopyFrom(numpy_helper.from_array(np.ascontiguousarray(array), weight.name))
                transposed.add(weight.name)
            elif not attribute(node, "transB", 0) and weight.name in transposed:
                nodes.append(node)  # the same weight used untransposed elsewhere: leave this one
                continue
            has_bias = len(node.input) > 2 and node.input[2]
            product = node.output[0] + "_matmul" if has_bias else node.output[0]
            nodes.append(helper.make_node("MatMul", [node.input[0], node.input[1]], [product],
                                          name=node.name))
            if has_bias:
                nodes.append(helper.make_node("Add", [product, node.input[2]], [node.output[0]],
                                              name=node.name + "_bias"))
        del graph.node[:]
        graph.node.extend(nodes)
    return out


def initializers_of(graph: onnx.GraphProto) -> dict[str, onnx.TensorProto]:
    return {t.name: t for t in graph.initializer}
