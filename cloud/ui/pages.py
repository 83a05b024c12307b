"""The UI's pages: server-rendered (Jinja2, autoescaped) with inline SVG charts (:mod:`charts`),
one small stylesheet and one small script served from this package. Nothing is loaded from
another origin, so the UI works in a closed network. Pages read through the services, like the
REST API; they never query the database themselves."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import quote

from fastapi import APIRouter, Query, Request
from fastapi.responses import FileResponse, HTMLResponse, RedirectResponse, Response

from edgefleet.cloud.deps import ControllerDep, SessionDep
from edgefleet.cloud.services import deployments, devices, downsample, fleet_history, live_marks, registry, telemetry
from edgefleet.cloud.services.incidents import service as incidents
from edgefleet.cloud.store.tables import Bundle, Deployment
from edgefleet.cloud.ui import charts, feed, filters, ranges
from edgefleet.cloud.ui.csrf import CsrfField
from edgefleet.cloud.ui.filters import STATE_CSS, STATE_ORDER
from edgefleet.cloud.ui.render import base_path, not_found, render
from edgefleet.cloud.ui.report_view import report_view
from edgefleet.cloud.ui.session import posted_by, signed_in, to_login
from edgefleet.cloud.vocabulary import DeploymentStatus, IncidentState, TelemetryGroup
from edgefleet.protocol.errors import ConflictError, EdgeFleetError, InvalidRequestError, NotFoundError
from edgefleet.protocol.vocabulary import DeviceStatus, DriftLevel

log = logging.getLogger(__name__)

HERE = Path(__file__).parent
STATIC_TYPES = {".css": "text/css", ".js": "text/javascript", ".svg": "image/svg+xml", ".png": "image/png",
                ".ico": "image/x-icon"}
STATS_WINDOW_S = 24 * 3600.0
"""Bundle pages summarise the telemetry of the last day."""
DEFAULT_THRESHOLDS = {"psi_warn": 0.1, "psi_alarm": 0.25}
FEED_LIMIT = 15
"""Items of the overview's "Recent events" feed."""
FEED_TRANSITIONS = 20 * FEED_LIMIT
"""The newest online/offline transitions the feed reads (more than it shows: a device offline now without one
among them is shown at the time it was last heard from)."""
DEVICE_RANGE = ranges.ChartRange.H6
"""The device page's charts show the last 6 hours unless ``?range=`` says otherwise (about the 240 one-minute
windows they showed before ranges)."""
MAX_WINDOWS = 20_000
"""At most this many windows are read for a device's charts (7 days of one-minute windows is 10 080)."""

router = APIRouter(include_in_schema=False)


@router.get("/ui/static/{name}")
def static(name: str) -> Response:
    path = HERE / "static" / name
    if "/" in name or name.startswith(".") or path.suffix not in STATIC_TYPES or not path.is_file():
        return Response("not found", status_code=404, media_type="text/plain")
    return FileResponse(path, media_type=STATIC_TYPES[path.suffix],
                        headers={"Cache-Control": "public, max-age=300", "X-Content-Type-Options": "nosniff"})


# --------------------------------------------------------------------------- read helpers

def _state_slices(counts: dict[str, int]) -> list[charts.Slice]:
    keys = sorted(counts, key=lambda k: STATE_ORDER.index(k) if k in STATE_ORDER else len(STATE_ORDER))
    return [charts.Slice(k.replace("_", " "), counts[k], STATE_CSS.get(k, "st-idle")) for k in keys]


def _deployment_rows(session: SessionDep, items: list[Deployment]) -> list[dict[str, Any]]:
    targets = deployments.targets_by_deployment(session, deployment_ids=[d.id for d in items])
    bundles = registry.bundles_by_id(session, ids={d.bundle_id for d in items})
    rows = []
    for d in items:
        counts = deployments.progress(targets[d.id])
        total = len(targets[d.id])
        done = sum(t.final for t in targets[d.id])
        rows.append({"deployment": d, "bundle": bundles.get(d.bundle_id), "counts": counts, "total": total,
                     "done": done, "selector": deployments.describe_selector(d.selector),
                     "bar": charts.stacked_bar(_state_slices(counts), kind="progress",
                                               title=f"{done} of {total} devices finished")})
    return rows


def _thresholds(bundle: Bundle | None) -> dict[str, float]:
    profile = (bundle.manifest or {}).get("reference_profile") if bundle else None
    found = dict(DEFAULT_THRESHOLDS)
    if profile and isinstance(profile.get("thresholds"), dict):
        for k in found:
            v = profile["thresholds"].get(k)
            if isinstance(v, int | float):
                found[k] = float(v)
    return found


