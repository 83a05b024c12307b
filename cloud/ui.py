"""The controller's web UI: server-rendered pages (Jinja2, autoescaped), inline SVG charts
(:mod:`charts`), one small stylesheet and one small script served from this package.
Nothing is loaded from another origin, so it works in a closed network.

Mounted by ``create_app`` with ``app.include_router(ui.router)``. Pages read through the same
``SessionDep`` as the REST API. Login: the operator pastes an API token (viewer, operator or
admin role); it is kept in an HttpOnly, SameSite=Strict cookie and checked with
:func:`auth.authenticate` on every request. Without a valid cookie a page redirects to the
login form.
"""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import quote

import jinja2
from fastapi import APIRouter, Form, Request
from fastapi.responses import FileResponse, HTMLResponse, RedirectResponse, Response
from sqlmodel import Session, col, select

from edgefleet.cloud import auth, charts, deployments, devices, registry, telemetry
from edgefleet.cloud.auth import AuthenticationError, PermissionDeniedError, Principal
from edgefleet.cloud.deps import ControllerDep, SessionDep
from edgefleet.cloud.models import Bundle, Deployment, DeploymentTarget, DeviceEvent, Model, ModelVersion
from edgefleet.protocol.errors import ConflictError, EdgeFleetError, NotFoundError

log = logging.getLogger(__name__)

HERE = Path(__file__).parent
COOKIE = "edgefleet_ui"
COOKIE_MAX_AGE = 12 * 3600
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
                               "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}
STATIC_TYPES = {".css": "text/css", ".js": "text/javascript", ".svg": "image/svg+xml", ".png": "image/png",
                ".ico": "image/x-icon"}
STATS_WINDOW_S = 24 * 3600.0
"""Bundle pages summarise the telemetry of the last day."""
DEFAULT_THRESHOLDS = {"psi_warn": 0.1, "psi_alarm": 0.25}

# Colour class of every state / outcome / level (defined in static/ui.css).
STATE_CSS = {
    "pending": "st-wait", "sent": "st-wait", "idle": "st-idle",
    "downloading": "st-run", "verifying": "st-run", "staged": "st-run", "activating": "st-run",
    "health_check": "st-run", "committed": "st-ok", "succeeded": "st-ok", "active": "st-run",
    "failed": "st-bad", "rolled_back": "st-warn", "refused": "st-bad", "cancelled": "st-idle", "partial": "st-warn",
    "ok": "st-ok", "warn": "st-warn", "alarm": "st-bad", "insufficient": "st-idle",
    "online": "st-ok", "offline": "st-idle",
}
STATE_ORDER = ["committed", "succeeded", "health_check", "activating", "staged", "verifying", "downloading",
               "sent", "pending", "idle", "rolled_back", "cancelled", "refused", "failed"]

router = APIRouter(include_in_schema=False)


# --------------------------------------------------------------------------- templates

def _ago(ts: float | None, now: float | None = None) -> str:
    if not isinstance(ts, int | float):
        return "never"
    delta = (now if now is not None else time.time()) - ts
    if delta < 0:
        return "just now" if delta > -5 else "in the future"
    for limit, unit, size in ((60, "s", 1), (3600, "min", 60), (86400, "h", 3600), (math.inf, "d", 86400)):
        if delta < limit:
            return "just now" if unit == "s" and delta < 5 else f"{int(delta // size)} {unit} ago"
    return ""


def _datetime(ts: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(ts)) if isinstance(ts, int | float) else "—"


def _bytes(n: int | None) -> str:
    if not isinstance(n, int | float):
        return "—"
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return ""


def _num(v: float | None, digits: int = 3) -> str:
    return "—" if not isinstance(v, int | float) else charts.format_number(v) if abs(v) >= 1 else f"{v:.{digits}f}"


