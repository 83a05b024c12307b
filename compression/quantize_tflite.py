"""TFLite quantization with litert-quantizer: dynamic-range int8, weight-only int8, full int8, fp16.

Each operator to quantize gets its own recipe entry, scoped by the name of its output tensor,
so the fallback can keep single operators in float (``exclude``). Model inputs and outputs stay
float32 in every mode (full int8 inserts QUANTIZE/DEQUANTIZE at the edges), so the same input
arrays feed the float and the quantized model.

Files as real converters write them are prepared first (:func:`_prepare`): operator codes are
normalised (older converters leave ``builtin_code`` 0, which the quantizer reads as ADD), float16
weights behind DEQUANTIZE become float32 constants for the int8 modes, and full int8 gets a
signature built from subgraph 0 when the file has none.
"""

from __future__ import annotations

import contextlib
import io
import logging
import re
import warnings
from collections.abc import Iterator, Mapping
from types import TracebackType
from typing import Any

import numpy as np
from ai_edge_litert import schema_py_generated as tfl

from edgefleet.compression.config import CalibrationConfig, CalibrationMethod, Mode
from edgefleet.compression.inputs import Inputs, count, feed, fixed_batch, infer_input_specs, take
from edgefleet.compression.tflite_builder import SIGNATURE_KEY
from edgefleet.compression.tflite_compact import compact_tflite
from edgefleet.compression.tflite_graph import (
    WEIGHT_SLOTS,
    Operator,
    add_signature,
    dequantize_fp16_weights,
    load_tflite,
    normalise_codes,
    operators,
    pack_tflite,
    scalar_shapes,
    unique_tensor_names,
    weight_tensors,
)
from edgefleet.protocol.errors import CompressionError, ConfigError

logger = logging.getLogger(__name__)

#: Operators with weights: what dynamic, weight-only and fp16 modes rewrite (builtin names).
WEIGHT_OPS = tuple(WEIGHT_SLOTS)

_INT8_MODES = (Mode.DYNAMIC_INT8, Mode.WEIGHT_ONLY_INT8, Mode.STATIC_INT8)
#: Weight-only int8 quantizes these per channel whatever ``per_channel`` says.
_CONVOLUTIONS = {"CONV_2D", "DEPTHWISE_CONV_2D", "TRANSPOSE_CONV"}
#: Operators full int8 keeps in float: LiteRT's int8 DIV fails at run time on a divisor that
#: rounds to the zero point ("data[i] != zero_point"), e.g. 1 / (1 + exp(x)) of a sigmoid.
_FLOAT_IN_FULL_INT8 = {"DIV"}
#: Weight operators litert-quantizer's float16 casting does not handle (their weights stay float32).
_NO_FLOAT_CASTING = {"BATCH_MATMUL"}

_NUMPY_TYPES = {
    tfl.TensorType.FLOAT32: np.float32, tfl.TensorType.FLOAT16: np.float16,
    tfl.TensorType.INT32: np.int32, tfl.TensorType.INT64: np.int64, tfl.TensorType.INT16: np.int16,
    tfl.TensorType.INT8: np.int8, tfl.TensorType.UINT8: np.uint8, tfl.TensorType.BOOL: np.bool_,
}


def _quantizer_names() -> dict[str, Any]:
    """Builtin operator name -> the quantizer's operation name, for every operator it handles."""
    from litert_quantizer.utils.tfl_flatbuffer_utils import TFL_OP_CODE_TO_NAME

    builtin = {value: name for name, value in vars(tfl.BuiltinOperator).items()
               if not name.startswith("_")}
    return {builtin[code]: name for code, name in TFL_OP_CODE_TO_NAME.items() if code in builtin}


def _targets(parsed: tfl.ModelT, mode: Mode, exclude: list[str]) -> list[Operator]:
    """Operators ``mode`` quantizes: for full int8 every one the quantizer handles, otherwise the
    weight operators with a float32 constant weight."""
    ops = operators(parsed)
    if mode is Mode.STATIC_INT8:
        known = _quantizer_names()
        chosen = [op for op in ops if op.op_type in known and op.op_type not in _FLOAT_IN_FULL_INT8]
    else:
        with_weights = {w.op_index for w in weight_tensors(parsed)
                        if w.type == tfl.TensorType.FLOAT32 and w.dequantize is None}
        chosen = [op for i, op in enumerate(ops) if i in with_weights
                  and not (mode is Mode.FP16 and op.op_type in _NO_FLOAT_CASTING)]
    return [op for op in chosen if op.output not in exclude]


