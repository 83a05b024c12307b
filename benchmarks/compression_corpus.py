"""Compression over the corpus of real models: every model x mode, one table.

    python benchmarks/corpus/fetch.py && python benchmarks/compression_corpus.py
    python benchmarks/compression_corpus.py [--only NAME ...] [--modes dynamic_int8,fp16]
                                            [--samples 8] [--fallback] [--markdown]

For each model of benchmarks/corpus/models.toml and each mode (ONNX models: for the ONNX
target, and for the TFLite target through the exporter; TFLite models: for TFLite, including
weight_only_int8), ``edgefleet.compression.compress()`` runs with the default gate on synthetic
inputs drawn from the manifest's input descriptions (calibration and evaluation sets from
different seeds; shared inputs such as a recurrent state given once). For ONNX models, ONNX
Runtime's plain ``quantize_dynamic`` (default settings) is the baseline: its size and its fidelity
against fp32 on the same evaluation inputs, measured by the same code as compress()'s own rows.

Every row runs in a worker process, so an error, a crash or a time-out costs that row only;
errors are shown as one line (exception class and message). The fallback is off unless
``--fallback``: its harm ranking quantizes the model once per candidate operator, hours on the
larger models. Latency is not measured (``latency_runs = 0``); "time" is the wall time of one
``compress()`` call. Exits 0 with one line when the corpus is not fetched.
"""

from __future__ import annotations

import argparse
import logging
import multiprocessing
import sys
import tempfile
import time
import traceback
from dataclasses import asdict, dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent / "corpus"))

from manifest import ModelEntry, cache_dir, load_manifest, model_path, select, synthesise_inputs  # noqa: E402

ONNX_TARGET_MODES = ("dynamic_int8", "static_int8", "fp16")
TFLITE_TARGET_MODES = ("dynamic_int8", "static_int8", "fp16", "weight_only_int8")
BASELINE = "ORT quantize_dynamic"
CALIBRATION_SEED, EVAL_SEED = 0, 1


@dataclass
class Row:
    model: str
    format: str
    target: str
    mode: str
    result: str = "ok"
    before: int | None = None
    after: int | None = None
    stored_ratio: float | None = None
    fidelity: str = ""
    cosine: float | None = None  # first output, mean over samples
    gate: str = ""
    weights: str = ""
    seconds: float | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def ratio(self) -> float | None:
        return self.before / self.after if self.before and self.after else None


@dataclass(frozen=True)
class Task:
    model: str
    target: str
    mode: str


def _one_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    text = f"{type(exc).__name__}: {lines[0] if lines else ''}".strip()
    return text if len(text) <= 220 else text[:217] + "..."


# --- reading a report (today's fields and tomorrow's, by .get) -------------------------------

_MAIN_MEASURE = {"class_scores": ("top1_agreement", "top1 {:.1%}"),
                 "map": ("cosine_similarity", "cos {:.5f}"),
                 "embedding": ("cosine_similarity", "cos {:.5f}"),
                 "coordinates": ("relative_mae", "rMAE {:.1e}"),
                 "regression": ("relative_mae", "rMAE {:.1e}"),
                 "mask": ("iou", "IoU {:.4f}")}


def fidelity_text(fidelity: dict[str, Any] | None) -> str:
    """Per output (when the report has them): kind and the measure that matters; else the
    first output's top-1 agreement and cosine."""
    if not fidelity:
        return ""
    outputs = fidelity.get("outputs") or []
    parts = []
    for out in outputs:
        kind = str(out.get("kind", ""))
        key, fmt = _MAIN_MEASURE.get(kind, ("cosine_similarity", "cos {:.5f}"))
        value = (out.get("measures") or {}).get(key)
        parts.append(f"{kind} " + (fmt.format(value) if isinstance(value, int | float) else "?"))
    if parts:
        return "; ".join(parts)
    return (f"top1 {fidelity.get('top1_agreement', float('nan')):.1%}, "
            f"cos {fidelity.get('cosine_similarity', float('nan')):.5f}")


