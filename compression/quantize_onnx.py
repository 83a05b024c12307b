"""ONNX quantization with ``onnxruntime.quantization``: dynamic int8, static int8 QDQ, fp16.

Every quantizer takes a normalised model (see :mod:`onnx_graph`) and ``exclude``, node names
to keep in float (the automatic fallback grows that list one operator at a time).
"""

from __future__ import annotations

import contextlib
import io
import logging
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

from edgefleet.compression.config import CalibrationConfig, CalibrationMethod
from edgefleet.compression.inputs import Inputs, count, feed, fixed_batch, onnx_input_specs, take
from edgefleet.compression.onnx_compact import compact_quantized
from edgefleet.compression.onnx_graph import all_graphs, compact_names, subgraphs, weight_inputs
from edgefleet.protocol.errors import CompressionError

logger = logging.getLogger(__name__)


class BatchReader:
    """A CalibrationDataReader that hands out one batch at a time.

    onnxruntime collects calibration statistics per range set with :meth:`set_range` (we use
    ranges of one batch), so the intermediate tensors held in memory stay one batch large no
    matter how many samples calibrate the model.
    """

    def __init__(self, input_name: str, data: Inputs, batch_size: int, limit: int) -> None:
        self._input_name = input_name
        self._data = data
        self._batch_size = batch_size
        self._samples = min(count(data), limit)
        self._batches = (self._samples + batch_size - 1) // batch_size
        self._iter: Iterator[int] = iter(range(self._batches))

    def __len__(self) -> int:
        return self._batches

    def set_range(self, start_index: int, end_index: int) -> None:
        self._iter = iter(range(start_index, min(end_index, self._batches)))

    def get_next(self) -> dict[str, np.ndarray] | None:
        index = next(self._iter, None)
        if index is None:
            return None
        start = index * self._batch_size
        stop = min(start + self._batch_size, self._samples)
        return feed(take(self._data, start, stop), self._input_name)

    def rewind(self) -> None:
        self._iter = iter(range(self._batches))


class _QuietPreprocessHint(logging.Filter):
    """onnxruntime logs a "run pre-processing" hint on the root logger for every call."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "pre-processing before quantization" not in record.getMessage()


@contextlib.contextmanager
def _quiet_root() -> Iterator[None]:
    quiet = _QuietPreprocessHint()
    logging.getLogger().addFilter(quiet)
    try:
        yield
    finally:
        logging.getLogger().removeFilter(quiet)


def _lean(path: Path, source: onnx.ModelProto) -> bytes:
    """The quantized model without value_info and doc strings (the runtime re-infers shapes),
    without the bytes :func:`onnx_compact.compact_quantized` removes, with short value names and
    only ``source``'s node names."""
    model = onnx.load_model(str(path))
    del model.graph.value_info[:]
    model.ClearField("doc_string")
    compact_quantized(model)
    compact_names(model, {n.name for g in all_graphs(source.graph) for n in g.node})
    lean: bytes = model.SerializeToString()
    return lean


def candidates(model: onnx.ModelProto, static: bool) -> list[str]:
    """Node names the quantizer would rewrite (what the fallback can keep in float); static int8
    includes the operators it quantizes dynamically (:func:`dynamic_only_ops`)."""
    from onnxruntime.quantization.registry import IntegerOpsRegistry, QDQRegistry, QLinearOpsRegistry

    op_types = set(QDQRegistry) | set(QLinearOpsRegistry) | dynamic_only_ops() if static else set(IntegerOpsRegistry)
    return [n.name for n in model.graph.node if n.op_type in op_types]


def dynamic_only_ops() -> set[str]:
    """Operators ONNX Runtime quantizes dynamically but has no QDQ form for (LSTM, Attention):
    static int8 quantizes their weights dynamically, else they would stay float (an OCR model's
    LSTM holds half its weights)."""
    from onnxruntime.quantization.registry import IntegerOpsRegistry, QDQRegistry, QLinearOpsRegistry

    return set(IntegerOpsRegistry) - set(QDQRegistry) - set(QLinearOpsRegistry)


def dynamic_in_static(model: onnx.ModelProto) -> list[onnx.NodeProto]:
    """The nodes static int8 quantizes dynamically: :func:`dynamic_only_ops` of the main graph
    and the weight operators inside If/Loop/Scan bodies (QDQ does not enter subgraphs)."""
    from onnxruntime.quantization.registry import IntegerOpsRegistry

    kinds = dynamic_only_ops()
    inner = [n for node in model.graph.node for sub in subgraphs(node) for g in all_graphs(sub) for n in g.node]
    return [n for n in [*(n for n in model.graph.node if n.op_type in kinds),
                        *(n for n in inner if n.op_type in IntegerOpsRegistry)] if n.name]