def _prepare(model: bytes, mode: Mode, exclude: list[str]) -> tuple[tfl.ModelT, list[Operator], bool]:
    """The parsed model as the quantizer should see it, the operators to quantize, and whether
    the model had to be rewritten for that."""
    parsed = load_tflite(model)
    changed = normalise_codes(parsed)
    renamed = unique_tensor_names(parsed)
    if renamed:
        logger.info("TFLite: %d tensor name(s) shared across subgraphs made unique", renamed)
    changed = bool(renamed or scalar_shapes(parsed)) or changed
    if mode in _INT8_MODES:
        weight_ops = [op.output for op in operators(parsed)
                      if op.op_type in WEIGHT_SLOTS and op.output not in exclude]
        rewritten = dequantize_fp16_weights(parsed, weight_ops)
        if rewritten:
            logger.info("TFLite: %d float16 weight(s) behind DEQUANTIZE made float32 for %s",
                        rewritten, mode.value)
        changed = changed or rewritten > 0
    targets = _targets(parsed, mode, exclude)
    if mode is Mode.STATIC_INT8 and targets and add_signature(parsed, SIGNATURE_KEY):
        logger.info("TFLite: no signature; calibrating through subgraph 0's inputs and outputs")
        changed = True
    return parsed, targets, changed


def candidates(model: bytes, mode: Mode) -> list[str]:
    """Output-tensor names of the operators ``mode`` quantizes (what the fallback may exclude)."""
    return [op.output for op in _prepare(model, mode, [])[1]]


class _Batches:
    """Re-iterable calibration set: the quantizer walks it twice (count, then calibrate).

    Arrays are fed by signature input name (a mapping may also use the tensor names the runtime
    shows) in each input's own dtype.
    """

    def __init__(self, signature: tfl.SignatureDefT, tensors: list[tfl.TensorT], first: str,
                 data: Inputs, batch_size: int, limit: int) -> None:
        self._names: dict[str, str] = {}
        self._dtypes: dict[str, Any] = {}
        for entry in signature.inputs or []:
            name = _text(entry.name)
            tensor = tensors[entry.tensorIndex]
            self._names.setdefault(_text(tensor.name), name)
            self._dtypes[name] = _NUMPY_TYPES.get(tensor.type, np.float32)
        self._names.update({name: name for name in self._dtypes})
        self._first, self._data, self._batch_size = first, data, batch_size
        self._samples = min(count(data), limit)

    def missing(self) -> list[str]:
        fed = {self._names.get(k, k) for k in feed(take(self._data, 0, 1), self._first)}
        return sorted(set(self._dtypes) - fed)

    def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
        for start in range(0, self._samples, self._batch_size):
            stop = min(start + self._batch_size, self._samples)
            batch: Mapping[str, np.ndarray] = feed(take(self._data, start, stop), self._first)
            names = {key: self._names.get(key, key) for key in batch}
            yield {names[key]: np.asarray(array, dtype=self._dtypes.get(names[key], np.float32))
                   for key, array in batch.items()}


def _text(value: str | bytes | None) -> str:
    return value.decode() if isinstance(value, bytes) else str(value or "")


_DEFAULT_CALIBRATION = CalibrationConfig()


def quantize_tflite(model: bytes, mode: Mode, *, per_channel: bool, exclude: list[str],
                    calibration: Inputs | None = None,
                    calibration_config: CalibrationConfig = _DEFAULT_CALIBRATION) -> bytes:
    """Quantize ``model`` in ``mode``, keeping the operators named in ``exclude`` in float.

    Returns ``model`` unchanged when nothing can be quantized (e.g. fp16 on a file whose weights
    are already float16). Quantizer failures become :class:`CompressionError` naming the
    operator when it can be found.
    """
    from litert_quantizer import quantizer

    if mode is Mode.NONE:
        raise ConfigError("mode none has no TFLite quantizer", where="mode")
    parsed, targets, changed = _prepare(model, mode, exclude)
    if not targets:
        logger.info("TFLite %s: no operator to quantize; model unchanged", mode.value)
        return bytes(model)
    prepared = pack_tflite(parsed) if changed else bytes(model)
    try:
        qt = quantizer.Quantizer(bytearray(prepared))
        _add_configs(qt, targets, mode, per_channel=per_channel)
        # a model with a fixed batch is calibrated that many samples at a time (XNNPack cannot reshape it)
        batch = min(calibration_config.batch_size, fixed_batch(infer_input_specs(prepared)) or
                    calibration_config.batch_size)
        result = _calibrate(qt, parsed, calibration, calibration_config, batch) if qt.need_calibration else None
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            quantized = qt.quantize(result, enable_progress_bar=False, enable_progress_report=False).quantized_model
    except (CompressionError, ConfigError):
        raise
    except Exception as exc:  # litert-quantizer raises ValueError/RuntimeError/KeyError/...
        raise _failure(exc, mode, parsed, targets) from exc
    compact = compact_tflite(bytes(quantized))  # each distinct vector (zero points...) stored once
    logger.info("TFLite %s: %d -> %d bytes (%d with shared vectors; %d ops in float)", mode.value,
                len(model), len(quantized), len(compact), len(exclude))
    return compact


