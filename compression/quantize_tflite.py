"""TFLite quantization with litert-quantizer: dynamic-range int8, weight-only int8, full int8, fp16.

Each operator to quantize gets its own recipe entry, scoped by the name of its output tensor,
so the fallback can keep single operators in float (``exclude``). Model inputs and outputs stay
float32 in every mode (full int8 inserts QUANTIZE/DEQUANTIZE at the edges), so the same input
arrays feed the float and the quantized model.
"""

from __future__ import annotations

import contextlib
import io
import logging
import re
import warnings
from collections.abc import Iterator
from typing import Any

import numpy as np
from ai_edge_litert import schema_py_generated as tfl

from edgefleet.compression.config import CalibrationConfig, CalibrationMethod, Mode
from edgefleet.compression.inputs import Inputs, count, feed, take
from edgefleet.compression.onnx_to_tflite import SIGNATURE_KEY
from edgefleet.compression.tflite_graph import Operator, load_tflite, operators
from edgefleet.protocol.errors import CompressionError, ConfigError

logger = logging.getLogger(__name__)

#: Operators with weights: what dynamic, weight-only and fp16 modes rewrite.
WEIGHT_OPS = ("FULLY_CONNECTED", "CONV_2D", "DEPTHWISE_CONV_2D", "BATCH_MATMUL",
              "CONV_2D_TRANSPOSE", "EMBEDDING_LOOKUP")


def _static_ops() -> set[str]:
    from litert_quantizer.qtyping import TFLOperationName

    pseudo = {"*", "INPUT", "OUTPUT", "CUSTOM_OP", "WEIGHT_ONLY", "DRQ", "SRQ", "INTEGER", "FLOAT"}
    return {op.value for op in TFLOperationName if op.value not in pseudo}


def candidates(model: bytes, mode: Mode) -> list[str]:
    """Output-tensor names of the operators ``mode`` quantizes (what the fallback may exclude)."""
    allowed = _static_ops() if mode is Mode.STATIC_INT8 else set(WEIGHT_OPS)
    return [op.output for op in operators(load_tflite(model)) if op.op_type in allowed]


class _Batches:
    """Re-iterable calibration set: the quantizer walks it twice (count, then calibrate)."""

    def __init__(self, input_name: str, data: Inputs, batch_size: int, limit: int) -> None:
        self._input_name, self._data, self._batch_size = input_name, data, batch_size
        self._samples = min(count(data), limit)

    def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
        for start in range(0, self._samples, self._batch_size):
            stop = min(start + self._batch_size, self._samples)
            yield feed(take(self._data, start, stop), self._input_name)


_DEFAULT_CALIBRATION = CalibrationConfig()


def quantize_tflite(model: bytes, mode: Mode, *, per_channel: bool, exclude: list[str],
                    calibration: Inputs | None = None,
                    calibration_config: CalibrationConfig = _DEFAULT_CALIBRATION) -> bytes:
    from litert_quantizer import quantizer

    parsed = load_tflite(model)
    allowed = _static_ops() if mode is Mode.STATIC_INT8 else set(WEIGHT_OPS)
    targets = [op for op in operators(parsed) if op.op_type in allowed and op.output not in exclude]
    try:
        qt = quantizer.Quantizer(bytearray(model))
        _add_configs(qt, targets, mode, per_channel=per_channel)
        if not targets:
            return bytes(model)
        result = _calibrate(qt, parsed, calibration, calibration_config) if qt.need_calibration else None
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            quantized = qt.quantize(result, enable_progress_bar=False, enable_progress_report=False).quantized_model
    except (CompressionError, ConfigError):
        raise
    except Exception as exc:  # litert-quantizer raises ValueError/RuntimeError/KeyError
        raise CompressionError(f"TFLite {mode.value} quantization failed: "
                               f"{type(exc).__name__}: {exc}", where="model") from exc
    logger.info("TFLite %s: %d -> %d bytes (%d ops in float)", mode.value, len(model),
                len(quantized), len(exclude))
    return bytes(quantized)


def _add_configs(qt: Any, targets: list[Operator], mode: Mode, *, per_channel: bool) -> None:
    """One recipe entry per target operator of the quantizer ``qt``."""
    from litert_quantizer.algorithm_manager import AlgorithmName
    from litert_quantizer.qtyping import QuantGranularity, TFLOperationName

    granularity = QuantGranularity.CHANNELWISE if per_channel else QuantGranularity.TENSORWISE
    for op in targets:
        # litert-quantizer scopes an op by its output names joined with ";" plus a trailing ";"
        regex, name = f"^{re.escape(op.output)};", TFLOperationName(op.op_type)
        if mode is Mode.DYNAMIC_INT8:
            qt.add_dynamic_config(regex, name, 8, granularity)
        elif mode is Mode.WEIGHT_ONLY_INT8:
            qt.add_weight_only_config(regex, name, 8, granularity)
        elif mode is Mode.FP16:
            qt.add_weight_only_config(regex, name, 16, QuantGranularity.TENSORWISE,
                                      AlgorithmName.FLOAT_CASTING)
        elif mode is Mode.STATIC_INT8:
            qt.add_static_config(regex, name, 8, 8, granularity)
        else:
            raise ConfigError(f"mode {mode.value} has no TFLite quantizer", where="mode")


def _calibrate(qt: Any, parsed: tfl.ModelT, calibration: Inputs | None,
               calibration_config: CalibrationConfig) -> Any:
    """Run the calibration samples through the model: the ranges full int8 quantizes with."""
    from litert_quantizer import calibrator

    if calibration is None:
        raise ConfigError("full int8 needs calibration data", where="calibration",
                          hint="pass calibration samples (e.g. --samples digits)")
    if calibration_config.method is not CalibrationMethod.MINMAX:
        raise ConfigError("TFLite calibration supports the minmax method only",
                          where="calibration.method")
    input_name = parsed.signatureDefs[0].inputs[0].name if parsed.signatureDefs else None
    if input_name is None:
        raise CompressionError("full int8 needs a model with a signature",
                               where="model.signature_defs")
    input_name = input_name.decode() if isinstance(input_name, bytes) else input_name
    signature = parsed.signatureDefs[0].signatureKey
    signature = signature.decode() if isinstance(signature, bytes) else signature
    # LiteRT warns about its own debugging option and draws a progress bar on stderr.
    with warnings.catch_warnings(), contextlib.redirect_stderr(io.StringIO()):
        warnings.simplefilter("ignore", UserWarning)
        return qt.calibrate(
            {signature or SIGNATURE_KEY: _Batches(input_name, calibration,
                                                  calibration_config.batch_size,
                                                  calibration_config.max_samples)},
            mode=calibrator.CalibrationMode.CALIBRATION_PROFILER_BASED)
