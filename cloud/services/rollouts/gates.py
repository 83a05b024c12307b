"""The gates a stage must pass, as pure, typed functions over stored aggregates (no string
expressions). Each returns pass, fail or inconclusive with its evidence; Argo Rollouts semantics:
a fail acts (pause or abort), an inconclusive verdict at the end of the soak pauses for a person.

The runtime and drift gates compare the canary (devices of the stage, on the new bundle) with the
control (devices of the rollout still on their old bundle) over the same time, one observation per
device and telemetry window, with the mixture sequential test of :mod:`sequential`: its verdict may
be read after every window without inflating false alarms. A limit enters as a transformed control
(``ratio x control + margin``): the gate fails when the canary is worse than the limit with
confidence 1 - alpha, passes when it is better than the limit with that confidence.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from edgefleet.cloud.services.rollouts.policy import (
    Baseline,
    BehaviourGate,
    Gates,
    InstallGate,
    RecoveryGate,
    RuntimeGate,
    Statistics,
)
from edgefleet.cloud.services.rollouts.sequential import Observation, msprt
from edgefleet.cloud.services.rollouts.states import EXECUTED_STATES
from edgefleet.cloud.vocabulary import DeviceState
from edgefleet.protocol.drift import js
from edgefleet.protocol.vocabulary import JUDGED_DRIFT_LEVELS, DriftLevel


class Verdict(StrEnum):
    PASS = "pass"
    FAIL = "fail"
    INCONCLUSIVE = "inconclusive"


@dataclass(frozen=True)
class WindowSample:
    """One telemetry window of one device (what the gates read)."""

    device_id: str
    canary: bool
    window_end: float
    requests: int
    errors: int
    p95_ms: float | None
    psi: float | None
    predictions: dict[str, int] = field(default_factory=dict)
    drift_level: str | None = None
    """The device's own drift verdict for the window (ok, warn, alarm or insufficient)."""
    labelled: int = 0
    """Labels the application gave back in the window, ``correct`` of them."""
    correct: int = 0


@dataclass(frozen=True)
class GateResult:
    gate: str
    verdict: Verdict
    summary: str
    evidence: dict[str, Any] = field(default_factory=dict)


def judge(results: Sequence[GateResult]) -> Verdict:
    """The stage's verdict: any fail fails it; it passes only when every gate passes."""
    if any(r.verdict == Verdict.FAIL for r in results):
        return Verdict.FAIL
    if all(r.verdict == Verdict.PASS for r in results):
        return Verdict.PASS
    return Verdict.INCONCLUSIVE


def evaluate(gates: Gates, *, devices: Sequence[DeviceState], samples: Sequence[WindowSample]) -> list[GateResult]:
    """Every enabled gate of a stage: ``devices`` are the states of its devices, ``samples`` the
    telemetry windows of canary and control since the stage started."""
    results = []
    if gates.install.enabled:
        results.append(install_gate(devices, gates.install))
    if gates.runtime.enabled:
        results += runtime_gates(samples, gates.runtime, gates.statistics, gates.baseline)
    if gates.behaviour.enabled:
        results += behaviour_gates(samples, gates.behaviour, gates.statistics, gates.baseline)
    if gates.accuracy.enabled:
        results.append(accuracy_gate(samples, gates))
    if gates.recovery.enabled:
        results.append(recovery_gate(samples, gates.recovery))
    return results


def install_gate(devices: Sequence[DeviceState], spec: InstallGate) -> GateResult:
    executed = [d for d in devices if d in EXECUTED_STATES]
    failed = [d for d in executed if d != DeviceState.SUCCEEDED]
    evidence = {"executed": len(executed), "failed": len(failed), "limit_percent": spec.max_failure_percent,
                "min_executed": spec.min_executed}
    if len(executed) < spec.min_executed:
        return GateResult("install", Verdict.INCONCLUSIVE,
                          f"{len(executed)} of {spec.min_executed} devices needed have finished", evidence)
    share = 100.0 * len(failed) / len(executed)
    evidence["failed_percent"] = round(share, 2)
    if share > spec.max_failure_percent:
        return GateResult("install", Verdict.FAIL, f"{len(failed)} of {len(executed)} devices failed to install "
                                                   f"({share:.0f}% > {spec.max_failure_percent:g}%)", evidence)
    return GateResult("install", Verdict.PASS, f"{len(executed) - len(failed)} of {len(executed)} devices installed",
                      evidence)


@dataclass(frozen=True)
class Compared:
    """A metric the gates compare, per telemetry window: the canary against ``ratio`` x control +
    ``margin``, both as the policy's gates set them."""

    label: str
    unit: str
    value: Callable[[WindowSample], float | None]
    limit: Callable[[Gates], tuple[float, float]]
    """``(ratio, margin)`` from the policy's gates."""


