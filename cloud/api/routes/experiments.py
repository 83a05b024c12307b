"""A/B experiments: create (a cohort split between two bundles for a duration), list, show with
devices and results, stop, and promote the winner to a rollout (docs/experiments.md). The reconciler
follows the installs and finishes them when their duration is over."""

from __future__ import annotations

from collections import Counter
from typing import Annotated

from fastapi import APIRouter, Query
from sqlmodel import Session

from edgefleet.cloud.api.params import IdPath
from edgefleet.cloud.api.schemas import (
    ExperimentAction,
    ExperimentCreate,
    ExperimentDetail,
    ExperimentDeviceOut,
    ExperimentOut,
    ExperimentPromote,
    ExperimentResultsOut,
)
from edgefleet.cloud.deps import ControllerDep, OperatorDep, SessionDep, ViewerDep
from edgefleet.cloud.services import deployments, experiments, registry
from edgefleet.cloud.services.rollouts.policy import Selector
from edgefleet.cloud.store.tables import Experiment, ExperimentDevice
from edgefleet.cloud.vocabulary import Arm, ExperimentState

api = APIRouter(prefix="/api/v1")


def _out(session: Session, experiment: Experiment, rows: list[ExperimentDevice]) -> dict[str, object]:
    bundles = registry.bundles_by_id(session, ids={experiment.bundle_a_id, experiment.bundle_b_id})
    labels = {i: deployments.bundle_label(b) for i, b in bundles.items()}
    return experiment.model_dump() | {
        "bundle_a_label": labels.get(experiment.bundle_a_id, ""),
        "bundle_b_label": labels.get(experiment.bundle_b_id, ""),
        "target": Selector.model_validate(experiment.selector).describe(),
        "devices": {str(arm): dict(Counter(r.state for r in rows if r.arm == arm)) for arm in Arm},
        "skipped": sum(r.arm is None for r in rows)}


def experiment_detail(session: Session, experiment: Experiment) -> ExperimentDetail:
    rows = experiments.devices_of(session, experiment_id=experiment.id)
    return ExperimentDetail.model_validate(_out(session, experiment, rows) | {
        "device_rows": [ExperimentDeviceOut.model_validate(r) for r in rows],
        "results": ExperimentResultsOut.model_validate(experiments.results(session, experiment))})


def _detail(controller: ControllerDep, experiment_id: str) -> ExperimentDetail:
    with controller.session() as session:
        return experiment_detail(session, experiments.get_experiment(session, experiment_id=experiment_id))


@api.post("/experiments", tags=["experiments"], status_code=201)
def create_experiment(body: ExperimentCreate, controller: ControllerDep, who: OperatorDep) -> ExperimentDetail:
    """Split the devices the selector matches between bundle A (control) and bundle B (treatment) for
    ``duration_s``; every device not on its arm's bundle gets a signed order at once."""
    with controller.session() as session:
        experiment = experiments.create_experiment(
            session, bundle_a_digest=body.bundle_a, bundle_b_digest=body.bundle_b, plan=body,
            timeout_s=controller.settings.deployment_timeout_s, issuer=controller.issuer, actor=who.actor,
            now=controller.now())
        experiment_id = experiment.id
    controller.publish_pending()
    return _detail(controller, experiment_id)


@api.get("/experiments", tags=["experiments"])
def list_experiments(session: SessionDep, _: ViewerDep, state: ExperimentState | None = None,
                     limit: Annotated[int, Query(ge=1, le=1000)] = 100) -> list[ExperimentOut]:
    return [ExperimentOut.model_validate(_out(session, e, experiments.devices_of(session, experiment_id=e.id)))
            for e in experiments.list_experiments(session, state=state, limit=limit)]


@api.get("/experiments/{experiment_id}", tags=["experiments"])
def show_experiment(experiment_id: IdPath, session: SessionDep, _: ViewerDep) -> ExperimentDetail:
    """The experiment, its devices, and its results so far: per metric A, B, B - A with an
    always-valid confidence interval and p-value, and a verdict."""
    return experiment_detail(session, experiments.get_experiment(session, experiment_id=experiment_id))


@api.post("/experiments/{experiment_id}/stop", tags=["experiments"])
def stop_experiment(experiment_id: IdPath, controller: ControllerDep, who: OperatorDep,
                    body: ExperimentAction | None = None) -> ExperimentDetail:
    """End it without a winner: devices keep the bundle they run; orders still out are cancelled."""
    with controller.session() as session:
        experiments.stop_experiment(session, experiment_id=experiment_id, actor=who.actor, now=controller.now(),
                                    issuer=controller.issuer, reason=body.reason if body else "")
    controller.publish_pending()
    return _detail(controller, experiment_id)


@api.post("/experiments/{experiment_id}/promote", tags=["experiments"])
def promote_experiment(experiment_id: IdPath, body: ExperimentPromote, controller: ControllerDep,
                       who: OperatorDep) -> ExperimentDetail:
    """End it with ``arm`` the winner: a rollout of its bundle to the experiment's selector (by the
    ``policy`` or ``template`` given; devices already on it are skipped). Its id is ``rollout_id``."""
    with controller.session() as session:
        experiments.promote_experiment(session, experiment_id=experiment_id, arm=body.arm,
                                       policy=body.resolved_policy(), protected_tags=controller.settings.protected_tags,
                                       actor=who.actor, now=controller.now(), issuer=controller.issuer,
                                       reason=body.reason)
    controller.advance_rollouts()   # the rollout's first orders go out now
    return _detail(controller, experiment_id)