# --------------------------------------------------------------------------- pages

@router.get("/", response_class=HTMLResponse)
def overview(request: Request, session: SessionDep, controller: ControllerDep) -> Response:
    user = signed_in(request, session)
    if user is None:
        return to_login(request)
    mark = live_marks.fleet_mark(session)   # before reading: the page is at least as new as its mark
    now = controller.now()
    settings = controller.settings
    fleet = devices.list_devices(session)
    online = sum(d.online for d in fleet)
    latest = feed.recent_verdicts(telemetry.latest_drift_verdicts(session), since=now - settings.ui_drift_span_s)
    drift_counts: dict[str, int] = {}
    alarms: list[dict[str, Any]] = []
    for d in fleet:
        w = latest.get(d.id)
        if w is None or not w.drift_level:
            continue
        drift_counts[w.drift_level] = drift_counts.get(w.drift_level, 0) + 1
        if w.drift_level in (DriftLevel.WARN, DriftLevel.ALARM):
            alarms.append({"device": d, "window": w})
    alarms.sort(key=lambda a: (a["window"].drift_level != DriftLevel.ALARM, -(a["window"].drift_psi or 0.0)))
    states: dict[str, int] = {}
    for d in fleet:
        key = d.update_state or "unknown"
        states[key] = states.get(key, 0) + 1
    active = deployments.list_deployments(session, status=DeploymentStatus.ACTIVE, limit=20)
    recent = [d for d in deployments.list_deployments(session, limit=8) if d.status != DeploymentStatus.ACTIVE][:5]
    bundles = registry.list_bundles(session)
    installed: dict[str, int] = {}
    for d in fleet:
        if d.installed:
            label = f"{d.installed.get('name', '?')} {d.installed.get('version', '')}".strip()
            installed[label] = installed.get(label, 0) + 1
    since = now - settings.ui_feed_span_s
    changes = fleet_history.transitions(session, since=since, limit=FEED_TRANSITIONS)
    events = feed.build_feed(
        events=devices.recent_events(session, levels=feed.FEED_EVENT_LEVELS, limit=FEED_LIMIT),
        episodes=telemetry.drift_episodes(session, since=since, levels=feed.FEED_DRIFT_LEVELS),
        devices=fleet, since=since, limit=FEED_LIMIT, transitions=changes,
        offline_since=fleet_history.last_offline_before(
            session, pairs=[(t.device_id, t.at) for t in changes[:FEED_LIMIT] if t.online]))
    return render(
        request, "overview.html", user=user, now=now, refresh=10, live_version=mark,
        total=len(fleet), online=online, offline=len(fleet) - online,
        donut=charts.donut([charts.Slice(DeviceStatus.ONLINE, online, "st-ok"),
                            charts.Slice(DeviceStatus.OFFLINE, len(fleet) - online, "st-idle")],
                           kind="fleet", title=f"{online} of {len(fleet)} devices online",
                           center=f"{online}/{len(fleet)}", caption="online"),
        states_chart=charts.hbars(_state_slices(states), kind="states", title="devices per update state"),
        drift_chart=charts.hbars([charts.Slice(k, drift_counts.get(k, 0), STATE_CSS[k])
                                  for k in DriftLevel],
                                 kind="drift", title=f"devices per drift level (newest judged window of the "
                                                     f"last {filters.duration(settings.ui_drift_span_s)})"),
        installed_chart=charts.hbars([charts.Slice(k, v, "s1") for k, v in sorted(installed.items())],
                                     kind="installed", title="installed bundles"),
        alarms=alarms, n_alarm=drift_counts.get(DriftLevel.ALARM, 0), n_warn=drift_counts.get(DriftLevel.WARN, 0),
        active=_deployment_rows(session, active), recent=_deployment_rows(session, recent),
        bundles=bundles[:6], n_bundles=len(bundles), events=events, n_incidents=incidents.count_open(session),
        drift_span=settings.ui_drift_span_s, feed_span=settings.ui_feed_span_s,
        open_incidents=incidents.list_incidents(session, state=IncidentState.OPEN, limit=5))