COMPARED: dict[str, Compared] = {
    "error_rate": Compared("error rate", "", lambda s: s.errors / s.requests if s.requests else None,
                           lambda g: (g.runtime.error_rate_ratio, g.runtime.error_rate_margin)),
    "latency_p95": Compared("p95 latency", " ms", lambda s: s.p95_ms,
                            lambda g: (g.runtime.latency_ratio, g.runtime.latency_margin_ms)),
    "drift_psi": Compared("input drift (PSI)", "", lambda s: s.psi, lambda g: (1.0, g.behaviour.drift_psi_margin)),
    "accuracy": Compared("misclassification (1 - accuracy)", "",
                         lambda s: 1.0 - s.correct / s.labelled if s.labelled else None,
                         lambda g: (g.accuracy.error_ratio, g.accuracy.margin)),
}
"""The runtime gates (error rate, p95 latency), the drift gate and the accuracy gate, by name (the UI
charts them the same way)."""


def runtime_gates(samples: Sequence[WindowSample], spec: RuntimeGate, stats: Statistics,
                  baseline: Baseline = Baseline.CONTROL) -> list[GateResult]:
    gates = Gates(runtime=spec, statistics=stats, baseline=baseline)
    return [compare(name, samples, COMPARED[name], gates) for name in ("error_rate", "latency_p95")]


def behaviour_gates(samples: Sequence[WindowSample], spec: BehaviourGate, stats: Statistics,
                    baseline: Baseline = Baseline.CONTROL) -> list[GateResult]:
    return [compare("drift_psi", samples, COMPARED["drift_psi"], Gates(behaviour=spec, statistics=stats,
                                                                       baseline=baseline)),
            prediction_gate(samples, spec)]


def compare(gate: str, samples: Sequence[WindowSample], compared: Compared, gates: Gates) -> GateResult:
    """Canary against ``ratio`` x control + ``margin``, sequentially over the windows in arrival order."""
    ratio, margin = compared.limit(gates)
    metric, unit, stats = compared.value, compared.unit, gates.statistics
    observations = []
    canary_values: list[float] = []
    control_values: list[float] = []
    for s in sorted(samples, key=lambda s: s.window_end):
        value = metric(s)
        if value is None or not math.isfinite(value):
            continue
        (canary_values if s.canary else control_values).append(value)
        observations.append(Observation(treatment=s.canary, value=value if s.canary else ratio * value + margin))
    evidence: dict[str, Any] = {"canary_windows": len(canary_values), "control_windows": len(control_values),
                                "ratio": ratio, "margin": margin, "alpha": stats.alpha}
    if not control_values:
        return GateResult(gate, Verdict.PASS, "not judged: no control cohort is left to compare with", evidence)
    evidence |= {"canary_mean": _mean(canary_values), "control_mean": _mean(control_values)}
    result = msprt(observations, alpha=stats.alpha, min_samples=stats.min_windows)
    evidence |= {"difference": _finite(result.difference), "lower": _finite(result.lower),
                 "upper": _finite(result.upper), "p_value": result.p_value}
    before = gates.baseline == Baseline.BEFORE   # the same devices before the update: say what that was
    base = "before" if before else "control"
    limit = f"{ratio:g} x {base}{f' ({_mean(control_values):.4g}{unit})' if before else ''} + {margin:g}{unit}"
    if result.looks == 0:
        return GateResult(gate, Verdict.INCONCLUSIVE, f"too few windows yet ({len(canary_values)} canary, "
                                                      f"{len(control_values)} {base}; {stats.min_windows} each "
                                                      "needed)", evidence)
    if result.lower > 0:
        return GateResult(gate, Verdict.FAIL, f"canary {evidence['canary_mean']:.4g}{unit} is above the limit "
                                              f"{limit} (p = {result.p_value:.3g})", evidence)
    if result.upper < 0:
        return GateResult(gate, Verdict.PASS, f"canary {evidence['canary_mean']:.4g}{unit} is within {limit}",
                          evidence)
    return GateResult(gate, Verdict.INCONCLUSIVE, f"canary {evidence['canary_mean']:.4g}{unit} is not yet "
                                                  f"distinguishable from the limit {limit}", evidence)


def accuracy_gate(samples: Sequence[WindowSample], gates: Gates) -> GateResult:
    """Misclassification of the canary against the baseline's, over the windows that carry at least
    ``min_labelled_per_window`` labels; not judged (a pass that says so) where no labels come back at
    all — labels from one side only wait (too few windows) or say there is nothing to compare with."""
    enough = [s for s in samples if s.labelled >= gates.accuracy.min_labelled_per_window]
    if not enough:
        return GateResult("accuracy", Verdict.PASS, "not judged: no labels come back (POST /v1/feedback)",
                          {"min_labelled_per_window": gates.accuracy.min_labelled_per_window})
    return compare("accuracy", enough, COMPARED["accuracy"], gates)


