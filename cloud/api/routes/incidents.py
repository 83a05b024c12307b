"""Drift incidents (docs/incidents.md): list them, show one with the drift series behind it, and an
operator's close with a reason. The controller opens and closes them itself (services/incidents/)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query
from sqlmodel import Session

from edgefleet.cloud.api.params import IdPath
from edgefleet.cloud.api.schemas import (
    IncidentClose,
    IncidentDetail,
    IncidentOut,
    IncidentRolloutOut,
    IncidentRuleOut,
    IncidentWindowOut,
)
from edgefleet.cloud.deps import ControllerDep, OperatorDep, SessionDep, ViewerDep
from edgefleet.cloud.services import deployments, registry
from edgefleet.cloud.services.incidents import service as incidents
from edgefleet.cloud.services.incidents.rule import IncidentRule
from edgefleet.cloud.services.rollouts import service as rollouts
from edgefleet.cloud.store.tables import Incident
from edgefleet.cloud.vocabulary import IncidentState

api = APIRouter(prefix="/api/v1")


def incident_detail(session: Session, incident: Incident, rule: IncidentRule) -> IncidentDetail:
    evidence = incidents.evidence(session, incident, lead_s=rule.cooldown_s)
    healing = rollouts.rollouts_naming(session, incident_id=incident.id)
    labels = {i: deployments.bundle_label(b) for i, b in registry.bundles_by_id(
        session, ids={r.bundle_id for r in healing}).items()}
    return IncidentDetail.model_validate(incident.model_dump() | {
        "rule": IncidentRuleOut.model_validate(rule),
        "evidence": [IncidentWindowOut.model_validate(w) for w in evidence],
        "rollouts": [IncidentRolloutOut(id=r.id, state=r.state, bundle_label=labels.get(r.bundle_id, ""))
                     for r in healing]})


@api.get("/incidents", tags=["incidents"])
def list_incidents(session: SessionDep, _: ViewerDep, state: IncidentState | None = None,
                   device_id: Annotated[str | None, Query(max_length=64)] = None,
                   bundle: Annotated[str | None, Query(max_length=64, pattern=r"^[0-9a-f]+$")] = None,
                   limit: Annotated[int, Query(ge=1, le=1000)] = 100) -> list[IncidentOut]:
    """Newest first. ``device_id``: the incidents that involve the device (its own, and its tags');
    ``bundle``: a bundle digest or a prefix of it."""
    return [IncidentOut.model_validate(i) for i in incidents.list_incidents(
        session, state=state, device_id=device_id, bundle=bundle, limit=limit)]


@api.get("/incidents/{incident_id}", tags=["incidents"])
def show_incident(incident_id: IdPath, session: SessionDep, controller: ControllerDep, _: ViewerDep) -> IncidentDetail:
    incident = incidents.get_incident(session, incident_id=incident_id)
    return incident_detail(session, incident, controller.incident_rules.of(incident.cohort_kind))


@api.post("/incidents/{incident_id}/close", tags=["incidents"])
def close_incident(incident_id: IdPath, body: IncidentClose, controller: ControllerDep,
                   who: OperatorDep) -> IncidentDetail:
    """Close an open incident before its cooldown (e.g. the cause is known and handled). The cohort's
    runs start over: only K new alarm windows open a new incident."""
    with controller.session() as session:
        incident = incidents.close_incident(session, incident_id=incident_id, actor=who.actor, reason=body.reason,
                                            now=controller.now())
        return incident_detail(session, incident, controller.incident_rules.of(incident.cohort_kind))