def _quantize_dynamic_only(path: Path, out: Path, *, per_channel: bool, exclude: list[str]) -> list[str]:
    """Quantize dynamically, into ``out``, what static QDQ left float in the model at ``path``:
    the :func:`dynamic_only_ops` nodes, and the weight operators inside If/Loop/Scan bodies (QDQ
    does not enter subgraphs). The names of the nodes quantized (none: ``out`` is not written)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    model = onnx.load_model(str(path), load_external_data=False)
    chosen = [n for n in dynamic_in_static(model) if n.name not in exclude]
    if not chosen:
        return []
    quantize_dynamic(path, out, per_channel=per_channel, weight_type=QuantType.QInt8,
                     op_types_to_quantize=sorted({n.op_type for n in chosen}),
                     nodes_to_quantize=[n.name for n in chosen],
                     extra_options={"MatMulConstBOnly": True, "EnableSubgraph": True})
    return [n.name for n in chosen]


def _translate(exc: Exception, what: str) -> CompressionError:
    return CompressionError(f"{what} failed: {_cause(exc)}", where="model")


def quantize_dynamic_int8(model: onnx.ModelProto, *, per_channel: bool,
                          exclude: list[str]) -> bytes:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    with tempfile.TemporaryDirectory(prefix="edgefleet-q-") as tmp:
        out = Path(tmp) / "model.int8.onnx"
        try:
            with _quiet_root():
                # EnableSubgraph: also the weights inside If/Loop/Scan bodies.
                quantize_dynamic(model, out, per_channel=per_channel, weight_type=QuantType.QInt8,
                                 nodes_to_exclude=list(exclude),
                                 extra_options={"MatMulConstBOnly": True, "EnableSubgraph": True})
        except Exception as exc:  # the quantizer raises bare ValueError/KeyError/...
            raise _translate(exc, "dynamic int8 quantization") from exc
        logger.info("ONNX dynamic int8 (per_channel=%s, %d nodes in float)", per_channel,
                    len(exclude))
        return _lean(out, model)


_METHODS = {
    CalibrationMethod.MINMAX: "MinMax",
    CalibrationMethod.ENTROPY: "Entropy",
    CalibrationMethod.PERCENTILE: "Percentile",
}


def prepare_static(model: onnx.ModelProto) -> tuple[onnx.ModelProto, list[str]]:
    """Shape inference before static quantization, and what was done instead when it failed.

    ONNX Runtime's ``quant_pre_process`` (symbolic shape inference) first; when that fails (it
    does on many real convolutional models: "Incomplete symbolic shape inference" or a bare
    ``AssertionError``), ONNX's own shape inference; when that fails too, none (the quantizer
    then skips the tensors whose type it cannot tell). Every file stays in a private temporary
    directory.
    """
    from onnxruntime.quantization.shape_inference import quant_pre_process

    # Short value names first: the quantizer derives names from value names and real exports
    # ("a;b" fused names) collide with them (a DequantizeLinear of a bias fed a Transpose).
    renamed = onnx.ModelProto()
    renamed.CopyFrom(model)
    compact_names(renamed, {n.name for g in all_graphs(renamed.graph) for n in g.node})
    model = renamed
    with tempfile.TemporaryDirectory(prefix="edgefleet-pre-") as tmp:
        source, prepared = Path(tmp) / "model.onnx", Path(tmp) / "model.pre.onnx"
        try:
            # Shape inference only: the optimizer would fuse MatMul+Add back into Gemm. The symbolic
            # pass runs here, since ONNX Runtime's leaves sym_shape_infer_temp.onnx and its external
            # data in the working directory whenever inference is incomplete.
            onnx.save_model(_symbolic_shapes(model), source)
            quant_pre_process(str(source), str(prepared), skip_optimization=True, skip_symbolic_shape=True)
            return onnx.load_model(str(prepared)), []
        except Exception as exc:  # any failure of this optional pass falls back
            failure = f"symbolic shape inference failed ({_cause(exc)})"
    logger.info("%s; falling back to ONNX shape inference", failure)
    try:
        inferred = onnx.shape_inference.infer_shapes(model)
    except Exception as exc:
        return model, [f"{failure}; ONNX shape inference failed too ({_cause(exc)}): none used"]
    return inferred, [f"{failure}: plain ONNX shape inference used"]


def _symbolic_shapes(model: onnx.ModelProto) -> onnx.ModelProto:
    """ONNX Runtime's symbolic shape inference (``SymbolicShapeInference.infer_shapes``, pinned
    version) without the file it writes into the working directory when inference is incomplete."""
    from onnxruntime.tools.symbolic_shape_infer import SymbolicShapeInference

    inference = SymbolicShapeInference(2**31 - 1, False, False, 0)
    inference._preprocess(model)
    complete = False
    while inference.run_:
        complete = inference._infer_impl()
    inference._update_output_from_vi()
    if not complete:
        raise RuntimeError("Incomplete symbolic shape inference")
    result: onnx.ModelProto = inference.out_mp_
    return result


def _cause(exc: BaseException) -> str:
    """What failed, and at which node when the library's stack tells it."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    cause = f"{type(exc).__name__}: {text}" if text else type(exc).__name__
    node = _failing_node(exc)
    return f"{cause} at {node.op_type} node {node.name!r}" if node is not None else cause


