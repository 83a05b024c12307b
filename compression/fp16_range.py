"""Which ONNX operators must compute in float32 under ``fp16``: values beyond float16's range.

float16 holds magnitudes up to 65,504. Real models compute values far beyond that (an STFT of
int16-scale audio, then squared: 1e11), which become ``inf`` in float16 and ruin the output
without any error. Before converting, the float32 model runs on the data (calibration samples, or
the evaluation samples when there are none) with every intermediate value as an output, and the
peak magnitude of each value is recorded; every operator that reads or writes a value above
:data:`LIMIT` (a quarter of float16's largest value: headroom for inputs louder than the data)
stays in float32. Non-finite values are not counted (an ``-inf`` mask is as infinite in
float16).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import onnx

from edgefleet.compression.inputs import Inputs, count, feed, onnx_input_specs, take
from edgefleet.protocol.errors import CompressionError

logger = logging.getLogger(__name__)

FP16_MAX = 65504.0
HEADROOM = 4.0
LIMIT = FP16_MAX / HEADROOM
#: Samples run to find the peaks (one at a time: fixed batch sizes and memory).
MAX_SAMPLES = 16


@dataclass(frozen=True)
class Overflow:
    """An operator kept in float32: ``value`` (one of its inputs or outputs) peaked at ``peak``."""

    node: str
    op_type: str
    value: str
    peak: float


def peaks(model: onnx.ModelProto, data: Inputs, max_samples: int = MAX_SAMPLES) -> dict[str, float]:
    """The largest finite magnitude of every float value of the main graph (inputs and node
    outputs) over the first ``max_samples`` samples of ``data``, one sample per run."""
    import onnxruntime as ort

    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    listed = {o.name for o in probe.graph.output}
    for node in probe.graph.node:
        for name in node.output:
            if name and name not in listed:
                probe.graph.output.append(onnx.ValueInfoProto(name=name))
                listed.add(name)
    options = ort.SessionOptions()
    options.log_severity_level = 3
    try:
        session = ort.InferenceSession(probe.SerializeToString(), options,
                                       providers=["CPUExecutionProvider"])
    except Exception as exc:  # ORT raises its own Fail/InvalidGraph types
        raise CompressionError(f"fp16 range check: ONNX Runtime cannot load the model: {exc}",
                               where="model") from exc
    names = [o.name for o in session.get_outputs()]
    specs = onnx_input_specs(model)
    first = specs[0].name if specs else ""
    found: dict[str, float] = {}
    for i in range(min(count(data), max_samples)):
        inputs = feed(take(data, i, i + 1), first)
        values = dict(zip(names, session.run(None, inputs), strict=True))
        for name, array in [*inputs.items(), *values.items()]:
            array = np.asarray(array)
            if not np.issubdtype(array.dtype, np.floating) or not array.size:
                continue
            finite = np.abs(array[np.isfinite(array)])
            if finite.size:
                found[name] = max(found.get(name, 0.0), float(finite.max()))
    return found


def overflowing_nodes(model: onnx.ModelProto, data: Inputs, limit: float = LIMIT) -> list[Overflow]:
    """The main graph's operators that read or write a value whose peak on ``data`` exceeds
    ``limit``, in graph order, each with its largest such value."""
    found = peaks(model, data)
    kept = []
    for node in model.graph.node:
        over = [(found[v], v) for v in [*node.input, *node.output] if found.get(v, 0.0) > limit]
        if over:
            peak, value = max(over)
            kept.append(Overflow(node.name, node.op_type, value, peak))
    if kept:
        logger.info("fp16: %d operator(s) kept in float32 (values beyond float16 range)", len(kept))
    return kept


def describe(kept: list[Overflow], source: str) -> str:
    """One report line: how many operators stay in float32 and the largest value among them."""
    top = max(kept, key=lambda o: o.peak)
    return (f"fp16: {len(kept)} operator(s) compute in float32 (weights stored as float16): their "
            f"values exceed float16's range / {HEADROOM:g} on the {source} data (largest: "
            f"{top.op_type} {top.node!r}, |{top.value}| up to {top.peak:.3g})")
