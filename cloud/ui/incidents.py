"""The UI's drift incidents: the list (filtered by state) and an incident's page -- its cohort, times,
devices, the drift of its devices over the incident against the bundle's thresholds, the windows
behind it -- and an operator's close with a reason, behind a confirmation step. Pages read and act
through the incident service, like the REST API (``cloud/api/routes/incidents.py``)."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Annotated
from urllib.parse import quote

from fastapi import APIRouter, Form, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from markupsafe import Markup
from sqlmodel import Session

from edgefleet.cloud.deps import ControllerDep, SessionDep
from edgefleet.cloud.services import registry
from edgefleet.cloud.services.auth import Principal
from edgefleet.cloud.services.incidents import service as incidents
from edgefleet.cloud.services.rollouts import service as rollouts
from edgefleet.cloud.store.tables import Bundle, Incident, TelemetryRecord
from edgefleet.cloud.ui import charts
from edgefleet.cloud.ui.csrf import CsrfField
from edgefleet.cloud.ui.render import base_path, not_found, render
from edgefleet.cloud.ui.session import posted_by, signed_in, to_login
from edgefleet.cloud.vocabulary import CohortKind, IncidentState, Role
from edgefleet.protocol.drift import DriftThresholds, ReferenceProfile
from edgefleet.protocol.errors import ConflictError, EdgeFleetError, InvalidRequestError, NotFoundError
from edgefleet.protocol.vocabulary import DriftLevel

log = logging.getLogger(__name__)

router = APIRouter(include_in_schema=False)

SERIES_CSS = ("s1", "s2", "s3", "s4", "s5", "s6")
"""One colour per device; a tag cohort with more devices shows those with the highest PSI."""


def thresholds_of(bundle: Bundle | None) -> DriftThresholds:
    """The PSI thresholds of the bundle's reference profile (the defaults without one)."""
    profile = (bundle.manifest or {}).get("reference_profile") if bundle else None
    return ReferenceProfile.model_validate(profile).thresholds if profile else DriftThresholds()


def drift_chart(incident: Incident, windows: Sequence[TelemetryRecord], thresholds: DriftThresholds) -> Markup:
    """PSI per window, one line per device (at most :data:`SERIES_CSS` of them), against warn and alarm."""
    by_device: dict[str, list[tuple[float, float | None]]] = {}
    for w in windows:
        by_device.setdefault(w.device_id, []).append((w.window_end, w.drift_psi))
    worst = sorted(by_device, key=lambda d: -max((v for _, v in by_device[d] if v is not None), default=0.0))
    series = [charts.Series(d, by_device[d], css) for d, css in zip(sorted(worst[:len(SERIES_CSS)]), SERIES_CSS,
                                                                   strict=False)]
    key = incident.cohort_key
    cohort = key if incident.cohort_kind == CohortKind.DEVICE else f"devices tagged {key}"
    return charts.line_chart(series, kind="incident-drift", width=960, height=280,
                             empty_text="no drift windows stored",
                             title=f"input drift (PSI) of {cohort} per window, over incident {incident.id}",
                             thresholds=[charts.Threshold(thresholds.psi_warn, f"warn {thresholds.psi_warn:g}",
                                                          DriftLevel.WARN),
                                         charts.Threshold(thresholds.psi_alarm, f"alarm {thresholds.psi_alarm:g}",
                                                          DriftLevel.ALARM, band=True)])


@router.get("/ui/incidents", response_class=HTMLResponse)
def incident_list(request: Request, session: SessionDep, controller: ControllerDep,
                  state: str | None = None) -> Response:
    user = signed_in(request, session)
    if user is None:
        return to_login(request)
    wanted = IncidentState(state) if state in set(IncidentState) else None
    items = incidents.list_incidents(session, state=wanted, limit=200)
    return render(request, "incidents.html", user=user, now=controller.now(), refresh=10, incidents=items,
                  state=wanted.value if wanted else "", states=list(IncidentState),
                  n_open=incidents.count_open(session))


def _render_detail(request: Request, session: Session, controller: ControllerDep, user: Principal,
                   incident: Incident, problem: EdgeFleetError | None = None, status_code: int = 200) -> Response:
    rule = controller.incident_rules.of(incident.cohort_kind)
    windows = incidents.evidence(session, incident, lead_s=rule.cooldown_s)
    bundle = registry.bundles_by_digest(session, digests={incident.bundle_digest}).get(incident.bundle_digest)
    thresholds = thresholds_of(bundle)
    return render(request, "incident.html", status_code=status_code, user=user, now=controller.now(),
                  refresh=10 if incident.state == IncidentState.OPEN and problem is None else None,
                  incident=incident, bundle=bundle, rule=rule, windows=windows[::-1], thresholds=thresholds,
                  chart=drift_chart(incident, windows, thresholds), problem=problem,
                  healing=rollouts.rollouts_naming(session, incident_id=incident.id),
                  may_close=incident.state == IncidentState.OPEN and user.refusal(Role.OPERATOR) is None)


@router.get("/ui/incidents/{incident_id}", response_class=HTMLResponse)
def incident_detail(request: Request, incident_id: str, session: SessionDep, controller: ControllerDep) -> Response:
    user = signed_in(request, session)
    if user is None:
        return to_login(request)
    try:
        incident = incidents.get_incident(session, incident_id=incident_id)
    except NotFoundError as exc:
        return not_found(request, user, exc)
    return _render_detail(request, session, controller, user, incident)


@router.post("/ui/incidents/{incident_id}/close")
def close_incident(request: Request, incident_id: str, controller: ControllerDep,
                   reason: Annotated[str, Form(max_length=500)] = "", csrf_token: CsrfField = "") -> Response:
    """Close an open incident (operator or admin) with a reason; a refusal is shown on the page."""
    user = posted_by(request, controller, csrf_token, f"close of incident {incident_id}")
    if isinstance(user, Response):
        return user
    try:
        with controller.session() as session:
            incidents.get_incident(session, incident_id=incident_id)
            if not reason.strip():
                raise InvalidRequestError("say why you close it", where="reason",
                                          hint="the reason goes into the incident and the audit log")
            incidents.close_incident(session, incident_id=incident_id, actor=user.actor, reason=reason.strip(),
                                     now=controller.now())
    except NotFoundError as exc:
        return not_found(request, user, exc)
    except (ConflictError, InvalidRequestError) as exc:
        with controller.session() as session:
            incident = incidents.get_incident(session, incident_id=incident_id)
            return _render_detail(request, session, controller, user, incident, problem=exc,
                                  status_code=409 if isinstance(exc, ConflictError) else 400)
    log.info("incident %s closed from the UI by %s", incident_id, user.actor)
    return RedirectResponse(f"{base_path(request)}/ui/incidents/{quote(incident_id)}", status_code=303)
