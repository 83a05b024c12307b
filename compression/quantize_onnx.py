"""ONNX quantization with ``onnxruntime.quantization``: dynamic int8, static int8 QDQ, fp16.

Every quantizer takes a normalised model (see :mod:`onnx_graph`) and ``exclude``, node names
to keep in float (the automatic fallback grows that list one operator at a time).
"""

from __future__ import annotations

import contextlib
import io
import logging
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnx

from edgefleet.compression.config import CalibrationConfig, CalibrationMethod
from edgefleet.compression.inputs import Inputs, count, feed, take
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


def _lean(path: Path) -> bytes:
    """The quantized model without value_info and doc strings (the runtime re-infers shapes)."""
    model = onnx.load_model(str(path))
    del model.graph.value_info[:]
    model.doc_string = ""
    for node in model.graph.node:
        node.doc_string = ""
    lean: bytes = model.SerializeToString()
    return lean


def candidates(model: onnx.ModelProto, static: bool) -> list[str]:
    """Node names the quantizer would rewrite (what the fallback can keep in float)."""
    from onnxruntime.quantization.registry import IntegerOpsRegistry, QDQRegistry, QLinearOpsRegistry

    op_types = set(QDQRegistry) | set(QLinearOpsRegistry) if static else set(IntegerOpsRegistry)
    return [n.name for n in model.graph.node if n.op_type in op_types]


def _translate(exc: Exception, what: str) -> CompressionError:
    return CompressionError(f"{what} failed: {type(exc).__name__}: {exc}", where="model")


def quantize_dynamic_int8(model: onnx.ModelProto, *, per_channel: bool,
                          exclude: list[str]) -> bytes:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    with tempfile.TemporaryDirectory(prefix="edgefleet-q-") as tmp:
        out = Path(tmp) / "model.int8.onnx"
        try:
            with _quiet_root():
                quantize_dynamic(model, out, per_channel=per_channel, weight_type=QuantType.QInt8,
                                 nodes_to_exclude=list(exclude),
                                 extra_options={"MatMulConstBOnly": True})
        except Exception as exc:  # the quantizer raises bare ValueError/KeyError/...
            raise _translate(exc, "dynamic int8 quantization") from exc
        logger.info("ONNX dynamic int8 (per_channel=%s, %d nodes in float)", per_channel,
                    len(exclude))
        return _lean(out)


_METHODS = {
    CalibrationMethod.MINMAX: "MinMax",
    CalibrationMethod.ENTROPY: "Entropy",
    CalibrationMethod.PERCENTILE: "Percentile",
}


def quantize_static_int8(model: onnx.ModelProto, calibration: Inputs, *,
                         config: CalibrationConfig, per_channel: bool,
                         exclude: list[str]) -> bytes:
    """Static int8 QDQ (int8 weights per channel, int8 activations) calibrated on batches."""
    from onnxruntime.quantization import CalibrationMethod as OrtMethod
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    initialised = {t.name for t in model.graph.initializer}
    first_input = next(i.name for i in model.graph.input if i.name not in initialised)
    reader = BatchReader(first_input, calibration, config.batch_size, config.max_samples)
    extra = {
        "CalibStridedMinMax": 1,  # collect and merge statistics one batch at a time
        "CalibPercentile": config.percentile,
        "ActivationSymmetric": False,
        "WeightSymmetric": True,
    }
    with tempfile.TemporaryDirectory(prefix="edgefleet-q-") as tmp:
        prepared = Path(tmp) / "model.pre.onnx"
        out = Path(tmp) / "model.qdq.onnx"
        try:
            # Shape inference only: the optimizer would fuse MatMul+Add back into Gemm.
            quant_pre_process(model, prepared, skip_optimization=True)
            # The histogram calibrators print progress to stdout (it would corrupt --json).
            with contextlib.redirect_stdout(io.StringIO()):
                quantize_static(prepared, out, reader, quant_format=QuantFormat.QDQ,
                                per_channel=per_channel, activation_type=QuantType.QInt8,
                                weight_type=QuantType.QInt8, nodes_to_exclude=list(exclude),
                                calibrate_method=getattr(OrtMethod, _METHODS[config.method]),
                                extra_options=extra)
        except CompressionError:
            raise
        except Exception as exc:
            raise _translate(exc, "static int8 quantization") from exc
        logger.info("ONNX static int8 (%s on %d samples, per_channel=%s, %d nodes in float)",
                    config.method.value, min(count(calibration), config.max_samples),
                    per_channel, len(exclude))
        return _lean(out)


def to_fp16(model: onnx.ModelProto, *, exclude: list[str]) -> bytes:
    """float16 weights and compute; inputs and outputs stay float32."""
    from onnxruntime.transformers.float16 import convert_float_to_float16

    try:
        converted = convert_float_to_float16(model, keep_io_types=True,
                                             node_block_list=list(exclude) or None)
    except Exception as exc:
        raise _translate(exc, "fp16 conversion") from exc
    _drop_round_trip_casts(converted)
    logger.info("ONNX fp16 (%d nodes in float)", len(exclude))
    serialized: bytes = converted.SerializeToString()
    return serialized


def _drop_round_trip_casts(model: onnx.ModelProto) -> None:
    """Remove float32 -> float16 -> float32 Cast pairs the converter puts between float nodes.

    They would round every value passed between two operators kept in float through fp16.
    """
    graph = model.graph
    outputs = {o.name for o in graph.output}
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
        if not _bypass(model, first, node, producers=producers, consumers=consumers, outputs=outputs):
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


def _bypass(model: onnx.ModelProto, first: onnx.NodeProto, second: onnx.NodeProto, *,
            producers: dict[str, onnx.NodeProto], consumers: dict[str, list[onnx.NodeProto]],
            outputs: set[str]) -> bool:
    """Rewire the graph around the Cast pair ``first`` (to float16) -> ``second`` (back to float32).

    False, and nothing changed, when the value cast is not known to be float32, or when the pair
    writes a graph output and no node produces its source.
    """
    source, target = first.input[0], second.output[0]
    origin = producers.get(source)
    produces_float32 = origin is not None and (origin.op_type != "Cast"
                                               or _is_cast(origin, onnx.TensorProto.FLOAT))
    if not (produces_float32 or _is_float32(model, source)):
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


def _is_float32(model: onnx.ModelProto, name: str) -> bool:
    """``name`` is a float32 graph input or the output of a node kept in float32."""
    for value in list(model.graph.input) + list(model.graph.value_info):
        if value.name == name:
            return bool(value.type.tensor_type.elem_type == onnx.TensorProto.FLOAT)
    return False