def fill_from_report(row: Row, report: dict[str, Any]) -> None:
    size = report.get("size") or {}
    row.before, row.after = size.get("original_bytes"), size.get("compressed_bytes")
    row.stored_ratio = size.get("stored_ratio")
    fidelity = report.get("fidelity")
    row.fidelity = fidelity_text(fidelity)
    if fidelity and isinstance(fidelity.get("cosine_similarity"), int | float):
        row.cosine = float(fidelity["cosine_similarity"])
    gate = report.get("gate") or {}
    if gate:
        row.gate = ("PASS" if gate.get("passed") else "FAIL") + ("" if gate.get("enabled", True) else " (off)")
    quantized, total = report.get("weights_quantized"), report.get("weights_total")
    if quantized is not None and total is not None:
        row.weights = f"{quantized}/{total}"
    row.notes += [str(c) for c in report.get("conversions") or []]
    floats = report.get("float_operators") or []
    if floats:
        row.notes.append(f"{len(floats)} operator(s) kept in float")


# --- the work of one row (in the worker process) ---------------------------------------------

def _config(entry: ModelEntry, mode: str, fallback: bool) -> Any:
    from edgefleet.compression import CompressionConfig, FallbackConfig, GateConfig, Mode
    from edgefleet.compression.config import OutputSpec

    kwargs: dict[str, Any] = {"mode": Mode(mode), "latency_runs": 0,
                              "fallback": FallbackConfig(enabled=fallback)}
    if entry.output_kinds:
        kwargs["gate"] = GateConfig(outputs={name: OutputSpec(kind=kind) for name, kind in entry.output_kinds})
    if "inputs" in CompressionConfig.model_fields:  # input descriptions, where compress() takes them
        described = {}
        for d in entry.inputs:
            low, high = d.range if d.range is not None else (
                min(lo for lo, _ in d.column_ranges or ()), max(hi for _, hi in d.column_ranges or ()))
            described[d.name] = {"per_sample": d.per_sample, "range": (low, high)}
        kwargs["inputs"] = described
    return CompressionConfig(**kwargs)


def run_compress(entry: ModelEntry, model: bytes, target: str, mode: str, samples: int,
                 fallback: bool) -> Row:
    from edgefleet.compression import compress
    from edgefleet.protocol.errors import AccuracyGateError
    from edgefleet.protocol.vocabulary import Runtime

    row = Row(entry.name, entry.format, target, mode)
    calibration = synthesise_inputs(entry, samples, CALIBRATION_SEED)
    eval_x = synthesise_inputs(entry, samples, EVAL_SEED)
    start = time.perf_counter()
    try:
        result = compress(model, Runtime(target), _config(entry, mode, fallback),
                          calibration=calibration, eval_x=eval_x)
        fill_from_report(row, result.report.model_dump(mode="json"))
    except AccuracyGateError as exc:
        row.result = _one_line(exc)
        report = getattr(exc, "report", None)
        if isinstance(report, dict):
            fill_from_report(row, report)
    except Exception as exc:  # one row, one line: whatever compress() raises
        row.result = _one_line(exc)
    row.seconds = time.perf_counter() - start
    return row


def same_measures(entry: ModelEntry, original: bytes, quantized: bytes,
                  eval_x: dict[str, np.ndarray]) -> dict[str, Any]:
    """The fidelity of ``quantized`` against ``original`` measured exactly as ``compress()``
    measures its own results (``edgefleet.compression.inference.predict``, one sample per call,
    every output judged by its declared or inferred kind, :func:`fidelity.measures`), in the
    report's shape, so the baseline row and ours compare like with like. (The cosine of an output
    ``[T, N, C]`` concatenated over calls is the mean over its rows, not over calls.)"""
    from edgefleet.compression import fidelity as fm
    from edgefleet.compression.config import OutputKind
    from edgefleet.compression.inference import Session, predict
    from edgefleet.compression.inputs import infer_input_specs, normalise_inputs, resolve_specs
    from edgefleet.protocol.vocabulary import Runtime

    config = _config(entry, "dynamic_int8", False)
    data = normalise_inputs(eval_x, "eval_x", resolve_specs(infer_input_specs(original), config.inputs))
    assert data is not None
    ref = predict(Session(Runtime.ONNX, original), data, config.eval_batch_size)
    out = predict(Session(Runtime.ONNX, quantized), data, config.eval_batch_size)
    declared = dict(entry.output_kinds)
    outputs: list[dict[str, Any]] = []
    for name, values in ref.items():
        kind = OutputKind(declared[name]) if name in declared else fm.infer_kind(values)[0]
        outputs.append({"name": name, "kind": kind.value,
                        "measures": fm.measures(kind, values, out[name], top_k=config.gate.top_k)})
    return {"outputs": outputs, "cosine_similarity": outputs[0]["measures"]["cosine_similarity"]}


