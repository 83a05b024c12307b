"""Bytes a quantized ONNX file does not need, removed without changing what it computes.

ONNX Runtime's quantizers write, for every per-channel static int8 weight, a vector of zero
points that are all 0 (symmetric weights), an int32 bias with a vector of zero points that are
all 0 and a per-channel bias scale that is exactly ``input scale * weight scale``, and one scalar
scale / zero point per activation, many of them equal. :func:`compact_quantized` removes that:

* **zero zero points of constants**: a ``DequantizeLinear`` of an initializer (a weight or a
  bias) whose zero point is all zeros loses that input (0 is the operator's default; ONNX
  Runtime's QDQ fusion fills it in). Dequantizations of activations keep theirs: a
  QuantizeLinear's zero point sets its output type, and a Q/DQ pair must agree;
* **computed bias scales**: a per-channel bias scale of a Conv/ConvTranspose/Gemm that equals,
  bit for bit, the float32 product of its input's and its weight's scales becomes a ``Mul`` of
  the two (ONNX Runtime folds it at load, before fusing the QDQ group);
* **one copy of each constant**: initializers of the main graph with the same type, shape and
  bytes are stored once;
* **unused initializers** are dropped; empty ``name``/``domain``/``doc_string`` fields of nodes
  are cleared and attributes equal to their default (``group = 1``, a DequantizeLinear's
  ``axis = 1``, strides and dilations of 1, pads of 0) dropped: a few bytes on each of hundreds
  of nodes.

The pass is pure (a ``ModelProto`` in, changed in place); outputs are bit-identical.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator

import numpy as np
import onnx
import onnx.defs
from onnx import helper, numpy_helper

from edgefleet.compression.onnx_graph import all_graphs, subgraphs

#: A computed bias scale costs a Mul node (about 20 bytes): worth it from this many channels on.
_MIN_COMPUTED_SCALE = 8
_BIASED = {"Conv", "ConvTranspose", "Gemm"}


def compact_quantized(model: onnx.ModelProto) -> None:
    """Remove, in place, what :mod:`onnx_compact` describes; the model computes the same."""
    _drop_zero_points(model.graph)
    _compute_bias_scales(model.graph)
    _dedupe_initializers(model.graph)
    _drop_unused_initializers(model.graph)
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    for graph in all_graphs(model.graph):
        for node in graph.node:
            for name in ("name", "domain", "doc_string"):
                if node.HasField(name) and not getattr(node, name):
                    node.ClearField(name)
            if opset and not node.domain:
                _drop_default_attributes(node, opset)


#: Attributes whose default (all ones / all zeros per spatial axis) the schema states in words only.
_SPATIAL_DEFAULTS = {"strides": 1, "dilations": 1, "pads": 0}
_SPATIAL_OPS = {"Conv", "ConvTranspose", "ConvInteger", "MaxPool", "AveragePool", "LpPool"}


def _drop_default_attributes(node: onnx.NodeProto, opset: int) -> None:
    try:
        schema = onnx.defs.get_schema(node.op_type, opset)
    except onnx.defs.SchemaError:  # not a standard operator at this opset: leave it alone
        return
    kept = []
    for attr in node.attribute:
        value = helper.get_attribute_value(attr)
        declared = schema.attributes.get(attr.name)
        default = declared.default_value if declared is not None else None
        if default is not None and default.ByteSize() and helper.get_attribute_value(default) == value:
            continue
        if (node.op_type in _SPATIAL_OPS and attr.name in _SPATIAL_DEFAULTS and isinstance(value, list)
                and value and all(v == _SPATIAL_DEFAULTS[attr.name] for v in value)):
            continue
        kept.append(attr)
    if len(kept) != len(node.attribute):
        del node.attribute[:]
        node.attribute.extend(kept)


def _drop_zero_points(main: onnx.GraphProto) -> None:
    outer = {t.name: t for t in main.initializer}
    for graph in all_graphs(main):
        visible = {**outer, **{t.name: t for t in graph.initializer}}
        for node in graph.node:
            if (node.op_type == "DequantizeLinear" and len(node.input) == 3
                    and node.input[0] in visible and node.input[2] in visible
                    and not numpy_helper.to_array(visible[node.input[2]]).any()):
                del node.input[2]


def _compute_bias_scales(graph: onnx.GraphProto) -> None:
    inits = {t.name: t for t in graph.initializer}
    producers = {out: node for node in graph.node for out in node.output}
    uses = Counter(name for g in all_graphs(graph) for node in g.node for name in node.input)
    taken = _all_names(graph)
    muls = []
    for node in graph.node:
        if node.op_type not in _BIASED or len(node.input) < 3:
            continue
        dx, dw, db = (producers.get(name) for name in node.input[:3])
        if dx is None or dw is None or db is None or any(
                d.op_type != "DequantizeLinear" or len(d.input) < 2 for d in (dx, dw, db)):
            continue
        names = (dx.input[1], dw.input[1], db.input[1])
        if (not all(name in inits for name in names) or db.input[0] not in inits
                or inits[db.input[0]].data_type != onnx.TensorProto.INT32 or uses[db.input[1]] != 1):
            continue
        sx, sw, sb = (numpy_helper.to_array(inits[name]) for name in names)
        if sb.size < _MIN_COMPUTED_SCALE or sx.size != 1 or sx.dtype != np.float32:
            continue
        product = (sx * sw).astype(np.float32)
        if product.shape != sb.shape or not np.array_equal(product.view(np.int32), sb.view(np.int32)):
            continue
        output = _fresh(f"{db.input[1]}_product", taken)
        muls.append(helper.make_node("Mul", [dx.input[1], dw.input[1]], [output]))
        db.input[1] = output
    if muls:
        nodes = list(graph.node)
        del graph.node[:]
        graph.node.extend([*muls, *nodes])


def _dedupe_initializers(graph: onnx.GraphProto) -> None:
    """Main-graph initializers with equal type, shape and bytes stored once; graph inputs and
    outputs keep their own."""
    interface = {v.name for g in all_graphs(graph) for v in [*g.input, *g.output]}
    groups: dict[tuple[int, tuple[int, ...]], list[onnx.TensorProto]] = {}
    for tensor in graph.initializer:
        if (tensor.name not in interface and tensor.data_type != onnx.TensorProto.STRING
                and tensor.data_location != onnx.TensorProto.EXTERNAL):
            groups.setdefault((tensor.data_type, tuple(tensor.dims)), []).append(tensor)
    rename: dict[str, str] = {}
    for tensors in groups.values():
        if len(tensors) < 2:
            continue
        first: dict[bytes, str] = {}
        for tensor in tensors:
            content = numpy_helper.to_array(tensor).tobytes()
            rename.setdefault(tensor.name, first.setdefault(content, tensor.name))
    rename = {old: new for old, new in rename.items() if old != new}
    if rename:
        _rename_inputs(graph, rename)


def _rename_inputs(graph: onnx.GraphProto, rename: dict[str, str]) -> None:
    """Rename node inputs in ``graph`` and its subgraphs, except where a subgraph defines the
    name itself (it shadows the outer one)."""
    for node in graph.node:
        node.input[:] = [rename.get(name, name) for name in node.input]
        for sub in subgraphs(node):
            local = _defined(sub)
            inner = {old: new for old, new in rename.items() if old not in local and new not in local}
            if inner:
                _rename_inputs(sub, inner)


def _drop_unused_initializers(graph: onnx.GraphProto) -> None:
    """Drop the initializers of ``graph`` and of its subgraphs that nothing in scope reads."""
    used = _referenced(graph)
    kept = [t for t in graph.initializer if t.name in used]
    if len(kept) != len(graph.initializer):
        del graph.initializer[:]
        graph.initializer.extend(kept)
    for node in graph.node:
        for sub in subgraphs(node):
            _drop_unused_initializers(sub)


def _referenced(graph: onnx.GraphProto) -> set[str]:
    """Names ``graph`` reads: its nodes' inputs, its outputs, and what its subgraphs read from
    outside themselves."""
    names = {name for node in graph.node for name in node.input} | {v.name for v in graph.output}
    for node in graph.node:
        for sub in subgraphs(node):
            names |= _referenced(sub) - _defined(sub)
    return names


def _defined(graph: onnx.GraphProto) -> set[str]:
    return ({t.name for t in graph.initializer} | {v.name for v in graph.input}
            | {out for node in graph.node for out in node.output})


def _all_names(graph: onnx.GraphProto) -> set[str]:
    return {name for g in all_graphs(graph) for name in _names(g)}


def _names(graph: onnx.GraphProto) -> Iterator[str]:
    yield from _defined(graph)
    for node in graph.node:
        yield from node.input


def _fresh(base: str, taken: set[str]) -> str:
    name = base
    while name in taken:
        name += "_"
    taken.add(name)
    return name