def _add_configs(qt: Any, targets: list[Operator], mode: Mode, *, per_channel: bool) -> None:
    """One recipe entry per target operator of the quantizer ``qt``."""
    from litert_quantizer.algorithm_manager import AlgorithmName
    from litert_quantizer.qtyping import QuantGranularity

    names = _quantizer_names()
    granularity = QuantGranularity.CHANNELWISE if per_channel else QuantGranularity.TENSORWISE
    for op in targets:
        # litert-quantizer scopes an op by its output names joined with ";" plus a trailing ";"
        regex, name = f"^{re.escape(op.output)};", names[op.op_type]
        if mode is Mode.DYNAMIC_INT8:
            # LiteRT's hybrid depthwise kernel reads one scale per channel: per tensor, it
            # computes with garbage scales (values up to FLT_MAX)
            qt.add_dynamic_config(regex, name, 8, QuantGranularity.CHANNELWISE
                                  if op.op_type == "DEPTHWISE_CONV_2D" else granularity)
        elif mode is Mode.WEIGHT_ONLY_INT8:
            # only the weights are quantized: a convolution's filters differ in scale per channel
            # (BirdNET: SNR 19.4 dB per tensor, 36.7 dB per channel), as TF's converter knows
            qt.add_weight_only_config(regex, name, 8, QuantGranularity.CHANNELWISE
                                      if op.op_type in _CONVOLUTIONS else granularity)
        elif mode is Mode.FP16:
            qt.add_weight_only_config(regex, name, 16, QuantGranularity.TENSORWISE,
                                      AlgorithmName.FLOAT_CASTING)
        else:
            qt.add_static_config(regex, name, 8, 8, granularity)


def _calibrate(qt: Any, parsed: tfl.ModelT, calibration: Inputs | None,
               calibration_config: CalibrationConfig, batch_size: int) -> Any:
    """Run the calibration samples through the model: the ranges full int8 quantizes with.

    Every signature input is fed (by name); a single array feeds the model's first input.
    """
    from litert_quantizer import calibrator

    if calibration is None:
        raise ConfigError("full int8 needs calibration data", where="calibration",
                          hint="pass calibration samples (e.g. --samples digits)")
    if calibration_config.method is not CalibrationMethod.MINMAX:
        raise ConfigError("TFLite calibration supports the minmax method only",
                          where="calibration.method")
    signature = parsed.signatureDefs[0]  # _prepare added one if the file had none
    subgraph = parsed.subgraphs[signature.subgraphIndex]
    first_tensor = int(subgraph.inputs[0])
    first = next((_text(e.name) for e in signature.inputs or [] if e.tensorIndex == first_tensor),
                 _text(subgraph.tensors[first_tensor].name))
    batches = _Batches(signature, subgraph.tensors, first, calibration, batch_size,
                       calibration_config.max_samples)
    missing = batches.missing()
    if missing:
        raise ConfigError(f"calibration data lacks model input(s) {', '.join(missing)}",
                          where="calibration",
                          hint="give one array per model input, keyed by input name")
    # LiteRT warns about its own debugging option and draws a progress bar on stderr.
    with warnings.catch_warnings(), contextlib.redirect_stderr(io.StringIO()):
        warnings.simplefilter("ignore", UserWarning)
        return qt.calibrate({_text(signature.signatureKey) or SIGNATURE_KEY: batches},
                            mode=calibrator.CalibrationMode.CALIBRATION_PROFILER_BASED)


def _failure(exc: Exception, mode: Mode, parsed: tfl.ModelT,
             targets: list[Operator]) -> CompressionError:
    """The quantizer's exception as a :class:`CompressionError` naming the failing operator."""
    op = _failing_operator(exc, parsed, targets)
    cause = f"{type(exc).__name__}: {exc}".rstrip(": ")
    if op is None:
        return CompressionError(f"TFLite {mode.value} quantization failed: {cause}", where="model",
                                hint="try another mode")
    return CompressionError(f"TFLite {mode.value} quantization failed at {op.op_type} "
                            f"{op.output!r}: {cause}", where=f"operator {op.output!r}",
                            hint="keep that operator in float (fallback) or try another mode")


def _failing_operator(exc: Exception, parsed: tfl.ModelT, targets: list[Operator]) -> Operator | None:
    """The operator the quantizer was working on: one whose output name the message gives, else
    the innermost ``op_info``/``op`` of the quantizer's frames (subgraph 0 operators only)."""
    message = str(exc)
    named = [op for op in targets if op.output and op.output in message]
    if named:
        return max(named, key=lambda op: len(op.output))
    by_outputs = {tuple(int(t) for t in op.outputs): i
                  for i, op in enumerate(parsed.subgraphs[0].operators or [])}
    ops = operators(parsed)
    tb: TracebackType | None = exc.__traceback__
    frames = []
    while tb is not None:
        frames.append(tb.tb_frame)
        tb = tb.tb_next
    for frame in reversed(frames):
        local = frame.f_locals.get("op_info")
        candidate = getattr(local, "op", None) or frame.f_locals.get("op")
        outputs = getattr(candidate, "outputs", None)
        try:
            index = by_outputs.get(tuple(int(t) for t in outputs)) if outputs is not None else None
        except (TypeError, ValueError):  # something else called "op" in this frame
            continue
        if index is not None:
            return ops[index]
    return None