def _env() -> jinja2.Environment:
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(HERE / "templates"), autoescape=True,
                             undefined=jinja2.ChainableUndefined, trim_blocks=True, lstrip_blocks=True)
    env.filters.update(ago=_ago, datetime=_datetime, bytes=_bytes, num=_num,
                       short=lambda d: (d or "")[:12], state_css=lambda s: STATE_CSS.get(s or "", "st-idle"))
    return env


templates = _env()


def _render(request: Request, name: str, status_code: int = 200, **context: Any) -> HTMLResponse:
    base = request.scope.get("root_path", "").rstrip("/")
    context.setdefault("now", time.time())
    context.setdefault("refresh", None)
    html = templates.get_template(name).render(base=base, path=request.url.path, **context)
    return HTMLResponse(html, status_code=status_code, headers=SECURITY_HEADERS)


# --------------------------------------------------------------------------- login

def _safe_next(target: str | None) -> str:
    """Only same-site paths (no ``//host``, no scheme) are followed after login."""
    if not target or not target.startswith("/") or target.startswith("//") or "\\" in target:
        return "/"
    return target


def _principal(request: Request, session: Session) -> Principal | None:
    try:
        principal = auth.authenticate(session, secret=request.cookies.get(COOKIE))
    except AuthenticationError:
        return None
    return principal if principal.role in auth.OPERATOR_ROLES else None


def _to_login(request: Request) -> RedirectResponse:
    target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    base = request.scope.get("root_path", "").rstrip("/")
    response = RedirectResponse(f"{base}/ui/login?next={quote(target, safe='/')}", status_code=303)
    if COOKIE in request.cookies:
        response.delete_cookie(COOKIE, path="/", httponly=True, samesite="strict")
    return response


@router.get("/ui/login", response_class=HTMLResponse)
def login_form(request: Request, session: SessionDep, next: str = "/") -> Response:
    if _principal(request, session) is not None:
        return RedirectResponse(_safe_next(next), status_code=303)
    return _render(request, "login.html", next=_safe_next(next), error=None, user=None)


@router.post("/ui/login", response_class=HTMLResponse)
def login(request: Request, session: SessionDep, controller: ControllerDep,
          token: Annotated[str, Form(max_length=512)] = "", next: Annotated[str, Form(max_length=2048)] = "/"
          ) -> Response:
    token = token.strip()
    try:
        principal = auth.authenticate(session, secret=token)
    except AuthenticationError:
        principal = None
    if principal is None or principal.role not in auth.OPERATOR_ROLES:
        log.warning("UI login refused from %s", request.client.host if request.client else "?")
        controller.metrics.http_errors.labels("ui_login_refused").inc()
        return _render(request, "login.html", status_code=401, next=_safe_next(next), user=None,
                       error="That token is not valid here. Use an operator API token "
                             "(viewer, operator or admin role), not a device token.")
    log.info("UI login by %s", principal.actor)
    response = RedirectResponse(_safe_next(next), status_code=303)
    response.set_cookie(COOKIE, token, max_age=COOKIE_MAX_AGE, path="/", httponly=True, samesite="strict",
                        secure=request.url.scheme == "https")
    return response


@router.post("/ui/logout")
def logout(request: Request) -> Response:
    response = RedirectResponse(f"{request.scope.get('root_path', '').rstrip('/')}/ui/login", status_code=303)
    response.delete_cookie(COOKIE, path="/", httponly=True, samesite="strict")
    return response


@router.get("/ui/static/{name}")
def static(name: str) -> Response:
    path = HERE / "static" / name
    if "/" in name or name.startswith(".") or path.suffix not in STATIC_TYPES or not path.is_file():
        return Response("not found", status_code=404, media_type="text/plain")
    return FileResponse(path, media_type=STATIC_TYPES[path.suffix],
                        headers={"Cache-Control": "public, max-age=300", "X-Content-Type-Options": "nosniff"})


# --------------------------------------------------------------------------- read helpers

def _bundles_by_digest(session: Session, digests: set[str]) -> dict[str, Bundle]:
    if not digests:
        return {}
    return {b.digest: b for b in session.exec(select(Bundle).where(col(Bundle.digest).in_(digests)))}


