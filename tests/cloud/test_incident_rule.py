"""The drift-incident rule as a pure function (no database): the K-window rule, the minimum sample,
the cooldown, reopening, duplicate and out-of-order windows, tag cohorts, a person's close, and an
A/A run with the real drift scoring (protocol/drift.py) on noise-only windows."""

from __future__ import annotations

import numpy as np
import pytest

from edgefleet.cloud.services.incidents.rule import (
    Closed,
    CohortState,
    IncidentRule,
    Opened,
    Window,
    close,
    observe,
    tick,
)
from edgefleet.cloud.vocabulary import CohortKind
from edgefleet.protocol import drift
from edgefleet.protocol.vocabulary import DriftLevel

RULE = IncidentRule(windows=3, min_samples=100, cooldown_s=600, min_devices=1)
STEP = 60.0
T0 = 1_800_000_000.0
ALARM, OK, WARN, FEW = DriftLevel.ALARM, DriftLevel.OK, DriftLevel.WARN, DriftLevel.INSUFFICIENT


def device_cohort(device: str = "d1") -> CohortState:
    return CohortState(kind=CohortKind.DEVICE, key=device, bundle_digest="ab" * 32)


def w(i: int, level: str, *, samples: int = 200, device: str = "d1", psi: float | None = None) -> Window:
    """Window ``i`` of a device (ends at T0 + i minutes)."""
    return Window(device_id=device, end=T0 + i * STEP, level=level, samples=samples,
                  psi=psi if psi is not None else 0.4 if level == ALARM else 0.02)


def feed(state: CohortState, windows, rule: IncidentRule = RULE):
    events = []
    for window in windows:
        state, new = observe(state, window, rule)
        events += new
    return state, events


def test_k_consecutive_alarm_windows_open_one_incident_at_the_kth():
    state, events = feed(device_cohort(), [w(0, OK), w(1, ALARM), w(2, ALARM)])
    assert events == [] and state.incident is None
    state, events = feed(state, [w(3, ALARM)])
    [opened] = events
    assert isinstance(opened, Opened)
    incident = opened.incident
    assert (incident.first_alarm_at, incident.opened_at, incident.windows) == (T0 + STEP, T0 + 3 * STEP, 3)
    assert incident.devices == ["d1"] and incident.id.startswith("inc-")
    state, events = feed(state, [w(4, ALARM, psi=0.9), w(5, ALARM)])
    assert events == []   # one incident, not one alert per window
    assert (state.incident.windows, state.incident.peak_psi, state.incident.last_alarm_at) == (5, 0.9, T0 + 5 * STEP)


@pytest.mark.parametrize("breaker", [OK, WARN])
def test_a_window_below_alarm_breaks_the_run(breaker):
    state, events = feed(device_cohort(), [w(0, ALARM), w(1, ALARM), w(2, breaker), w(3, ALARM), w(4, ALARM)])
    assert events == [] and state.runs["d1"].length == 2
    state, [opened] = feed(state, [w(5, ALARM)])
    assert opened.incident.first_alarm_at == T0 + 3 * STEP


@pytest.mark.parametrize("skipped", [w(2, ALARM, samples=99), w(2, OK, samples=10), w(2, FEW), w(2, None)])
def test_an_under_sampled_or_unjudged_window_is_skipped_neither_counting_nor_breaking(skipped):
    state, events = feed(device_cohort(), [w(0, ALARM), w(1, ALARM), skipped])
    assert events == [] and state.runs["d1"].length == 2
    state, [opened] = feed(state, [w(3, ALARM)])
    assert (opened.incident.first_alarm_at, opened.incident.windows) == (T0, 3)


def test_the_minimum_sample_is_the_rules():
    few = [w(i, ALARM, samples=50) for i in range(5)]
    assert feed(device_cohort(), few)[1] == []
    _, [opened] = feed(device_cohort(), few, RULE.model_copy(update={"min_samples": 50}))
    assert opened.incident.windows == 3


