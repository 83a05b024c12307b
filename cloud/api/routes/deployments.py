"""Deployments: create (signed orders go out at once), list, show with per-device progress, cancel, retry;
roll back one device, or a cohort (a deployment's devices, or a tag) to the bundles they ran before."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query, Response
from pydantic import BaseModel, ConfigDict, Field
from sqlmodel import Session

from edgefleet.cloud.api.params import DeviceIdPath, IdPath
from edgefleet.cloud.api.schemas import BundleOut, DeploymentCreate, DeploymentDetail, DeploymentOut, TargetOut
from edgefleet.cloud.deps import ControllerDep, OperatorDep, SessionDep, ViewerDep
from edgefleet.cloud.services import cohort_rollback, deployments, registry
from edgefleet.cloud.store.tables import Bundle, Deployment, DeploymentTarget
from edgefleet.cloud.vocabulary import DeploymentStatus

api = APIRouter(prefix="/api/v1")


def _described(deployment: Deployment, bundle: Bundle | None, targets: list[DeploymentTarget]) -> dict[str, Any]:
    return deployment.model_dump() | {"progress": deployments.progress(targets),
                                      "target": deployments.describe_selector(deployment.selector),
                                      "bundle_label": deployments.bundle_label(bundle) if bundle else ""}


def deployment_detail(session: Session, deployment: Deployment) -> DeploymentDetail:
    targets = deployments.targets_of(session, deployment_id=deployment.id)
    bundle = registry.bundles_by_id(session, ids={deployment.bundle_id}).get(deployment.bundle_id)
    return DeploymentDetail.model_validate(_described(deployment, bundle, targets) | {
        "bundle": BundleOut.model_validate(bundle), "targets": [TargetOut.model_validate(t) for t in targets]})


@api.post("/deployments", tags=["deployments"], status_code=201)
def create_deployment(body: DeploymentCreate, controller: ControllerDep, who: OperatorDep) -> DeploymentDetail:
    """Deploy a bundle to ``device_ids``, a ``tag`` or ``all`` compatible devices. One signed order
    per device is stored and published on its cmd topic right away (and retried by the reconciler)."""
    with controller.session() as session:
        deployment = deployments.create_deployment(
            session, bundle_digest=body.bundle, issuer=controller.issuer, actor=who.actor, now=controller.now(),
            timeout_s=body.timeout_s or controller.settings.deployment_timeout_s, device_ids=body.device_ids,
            tag=body.tag, all_devices=body.all, note=body.note, health_check=body.health_check)
        deployment_id = deployment.id
    controller.publish_pending()
    with controller.session() as session:
        return deployment_detail(session, deployments.get_deployment(session, deployment_id=deployment_id))


@api.get("/deployments", tags=["deployments"])
def list_deployments(session: SessionDep, _: ViewerDep, status: DeploymentStatus | None = None,
                     limit: Annotated[int, Query(ge=1, le=1000)] = 100) -> list[DeploymentOut]:
    items = deployments.list_deployments(session, status=status, limit=limit)
    targets = deployments.targets_by_deployment(session, deployment_ids=[d.id for d in items])
    bundles = registry.bundles_by_id(session, ids={d.bundle_id for d in items})
    return [DeploymentOut.model_validate(_described(d, bundles.get(d.bundle_id), targets[d.id])) for d in items]


@api.get("/deployments/{deployment_id}", tags=["deployments"])
def show_deployment(deployment_id: IdPath, session: SessionDep, _: ViewerDep) -> DeploymentDetail:
    return deployment_detail(session, deployments.get_deployment(session, deployment_id=deployment_id))


@api.post("/deployments/{deployment_id}/cancel", tags=["deployments"])
def cancel_deployment(deployment_id: IdPath, controller: ControllerDep, who: OperatorDep) -> DeploymentDetail:
    """Send signed cancel orders to devices not yet finished and mark them cancelled."""
    with controller.session() as session:
        deployments.cancel_deployment(session, deployment_id=deployment_id, issuer=controller.issuer,
                                      actor=who.actor, now=controller.now())
    controller.publish_pending()
    with controller.session() as session:
        return deployment_detail(session, deployments.get_deployment(session, deployment_id=deployment_id))


@api.post("/deployments/{deployment_id}/retry", tags=["deployments"])
def retry_deployment(deployment_id: IdPath, controller: ControllerDep, who: OperatorDep) -> DeploymentDetail:
    """Send the install order again, newly signed, to the devices whose order failed, was rolled
    back or refused (409 when there is none, or the deployment was cancelled or a rollout owns it)."""
    with controller.session() as session:
        deployments.retry_failed(session, deployment_id=deployment_id, issuer=controller.issuer, actor=who.actor,
                                 now=controller.now())
    controller.publish_pending()
    with controller.session() as session:
        return deployment_detail(session, deployments.get_deployment(session, deployment_id=deployment_id))


@api.post("/devices/{device_id}/rollback", tags=["deployments"], status_code=201)
def rollback_device(device_id: DeviceIdPath, controller: ControllerDep, who: OperatorDep) -> DeploymentDetail:
    """Deploy the bundle the device ran before its current one to it (409 when it never ran another)."""
    with controller.session() as session:
        deployment = deployments.rollback_device(session, device_id=device_id, issuer=controller.issuer,
                                                 actor=who.actor, now=controller.now(),
                                                 timeout_s=controller.settings.deployment_timeout_s)
        deployment_id = deployment.id
    controller.publish_pending()
    with controller.session() as session:
        return deployment_detail(session, deployments.get_deployment(session, deployment_id=deployment_id))


class CohortRollbackBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    tag: str = Field(min_length=1, max_length=64)
    """The cohort: every device with this tag."""
    dry_run: bool = False
    """Only say what would be ordered (200); nothing is stored."""


class RollbackGroupOut(BaseModel):
    bundle: str
    bundle_label: str
    device_ids: list[str]
    deployment: str | None
    """The deployment that holds the group's orders (``None`` in a dry run)."""


