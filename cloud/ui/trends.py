"""The fleet over time (``/ui/trends``): devices online, installed bundle versions, and devices drifting per
tag, over a chosen range (``?range=``), from the controller's fleet history (services/fleet_history.py); and
``/ui/live.json``, the fingerprint a live page polls to re-fetch itself only when what it shows changed
(services/live_marks.py, ``static/ui.js``).

A page of its own rather than a section of the overview: the overview says what is true *now* and stays
cheap to re-render every few seconds; trends read a history over up to 7 days and change slowly.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response

from edgefleet.cloud.deps import ControllerDep, SessionDep
from edgefleet.cloud.services import fleet_history, live_marks
from edgefleet.cloud.services.downsample import MAX_POINTS, Buckets
from edgefleet.cloud.ui import charts, ranges
from edgefleet.cloud.ui.render import SECURITY_HEADERS, render
from edgefleet.cloud.ui.session import signed_in, to_login
from edgefleet.cloud.vocabulary import SnapshotMetric, TransitionCause
from edgefleet.protocol.errors import InvalidRequestError
from edgefleet.protocol.vocabulary import DriftLevel

router = APIRouter(include_in_schema=False)

TRENDS_RANGE = ranges.ChartRange.H24
SERIES_CSS = ("s1", "s2", "s3", "s4", "s5", "s6")
MAX_SERIES = len(SERIES_CSS)
"""Lines per chart: the versions (tags) with the most devices, the rest summed as "other"."""
ONLINE_BUCKETS = 120
CHANGES_SHOWN = 20
DRIFTING = (DriftLevel.WARN, DriftLevel.ALARM)
CAUSES = {TransitionCause.HEARD: "heard from it", TransitionCause.LAST_WILL: "its connection dropped (last will)",
          TransitionCause.HEARTBEAT_TIMEOUT: "no heartbeat within the timeout",
          TransitionCause.DECOMMISSIONED: "decommissioned"}


def top_series(by_key: dict[str, list[tuple[float, float]]], *, other: str = "other") -> list[charts.Series]:
    """The :data:`MAX_SERIES` keys with the highest peak as lines; the others summed per moment into one."""
    ranked = sorted(by_key, key=lambda k: (-max((v for _, v in by_key[k]), default=0.0), k))
    if len(ranked) <= MAX_SERIES:
        return [charts.Series(k, by_key[k], css) for k, css in zip(ranked, SERIES_CSS, strict=False)]
    shown, rest = ranked[:MAX_SERIES - 1], ranked[MAX_SERIES - 1:]
    series = [charts.Series(k, by_key[k], css) for k, css in zip(shown, SERIES_CSS, strict=False)]
    if rest:
        summed: dict[float, float] = {}
        for k in rest:
            for at, v in by_key[k]:
                summed[at] = summed.get(at, 0.0) + v
        series.append(charts.Series(f"{other} ({len(rest)})", sorted(summed.items()), SERIES_CSS[-1]))
    return series


def drifting_by_tag(by_key: dict[str, list[tuple[float, float]]]) -> dict[str, list[tuple[float, float]]]:
    """``tag<TAB>level`` series (snapshot ``drift`` rows) -> per tag, its devices at warn or alarm."""
    out: dict[str, dict[float, float]] = {}
    for key, points in by_key.items():
        tag, _, level = key.rpartition(fleet_history.KEY_SEPARATOR)
        if level == fleet_history.TAG_DEVICES:
            out.setdefault(tag, {})
            for at, _ in points:
                out[tag].setdefault(at, 0.0)
        elif level in DRIFTING:
            acc = out.setdefault(tag, {})
            for at, v in points:
                acc[at] = acc.get(at, 0.0) + v
    return {tag: sorted(values.items()) for tag, values in sorted(out.items())}


@router.get("/ui/trends", response_class=HTMLResponse)
def trends(request: Request, session: SessionDep, controller: ControllerDep,
           chart_range: Annotated[str | None, Query(alias="range")] = None) -> Response:
    user = signed_in(request, session)
    if user is None:
        return to_login(request)
    try:
        chosen = ranges.parse(chart_range, default=TRENDS_RANGE)
    except InvalidRequestError as exc:
        return ranges.refused(request, user, exc)
    mark = live_marks.fleet_mark(session)
    now = controller.now()
    span = (now - ranges.SECONDS[chosen], now)
    label = ranges.LABELS[chosen]
    online = fleet_history.online_buckets(session, buckets=Buckets(span[0], span[1], ONLINE_BUCKETS))
    online_chart = charts.line_chart(
        [charts.Series("online", [(end, float(last)) for end, _, last in online], "s1"),
         charts.Series("fewest online", [(end, float(low)) for end, low, _ in online], "s2")],
        kind="trend-online", title=f"devices online over the last {label} (at the end of each interval, and the "
                                   f"fewest within it)", x_range=span, empty_text="no history yet", width=960,
        height=260)
    buckets = Buckets(span[0], span[1], MAX_POINTS)
    versions = fleet_history.snapshot_series(session, metric=SnapshotMetric.VERSION, buckets=buckets)
    versions_chart = charts.line_chart(top_series(versions), kind="trend-versions", x_range=span,
                                       title=f"devices per installed bundle version over the last {label}",
                                       empty_text="no fleet snapshot in this range yet")
    drift = drifting_by_tag(fleet_history.snapshot_series(session, metric=SnapshotMetric.DRIFT, buckets=buckets))
    drift_chart = charts.line_chart(top_series(drift), kind="trend-drift", x_range=span,
                                    title=f"devices at drift warn or alarm per tag over the last {label}",
                                    empty_text="no fleet snapshot in this range yet")
    changes = fleet_history.transitions(session, since=span[0], limit=CHANGES_SHOWN)
    settings = controller.settings
    return render(request, "trends.html", user=user, now=now, refresh=30, live_version=mark,
                  chart_range=chosen, range_label=label, range_choices=ranges.choices(request.url.path, chosen),
                  online_chart=online_chart, versions_chart=versions_chart, drift_chart=drift_chart,
                  changes=changes, causes=CAUSES, history_start=fleet_history.history_start(session),
                  snapshot_every=settings.fleet_snapshot_interval_s, drift_span=settings.ui_drift_span_s,
                  retention=settings.fleet_history_retention_s)


@router.get("/ui/live.json")
def live(request: Request, session: SessionDep, controller: ControllerDep,
         device: Annotated[str | None, Query(max_length=64)] = None) -> Response:
    """``{"version": ..., "at": ...}``: the fingerprint of the fleet (or of one device's page) now."""
    user = signed_in(request, session)
    if user is None:
        return JSONResponse({"error": {"message": "not signed in", "hint": "sign in again"}}, status_code=401,
                            headers=SECURITY_HEADERS)
    version = live_marks.device_mark(session, device_id=device) if device else live_marks.fleet_mark(session)
    return JSONResponse({"version": version, "at": controller.now()}, headers=SECURITY_HEADERS)