def _state_slices(counts: dict[str, int]) -> list[charts.Slice]:
    keys = sorted(counts, key=lambda k: STATE_ORDER.index(k) if k in STATE_ORDER else len(STATE_ORDER))
    return [charts.Slice(k.replace("_", " "), counts[k], STATE_CSS.get(k, "st-idle")) for k in keys]


def _deployment_rows(session: Session, items: list[Deployment]) -> list[dict[str, Any]]:
    ids = [d.id for d in items]
    targets: dict[str, list[DeploymentTarget]] = {i: [] for i in ids}
    if ids:
        for t in session.exec(select(DeploymentTarget).where(col(DeploymentTarget.deployment_id).in_(ids))):
            targets[t.deployment_id].append(t)
    bundle_ids = {d.bundle_id for d in items}
    bundles = {b.id: b for b in session.exec(select(Bundle).where(col(Bundle.id).in_(bundle_ids)))} \
        if bundle_ids else {}
    rows = []
    for d in items:
        counts = deployments.progress(targets[d.id])
        total = len(targets[d.id])
        done = sum(t.final for t in targets[d.id])
        rows.append({"deployment": d, "bundle": bundles.get(d.bundle_id), "counts": counts, "total": total,
                     "done": done, "selector": _selector_text(d.selector),
                     "bar": charts.stacked_bar(_state_slices(counts), kind="progress",
                                               title=f"{done} of {total} devices finished")})
    return rows


def _selector_text(selector: dict) -> str:
    if selector.get("all"):
        return "all compatible devices"
    if selector.get("tag"):
        return f"tag {selector['tag']}"
    ids = selector.get("device_ids") or []
    return ", ".join(ids[:3]) + (f" +{len(ids) - 3}" if len(ids) > 3 else "")


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
    user = _principal(request, session)
    if user is None:
        return _to_login(request)
    now = controller.now()
    fleet = devices.list_devices(session)
    online = sum(d.online for d in fleet)
    latest = telemetry.latest_drift_verdicts(session)
    drift_counts: dict[str, int] = {}
    alarms = []
    for d in fleet:
        w = latest.get(d.id)
        level = w.drift_level if w else None
        if level:
            drift_counts[level] = drift_counts.get(level, 0) + 1
        if level in ("warn", "alarm"):
            alarms.append({"device": d, "window": w})
    alarms.sort(key=lambda a: (a["window"].drift_level != "alarm", -(a["window"].drift_psi or 0.0)))
    states: dict[str, int] = {}
    for d in fleet:
        key = d.update_state or "unknown"
        states[key] = states.get(key, 0) + 1
    active = deployments.list_deployments(session, status="active", limit=20)
    recent = [d for d in deployments.list_deployments(session, limit=8) if d.status != "active"][:5]
    bundles = registry.list_bundles(session)
    installed: dict[str, int] = {}
    for d in fleet:
        if d.installed:
            label = f"{d.installed.get('name', '?')} {d.installed.get('version', '')}".strip()
            installed[label] = installed.get(label, 0) + 1
    events = list(session.exec(select(DeviceEvent).where(col(DeviceEvent.level).in_(["warning", "error"]))
                               .order_by(col(DeviceEvent.received_at).desc()).limit(6)))
    return _render(
        request, "overview.html", user=user, now=now, refresh=10,
        total=len(fleet), online=online, offline=len(fleet) - online,
        donut=charts.donut([charts.Slice("online", online, "st-ok"), charts.Slice("offline", len(fleet) - online,
                                                                               "st-idle")],
                           kind="fleet", title=f"{online} of {len(fleet)} devices online",
                           center=f"{online}/{len(fleet)}", caption="online"),
        states_chart=charts.hbars(_state_slices(states), kind="states", title="devices per update state"),
        drift_chart=charts.hbars([charts.Slice(k, drift_counts.get(k, 0), STATE_CSS[k])
                                  for k in ("ok", "warn", "alarm", "insufficient")],
                                 kind="drift", title="devices per drift level (latest judged window)"),
        installed_chart=charts.hbars([charts.Slice(k, v, "s1") for k, v in sorted(installed.items())],
                                     kind="installed", title="installed bundles"),
        alarms=alarms, n_alarm=drift_counts.get("alarm", 0), n_warn=drift_counts.get("warn", 0),
        active=_deployment_rows(session, active), recent=_deployment_rows(session, recent),
        bundles=bundles[:6], n_bundles=len(bundles), events=events)


