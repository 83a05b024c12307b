"""Telemetry windows: storage rows and aggregates (per device, bundle, model version, tag).

Latency percentiles come from merged fixed-bin histograms (windows with the same bounds are
summed bin by bin; the percentile is interpolated linearly inside its bin).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable
from typing import Any, Protocol, cast

from sqlalchemy import and_, func
from sqlalchemy.orm import QueryableAttribute, defer
from sqlmodel import Session, col, select
from sqlmodel.sql.expression import SelectOfScalar

from edgefleet.cloud.services.registry import get_model_version
from edgefleet.cloud.store.tables import Bundle, Device, Model, ModelVersion, TelemetryRecord
from edgefleet.cloud.vocabulary import TelemetryGroup
from edgefleet.protocol.errors import InvalidRequestError
from edgefleet.protocol.messages import histogram_quantile
from edgefleet.protocol.vocabulary import JUDGED_DRIFT_LEVELS


class Histogrammed(Protocol):
    @property
    def latency_bounds(self) -> list[float]: ...
    @property
    def latency_counts(self) -> list[int]: ...


def merge_histograms(rows: Iterable[Histogrammed]) -> tuple[list[float], list[int]]:
    """Sum the latency histograms of ``rows`` that share the most common bounds."""
    by_bounds: dict[tuple[float, ...], list[int]] = {}
    for r in rows:
        key = tuple(r.latency_bounds)
        if len(r.latency_counts) != len(key) + 1:
            continue
        acc = by_bounds.setdefault(key, [0] * (len(key) + 1))
        for i, c in enumerate(r.latency_counts):
            acc[i] += c
    if not by_bounds:
        return [], []
    bounds = max(by_bounds, key=lambda k: sum(by_bounds[k]))
    return list(bounds), by_bounds[bounds]


def summarize(rows: list[TelemetryRecord]) -> dict[str, Any]:
    bounds, counts = merge_histograms(rows)
    psis = [r.drift_psi for r in rows if r.drift_psi is not None]
    jss = [r.drift_js for r in rows if r.drift_js is not None]
    levels: dict[str, int] = defaultdict(int)
    for r in rows:
        if r.drift_level:
            levels[r.drift_level] += 1
    latest = max(rows, key=lambda r: r.window_end) if rows else None
    predictions: dict[str, int] = defaultdict(int)
    for r in rows:
        for k, v in r.predictions.items():
            predictions[k] += v
    labelled, correct = sum(r.labelled for r in rows), sum(r.correct for r in rows)
    return {
        "windows": len(rows), "devices": len({r.device_id for r in rows}),
        "requests": sum(r.requests for r in rows), "samples": sum(r.samples for r in rows),
        "errors": sum(r.errors for r in rows),
        "latency_ms": {"p50": histogram_quantile(bounds, counts, 0.5),
                       "p95": histogram_quantile(bounds, counts, 0.95), "bounds": bounds, "counts": counts},
        "drift": {"psi_mean": sum(psis) / len(psis) if psis else None, "psi_max": max(psis) if psis else None,
                  "js_mean": sum(jss) / len(jss) if jss else None, "levels": dict(levels),
                  "latest_level": latest.drift_level if latest else None,
                  "latest_psi": latest.drift_psi if latest else None},
        "predictions": dict(predictions),
        "feedback": {"labelled": labelled, "correct": correct,
                     "accuracy": correct / labelled if labelled else None, "confusion": merge_confusion(rows)},
        "first_window": min(r.window_start for r in rows) if rows else None,
        "last_window": latest.window_end if latest else None,
    }


def merge_confusion(rows: Iterable[TelemetryRecord]) -> dict[str, dict[str, int]]:
    """The confusion cells of ``rows`` summed (true label -> predicted label -> count)."""
    total: dict[str, dict[str, int]] = {}
    for r in rows:
        for true, row in (r.confusion or {}).items():
            acc = total.setdefault(true, {})
            for predicted, count in row.items():
                acc[predicted] = acc.get(predicted, 0) + count
    return total


_RAW = cast("QueryableAttribute[str]", TelemetryRecord.raw)
"""The verbatim-message column, as the ORM attribute it is at run time (SQLModel types it as ``str``)."""


def _query(*, device_id: str | None = None, bundle_digest: str | None = None, since: float | None = None,
           device_ids: list[str] | None = None, bundle_digests: list[str] | None = None
           ) -> SelectOfScalar[TelemetryRecord]:
    query = select(TelemetryRecord).options(defer(_RAW))   # the verbatim message stays on disk
    if device_id:
        query = query.where(TelemetryRecord.device_id == device_id)
    if device_ids is not None:
        query = query.where(col(TelemetryRecord.device_id).in_(device_ids))
    if bundle_digest:
        query = query.where(TelemetryRecord.bundle_digest == bundle_digest)
    if bundle_digests is not None:
        query = query.where(col(TelemetryRecord.bundle_digest).in_(bundle_digests))
    if since is not None:
        query = query.where(TelemetryRecord.window_end >= since)
    return query


def list_windows(session: Session, *, device_id: str | None = None, bundle_digest: str | None = None,
                 since: float | None = None, limit: int = 100) -> list[TelemetryRecord]:
    query = _query(device_id=device_id, bundle_digest=bundle_digest, since=since)
    return list(session.exec(query.order_by(col(TelemetryRecord.window_end).desc()).limit(limit)))


def series(session: Session, *, device_id: str, since: float | None = None, limit: int = 200) -> list[dict[str, Any]]:
    """Per-window points for charts, oldest first: time, p50/p95 latency, drift scores, counts."""
    rows = list_windows(session, device_id=device_id, since=since, limit=limit)
    return [{"window_end": r.window_end, "window_seq": r.window_seq, "bundle_digest": r.bundle_digest,
             "requests": r.requests, "errors": r.errors,
             "p50_ms": histogram_quantile(r.latency_bounds, r.latency_counts, 0.5),
             "p95_ms": histogram_quantile(r.latency_bounds, r.latency_counts, 0.95),
             "psi": r.drift_psi, "js": r.drift_js, "drift_level": r.drift_level, "labelled": r.labelled,
             "accuracy": r.correct / r.labelled if r.labelled else None} for r in reversed(rows)]


def aggregate(session: Session, *, group_by: TelemetryGroup | str, since: float | None = None, key: str | None = None
              ) -> dict[str, dict[str, Any]]:
    """Summaries keyed by device id, bundle digest, ``model@version`` or tag.

    With ``key`` only that group is computed (e.g. one tag, one bundle digest, ``model@version``).
    """
    if group_by not in set(TelemetryGroup):
        raise InvalidRequestError(f"group_by must be one of {', '.join(TelemetryGroup)}", where="group_by")
    if group_by == TelemetryGroup.DEVICE:
        rows = list(session.exec(_query(since=since, device_id=key)))
        return _grouped(rows, lambda r: [r.device_id])
    if group_by == TelemetryGroup.BUNDLE:
        rows = list(session.exec(_query(since=since, bundle_digest=key)))
        return _grouped(rows, lambda r: [r.bundle_digest] if r.bundle_digest else [])
    if group_by == TelemetryGroup.TAG:
        tags = {d.id: d.tags for d in session.exec(select(Device))}
        wanted = [d for d, t in tags.items() if key in t] if key else None
        rows = list(session.exec(_query(since=since, device_ids=wanted)))
        return _grouped(rows, lambda r: [t for t in tags.get(r.device_id, []) if key is None or t == key])
    return _by_model_version(session, since=since, key=key)


def _by_model_version(session: Session, *, since: float | None, key: str | None) -> dict[str, dict[str, Any]]:
    labels: dict[str, str] = {}
    query = select(Bundle, ModelVersion, Model).join(ModelVersion, col(ModelVersion.id) == Bundle.model_version_id) \
        .join(Model, col(Model.id) == ModelVersion.model_id)
    if key:
        name, _, version = key.partition("@")
        query = query.where(ModelVersion.id == get_model_version(session, model_name=name, version=version).id)
    for bundle, version_row, model in session.exec(query):
        labels[bundle.digest] = f"{model.name}@{version_row.version}"
    if not labels:
        return {}
    rows = list(session.exec(_query(since=since, bundle_digests=list(labels))))
    return _grouped(rows, lambda r: [labels[r.bundle_digest]] if r.bundle_digest in labels else [])


def _grouped(rows: list[TelemetryRecord], keys_of: Callable[[TelemetryRecord], list[str]]
             ) -> dict[str, dict[str, Any]]:
    groups: dict[str, list[TelemetryRecord]] = defaultdict(list)
    for r in rows:
        for k in keys_of(r):
            groups[k].append(r)
    return {k: summarize(v) for k, v in sorted(groups.items())}


def drift_episodes(session: Session, *, since: float, levels: tuple[str, ...]) -> list[tuple[str, str, float, float]]:
    """``(device_id, level, first window_end, peak PSI)`` of the windows since ``since`` at each of ``levels``
    (e.g. warn, alarm), per device and level: when each device first reported it, and how far it went."""
    level = col(TelemetryRecord.drift_level)
    query = select(TelemetryRecord.device_id, level, func.min(TelemetryRecord.window_end),
                   func.max(TelemetryRecord.drift_psi)) \
        .where(TelemetryRecord.window_end >= since, level.in_(levels)) \
        .group_by(col(TelemetryRecord.device_id), level)
    return [(d, str(lv), float(first), float(peak or 0.0)) for d, lv, first, peak in session.exec(query)]


def latest_drift_verdicts(session: Session, *, device_ids: list[str] | None = None) -> dict[str, TelemetryRecord]:
    """Per device, its newest window that judged drift (level ok, warn or alarm). Windows with
    too few samples or no traffic say nothing about drift, so they do not hide the last verdict."""
    newest = select(TelemetryRecord.device_id, func.max(TelemetryRecord.window_end).label("end")) \
        .where(col(TelemetryRecord.drift_level).in_(JUDGED_DRIFT_LEVELS)).group_by(TelemetryRecord.device_id)
    if device_ids is not None:
        newest = newest.where(col(TelemetryRecord.device_id).in_(device_ids))
    sub = newest.subquery()
    rows = session.exec(select(TelemetryRecord).join(sub, and_(col(TelemetryRecord.device_id) == sub.c.device_id,
                                                               col(TelemetryRecord.window_end) == sub.c.end))
                        .where(col(TelemetryRecord.drift_level).in_(JUDGED_DRIFT_LEVELS)))
    return {r.device_id: r for r in rows}