def test_it_closes_a_cooldown_after_its_last_alarm_window_seen_by_a_window_or_the_clock():
    state, _ = feed(device_cohort(), [w(i, ALARM) for i in range(4)])
    last_alarm = T0 + 3 * STEP
    state, events = feed(state, [w(i, OK) for i in range(4, 13)])   # 9 quiet minutes: still open
    assert events == [] and state.incident is not None
    assert state.incident.last_window_end == T0 + 12 * STEP
    by_window, [closed] = feed(state, [w(13, OK)])                  # 10 minutes after the last alarm
    assert isinstance(closed, Closed) and by_window.incident is None
    assert (closed.closed_at, closed.reason) == (last_alarm + 600, "no alarm window for 600 s")
    assert tick(state, last_alarm + 599, RULE) == (state, [])
    by_clock, [closed_by_clock] = tick(state, last_alarm + 900, RULE)
    assert closed_by_clock.closed_at == last_alarm + 600 and by_clock.empty


def test_an_alarm_window_during_the_cooldown_keeps_it_open():
    state, _ = feed(device_cohort(), [w(i, ALARM) for i in range(3)] + [w(i, OK) for i in range(3, 10)])
    state, events = feed(state, [w(10, ALARM)] + [w(i, OK) for i in range(11, 20)])
    assert events == [] and state.incident.last_alarm_at == T0 + 10 * STEP and state.incident.windows == 4
    _, [closed] = tick(state, T0 + 10 * STEP + 600, RULE)
    assert closed.incident.windows == 4


def test_after_it_closed_k_new_alarm_windows_open_a_new_incident():
    state, [first] = feed(device_cohort(), [w(i, ALARM) for i in range(3)])
    state, [closed] = tick(state, T0 + 2 * STEP + 600, RULE)
    state, events = feed(state, [w(20, ALARM), w(21, ALARM)])
    assert events == []
    state, [second] = feed(state, [w(22, ALARM)])
    assert second.incident.id != first.incident.id and second.incident.first_alarm_at == T0 + 20 * STEP


def test_an_alarm_window_after_the_cooldown_closes_the_old_incident_and_starts_a_new_run():
    state, _ = feed(device_cohort(), [w(i, ALARM) for i in range(3)])
    state, [closed] = feed(state, [w(30, ALARM)])   # the device was silent for 27 minutes
    assert isinstance(closed, Closed) and state.incident is None and state.runs["d1"].length == 1


def test_duplicate_and_out_of_order_windows_change_nothing():
    state, _ = feed(device_cohort(), [w(0, ALARM), w(1, ALARM)])
    for late in (w(1, ALARM), w(0, ALARM), w(0, OK), w(1, OK)):
        assert observe(state, late, RULE) == (state, [])
    state, _ = feed(device_cohort(), [w(i, ALARM) for i in range(4)])
    assert observe(state, w(3, ALARM), RULE) == (state, [])   # a redelivered window of an open incident


def test_observe_leaves_the_state_it_was_given_alone():
    state, _ = feed(device_cohort(), [w(0, ALARM), w(1, ALARM)])
    before = state.model_copy(deep=True)
    observe(state, w(2, ALARM), RULE)
    tick(state, T0 + 10_000, RULE)
    assert state == before


def test_a_silent_run_lapses_after_the_cooldown():
    state, _ = feed(device_cohort(), [w(0, ALARM), w(1, ALARM)])
    lapsed, events = tick(state, T0 + STEP + 600, RULE)
    assert events == [] and lapsed.empty
    _, events = feed(state, [w(15, ALARM)])          # 14 minutes later: not consecutive any more
    assert events == []


TAG_RULE = RULE.model_copy(update={"min_devices": 2})


def tag_cohort() -> CohortState:
    return CohortState(kind=CohortKind.TAG, key="site-a", bundle_digest="ab" * 32)