@router.get("/ui/devices", response_class=HTMLResponse)
def device_list(request: Request, session: SessionDep, controller: ControllerDep, tag: str | None = None,
                online: str | None = None, q: str | None = None) -> Response:
    user = _principal(request, session)
    if user is None:
        return _to_login(request)
    want_online = {"yes": True, "no": False}.get(online or "")
    fleet = devices.list_devices(session, tag=tag or None, online=want_online)
    if q:
        fleet = [d for d in fleet if q.lower() in d.id.lower()]
    latest = telemetry.latest_drift_verdicts(session, device_ids=[d.id for d in fleet])
    all_tags = sorted({t for d in devices.list_devices(session) for t in d.tags})
    return _render(request, "devices.html", user=user, now=controller.now(), refresh=10, devices=fleet,
                   latest=latest, tag=tag or "", online=online or "", q=q or "", all_tags=all_tags)


@router.get("/ui/devices/{device_id}", response_class=HTMLResponse)
def device_detail(request: Request, device_id: str, session: SessionDep, controller: ControllerDep) -> Response:
    user = _principal(request, session)
    if user is None:
        return _to_login(request)
    try:
        device = devices.get_device(session, device_id=device_id)
    except NotFoundError as exc:
        return _not_found(request, user, exc)
    points = telemetry.series(session, device_id=device_id, limit=240)
    windows = telemetry.list_windows(session, device_id=device_id, limit=240)
    summary = telemetry.summarize(windows)
    installed_digest = (device.installed or {}).get("digest")
    bundle = _bundles_by_digest(session, {installed_digest} if installed_digest else set()).get(installed_digest)
    th = _thresholds(bundle)
    latency = charts.line_chart(
        [charts.Series("p50", [(p["window_end"], p["p50_ms"]) for p in points], "s1"),
         charts.Series("p95", [(p["window_end"], p["p95_ms"]) for p in points], "s2")],
        kind="latency", title=f"inference latency of {device.id} (ms per window)", unit="ms")
    drift = charts.line_chart(
        [charts.Series("PSI", [(p["window_end"], p["psi"]) for p in points], "s3"),
         charts.Series("Jensen–Shannon", [(p["window_end"], p["js"]) for p in points], "s4")],
        kind="drift", title=f"input drift of {device.id} per window", empty_text="no drift scores yet",
        thresholds=[charts.Threshold(th["psi_warn"], f"warn {th['psi_warn']:g}", "warn", band=False),
                    charts.Threshold(th["psi_alarm"], f"alarm {th['psi_alarm']:g}", "alarm", band=True)])
    reference = ((bundle.manifest or {}).get("reference_profile") or {}).get("predictions", {}) if bundle else {}
    labels = (bundle.manifest or {}).get("labels") if bundle else None
    names = list(labels) if labels else []
    names += sorted((set(summary["predictions"]) | set(reference)) - set(names), key=_natural)
    preds = charts.bar_chart([charts.Bar(n, summary["predictions"].get(n, 0), reference.get(n) if reference else None)
                              for n in names], kind="predictions", title=f"prediction distribution of {device.id}")
    requests_spark = charts.sparkline([p["requests"] for p in points], kind="requests", title="requests per window")
    targets = deployments.targets_for_device(session, device_id=device_id, limit=10)
    deps_by_id = {d.id: d for d in session.exec(select(Deployment).where(
        col(Deployment.id).in_([t.deployment_id for t in targets])))} if targets else {}
    bundles_by_id = {b.id: b for b in session.exec(select(Bundle).where(
        col(Bundle.id).in_({d.bundle_id for d in deps_by_id.values()})))} if deps_by_id else {}
    events = list(session.exec(select(DeviceEvent).where(DeviceEvent.device_id == device_id)
                               .order_by(col(DeviceEvent.received_at).desc()).limit(10)))
    latest = telemetry.latest_drift_verdicts(session, device_ids=[device_id]).get(device_id)
    return _render(request, "device.html", user=user, now=controller.now(), refresh=10, device=device,
                   bundle=bundle, summary=summary, latest=latest, thresholds=th, latency_chart=latency,
                   drift_chart=drift, predictions_chart=preds, requests_spark=requests_spark, targets=targets,
                   deps_by_id=deps_by_id, bundles_by_id=bundles_by_id, events=events)


