"""Measure a compressed model against its original: accuracy, fidelity per output, latency, and
the gate.

Every output gets a kind (declared in ``[compression.gate.outputs.<name>]`` or inferred by
:func:`edgefleet.compression.fidelity.infer_kind` from the original's outputs) and is judged by
the measures of its kind; the gate passes when every output passes.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from edgefleet.compression import fidelity as fm
from edgefleet.compression.config import KIND_THRESHOLDS, GateConfig, OutputKind, OutputSpec, misplaced_thresholds
from edgefleet.compression.inference import Session, latency_ms, predict
from edgefleet.compression.inputs import Inputs
from edgefleet.compression.report import (
    AccuracyReport,
    FidelityReport,
    GateCheck,
    GateResult,
    LatencyReport,
    OutputFidelity,
)
from edgefleet.protocol.errors import CompressionError, ConfigError
from edgefleet.protocol.vocabulary import Runtime


@dataclass(frozen=True)
class Reference:
    """The original model's outputs (by name, in model order) on the evaluation set, computed once."""

    model: bytes
    runtime: Runtime
    outputs: dict[str, np.ndarray]


def reference(model: bytes, runtime: Runtime, eval_x: Inputs, batch_size: int) -> Reference:
    return Reference(model, runtime, predict(Session(runtime, model), eval_x, batch_size))


@dataclass(frozen=True)
class OutputPlan:
    """How one output is judged: its kind, where the kind came from, and its thresholds."""

    name: str
    kind: OutputKind
    source: str  # "declared", "inferred" or "labels"
    rule: str
    spec: OutputSpec
    labelled: bool  # the labels (eval_y) belong to this output


def plan_outputs(outputs: Mapping[str, np.ndarray], config: GateConfig,
                 labelled: bool) -> list[OutputPlan]:
    """Each output's kind and thresholds; :class:`ConfigError` for a recipe that names an
    output the model does not have, thresholds that do not fit the kind, or labels without a
    class_scores output to belong to."""
    unknown = sorted(set(config.outputs) - set(outputs))
    if unknown:
        raise ConfigError(f"the model has no output {unknown[0]!r}", where=f"gate.outputs.{unknown[0]}",
                          hint="model outputs: " + ", ".join(outputs))
    plans = []
    for name, ref in outputs.items():
        spec = config.outputs.get(name, OutputSpec())
        if spec.kind is not None:
            kind, source, rule = spec.kind, "declared", "recipe"
        else:
            kind, rule = fm.infer_kind(ref)
            source = "inferred"
            wrong = misplaced_thresholds(spec, kind)
            if wrong:
                raise ConfigError(f"output {name!r} is inferred {kind.value} ({rule}): "
                                  f"{', '.join(wrong)} does not apply",
                                  where=f"gate.outputs.{name}",
                                  hint=f"declare its kind, or use {', '.join(KIND_THRESHOLDS[kind])}")
        plans.append(OutputPlan(name, kind, source, rule, spec, labelled=False))
    if labelled:
        plans = _attach_labels(plans, outputs)
    return plans


def _attach_labels(plans: list[OutputPlan], outputs: Mapping[str, np.ndarray]) -> list[OutputPlan]:
    """The labels belong to the first class_scores output; with none, to the first output when
    its kind was inferred and it is ``[N, C]`` (a classifier emitting logits)."""
    index = next((i for i, p in enumerate(plans) if p.kind is OutputKind.CLASS_SCORES), None)
    first = plans[0]
    if index is None and first.source == "inferred" and outputs[first.name].ndim == 2 \
            and outputs[first.name].shape[1] > 1:
        index = 0
        plans[0] = OutputPlan(first.name, OutputKind.CLASS_SCORES, "labels",
                              f"eval_y labels given; [N, C] output ({first.rule})", first.spec, False)
    if index is None:
        raise ConfigError("eval_y labels need a class_scores output", where="eval_y",
                          hint="declare [compression.gate.outputs.<name>] kind = \"class_scores\", "
                               "or evaluate without labels")
    owner = plans[index]
    if outputs[owner.name].ndim != 2:
        raise ConfigError(f"eval_y labels need [N, C] class scores; output {owner.name!r} is "
                          f"{list(outputs[owner.name].shape)}", where="eval_y",
                          hint="evaluate without labels")
    plans[index] = OutputPlan(owner.name, owner.kind, owner.source, owner.rule, owner.spec, True)
    return plans


