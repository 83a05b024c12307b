"""The one entry point: :func:`compress` a model for a target runtime under an accuracy gate."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import onnx

from edgefleet.compression import fp16_range, quantize_onnx
from edgefleet.compression.config import CompressionConfig, Mode
from edgefleet.compression.evaluate import Measurement, Reference, latency, measure, reference
from edgefleet.compression.inputs import (
    Inputs,
    InputSpec,
    count,
    data_shapes,
    infer_input_specs,
    normalise_inputs,
    resolve_specs,
)
from edgefleet.compression.onnx_graph import count_quantized_weights, gemm_to_matmul, load_onnx, normalise
from edgefleet.compression.onnx_to_tflite import export_tflite
from edgefleet.compression.prune import prune
from edgefleet.compression.quantize_tflite import candidates as tflite_candidates
from edgefleet.compression.quantize_tflite import quantize_tflite
from edgefleet.compression.report import CompressionReport, GateResult, SizeReport, stored_size
from edgefleet.compression.tflite_graph import count_quantized_weights as count_tflite_weights
from edgefleet.compression.tflite_graph import is_tflite, load_tflite, set_input_shapes
from edgefleet.protocol.errors import AccuracyGateError, CompressionError, ConfigError, UnsupportedModelError
from edgefleet.protocol.vocabulary import Runtime

logger = logging.getLogger(__name__)

_ONNX_MODES = (Mode.NONE, Mode.DYNAMIC_INT8, Mode.STATIC_INT8, Mode.FP16)


@dataclass(frozen=True)
class CompressionResult:
    model: bytes
    report: CompressionReport


Quantizer = Callable[[list[str]], bytes]
Shapes = dict[str, tuple[int | None, ...]]


def _onnx_quantizer(model: onnx.ModelProto, config: CompressionConfig, calibration: Inputs | None,
                    conversions: list[str], kept_in_float: list[str],
                    eval_x: Inputs | None = None) -> tuple[Quantizer, list[str]]:
    mode = config.mode
    if mode not in _ONNX_MODES:
        raise ConfigError(f"mode {mode.value} is not available for ONNX", where="mode",
                          hint="ONNX modes: " + ", ".join(m.value for m in _ONNX_MODES))
    if mode is Mode.NONE:
        data = model.SerializeToString()
        return (lambda exclude: data), []
    if mode is Mode.FP16:
        ranges, source = (calibration, "calibration") if calibration is not None else (eval_x, "evaluation")
        found = fp16_range.overflowing_nodes(model, ranges) if ranges is not None else []
        if found:
            conversions.append(fp16_range.describe(found, source))
        overflow = [o.node for o in found]
        kept_in_float += overflow
        names = [n.name for n in model.graph.node if n.name not in overflow]
        return (lambda exclude: quantize_onnx.to_fp16(model, exclude=exclude, float32_compute=overflow)), names
    matmul = gemm_to_matmul(model)
    if mode is Mode.DYNAMIC_INT8:
        return (lambda exclude: quantize_onnx.quantize_dynamic_int8(
            matmul, per_channel=config.channelwise, exclude=exclude),
            quantize_onnx.candidates(matmul, static=False))
    if calibration is None:
        raise ConfigError("static_int8 needs calibration data", where="calibration",
                          hint="pass calibration samples (e.g. --samples digits)")
    prepared, notes = quantize_onnx.prepare_static(matmul)  # once, however often the fallback quantizes
    conversions += notes
    dynamic = [f"{n.op_type} {n.name!r}" for n in quantize_onnx.dynamic_in_static(matmul)]
    if dynamic:
        shown = ", ".join(dynamic[:4]) + (f" and {len(dynamic) - 4} more" if len(dynamic) > 4 else "")
        conversions.append(f"static_int8: {shown} quantized dynamically (ONNX Runtime's QDQ has no LSTM/"
                           f"Attention and does not enter If/Loop/Scan bodies)")
    return (lambda exclude: quantize_onnx.quantize_static_int8(
        prepared, calibration, config=config.calibration, per_channel=config.channelwise,
        exclude=exclude, prepared=True), quantize_onnx.candidates(matmul, static=True))


def _tflite_quantizer(model: bytes, config: CompressionConfig,
                      calibration: Inputs | None) -> tuple[Quantizer, list[str]]:
    if config.mode is Mode.NONE:
        return (lambda exclude: model), []
    return (lambda exclude: quantize_tflite(
        model, config.mode, per_channel=config.channelwise, exclude=exclude,
        calibration=calibration, calibration_config=config.calibration),
        tflite_candidates(model, config.mode))


def _fallback(quantize: Quantizer, candidates: list[str], first: Measurement,
              judge: Callable[[bytes], Measurement], limit: int) -> tuple[bytes | None, Measurement,
                                                                           list[str]]:
    """Keep the most harmful operators in float, one at a time, until the gate holds.

    Harm of an operator = the error of the model in which only that operator is quantized,
    normalised per output (:func:`~edgefleet.compression.evaluate.harm`: mean |error| relative
    to the original's range, summed over outputs).
    When even the model with every candidate in float fails (the loss comes from pruning, not
    quantization), nothing is tried and the first result stands.
    """
    if not judge(quantize(candidates)).gate.passed:
        logger.info("fallback skipped: the gate fails even with every operator in float")
        return None, first, []
    harm = {}
    for name in candidates:
        harm[name] = judge(quantize([c for c in candidates if c != name])).harm
    order = sorted(candidates, key=lambda n: -harm[n])
    logger.info("fallback: operators by harm %s", ", ".join(f"{n}={harm[n]:.2e}" for n in order))
    excluded: list[str] = []
    measurement, model = first, None
    for name in order[:limit]:
        excluded.append(name)
        model = quantize(excluded)
        measurement = judge(model)
        logger.info("fallback: %d operator(s) in float, gate %s", len(excluded),
                    "holds" if measurement.gate.passed else "fails")
        if measurement.gate.passed:
            break
    return model, measurement, excluded


@dataclass(frozen=True)
class _Plan:
    """Where a compression starts: the source format, the uncompressed model in the target
    runtime, the quantizer with its candidate operators, the sparsity pruning reached, and the
    conversions made on the way (opset upgrade, shape-inference fallback)."""

    source_format: Runtime
    original: bytes
    quantize: Quantizer
    candidates: list[str]
    sparsity: float
    conversions: list[str] = field(default_factory=list)
    kept_in_float: list[str] = field(default_factory=list)  # before any fallback (fp16 overflow)


def _plan(model: bytes, runtime: Runtime, config: CompressionConfig, specs: list[InputSpec],
          calibration: Inputs | None, eval_x: Inputs | None) -> _Plan:
    if is_tflite(model):
        return _plan_tflite(model, runtime, config, specs, calibration, eval_x)
    return _plan_onnx(model, runtime, config, specs, calibration, eval_x)


def _plan_tflite(model: bytes, runtime: Runtime, config: CompressionConfig, specs: list[InputSpec],
                 calibration: Inputs | None, eval_x: Inputs | None) -> _Plan:
    if runtime == Runtime.ONNX:
        raise UnsupportedModelError("a TFLite model cannot be compressed for ONNX",
                                    where="runtime", hint="use runtime 'tflite'")
    if config.pruning is not None:
        raise UnsupportedModelError("pruning needs an ONNX source model", where="pruning",
                                    hint="prune the ONNX model, then export to TFLite")
    load_tflite(model)
    original = bytes(model)
    # dynamic inputs stored as a shape the model cannot run (e.g. [1, 1]) get the data's shape
    target = set_input_shapes(original, data_shapes(specs, [calibration, eval_x], 1))
    conversions = ["TFLite input shapes stored as the data's (signature unchanged)"] if target != original else []
    quantize, candidates = _tflite_quantizer(target, config, calibration)
    return _Plan(Runtime.TFLITE, original, quantize, candidates, sparsity=0.0, conversions=conversions)


def _export(model: bytes, specs: list[InputSpec], data: list[Inputs | None], batch: int,
            conversions: list[str]) -> tuple[bytes, Shapes | None]:
    """The TFLite export of ``model``, and the input shapes it had to fix (None: as declared).

    When the export fails as declared (shape arithmetic on dynamic dimensions, reshapes with
    several unknown dimensions...), the dynamic dimensions are fixed to the data's shapes and it
    is tried again: first every dimension but the batch, then the batch too (``batch``, the
    evaluation batch size); the error of the last attempt stands when none works.
    """
    try:
        return export_tflite(model), None
    except UnsupportedModelError as exc:
        first = error = exc
    attempts = [data_shapes(specs, data, None), data_shapes(specs, data, batch)]
    for shapes in [a for i, a in enumerate(attempts) if a and a not in attempts[:i]]:
        try:
            exported = export_tflite(model, shapes)
        except UnsupportedModelError as exc:
            error = exc
            continue
        fixed = ", ".join(f"{name} [{', '.join('?' if d is None else str(d) for d in dims)}]"
                          for name, dims in shapes.items())
        conversions.append(f"TFLite export with fixed input shapes {fixed} (as declared: {first})")
        logger.info("exported to TFLite with fixed input shapes %s", fixed)
        return exported, shapes
    raise error


def _plan_onnx(model: bytes, runtime: Runtime, config: CompressionConfig, specs: list[InputSpec],
               calibration: Inputs | None, eval_x: Inputs | None) -> _Plan:
    """Prune on the ONNX graph (if asked), then quantize in ONNX or export to TFLite first."""
    conversions: list[str] = []
    kept_in_float: list[str] = []
    graph = normalise(load_onnx(model, conversions))
    shapes: Shapes | None = None
    if runtime == Runtime.ONNX:
        original = bytes(model)
    else:
        original, shapes = _export(model, specs, [calibration, eval_x], config.eval_batch_size, conversions)
    sparsity = 0.0
    if config.pruning is not None:
        pruned = prune(graph, config.pruning, calibration)
        graph, sparsity = pruned.model, pruned.sparsity
    if runtime == Runtime.ONNX:
        quantize, candidates = _onnx_quantizer(graph, config, calibration, conversions, kept_in_float, eval_x)
    else:
        target = original if config.pruning is None else export_tflite(
            graph.SerializeToString(), shapes)
        quantize, candidates = _tflite_quantizer(target, config, calibration)
    return _Plan(Runtime.ONNX, original, quantize, candidates, sparsity, conversions, kept_in_float)


def compress(model: bytes, runtime: Runtime, config: CompressionConfig, *,
             calibration: Inputs | None = None, eval_x: Inputs | None = None,
             eval_y: np.ndarray | None = None) -> CompressionResult:
    """Compress ``model`` (ONNX or TFLite bytes) for ``runtime``
    (:class:`~edgefleet.protocol.vocabulary.Runtime`).

    An ONNX model may target TFLite: it is exported first (pruning happens on the ONNX graph).
    ``calibration`` and ``eval_x`` are one array (a model with one input) or a mapping of
    arrays by input name, checked against the model's inputs (:mod:`inputs`; shared inputs such
    as a state are fed as is). Evaluation uses ``eval_x``/``eval_y`` (labels optional; without them
    the gate checks fidelity), falling back to the calibration samples when no evaluation set
    is given.
    Raises :class:`AccuracyGateError` (carrying the report) when the gate fails even after
    the fallback, :class:`CompressionError` when the mode gains nothing (unless
    ``allow_no_gain``) and its subclasses for unusable models, and
    :class:`ConfigError` for contradictory settings.
    """
    if runtime not in set(Runtime):
        raise ConfigError(f"unknown runtime {runtime!r}", where="runtime", hint=" or ".join(Runtime))
    runtime = Runtime(runtime)
    specs = resolve_specs(infer_input_specs(model), config.inputs)
    calibration = normalise_inputs(calibration, "calibration", specs)
    eval_x = normalise_inputs(eval_x, "eval_x", specs)
    if eval_y is not None and (eval_x is None or len(eval_y) != count(eval_x)):
        raise ConfigError("eval_y needs eval_x of the same length", where="eval_y")
    data = eval_x if eval_x is not None else calibration
    if data is None and config.gate.enabled:
        raise ConfigError("the accuracy gate needs evaluation or calibration data",
                          where="eval_x", hint="pass samples or disable the gate")

    plan = _plan(model, runtime, config, specs, calibration, eval_x)
    compressed = plan.quantize([])
    _check_gain(config, plan.original, compressed)  # fail before evaluating a useless result
    float_operators: list[str] = []
    ref: Reference | None = None
    measurement: Measurement | None = None
    if data is not None:
        ref = reference(plan.original, runtime, data, config.eval_batch_size)

        def judge(candidate: bytes) -> Measurement:
            return measure(ref, candidate, runtime, data, eval_y, config.gate,
                           config.eval_batch_size)

        measurement = judge(compressed)
        if (not measurement.gate.passed and config.fallback.enabled and plan.candidates
                and config.fallback.max_float_operators > 0):
            logger.info("gate fails (%s); trying the fallback", measurement.gate.detail)
            fallback_model, measurement, float_operators = _fallback(
                plan.quantize, plan.candidates, measurement, judge, config.fallback.max_float_operators)
            compressed = fallback_model or compressed
    weights_quantized, weights_total = _check_gain(config, plan.original, compressed)

    report = CompressionReport(
        runtime=runtime,
        source_format=plan.source_format,
        mode=config.mode,
        per_channel=config.channelwise,
        calibration_method=config.calibration.method if config.mode is Mode.STATIC_INT8 else None,
        pruning=config.pruning,
        sparsity=plan.sparsity,
        size=SizeReport(original_bytes=len(plan.original), compressed_bytes=len(compressed),
                        original_stored_bytes=stored_size(plan.original),
                        compressed_stored_bytes=stored_size(compressed)),
        latency=(latency(ref, compressed, runtime, data, config.latency_runs)
                 if ref is not None and data is not None and config.latency_runs > 0 else None),
        accuracy=measurement.accuracy if measurement else None,
        fidelity=measurement.fidelity if measurement else None,
        float_operators=[*plan.kept_in_float, *float_operators],
        gate=measurement.gate if measurement else _no_gate(),
        weights_quantized=weights_quantized,
        weights_total=weights_total,
        conversions=plan.conversions,
    )
    if not report.gate.passed:
        raise AccuracyGateError(f"the compressed model fails the accuracy gate: {report.gate.detail}",
                                report=report.model_dump(mode="json"), where="gate",
                                hint="relax [compression.gate], change the mode or allow more "
                                     "operators in float")
    logger.info("compressed %s model for %s: %s, %.2fx smaller, gate %s", plan.source_format, runtime,
                config.mode.value, report.size.ratio, report.gate.detail)
    return CompressionResult(compressed, report)


def _weights(model: bytes, mode: Mode) -> tuple[int, int]:
    """(quantized, all) weight tensors of an ONNX or TFLite model, as ``mode`` quantizes them."""
    return count_tflite_weights(model, mode) if is_tflite(model) else count_quantized_weights(model, mode)


def _check_gain(config: CompressionConfig, original: bytes, compressed: bytes) -> tuple[int, int]:
    """The compressed model's (quantized, all) weight tensors; :class:`CompressionError` when
    the mode left the model unchanged (no more weights quantized than before) or made it
    larger, unless ``allow_no_gain``. Mode ``none`` is exempt."""
    quantized, total = _weights(compressed, config.mode)
    if config.mode is Mode.NONE or config.allow_no_gain:
        return quantized, total
    before, _ = _weights(original, config.mode)
    mode = config.mode.value
    hint = "try another mode, or accept it with allow_no_gain = true (--allow-no-gain)"
    if quantized <= before or compressed == original:
        raise CompressionError(f"{mode} left the model unchanged ({quantized} of {total} weight tensors "
                               f"quantized{', as before' if before else ''}); nothing to gain",
                               where="mode", hint=hint)
    if len(compressed) > len(original):
        raise CompressionError(f"{mode} made it larger: {len(original):,} -> {len(compressed):,} bytes "
                               f"({quantized} of {total} weight tensors quantized)", where="mode", hint=hint)
    return quantized, total


def _no_gate() -> GateResult:
    return GateResult(enabled=False, passed=True, criterion="none", value=None, threshold=None,
                      detail="no evaluation data; gate not evaluated")
