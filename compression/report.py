"""The compression report: what was done, what it cost, and whether the accuracy gate held.

JSON via ``report.model_dump(mode="json")`` (embedded in the bundle manifest) and a readable
plain-text table via :meth:`CompressionReport.to_table`.
"""

from __future__ import annotations

import zlib
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, computed_field

from edgefleet.compression.config import CalibrationMethod, Mode, OutputKind, PruningConfig, PruningKind

#: The bundle format deflates a file only when that saves at least this fraction.
DEFLATE_MIN_SAVING = 0.10


def stored_size(data: bytes) -> int:
    """Bytes a file takes inside a bundle: deflated (level 9) when that saves >= 10 %."""
    deflated = len(zlib.compress(data, 9))
    if deflated <= len(data) * (1.0 - DEFLATE_MIN_SAVING):
        return deflated
    return len(data)


class _Report(BaseModel):
    model_config = ConfigDict(frozen=True)


class SizeReport(_Report):
    original_bytes: int
    compressed_bytes: int
    original_stored_bytes: int
    compressed_stored_bytes: int

    @computed_field  # mypy cannot type decorated properties (pydantic docs)
    @property
    def ratio(self) -> float:
        """How many times smaller the model file got."""
        return self.original_bytes / max(self.compressed_bytes, 1)

    @computed_field  # mypy cannot type decorated properties (pydantic docs)
    @property
    def stored_ratio(self) -> float:
        """How many times smaller the model got inside the bundle (after deflate)."""
        return self.original_stored_bytes / max(self.compressed_stored_bytes, 1)


class LatencyReport(_Report):
    """Single-sample latency in the target runtime on this CPU (one thread)."""

    runs: int
    original_p50_ms: float
    original_p95_ms: float
    compressed_p50_ms: float
    compressed_p95_ms: float

    @computed_field  # mypy cannot type decorated properties (pydantic docs)
    @property
    def ratio(self) -> float:
        """compressed p50 / original p50: below 1 is faster."""
        return self.compressed_p50_ms / max(self.original_p50_ms, 1e-9)


class AccuracyReport(_Report):
    samples: int
    original: float
    compressed: float

    @computed_field  # mypy cannot type decorated properties (pydantic docs)
    @property
    def drop_points(self) -> float:
        """Absolute accuracy drop in percentage points (negative: it improved)."""
        return (self.original - self.compressed) * 100.0


class OutputFidelity(_Report):
    """One output: its kind (and where the kind came from) and every measure taken on it."""

    name: str
    shape: list[int]  # per sample
    kind: OutputKind
    kind_source: str  # "declared" (recipe), "inferred" (from shape and values) or "labels"
    kind_rule: str  # why: the recipe, or the inference rule that matched
    measures: dict[str, float]

    def summary(self) -> str:
        """The measures that matter for the kind, short."""
        m = self.measures
        if self.kind is OutputKind.CLASS_SCORES:
            parts = [f"top-1 agree {m['top1_agreement']:.2%}"]
            parts += [f"{k.removesuffix('_agreement').replace('top', 'top-')} agree {v:.2%}"
                      for k, v in m.items() if k.endswith("_agreement") and k != "top1_agreement"]
        elif self.kind is OutputKind.MASK:
            parts = [f"IoU {m['iou']:.4f} (> {m['mask_threshold']:.3g})"]
        elif self.kind in (OutputKind.COORDINATES, OutputKind.REGRESSION):
            parts = [f"relative mean|err| {m['relative_mae']:.2e}"]
        else:
            parts = [f"cos {m['cosine_similarity']:.6f}", f"SNR {m['snr_db']:.1f} dB"]
        parts.append(f"mean|err| {m['mean_abs_error']:.2e}")
        return ", ".join(parts)


class FidelityReport(_Report):
    """How closely the compressed model reproduces the original's outputs: every output in
    ``outputs``; the flat fields are the first output's (``top1_agreement`` is the agreement of
    the argmax of each flattened sample, meaningful for class scores only)."""

    samples: int
    top1_agreement: float
    max_abs_error: float
    mean_abs_error: float
    cosine_similarity: float
    outputs: list[OutputFidelity] = Field(default_factory=list)

    def table_rows(self) -> list[tuple[str, str]]:
        if not self.outputs:
            return [("fidelity", f"top-1 agree {self.top1_agreement:.2%}, max|err| "
                                 f"{self.max_abs_error:.2e}, mean|err| {self.mean_abs_error:.2e}, "
                                 f"cos {self.cosine_similarity:.6f}")]
        return [(f"output {o.name}", f"{o.kind.value} ({o.kind_source}): {o.summary()}")
                for o in self.outputs]