@router.get("/ui/devices/{device_id}", response_class=HTMLResponse)
def device_detail(request: Request, device_id: str, session: SessionDep, controller: ControllerDep,
                  chart_range: Annotated[str | None, Query(alias="range")] = None) -> Response:
    user = signed_in(request, session)
    if user is None:
        return to_login(request)
    try:
        chosen = ranges.parse(chart_range, default=DEVICE_RANGE)
        device = devices.get_device(session, device_id=device_id)
    except InvalidRequestError as exc:
        return ranges.refused(request, user, exc)
    except NotFoundError as exc:
        return not_found(request, user, exc)
    mark = live_marks.device_mark(session, device_id=device_id)   # before reading (see overview)
    now = controller.now()
    span = (now - ranges.SECONDS[chosen], now)
    windows = telemetry.list_windows(session, device_id=device_id, since=span[0], limit=MAX_WINDOWS)
    points = downsample.window_points(windows, since=span[0], until=span[1])
    merged = any(p["windows"] > 1 for p in points)
    summary = telemetry.summarize(windows)
    installed_digest = (device.installed or {}).get("digest")
    bundle = registry.bundles_by_digest(session, digests={installed_digest} if installed_digest else set()
                                        ).get(installed_digest or "")
    th = _thresholds(bundle)
    per = "per merged windows" if merged else "per window"
    latency = charts.line_chart(
        [charts.Series("p50", _line(points, "p50_ms"), "s1"), charts.Series("p95", _line(points, "p95_ms"), "s2")],
        kind="latency", title=f"inference latency of {device.id} (ms {per}, last {ranges.LABELS[chosen]})",
        unit="ms", x_range=span, empty_text=f"no telemetry yet (last {ranges.LABELS[chosen]})")
    drift = charts.line_chart(
        [charts.Series("PSI", _line(points, "psi"), "s3"), charts.Series("Jensen–Shannon", _line(points, "js"), "s4")],
        kind="drift", title=f"input drift of {device.id} {per} (last {ranges.LABELS[chosen]})",
        empty_text=f"no drift scores yet (last {ranges.LABELS[chosen]})", x_range=span,
        thresholds=[charts.Threshold(th["psi_warn"], f"warn {th['psi_warn']:g}", DriftLevel.WARN, band=False),
                    charts.Threshold(th["psi_alarm"], f"alarm {th['psi_alarm']:g}", DriftLevel.ALARM, band=True)])
    reference = ((bundle.manifest or {}).get("reference_profile") or {}).get("predictions", {}) if bundle else {}
    labels = (bundle.manifest or {}).get("labels") if bundle else None
    names = list(labels) if labels else []
    names += sorted((set(summary["predictions"]) | set(reference)) - set(names), key=_natural)
    preds = charts.bar_chart([charts.Bar(n, summary["predictions"].get(n, 0), reference.get(n) if reference else None)
                              for n in names], kind="predictions", title=f"prediction distribution of {device.id}")
    requests_spark = charts.sparkline([p["requests"] for p in points], kind="requests", title="requests per window")
    targets = deployments.targets_for_device(session, device_id=device_id, limit=10)
    deps_by_id = deployments.deployments_by_id(session, ids={t.deployment_id for t in targets})
    bundles_by_id = registry.bundles_by_id(session, ids={d.bundle_id for d in deps_by_id.values()})
    events = devices.recent_events(session, device_id=device_id, limit=10)
    latest = telemetry.latest_drift_verdicts(session, device_ids=[device_id]).get(device_id)
    return render(request, "device.html", user=user, now=now, refresh=10, device=device,
                   bundle=bundle, summary=summary, latest=latest, thresholds=th, latency_chart=latency,
                   drift_chart=drift, predictions_chart=preds, requests_spark=requests_spark, targets=targets,
                   deps_by_id=deps_by_id, bundles_by_id=bundles_by_id, events=events,
                   previous_bundle=deployments.previous_bundle(session, device_id=device_id),
                   chart_range=chosen, range_label=ranges.LABELS[chosen], merged=merged,
                   range_choices=ranges.choices(request.url.path, chosen, anchor="#charts"),
                   live_version=mark, live_device=device.id)


def _line(points: list[dict[str, Any]], key: str) -> list[tuple[float, float | None]]:
    """A chart series of ``key``, broken (a ``None`` point) where the telemetry has a gap."""
    out: list[tuple[float, float | None]] = []
    for p in points:
        if p["after_gap"]:
            out.append((p["at"], None))
        out.append((p["at"], p[key]))
    return out


def _natural(key: str) -> tuple[int, int, str]:
    return (0, int(key), "") if key.isdigit() else (1, 0, key)


