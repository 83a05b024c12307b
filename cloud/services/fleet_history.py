"""The fleet's history, for the UI's trends and its "Recent events" feed.

Two records, each the cheap one for what it answers at 10 000 devices:

* ``device_transitions``: one row each time a device goes offline or comes back, written in the same
  transaction that flips ``devices.online`` (services/devices.py, and the ingest's bulk ``last_seen`` update
  through :func:`record_heard`). Exact: the online count at any past moment is the count now with the later
  changes undone (:func:`online_buckets`), and the feed can say which device went offline when and when it
  came back. A stable fleet writes nothing.
* ``fleet_snapshots``: every ``fleet_snapshot_interval_s`` the reconciler pass counts the fleet (devices
  total and online, devices per installed bundle version, devices per tag and drift level: a device's newest
  judged window of the last ``ui_drift_span_s``). A few dozen rows per snapshot, whatever the fleet's size;
  versions and drift change slowly, so a sample every five minutes tells their trend honestly.

Both are pruned after ``fleet_history_retention_s`` by the same pass.
"""

from __future__ import annotations

import logging
from collections import Counter, defaultdict
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from sqlalchemy import bindparam, delete, func
from sqlalchemy.orm import object_session
from sqlmodel import Session, col, select

from edgefleet.cloud.services import telemetry
from edgefleet.cloud.services.downsample import Buckets, Step, newest_per_bucket, step_buckets
from edgefleet.cloud.store.tables import Device, DeviceTransition, FleetSnapshot
from edgefleet.cloud.vocabulary import SnapshotMetric, TransitionCause

log = logging.getLogger(__name__)

NO_VERSION = "none"
"""The ``version`` key of devices that have no bundle installed."""
KEY_SEPARATOR = "\t"
"""Joins a tag and a drift level in a ``drift`` key (a tab cannot be part of a tag given on the wire)."""
TAG_DEVICES = "devices"
"""The ``drift`` key's level part counting the tag's devices."""


@dataclass(frozen=True)
class HistoryPolicy:
    snapshot_interval_s: float = 300.0
    retention_s: float = 8 * 86400.0
    drift_span_s: float = 3600.0

    @classmethod
    def of(cls, settings: Any) -> HistoryPolicy:
        """From the controller's settings (``fleet_snapshot_interval_s``, ``fleet_history_retention_s``,
        ``ui_drift_span_s``)."""
        return cls(snapshot_interval_s=settings.fleet_snapshot_interval_s,
                   retention_s=settings.fleet_history_retention_s, drift_span_s=settings.ui_drift_span_s)


# --------------------------------------------------------------------------- writing transitions

def note(device: Device, *, online: bool, cause: TransitionCause, at: float) -> None:
    """Record that ``device`` goes ``online`` (call it just before flipping the flag, only when it flips),
    in the session the device was loaded in. A device in no session (built in memory) has no history."""
    session = object_session(device)
    if session is None:
        return
    session.add(DeviceTransition(device_id=device.id, at=at, online=online, cause=cause))


_OFFLINE_AMONG = select(Device.id).where(col(Device.id).in_(bindparam("ids", expanding=True)),
                                         col(Device.online) == False)  # noqa: E712
"""Built once, with an expanding IN parameter (as the ingest's own statements: building an IN of a batch's
literals on every call costs more than the query)."""


def record_heard(session: Session, *, seen: dict[str, float]) -> None:
    """Before the ingest's bulk update marks these devices online (``device id -> when heard``): a came-back
    transition for each of them that is offline now."""
    if not seen:
        return
    offline = session.exec(_OFFLINE_AMONG, params={"ids": list(seen)})
    rows = [{"device_id": d, "at": seen[d], "online": True, "cause": TransitionCause.HEARD} for d in offline]
    if rows:
        session.connection().execute(DeviceTransition.__table__.insert(), rows)  # type: ignore[attr-defined]


# --------------------------------------------------------------------------- the reconciler's pass

@dataclass
class PassReport:
    snapshot_at: float | None = None
    pruned: int = 0


def snapshot(session: Session, *, now: float, drift_span_s: float) -> int:
    """Count the fleet now into ``fleet_snapshots``; returns the rows written."""
    counts: Counter[tuple[str, str]] = Counter()
    tags_of: dict[str, list[str]] = {}
    for device_id, online, installed, tags in session.exec(select(Device.id, Device.online, Device.installed,
                                                                   Device.tags)):
        counts[(SnapshotMetric.DEVICES, "total")] += 1
        counts[(SnapshotMetric.DEVICES, "online")] += int(bool(online))
        counts[(SnapshotMetric.VERSION, version_label(installed))] += 1
        tags_of[device_id] = list(tags or [])
        for tag in tags_of[device_id]:
            counts[(SnapshotMetric.DRIFT, drift_key(tag, TAG_DEVICES))] += 1
    counts.setdefault((SnapshotMetric.DEVICES, "online"), 0)
    for device_id, window in telemetry.latest_drift_verdicts(session).items():
        if window.window_end < now - drift_span_s or not window.drift_level or device_id not in tags_of:
            continue
        for tag in tags_of[device_id]:
            counts[(SnapshotMetric.DRIFT, drift_key(tag, window.drift_level))] += 1
    session.add_all([FleetSnapshot(at=now, metric=metric, key=key[:256], value=value)
                     for (metric, key), value in counts.items()])
    return len(counts)