def _natural(key: str) -> tuple:
    return (0, int(key), "") if key.isdigit() else (1, 0, key)


@router.get("/ui/bundles", response_class=HTMLResponse)
def bundle_list(request: Request, session: SessionDep, controller: ControllerDep) -> Response:
    user = _principal(request, session)
    if user is None:
        return _to_login(request)
    bundles = registry.list_bundles(session)
    counts: dict[str, int] = {}
    for d in devices.list_devices(session):
        digest = (d.installed or {}).get("digest")
        if digest:
            counts[digest] = counts.get(digest, 0) + 1
    versions = _version_labels(session, {b.model_version_id for b in bundles if b.model_version_id})
    return _render(request, "bundles.html", user=user, now=controller.now(), refresh=None, bundles=bundles,
                   installed_counts=counts, versions=versions, models=registry.list_models(session))


def _version_labels(session: Session, ids: set[int]) -> dict[int, str]:
    if not ids:
        return {}
    rows = session.exec(select(ModelVersion, Model).join(Model, Model.id == ModelVersion.model_id)
                        .where(col(ModelVersion.id).in_(ids)))
    return {v.id: f"{m.name}@{v.version}" for v, m in rows}


@router.get("/ui/bundles/{digest}", response_class=HTMLResponse)
def bundle_detail(request: Request, digest: str, session: SessionDep, controller: ControllerDep) -> Response:
    user = _principal(request, session)
    if user is None:
        return _to_login(request)
    try:
        bundle = registry.get_bundle(session, digest=digest)
    except EdgeFleetError as exc:
        return _not_found(request, user, exc)
    manifest = bundle.manifest or {}
    tree, model_name = [], None
    if bundle.model_version_id:
        row = session.exec(select(ModelVersion, Model).join(Model, Model.id == ModelVersion.model_id)
                           .where(ModelVersion.id == bundle.model_version_id)).first()
        if row:
            model_name = row[1].name
            tree = registry.lineage(session, model_name=model_name)
    used_by = _deployment_rows(session, list(session.exec(
        select(Deployment).where(Deployment.bundle_id == bundle.id).order_by(col(Deployment.created_at).desc())
        .limit(10))))
    on_devices = [d for d in devices.list_devices(session) if (d.installed or {}).get("digest") == bundle.digest]
    stats = telemetry.aggregate(session, group_by="bundle", key=bundle.digest,
                                since=controller.now() - STATS_WINDOW_S).get(bundle.digest)
    profile = manifest.get("reference_profile") or {}
    reference = profile.get("predictions") or {}
    order = [k for k in manifest.get("labels") or [] if k in reference]
    order += sorted(set(reference) - set(order), key=_natural)
    ref_chart = charts.bar_chart([charts.Bar(k, reference[k]) for k in order], kind="reference",
                                 title="reference prediction distribution", percent_labels=True,
                                 empty_text="no reference predictions") if reference else None
    return _render(request, "bundle.html", user=user, now=controller.now(), refresh=None, bundle=bundle,
                   manifest=manifest, profile=profile, tree=tree, model_name=model_name, used_by=used_by,
                   on_devices=on_devices, stats=stats, ref_chart=ref_chart,
                   compression=_flatten(manifest.get("compression") or {}))