@router.get("/ui/bundles", response_class=HTMLResponse)
def bundle_list(request: Request, session: SessionDep, controller: ControllerDep) -> Response:
    user = signed_in(request, session)
    if user is None:
        return to_login(request)
    bundles = registry.list_bundles(session)
    counts: dict[str, int] = {}
    for d in devices.list_devices(session):
        digest = (d.installed or {}).get("digest")
        if digest:
            counts[digest] = counts.get(digest, 0) + 1
    versions = registry.version_labels(session, ids={b.model_version_id for b in bundles if b.model_version_id})
    return render(request, "bundles.html", user=user, now=controller.now(), refresh=None, bundles=bundles,
                   installed_counts=counts, versions=versions, models=registry.list_models(session))


@router.get("/ui/bundles/{digest}", response_class=HTMLResponse)
def bundle_detail(request: Request, digest: str, session: SessionDep, controller: ControllerDep) -> Response:
    user = signed_in(request, session)
    if user is None:
        return to_login(request)
    try:
        bundle = registry.get_bundle(session, digest=digest)
    except EdgeFleetError as exc:
        return not_found(request, user, exc)
    manifest = bundle.manifest or {}
    model_name = registry.model_name_of_version(session, version_id=bundle.model_version_id)
    tree = registry.lineage(session, model_name=model_name) if model_name else []
    used_by = _deployment_rows(session, deployments.list_deployments(session, bundle_id=bundle.id, limit=10))
    on_devices = [d for d in devices.list_devices(session) if (d.installed or {}).get("digest") == bundle.digest]
    stats = telemetry.aggregate(session, group_by=TelemetryGroup.BUNDLE, key=bundle.digest,
                                since=controller.now() - STATS_WINDOW_S).get(bundle.digest)
    profile = manifest.get("reference_profile") or {}
    reference = profile.get("predictions") or {}
    order = [k for k in manifest.get("labels") or [] if k in reference]
    order += sorted(set(reference) - set(order), key=_natural)
    ref_chart = charts.bar_chart([charts.Bar(k, reference[k]) for k in order], kind="reference",
                                 title="reference prediction distribution", percent_labels=True,
                                 empty_text="no reference predictions") if reference else None
    return render(request, "bundle.html", user=user, now=controller.now(), refresh=None, bundle=bundle,
                   manifest=manifest, profile=profile, tree=tree, model_name=model_name, used_by=used_by,
                   on_devices=on_devices, stats=stats, ref_chart=ref_chart,
                   compression=report_view(manifest.get("compression")))


@router.get("/ui/deployments", response_class=HTMLResponse)
def deployment_list(request: Request, session: SessionDep, controller: ControllerDep,
                    status: str | None = None) -> Response:
    user = signed_in(request, session)
    if user is None:
        return to_login(request)
    wanted = DeploymentStatus(status) if status in set(DeploymentStatus) else None
    items = deployments.list_deployments(session, status=wanted, limit=100)
    return render(request, "deployments.html", user=user, now=controller.now(), refresh=5,
                   rows=_deployment_rows(session, items), status=status or "")


@router.get("/ui/deployments/{deployment_id}", response_class=HTMLResponse)
def deployment_detail(request: Request, deployment_id: str, session: SessionDep,
                      controller: ControllerDep) -> Response:
    user = signed_in(request, session)
    if user is None:
        return to_login(request)
    try:
        deployment = deployments.get_deployment(session, deployment_id=deployment_id)
    except NotFoundError as exc:
        return not_found(request, user, exc)
    row = _deployment_rows(session, [deployment])[0]
    targets = deployments.targets_of(session, deployment_id=deployment_id)
    return render(request, "deployment.html", user=user, now=controller.now(),
                   refresh=3 if deployment.finished_at is None else None, row=row, deployment=deployment,
                   targets=targets, bundle=row["bundle"],
                   counts_chart=charts.hbars(_state_slices(row["counts"]), kind="targets",
                                             title="devices per state"))


@router.post("/ui/deployments/{deployment_id}/cancel")
def cancel_deployment(request: Request, deployment_id: str, controller: ControllerDep,
                      csrf_token: CsrfField = "") -> Response:
    """Cancel a running deployment (operator or admin): signed cancel orders go out at once."""
    user = posted_by(request, controller, csrf_token, f"cancel of {deployment_id}")
    if isinstance(user, Response):
        return user
    try:
        with controller.session() as session:
            deployments.cancel_deployment(session, deployment_id=deployment_id, issuer=controller.issuer,
                                          actor=user.actor, now=controller.now())
    except NotFoundError as exc:
        return not_found(request, user, exc)
    except ConflictError:
        pass  # finished meanwhile: the page shows how
    else:
        log.info("deployment %s cancelled from the UI by %s", deployment_id, user.actor)
        controller.publish_pending()
    return RedirectResponse(f"{base_path(request)}/ui/deployments/{quote(deployment_id)}", status_code=303)
