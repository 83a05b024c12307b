"""The compression report: what was done, what it cost, and whether the accuracy gate held.

JSON via ``report.model_dump(mode="json")`` (embedded in the bundle manifest) and a readable
plain-text table via :meth:`CompressionReport.to_table`.
"""

from __future__ import annotations

import zlib
from typing import Any

from pydantic import BaseModel, ConfigDict, computed_field

from edgefleet.compression.config import CalibrationMethod, Mode, PruningConfig, PruningKind

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


class FidelityReport(_Report):
    """How closely the compressed model reproduces the original's outputs."""

    samples: int
    top1_agreement: float
    max_abs_error: float
    mean_abs_error: float
    cosine_similarity: float


class GateResult(_Report):
    enabled: bool
    passed: bool
    criterion: str
    value: float | None
    threshold: float | None
    detail: str


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
        ]
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
            fid = self.fidelity
            rows.append(("fidelity", f"top-1 agree {fid.top1_agreement:.2%}, max|err| "
                                     f"{fid.max_abs_error:.2e}, mean|err| {fid.mean_abs_error:.2e}, "
                                     f"cos {fid.cosine_similarity:.6f}"))
        rows.append(("kept in float", ", ".join(self.float_operators) or "-"))
        g = self.gate
        rows.append(("gate", ("PASS" if g.passed else "FAIL") + f": {g.detail}"))
        width = max(len(key) for key, _ in rows)
        return "\n".join(f"{key.ljust(width)}  {value}" for key, value in rows)