def align(expected: list[str], outputs: dict[str, np.ndarray], where: str) -> dict[str, np.ndarray]:
    """The compressed model's outputs under the original's names: by name, else by position
    (a conversion may rename output tensors)."""
    if set(expected) <= set(outputs):
        return {name: outputs[name] for name in expected}
    if len(outputs) == len(expected):
        return dict(zip(expected, outputs.values(), strict=True))
    raise CompressionError(f"the compressed model has outputs {list(outputs)}, the original "
                           f"{expected}", where=where)


def _check_shapes(ref: Reference, outputs: dict[str, np.ndarray]) -> None:
    for name, a in ref.outputs.items():
        if a.shape != outputs[name].shape:
            raise CompressionError(f"output {name!r} has shape {list(outputs[name].shape)}, the "
                                   f"original's {list(a.shape)}", where=f"outputs.{name}")


def accuracy(original: np.ndarray, compressed: np.ndarray, labels: np.ndarray) -> AccuracyReport:
    labels = np.asarray(labels).reshape(-1)
    return AccuracyReport(samples=len(labels), original=fm.accuracy(original, labels),
                          compressed=fm.accuracy(compressed, labels))


def fidelity(ref: Reference, outputs: dict[str, np.ndarray], plans: list[OutputPlan],
             top_k: int) -> FidelityReport:
    """Every output's measures; the flat fields are the first output's."""
    per_output = [OutputFidelity(
        name=p.name, shape=list(ref.outputs[p.name].shape[1:]), kind=p.kind, kind_source=p.source,
        kind_rule=p.rule, measures=fm.measures(p.kind, ref.outputs[p.name], outputs[p.name],
                                               top_k=top_k, threshold=p.spec.mask_threshold))
        for p in plans]
    first, name = per_output[0].measures, plans[0].name
    return FidelityReport(
        samples=len(ref.outputs[name]),
        top1_agreement=fm.flat_top1_agreement(ref.outputs[name], outputs[name]),
        max_abs_error=first["max_abs_error"], mean_abs_error=first["mean_abs_error"],
        cosine_similarity=first["cosine_similarity"], outputs=per_output)


def _checks_for(plan: OutputPlan, measures: dict[str, float], config: GateConfig,
                acc: AccuracyReport | None) -> list[GateCheck]:
    """The thresholds of one output: the recipe's for this output, else the gate's defaults."""
    spec = plan.spec

    def pick(own: float | None, default: float | None) -> float | None:
        return own if own is not None else default

    wanted: list[tuple[str, float | None, str]] = []  # measure, threshold, bound
    if "non_finite" in measures:  # always fails: the output has inf/nan the original has not
        wanted.append(("non_finite", 0.0, "max"))
    kind = plan.kind
    if kind is OutputKind.CLASS_SCORES:
        if plan.labelled and acc is not None:
            wanted.append(("accuracy_drop_points", config.max_accuracy_drop, "max"))
        top1 = spec.min_top1_agreement if plan.labelled else pick(spec.min_top1_agreement,
                                                                  config.min_top1_agreement)
        wanted.append(("top1_agreement", top1, "min"))
        topk = f"top{config.top_k}_agreement"
        if topk in measures:
            wanted.append((topk, pick(spec.min_top_k_agreement, config.min_top_k_agreement), "min"))
    elif kind in (OutputKind.MAP, OutputKind.EMBEDDING):
        wanted += [("cosine_similarity", pick(spec.min_cosine, config.min_cosine), "min"),
                   ("snr_db", pick(spec.min_snr_db, config.min_snr_db), "min")]
    elif kind in (OutputKind.COORDINATES, OutputKind.REGRESSION):
        wanted.append(("relative_mae", pick(spec.max_relative_mae, config.max_relative_mae), "max"))
    else:
        wanted.append(("iou", pick(spec.min_iou, config.min_iou), "min"))
    wanted.append(("mean_abs_error", pick(spec.max_mean_abs_error, config.max_mean_abs_error), "max"))
    checks = []
    for measure, threshold, bound in wanted:
        if threshold is None:
            continue
        value = acc.drop_points if measure == "accuracy_drop_points" and acc else measures[measure]
        passed = value >= threshold - 1e-12 if bound == "min" else value <= threshold + 1e-9
        checks.append(GateCheck(output=plan.name, kind=kind, measure=measure, value=value,
                                threshold=threshold, bound=bound, passed=passed))
    return checks


