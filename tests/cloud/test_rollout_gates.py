"""The gates, pure: verdicts and evidence from device-level windows (seeded, no clock)."""

from __future__ import annotations

import numpy as np
import pytest

from edgefleet.cloud.services.rollouts import gates
from edgefleet.cloud.services.rollouts.gates import Verdict, WindowSample
from edgefleet.cloud.services.rollouts.policy import (
    AccuracyGate,
    Baseline,
    BehaviourGate,
    Gates,
    InstallGate,
    RuntimeGate,
    Statistics,
    parse_policy,
)
from edgefleet.cloud.vocabulary import DeviceState
from edgefleet.protocol.errors import ConfigError

STATS = Statistics()


def windows(*, canary: int = 2, control: int = 8, n: int = 20, latency=(2.0, 2.0), errors=(0.0, 0.0),
            psi=(0.02, 0.02), preds=((0.5, 0.3, 0.2), (0.5, 0.3, 0.2)), seed: int = 0) -> list[WindowSample]:
    """``n`` windows from each device, canary devices first in each arm's parameters, interleaved in time."""
    rng = np.random.default_rng(seed)
    out = []
    for w in range(n):
        for d in range(canary + control):
            arm = 0 if d < canary else 1
            out.append(WindowSample(device_id=f"d{d}", canary=arm == 0, window_end=w * 10.0 + d, requests=100,
                                    errors=int(rng.binomial(100, errors[arm])),
                                    p95_ms=float(rng.lognormal(np.log(latency[arm]), 0.15)),
                                    psi=float(abs(rng.normal(psi[arm], 0.01))),
                                    predictions={str(k): int(v) for k, v in enumerate(rng.multinomial(100,
                                                                                                      preds[arm]))}))
    return out


def by_gate(results):
    return {r.gate: r for r in results}


def test_a_healthy_canary_passes_every_gate():
    results = gates.evaluate(Gates(), devices=[DeviceState.SUCCEEDED] * 2, samples=windows())
    assert {r.gate: r.verdict for r in results} == {"install": "pass", "error_rate": "pass", "latency_p95": "pass",
                                                    "drift_psi": "pass", "predictions": "pass",
                                                    "accuracy": "pass"}
    assert gates.judge(results) == Verdict.PASS


@pytest.mark.parametrize(("kwargs", "gate"), [
    ({"errors": (0.2, 0.01)}, "error_rate"),
    ({"latency": (6.0, 2.0)}, "latency_p95"),
    ({"psi": (0.5, 0.02)}, "drift_psi"),
    ({"preds": ((0.1, 0.3, 0.6), (0.5, 0.3, 0.2))}, "predictions"),
])
def test_a_canary_bad_in_one_way_fails_that_gate_with_evidence(kwargs, gate):
    results = by_gate(gates.evaluate(Gates(), devices=[DeviceState.SUCCEEDED] * 2, samples=windows(**kwargs)))
    assert results[gate].verdict == Verdict.FAIL, results[gate]
    assert gates.judge(list(results.values())) == Verdict.FAIL
    others = {g: r.verdict for g, r in results.items() if g != gate}
    assert set(others.values()) <= {Verdict.PASS, Verdict.INCONCLUSIVE}
    if gate != "predictions":
        assert results[gate].evidence["lower"] > 0 and results[gate].evidence["p_value"] <= STATS.alpha


def test_within_the_ratio_limit_is_a_pass_not_a_fail():
    # 20 % slower, under a 1.5x limit: the canary is worse, but not beyond what the policy allows
    results = by_gate(gates.runtime_gates(windows(latency=(2.4, 2.0)), RuntimeGate(), STATS))
    assert results["latency_p95"].verdict == Verdict.PASS


def test_too_few_windows_is_inconclusive_not_a_verdict():
    results = by_gate(gates.runtime_gates(windows(n=2), RuntimeGate(), STATS))
    latency = results["latency_p95"]
    assert latency.verdict == Verdict.INCONCLUSIVE and "too few windows" in latency.summary
    assert gates.judge(list(results.values())) == Verdict.INCONCLUSIVE


def test_without_a_control_cohort_the_gates_say_so():
    only_canary = [w for w in windows() if w.canary]
    results = gates.runtime_gates(only_canary, RuntimeGate(), STATS) + \
        gates.behaviour_gates(only_canary, BehaviourGate(), STATS)
    assert all(r.verdict == Verdict.PASS and r.summary.startswith("not judged: no control") for r in results)


@pytest.mark.parametrize(("states", "verdict"), [
    ([DeviceState.SUCCEEDED, DeviceState.SUCCEEDED], Verdict.PASS),
    ([DeviceState.SUCCEEDED, DeviceState.FAILED], Verdict.FAIL),
    ([DeviceState.IN_PROGRESS], Verdict.INCONCLUSIVE),
    ([DeviceState.SKIPPED, DeviceState.SUCCEEDED], Verdict.PASS),
])
def test_install_gate(states, verdict):
    assert gates.install_gate(states, InstallGate()).verdict == verdict


