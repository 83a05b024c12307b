"""Loading and normalising ONNX graphs before they are quantized, pruned or exported.

Real-world exports hold weights in ``Constant`` nodes, leave nodes unnamed and use Gemm where
the quantizers only handle MatMul; these rewrites make such graphs uniform. Malformed or
truncated files become :class:`CompressionError` here, at the boundary.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import onnx
from google.protobuf.message import DecodeError  # no stubs (types-protobuf)
from onnx import helper, numpy_helper

from edgefleet.protocol.errors import CompressionError, UnsupportedModelError

logger = logging.getLogger(__name__)

MIN_OPSET = 13
_CONTROL_FLOW = {"If", "Loop", "Scan"}


def load_onnx(data: bytes) -> onnx.ModelProto:
    """Parse and check ONNX bytes; raise :class:`CompressionError` on anything malformed."""
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
    try:
        onnx.checker.check_model(model)
    except onnx.checker.ValidationError as exc:
        first_line = str(exc).strip().splitlines()[0]
        raise CompressionError(f"ONNX model fails the checker: {first_line}", where="model") from exc
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    if opset < MIN_OPSET:
        raise UnsupportedModelError(f"opset {opset} is too old (need {MIN_OPSET}+)",
                                    where="model.opset_import",
                                    hint="re-export the model with a newer opset")
    return model


def has_control_flow(model: onnx.ModelProto) -> bool:
    return any(node.op_type in _CONTROL_FLOW for node in model.graph.node)


def normalise(model: onnx.ModelProto) -> onnx.ModelProto:
    """Copy of ``model`` with Constant weights as initializers and every node uniquely named."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    graph = out.graph
    kept = []
    for node in graph.node:
        value = next((a for a in node.attribute if a.name == "value"), None)
        if node.op_type == "Constant" and value is not None and len(node.output) == 1:
            tensor = onnx.TensorProto()
            tensor.CopyFrom(value.t)
            tensor.name = node.output[0]
            graph.initializer.append(tensor)
        else:
            kept.append(node)
    if len(kept) < len(graph.node):
        logger.info("moved %d Constant node(s) to initializers", len(graph.node) - len(kept))
    del graph.node[:]
    graph.node.extend(kept)
    seen: set[str] = set()
    for i, node in enumerate(graph.node):
        if not node.name or node.name in seen:
            node.name = f"{node.op_type.lower()}_{i}"
        seen.add(node.name)
    return out


def initializers(model: onnx.ModelProto) -> dict[str, onnx.TensorProto]:
    return {t.name: t for t in model.graph.initializer}


def attribute(node: onnx.NodeProto, name: str, default: Any) -> Any:
    for attr in node.attribute:
        if attr.name == name:
            return helper.get_attribute_value(attr)
    return default


def gemm_to_matmul(model: onnx.ModelProto) -> onnx.ModelProto:
    """Rewrite plain Gemm nodes (constant B, alpha=beta=1, no transA) as MatMul + Add.

    onnxruntime's dynamic quantizer handles MatMul but not Gemm, and per-channel static
    quantization is reliable on MatMul.
    """
    out = onnx.ModelProto()
    out.CopyFrom(model)
    inits = initializers(out)
    nodes = []
    for node in out.graph.node:
        if (node.op_type != "Gemm" or node.input[1] not in inits
                or attribute(node, "transA", 0) or attribute(node, "alpha", 1.0) != 1.0
                or attribute(node, "beta", 1.0) != 1.0):
            nodes.append(node)
            continue
        weight = inits[node.input[1]]
        if attribute(node, "transB", 0):
            array = numpy_helper.to_array(weight).T
            weight.CopyFrom(numpy_helper.from_array(np.ascontiguousarray(array), weight.name))
        has_bias = len(node.input) > 2 and node.input[2]
        product = node.output[0] + "_matmul" if has_bias else node.output[0]
        nodes.append(helper.make_node("MatMul", [node.input[0], node.input[1]], [product],
                                      name=node.name))
        if has_bias:
            nodes.append(helper.make_node("Add", [product, node.input[2]], [node.output[0]],
                                          name=node.name + "_bias"))
    del out.graph.node[:]
    out.graph.node.extend(nodes)
    return out
