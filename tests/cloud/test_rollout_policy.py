"""The rollout policy, pacing, maintenance windows and state tables: pure, with fixed times."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from edgefleet.cloud.services.rollouts import pacing
from edgefleet.cloud.services.rollouts.policy import (
    DEFAULT_POLICY,
    TEMPLATES,
    Exponential,
    Pace,
    Retry,
    Selector,
    Stage,
    StageKind,
    Window,
    fill_devices,
    heal_policy,
    load_policy,
    parse_policy,
)
from edgefleet.cloud.services.rollouts.states import (
    DEVICE_TRANSITIONS,
    ROLLOUT_TRANSITIONS,
    STAGE_TRANSITIONS,
    RolloutEvent,
)
from edgefleet.cloud.services.transitions import advance
from edgefleet.cloud.vocabulary import DeviceState, RolloutState, StageState
from edgefleet.protocol.errors import ConfigError, ConflictError

T0 = datetime(2026, 12, 2, 1, 30, tzinfo=UTC).timestamp()   # a Wednesday, 01:30 UTC


def test_the_default_policy_is_canary_half_rest():
    assert [(s.name, s.select) for s in DEFAULT_POLICY.stages] == [("canary", "count"), ("half", "percent"),
                                                                   ("rest", "rest")]


def test_a_toml_policy_loads_with_every_table(tmp_path: Path):
    path = tmp_path / "policy.toml"
    path.write_text('''
device_timeout_s = 600
on_abort = "rollback"
[[stages]]
name = "lab"
select = "tag"
tag = "lab"
soak_s = 600
on_success = "pause"
[[stages]]
name = "rest"
select = "rest"
not_before = 2026-12-24T06:00:00Z
[pace]
exponential = { base_per_minute = 2, factor = 2, raise_after = 10 }
[abort]
failure_kinds = ["failed", "rolled_back"]
threshold_percent = 10
min_executed = 20
action = "pause"
[retries.timed_out]
attempts = 2
backoff_s = 120
[[windows]]
cron = "0 2 * * *"
duration_s = 7200
timezone = "Europe/Berlin"
[gates.runtime]
latency_ratio = 1.2
[gates.statistics]
alpha = 0.01
''')
    p = load_policy(path)
    assert p.stages[0].tag == "lab" and p.stages[1].not_before == datetime(2026, 12, 24, 6, tzinfo=UTC)
    assert p.pace.exponential == Exponential(base_per_minute=2, factor=2, raise_after=10)
    assert p.abort.failure_kinds == {"failed", "rolled_back"} and p.retries["timed_out"].attempts == 2
    assert p.gates.runtime.latency_ratio == 1.2 and p.gates.statistics.alpha == 0.01


@pytest.mark.parametrize(("data", "where", "problem"), [
    ({"stages": []}, "stages", "at least 1"),
    ({"stages": [{"name": "a", "select": "count", "count": 2}]}, "policy", "must select 'rest'"),
    ({"stages": [{"name": "a", "select": "rest"}, {"name": "b", "select": "rest"}]}, "policy", "only the last"),
    ({"stages": [{"name": "a", "select": "tag"}, {"name": "b", "select": "rest"}]}, "stages.0", "takes 'tag'"),
    ({"stages": [{"name": "a", "select": "rest", "count": 3}]}, "stages.0", "takes none of"),
    ({"stages": [{"name": "a", "select": "rest", "not_before": "2026-12-24T06:00:00"}]}, "stages.0", "time zone"),
    ({"stages": [{"name": "a", "select": "rest"}], "windows": [{"cron": "* * *", "duration_s": 60}]},
     "windows.0.cron", "at least 9"),
    ({"stages": [{"name": "a", "select": "rest"}], "windows": [{"cron": "0 2 * * *", "duration_s": 60,
                                                                 "timezone": "Mars/Olympus"}]},
     "windows.0.timezone", "unknown time zone"),
    ({"stages": [{"name": "a", "select": "rest"}], "pace": {"max_per_minute": 1,
                                                            "exponential": {"base_per_minute": 1, "factor": 2,
                                                                            "raise_after": 1}}}, "pace", "not both"),
    ({"stages": [{"name": "a", "select": "rest"}], "speed": 3}, "speed", "Extra inputs"),
])
def test_a_bad_policy_names_where_and_what(data, where, problem):
    with pytest.raises(ConfigError) as info:
        parse_policy(data, where="p.toml")
    expected = "p.toml" if where == "policy" else f"p.toml: {where}"   # model-level problems name the file
    assert info.value.where == expected
    assert problem in info.value.message


def test_selector_matching():
    s = Selector(tags=["site", "cam"], exclude_tags=["broken"], exclude_device_ids=["c3"])
    assert s.matches("c1", ["cam", "site", "x"]) and not s.matches("c2", ["site"])
    assert not s.matches("c3", ["site", "cam"]) and not s.matches("c4", ["site", "cam", "broken"])
    assert Selector(device_ids=["a"]).matches("a", []) and not Selector(device_ids=["a"]).matches("b", [])
    assert Selector().describe() == "all devices" and "tags site + cam" in s.describe()


@pytest.mark.parametrize(("cron", "zone", "at", "inside"), [
    ("0 1 * * *", "UTC", T0, True),                    # 01:00-02:00 UTC, it is 01:30
    ("0 2 * * *", "UTC", T0, False),
    ("0 2 * * *", "Europe/Berlin", T0, True),          # 02:30 in Berlin
    ("0 1 * * 1", "UTC", T0, False),                   # Mondays only
    ("30 1 * * *", "UTC", T0, True),                   # the very second it opens
    ("30 0 * * *", "UTC", T0, False),                  # closed the second it ends
])
def test_maintenance_windows(cron, zone, at, inside):
    window = Window(cron=cron, duration_s=3600, timezone=zone)
    assert pacing.in_window([window], at) is inside
    assert pacing.in_window([], at)


def test_the_next_window():
    assert pacing.next_window([Window(cron="0 2 * * *", duration_s=600)], T0) == T0 + 1800
    assert pacing.next_window([], T0) is None


@pytest.mark.parametrize(("pace", "elapsed", "ordered", "succeeded", "allowed"), [
    (Pace(), 0, 5000, 0, 1 << 30),
    (Pace(max_per_minute=10), 0, 0, 0, 1),
    (Pace(max_per_minute=10), 60, 1, 0, 10),
    (Pace(max_per_minute=10), 60, 20, 0, 0),
    (Pace(exponential=Exponential(base_per_minute=2, factor=3, raise_after=5)), 60, 0, 4, 3),
    (Pace(exponential=Exponential(base_per_minute=2, factor=3, raise_after=5)), 60, 0, 5, 7),
])
def test_pace(pace, elapsed, ordered, succeeded, allowed):
    assert pacing.allowance(pace, started_at=T0, now=T0 + elapsed, ordered=ordered, succeeded=succeeded) == allowed


def test_stage_sizes_and_a_stable_order():
    remaining = [(f"d{i}", ["lab"] if i % 4 == 0 else []) for i in range(10)]
    assert pacing.stage_size(Stage(name="c", select=StageKind.COUNT, count=3), remaining) == ["d0", "d1", "d2"]
    assert len(pacing.stage_size(Stage(name="p", select=StageKind.PERCENT, percent=25), remaining)) == 3
    assert pacing.stage_size(Stage(name="t", select=StageKind.TAG, tag="lab"), remaining) == ["d0", "d4", "d8"]
    assert pacing.stage_size(Stage(name="p", select=StageKind.PERCENT, percent=1), remaining[:1]) == ["d0"]
    order = pacing.rollout_order("ro-1", [d for d, _ in remaining])
    assert order == pacing.rollout_order("ro-1", list(reversed([d for d, _ in remaining])))
    assert order != pacing.rollout_order("ro-2", [d for d, _ in remaining])
    assert sorted(order) == sorted(d for d, _ in remaining)


def test_retry_backoff_doubles_and_ends():
    retry = Retry(attempts=2, backoff_s=60)
    assert [pacing.retry_at(retry, attempts=a, now=0) for a in (1, 2, 3)] == [60, 120, None]


def test_final_states_have_no_way_out():
    finals = {RolloutState.SUCCEEDED, RolloutState.ABORTED, RolloutState.CANCELLED}
    assert not {s for s, _ in ROLLOUT_TRANSITIONS} & finals
    assert not {s for s, _ in STAGE_TRANSITIONS} & {StageState.PASSED, StageState.FAILED}
    assert not {s for s, _ in DEVICE_TRANSITIONS} & {DeviceState.REVERTED, DeviceState.REVERT_FAILED}


def test_an_illegal_move_is_a_conflict():
    assert advance(ROLLOUT_TRANSITIONS, "paused", RolloutEvent.RESUME, what="r") == RolloutState.RUNNING
    with pytest.raises(ConflictError, match="rollout ro-1 is succeeded: cannot pause"):
        advance(ROLLOUT_TRANSITIONS, "succeeded", RolloutEvent.PAUSE, what="rollout ro-1")


def test_a_devices_stage_takes_the_named_devices_that_remain_and_may_leave_them_to_the_incidents():
    remaining = [(f"d{i}", []) for i in range(5)]
    stage = Stage(name="drifted", select=StageKind.DEVICES, devices=["d3", "d1", "gone"])
    assert pacing.stage_size(stage, remaining) == ["d1", "d3"]
    with pytest.raises(ConfigError, match="stages.0.devices.0"):
        parse_policy({"stages": [{"name": "x", "select": "devices", "devices": ["a/b"]},
                                 {"name": "rest", "select": "rest"}]})
    with pytest.raises(ConfigError, match="stages.0.devices: .*at least 1 item"):
        parse_policy({"stages": [{"name": "x", "select": "devices", "devices": []},
                                 {"name": "rest", "select": "rest"}]})
    with pytest.raises(ConfigError, match="stages.0: .*'devices' stage takes 'devices' \\(got tag\\)"):
        parse_policy({"stages": [{"name": "x", "select": "devices", "tag": "a"}, {"name": "rest", "select": "rest"}]})
    left_out = parse_policy({"stages": [{"name": "x", "select": "devices"}, {"name": "rest", "select": "rest"}]})
    assert left_out.stages[0].devices is None and left_out.unlisted_devices() == [0]
    filled = fill_devices(left_out, ["d4", "d2"])
    assert filled.stages[0].devices == ["d2", "d4"] and filled.unlisted_devices() == []
    assert filled.stages[1] == left_out.stages[1] and fill_devices(filled, ["d9"]) is filled   # a listed stage stays


def test_a_stage_may_bring_its_own_gates_and_the_heal_policy_does():
    from edgefleet.cloud.services.rollouts.policy import Baseline, heal_policy

    policy = parse_policy(heal_policy(["edge-04", "edge-03"], soak_s=10, min_windows=4).model_dump(mode="json"))
    canary, rest = policy.gates_of(0), policy.gates_of(1)
    assert policy.stages[0].devices == ["edge-03", "edge-04"] and policy.stages[0].select == StageKind.DEVICES
    assert canary.baseline == Baseline.BEFORE and canary.recovery.enabled and not canary.behaviour.enabled
    assert canary.statistics.min_windows == 4
    assert rest.install.enabled and not rest.runtime.enabled and not rest.recovery.enabled
    assert DEFAULT_POLICY.gates_of(0) is DEFAULT_POLICY.gates


def test_the_heal_template_leaves_its_canary_to_the_incidents():
    summary, policy = TEMPLATES["heal"]
    assert "drifted devices of the incidents" in summary and policy == heal_policy([])
    assert policy.unlisted_devices() == [0] and policy.gates_of(0).recovery.enabled
    assert heal_policy(["b", "a"]).stages[0].devices == ["a", "b"]