def _flatten(data: dict, prefix: str = "", depth: int = 0) -> list[tuple[str, str]]:
    """A compression report as ``(key, value)`` rows, nested keys joined with dots."""
    out: list[tuple[str, str]] = []
    for k, v in data.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and depth < 2:
            out.extend(_flatten(v, key + ".", depth + 1))
        elif isinstance(v, float):
            out.append((key, f"{v:.4g}"))
        elif isinstance(v, list | dict):
            text = str(v)
            out.append((key, text if len(text) <= 80 else text[:77] + "..."))
        else:
            out.append((key, str(v)))
    return out[:40]


@router.get("/ui/deployments", response_class=HTMLResponse)
def deployment_list(request: Request, session: SessionDep, controller: ControllerDep,
                    status: str | None = None) -> Response:
    user = _principal(request, session)
    if user is None:
        return _to_login(request)
    items = deployments.list_deployments(session, status=status or None, limit=100)
    return _render(request, "deployments.html", user=user, now=controller.now(), refresh=5,
                   rows=_deployment_rows(session, items), status=status or "")


@router.get("/ui/deployments/{deployment_id}", response_class=HTMLResponse)
def deployment_detail(request: Request, deployment_id: str, session: SessionDep,
                      controller: ControllerDep) -> Response:
    user = _principal(request, session)
    if user is None:
        return _to_login(request)
    try:
        deployment = deployments.get_deployment(session, deployment_id=deployment_id)
    except NotFoundError as exc:
        return _not_found(request, user, exc)
    row = _deployment_rows(session, [deployment])[0]
    targets = deployments.targets_of(session, deployment_id=deployment_id)
    return _render(request, "deployment.html", user=user, now=controller.now(),
                   refresh=3 if deployment.finished_at is None else None, row=row, deployment=deployment,
                   targets=targets, bundle=row["bundle"],
                   counts_chart=charts.hbars(_state_slices(row["counts"]), kind="targets",
                                             title="devices per state"))


def _same_origin(request: Request) -> bool:
    """A state-changing form post must come from a page of this site (SameSite=Strict already
    keeps the cookie off cross-site posts; this also refuses a foreign or opaque Origin)."""
    origin = request.headers.get("origin") or request.headers.get("referer")
    if origin is None:
        return True
    host = request.headers.get("host", "")
    parts = origin.split("://", 1)
    return len(parts) == 2 and parts[1].split("/", 1)[0] == host


@router.post("/ui/deployments/{deployment_id}/cancel")
def cancel_deployment(request: Request, deployment_id: str, controller: ControllerDep) -> Response:
    """Cancel a running deployment (operator or admin): signed cancel orders go out at once."""
    with controller.session() as session:
        user = _principal(request, session)
    if user is None:
        return _to_login(request)
    try:
        if not _same_origin(request):
            raise PermissionDeniedError("this form was not posted from the controller's own pages")
        user.require("operator")
        with controller.session() as session:
            deployments.cancel_deployment(session, deployment_id=deployment_id, issuer=controller.issuer,
                                          actor=user.actor, now=controller.now())
    except PermissionDeniedError as exc:
        log.warning("UI cancel of %s refused for %s: %s", deployment_id, user.actor, exc.message)
        return _render(request, "error.html", status_code=403, user=user, title="Not allowed", message=exc.message)
    except NotFoundError as exc:
        return _not_found(request, user, exc)
    except ConflictError:
        pass  # finished meanwhile: the page shows how
    else:
        log.info("deployment %s cancelled from the UI by %s", deployment_id, user.actor)
        controller.publish_pending()
    base = request.scope.get("root_path", "").rstrip("/")
    return RedirectResponse(f"{base}/ui/deployments/{quote(deployment_id)}", status_code=303)


def _not_found(request: Request, user: Principal, exc: EdgeFleetError) -> HTMLResponse:
    return _render(request, "error.html", status_code=404, user=user, now=time.time(), refresh=None,
                   title="Not found", message=exc.message)