class SkippedOut(BaseModel):
    device_id: str
    reason: str


class CohortRollbackOut(BaseModel):
    cohort: str
    matching: int
    """Devices in the cohort."""
    devices: int
    """Devices ordered back (or that would be, in a dry run)."""
    groups: list[RollbackGroupOut]
    skipped: list[SkippedOut]
    dry_run: bool


def _cohort_out(plan: cohort_rollback.CohortPlan, made: list[Deployment], *, dry_run: bool) -> CohortRollbackOut:
    ids: list[str | None] = [d.id for d in made] if made else [None] * len(plan.groups)
    return CohortRollbackOut(
        cohort=plan.cohort, matching=plan.matching, devices=plan.devices, dry_run=dry_run,
        skipped=[SkippedOut(**s) for s in plan.skipped],
        groups=[RollbackGroupOut(bundle=g.bundle.digest, bundle_label=deployments.bundle_label(g.bundle),
                                 device_ids=g.device_ids, deployment=i) for g, i in zip(plan.groups, ids, strict=True)])


def _roll_back_cohort(controller: ControllerDep, who: OperatorDep, response: Response, *, dry_run: bool,
                      deployment_id: str | None = None, tag: str | None = None) -> CohortRollbackOut:
    with controller.session() as session:
        if dry_run:
            plan = cohort_rollback.plan_cohort_rollback(session, deployment_id=deployment_id, tag=tag)
            return _cohort_out(plan, [], dry_run=True)
        done = cohort_rollback.rollback_cohort(session, issuer=controller.issuer, actor=who.actor,
                                               now=controller.now(), timeout_s=controller.settings.deployment_timeout_s,
                                               deployment_id=deployment_id, tag=tag)
        out = _cohort_out(done.plan, done.deployments, dry_run=False)
    controller.publish_pending()
    response.status_code = 201
    return out


@api.post("/deployments/{deployment_id}/rollback", tags=["deployments"],
          responses={201: {"description": "Rolled back: the deployments made, the devices skipped"}})
def rollback_deployment(deployment_id: IdPath, controller: ControllerDep, who: OperatorDep, response: Response,
                        dry_run: bool = False) -> CohortRollbackOut:
    """Roll every device of the deployment that still runs its bundle back to the bundle it ran before
    (per device, as ``POST /devices/{id}/rollback``): one deployment per bundle (201). Devices that
    cannot be are listed in ``skipped`` with the reason; none can: 409. ``dry_run``: only the plan (200)."""
    return _roll_back_cohort(controller, who, response, dry_run=dry_run, deployment_id=deployment_id)


@api.post("/devices/rollback", tags=["deployments"],
          responses={201: {"description": "Rolled back: the deployments made, the devices skipped"}})
def rollback_tag(body: CohortRollbackBody, controller: ControllerDep, who: OperatorDep,
                 response: Response) -> CohortRollbackOut:
    """Roll every device with ``tag`` back to the bundle it ran before, as
    ``POST /deployments/{id}/rollback`` does for a deployment's devices."""
    return _roll_back_cohort(controller, who, response, dry_run=body.dry_run, tag=body.tag)