def run_baseline(entry: ModelEntry, model: bytes, samples: int) -> Row:
    """ONNX Runtime's plain quantize_dynamic (defaults), in a private temp dir, measured as
    compress() measures (:func:`same_measures`)."""
    from onnxruntime.quantization import quantize_dynamic

    from edgefleet.compression import stored_size

    row = Row(entry.name, entry.format, "onnx", BASELINE)
    eval_x = synthesise_inputs(entry, samples, EVAL_SEED)
    start = time.perf_counter()
    try:
        with tempfile.TemporaryDirectory(prefix="corpus-baseline-") as tmp:
            source, out = Path(tmp, "fp32.onnx"), Path(tmp, "int8.onnx")
            source.write_bytes(model)
            quantize_dynamic(str(source), str(out))
            quantized = out.read_bytes()
            row.seconds = time.perf_counter() - start
            row.before, row.after = len(model), len(quantized)
            row.stored_ratio = stored_size(model) / max(stored_size(quantized), 1)
            fidelity = same_measures(entry, model, quantized, eval_x)
            row.cosine = float(fidelity["cosine_similarity"])
            row.fidelity = fidelity_text(fidelity)
    except Exception as exc:  # the baseline may fail where ours does (or not): one line
        row.result = _one_line(exc)
    if row.seconds is None:
        row.seconds = time.perf_counter() - start
    return row


def _worker(conn: Connection, samples: int, fallback: bool) -> None:
    logging.basicConfig(level=logging.ERROR)
    import onnxruntime as ort

    ort.set_default_logger_severity(3)
    entries = {e.name: e for e in load_manifest()}
    cache = cache_dir()
    loaded: dict[str, bytes] = {}
    while True:
        task: Task | None = conn.recv()
        if task is None:
            return
        entry = entries[task.model]
        try:
            if task.model not in loaded:
                loaded.clear()
                loaded[task.model] = model_path(entry, cache).read_bytes()
            model = loaded[task.model]
            row = (run_baseline(entry, model, samples) if task.mode == BASELINE
                   else run_compress(entry, model, task.target, task.mode, samples, fallback))
        except Exception as exc:  # belt and braces: the harness itself failed on this row
            row = Row(entry.name, entry.format, task.target, task.mode, result=_one_line(exc))
            row.notes.append("harness: " + traceback.format_exc(limit=1).strip().splitlines()[-1])
        conn.send(asdict(row))


class Worker:
    """One worker process at a time; replaced after a crash or a time-out."""

    def __init__(self, samples: int, fallback: bool) -> None:
        self._args = (samples, fallback)
        self._process: multiprocessing.process.BaseProcess | None = None
        self._conn: Connection | None = None

    def _start(self) -> None:
        context = multiprocessing.get_context("spawn")
        parent, child = context.Pipe()
        self._process = context.Process(target=_worker, args=(child, *self._args), daemon=True)
        self._process.start()
        self._conn = parent

    def run(self, task: Task, timeout: float, entry: ModelEntry) -> Row:
        if self._process is None or not self._process.is_alive():
            self._start()
        assert self._conn is not None and self._process is not None
        self._conn.send(task)
        if self._conn.poll(timeout):
            try:
                return Row(**self._conn.recv())
            except EOFError:
                pass
            reason = f"worker died (exit code {self._process.exitcode})"
        else:
            reason = f"timed out after {timeout:.0f} s"
        self.stop()
        return Row(entry.name, entry.format, task.target, task.mode, result=reason)

    def stop(self) -> None:
        if self._process is not None:
            if self._process.is_alive():
                self._process.terminate()
            self._process.join(10)
        self._process, self._conn = None, None

    def close(self) -> None:
        if self._conn is not None and self._process is not None and self._process.is_alive():
            self._conn.send(None)
            self._process.join(30)
        self.stop()