def reconcile_pass(session: Session, *, now: float, policy: HistoryPolicy) -> PassReport:
    """A snapshot when the newest is ``snapshot_interval_s`` old (or there is none), then the rows past
    retention pruned. Idempotent: a second pass at the same moment writes nothing."""
    report = PassReport()
    newest = session.exec(select(func.max(FleetSnapshot.at))).one()
    if newest is None or now - newest >= policy.snapshot_interval_s:
        snapshot(session, now=now, drift_span_s=policy.drift_span_s)
        report.snapshot_at = now
    cutoff = now - policy.retention_s
    for table, column in ((DeviceTransition, DeviceTransition.at), (FleetSnapshot, FleetSnapshot.at)):
        report.pruned += session.exec(delete(table).where(col(column) < cutoff)).rowcount or 0
    return report


# --------------------------------------------------------------------------- reading

def version_label(installed: Mapping[str, Any] | None) -> str:
    if not installed:
        return NO_VERSION
    return f"{installed.get('name', '?')} {installed.get('version', '')}".strip()


def drift_key(tag: str, level: str) -> str:
    return f"{tag}{KEY_SEPARATOR}{level}"


def transitions(session: Session, *, since: float, device_id: str | None = None,
                limit: int | None = None) -> list[DeviceTransition]:
    """Transitions at ``since`` or later, newest first."""
    query = select(DeviceTransition).where(DeviceTransition.at >= since)
    if device_id is not None:
        query = query.where(DeviceTransition.device_id == device_id)
    return list(session.exec(query.order_by(col(DeviceTransition.at).desc(), col(DeviceTransition.id).desc())
                             .limit(limit)))


def last_offline_before(session: Session, *, pairs: list[tuple[str, float]]) -> dict[tuple[str, float], float]:
    """For each ``(device, came back at)``: when it went offline before that, where the history knows."""
    out: dict[tuple[str, float], float] = {}
    for device_id, at in pairs:
        found = session.exec(select(func.max(DeviceTransition.at)).where(
            DeviceTransition.device_id == device_id, DeviceTransition.online == False,  # noqa: E712
            DeviceTransition.at <= at)).one()
        if found is not None:
            out[(device_id, at)] = float(found)
    return out


def history_start(session: Session) -> float | None:
    """When the history begins: the oldest snapshot or transition still kept."""
    starts = [session.exec(select(func.min(FleetSnapshot.at))).one(),
              session.exec(select(func.min(DeviceTransition.at))).one()]
    known = [float(s) for s in starts if s is not None]
    return min(known) if known else None


def online_buckets(session: Session, *, buckets: Buckets) -> list[tuple[float, int, int]]:
    """Devices online per bucket ``(bucket end, fewest online in it, online at its end)``, from the number
    online now and the transitions since the chart's start (:func:`downsample.step_buckets`)."""
    now_online = session.exec(select(func.count()).select_from(Device)
                              .where(col(Device.online) == True)).one()  # noqa: E712
    rows = session.exec(select(DeviceTransition.at, DeviceTransition.online)
                        .where(DeviceTransition.at >= buckets.since))
    steps = [Step(at, 1 if online else -1) for at, online in rows]
    return step_buckets(now_value=int(now_online), steps=steps, buckets=buckets, known_since=history_start(session))


def snapshot_series(session: Session, *, metric: SnapshotMetric, buckets: Buckets
                    ) -> dict[str, list[tuple[float, float]]]:
    """Per key of ``metric``, the newest sample of each bucket: ``key -> [(at, value)]``, oldest first. A
    key missing from a snapshot that has others counts 0 then (e.g. a version no device runs any more)."""
    moments = session.exec(select(FleetSnapshot.at).distinct().where(
        FleetSnapshot.metric == metric, FleetSnapshot.at >= buckets.since, FleetSnapshot.at <= buckets.until))
    kept = {at for at, _ in newest_per_bucket(((m, 0.0) for m in moments), buckets)}
    by_key: dict[str, dict[float, float]] = defaultdict(dict)
    if not kept:
        return {}
    for at, key, value in session.exec(select(FleetSnapshot.at, FleetSnapshot.key, FleetSnapshot.value)
                                       .where(FleetSnapshot.metric == metric, col(FleetSnapshot.at).in_(kept))):
        by_key[key][at] = float(value)
    return {key: [(at, values.get(at, 0.0)) for at in sorted(kept)] for key, values in sorted(by_key.items())}