def test_install_gate_with_a_tolerance_and_a_minimum():
    spec = InstallGate(max_failure_percent=25, min_executed=4)
    assert gates.install_gate([DeviceState.SUCCEEDED] * 3, spec).verdict == Verdict.INCONCLUSIVE
    assert gates.install_gate([DeviceState.SUCCEEDED] * 3 + [DeviceState.ROLLED_BACK], spec).verdict == Verdict.PASS
    assert gates.install_gate([DeviceState.SUCCEEDED] * 2 + [DeviceState.TIMED_OUT] * 2, spec).verdict == \
        Verdict.FAIL


def test_disabled_gates_are_not_run():
    results = gates.evaluate(Gates(runtime=RuntimeGate(enabled=False), behaviour=BehaviourGate(enabled=False),
                                   accuracy=AccuracyGate(enabled=False)),
                             devices=[DeviceState.SUCCEEDED], samples=windows(latency=(9.0, 2.0)))
    assert [r.gate for r in results] == ["install"]


def test_aa_canaries_rarely_fail_a_gate():
    """Same distribution in both arms, 200 seeds: the runtime gates fail at most alpha of the time."""
    fails = sum(any(r.verdict == Verdict.FAIL for r in gates.runtime_gates(
        windows(latency=(2.0, 2.0), errors=(0.02, 0.02), seed=seed), RuntimeGate(error_rate_ratio=1.0,
                                                                                 error_rate_margin=0.0,
                                                                                 latency_ratio=1.0,
                                                                                 latency_margin_ms=0.0), STATS))
                for seed in range(200))
    assert fails <= 2 * STATS.alpha * 200   # two gates, each at alpha


def level_windows(levels_by_device: dict[str, list[str]], *, canary: bool = True) -> list[WindowSample]:
    return [WindowSample(device_id=d, canary=canary, window_end=float(t), requests=10, errors=0, p95_ms=1.0,
                         psi=None, drift_level=level)
            for d, levels in levels_by_device.items() for t, level in enumerate(levels)]


@pytest.mark.parametrize(("levels", "verdict"), [
    ({"a": ["alarm", "ok", "ok", "ok"], "b": ["ok", "ok", "ok"]}, Verdict.PASS),
    ({"a": ["ok", "ok", "insufficient", "ok"], "b": ["ok", "ok", "ok"]}, Verdict.PASS),   # skipped, not reset
    ({"a": ["ok", "ok", "ok"], "b": ["ok", "warn", "ok"]}, Verdict.INCONCLUSIVE),
    ({"a": ["ok", "ok", "ok"], "b": ["ok", "ok"]}, Verdict.INCONCLUSIVE),                   # b not judged enough
    ({"a": ["ok", "ok", "ok"], "b": ["insufficient"] * 9}, Verdict.INCONCLUSIVE),           # a quiet device waits
    ({"a": ["ok", "ok", "ok"], "b": ["ok", "alarm", "alarm", "alarm"]}, Verdict.FAIL),
    ({"a": ["ok", "ok", "ok", "warn"], "b": ["ok", "ok", "ok"]}, Verdict.PASS),            # a chance warn after
    ({"a": ["ok", "ok", "ok", "alarm"], "b": ["ok", "ok", "ok"]}, Verdict.INCONCLUSIVE),   # back at alarm once
    ({"a": ["ok", "ok", "ok", "alarm", "ok", "ok", "ok"], "b": ["ok", "ok", "ok"]}, Verdict.PASS),
    ({"a": ["ok", "ok", "ok", "alarm", "alarm", "alarm"], "b": ["ok", "ok", "ok"]}, Verdict.FAIL),
    ({}, Verdict.INCONCLUSIVE),
])
def test_recovery_gate_wants_each_canary_device_below_warn_for_windows_in_a_row_since_its_last_alarm(levels,
                                                                                                   verdict):
    from edgefleet.cloud.services.rollouts.policy import RecoveryGate

    result = gates.recovery_gate(level_windows(levels), RecoveryGate(enabled=True, windows=3))
    assert result.verdict == verdict, result.summary
    if verdict == Verdict.FAIL:
        stuck = result.evidence["still_alarm"]
        assert len(stuck) == 1 and f"{stuck[0]} still at alarm" in result.summary


def test_recovery_gate_reads_the_canary_only_and_runs_only_when_enabled():
    from edgefleet.cloud.services.rollouts.policy import RecoveryGate

    samples = level_windows({"a": ["ok"] * 3}) + level_windows({"c": ["alarm"] * 5}, canary=False)
    on = Gates(install=InstallGate(enabled=False), runtime=RuntimeGate(enabled=False),
               behaviour=BehaviourGate(enabled=False), accuracy=AccuracyGate(enabled=False),
               recovery=RecoveryGate(enabled=True))
    results = gates.evaluate(on, devices=[], samples=samples)
    assert [(r.gate, r.verdict) for r in results] == [("recovery", Verdict.PASS)]
    assert gates.evaluate(on.model_copy(update={"recovery": RecoveryGate()}), devices=[], samples=samples) == []