def prediction_gate(samples: Sequence[WindowSample], spec: BehaviourGate) -> GateResult:
    canary = _summed(s.predictions for s in samples if s.canary)
    control = _summed(s.predictions for s in samples if not s.canary)
    n_canary, n_control = sum(canary.values()), sum(control.values())
    evidence: dict[str, Any] = {"canary_predictions": n_canary, "control_predictions": n_control,
                                "limit": spec.prediction_js_max, "min_samples": spec.min_samples}
    if not control:
        return GateResult("predictions", Verdict.PASS, "not judged: no control cohort is left to compare with",
                          evidence)
    if min(n_canary, n_control) < spec.min_samples:
        return GateResult("predictions", Verdict.INCONCLUSIVE, f"too few predictions yet ({n_canary} canary, "
                                                               f"{n_control} control)", evidence)
    labels = sorted(set(canary) | set(control))
    total = float(n_control)
    divergence = js([control.get(k, 0) / total for k in labels], [canary.get(k, 0) for k in labels])
    evidence["js"] = round(divergence, 6)
    if divergence > spec.prediction_js_max:
        return GateResult("predictions", Verdict.FAIL, f"the canary predicts differently: Jensen-Shannon "
                                                       f"{divergence:.3f} > {spec.prediction_js_max:g}", evidence)
    return GateResult("predictions", Verdict.PASS, f"prediction distributions agree (Jensen-Shannon "
                                                   f"{divergence:.3f} <= {spec.prediction_js_max:g})", evidence)


def recovery_gate(samples: Sequence[WindowSample], spec: RecoveryGate) -> GateResult:
    """The canary is a cohort whose inputs drifted, and there is no control to compare it with, so
    this is a rule over each canary device's *judged* windows on the new bundle: recovered when,
    since its latest ``alarm`` verdict, it had ``windows`` ``ok`` verdicts in a row (a ``warn`` after
    them -- a moderate difference, which same-distribution windows give now and then -- does not undo
    it; an ``alarm`` does); failed when its last ``windows`` verdicts are all ``alarm``. Windows too
    small to judge are skipped: a quiet device keeps the stage waiting, never passes it."""
    levels: dict[str, list[str]] = {}
    for s in sorted(samples, key=lambda s: s.window_end):
        if s.canary:
            judged = levels.setdefault(s.device_id, [])
            if s.drift_level in JUDGED_DRIFT_LEVELS:
                judged.append(str(s.drift_level))
    recovered = sorted(d for d, judged in levels.items() if _ok_run_since_alarm(judged, spec.windows))
    stuck = sorted(d for d, judged in levels.items()
                   if len(judged) >= spec.windows and set(judged[-spec.windows:]) == {DriftLevel.ALARM})
    evidence: dict[str, Any] = {"windows": spec.windows, "recovered": recovered, "still_alarm": stuck,
                                "latest": {d: judged[-1] for d, judged in sorted(levels.items()) if judged}}
    if not levels:
        return GateResult("recovery", Verdict.INCONCLUSIVE, "no window from the canary on the new bundle yet", evidence)
    if stuck:
        return GateResult("recovery", Verdict.FAIL, f"{', '.join(stuck)} still at alarm in each of the last "
                                                    f"{spec.windows} judged windows", evidence)
    if len(recovered) == len(levels):
        return GateResult("recovery", Verdict.PASS, f"drift below warn on every canary device ({len(recovered)}) "
                                                    f"for {spec.windows} judged windows in a row", evidence)
    return GateResult("recovery", Verdict.INCONCLUSIVE, f"{len(levels) - len(recovered)} of {len(levels)} canary "
                                                        f"devices not yet below warn for {spec.windows} judged "
                                                        "windows in a row since their latest alarm", evidence)


def _ok_run_since_alarm(judged: list[str], windows: int) -> bool:
    since = judged[len(judged) - judged[::-1].index(DriftLevel.ALARM):] if DriftLevel.ALARM in judged else judged
    run = 0
    for level in since:
        run = run + 1 if level == DriftLevel.OK else 0
        if run >= windows:
            return True
    return False


def _summed(counts: Any) -> dict[str, int]:
    total: dict[str, int] = {}
    for c in counts:
        for k, v in c.items():
            total[k] = total.get(k, 0) + int(v)
    return total


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values) if values else math.nan


def _finite(value: float) -> float | None:
    return value if math.isfinite(value) else None
