"""Staged rollouts: create (waits for approval when it reaches protected devices), list, show with
stages, gate verdicts and devices, and the people's actions: approve, pause, resume, promote, abort,
cancel. The reconciler advances them; every action here also advances at once."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from typing import Annotated

from fastapi import APIRouter, Query
from sqlmodel import Session

from edgefleet.cloud.api.params import IdPath
from edgefleet.cloud.api.schemas import (
    RolloutAction,
    RolloutCreate,
    RolloutDetail,
    RolloutDeviceOut,
    RolloutOut,
    RolloutStageOut,
)
from edgefleet.cloud.deps import ControllerDep, OperatorDep, SessionDep, ViewerDep
from edgefleet.cloud.services import deployments, registry
from edgefleet.cloud.services.rollouts import service as rollouts
from edgefleet.cloud.services.rollouts.policy import TEMPLATES, Selector
from edgefleet.cloud.store.tables import Rollout, RolloutDevice
from edgefleet.cloud.vocabulary import RolloutState

api = APIRouter(prefix="/api/v1")


def _out(rollout: Rollout, rows: list[RolloutDevice], label: str) -> dict[str, object]:
    return rollout.model_dump() | {"devices": dict(Counter(r.state for r in rows)), "bundle_label": label,
                                   "target": Selector.model_validate(rollout.selector).describe()}


def rollout_detail(session: Session, rollout: Rollout) -> RolloutDetail:
    rows = rollouts.devices_of(session, rollout_id=rollout.id)
    bundle = registry.bundles_by_id(session, ids={rollout.bundle_id}).get(rollout.bundle_id)
    stages = [RolloutStageOut.model_validate(s.model_dump() | {"devices": dict(Counter(
        r.state for r in rows if r.stage_index == s.index))})
        for s in rollouts.stages_of(session, rollout_id=rollout.id)]
    return RolloutDetail.model_validate(_out(rollout, rows, deployments.bundle_label(bundle) if bundle else "") | {
        "stages": stages, "device_rows": [RolloutDeviceOut.model_validate(r) for r in rows]})


def _act(controller: ControllerDep, rollout_id: str, action: Callable[[Session], object]) -> RolloutDetail:
    with controller.session() as session:
        action(session)
    controller.advance_rollouts()
    with controller.session() as session:
        return rollout_detail(session, rollouts.get_rollout(session, rollout_id=rollout_id))


@api.post("/rollouts", tags=["rollouts"], status_code=201)
def create_rollout(body: RolloutCreate, controller: ControllerDep, who: OperatorDep) -> RolloutDetail:
    """Roll a bundle out in stages to the devices the selector matches (docs/rollouts.md). Reaching a
    device with a protected tag (settings: ``protected_tags``), it waits for approval by someone else.
    Naming drift ``incidents``: a rollout back to health, their drifted devices first (§4)."""
    with controller.session() as session:
        rollout = rollouts.create_rollout(session, bundle_digest=body.bundle, selector=body.selector,
                                          policy=body.resolved_policy(),
                                          protected_tags=controller.settings.protected_tags, actor=who.actor,
                                          now=controller.now(), note=body.note, incidents=body.incidents)
        rollout_id = rollout.id
    return _act(controller, rollout_id, lambda session: None)


@api.get("/rollouts/templates", tags=["rollouts"])
def policy_templates(_: ViewerDep) -> dict[str, dict[str, object]]:
    """The named policies a rollout may start from: ``{name: {"summary": ..., "policy": ...}}``."""
    return {name: {"summary": summary, "policy": policy.model_dump(mode="json")}
            for name, (summary, policy) in TEMPLATES.items()}


@api.get("/rollouts", tags=["rollouts"])
def list_rollouts(session: SessionDep, _: ViewerDep, state: RolloutState | None = None,
                  limit: Annotated[int, Query(ge=1, le=1000)] = 100) -> list[RolloutOut]:
    items = rollouts.list_rollouts(session, state=state, limit=limit)
    bundles = registry.bundles_by_id(session, ids={r.bundle_id for r in items})
    return [RolloutOut.model_validate(_out(r, rollouts.devices_of(session, rollout_id=r.id),
                                           deployments.bundle_label(bundles[r.bundle_id])
                                           if r.bundle_id in bundles else "")) for r in items]


@api.get("/rollouts/{rollout_id}", tags=["rollouts"])
def show_rollout(rollout_id: IdPath, session: SessionDep, _: ViewerDep) -> RolloutDetail:
    return rollout_detail(session, rollouts.get_rollout(session, rollout_id=rollout_id))


ACTIONS: dict[str, tuple[Callable[..., object], str]] = {
    "approve": (rollouts.approve_rollout, "Let a rollout to protected devices start; the approver must not be its "
                                          "creator."),
    "pause": (rollouts.pause_rollout, "Stop giving out orders until resumed."),
    "resume": (rollouts.resume_rollout, "Carry on where it paused."),
    "promote": (rollouts.promote_rollout, "Take the stage it paused in as passed and go on with the next."),
    "abort": (rollouts.abort_rollout, "Stop, and (as the policy says) roll every device that took the bundle back "
                                      "to the one it ran before."),
    "cancel": (rollouts.cancel_rollout, "Stop giving out orders; devices that took the bundle keep it."),
}
"""The people's actions on a rollout: each takes an optional ``{"reason": ...}`` kept in the audit log."""
NEEDS_ISSUER = {"abort", "cancel"}
NEEDS_ROLE = {"approve"}
"""Actions whose rule looks at the caller's role too (approval: approver or admin)."""


def _action_route(name: str, act: Callable[..., object], doc: str) -> None:
    def route(rollout_id: IdPath, controller: ControllerDep, who: OperatorDep,
              body: RolloutAction | None = None) -> RolloutDetail:
        extra: dict[str, object] = {"issuer": controller.issuer} if name in NEEDS_ISSUER else {}
        if name in NEEDS_ROLE:
            extra["role"] = who.role
        return _act(controller, rollout_id, lambda s: act(s, rollout_id=rollout_id, actor=who.actor,
                                                          now=controller.now(), reason=body.reason if body else "",
                                                          **extra))

    route.__doc__ = doc
    api.post(f"/rollouts/{{rollout_id}}/{name}", tags=["rollouts"], name=f"{name}_rollout")(route)


for _name, (_act_fn, _doc) in ACTIONS.items():
    _action_route(_name, _act_fn, _doc)