def tasks_for(entry: ModelEntry, modes: set[str] | None, baseline: bool) -> list[Task]:
    tasks = []
    if entry.format == "onnx":
        if baseline:
            tasks.append(Task(entry.name, "onnx", BASELINE))
        tasks += [Task(entry.name, "onnx", m) for m in ONNX_TARGET_MODES if modes is None or m in modes]
    tasks += [Task(entry.name, "tflite", m) for m in TFLITE_TARGET_MODES if modes is None or m in modes]
    return tasks


# --- the table -------------------------------------------------------------------------------

HEADER = ("model", "format", "target", "mode", "result", "size before -> after", "ratio", "stored ratio",
          "fidelity", "1 - cos out0", "gate", "weights q/total", "time s")


def _size(n: int | None) -> str:
    if n is None:
        return "-"
    return f"{n / 1e6:.2f} MB" if n >= 1e5 else f"{n / 1e3:.1f} kB"


def cells(row: Row) -> tuple[str, ...]:
    ratio = row.ratio
    return (row.model, row.format, row.target, row.mode, row.result,
            f"{_size(row.before)} -> {_size(row.after)}" if row.before else "-",
            f"{ratio:.2f}x" if ratio else "-",
            f"{row.stored_ratio:.2f}x" if row.stored_ratio else "-",
            row.fidelity or "-", f"{1.0 - row.cosine:.1e}" if row.cosine is not None else "-",
            row.gate or "-", row.weights or "-",
            f"{row.seconds:.1f}" if row.seconds is not None else "-")


def render(rows: list[Row], markdown: bool) -> str:
    table = [HEADER, *(cells(r) for r in rows)]
    if markdown:
        def esc(text: str) -> str:
            return text.replace("|", "\\|")
        lines = ["| " + " | ".join(esc(c) for c in table[0]) + " |", "|" + "---|" * len(HEADER)]
        lines += ["| " + " | ".join(esc(c) for c in line) + " |" for line in table[1:]]
    else:
        widths = [max(len(line[i]) for line in table) for i in range(len(HEADER))]
        lines = ["  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)).rstrip() for line in table]
    notes = [f"- {r.model} {r.target} {r.mode}: " + "; ".join(r.notes) for r in rows if r.notes]
    if notes:
        lines += ["", "Notes (conversions reported by compress(), operators kept in float):", *notes]
    return "\n".join(lines)


def missing_models(entries: list[ModelEntry], cache: Path) -> list[ModelEntry]:
    return [e for e in entries if not model_path(e, cache).is_file()]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", action="append", default=[], metavar="NAME", help="only these models")
    parser.add_argument("--modes", help="comma-separated modes (default: all)")
    parser.add_argument("--samples", type=int, default=8, help="calibration and evaluation samples each")
    parser.add_argument("--fallback", action="store_true", help="enable the operator fallback")
    parser.add_argument("--no-baseline", action="store_true", help="skip ORT quantize_dynamic")
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds per row")
    parser.add_argument("--markdown", action="store_true", help="print the table as markdown")
    args = parser.parse_args(argv)

    try:
        entries = select(args.only)
    except ValueError as exc:
        print(exc, file=sys.stderr)
        return 2
    cache = cache_dir()
    missing = missing_models(entries, cache)
    if missing:
        print(f"corpus benchmark skipped: {len(missing)} of {len(entries)} models not fetched in "
              f"{cache / 'models'} (run python benchmarks/corpus/fetch.py)")
        return 0
    modes = set(args.modes.split(",")) if args.modes else None
    worker = Worker(args.samples, args.fallback)
    rows = []
    try:
        for entry in entries:
            for task in tasks_for(entry, modes, not args.no_baseline):
                row = worker.run(task, args.timeout, entry)
                rows.append(row)
                print(f"[{len(rows)}] {row.model} -> {row.target} {row.mode}: {row.result} "
                      f"({row.seconds or 0:.1f} s)", file=sys.stderr, flush=True)
    finally:
        worker.close()
    print(render(rows, args.markdown))
    return 0


if __name__ == "__main__":
    sys.exit(main())