def labelled_windows(*, canary_accuracy: float, control_accuracy: float, n: int = 30, labelled: int = 50,
                     seed: int = 3) -> list[WindowSample]:
    rng = np.random.default_rng(seed)
    out = []
    for t in range(n):
        for device, canary, accuracy in (("c", True, canary_accuracy), ("k1", False, control_accuracy),
                                         ("k2", False, control_accuracy)):
            out.append(WindowSample(device_id=device, canary=canary, window_end=float(t), requests=labelled,
                                    errors=0, p95_ms=1.0, psi=0.01, labelled=labelled,
                                    correct=int(rng.binomial(labelled, accuracy))))
    return out


ACCURACY_ONLY = Gates(install=InstallGate(enabled=False), runtime=RuntimeGate(enabled=False),
                      behaviour=BehaviourGate(enabled=False), statistics=Statistics(min_windows=10))


@pytest.mark.parametrize(("canary", "control", "margin", "verdict"), [
    (0.70, 0.95, 0.02, Verdict.FAIL),     # the new bundle gets a quarter of the labels wrong
    (0.95, 0.95, 0.05, Verdict.PASS),     # as good, within the margin
    (0.95, 0.70, 0.0, Verdict.PASS),      # margin 0: must beat the baseline, and does
    (0.95, 0.95, 0.0, Verdict.INCONCLUSIVE),   # margin 0 and equal: not better, not worse
    (0.97, 0.90, -0.02, Verdict.PASS),    # a negative margin: must beat the baseline by 2 points, does by 7
    (0.91, 0.90, -0.05, Verdict.FAIL),    # ... must beat it by 5 points, does by 1
])
def test_accuracy_gate_compares_misclassification_with_the_baseline(canary, control, margin, verdict):
    spec = ACCURACY_ONLY.model_copy(update={"accuracy": AccuracyGate(margin=margin)})
    (result,) = gates.evaluate(spec, devices=[], samples=labelled_windows(canary_accuracy=canary,
                                                                           control_accuracy=control))
    assert result.gate == "accuracy" and result.verdict == verdict, result.summary
    assert result.evidence["canary_windows"] == 30 and result.evidence["control_windows"] == 60


def test_accuracy_gate_without_labels_is_not_judged_and_few_labels_do_not_count():
    (result,) = gates.evaluate(ACCURACY_ONLY, devices=[], samples=windows())
    assert result.verdict == Verdict.PASS and result.summary.startswith("not judged")
    few = labelled_windows(canary_accuracy=0.1, control_accuracy=0.99, labelled=5)   # under min_labelled_per_window
    (result,) = gates.evaluate(ACCURACY_ONLY, devices=[], samples=few)
    assert result.verdict == Verdict.PASS and result.summary.startswith("not judged")
    only_control = [s for s in labelled_windows(canary_accuracy=0.1, control_accuracy=0.99) if not s.canary]
    (result,) = gates.evaluate(ACCURACY_ONLY, devices=[], samples=only_control)
    assert result.verdict == Verdict.INCONCLUSIVE   # the canary's labels may still come


def test_the_accuracy_gate_is_configured_from_a_policy_and_bounded():
    stages = [{"name": "canary", "select": "count", "count": 1}, {"name": "rest", "select": "rest"}]
    policy = parse_policy({"stages": stages, "gates": {"accuracy": {"margin": -0.01, "min_labelled_per_window": 3}}})
    assert (policy.gates.accuracy.margin, policy.gates.accuracy.min_labelled_per_window) == (-0.01, 3)
    assert policy.gates.accuracy.enabled and policy.gates.accuracy.error_ratio == 1.0
    for bad, where in (({"error_ratio": 0.5}, "gates.accuracy.error_ratio"), ({"margin": 1.5}, "gates.accuracy.margin"),
                       ({"min_labelled_per_window": 0}, "gates.accuracy.min_labelled_per_window"),
                       ({"treshold": 1}, "gates.accuracy.treshold")):
        with pytest.raises(ConfigError, match=where.replace(".", r"\.")):
            parse_policy({"stages": stages, "gates": {"accuracy": bad}})


def test_against_the_same_devices_before_the_summary_says_before_and_what_it_was():
    samples = labelled_windows(canary_accuracy=0.95, control_accuracy=0.40)
    control = ACCURACY_ONLY.model_copy(update={"accuracy": AccuracyGate(margin=0.0)})
    before = control.model_copy(update={"baseline": Baseline.BEFORE})
    (judged_before,) = gates.evaluate(before, devices=[], samples=samples)
    (judged_control,) = gates.evaluate(control, devices=[], samples=samples)
    assert judged_before.verdict == judged_control.verdict == Verdict.PASS
    base = judged_before.evidence["control_mean"]
    assert 0.5 < base < 0.7 and f"is within 1 x before ({base:.4g}) + 0" in judged_before.summary
    assert "is within 1 x control + 0" in judged_control.summary
    runtime = gates.runtime_gates(windows(), RuntimeGate(), STATS, Baseline.BEFORE)
    passed = [r for r in runtime if r.verdict == Verdict.PASS]
    assert passed and all("x before (" in r.summary for r in passed)