class GateCheck(_Report):
    """One threshold on one output's measure."""

    output: str
    kind: OutputKind
    measure: str  # a key of the output's measures, or "accuracy_drop_points"
    value: float
    threshold: float
    bound: str  # "min" or "max"
    passed: bool

    def text(self) -> str:
        names = {"top1_agreement": "top-1 agreement", "accuracy_drop_points": "accuracy drop",
                 "mean_abs_error": "mean |error|", "relative_mae": "relative mean |error|",
                 "cosine_similarity": "cosine", "snr_db": "SNR", "iou": "IoU"}
        name = names.get(self.measure, self.measure.replace("_agreement", " agreement")
                         .replace("top", "top-"))
        if self.measure == "non_finite":
            return f"{self.output}: {self.value:.0f} non-finite value(s) (inf/nan) where the original is finite"
        if self.measure == "accuracy_drop_points":
            value, threshold = f"{self.value:+.2f} pt", f"{self.threshold:.2f}"
        elif self.measure.endswith("_agreement"):
            value, threshold = f"{self.value:.2%}", f"{self.threshold:.2%}"
        elif self.measure == "snr_db":
            value, threshold = f"{self.value:.1f} dB", f"{self.threshold:.1f}"
        elif self.measure in ("cosine_similarity", "iou"):
            value, threshold = f"{self.value:.6f}", f"{self.threshold:.6g}"
        else:
            value, threshold = f"{self.value:.2e}", f"{self.threshold:.2e}"
        return f"{self.output}: {name} {value} ({self.bound} {threshold})"


class GateResult(_Report):
    """The verdict: passed when every check of every output passed. ``criterion``, ``value``
    and ``threshold`` are the first failed check's (or, when all pass, the first output's
    first check's); ``checks`` has them all."""

    enabled: bool
    passed: bool
    criterion: str
    value: float | None
    threshold: float | None
    detail: str
    checks: list[GateCheck] = Field(default_factory=list)

    @property
    def failed_outputs(self) -> list[str]:
        """Outputs with at least one failed check, in model order."""
        return list(dict.fromkeys(c.output for c in self.checks if not c.passed))

    def table_rows(self) -> list[tuple[str, str]]:
        verdict = "PASS" if self.passed else "FAIL"
        if not self.checks:
            return [("gate", f"{verdict}: {self.detail}")]
        rows = [("gate", verdict + ("" if self.enabled else " (disabled)")
                 + (f": {', '.join(self.failed_outputs)} failed" if self.failed_outputs else ""))]
        rows += [(f"  {'ok' if c.passed else 'FAILED'}", c.text()) for c in self.checks]
        return rows


class CompressionReport(_Report):
    runtime: str
    source_format: str
    mode: Mode
    per_channel: bool
    calibration_method: CalibrationMethod | None
    pruning: PruningConfig | None
    sparsity: float  # achieved: zero weights (unstructured) or removed units (structured)
    size: SizeReport
    latency: LatencyReport | None
    accuracy: AccuracyReport | None
    fidelity: FidelityReport | None
    float_operators: list[str]
    gate: GateResult
    #: Weight tensors of the weight operators stored quantized (int8.., or float16 for fp16)
    #: in the compressed model, and all of them (defaults: reports written before these existed).
    weights_quantized: int = 0
    weights_total: int = 0
    #: What was converted on the way, e.g. "opset 11 -> 13 (onnx.version_converter)".
    conversions: list[str] = Field(default_factory=list)

    def manifest_dict(self) -> dict[str, Any]:
        """The report as embedded in a bundle manifest: everything but the latency measured on
        the build machine, which differs run to run and would make rebuilds differ (the device's
        own latency comes back in its telemetry)."""
        return self.model_dump(mode="json", exclude={"latency"})

    def to_table(self) -> str:
        """A readable two-column table (plain text)."""
        rows: list[tuple[str, str]] = [
            ("runtime", f"{self.runtime} (source {self.source_format})"),
            ("mode", self.mode.value + (f", {self.calibration_method.value} calibration"
                                        if self.calibration_method else "")),
        ]
        if self.pruning is not None:
            achieved = ("weights zero" if self.pruning.kind is PruningKind.UNSTRUCTURED
                        else "units removed")
            rows.append(("pruning", f"{self.pruning.kind.value} {self.pruning.scope.value} "
                                    f"target {self.pruning.sparsity:.0%}, {achieved} "
                                    f"{self.sparsity:.1%}"))
        s = self.size
        rows += [
            ("model file", f"{s.original_bytes:,} -> {s.compressed_bytes:,} B ({s.ratio:.2f}x smaller)"),
            ("in bundle", f"{s.original_stored_bytes:,} -> {s.compressed_stored_bytes:,} B "
                          f"({s.stored_ratio:.2f}x smaller)"),
            ("weights quantized", f"{self.weights_quantized} of {self.weights_total} tensors"),
        ]
        rows += [("conversion", text) for text in self.conversions]
        if self.latency is not None:
            lat = self.latency
            rows.append(("latency p50/p95", f"{lat.original_p50_ms:.3f}/{lat.original_p95_ms:.3f} -> "
                                            f"{lat.compressed_p50_ms:.3f}/{lat.compressed_p95_ms:.3f} ms "
                                            f"(ratio {lat.ratio:.2f})"))
        if self.accuracy is not None:
            acc = self.accuracy
            rows.append(("accuracy", f"{acc.original:.2%} -> {acc.compressed:.2%} "
                                     f"(drop {acc.drop_points:+.2f} pt, n={acc.samples})"))
        if self.fidelity is not None:
            rows += self.fidelity.table_rows()
        rows.append(("kept in float", ", ".join(self.float_operators) or "-"))
        rows += self.gate.table_rows()
        width = max(len(key) for key, _ in rows)
        return "\n".join(f"{key.ljust(width)}  {value}" for key, value in rows)