def test_a_tag_cohort_opens_when_enough_devices_are_each_k_windows_at_alarm():
    state, events = feed(tag_cohort(), [w(i, ALARM, device="d1") for i in range(5)], TAG_RULE)
    assert events == []                                 # one device: its own device cohort's incident
    state, events = feed(state, [w(2, ALARM, device="d2"), w(3, ALARM, device="d2")], TAG_RULE)
    assert events == []
    state, [opened] = feed(state, [w(4, ALARM, device="d2")], TAG_RULE)
    incident = opened.incident
    assert (incident.devices, incident.first_alarm_at, incident.windows) == (["d1", "d2"], T0, 8)
    state, events = feed(state, [w(5, OK, device="d1"), w(5, ALARM, device="d2", psi=0.8)], TAG_RULE)
    assert events == [] and state.incident.peak_psi == 0.4   # one device at alarm: no extension
    state, _ = feed(state, [w(6, ALARM, device="d1", psi=0.7)], TAG_RULE)
    assert (state.incident.windows, state.incident.peak_psi) == (9, 0.7)


def test_a_person_closes_it_and_the_runs_start_over():
    state, _ = feed(device_cohort(), [w(i, ALARM) for i in range(4)])
    closed_state, [closed] = close(state, at=T0 + 300, reason="closed by ops: known sensor swap")
    assert closed_state.empty and (closed.closed_at, closed.reason) == (T0 + 300, "closed by ops: known sensor swap")
    assert close(closed_state, at=T0 + 400, reason="again") == (closed_state, [])
    state, events = feed(closed_state, [w(4, ALARM), w(5, ALARM)])
    assert events == []
    _, [opened] = feed(state, [w(6, ALARM)])
    assert opened.incident.first_alarm_at == T0 + 4 * STEP


# ------------------------------------------------------------------------------------ A/A

def noise_levels(rng: np.random.Generator, *, devices: int, windows: int, context_sd: float) -> list[list[Window]]:
    """Per device, ``windows`` noise-only windows scored by protocol/drift.py against a reference profile
    built from the same process. ``context_sd`` > 0: each window's samples share a random context (as a
    window of one afternoon does), which the reference also mixes over: no drift, yet windows alarm."""
    def draw(n: int, context: np.ndarray) -> np.ndarray:
        return (context + rng.normal(size=(n, 4))).astype(np.float32)

    reference = draw(2000, rng.normal(size=(2000, 1)) * context_sd)
    profile = drift.build_profile(reference, input_name="x")
    binner = drift.FeatureBinner(profile)
    streams = []
    for d in range(devices):
        stream = []
        for i in range(windows):
            n = int(rng.integers(40, 300))
            scores = drift.score(profile, binner.trim(binner.counts(draw(n, rng.normal() * context_sd))))
            stream.append(Window(device_id=f"d{d}", end=T0 + i * STEP, level=scores.level, samples=scores.samples,
                                 psi=scores.psi))
        streams.append(stream)
    return streams


@pytest.mark.parametrize("context_sd", [0.0, 0.2], ids=["iid", "clustered"])
def test_noise_only_streams_open_at_most_one_percent_false_incidents(context_sd):
    streams = noise_levels(np.random.default_rng(2024), devices=100, windows=40, context_sd=context_sd)
    opened = [e for s in streams for e in feed(device_cohort(s[0].device_id), s)[1] if isinstance(e, Opened)]
    assert len(opened) <= 0.01 * len(streams)
    if context_sd:   # alerting per window would have alarmed about many of these cohorts
        alerted = sum(any(x.level == ALARM and x.samples >= RULE.min_samples for x in s) for s in streams)
        assert alerted > 0.1 * len(streams)


def test_devices_count_together_only_when_their_windows_are_close_in_time():
    live, _ = feed(tag_cohort(), [w(180 + i, ALARM, device="d1") for i in range(4)], TAG_RULE)
    replayed, events = feed(live, [w(i, ALARM, device="d2") for i in range(4)], TAG_RULE)   # 3 hours older
    assert events == [] and set(replayed.runs) == {"d1", "d2"}
    _, [opened] = feed(replayed, [w(183 + i, ALARM, device="d2") for i in range(3)], TAG_RULE)
    assert opened.incident.devices == ["d1", "d2"] and opened.incident.first_alarm_at == T0 + 180 * STEP
