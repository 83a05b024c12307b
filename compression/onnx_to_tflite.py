"""Export ONNX to TFLite without TensorFlow, through the flatbuffer schema shipped with LiteRT.

ONNX is NCHW, TFLite convolutions and pools are NHWC. Every value keeps its ONNX meaning and
is stored in one of two layouts: ``PLAIN`` (exactly the ONNX tensor) or ``NHWC`` (a 4-D ONNX
NCHW tensor stored channels-last). Convolutions and pools work in NHWC; shape-sensitive ops
(Reshape, Flatten, Softmax, MatMul) work on PLAIN tensors; TRANSPOSE ops are inserted where the
layout changes. Inputs and outputs keep their ONNX layout and names, so one ONNX model and its
TFLite export are fed the same arrays.

Supported: Gemm, MatMul, Add, Sub, Mul, Div, Relu, Clip (Relu6), Sigmoid, Tanh, Softmax, Conv
(incl. depthwise), MaxPool, AveragePool, GlobalAveragePool, Reshape, Flatten, Concat, Identity,
Dropout. Anything else raises :class:`UnsupportedModelError` naming the operator and node.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from enum import Enum

import flatbuffers
import numpy as np
import onnx
from ai_edge_litert import schema_py_generated as tfl
from onnx import numpy_helper

from edgefleet.compression.onnx_graph import attribute, has_control_flow, load_onnx, normalise
from edgefleet.compression.tflite_graph import TFLITE_IDENTIFIER
from edgefleet.protocol.errors import UnsupportedModelError

logger = logging.getLogger(__name__)

SIGNATURE_KEY = "serving_default"

Shape = list[int | None]


class Layout(Enum):
    PLAIN = "plain"
    NHWC = "nhwc"


_TO_NHWC = (0, 2, 3, 1)
_TO_NCHW = (0, 3, 1, 2)
_NCHW_AXIS_IN_NHWC = {0: 0, 1: 3, 2: 1, 3: 2}

_FLOAT32 = np.dtype(np.float32)

_TENSOR_TYPES = {
    np.dtype(np.float32): tfl.TensorType.FLOAT32,
    np.dtype(np.int32): tfl.TensorType.INT32,
    np.dtype(np.int64): tfl.TensorType.INT64,
}


def _unsupported(node: onnx.NodeProto, why: str) -> UnsupportedModelError:
    return UnsupportedModelError(f"ONNX operator {node.op_type} cannot be exported to TFLite: {why}",
                                 where=f"node {node.name!r}")


class _Builder:
    """Accumulates tensors, buffers and operators of one TFLite subgraph."""

    def __init__(self) -> None:
        self.tensors: list[tfl.TensorT] = []
        self.buffers: list[tfl.BufferT] = [tfl.BufferT()]  # buffer 0 is the empty sentinel
        self.operators: list[tfl.OperatorT] = []
        self.opcodes: dict[int, int] = {}

    def tensor(self, name: str, shape: Shape, dtype: np.dtype = _FLOAT32,
               data: np.ndarray | None = None) -> int:
        t = tfl.TensorT()
        t.name = name
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

    def const(self, name: str, array: np.ndarray) -> int:
        array = np.asarray(array)
        if array.dtype == np.int64:
            array = array.astype(np.int32)
        elif array.dtype == np.float64:
            array = array.astype(np.float32)
        return self.tensor(name, list(array.shape), array.dtype, array)

    def op(self, code: int, inputs: list[int], outputs: list[int],
           options: object | None = None, options_type: int = 0) -> None:
        if code not in self.opcodes:
            self.opcodes[code] = len(self.opcodes)
        op = tfl.OperatorT()
        op.opcodeIndex = self.opcodes[code]
        op.inputs = inputs
        op.outputs = outputs
        if options is not None:
            op.builtinOptionsType = options_type
            op.builtinOptions = options
        self.operators.append(op)


def _options(name: str, **fields: object) -> tuple[object, int]:
    options = getattr(tfl, f"{name}T")()
    for key, value in fields.items():
        setattr(options, key, value)
    return options, getattr(tfl.BuiltinOptions, name)


class _Converter:
    def __init__(self, model: onnx.ModelProto) -> None:
        self.model = model
        self.b = _Builder()
        self.inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
        self.shapes: dict[str, Shape] = {}
        inferred = onnx.shape_inference.infer_shapes(model, strict_mode=False)
        graph = inferred.graph
        for vi in list(graph.input) + list(graph.value_info) + list(graph.output):
            tt = vi.type.tensor_type
            if tt.HasField("shape"):
                self.shapes[vi.name] = [d.dim_value if d.HasField("dim_value") else None
                                        for d in tt.shape.dim]
        for name, array in self.inits.items():
            self.shapes[name] = list(array.shape)
        self.values: dict[str, tuple[int, Layout]] = {}
        self.converted: dict[tuple[str, Layout], int] = {}

    # -- values ------------------------------------------------------------------------

    def shape(self, name: str, node: onnx.NodeProto) -> Shape:
        if name not in self.shapes:
            raise _unsupported(node, f"the shape of {name!r} cannot be inferred")
        return self.shapes[name]

    def get(self, name: str, layout: Layout, node: onnx.NodeProto) -> int:
        """The TFLite tensor holding ONNX value ``name`` in ``layout``."""
        if name in self.inits and name not in self.values:
            self.values[name] = (self.b.const(name, self.inits[name]), Layout.PLAIN)
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
            physical = _physical(shape, layout)
            out = self.b.tensor(f"{name}/{layout.value}", physical)
            self.b.op(tfl.BuiltinOperator.TRANSPOSE,
                      [index, self.b.const(f"{name}/perm_{layout.value}", np.array(perm, np.int32))],
                      [out])
            self.converted[key] = out
        return self.converted[key]

    def layout_of(self, name: str) -> Layout:
        return self.values[name][1] if name in self.values else Layout.PLAIN

    def define(self, name: str, layout: Layout, node: onnx.NodeProto) -> int:
        index = self.b.tensor(name, _physical(self.shape(name, node), layout))
        self.values[name] = (index, layout)
        return index

    def constant(self, name: str, node: onnx.NodeProto) -> np.ndarray:
        if name not in self.inits:
            raise _unsupported(node, f"input {name!r} must be a constant (initializer)")
        return self.inits[name]

    # -- ops ---------------------------------------------------------------------------

    def unary(self, node: onnx.NodeProto, code: int) -> None:
        layout = self.layout_of(node.input[0])
        x = self.get(node.input[0], layout, node)
        self.b.op(code, [x], [self.define(node.output[0], layout, node)])

    def binary(self, node: onnx.NodeProto) -> None:
        code, options = {
            "Add": (tfl.BuiltinOperator.ADD, "AddOptions"),
            "Sub": (tfl.BuiltinOperator.SUB, "SubOptions"),
            "Mul": (tfl.BuiltinOperator.MUL, "MulOptions"),
            "Div": (tfl.BuiltinOperator.DIV, "DivOptions"),
        }[node.op_type]
        out_rank = len(self.shape(node.output[0], node))
        nhwc = out_rank == 4 and any(self.layout_of(i) is Layout.NHWC for i in node.input)
        layout = Layout.NHWC if nhwc else Layout.PLAIN
        inputs = []
        for name in node.input:
            if name in self.inits and nhwc:
                array = self.inits[name]
                array = array.reshape((1,) * (4 - array.ndim) + array.shape).transpose(_TO_NHWC)
                inputs.append(self.b.const(f"{name}/nhwc", array))
            elif len(self.shape(name, node)) == 4 or not nhwc:
                inputs.append(self.get(name, layout, node))
            else:
                raise _unsupported(node, "broadcasting a lower-rank activation over NHWC")
        self.b.op(code, inputs, [self.define(node.output[0], layout, node)], *_options(options))

    def gemm(self, node: onnx.NodeProto) -> None:
        if attribute(node, "transA", 0):
            raise _unsupported(node, "transA=1")
        weight = self.constant(node.input[1], node).astype(np.float32)
        weight = weight if attribute(node, "transB", 0) else weight.T  # TFLite: [out, in]
        weight = weight * np.float32(attribute(node, "alpha", 1.0))
        units = weight.shape[0]
        bias = np.zeros(units, np.float32)
        if len(node.input) > 2 and node.input[2]:
            c = self.constant(node.input[2], node).astype(np.float32)
            if c.size not in (1, units):
                raise _unsupported(node, f"bias of shape {list(c.shape)} is not per output unit")
            bias = np.broadcast_to(c.reshape(-1), (units,)) * np.float32(attribute(node, "beta", 1.0))
        self.fully_connected(node, weight, bias.astype(np.float32))

    def fully_connected(self, node: onnx.NodeProto, weight: np.ndarray,
                        bias: np.ndarray | None) -> None:
        x = self.get(node.input[0], Layout.PLAIN, node)
        w = self.b.const(f"{node.name}/weight", np.ascontiguousarray(weight))
        b = self.b.const(f"{node.name}/bias", bias) if bias is not None else -1
        keep = len(self.shape(node.input[0], node)) > 2
        self.b.op(tfl.BuiltinOperator.FULLY_CONNECTED, [x, w, b],
                  [self.define(node.output[0], Layout.PLAIN, node)],
                  *_options("FullyConnectedOptions", keepNumDims=keep))

    def matmul(self, node: onnx.NodeProto) -> None:
        if node.input[1] in self.inits and self.inits[node.input[1]].ndim == 2:
            self.fully_connected(node, self.inits[node.input[1]].astype(np.float32).T, None)
            return
        a = self.get(node.input[0], Layout.PLAIN, node)
        b = self.get(node.input[1], Layout.PLAIN, node)
        self.b.op(tfl.BuiltinOperator.BATCH_MATMUL, [a, b],
                  [self.define(node.output[0], Layout.PLAIN, node)],
                  *_options("BatchMatMulOptions"))

    def _padding(self, node: onnx.NodeProto, kernel: list[int], strides: list[int],
                 dilations: list[int]) -> tuple[int, list[int] | None]:
        """TFLite padding (SAME/VALID) and explicit [top, left, bottom, right] pads if needed."""
        auto_pad = attribute(node, "auto_pad", b"NOTSET")
        auto_pad = auto_pad.decode() if isinstance(auto_pad, bytes) else auto_pad
        if auto_pad == "VALID":
            return tfl.Padding.VALID, None
        if auto_pad == "SAME_UPPER":
            return tfl.Padding.SAME, None
        if auto_pad != "NOTSET":
            raise _unsupported(node, f"auto_pad={auto_pad}")
        pads = list(attribute(node, "pads", [0, 0, 0, 0]))
        if not any(pads):
            return tfl.Padding.VALID, None
        in_shape = self.shape(node.input[0], node)
        same = []
        for axis in range(2):
            size = in_shape[2 + axis]
            if size is None:
                return tfl.Padding.VALID, pads
            effective = (kernel[axis] - 1) * dilations[axis] + 1
            total = max((math.ceil(size / strides[axis]) - 1) * strides[axis] + effective - size, 0)
            same.append((total // 2, total - total // 2))
        if pads == [same[0][0], same[1][0], same[0][1], same[1][1]]:
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
            x = self._pad(node, x, pads)
        bias = (self.constant(node.input[2], node).astype(np.float32)
                if len(node.input) > 2 and node.input[2] else np.zeros(out_ch, np.float32))
        b = self.b.const(f"{node.name}/bias", bias)
        out = self.define(node.output[0], Layout.NHWC, node)
        common = dict(padding=padding, strideH=strides[0], strideW=strides[1],
                      dilationHFactor=dilations[0], dilationWFactor=dilations[1])
        if group == 1:
            w = self.b.const(f"{node.name}/weight", weight.transpose(0, 2, 3, 1))
            self.b.op(tfl.BuiltinOperator.CONV_2D, [x, w, b], [out],
                      *_options("Conv2DOptions", **common))
        elif group == in_ch and in_per_group == 1:
            w = self.b.const(f"{node.name}/weight", weight.transpose(1, 2, 3, 0))
            self.b.op(tfl.BuiltinOperator.DEPTHWISE_CONV_2D, [x, w, b], [out],
                      *_options("DepthwiseConv2DOptions", depthMultiplier=out_ch // group, **common))
        else:
            raise _unsupported(node, f"grouped convolution (group={group}) that is not depthwise")

    def _pad(self, node: onnx.NodeProto, x: int, pads: list[int]) -> int:
        top, left, bottom, right = pads
        shape = self.shape(node.input[0], node)
        padded = [shape[0], shape[2] and shape[2] + top + bottom,
                  shape[3] and shape[3] + left + right, shape[1]]
        out = self.b.tensor(f"{node.name}/padded", padded)
        paddings = np.array([[0, 0], [top, bottom], [left, right], [0, 0]], np.int32)
        self.b.op(tfl.BuiltinOperator.PAD, [x, self.b.const(f"{node.name}/pads", paddings)], [out],
                  *_options("PadOptions"))
        return out

    def pool(self, node: onnx.NodeProto) -> None:
        kernel = list(attribute(node, "kernel_shape", []))
        if len(kernel) != 2:
            raise _unsupported(node, "only 2-D pooling is supported")
        if attribute(node, "ceil_mode", 0):
            raise _unsupported(node, "ceil_mode=1")
        if any(d != 1 for d in attribute(node, "dilations", [1, 1])):
            raise _unsupported(node, "dilated pooling")
        strides = list(attribute(node, "strides", [1, 1]))
        padding, pads = self._padding(node, kernel, strides, [1, 1])
        if pads is not None:
            raise _unsupported(node, f"pads {pads} are neither VALID nor SAME")
        if node.op_type == "AveragePool" and attribute(node, "count_include_pad", 0) \
                and padding == tfl.Padding.SAME:
            raise _unsupported(node, "count_include_pad=1 with padding")
        code = (tfl.BuiltinOperator.MAX_POOL_2D if node.op_type == "MaxPool"
                else tfl.BuiltinOperator.AVERAGE_POOL_2D)
        x = self.get(node.input[0], Layout.NHWC, node)
        self.b.op(code, [x], [self.define(node.output[0], Layout.NHWC, node)],
                  *_options("Pool2DOptions", padding=padding, strideH=strides[0], strideW=strides[1],
                            filterHeight=kernel[0], filterWidth=kernel[1]))

    def global_average_pool(self, node: onnx.NodeProto) -> None:
        if len(self.shape(node.input[0], node)) != 4:
            raise _unsupported(node, "only 4-D inputs are supported")
        x = self.get(node.input[0], Layout.NHWC, node)
        axes = self.b.const(f"{node.name}/axes", np.array([1, 2], np.int32))
        self.b.op(tfl.BuiltinOperator.MEAN, [x, axes], [self.define(node.output[0], Layout.NHWC, node)],
                  *_options("ReducerOptions", keepDims=True))

    def clip(self, node: onnx.NodeProto) -> None:
        lo = (float(self.constant(node.input[1], node)) if len(node.input) > 1 and node.input[1]
              else attribute(node, "min", -math.inf))
        hi = (float(self.constant(node.input[2], node)) if len(node.input) > 2 and node.input[2]
              else attribute(node, "max", math.inf))
        if lo == 0.0 and hi == 6.0:
            self.unary(node, tfl.BuiltinOperator.RELU6)
        elif lo == 0.0 and hi == math.inf:
            self.unary(node, tfl.BuiltinOperator.RELU)
        else:
            layout = self.layout_of(node.input[0])
            current = self.get(node.input[0], layout, node)
            shape = _physical(self.shape(node.output[0], node), layout)
            for code, bound, tag in ((tfl.BuiltinOperator.MAXIMUM, lo, "min"),
                                     (tfl.BuiltinOperator.MINIMUM, hi, "max")):
                if math.isinf(bound):
                    continue
                out = self.b.tensor(f"{node.name}/{tag}", shape)
                self.b.op(code, [current, self.b.const(f"{node.name}/{tag}_value",
                                                       np.array(bound, np.float32))], [out])
                current = out
            self.values[node.output[0]] = (current, layout)

    def softmax(self, node: onnx.NodeProto) -> None:
        rank = len(self.shape(node.input[0], node))
        axis = attribute(node, "axis", -1) % rank
        if rank == 4 and axis == 1 and self.layout_of(node.input[0]) is Layout.NHWC:
            layout = Layout.NHWC  # channels are the last axis of an NHWC tensor
        elif axis == rank - 1:
            layout = Layout.PLAIN
        else:
            raise _unsupported(node, "softmax over an axis other than the last (or channels)")
        x = self.get(node.input[0], layout, node)
        self.b.op(tfl.BuiltinOperator.SOFTMAX, [x], [self.define(node.output[0], layout, node)],
                  *_options("SoftmaxOptions", beta=1.0))

    def _reshape_to(self, node: onnx.NodeProto, target: list[int]) -> None:
        if target.count(-1) > 1:
            raise _unsupported(node, f"target shape {target} has more than one unknown dimension")
        x = self.get(node.input[0], Layout.PLAIN, node)
        shape = self.b.const(f"{node.name}/shape", np.array(target, np.int32))
        self.b.op(tfl.BuiltinOperator.RESHAPE, [x, shape],
                  [self.define(node.output[0], Layout.PLAIN, node)],
                  *_options("ReshapeOptions", newShape=target))

    def reshape(self, node: onnx.NodeProto) -> None:
        requested = [int(d) for d in self.constant(node.input[1], node)]
        in_shape = self.shape(node.input[0], node)
        target: list[int] = []
        for i, d in enumerate(requested):
            if d == 0 and not attribute(node, "allowzero", 0):
                dim = in_shape[i]
                d = dim if dim is not None else -1
            target.append(d)
        self._reshape_to(node, target)

    def flatten(self, node: onnx.NodeProto) -> None:
        shape = self.shape(node.input[0], node)
        axis = attribute(node, "axis", 1) % max(len(shape), 1)

        def product(dims: Shape) -> int:
            known = [d for d in dims if d is not None]
            return -1 if len(known) < len(dims) else int(np.prod(known, dtype=np.int64))

        self._reshape_to(node, [product(shape[:axis]), product(shape[axis:])])

    def concat(self, node: onnx.NodeProto) -> None:
        rank = len(self.shape(node.output[0], node))
        axis = attribute(node, "axis", 0) % rank
        nhwc = rank == 4 and any(self.layout_of(i) is Layout.NHWC for i in node.input)
        layout = Layout.NHWC if nhwc else Layout.PLAIN
        inputs = [self.get(name, layout, node) for name in node.input]
        self.b.op(tfl.BuiltinOperator.CONCATENATION, inputs,
                  [self.define(node.output[0], layout, node)],
                  *_options("ConcatenationOptions", axis=_NCHW_AXIS_IN_NHWC[axis] if nhwc else axis))

    def alias(self, node: onnx.NodeProto) -> None:
        layout = self.layout_of(node.input[0])
        self.values[node.output[0]] = (self.get(node.input[0], layout, node), layout)

    # -- driver ------------------------------------------------------------------------

    def handlers(self) -> dict[str, Callable[[onnx.NodeProto], None]]:
        return {
            "Gemm": self.gemm, "MatMul": self.matmul,
            "Add": self.binary, "Sub": self.binary, "Mul": self.binary, "Div": self.binary,
            "Relu": lambda n: self.unary(n, tfl.BuiltinOperator.RELU),
            "Sigmoid": lambda n: self.unary(n, tfl.BuiltinOperator.LOGISTIC),
            "Tanh": lambda n: self.unary(n, tfl.BuiltinOperator.TANH),
            "Clip": self.clip, "Softmax": self.softmax,
            "Conv": self.conv, "MaxPool": self.pool, "AveragePool": self.pool,
            "GlobalAveragePool": self.global_average_pool,
            "Reshape": self.reshape, "Flatten": self.flatten, "Concat": self.concat,
            "Identity": self.alias, "Dropout": self.alias,
        }

    def convert(self) -> bytes:
        graph = self.model.graph
        if has_control_flow(self.model):
            node = next(n for n in graph.node if n.op_type in ("If", "Loop", "Scan"))
            raise _unsupported(node, "control flow has no TFLite export")
        inputs = []
        for vi in graph.input:
            if vi.name in self.inits:
                continue
            if vi.type.tensor_type.elem_type != onnx.TensorProto.FLOAT:
                raise UnsupportedModelError("only float32 model inputs can be exported",
                                            where=f"input {vi.name!r}")
            index = self.b.tensor(vi.name, self.shapes[vi.name])
            self.values[vi.name] = (index, Layout.PLAIN)
            inputs.append((vi.name, index))
        handlers = self.handlers()
        for node in graph.node:
            if node.domain not in ("", "ai.onnx"):
                raise _unsupported(node, f"custom domain {node.domain!r}")
            handler = handlers.get(node.op_type)
            if handler is None:
                raise _unsupported(node, "no TFLite mapping")
            handler(node)
        outputs = []
        for vi in graph.output:
            outputs.append((vi.name, self.get(vi.name, Layout.PLAIN, graph.node[-1])))
        return self._pack(inputs, outputs)

    def _pack(self, inputs: list[tuple[str, int]], outputs: list[tuple[str, int]]) -> bytes:
        b = self.b
        subgraph = tfl.SubGraphT()
        subgraph.tensors = b.tensors
        subgraph.inputs = [i for _, i in inputs]
        subgraph.outputs = [i for _, i in outputs]
        subgraph.operators = b.operators
        subgraph.name = "main"
        codes = []
        for code in sorted(b.opcodes, key=b.opcodes.__getitem__):
            oc = tfl.OperatorCodeT()
            oc.builtinCode = code
            oc.deprecatedBuiltinCode = min(code, tfl.BuiltinOperator.PLACEHOLDER_FOR_GREATER_OP_CODES)
            oc.version = 1
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
        model.buffers = b.buffers
        model.signatureDefs = [signature]
        builder = flatbuffers.Builder(1024)
        builder.Finish(model.Pack(builder), file_identifier=TFLITE_IDENTIFIER)
        return bytes(builder.Output())


def _tensor_map(name: str, index: int) -> tfl.TensorMapT:
    tm = tfl.TensorMapT()
    tm.name = name
    tm.tensorIndex = index
    return tm


def _physical(shape: Shape, layout: Layout) -> Shape:
    return [shape[p] for p in _TO_NHWC] if layout is Layout.NHWC else list(shape)


def export_tflite(onnx_bytes: bytes) -> bytes:
    """Convert an ONNX model to a float32 TFLite flatbuffer (NCHW inputs/outputs kept)."""
    model = normalise(load_onnx(onnx_bytes))
    data = _Converter(model).convert()
    logger.info("exported ONNX (%d B) to TFLite (%d B)", len(onnx_bytes), len(data))
    return data
