"""A compression report as the pages show it: sizes, accuracy, fidelity per output, the gate's
checks, the operators kept in float and the verdict, each a table of plain strings.

A pure core: :func:`report_view` takes the report as stored (a bundle manifest's ``compression``, a
model version's ``report``) and returns a :class:`ReportView`. A report written by
``edgefleet.compression`` is read with its own model (:class:`CompressionReport`); anything else
(a report from another tool, an older shape) is shown as labelled rows of its values, nested
records as their own small tables, never as Python reprs.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError

from edgefleet.compression.config import OutputKind
from edgefleet.compression.report import CompressionReport, GateCheck, OutputFidelity

MAX_ROWS = 80
"""Rows kept of a report of unknown shape (the rest is counted, not shown)."""


@dataclass(frozen=True)
class Table:
    """A titled table: ``head`` names the columns, every row has as many cells."""

    title: str
    head: tuple[str, ...]
    rows: Sequence[tuple[str, ...]]
    css: str = ""
    """Extra class of the table (``gate-checks`` marks the gate's rows by ``row_css``)."""
    row_css: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class ReportView:
    verdict: str | None
    """``passed``, ``failed`` or ``disabled``; ``None`` when the report states no gate."""
    verdict_text: str
    summary: list[tuple[str, str]]
    tables: list[Table]
    float_operators: list[str] | None
    """Operators left in float (``None``: the report does not say)."""
    structured: bool
    """True when read as an ``edgefleet.compression`` report."""
    omitted: int = 0


def report_view(data: dict[str, Any] | None) -> ReportView | None:
    if not data:
        return None
    try:
        report = CompressionReport.model_validate({"latency": None, **data})   # manifests leave latency out
    except ValidationError:
        return _generic(data)
    return _structured(report)


# --------------------------------------------------------------------------- edgefleet reports

def _pct(v: float) -> str:
    return f"{v:.2%}"


def _bytes(n: int) -> str:
    return f"{n:,} B"


def _measure(name: str, value: float) -> str:
    if name.endswith("_agreement"):
        return _pct(value)
    if name == "snr_db":
        return f"{value:.1f} dB"
    if name in ("cosine_similarity", "iou"):
        return f"{value:.6f}"
    if name == "non_finite":
        return f"{value:.0f}"
    return f"{value:.3g}"


MEASURE_NAMES = {"top1_agreement": "top-1 agreement", "top5_agreement": "top-5 agreement",
                 "mean_abs_error": "mean |error|", "max_abs_error": "max |error|",
                 "relative_mae": "relative mean |error|", "cosine_similarity": "cosine", "snr_db": "SNR",
                 "iou": "IoU", "mask_threshold": "mask threshold", "accuracy_drop_points": "accuracy drop (pt)",
                 "non_finite": "non-finite values"}


def measure_name(key: str) -> str:
    return MEASURE_NAMES.get(key, key.replace("_", " "))


def _structured(r: CompressionReport) -> ReportView:
    mode = r.mode.value + (f", {r.calibration_method.value} calibration" if r.calibration_method else "")
    summary = [("Runtime", f"{r.runtime} (from {r.source_format})"), ("Mode", mode),
               ("Per channel", "yes" if r.per_channel else "no"),
               ("Weights quantized", f"{r.weights_quantized} of {r.weights_total} tensors")]
    if r.pruning is not None:
        summary.append(("Pruning", f"{r.pruning.kind.value} {r.pruning.scope.value}, target "
                                   f"{r.pruning.sparsity:.0%}, achieved {r.sparsity:.1%}"))
    summary += [("Conversion", c) for c in r.conversions]
    s = r.size
    tables = [Table("Size", ("", "Original", "Compressed", "Smaller by"), [
        ("model file", _bytes(s.original_bytes), _bytes(s.compressed_bytes), f"{s.ratio:.2f}×"),
        ("in the bundle", _bytes(s.original_stored_bytes), _bytes(s.compressed_stored_bytes),
         f"{s.stored_ratio:.2f}×")])]
    if r.accuracy is not None:
        a = r.accuracy
        tables.append(Table("Accuracy", ("Samples", "Original", "Compressed", "Drop"),
                            [(str(a.samples), _pct(a.original), _pct(a.compressed), f"{a.drop_points:+.2f} pt")]))
    if r.fidelity is not None:
        tables.append(_fidelity(r.fidelity.samples, r.fidelity.outputs, r))
    if r.gate.checks:
        tables.append(_checks(r.gate.checks))
    verdict = "disabled" if not r.gate.enabled else "passed" if r.gate.passed else "failed"
    failed = r.gate.failed_outputs
    text = {"passed": "every check passed", "disabled": "the gate was disabled: nothing was refused",
            "failed": f"{', '.join(failed)} failed" if failed else r.gate.detail}[verdict]
    return ReportView(verdict=verdict, verdict_text=text or r.gate.detail, summary=summary, tables=tables,
                      float_operators=list(r.float_operators), structured=True)


def _fidelity(samples: int, outputs: list[OutputFidelity], r: CompressionReport) -> Table:
    rows = []
    if outputs:
        for o in outputs:
            shown = {k: v for k, v in o.measures.items() if k != "mask_threshold" or o.kind is OutputKind.MASK}
            rows.append((o.name, f"{o.kind.value} ({o.kind_source})",
                         ", ".join(f"{measure_name(k)} {_measure(k, v)}" for k, v in shown.items())))
    elif r.fidelity is not None:
        f = r.fidelity
        rows.append(("(first output)", "", f"top-1 agreement {_pct(f.top1_agreement)}, max |error| "
                                           f"{f.max_abs_error:.3g}, mean |error| {f.mean_abs_error:.3g}, "
                                           f"cosine {f.cosine_similarity:.6f}"))
    return Table(f"Fidelity per output ({samples} samples)", ("Output", "Kind", "Measures"), rows)


def _checks(checks: list[GateCheck]) -> Table:
    rows = [(c.output, measure_name(c.measure), _measure(c.measure, c.value),
             f"{c.bound} {_measure(c.measure, c.threshold)}", "pass" if c.passed else "fail") for c in checks]
    return Table("Accuracy gate", ("Output", "Measure", "Value", "Limit", "Verdict"), rows, css="gate-checks",
                 row_css=["ok" if c.passed else "bad" for c in checks])


# --------------------------------------------------------------------------- other reports

def _text(value: Any) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.4g}"
    if value is None:
        return "—"
    if isinstance(value, list):
        return ", ".join(_text(v) for v in value) or "—"
    if isinstance(value, dict):
        return ", ".join(f"{_label(k)} {_text(v)}" for k, v in value.items()) or "—"
    return str(value)


