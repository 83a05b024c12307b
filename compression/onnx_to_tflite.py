"""Export ONNX to TFLite without TensorFlow, through the flatbuffer schema shipped with LiteRT.

ONNX is NCHW, TFLite convolutions and pools are NHWC. Every value keeps its ONNX meaning and
is stored in one of two layouts: ``PLAIN`` (exactly the ONNX tensor) or ``NHWC`` (a 4-D ONNX
NCHW tensor stored channels-last). Convolutions, pools and resizes work in NHWC; elementwise
ops, Pad, Slice, Split, Concat and reductions work in whatever layout their input has (axes
mapped); shape-sensitive ops (Reshape, Flatten, Transpose, Softmax, MatMul) work on PLAIN
tensors; TRANSPOSE ops are inserted where the layout changes. Inputs and outputs keep their
ONNX layout and names, so one ONNX model and its TFLite export are fed the same arrays.

Before conversion, BatchNormalization is folded into the Conv before it (:func:`fold_batch_norm`);
subgraphs on constants are evaluated (onnx.reference) and shape arithmetic (Shape → Gather →
Concat → Reshape) is tracked symbolically. The operator table is in docs/compression.md; anything
else raises :class:`UnsupportedModelError` naming the operator and node.
"""

from __future__ import annotations

import functools
import logging
import math
from collections.abc import Callable, Mapping, Sequence
from enum import Enum

import numpy as np
import onnx
from ai_edge_litert import schema_py_generated as tfl
from onnx import numpy_helper
from onnx.reference import ReferenceEvaluator

from edgefleet.compression.onnx_graph import all_graphs, attribute, default_opset, load_onnx, normalise, subgraphs
from edgefleet.compression.resize_modes import SIMPLE, Axis, linear_flags, nearest_flags
from edgefleet.compression.tflite_builder import FLOAT32, INT32, SIGNATURE_KEY, Shape, TfliteBuilder, options
from edgefleet.protocol.errors import UnsupportedModelError

__all__ = ["SIGNATURE_KEY", "export_model", "export_tflite", "fix_input_shapes", "fold_batch_norm"]

logger = logging.getLogger(__name__)

Op = tfl.BuiltinOperator


class Layout(Enum):
    PLAIN = "plain"
    NHWC = "nhwc"


_TO_NHWC = (0, 2, 3, 1)
_TO_NCHW = (0, 3, 1, 2)
_NCHW_AXIS_IN_NHWC = {0: 0, 1: 3, 2: 1, 3: 2}
_INT32_MAX = 2**31 - 1
_FLOAT_LOWEST = float(np.finfo(np.float32).min)

# Evaluated ahead of time when every input is a constant (shape arithmetic, weight reshapes).
_FOLDABLE = {"Add", "Cast", "Ceil", "Concat", "ConstantOfShape", "Div", "Equal", "Expand", "Floor",
             "Gather", "Identity", "Mul", "Neg", "Range", "ReduceProd", "Reshape", "Slice",
             "Sqrt", "Squeeze", "Sub", "Transpose", "Unsqueeze", "Where"}
# Tracked with unknown dimensions as symbols: what PyTorch exports for x.view(x.size(0), -1).
_SYMBOLIC = {"Shape", "Gather", "Unsqueeze", "Squeeze", "Concat", "Slice", "Cast", "Identity"}

_UNARY = {"Relu": Op.RELU, "Sigmoid": Op.LOGISTIC, "Tanh": Op.TANH, "HardSwish": Op.HARD_SWISH,
          "Neg": Op.NEG, "Sqrt": Op.SQRT, "Log": Op.LOG, "Exp": Op.EXP, "Abs": Op.ABS}
_VARIADIC = {"Max": Op.MAXIMUM, "Min": Op.MINIMUM}
_CAST_TYPES = {onnx.TensorProto.FLOAT: FLOAT32, onnx.TensorProto.INT32: INT32, onnx.TensorProto.INT64: INT32,
               onnx.TensorProto.BOOL: np.dtype(np.bool_)}
_INPUT_TYPES = {onnx.TensorProto.FLOAT: FLOAT32, onnx.TensorProto.INT32: INT32}
_COMPARE = {"Equal": Op.EQUAL, "Greater": Op.GREATER, "Less": Op.LESS, "GreaterOrEqual": Op.GREATER_EQUAL,
            "LessOrEqual": Op.LESS_EQUAL}
_BINARY = {"Add": (Op.ADD, "AddOptions"), "Sub": (Op.SUB, "SubOptions"),
           "Mul": (Op.MUL, "MulOptions"), "Div": (Op.DIV, "DivOptions")}
_REDUCE = {"ReduceMean": Op.MEAN, "ReduceMax": Op.REDUCE_MAX, "ReduceMin": Op.REDUCE_MIN, "ReduceSum": Op.SUM}
_REDUCE_AXES_INPUT_SINCE = {"ReduceMean": 18, "ReduceMax": 18, "ReduceMin": 18, "ReduceSum": 13}


def _unsupported(node: onnx.NodeProto, why: str) -> UnsupportedModelError:
    return UnsupportedModelError(f"ONNX operator {node.op_type} cannot be exported to TFLite: {why}",
                                 where=f"node {node.name!r}")


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _physical(shape: Shape, layout: Layout) -> Shape:
    return [shape[p] for p in _TO_NHWC] if layout is Layout.NHWC else list(shape)


def _axis_in(layout: Layout, axis: int) -> int:
    """Where ONNX axis ``axis`` of a value lives in its stored tensor."""
    return _NCHW_AXIS_IN_NHWC[axis] if layout is Layout.NHWC else axis


def _minus_one_unknown(shape: Shape) -> list[int]:
    """``shape`` with unknown dimensions as -1."""
    return [-1 if d is None else int(d) for d in shape]


def _product(dims: list[int]) -> int:
    return int(np.prod(dims, dtype=np.int64)) if dims else 1


# -- BatchNormalization folding --------------------------------------------------------------