def gate(config: GateConfig, plans: list[OutputPlan], fid: FidelityReport,
         acc: AccuracyReport | None) -> GateResult:
    """Judge every output; the gate passes when every check passes."""
    checks = [c for plan, out in zip(plans, fid.outputs, strict=True)
              for c in _checks_for(plan, out.measures, config, acc)]
    failed = [c for c in checks if not c.passed]
    lead = failed[0] if failed else checks[0]
    detail = "; ".join(c.text() for c in failed + [c for c in checks if c.passed])
    passed = not failed
    if not config.enabled:
        return GateResult(enabled=False, passed=True, criterion=lead.measure, value=lead.value,
                          threshold=lead.threshold, detail=f"disabled; {detail}", checks=checks)
    return GateResult(enabled=True, passed=passed, criterion=lead.measure, value=lead.value,
                      threshold=lead.threshold, detail=detail, checks=checks)


def harm(fid: FidelityReport) -> float:
    """How far a model is from the original, normalised per output so outputs of any scale
    weigh alike: the sum over outputs of the mean |error| relative to the original's range."""
    return sum(o.measures["relative_mae"] for o in fid.outputs)


@dataclass(frozen=True)
class Measurement:
    accuracy: AccuracyReport | None
    fidelity: FidelityReport
    gate: GateResult

    @property
    def harm(self) -> float:
        return harm(self.fidelity)


def measure(ref: Reference, model: bytes, runtime: Runtime, eval_x: Inputs,
            eval_y: np.ndarray | None, config: GateConfig, batch_size: int) -> Measurement:
    plans = plan_outputs(ref.outputs, config, labelled=eval_y is not None)
    outputs = align(list(ref.outputs), predict(Session(runtime, model), eval_x, batch_size),
                    where="model")
    _check_shapes(ref, outputs)
    fid = fidelity(ref, outputs, plans, config.top_k)
    owner = next((p.name for p in plans if p.labelled), None)
    acc = (accuracy(ref.outputs[owner], outputs[owner], eval_y)
           if eval_y is not None and owner is not None else None)
    return Measurement(acc, fid, gate(config, plans, fid, acc))


def latency(ref: Reference, model: bytes, runtime: Runtime, sample: Inputs,
            runs: int) -> LatencyReport:
    """Interleave the two models' timing runs in rounds so machine noise hits both alike."""
    original, compressed = Session(ref.runtime, ref.model), Session(runtime, model)
    rounds = 5
    per_round = max(runs // rounds, 1)
    o50: list[float] = []
    o95: list[float] = []
    c50: list[float] = []
    c95: list[float] = []
    for _ in range(rounds):
        p50, p95 = latency_ms(original, sample, per_round)
        o50.append(p50)
        o95.append(p95)
        p50, p95 = latency_ms(compressed, sample, per_round)
        c50.append(p50)
        c95.append(p95)
    return LatencyReport(runs=per_round * rounds,
                         original_p50_ms=float(np.median(o50)), original_p95_ms=float(np.median(o95)),
                         compressed_p50_ms=float(np.median(c50)), compressed_p95_ms=float(np.median(c95)))