def _failing_node(exc: BaseException) -> onnx.NodeProto | None:
    """The innermost ONNX node among the locals of the traceback's frames (the node the
    library was working on: ONNX Runtime's quantizer and shape inference keep it as ``node``)."""
    found = None
    tb = exc.__traceback__
    while tb is not None:
        local = tb.tb_frame.f_locals
        candidate = local.get("node")
        if candidate is None and hasattr(local.get("self"), "node"):
            candidate = local["self"].node
        if isinstance(candidate, onnx.NodeProto):
            found = candidate
        tb = tb.tb_next
    return found


def quantize_static_int8(model: onnx.ModelProto, calibration: Inputs, *,
                         config: CalibrationConfig, per_channel: bool,
                         exclude: list[str], prepared: bool = False) -> bytes:
    """Static int8 QDQ (int8 weights per channel, int8 activations) calibrated on batches.

    ``prepared``: ``model`` already went through :func:`prepare_static` (done once when the
    fallback quantizes the same model many times).
    """
    from onnxruntime.quantization import CalibrationMethod as OrtMethod
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static

    if not prepared:
        model, notes = prepare_static(model)
        for note in notes:
            logger.info("static int8: %s", note)
    specs = onnx_input_specs(model)
    batch = min(config.batch_size, fixed_batch(specs) or config.batch_size)
    first_input = specs[0].name if specs else ""
    reader = BatchReader(first_input, calibration, batch, config.max_samples)
    extra = {
        "CalibStridedMinMax": 1,  # collect and merge statistics one batch at a time
        "CalibPercentile": config.percentile,
        "ActivationSymmetric": False,
        "WeightSymmetric": True,
    }
    with tempfile.TemporaryDirectory(prefix="edgefleet-q-") as tmp:
        source = Path(tmp) / "model.onnx"
        out = Path(tmp) / "model.qdq.onnx"
        # A path, not the ModelProto: quantize_static rewrites a given proto to external data.
        onnx.save_model(model, source)
        try:
            # The histogram calibrators print progress to stdout (it would corrupt --json).
            with _quiet_root(), contextlib.redirect_stdout(io.StringIO()):
                quantize_static(source, out, reader, quant_format=QuantFormat.QDQ,
                                per_channel=per_channel, activation_type=QuantType.QInt8,
                                weight_type=QuantType.QInt8, nodes_to_exclude=list(exclude),
                                calibrate_method=getattr(OrtMethod, _METHODS[config.method]),
                                extra_options=extra)
                hybrid = Path(tmp) / "model.qdq.dynamic.onnx"
                dynamic = _quantize_dynamic_only(out, hybrid, per_channel=False, exclude=exclude)
            if dynamic:
                logger.info("static int8: %d node(s) without a QDQ form quantized dynamically: %s",
                            len(dynamic), ", ".join(dynamic))
                out = hybrid
        except CompressionError:
            raise
        except Exception as exc:
            raise CompressionError(f"static int8 quantization failed: {_cause(exc)}", where="model",
                                   hint="keep the operator in float (the fallback does), or use "
                                        "dynamic_int8") from exc
        logger.info("ONNX static int8 (%s on %d samples, per_channel=%s, %d nodes in float)",
                    config.method.value, min(count(calibration), config.max_samples),
                    per_channel, len(exclude))
        return _lean(out, model)


def to_fp16(model: onnx.ModelProto, *, exclude: list[str], float32_compute: Sequence[str] = ()) -> bytes:
    """float16 weights and compute; inputs and outputs stay float32.

    ``exclude``: nodes kept entirely in float32 (the fallback); ``float32_compute``: nodes that
    compute in float32 (their values exceed float16's range, see :mod:`fp16_range`) from weights
    stored as float16 (a Cast to float32 ONNX Runtime folds at load).
    """
    from onnxruntime.transformers.float16 import convert_float_to_float16

    blocked = list(dict.fromkeys([*exclude, *float32_compute]))
    try:
        converted = convert_float_to_float16(model, keep_io_types=True, node_block_list=blocked or None)
    except Exception as exc:
        raise _translate(exc, "fp16 conversion") from exc
    _drop_round_trip_casts(converted)
    _store_weights_fp16(converted, set(float32_compute) - set(exclude))
    logger.info("ONNX fp16 (%d nodes in float, %d computing in float32 from float16 weights)",
                len(exclude), len(float32_compute))
    serialized: bytes = converted.SerializeToString()
    return serialized