def _label(key: Any) -> str:
    return str(key).replace("_", " ")


def _generic(data: dict[str, Any]) -> ReportView:
    summary: list[tuple[str, str]] = []
    tables: list[Table] = []
    verdict: str | None = None
    verdict_text = ""
    floats: list[str] | None = None
    for key, value in data.items():
        if key == "gate" and isinstance(value, dict) and isinstance(value.get("passed"), bool):
            rest = dict(value)
            verdict = "passed" if rest.pop("passed") else "failed"
            verdict_text = _text(rest)
        elif key == "float_operators" and isinstance(value, list):
            floats = [str(v) for v in value]
        elif isinstance(value, dict) and value and all(not isinstance(v, dict | list) for v in value.values()):
            tables.append(Table(_label(key).capitalize(), ("", "Value"),
                                [(_label(k), _text(v)) for k, v in value.items()]))
        elif isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
            head = list(dict.fromkeys(k for v in value for k in v))
            tables.append(Table(_label(key).capitalize(), tuple(_label(h) for h in head),
                                [tuple(_text(v.get(h)) for h in head) for v in value]))
        else:
            summary.append((_label(key).capitalize(), _text(value)))
    shown = len(summary) + sum(len(t.rows) for t in tables)
    omitted = max(0, shown - MAX_ROWS)
    if omitted:
        summary = summary[:MAX_ROWS]
        budget = MAX_ROWS - len(summary)
        kept = []
        for t in tables:
            if budget <= 0:
                break
            kept.append(Table(t.title, t.head, t.rows[:budget], t.css))
            budget -= len(t.rows[:budget])
        tables = kept
    return ReportView(verdict=verdict, verdict_text=verdict_text, summary=summary, tables=tables,
                      float_operators=floats, structured=False, omitted=omitted)
