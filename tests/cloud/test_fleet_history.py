"""The fleet history (services/fleet_history.py) and the downsampling behind the UI's ranges and trends
(services/downsample.py): pure cores without a database, then the history on a real SQLite database through
the services that flip ``devices.online`` (heartbeat timeout, last will, heard again, the ingest's bulk update)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from sqlmodel import SQLModel, select

from edgefleet.cloud.services import devices, fleet_history, live_marks
from edgefleet.cloud.services.downsample import Buckets, Step, newest_per_bucket, step_buckets, window_points
from edgefleet.cloud.store.engine import make_engine, session_scope
from edgefleet.cloud.store.tables import Device, DeviceTransition, FleetSnapshot
from edgefleet.cloud.ui import feed
from edgefleet.cloud.vocabulary import SnapshotMetric, TransitionCause
from edgefleet.protocol.messages import State

BOUNDS = [1.0, 2.0, 4.0]


def window(end: float, *, fast: int = 0, slow: int = 0, psi: float | None = None) -> SimpleNamespace:
    return SimpleNamespace(window_end=end, latency_bounds=BOUNDS, latency_counts=[fast, 0, slow, 0], drift_psi=psi,
                           drift_js=None if psi is None else psi / 2, requests=fast + slow, errors=0)


# --------------------------------------------------------------------------- pure: downsampling

def test_few_windows_keep_their_own_points_and_a_gap_breaks_the_line():
    rows = [window(1000.0 + 60 * i, fast=5) for i in range(5)] + [window(2000.0, fast=5)]
    points = window_points(rows, since=0.0, until=3000.0, max_points=10)
    assert [p["at"] for p in points] == [1000.0, 1060.0, 1120.0, 1180.0, 1240.0, 2000.0]
    assert [p["after_gap"] for p in points] == [False] * 5 + [True]
    assert all(p["windows"] == 1 for p in points)


def test_many_windows_merge_per_bucket_without_hiding_slow_requests_or_alarms():
    rows = [window(float(t), fast=99) for t in range(0, 1000, 10)]           # 100 windows, all fast
    rows[42] = window(420.0, fast=0, slow=99, psi=0.9)                          # one slow, drifting window
    points = window_points(rows, since=0.0, until=1000.0, max_points=10)
    assert len(points) == 10 and sum(p["windows"] for p in points) == 100
    worst = max(points, key=lambda p: p["p95_ms"])
    assert worst["at"] == 450.0                                                # the middle of bucket 400..500
    assert worst["p95_ms"] > 2.0 >= max(p["p95_ms"] for p in points if p is not worst)
    assert worst["psi"] == 0.9 and worst["requests"] == 99 * 10
    assert window_points(rows, since=2000.0, until=3000.0) == []


def test_buckets_refuse_an_empty_span():
    with pytest.raises(ValueError, match="since < until"):
        Buckets(10.0, 10.0, 5)
    assert Buckets(0.0, 100.0, 4).index(100.0) == 3 and Buckets(0.0, 100.0, 4).index(101.0) is None


def test_a_step_function_keeps_a_short_dip_and_its_value_at_each_end():
    """Three online now; one went offline at 25 and came back at 27, another came online at 75."""
    steps = [Step(25.0, -1), Step(27.0, +1), Step(75.0, +1)]
    out = step_buckets(now_value=3, steps=steps, buckets=Buckets(0.0, 100.0, 4))
    assert out == [(25.0, 2, 2), (50.0, 1, 2), (75.0, 2, 2), (100.0, 2, 3)]
    later = step_buckets(now_value=3, steps=[*steps, Step(150.0, +1)], buckets=Buckets(0.0, 100.0, 4))
    assert later == [(25.0, 1, 1), (50.0, 0, 1), (75.0, 1, 1), (100.0, 1, 2)]  # a change after the end is undone
    known = step_buckets(now_value=3, steps=steps, buckets=Buckets(0.0, 100.0, 4), known_since=60.0)
    assert [end for end, _, _ in known] == [75.0, 100.0]                     # nothing before the history began


def test_newest_sample_per_bucket():
    assert newest_per_bucket([(1.0, 5.0), (3.0, 6.0), (12.0, 7.0)], Buckets(0.0, 20.0, 2)) == [(3.0, 6.0), (12.0, 7.0)]


# --------------------------------------------------------------------------- pure: the feed's transitions

def test_the_feed_says_who_went_offline_why_and_who_came_back_after_how_long():
    t = [SimpleNamespace(device_id="cam-01", at=1600.0, online=True, cause=TransitionCause.HEARD),
         SimpleNamespace(device_id="cam-01", at=1000.0, online=False, cause=TransitionCause.HEARTBEAT_TIMEOUT),
         SimpleNamespace(device_id="new-01", at=1500.0, online=True, cause=TransitionCause.HEARD),
         SimpleNamespace(device_id="gate-01", at=1200.0, online=False, cause=TransitionCause.LAST_WILL),
         SimpleNamespace(device_id="old-01", at=10.0, online=False, cause=TransitionCause.LAST_WILL)]
    fleet = [SimpleNamespace(id="gate-01", online=False, last_seen=1190.0),
             SimpleNamespace(id="lost-01", online=False, last_seen=900.0)]
    items = feed.build_feed(events=[], episodes=[], devices=fleet, since=100.0, limit=10, transitions=t,
                            offline_since={("cam-01", 1600.0): 1000.0})
    assert [(i.device_id, i.kind, i.title, i.text) for i in items] == [
        ("cam-01", "online", "came back", "after 10 min offline"),
        ("gate-01", "offline", "went offline", "its connection dropped (last will)"),
        ("cam-01", "offline", "went offline", "no heartbeat within the timeout"),
        ("lost-01", "offline", "went offline", "last heard from then")]        # offline before the history


# --------------------------------------------------------------------------- the history on a database

@pytest.fixture
def engine(tmp_path):
    engine = make_engine(f"sqlite:///{tmp_path / 'history.db'}")
    SQLModel.metadata.create_all(engine)
    with session_scope(engine) as session:
        for i, tags in enumerate((["site-a"], ["site-a", "cam"], ["site-b"])):
            session.add(Device(id=f"d{i}", tags=tags, enrolled_at=0.0, mqtt_password_hash="$7$x", online=True,
                               last_seen=1000.0, installed={"name": "m", "version": f"1.{i % 2}"}))
    return engine


def changes(engine) -> list[tuple[str, float, bool, str]]:
    with session_scope(engine) as session:
        rows = session.exec(select(DeviceTransition).order_by(DeviceTransition.id)).all()
        return [(r.device_id, r.at, r.online, r.cause) for r in rows]


def test_every_way_a_device_goes_offline_or_comes_back_is_recorded_once(engine):
    with session_scope(engine) as session:
        assert devices.expire_heartbeats(session, now=1200.0, timeout_s=90.0) == ["d0", "d1", "d2"]
        assert devices.expire_heartbeats(session, now=1300.0, timeout_s=90.0) == []     # already offline
    with session_scope(engine) as session:
        d0 = devices.get_device(session, device_id="d0")
        devices.mark_seen(d0, now=1400.0)
        devices.mark_seen(d0, now=1410.0)                                                 # online already
        devices.apply_state(d0, State(device_id="d0", status="offline", sent_at=1500.0), now=1500.0)
        fleet_history.record_heard(session, seen={"d1": 1600.0})        # the ingest's bulk update comes next
    with session_scope(engine) as session:
        devices.decommission(session, device_id="d0", actor="test", now=1700.0)           # offline already
    assert changes(engine) == [
        ("d0", 1200.0, False, "heartbeat_timeout"), ("d1", 1200.0, False, "heartbeat_timeout"),
        ("d2", 1200.0, False, "heartbeat_timeout"), ("d0", 1400.0, True, "heard"), ("d0", 1500.0, False, "last_will"),
        ("d1", 1600.0, True, "heard")]


def test_online_over_time_is_rebuilt_from_the_transitions(engine):
    with session_scope(engine) as session:
        fleet_history.reconcile_pass(session, now=900.0, policy=fleet_history.HistoryPolicy())   # history begins
        devices.expire_heartbeats(session, now=1200.0, timeout_s=90.0)                # all three offline at 1200
        devices.mark_seen(devices.get_device(session, device_id="d2"), now=1250.0)    # one back at 1250
    with session_scope(engine) as session:
        out = fleet_history.online_buckets(session, buckets=Buckets(800.0, 1300.0, 5))
    assert out == [(1000.0, 3, 3), (1100.0, 3, 3), (1200.0, 3, 3), (1300.0, 0, 1)]      # 800..900: before history


def test_snapshots_count_versions_and_drift_per_tag_every_interval_and_are_pruned(engine):
    policy = fleet_history.HistoryPolicy(snapshot_interval_s=300.0, retention_s=3600.0)
    with session_scope(engine) as session:
        assert fleet_history.reconcile_pass(session, now=1000.0, policy=policy).snapshot_at == 1000.0
        assert fleet_history.reconcile_pass(session, now=1100.0, policy=policy).snapshot_at is None   # not due
        session.get(Device, "d0").installed = {"name": "m", "version": "1.1"}
    with session_scope(engine) as session:
        fleet_history.reconcile_pass(session, now=1300.0, policy=policy)
        versions = fleet_history.snapshot_series(session, metric=SnapshotMetric.VERSION,
                                                 buckets=Buckets(0.0, 2000.0, 20))
        drift = fleet_history.snapshot_series(session, metric=SnapshotMetric.DRIFT, buckets=Buckets(0.0, 2000.0, 20))
    assert versions == {"m 1.0": [(1000.0, 2.0), (1300.0, 1.0)], "m 1.1": [(1000.0, 1.0), (1300.0, 2.0)]}
    assert drift["site-a\tdevices"] == [(1000.0, 2.0), (1300.0, 2.0)]
    with session_scope(engine) as session:
        report = fleet_history.reconcile_pass(session, now=1000.0 + 3600.0 + 1.0, policy=policy)
        assert report.pruned > 0 and report.snapshot_at is not None
        assert {r.at for r in session.exec(select(FleetSnapshot)).all()} == {1300.0, 4601.0}


def test_the_live_marks_move_with_what_the_pages_show_and_not_with_heartbeats(engine):
    with session_scope(engine) as session:
        fleet, d0, d1 = (live_marks.fleet_mark(session), live_marks.device_mark(session, device_id="d0"),
                         live_marks.device_mark(session, device_id="d1"))
        devices.mark_seen(devices.get_device(session, device_id="d0"), now=1100.0)    # a heartbeat: no change
    with session_scope(engine) as session:
        assert (live_marks.fleet_mark(session), live_marks.device_mark(session, device_id="d0")) == (fleet, d0)
        devices.expire_heartbeats(session, now=1100.0 + 100.0, timeout_s=90.0)
    with session_scope(engine) as session:
        assert live_marks.fleet_mark(session) != fleet
        assert live_marks.device_mark(session, device_id="d0") != d0
        assert live_marks.device_mark(session, device_id="d1") != d1                  # it went offline too