def _batch_norm_affine(node: onnx.NodeProto, inits: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Inference BatchNormalization as y = x * scale + shift per channel."""
    gamma, beta, mean, var = (inits[n].astype(np.float64) for n in node.input[1:5])
    scale = gamma / np.sqrt(var + float(attribute(node, "epsilon", 1e-5)))
    return scale, beta - mean * scale


def fold_batch_norm(model: onnx.ModelProto) -> onnx.ModelProto:
    """Copy of ``model`` with every inference BatchNormalization that follows a Conv folded into it.

    The Conv must have constant weights (and bias), feed only the BatchNormalization and not be a
    graph output; its weights become ``W * scale`` and its bias ``(b - mean) * scale + beta``.
    """
    out = onnx.ModelProto()
    out.CopyFrom(model)
    graph = out.graph
    inits = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    producers = {o: n for n in graph.node for o in n.output}
    uses: dict[str, int] = {}
    for n in graph.node:
        for i in n.input:
            uses[i] = uses.get(i, 0) + 1
    outputs = {o.name for o in graph.output}
    dropped: set[int] = set()
    for index, bn in enumerate(graph.node):
        conv = producers.get(bn.input[0])
        if (bn.op_type != "BatchNormalization" or len(bn.input) != 5 or conv is None or conv.op_type != "Conv"
                or uses.get(bn.input[0], 0) != 1 or bn.input[0] in outputs
                or attribute(bn, "training_mode", 0) or len([o for o in bn.output if o]) != 1
                or not all(n in inits for n in list(bn.input[1:5]) + list(conv.input[1:]) if n)):
            continue
        scale, shift = _batch_norm_affine(bn, inits)
        weight = inits[conv.input[1]].astype(np.float64)
        bias = (inits[conv.input[2]].astype(np.float64) if len(conv.input) > 2 and conv.input[2]
                else np.zeros(weight.shape[0]))
        prefix = conv.name or conv.output[0]
        folded = [numpy_helper.from_array(
                      (weight * scale.reshape(-1, *[1] * (weight.ndim - 1))).astype(np.float32),
                      f"{prefix}/folded_weight"),
                  numpy_helper.from_array((bias * scale + shift).astype(np.float32), f"{prefix}/folded_bias")]
        graph.initializer.extend(folded)
        data = conv.input[0]
        del conv.input[:]
        conv.input.extend([data, folded[0].name, folded[1].name])
        conv.output[0] = bn.output[0]
        dropped.add(index)
    if dropped:
        kept = [n for i, n in enumerate(graph.node) if i not in dropped]
        del graph.node[:]
        graph.node.extend(kept)
        logger.info("folded %d BatchNormalization node(s) into the Conv before them", len(dropped))
    return out


def fold_constants(model: onnx.ModelProto, rounds: int = 8) -> onnx.ModelProto:
    """Copy of ``model`` with every main-graph node that computes on constants only (and every
    Shape of a value whose shape is fully known) replaced by initializers, shape inference re-run
    after each round so that what the folded values shape is known: with fixed input shapes, the
    shape arithmetic of dynamic exports (Shape -> Gather -> Mul -> Concat -> Reshape,
    ConstantOfShape, Range, Expand) becomes constants. Nodes the reference evaluator cannot
    run stay."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    graph = out.graph
    folded = 0
    for _ in range(rounds):
        inits = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
        shapes = {vi.name: [d.dim_value if d.HasField("dim_value") else None for d in vi.type.tensor_type.shape.dim]
                  for vi in _value_infos(out) if vi.type.tensor_type.HasField("shape")}
        kept, added = [], []
        for node in graph.node:
            inputs = [i for i in node.input if i]
            results: list[np.ndarray] | None = None
            if node.op_type == "Shape" and None not in shapes.get(node.input[0], [None]):
                results = [_shape_slice(node, np.array(shapes[node.input[0]], np.int64))]
            elif node.op_type in _FOLDABLE and inputs and all(i in inits for i in inputs):
                try:
                    evaluator = ReferenceEvaluator(node, opsets={"": default_opset(out)})
                    results = [np.asarray(r) for r in evaluator.run(None, {i: inits[i] for i in inputs})]
                except Exception:  # the reference evaluator lacks a case: the export handles the node
                    results = None
            if results is None:
                kept.append(node)
                continue
            for name, value in zip(node.output, results, strict=False):
                inits[name] = value
                added.append(numpy_helper.from_array(value, name))
        if not added:
            break
        folded += len(graph.node) - len(kept)
        del graph.node[:]
        graph.node.extend(kept)
        graph.initializer.extend(added)
        del graph.value_info[:]
    if folded:
        logger.info("folded %d node(s) on constants and known shapes", folded)
    return out


def conv1d_as_2d(model: onnx.ModelProto) -> onnx.ModelProto:
    """Copy of ``model`` with every 1-D Conv (constant weight ``[O, I, K]``) written as
    Unsqueeze(axis 2) -> 2-D Conv (weight ``[O, I, 1, K]``) -> Squeeze(axis 2), as TFLite
    converters do: TFLite convolves in 2-D only."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    graph = out.graph
    inits = {t.name: t for t in graph.initializer}
    widened: dict[str, str] = {}
    nodes: list[onnx.NodeProto] = []
    for node in graph.node:
        weight = inits.get(node.input[1]) if node.op_type == "Conv" and len(node.input) > 1 else None
        if weight is None or len(weight.dims) != 3:
            nodes.append(node)
            continue
        if weight.name not in widened:
            widened[weight.name] = f"{weight.name}/2d"
            graph.initializer.append(numpy_helper.from_array(numpy_helper.to_array(weight)[:, :, None, :],
                                                             widened[weight.name]))
        axis = f"{node.name}/axis2"
        graph.initializer.append(numpy_helper.from_array(np.array([2], np.int64), axis))
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        for key in ("kernel_shape", "strides", "dilations"):
            if key in attrs:
                attrs[key] = [1, *attrs[key]]
        if "pads" in attrs:
            begin, end = attrs["pads"]
            attrs["pads"] = [0, begin, 0, end]
        if isinstance(attrs.get("auto_pad"), bytes):
            attrs["auto_pad"] = attrs["auto_pad"].decode()
        inputs = [f"{node.name}/x2d", widened[weight.name], *node.input[2:]]
        nodes += [onnx.helper.make_node("Unsqueeze", [node.input[0], axis], [inputs[0]], name=f"{node.name}/unsqueeze"),
                  onnx.helper.make_node("Conv", inputs, [f"{node.name}/y2d"], name=node.name, **attrs),
                  onnx.helper.make_node("Squeeze", [f"{node.name}/y2d", axis], [node.output[0]],
                                        name=f"{node.name}/squeeze")]
    if widened:
        del graph.node[:]
        graph.node.extend(nodes)
        logger.info("wrote %d 1-D Conv node(s) as 2-D", len(widened))
    return out


# -- the converter ---------------------------------------------------------------------------


class _Converter:
    def __init__(self, model: onnx.ModelProto) -> None:
        self.model = model
        self.opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 1)
        self.b = TfliteBuilder()
        self.inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
        self.shapes: dict[str, Shape] = {}
        self.symbols: dict[str, list[int | str]] = {}  # unknown dims named (dim_param or value:axis)
        for vi in _value_infos(model):
            tt = vi.type.tensor_type
            if tt.HasField("shape"):
                dims = [d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None
                        for d in tt.shape.dim]
                self.shapes[vi.name] = dims
                self.symbols[vi.name] = [d if d is not None else (dim.dim_param or f"{vi.name}:{i}")
                                         for i, (d, dim) in enumerate(zip(dims, tt.shape.dim, strict=True))]
        for name, array in self.inits.items():
            self.shapes[name] = list(array.shape)
        self.values: dict[str, tuple[int, Layout]] = {}
        self.converted: dict[tuple[str, Layout], int] = {}
        self.broadcast: dict[tuple[str, Layout, int], int] = {}
        self.dtypes: dict[str, np.dtype] = {}
        self.used = {i for n in model.graph.node for i in n.input} | {o.name for o in model.graph.output}
        self.shape_values: dict[str, np.ndarray] = {}  # int tensors with symbolic entries (object arrays)

    # -- values ------------------------------------------------------------------------

    def shape(self, name: str, node: onnx.NodeProto) -> Shape:
        if name not in self.shapes:
            raise _unsupported(node, f"the shape of {name!r} cannot be inferred")
        return self.shapes[name]

    def rank(self, name: str, node: onnx.NodeProto) -> int:
        return len(self.shape(name, node))

    def get(self, name: str, layout: Layout, node: onnx.NodeProto) -> int:
        """The TFLite tensor holding ONNX value ``name`` in ``layout``."""
        if name in self.inits and name not in self.values:
            self.values[name] = (self.b.const(name, self.inits[name]), Layout.PLAIN)
        if name in self.shape_values:
            raise _unsupported(node, f"input {name!r} is shape arithmetic on unknown dimensions")
        if name not in self.values:
            raise _unsupported(node, f"input {name!r} is not produced by a supported node")
        index, current = self.values[name]
        if current is layout:
            return index
        key = (name, layout)
        if key not in self.converted:
            shape = self.shape(name, node)
            if len(shape) != 4:
                raise _unsupported(node, f"{name!r} must be 4-D for NHWC, has rank {len(shape)}")
            perm = _TO_NHWC if layout is Layout.NHWC else _TO_NCHW
            out = self.b.tensor(f"{name}/{layout.value}", _physical(shape, layout))
            self.b.op(Op.TRANSPOSE, [index, self.b.const(f"{name}/perm_{layout.value}", np.array(perm, np.int32))],
                      [out])
            self.converted[key] = out
        return self.converted[key]

    def layout_of(self, name: str) -> Layout:
        return self.values[name][1] if name in self.values else Layout.PLAIN

    def define(self, name: str, layout: Layout, node: onnx.NodeProto, dtype: np.dtype | None = None) -> int:
        """The tensor of ONNX value ``name``, of ``dtype`` (default: the dtype of the node's first
        input, as ONNX operators keep it)."""
        dtype = dtype if dtype is not None else self.dtype(node.input[0] if node.input else "")
        index = self.b.tensor(name, _physical(self.shape(name, node), layout), dtype)
        self.values[name] = (index, layout)
        self.dtypes[name] = dtype
        return index

    def dtype(self, name: str) -> np.dtype:
        if name in self.dtypes:
            return self.dtypes[name]
        return self.inits[name].dtype if name in self.inits else FLOAT32

    def scratch(self, node: onnx.NodeProto, tag: str, like: str, layout: Layout) -> int:
        """An intermediate tensor shaped like ONNX value ``like``."""
        return self.b.tensor(f"{node.name}/{tag}", _physical(self.shape(like, node), layout))

    def constant(self, name: str, node: onnx.NodeProto) -> np.ndarray:
        if name not in self.inits:
            raise _unsupported(node, f"input {name!r} must be a constant (initializer)")
        return self.inits[name]

    def optional_constant(self, node: onnx.NodeProto, index: int) -> np.ndarray | None:
        if len(node.input) > index and node.input[index]:
            return self.constant(node.input[index], node)
        return None

    def broadcast_constant(self, name: str, layout: Layout, rank: int, node: onnx.NodeProto) -> int:
        """Constant ``name`` broadcast onto a rank-``rank`` value stored in ``layout`` (one tensor
        per constant and form, however many operators use it)."""
        array = self.inits[name]
        if layout is not Layout.NHWC and array.ndim >= rank:
            return self.get(name, Layout.PLAIN, node)
        key = (name, layout, rank)
        if key not in self.broadcast:
            if array.size == 1:  # a scalar broadcasts in any layout (and quantizes per tensor)
                self.broadcast[key] = self.b.const(f"{name}/scalar", array.reshape(()))
            elif layout is Layout.NHWC:
                self.broadcast[key] = self.b.const(
                    f"{name}/nhwc", array.reshape((1,) * (4 - array.ndim) + array.shape).transpose(_TO_NHWC))
            else:
                self.broadcast[key] = self.b.const(f"{name}/rank{rank}",
                                                   array.reshape((1,) * (rank - array.ndim) + array.shape))
        return self.broadcast[key]

    def operands(self, node: onnx.NodeProto, names: list[str]) -> tuple[Layout, list[int]]:
        """Elementwise operands in one layout: NHWC when any 4-D input is NHWC."""
        out_rank = self.rank(node.output[0], node)
        nhwc = out_rank == 4 and any(self.layout_of(i) is Layout.NHWC for i in names)
        layout = Layout.NHWC if nhwc else Layout.PLAIN
        inputs = []
        for name in names:
            if name in self.inits and name not in self.values:
                inputs.append(self.broadcast_constant(name, layout, out_rank, node))
            elif self.rank(name, node) == 4 or not nhwc:
                inputs.append(self.get(name, layout, node))
            else:
                raise _unsupported(node, "broadcasting a lower-rank activation over NHWC")
        return layout, inputs

    # -- constants and shape arithmetic --------------------------------------------------

    def fold(self, node: onnx.NodeProto) -> bool:
        """Evaluate ``node`` ahead of time if it only computes on constants or shapes."""
        inputs = [i for i in node.input if i]
        if node.op_type == "Shape":
            shape = self.shape(node.input[0], node)
            if None not in shape:
                self._set_constant(node, [_shape_slice(node, np.array(shape, np.int64))])
            else:
                dims = np.array(self.symbols[node.input[0]], dtype=object)
                self.shape_values[node.output[0]] = _shape_slice(node, dims)
            return True
        if node.op_type in _FOLDABLE and all(i in self.inits for i in inputs):
            evaluator = ReferenceEvaluator(node, opsets={"": self.opset})
            results = evaluator.run(None, {i: self.inits[i] for i in inputs})
            self._set_constant(node, [np.asarray(r) for r in results])
            return True
        if node.op_type in _SYMBOLIC and any(i in self.shape_values for i in inputs):
            self.shape_values[node.output[0]] = self._symbolic(node)
            return True
        return False

    def _set_constant(self, node: onnx.NodeProto, results: list[np.ndarray]) -> None:
        for name, value in zip(node.output, results, strict=False):
            self.inits[name] = np.asarray(value)
            self.shapes[name] = list(np.shape(value))

    def _symbolic(self, node: onnx.NodeProto) -> np.ndarray:
        def value(name: str) -> np.ndarray:
            if name in self.shape_values:
                return self.shape_values[name]
            return np.asarray(self.constant(name, node), dtype=object)

        x = value(node.input[0])
        if node.op_type in ("Cast", "Identity"):
            return x
        if node.op_type == "Gather" and attribute(node, "axis", 0) == 0:
            return np.asarray(np.take(x, np.asarray(self.constant(node.input[1], node), np.int64)), dtype=object)
        if node.op_type == "Concat":
            return np.concatenate([np.atleast_1d(value(i)) for i in node.input])
        if node.op_type in ("Unsqueeze", "Squeeze"):
            return x.reshape(_minus_one_unknown(self.shape(node.output[0], node)))
        if node.op_type == "Slice" and x.ndim == 1:
            starts, ends = (int(self.constant(node.input[i], node)[0]) for i in (1, 2))
            steps = self.optional_constant(node, 4)
            return x[slice(starts, ends, 1 if steps is None else int(steps[0]))]
        raise _unsupported(node, "shape arithmetic on unknown dimensions")

    def _reshape_target(self, node: onnx.NodeProto, requested: list[int | str]) -> list[int]:
        """TFLite target shape for ONNX Reshape: 0 copies, symbols resolved against the input."""
        in_syms = self.symbols.get(node.input[0]) or [
            f"{node.input[0]}:{i}" if d is None else d for i, d in enumerate(self.shape(node.input[0], node))]
        allow_zero = attribute(node, "allowzero", 0)
        target = [in_syms[i] if d == 0 and not allow_zero else d for i, d in enumerate(requested)]
        symbols = [d for d in target if isinstance(d, str)]
        unknown = len(symbols) + target.count(-1)
        if unknown <= 1:
            return [-1 if isinstance(d, str) else int(d) for d in target]
        left = list(in_syms)
        for s in symbols:
            if s not in left:
                raise _unsupported(node, f"target shape {target} has more than one unknown dimension")
            left.remove(s)
        if any(isinstance(d, str) for d in left) or target.count(-1) > 1 or len(symbols) > 1:
            raise _unsupported(node, f"target shape {target} has more than one unknown dimension")
        known = _product([int(d) for d in target if isinstance(d, int) and d != -1])
        inferred = _product([int(d) for d in left]) // known
        return [-1 if isinstance(d, str) else inferred if d == -1 else int(d) for d in target]

    # -- elementwise -------------------------------------------------------------------

    def unary(self, node: onnx.NodeProto, code: int, opts: tuple[object, int] | None = None) -> None:
        layout = self.layout_of(node.input[0])
        x = self.get(node.input[0], layout, node)
        self.b.op(code, [x], [self.define(node.output[0], layout, node)], *(opts or ()))

    def binary(self, node: onnx.NodeProto) -> None:
        code, opts = _BINARY[node.op_type]
        layout, inputs = self.operands(node, list(node.input))
        self.b.op(code, inputs, [self.define(node.output[0], layout, node)], *options(opts))

    def chain(self, node: onnx.NodeProto, steps: list[tuple[int, float | None]]) -> None:
        """``node``'s output through elementwise ops, each with an optional scalar operand."""
        layout = self.layout_of(node.input[0])
        current = self.get(node.input[0], layout, node)
        for i, (code, scalar) in enumerate(steps):
            last = i == len(steps) - 1
            out = (self.define(node.output[0], layout, node) if last
                   else self.scratch(node, f"step{i}", node.output[0], layout))
            inputs = [current]
            if scalar is not None:
                inputs.append(self.b.const(f"{node.name}/operand{i}", np.array(scalar, np.float32)))
            self.b.op(code, inputs, [out])
            current = out

    def clip(self, node: onnx.NodeProto) -> None:
        bounds = [node.input[i] if len(node.input) > i and node.input[i] else "" for i in (1, 2)]
        if any(b and b not in self.inits for b in bounds):  # a bound computed at run time
            self._clip_by_tensors(node, bounds)
            return
        lo_c, hi_c = self.optional_constant(node, 1), self.optional_constant(node, 2)
        lo = float(lo_c) if lo_c is not None else float(attribute(node, "min", -math.inf))
        hi = float(hi_c) if hi_c is not None else float(attribute(node, "max", math.inf))
        named = {(0.0, 6.0): Op.RELU6, (-1.0, 1.0): Op.RELU_N1_TO_1, (0.0, math.inf): Op.RELU}
        if (lo, hi) in named:
            self.unary(node, named[(lo, hi)])
            return
        steps: list[tuple[int, float | None]] = [
            (code, bound) for code, bound in ((Op.MAXIMUM, lo), (Op.MINIMUM, hi)) if not math.isinf(bound)]
        if not steps:
            self.alias(node)
            return
        self.chain(node, steps)

    def _clip_by_tensors(self, node: onnx.NodeProto, bounds: list[str]) -> None:
        """MAXIMUM with the lower bound, then MINIMUM with the upper one (either may be a value)."""
        steps = [(code, b) for code, b in ((Op.MAXIMUM, bounds[0]), (Op.MINIMUM, bounds[1])) if b]
        current = node.input[0]
        for i, (code, bound) in enumerate(steps):
            layout, inputs = self.operands(node, [current, bound])
            last = i == len(steps) - 1
            out = (self.define(node.output[0], layout, node) if last
                   else self.scratch(node, f"step{i}", node.output[0], layout))
            self.b.op(code, inputs, [out])
            if not last:
                current = f"{node.name}/step{i}"
                self.values[current] = (out, layout)
                self.shapes[current] = self.shape(node.output[0], node)

    def variadic(self, node: onnx.NodeProto) -> None:
        """Max / Min of any number of inputs (broadcast), pairwise."""
        code = _VARIADIC[node.op_type]
        if len(node.input) == 1:
            self.alias(node)
            return
        current = node.input[0]
        for i, other in enumerate(node.input[1:]):
            layout, inputs = self.operands(node, [current, other])
            last = i == len(node.input) - 2
            out = (self.define(node.output[0], layout, node) if last
                   else self.scratch(node, f"step{i}", node.output[0], layout))
            self.b.op(code, inputs, [out])
            if not last:
                current = f"{node.name}/step{i}"
                self.values[current] = (out, layout)
                self.shapes[current] = self.shape(node.output[0], node)

    def compare(self, node: onnx.NodeProto) -> None:
        """Equal, Greater, ... of float values: a bool tensor (for Where)."""
        layout, inputs = self.operands(node, list(node.input))
        self.b.op(_COMPARE[node.op_type], inputs, [self.define(node.output[0], layout, node, np.dtype(np.bool_))])

    def where(self, node: onnx.NodeProto) -> None:
        layout, inputs = self.operands(node, list(node.input))
        self.b.op(Op.SELECT_V2, inputs, [self.define(node.output[0], layout, node, self.dtype(node.input[1]))])

    def reciprocal(self, node: onnx.NodeProto) -> None:
        layout = self.layout_of(node.input[0])
        x = self.get(node.input[0], layout, node)
        one = self.b.const(f"{node.name}/one", np.array(1.0, np.float32))
        self.b.op(Op.DIV, [one, x], [self.define(node.output[0], layout, node)], *options("DivOptions"))

    def pow(self, node: onnx.NodeProto) -> None:
        """x ** constant: 2 as MUL, 0.5 as SQRT, 1 as is; any other exponent (or a computed one) POW."""
        exponent = self.inits.get(node.input[1])
        power = float(exponent) if exponent is not None and exponent.size == 1 else None
        if power == 1.0:
            self.alias(node)
        elif power == 0.5:
            self.unary(node, Op.SQRT)
        elif power == 2.0:
            layout = self.layout_of(node.input[0])
            x = self.get(node.input[0], layout, node)
            self.b.op(Op.MUL, [x, x], [self.define(node.output[0], layout, node)], *options("MulOptions"))
        else:
            layout, inputs = self.operands(node, list(node.input))
            self.b.op(Op.POW, inputs, [self.define(node.output[0], layout, node)])

    def cast(self, node: onnx.NodeProto) -> None:
        """Cast between float32, int32 and bool (int64 is int32 in TFLite): CAST, or nothing when
        the type stays."""
        target = _CAST_TYPES.get(attribute(node, "to", 0))
        if target is None or node.input[0] in self.shape_values:
            raise _unsupported(node, "a cast to a type other than float32, int32/int64 or bool")
        if target == self.dtype(node.input[0]):
            self.alias(node)
            return
        layout = self.layout_of(node.input[0])
        x = self.get(node.input[0], layout, node)
        self.b.op(Op.CAST, [x], [self.define(node.output[0], layout, node, target)])

    def expand(self, node: onnx.NodeProto) -> None:
        """Expand to a constant shape: BROADCAST_TO (ONNX broadcasts both ways: the output shape)."""
        self.constant(node.input[1], node)
        shape = self.shape(node.output[0], node)
        if None in shape:
            raise _unsupported(node, "an output shape that is not fixed (fix the input shapes)")
        x = self.get(node.input[0], Layout.PLAIN, node)
        self.b.op(Op.BROADCAST_TO, [x, self.b.const(f"{node.name}/shape", np.array(shape, np.int32))],
                  [self.define(node.output[0], Layout.PLAIN, node)])

    def hard_sigmoid(self, node: onnx.NodeProto) -> None:
        alpha = float(attribute(node, "alpha", 0.2))
        beta = float(attribute(node, "beta", 0.5))
        self.chain(node, [(Op.MUL, alpha), (Op.ADD, beta), (Op.RELU_0_TO_1, None)])

    def leaky_relu(self, node: onnx.NodeProto) -> None:
        self.unary(node, Op.LEAKY_RELU, options("LeakyReluOptions", alpha=float(attribute(node, "alpha", 0.01))))

    def elu(self, node: onnx.NodeProto) -> None:
        if float(attribute(node, "alpha", 1.0)) != 1.0:
            raise _unsupported(node, "alpha other than 1 (TFLite ELU has alpha 1)")
        self.unary(node, Op.ELU)

    def prelu(self, node: onnx.NodeProto) -> None:
        layout, inputs = self.operands(node, list(node.input))
        self.b.op(Op.PRELU, inputs, [self.define(node.output[0], layout, node)])

    def batch_norm(self, node: onnx.NodeProto) -> None:
        if attribute(node, "training_mode", 0) or len([o for o in node.output if o]) > 1:
            raise _unsupported(node, "training mode (running statistics as outputs)")
        for name in node.input[1:5]:
            self.constant(name, node)
        scale, shift = _batch_norm_affine(node, self.inits)
        rank = self.rank(node.input[0], node)
        if rank < 2:
            raise _unsupported(node, f"input of rank {rank}")
        layout = self.layout_of(node.input[0])
        channel_shape = (-1,) if layout is Layout.NHWC else (-1,) + (1,) * (rank - 2)
        x = self.get(node.input[0], layout, node)
        scaled = self.scratch(node, "scaled", node.output[0], layout)
        self.b.op(Op.MUL, [x, self.b.const(f"{node.name}/scale", scale.reshape(channel_shape))], [scaled],
                  *options("MulOptions"))
        self.b.op(Op.ADD, [scaled, self.b.const(f"{node.name}/shift", shift.reshape(channel_shape))],
                  [self.define(node.output[0], layout, node)], *options("AddOptions"))

    # -- dense -------------------------------------------------------------------------

    def gemm(self, node: onnx.NodeProto) -> None:
        if attribute(node, "transA", 0):
            raise _unsupported(node, "transA=1")
        weight = self.constant(node.input[1], node).astype(np.float32)
        weight = weight if attribute(node, "transB", 0) else weight.T  # TFLite: [out, in]
        weight = weight * np.float32(attribute(node, "alpha", 1.0))
        units = weight.shape[0]
        bias = np.zeros(units, np.float32)
        c = self.optional_constant(node, 2)
        if c is not None:
            if c.size not in (1, units):
                raise _unsupported(node, f"bias of shape {list(c.shape)} is not per output unit")
            bias = np.broadcast_to(c.astype(np.float32).reshape(-1), (units,)) * np.float32(
                attribute(node, "beta", 1.0))
        self.fully_connected(node, weight, bias.astype(np.float32))

    def fully_connected(self, node: onnx.NodeProto, weight: np.ndarray, bias: np.ndarray | None) -> None:
        x = self.get(node.input[0], Layout.PLAIN, node)
        w = self.b.const(f"{node.name}/weight", np.ascontiguousarray(weight), shared=True)
        b = self.b.const(f"{node.name}/bias", bias, shared=True) if bias is not None else -1
        keep = self.rank(node.input[0], node) > 2
        self.b.op(Op.FULLY_CONNECTED, [x, w, b], [self.define(node.output[0], Layout.PLAIN, node)],
                  *options("FullyConnectedOptions", keepNumDims=keep))

    def matmul(self, node: onnx.NodeProto) -> None:
        if node.input[1] in self.inits and self.inits[node.input[1]].ndim == 2:
            self.fully_connected(node, self.inits[node.input[1]].astype(np.float32).T, None)
            return
        a = self.get(node.input[0], Layout.PLAIN, node)
        b = self.get(node.input[1], Layout.PLAIN, node)
        self.b.op(Op.BATCH_MATMUL, [a, b], [self.define(node.output[0], Layout.PLAIN, node)],
                  *options("BatchMatMulOptions"))

    # -- recurrent ---------------------------------------------------------------------

    def lstm(self, node: onnx.NodeProto) -> None:
        """LSTM (forward, reverse or bidirectional; default activations) unrolled over its known
        sequence length: the input projection of every step in one FULLY_CONNECTED, then per step
        FULLY_CONNECTED of the state, ADD, SPLIT_V into the gates (ONNX order i, o, f, c),
        LOGISTIC/TANH, MUL and ADD. The weights are one tensor each, shared by every step."""
        direction = _text(attribute(node, "direction", "forward"))
        hidden = int(attribute(node, "hidden_size", 0))
        activations = [_text(a) for a in attribute(node, "activations", [])]
        if activations and [a.lower() for a in activations] != ["sigmoid", "tanh", "tanh"] * len(activations[::3]):
            raise _unsupported(node, f"activations {activations} (only Sigmoid, Tanh, Tanh)")
        for name, default in (("clip", None), ("input_forget", 0), ("layout", 0)):
            if attribute(node, name, default) != default:
                raise _unsupported(node, f"attribute {name}")
        if len(node.input) > 7 and node.input[7]:
            raise _unsupported(node, "peephole weights (P)")
        steps, batch, _ = self.shape(node.input[0], node)
        if steps is None or batch is None:
            raise _unsupported(node, "a sequence length or batch that is not fixed (fix the input shapes)")
        if len(node.input) > 4 and node.input[4]:
            lengths = self.constant(node.input[4], node)
            if not np.all(lengths == steps):
                raise _unsupported(node, "sequence_lens shorter than the sequence")
        w, r = self.constant(node.input[1], node), self.constant(node.input[2], node)
        b = self.optional_constant(node, 3)
        passes = {"forward": [False], "reverse": [True], "bidirectional": [False, True]}.get(direction)
        if passes is None:
            raise _unsupported(node, f"direction {direction!r}")
        x = self.get(node.input[0], Layout.PLAIN, node)
        results = []
        for d, backwards in enumerate(passes):
            bias = (b[d, :4 * hidden] + b[d, 4 * hidden:]).astype(np.float32) if b is not None else None
            state = [self._lstm_initial(node, i, d, batch, hidden) for i in (5, 6)]
            results.append(self._lstm_pass(node, x, w[d], r[d], bias, state, steps, batch, hidden, backwards, d))
        self._lstm_outputs(node, results, steps, batch, hidden)

    def _lstm_initial(self, node: onnx.NodeProto, slot: int, d: int, batch: int, hidden: int) -> np.ndarray:
        given = self.optional_constant(node, slot)
        return (given[d] if given is not None else np.zeros((batch, hidden))).astype(np.float32)

    def _lstm_pass(self, node: onnx.NodeProto, x: int, w: np.ndarray, r: np.ndarray, bias: np.ndarray | None,
                   state: list[np.ndarray], steps: int, batch: int, hidden: int, backwards: bool,
                   d: int) -> tuple[list[int], int, int]:
        """One direction: the hidden state of every step (in time order), the last h and c. The
        initial state is constant: its recurrent term is computed here (no operator on constants
        only, which the quantizers mishandle)."""
        h0, c0 = state
        initial_term = h0 @ r.astype(np.float32).T
        tag = f"{node.name}/d{d}"
        projected = self.b.tensor(f"{tag}/xw", [steps, batch, 4 * hidden])
        self.b.op(Op.FULLY_CONNECTED, [x, self.b.const(f"{tag}/w", w.astype(np.float32)),
                                       self.b.const(f"{tag}/b", bias) if bias is not None else -1],
                  [projected], *options("FullyConnectedOptions", keepNumDims=True))
        per_step = [self.b.tensor(f"{tag}/xw{t}", [1, batch, 4 * hidden]) for t in range(steps)]
        self.b.op(Op.SPLIT_V, [projected, self.b.const(f"{tag}/steps", np.ones(steps, np.int32)),
                               self.b.const(f"{tag}/axis0", np.array(0, np.int32))],
                  per_step, *options("SplitVOptions", numSplits=steps))
        recurrent = self.b.const(f"{tag}/r", r.astype(np.float32))
        gate_shape = self.b.const(f"{tag}/gate_shape", np.array([batch, 4 * hidden], np.int32))
        sizes = self.b.const(f"{tag}/gate_sizes", np.full(4, hidden, np.int32))
        axis1 = self.b.const(f"{tag}/axis1", np.array(1, np.int32))
        h, c = -1, self.b.const(f"{tag}/c0", c0)
        hs: dict[int, int] = {}
        for t in (reversed(range(steps)) if backwards else range(steps)):
            step = f"{tag}/t{t}"
            xw = self.b.tensor(f"{step}/xw", [batch, 4 * hidden])
            self.b.op(Op.RESHAPE, [per_step[t], gate_shape], [xw], *options("ReshapeOptions",
                                                                               newShape=[batch, 4 * hidden]))
            if h < 0:
                hr = self.b.const(f"{step}/hr", initial_term)
            else:
                hr = self.b.tensor(f"{step}/hr", [batch, 4 * hidden])
                self.b.op(Op.FULLY_CONNECTED, [h, recurrent, -1], [hr], *options("FullyConnectedOptions"))
            gates = self.b.tensor(f"{step}/gates", [batch, 4 * hidden])
            self.b.op(Op.ADD, [xw, hr], [gates], *options("AddOptions"))
            parts = [self.b.tensor(f"{step}/{g}", [batch, hidden]) for g in "iofc"]
            self.b.op(Op.SPLIT_V, [gates, sizes, axis1], parts, *options("SplitVOptions", numSplits=4))
            i, o, f, g = (self.b.tensor(f"{step}/{k}_act", [batch, hidden]) for k in "iofg")
            for src, dst, code in zip(parts, (i, o, f, g), (Op.LOGISTIC, Op.LOGISTIC, Op.LOGISTIC, Op.TANH),
                                      strict=True):
                self.b.op(code, [src], [dst])
            kept, added = (self.b.tensor(f"{step}/{k}", [batch, hidden]) for k in ("fc", "ig"))
            self.b.op(Op.MUL, [f, c], [kept], *options("MulOptions"))
            self.b.op(Op.MUL, [i, g], [added], *options("MulOptions"))
            c = self.b.tensor(f"{step}/c", [batch, hidden])
            self.b.op(Op.ADD, [kept, added], [c], *options("AddOptions"))
            squashed = self.b.tensor(f"{step}/tanh_c", [batch, hidden])
            self.b.op(Op.TANH, [c], [squashed])
            h = self.b.tensor(f"{step}/h", [batch, hidden])
            self.b.op(Op.MUL, [o, squashed], [h], *options("MulOptions"))
            hs[t] = h
        return [hs[t] for t in range(steps)], h, c

    def _lstm_outputs(self, node: onnx.NodeProto, results: list[tuple[list[int], int, int]], steps: int,
                      batch: int, hidden: int) -> None:
        """Y [T, D, N, H], Y_h and Y_c [D, N, H], for the outputs the node names."""
        dirs = len(results)
        names = [n if n in self.used else "" for n in list(node.output) + [""] * (3 - len(node.output))]
        if names[0]:
            shape = self.b.const(f"{node.name}/y_step_shape", np.array([1, 1, batch, hidden], np.int32))
            per_dir = []
            for d, (hs, _, _) in enumerate(results):
                rows = []
                for t, h in enumerate(hs):
                    row = self.b.tensor(f"{node.name}/d{d}/y{t}", [1, 1, batch, hidden])
                    self.b.op(Op.RESHAPE, [h, shape], [row], *options("ReshapeOptions",
                                                                       newShape=[1, 1, batch, hidden]))
                    rows.append(row)
                out = (self.define(names[0], Layout.PLAIN, node) if dirs == 1
                       else self.b.tensor(f"{node.name}/d{d}/y", [steps, 1, batch, hidden]))
                self.b.op(Op.CONCATENATION, rows, [out], *options("ConcatenationOptions", axis=0))
                per_dir.append(out)
            if dirs > 1:
                self.b.op(Op.CONCATENATION, per_dir, [self.define(names[0], Layout.PLAIN, node)],
                          *options("ConcatenationOptions", axis=1))
        for slot in (1, 2):  # Y_h: the last h of each direction, Y_c: its last c
            if not names[slot]:
                continue
            shape = self.b.const(f"{node.name}/state_shape{slot}", np.array([1, batch, hidden], np.int32))
            rows = []
            for d, (_, last_h, last_c) in enumerate(results):
                row = self.b.tensor(f"{node.name}/d{d}/state{slot}", [1, batch, hidden])
                self.b.op(Op.RESHAPE, [last_h if slot == 1 else last_c, shape], [row], *options("ReshapeOptions",
                                                                              newShape=[1, batch, hidden]))
                rows.append(row)
            self.b.op(Op.CONCATENATION, rows, [self.define(names[slot], Layout.PLAIN, node)],
                      *options("ConcatenationOptions", axis=0))

    # -- convolution and pooling ---------------------------------------------------------

    def _same_pads(self, node: onnx.NodeProto, kernel: list[int], strides: list[int],
                   dilations: list[int]) -> list[int] | None:
        """TFLite SAME padding as ONNX pads [top, left, bottom, right] (None: spatial dims unknown)."""
        in_shape = self.shape(node.input[0], node)
        same = []
        for axis in range(2):
            size = in_shape[2 + axis]
            if size is None:
                return None
            effective = (kernel[axis] - 1) * dilations[axis] + 1
            total = max((math.ceil(size / strides[axis]) - 1) * strides[axis] + effective - size, 0)
            same.append((total // 2, total - total // 2))
        return [same[0][0], same[1][0], same[0][1], same[1][1]]

    def _padding(self, node: onnx.NodeProto, kernel: list[int], strides: list[int],
                 dilations: list[int]) -> tuple[int, list[int] | None]:
        """TFLite padding (SAME/VALID) and explicit [top, left, bottom, right] pads if needed."""
        auto_pad = _text(attribute(node, "auto_pad", "NOTSET"))
        if auto_pad == "VALID":
            return tfl.Padding.VALID, None
        if auto_pad == "SAME_UPPER":
            return tfl.Padding.SAME, None
        if auto_pad != "NOTSET":
            raise _unsupported(node, f"auto_pad={auto_pad}")
        pads = list(attribute(node, "pads", [0, 0, 0, 0]))
        if not any(pads):
            return tfl.Padding.VALID, None
        if pads == self._same_pads(node, kernel, strides, dilations):
            return tfl.Padding.SAME, None
        return tfl.Padding.VALID, pads

    def conv(self, node: onnx.NodeProto) -> None:
        weight = self.constant(node.input[1], node).astype(np.float32)
        if weight.ndim != 4:
            raise _unsupported(node, f"only 2-D convolutions are supported (weight rank {weight.ndim})")
        out_ch, in_per_group, kh, kw = weight.shape
        group = attribute(node, "group", 1)
        in_ch = self.shape(node.input[0], node)[1]
        strides = list(attribute(node, "strides", [1, 1]))
        dilations = list(attribute(node, "dilations", [1, 1]))
        padding, pads = self._padding(node, [kh, kw], strides, dilations)
        x = self.get(node.input[0], Layout.NHWC, node)
        if pads is not None:
            x = self._pad_spatial(node, x, pads, 0.0)
        bias = self.optional_constant(node, 2)
        b = self.b.const(f"{node.name}/bias", bias.astype(np.float32) if bias is not None
                         else np.zeros(out_ch, np.float32), shared=True)
        out = self.define(node.output[0], Layout.NHWC, node)
        common = dict(padding=padding, strideH=strides[0], strideW=strides[1],
                      dilationHFactor=dilations[0], dilationWFactor=dilations[1])
        if group == 1:
            w = self.b.const(f"{node.name}/weight", weight.transpose(0, 2, 3, 1), shared=True)
            self.b.op(Op.CONV_2D, [x, w, b], [out], *options("Conv2DOptions", **common))
        elif group == in_ch and in_per_group == 1:
            w = self.b.const(f"{node.name}/weight", weight.transpose(1, 2, 3, 0), shared=True)
            self.b.op(Op.DEPTHWISE_CONV_2D, [x, w, b], [out],
                      *options("DepthwiseConv2DOptions", depthMultiplier=out_ch // group, **common))
        else:
            raise _unsupported(node, f"grouped convolution (group={group}) that is not depthwise")

    def _pad_spatial(self, node: onnx.NodeProto, x: int, pads: list[int], value: float) -> int:
        """PAD (zeros) or PADV2 (``value``) of an NHWC tensor by ONNX pads [top, left, bottom, right]."""
        top, left, bottom, right = pads
        shape = self.shape(node.input[0], node)
        padded = [shape[0], shape[2] and shape[2] + top + bottom, shape[3] and shape[3] + left + right, shape[1]]
        out = self.b.tensor(f"{node.name}/padded", padded)
        paddings = self.b.const(f"{node.name}/pads", np.array([[0, 0], [top, bottom], [left, right], [0, 0]],
                                                              np.int32))
        if value == 0.0:
            self.b.op(Op.PAD, [x, paddings], [out], *options("PadOptions"))
        else:
            fill = self.b.const(f"{node.name}/pad_value", np.array(value, np.float32))
            self.b.op(Op.PADV2, [x, paddings, fill], [out], *options("PadV2Options"))
        return out

    def _pool_pads(self, node: onnx.NodeProto, kernel: list[int], strides: list[int]) -> list[int]:
        """Explicit ONNX pads of a pool, grown at the bottom/right to reach ceil_mode's output size."""
        pads = list(attribute(node, "pads", [0, 0, 0, 0]))
        if not attribute(node, "ceil_mode", 0):
            return pads
        in_shape, out_shape = self.shape(node.input[0], node), self.shape(node.output[0], node)
        for axis in range(2):
            size, out = in_shape[2 + axis], out_shape[2 + axis]
            if size is None or out is None:
                raise _unsupported(node, "ceil_mode=1 with unknown spatial dimensions")
            pads[2 + axis] += max((out - 1) * strides[axis] + kernel[axis] - (size + pads[axis] + pads[2 + axis]), 0)
        return pads

    def pool(self, node: onnx.NodeProto) -> None:
        kernel = list(attribute(node, "kernel_shape", []))
        if len(kernel) != 2:
            raise _unsupported(node, "only 2-D pooling is supported")
        if any(d != 1 for d in attribute(node, "dilations", [1, 1])):
            raise _unsupported(node, "dilated pooling")
        if len(node.output) > 1 and node.output[1]:
            raise _unsupported(node, "the Indices output")
        strides = list(attribute(node, "strides", [1, 1]))
        average = node.op_type == "AveragePool"
        include_pad = average and attribute(node, "count_include_pad", 0)
        auto_pad = _text(attribute(node, "auto_pad", "NOTSET"))
        if auto_pad != "NOTSET":
            if attribute(node, "ceil_mode", 0) or include_pad or auto_pad not in ("VALID", "SAME_UPPER"):
                raise _unsupported(node, f"auto_pad={auto_pad} with ceil_mode or count_include_pad")
            self._pool_op(node, self.get(node.input[0], Layout.NHWC, node), kernel, strides,
                          tfl.Padding.VALID if auto_pad == "VALID" else tfl.Padding.SAME)
            return
        pads = self._pool_pads(node, kernel, strides)
        x = self.get(node.input[0], Layout.NHWC, node)
        if not any(pads):
            self._pool_op(node, x, kernel, strides, tfl.Padding.VALID)
        elif not include_pad and pads == self._same_pads(node, kernel, strides, [1, 1]):
            self._pool_op(node, x, kernel, strides, tfl.Padding.SAME)  # TFLite SAME skips the padding
        elif not average:
            self._pool_op(node, self._pad_spatial(node, x, pads, _FLOAT_LOWEST), kernel, strides, tfl.Padding.VALID)
        else:
            self._average_with_pads(node, x, kernel, strides, pads)

    def _pool_op(self, node: onnx.NodeProto, x: int, kernel: list[int], strides: list[int], padding: int,
                 out: int | None = None) -> None:
        code = Op.MAX_POOL_2D if node.op_type == "MaxPool" else Op.AVERAGE_POOL_2D
        self.b.op(code, [x], [self.define(node.output[0], Layout.NHWC, node) if out is None else out],
                  *options("Pool2DOptions", padding=padding, strideH=strides[0], strideW=strides[1],
                           filterHeight=kernel[0], filterWidth=kernel[1]))

    def _average_with_pads(self, node: onnx.NodeProto, x: int, kernel: list[int], strides: list[int],
                           pads: list[int]) -> None:
        """AveragePool over zero padding, rescaled per position to ONNX's divisor."""
        in_shape, out_shape = self.shape(node.input[0], node), self.shape(node.output[0], node)
        if None in in_shape[2:] or None in out_shape[2:]:
            raise _unsupported(node, "explicit pads with unknown spatial dimensions")
        onnx_pads = list(attribute(node, "pads", [0, 0, 0, 0]))
        include_pad = attribute(node, "count_include_pad", 0)
        counts = []
        for axis, size, size_out in zip(range(2), _minus_one_unknown(in_shape[2:]), _minus_one_unknown(out_shape[2:]),
                                        strict=True):
            k, s, begin = kernel[axis], strides[axis], onnx_pads[axis]
            lo, hi = (-begin, size + onnx_pads[2 + axis]) if include_pad else (0, size)
            start = np.arange(size_out) * s - begin
            counts.append(np.minimum(start + k, hi) - np.maximum(start, lo))
        factor = (kernel[0] * kernel[1]) / np.outer(counts[0], counts[1])
        padded = self._pad_spatial(node, x, pads, 0.0)
        if np.allclose(factor, 1.0):
            self._pool_op(node, padded, kernel, strides, tfl.Padding.VALID)
            return
        pooled = self.scratch(node, "pooled", node.output[0], Layout.NHWC)
        self._pool_op(node, padded, kernel, strides, tfl.Padding.VALID, out=pooled)
        self.b.op(Op.MUL, [pooled, self.b.const(f"{node.name}/divisor", factor.reshape(1, *factor.shape, 1))],
                  [self.define(node.output[0], Layout.NHWC, node)], *options("MulOptions"))

    def global_pool(self, node: onnx.NodeProto) -> None:
        code = Op.MEAN if node.op_type == "GlobalAveragePool" else Op.REDUCE_MAX
        rank = self.rank(node.input[0], node)
        if rank != 4:  # [N, C, L...]: reduce the spatial axes of the plain tensor
            if rank < 3:
                raise _unsupported(node, f"input of rank {rank}")
            x = self.get(node.input[0], Layout.PLAIN, node)
            axes = self.b.const(f"{node.name}/axes", np.arange(2, rank, dtype=np.int32))
            self.b.op(code, [x, axes], [self.define(node.output[0], Layout.PLAIN, node)],
                      *options("ReducerOptions", keepDims=True))
            return
        x = self.get(node.input[0], Layout.NHWC, node)
        axes = self.b.const(f"{node.name}/axes", np.array([1, 2], np.int32))
        self.b.op(code, [x, axes], [self.define(node.output[0], Layout.NHWC, node)],
                  *options("ReducerOptions", keepDims=True))

    def reduce(self, node: onnx.NodeProto) -> None:
        rank = self.rank(node.input[0], node)
        if self.opset >= _REDUCE_AXES_INPUT_SINCE[node.op_type]:
            given = self.optional_constant(node, 1)
            axes = [] if given is None else [int(a) for a in given]
        else:
            axes = list(attribute(node, "axes", []))
        if not axes and attribute(node, "noop_with_empty_axes", 0):
            self.alias(node)
            return
        axes = sorted({a % rank for a in axes} if axes else set(range(rank)))
        keep = bool(attribute(node, "keepdims", 1))
        layout = self.layout_of(node.input[0])
        kept_axes = [_axis_in(layout, a) for a in range(rank) if a not in axes]
        if layout is Layout.NHWC and not keep and kept_axes != sorted(kept_axes):
            layout = Layout.PLAIN  # the kept axes would come out in another order
        x = self.get(node.input[0], layout, node)
        axes_t = self.b.const(f"{node.name}/axes", np.array([_axis_in(layout, a) for a in axes], np.int32))
        out_layout = layout if keep else Layout.PLAIN
        self.b.op(_REDUCE[node.op_type], [x, axes_t], [self.define(node.output[0], out_layout, node)],
                  *options("ReducerOptions", keepDims=keep))

    # -- resize ------------------------------------------------------------------------

    def resize(self, node: onnx.NodeProto) -> None:
        legacy = node.op_type == "Upsample" or self.opset < 11  # Upsample, Resize-10: X, scales
        mode = _text(attribute(node, "mode", "nearest"))
        coord = "asymmetric" if legacy else _text(attribute(node, "coordinate_transformation_mode", "half_pixel"))
        nearest_mode = SIMPLE if legacy else _text(attribute(node, "nearest_mode", "round_prefer_floor"))
        in_shape = self.shape(node.input[0], node)
        if len(in_shape) != 4:
            raise _unsupported(node, f"only 4-D (NCHW) resizes are supported, input has rank {len(in_shape)}")
        scales, sizes = self._resize_factors(node, legacy)
        if attribute(node, "antialias", 0) and any(s < 1 for s in scales[2:]):
            raise _unsupported(node, "antialias=1 when downscaling")
        if any(d is not None and s != 1.0 for d, s in zip(in_shape[:2], scales[:2], strict=True)) \
                or sizes is None and scales[:2] != [1.0, 1.0]:
            raise _unsupported(node, "resizing the batch or channel axis")
        axes = self._resize_axes(node, in_shape, scales, sizes)
        if mode == "nearest":
            flags, code, name = nearest_flags(coord, nearest_mode, axes), Op.RESIZE_NEAREST_NEIGHBOR, \
                "ResizeNearestNeighborOptions"
        elif mode == "linear":
            flags, code, name = linear_flags(coord, axes), Op.RESIZE_BILINEAR, "ResizeBilinearOptions"
        else:
            raise _unsupported(node, f"mode={mode!r} (TFLite resizes nearest or bilinear)")
        if flags is None:
            raise _unsupported(node, f"{mode} resize with coordinate_transformation_mode={coord!r}"
                                     + (f" and nearest_mode={nearest_mode!r}" if mode == "nearest" else "")
                                     + " has no TFLite equivalent (align_corners, half_pixel, asymmetric do)")
        x = self.get(node.input[0], Layout.NHWC, node)
        size = self._resize_size(node, x, in_shape, scales, sizes)
        self.b.op(code, [x, size], [self.define(node.output[0], Layout.NHWC, node)],
                  *options(name, alignCorners=flags[0], halfPixelCenters=flags[1]))

    def _resize_factors(self, node: onnx.NodeProto, legacy: bool) -> tuple[list[float], list[int] | None]:
        """(scales over all 4 axes, sizes over all 4 axes or None) of a Resize or Upsample."""
        if node.op_type == "Upsample" and len(node.input) < 2:
            return [float(s) for s in attribute(node, "scales", [])], None
        if legacy:
            return [float(s) for s in self.constant(node.input[1], node)], None
        in_shape = self.shape(node.input[0], node)
        axes = [int(a) % 4 for a in attribute(node, "axes", [0, 1, 2, 3])]
        given_sizes = self.optional_constant(node, 3)
        if given_sizes is not None and given_sizes.size:
            if _text(attribute(node, "keep_aspect_ratio_policy", "stretch")) != "stretch":
                raise _unsupported(node, "keep_aspect_ratio_policy other than stretch")
            if None in in_shape[2:]:
                raise _unsupported(node, "sizes with unknown input spatial dimensions")
            sizes = [-1 if d is None else int(d) for d in in_shape]
            for a, s in zip(axes, given_sizes, strict=True):
                sizes[a] = int(s)
            known_in = _minus_one_unknown(in_shape)
            return [o / i if i > 0 else 1.0 for o, i in zip(sizes, known_in, strict=True)], sizes
        given = self.optional_constant(node, 2)
        if given is None or not given.size:
            raise _unsupported(node, "neither constant scales nor sizes")
        scales = [1.0] * 4
        for a, s in zip(axes, given, strict=True):
            scales[a] = float(s)
        return scales, None

    def _resize_axes(self, node: onnx.NodeProto, in_shape: Shape, scales: list[float],
                     sizes: list[int] | None) -> list[Axis]:
        """H and W as the mode check needs them; unknown sizes are checked on lengths 1..16."""
        axes = []
        for a in (2, 3):
            size_in = in_shape[a]
            if size_in is None:
                if not float(scales[a]).is_integer() or scales[a] < 1:
                    raise _unsupported(node, f"scale {scales[a]:.6g} on an axis of unknown length (integer "
                                             "scales only)")
                axes += [Axis(n, n * int(scales[a]), scales[a]) for n in range(1, 17)]
                continue
            size_out = sizes[a] if sizes is not None else int(math.floor(size_in * np.float32(scales[a])))
            if sizes is None and size_out != size_in * scales[a]:
                raise _unsupported(node, f"scale {scales[a]:.6g} of an axis of length {size_in} is not a whole "
                                         "output length (TFLite resizes to a size)")
            axes.append(Axis(size_in, size_out, scales[a]))
        return axes

    def _resize_size(self, node: onnx.NodeProto, x: int, in_shape: Shape, scales: list[float],
                     sizes: list[int] | None) -> int:
        """The int32 [new_height, new_width] input of a TFLite resize (computed when H/W are unknown)."""
        static = [d for d in in_shape[2:] if d is not None]
        if len(static) == 2:
            out = sizes[2:] if sizes is not None else [int(d * s) for d, s in zip(static, scales[2:], strict=True)]
            return self.b.const(f"{node.name}/size", np.array(out, np.int32))
        shape = self.b.tensor(f"{node.name}/shape", [4], INT32)
        self.b.op(Op.SHAPE, [x], [shape], *options("ShapeOptions", outType=tfl.TensorType.INT32))
        hw = self.b.tensor(f"{node.name}/hw", [2], INT32)
        self.b.op(Op.STRIDED_SLICE, [shape, *(self.b.const(f"{node.name}/hw_{k}", np.array([v], np.int32))
                                              for k, v in (("begin", 1), ("end", 3), ("stride", 1)))], [hw],
                  *options("StridedSliceOptions"))
        size = self.b.tensor(f"{node.name}/size", [2], INT32)
        self.b.op(Op.MUL, [hw, self.b.const(f"{node.name}/scales", np.array(scales[2:], np.int32))], [size],
                  *options("MulOptions"))
        return size

    # -- layout and shape --------------------------------------------------------------

    def pad(self, node: onnx.NodeProto) -> None:
        mode = _text(attribute(node, "mode", "constant"))
        rank = self.rank(node.input[0], node)
        if self.opset >= 11:
            pads = [int(p) for p in self.constant(node.input[1], node)]
            value_c = self.optional_constant(node, 2)
            value = float(value_c) if value_c is not None and value_c.size else 0.0
            axes_c = self.optional_constant(node, 3)
        else:
            pads, value, axes_c = list(attribute(node, "pads", [])), float(attribute(node, "value", 0.0)), None
        axes = [int(a) % rank for a in axes_c] if axes_c is not None else list(range(rank))
        if any(p < 0 for p in pads):
            raise _unsupported(node, f"negative pads {pads} (cropping)")
        per_axis = {a: (pads[i], pads[i + len(axes)]) for i, a in enumerate(axes)}
        layout = self.layout_of(node.input[0])
        onnx_axes = _TO_NHWC if layout is Layout.NHWC else range(rank)
        paddings = self.b.const(f"{node.name}/pads", np.array([per_axis.get(a, (0, 0)) for a in onnx_axes],
                                                              np.int32))
        x = self.get(node.input[0], layout, node)
        out = self.define(node.output[0], layout, node)
        if mode == "reflect":
            self.b.op(Op.MIRROR_PAD, [x, paddings], [out], *options("MirrorPadOptions", mode=tfl.MirrorPadMode.REFLECT))
        elif mode != "constant":
            raise _unsupported(node, f"mode={mode!r} (TFLite pads with a constant or by reflection)")
        elif value == 0.0:
            self.b.op(Op.PAD, [x, paddings], [out], *options("PadOptions"))
        else:
            fill = self.b.const(f"{node.name}/pad_value", np.array(value, np.float32))
            self.b.op(Op.PADV2, [x, paddings, fill], [out], *options("PadV2Options"))

    def transpose(self, node: onnx.NodeProto) -> None:
        rank = self.rank(node.input[0], node)
        perm = [int(p) for p in attribute(node, "perm", list(reversed(range(rank))))]
        layout = self.layout_of(node.input[0])
        stored = [_axis_in(layout, p) for p in perm]  # the permutation of the stored tensor
        x = self.get(node.input[0], layout, node)
        if stored == list(range(rank)):
            self.values[node.output[0]] = (x, Layout.PLAIN)  # e.g. NCHW -> NHWC of an NHWC value
            return
        self.b.op(Op.TRANSPOSE, [x, self.b.const(f"{node.name}/perm", np.array(stored, np.int32))],
                  [self.define(node.output[0], Layout.PLAIN, node)])

    def _reshape_to(self, node: onnx.NodeProto, target: list[int]) -> None:
        if target.count(-1) > 1:
            raise _unsupported(node, f"target shape {target} has more than one unknown dimension")
        x = self.get(node.input[0], Layout.PLAIN, node)
        shape = self.b.const(f"{node.name}/shape", np.array(target, np.int32))
        self.b.op(Op.RESHAPE, [x, shape], [self.define(node.output[0], Layout.PLAIN, node)],
                  *options("ReshapeOptions", newShape=target))

    def reshape(self, node: onnx.NodeProto) -> None:
        if node.input[1] in self.shape_values:
            requested = list(self.shape_values[node.input[1]])
        else:
            requested = [int(d) for d in self.constant(node.input[1], node)]
        self._reshape_to(node, self._reshape_target(node, requested))

    def reshape_to_inferred(self, node: onnx.NodeProto) -> None:
        """Squeeze / Unsqueeze: a reshape to the inferred output shape."""
        self._reshape_to(node, _minus_one_unknown(self.shape(node.output[0], node)))

    def flatten(self, node: onnx.NodeProto) -> None:
        shape = self.shape(node.input[0], node)
        axis = attribute(node, "axis", 1) % max(len(shape), 1)

        def product(dims: Shape) -> int:
            known = [d for d in dims if d is not None]
            return -1 if len(known) < len(dims) else _product(known)

        self._reshape_to(node, [product(shape[:axis]), product(shape[axis:])])

    def concat(self, node: onnx.NodeProto) -> None:
        rank = self.rank(node.output[0], node)
        axis = attribute(node, "axis", 0) % rank
        nhwc = rank == 4 and any(self.layout_of(i) is Layout.NHWC for i in node.input)
        layout = Layout.NHWC if nhwc else Layout.PLAIN
        inputs = [self.get(name, layout, node) for name in node.input]
        self.b.op(Op.CONCATENATION, inputs, [self.define(node.output[0], layout, node)],
                  *options("ConcatenationOptions", axis=_axis_in(layout, axis)))

    def split(self, node: onnx.NodeProto) -> None:
        shape = self.shape(node.input[0], node)
        axis = attribute(node, "axis", 0) % len(shape)
        given = self.optional_constant(node, 1) if self.opset >= 13 else attribute(node, "split", None)
        if given is not None and len(given):
            sizes = [int(s) for s in given]
        else:
            dim = shape[axis]
            if dim is None:
                raise _unsupported(node, "an equal split of an axis of unknown length")
            n = len(node.output)
            chunk = math.ceil(dim / n)
            sizes = [chunk] * (n - 1) + [dim - chunk * (n - 1)]
        layout = self.layout_of(node.input[0])
        x = self.get(node.input[0], layout, node)
        outputs = [self.define(name, layout, node) for name in node.output]
        self.b.op(Op.SPLIT_V, [x, self.b.const(f"{node.name}/sizes", np.array(sizes, np.int32)),
                               self.b.const(f"{node.name}/axis", np.array(_axis_in(layout, axis), np.int32))],
                  outputs, *options("SplitVOptions", numSplits=len(sizes)))

    def slice(self, node: onnx.NodeProto) -> None:
        shape = self.shape(node.input[0], node)
        rank = len(shape)
        starts, ends = (np.asarray(self.constant(node.input[i], node), np.int64) for i in (1, 2))
        axes_c, steps_c = self.optional_constant(node, 3), self.optional_constant(node, 4)
        axes = [int(a) % rank for a in axes_c] if axes_c is not None else list(range(len(starts)))
        steps = [int(s) for s in steps_c] if steps_c is not None else [1] * len(axes)
        layout = self.layout_of(node.input[0])
        begin, end, stride = [0] * rank, [0] * rank, [1] * rank
        begin_mask = end_mask = (1 << rank) - 1
        for a, s, e, step in zip(axes, starts, ends, steps, strict=True):
            p = _axis_in(layout, a)
            b_, e_, masks = _slice_bounds(node, int(s), int(e), step, shape[a])
            begin[p], end[p], stride[p] = b_, e_, step
            begin_mask &= ~(1 << p) if "begin" not in masks else begin_mask
            end_mask &= ~(1 << p) if "end" not in masks else end_mask
        x = self.get(node.input[0], layout, node)
        consts = [self.b.const(f"{node.name}/{k}", np.array(v, np.int32))
                  for k, v in (("begin", begin), ("end", end), ("strides", stride))]
        self.b.op(Op.STRIDED_SLICE, [x, *consts], [self.define(node.output[0], layout, node)],
                  *options("StridedSliceOptions", beginMask=begin_mask, endMask=end_mask))

    def softmax(self, node: onnx.NodeProto) -> None:
        rank = self.rank(node.input[0], node)
        axis = attribute(node, "axis", -1) % rank
        if rank == 4 and axis == 1 and self.layout_of(node.input[0]) is Layout.NHWC:
            layout = Layout.NHWC  # channels are the last axis of an NHWC tensor
        elif axis == rank - 1:
            layout = Layout.PLAIN
        else:
            self._softmax_moved(node, axis, rank)
            return
        x = self.get(node.input[0], layout, node)
        self.b.op(Op.SOFTMAX, [x], [self.define(node.output[0], layout, node)], *options("SoftmaxOptions", beta=1.0))

    def _softmax_moved(self, node: onnx.NodeProto, axis: int, rank: int) -> None:
        """Softmax over another axis: TRANSPOSE it last, SOFTMAX, TRANSPOSE back."""
        perm = [a for a in range(rank) if a != axis] + [axis]
        back = [perm.index(a) for a in range(rank)]
        shape = self.shape(node.input[0], node)
        x = self.get(node.input[0], Layout.PLAIN, node)
        moved = self.b.tensor(f"{node.name}/moved", [shape[p] for p in perm])
        self.b.op(Op.TRANSPOSE, [x, self.b.const(f"{node.name}/perm", np.array(perm, np.int32))], [moved])
        soft = self.b.tensor(f"{node.name}/softmax", [shape[p] for p in perm])
        self.b.op(Op.SOFTMAX, [moved], [soft], *options("SoftmaxOptions", beta=1.0))
        self.b.op(Op.TRANSPOSE, [soft, self.b.const(f"{node.name}/perm_back", np.array(back, np.int32))],
                  [self.define(node.output[0], Layout.PLAIN, node)])

    def alias(self, node: onnx.NodeProto) -> None:
        layout = self.layout_of(node.input[0])
        self.values[node.output[0]] = (self.get(node.input[0], layout, node), layout)

    # -- driver ------------------------------------------------------------------------

    def handlers(self) -> dict[str, Callable[[onnx.NodeProto], None]]:
        table: dict[str, Callable[[onnx.NodeProto], None]] = {
            "Gemm": self.gemm, "MatMul": self.matmul,
            "Clip": self.clip, "HardSigmoid": self.hard_sigmoid, "LeakyRelu": self.leaky_relu,
            "Elu": self.elu, "PRelu": self.prelu, "BatchNormalization": self.batch_norm,
            "Softmax": self.softmax, "Conv": self.conv, "MaxPool": self.pool, "AveragePool": self.pool,
            "GlobalAveragePool": self.global_pool, "GlobalMaxPool": self.global_pool,
            "Resize": self.resize, "Upsample": self.resize, "Pad": self.pad, "Transpose": self.transpose,
            "Reshape": self.reshape, "Flatten": self.flatten, "Squeeze": self.reshape_to_inferred,
            "Unsqueeze": self.reshape_to_inferred, "Concat": self.concat, "Split": self.split,
            "Slice": self.slice, "Identity": self.alias, "Dropout": self.alias,
            "Reciprocal": self.reciprocal, "Pow": self.pow, "Cast": self.cast, "LSTM": self.lstm,
            "Expand": self.expand, "If": self.if_,
        }
        table.update(dict.fromkeys(_VARIADIC, self.variadic))
        table.update(dict.fromkeys(_COMPARE, self.compare))
        table["Where"] = self.where
        table.update(dict.fromkeys(_BINARY, self.binary))
        table.update(dict.fromkeys(_REDUCE, self.reduce))
        for op_type, code in _UNARY.items():
            table[op_type] = functools.partial(self.unary, code=code)
        return table

    def run(self, nodes: list[onnx.NodeProto]) -> None:
        handlers = self.handlers()
        for node in nodes:
            if node.domain not in ("", "ai.onnx"):
                raise _unsupported(node, f"custom domain {node.domain!r}")
            if self.fold(node):
                continue
            handler = handlers.get(node.op_type)
            if handler is None:
                raise _unsupported(node, "control flow has no TFLite export" if node.op_type in ("Loop", "Scan")
                                   else "no TFLite mapping")
            handler(node)

    def if_(self, node: onnx.NodeProto) -> None:
        """If as a select: both branches inlined (they only compute), then SELECT_V2 of each output
        by the condition. A constant condition keeps one branch."""
        branches = {a.name: a.g for a in node.attribute if a.type == onnx.AttributeProto.GRAPH}
        then, other = branches["then_branch"], branches["else_branch"]
        cond = self.inits.get(node.input[0])
        chosen = [then] if cond is not None and bool(cond.reshape(-1)[0]) else [other] if cond is not None \
            else [then, other]
        for branch in chosen:
            clash = sorted({o for n in branch.node for o in n.output if o in self.values or o in self.inits})
            if clash:
                raise _unsupported(node, f"a branch redefines the value {clash[0]!r}")
            for tensor in branch.initializer:
                self.inits[tensor.name] = numpy_helper.to_array(tensor)
                self.shapes[tensor.name] = list(tensor.dims)
            self.run(list(branch.node))
        for index, name in enumerate(node.output):
            results = [b.output[index].name for b in chosen]
            if len(results) == 1:
                layout = self.layout_of(results[0])
                self.values[name] = (self.get(results[0], layout, node), layout)
                self.dtypes[name] = self.dtype(results[0])
                continue
            if node.input[0] in self.inits:
                raise _unsupported(node, "a constant condition of several values")
            inputs = [self.get(v, Layout.PLAIN, node) for v in (node.input[0], *results)]
            self.shapes.setdefault(name, self.shape(results[0], node))
            self.b.op(Op.SELECT_V2, inputs, [self.define(name, Layout.PLAIN, node, self.dtype(results[0]))])

    def convert(self) -> bytes:
        graph = self.model.graph
        inputs = []
        for vi in graph.input:
            if vi.name in self.inits:
                continue
            dtype = _INPUT_TYPES.get(vi.type.tensor_type.elem_type)
            if dtype is None:
                raise UnsupportedModelError("only float32 and int32 model inputs can be exported",
                                            where=f"input {vi.name!r}")
            index = self.b.tensor(vi.name, self.shapes[vi.name], dtype)
            self.values[vi.name] = (index, Layout.PLAIN)
            self.dtypes[vi.name] = dtype
            inputs.append((vi.name, index))
        self.run(list(graph.node))
        outputs = [(vi.name, self.get(vi.name, Layout.PLAIN, graph.node[-1])) for vi in graph.output]
        taken = {index for _, index in inputs}
        for name, index in outputs:  # the output tensor carries the ONNX name (not "<name>/plain")
            tensors = self.b.tensors
            if tensors[index].name != name and index not in taken:
                taken.add(index)
                for other in tensors:
                    if other.name == name:
                        other.name = f"{name}/{Layout.NHWC.value}"
                tensors[index].name = name
        return self.b.pack(inputs, outputs)


def _slice_bounds(node: onnx.NodeProto, start: int, end: int, step: int,
                  dim: int | None) -> tuple[int, int, set[str]]:
    """STRIDED_SLICE begin, end and which masks to set, for ONNX Slice bounds on one axis."""
    if step == 0:
        raise _unsupported(node, "step 0")
    if step > 0:
        masks = set()
        if start <= -_INT32_MAX or (dim is not None and start <= -dim):
            masks.add("begin")
        if end >= _INT32_MAX or (dim is not None and end >= dim):
            masks.add("end")
        return int(np.clip(start, -_INT32_MAX, _INT32_MAX)), int(np.clip(end, -_INT32_MAX, _INT32_MAX)), masks
    if dim is None:
        raise _unsupported(node, "a negative step on an axis of unknown length")
    first = min(max(start + dim if start < 0 else start, 0), dim - 1)
    last = min(max(end + dim if end < 0 else end, -1), dim - 1)
    return first, last, {"end"} if last == -1 else set()


def _shape_slice(node: onnx.NodeProto, dims: np.ndarray) -> np.ndarray:
    """Shape's optional start/end attributes (opset 15)."""
    end = attribute(node, "end", None)
    return dims[attribute(node, "start", 0):end]


def _value_infos(model: onnx.ModelProto) -> list[onnx.ValueInfoProto]:
    """Inputs, outputs and every inferred intermediate value (with data propagation for shapes)."""
    try:
        inferred = onnx.shape_inference.infer_shapes(model, strict_mode=False, data_prop=True)
    except Exception:  # data propagation is best effort; plain inference never raises here
        inferred = onnx.shape_inference.infer_shapes(model, strict_mode=False)
    graph = inferred.graph
    inner = [vi for node in graph.node for sub in subgraphs(node) for g in all_graphs(sub)
             for vi in [*g.value_info, *g.output]]
    return inner + list(graph.input) + list(graph.value_info) + list(graph.output)


def fix_input_shapes(model: onnx.ModelProto, shapes: Mapping[str, Sequence[int | None]]) -> onnx.ModelProto:
    """Copy of ``model`` whose inputs named in ``shapes`` have those dimensions (None: left as
    it is); the inferred shapes of intermediate values and outputs are dropped (the export
    re-infers them), so shape arithmetic on them folds to constants."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    for value in out.graph.input:
        if value.name not in shapes:
            continue
        dims = value.type.tensor_type.shape.dim
        if len(dims) != len(shapes[value.name]):
            raise UnsupportedModelError(f"input {value.name!r} has rank {len(dims)}, the fixed shape "
                                        f"{list(shapes[value.name])} has {len(shapes[value.name])}",
                                        where=f"input {value.name!r}")
        for dim, size in zip(dims, shapes[value.name], strict=True):
            if size is not None:
                dim.Clear()
                dim.dim_value = int(size)
    del out.graph.value_info[:]
    for value in out.graph.output:
        value.type.tensor_type.ClearField("shape")
    return out


def export_model(model: onnx.ModelProto, input_shapes: Mapping[str, Sequence[int | None]] | None = None) -> bytes:
    """Convert a loaded ONNX model (any opset ONNX Runtime runs) to a float32 TFLite flatbuffer;
    ``input_shapes`` fixes the named inputs' dimensions first (:func:`fix_input_shapes`)."""
    model = normalise(model)
    if input_shapes:
        model = fold_constants(fix_input_shapes(model, input_shapes))
    return _Converter(fold_batch_norm(conv1d_as_2d(model))).convert()


def export_tflite(onnx_bytes: bytes, input_shapes: Mapping[str, Sequence[int | None]] | None = None) -> bytes:
    """Convert ONNX bytes to a float32 TFLite flatbuffer (NCHW inputs/outputs kept); see
    :func:`export_model` for ``input_shapes``."""
    data = export_model(load_onnx(onnx_bytes), input_shapes)
    logger.info("exported ONNX (%d B) to TFLite (%d B)", len(onnx_bytes), len(data))
    return data
