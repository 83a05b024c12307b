"""Telemetry windows and aggregates (latency percentiles from merged histograms, drift)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query

from edgefleet.cloud.api.params import DeviceIdQuery, Since, TextQuery
from edgefleet.cloud.api.schemas import WindowOut
from edgefleet.cloud.deps import SessionDep, ViewerDep
from edgefleet.cloud.services import telemetry
from edgefleet.cloud.vocabulary import TelemetryGroup

api = APIRouter(prefix="/api/v1")


@api.get("/telemetry/windows", tags=["telemetry"])
def list_windows(session: SessionDep, _: ViewerDep, device_id: DeviceIdQuery = None,
                 bundle: Annotated[str | None, Query(max_length=64)] = None, since: Since = None,
                 limit: Annotated[int, Query(ge=1, le=5000)] = 100) -> list[WindowOut]:
    return [WindowOut.model_validate(w) for w in telemetry.list_windows(session, device_id=device_id,
                                                                        bundle_digest=bundle, since=since,
                                                                        limit=limit)]


@api.get("/telemetry/summary", tags=["telemetry"])
def summary(session: SessionDep, _: ViewerDep,
            group_by: TelemetryGroup = TelemetryGroup.BUNDLE,
            key: TextQuery = None, since: Since = None) -> dict[str, dict[str, Any]]:
    """Aggregates keyed by device id, bundle digest, ``model@version`` or tag (``key`` picks one):
    windows, requests, errors, latency p50/p95, drift (mean/max PSI, levels), predictions."""
    return telemetry.aggregate(session, group_by=group_by, key=key, since=since)
