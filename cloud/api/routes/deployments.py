"""Deployments: create (signed orders go out at once), list, show with per-device progress, cancel."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query
from sqlmodel import Session

from edgefleet.cloud.api.params import DeviceIdPath, IdPath
from edgefleet.cloud.api.schemas import BundleOut, DeploymentCreate, DeploymentDetail, DeploymentOut, TargetOut
from edgefleet.cloud.deps import ControllerDep, OperatorDep, SessionDep, ViewerDep
from edgefleet.cloud.services import deployments, registry
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
