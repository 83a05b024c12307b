from __future__ import annotations

import pytest

from edgefleet.agent.statemachine import (
    POST_ACTIVATION,
    PRE_ACTIVATION,
    TERMINAL,
    TRANSITIONS,
    E,
    IllegalTransition,
    RecordStore,
    UpdateRecord,
    next_state,
)
from edgefleet.protocol.vocabulary import UpdateState

HAPPY = [E.ACCEPT, E.DOWNLOADED, E.VERIFIED, E.INSTALLED, E.ACTIVATED, E.HEALTHY]


def test_happy_path_walks_every_state_in_order():
    state, trace = UpdateState.IDLE, []
    for event in HAPPY:
        state = next_state(state, event)
        trace.append(state.value)
    assert trace == ["downloading", "verifying", "staged", "activating", "health_check", "committed"]


@pytest.mark.parametrize("state", list(UpdateState))
def test_every_state_reaches_a_terminal_state(state):
    seen, frontier = {state}, [state]
    while frontier:
        s = frontier.pop()
        for (src, _), dst in TRANSITIONS.items():
            if src == s and dst not in seen:
                seen.add(dst)
                frontier.append(dst)
    assert seen & TERMINAL


def test_every_state_is_reachable_from_idle():
    seen, frontier = {UpdateState.IDLE}, [UpdateState.IDLE]
    while frontier:
        s = frontier.pop()
        for (src, _), dst in TRANSITIONS.items():
            if src == s and dst not in seen:
                seen.add(dst)
                frontier.append(dst)
    assert seen == set(UpdateState)


@pytest.mark.parametrize("state", sorted(TERMINAL))
def test_terminal_states_only_accept_a_new_order(state):
    assert {e for (s, e) in TRANSITIONS if s == state} == {E.ACCEPT}


@pytest.mark.parametrize("state", PRE_ACTIVATION)
def test_before_activation_failures_fail_and_restarts_resume(state):
    assert next_state(state, E.FAIL) == UpdateState.FAILED
    assert next_state(state, E.TIMEOUT) == UpdateState.FAILED
    assert next_state(state, E.CANCEL) == UpdateState.CANCELLED
    assert next_state(state, E.INTERRUPTED) == state


@pytest.mark.parametrize("state", POST_ACTIVATION)
def test_after_activation_failures_roll_back(state):
    for event in (E.UNHEALTHY, E.TIMEOUT, E.INTERRUPTED):
        assert next_state(state, event) == UpdateState.ROLLED_BACK
    with pytest.raises(IllegalTransition):
        next_state(state, E.CANCEL)  # too late to cancel: roll back or commit


def test_illegal_transition_names_state_and_event():
    with pytest.raises(IllegalTransition, match="from idle on healthy"):
        next_state(UpdateState.IDLE, E.HEALTHY)


def test_record_store_round_trip_is_atomic(tmp_path):
    store = RecordStore(tmp_path / "update.json")
    assert store.load() == UpdateRecord()
    store.save(UpdateRecord(state=UpdateState.STAGED, deployment_id="d", last_sequence=7, order={"x": 1}))
    assert store.load().state == UpdateState.STAGED and store.load().last_sequence == 7
    assert [p.name for p in tmp_path.iterdir()] == ["update.json"]  # no temp file left