def _store_weights_fp16(model: onnx.ModelProto, nodes: set[str]) -> None:
    """Store the float32 weight initializers of ``nodes`` (their weight slots only) as float16,
    each read through a Cast back to float32 under its own name. Weights with values beyond
    float16's range stay float32."""
    graph = model.graph
    inits = {t.name: t for t in graph.initializer}
    listed = {i.name for i in graph.input}
    weights = {w for node in graph.node if node.name in nodes for w in weight_inputs(node)
               if w in inits and w not in listed and inits[w].data_type == onnx.TensorProto.FLOAT}
    casts = []
    for name in sorted(weights):
        array = numpy_helper.to_array(inits[name])
        if array.size and float(np.abs(array).max()) > float(np.finfo(np.float16).max):
            continue
        stored = numpy_helper.from_array(array.astype(np.float16), f"{name}_fp16")
        inits[name].CopyFrom(stored)
        casts.append(onnx.helper.make_node("Cast", [stored.name], [name], to=onnx.TensorProto.FLOAT,
                                           name=f"{name}_cast"))
    if casts:
        nodes_now = list(graph.node)
        del graph.node[:]
        graph.node.extend([*casts, *nodes_now])


def _drop_round_trip_casts(model: onnx.ModelProto) -> None:
    """Remove float32 -> float16 -> float32 Cast pairs the converter puts between float nodes.

    They would round every value passed between two operators kept in float through fp16.
    """
    graph = model.graph
    outputs = {o.name for o in graph.output}
    types = _elem_types(model)
    producers = {out: node for node in graph.node for out in node.output}
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)

    removed: set[int] = set()
    for node in graph.node:
        first = producers.get(node.input[0]) if _is_cast(node, onnx.TensorProto.FLOAT) else None
        if first is None or not _is_cast(first, onnx.TensorProto.FLOAT16) or id(first) in removed:
            continue
        if not _bypass(types, first, node, producers=producers, consumers=consumers, outputs=outputs):
            continue
        removed.add(id(node))
        if all(id(u) in removed for u in consumers.get(first.output[0], [])):
            removed.add(id(first))
    kept = [n for n in graph.node if id(n) not in removed]
    del graph.node[:]
    graph.node.extend(kept)


def _is_cast(node: onnx.NodeProto | None, dtype: int) -> bool:
    return (node is not None and node.op_type == "Cast"
            and any(a.name == "to" and a.i == dtype for a in node.attribute))


def _bypass(types: dict[str, int], first: onnx.NodeProto, second: onnx.NodeProto, *,
            producers: dict[str, onnx.NodeProto], consumers: dict[str, list[onnx.NodeProto]],
            outputs: set[str]) -> bool:
    """Rewire the graph around the Cast pair ``first`` (to float16) -> ``second`` (back to float32).

    False, and nothing changed, when the value cast is not known to be float32 (``types``: the
    element type of every value type inference could tell; e.g. an int64 shape value cast to
    float: the pair is then a real conversion, not a round trip), or when the pair writes a graph
    output and no node produces its source.
    """
    source, target = first.input[0], second.output[0]
    origin = producers.get(source)
    if types.get(source) != onnx.TensorProto.FLOAT and not _is_cast(origin, onnx.TensorProto.FLOAT):
        return False
    if target in outputs:  # the float32 producer writes the graph output directly
        if origin is None:
            return False
        origin.output[:] = [target if o == source else o for o in origin.output]
        for user in consumers.get(source, []):
            user.input[:] = [target if i == source else i for i in user.input]
    else:
        for user in consumers.get(target, []):
            user.input[:] = [source if i == target else i for i in user.input]
    return True


def _elem_types(model: onnx.ModelProto) -> dict[str, int]:
    """The element type of every value of the main graph that ONNX type inference can tell
    (inputs, initializers, node outputs); empty when inference fails."""
    try:
        inferred = onnx.shape_inference.infer_shapes(model)
    except Exception:  # inference is best effort: unknown types keep every Cast pair
        logger.info("fp16: type inference failed; round-trip Casts kept")
        return {}
    graph = inferred.graph
    types = {t.name: t.data_type for t in graph.initializer}
    for value in [*graph.input, *graph.value_info, *graph.output]:
        if value.type.tensor_type.elem_type:
            types[value.name] = value.type.tensor_type.elem_type
    return types
