"""Roll a cohort back: every device of a tag, or of a deployment, to the bundle it ran before.

Per device the bundle is the one a single-device rollback would choose
(:func:`edgefleet.cloud.services.deployments.previous_bundle`: the newest other bundle a deployment
committed on it), found for the whole cohort with a few queries. Devices are grouped by that bundle;
each group becomes one deployment (``deployments.create_deployment`` with the group's device ids, which
signs the orders and writes its own ``deployment.create`` entry), and the rollback itself is one
``cohort.rollback`` audit entry. A device that cannot be rolled back -- it never committed another
bundle, runs no bundle, does not run the deployment's bundle any more, is decommissioned or cannot run
its old bundle -- is listed in ``skipped`` with the reason, never dropped silently.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from sqlmodel import Session, col, select

from edgefleet.cloud.services import audit, deployments, devices, registry
from edgefleet.cloud.services.orders import OrderIssuer
from edgefleet.cloud.store.tables import Bundle, Deployment, DeploymentTarget, Device
from edgefleet.protocol.errors import ConflictError, InvalidRequestError, NotFoundError
from edgefleet.protocol.manifest import BundleManifest
from edgefleet.protocol.vocabulary import Outcome

log = logging.getLogger(__name__)

CHUNK = 500
"""Device ids per ``IN (...)`` query (well under SQLite's and PostgreSQL's parameter limits)."""


@dataclass(frozen=True)
class RollbackGroup:
    """The devices of a cohort that go back to one bundle."""

    bundle: Bundle
    device_ids: list[str]


@dataclass(frozen=True)
class CohortPlan:
    """What a cohort rollback would order (nothing stored): the groups by bundle and the skipped devices."""

    cohort: str
    """The cohort in words: ``tag lab``, ``deployment dep-...``."""
    selector: dict[str, str]
    """``{"tag": ...}`` or ``{"deployment": ...}``."""
    matching: int
    groups: list[RollbackGroup]
    skipped: list[dict[str, str]]

    @property
    def devices(self) -> int:
        return sum(len(g.device_ids) for g in self.groups)

    @property
    def audit_target(self) -> str:
        kind, value = next(iter(self.selector.items()))
        return f"{kind}:{value}"


@dataclass(frozen=True)
class CohortRollback:
    plan: CohortPlan
    deployments: list[Deployment] = field(default_factory=list)


def _chunks(ids: list[str]) -> list[list[str]]:
    return [ids[i:i + CHUNK] for i in range(0, len(ids), CHUNK)]


def previous_bundles(session: Session, *, cohort: list[Device]) -> dict[str, Bundle | None]:
    """For each device, what :func:`deployments.previous_bundle` returns, in a few queries."""
    current = {d.id: (d.installed or {}).get("digest") for d in cohort}
    committed: list[DeploymentTarget] = []
    for ids in _chunks(list(current)):
        committed += session.exec(select(DeploymentTarget).where(
            col(DeploymentTarget.device_id).in_(ids), DeploymentTarget.outcome == Outcome.COMMITTED)).all()
    committed.sort(key=lambda t: (t.updated_at, t.sequence), reverse=True)   # as previous_bundle orders them
    found = deployments.deployments_by_id(session, ids={t.deployment_id for t in committed})
    chosen: dict[str, int] = {}
    for target in committed:
        deployment = found.get(target.deployment_id)
        if target.device_id in chosen or deployment is None or deployment.bundle_digest == current[target.device_id]:
            continue
        chosen[target.device_id] = deployment.bundle_id
    bundles = registry.bundles_by_id(session, ids=set(chosen.values()))
    return {device_id: bundles.get(chosen[device_id]) if device_id in chosen else None for device_id in current}


def _cohort(session: Session, *, deployment_id: str | None, tag: str | None
            ) -> tuple[list[Device], dict[str, str], str, str | None]:
    """The cohort's devices, its selector, its name in words, and the bundle digest its devices must run."""
    if (deployment_id is None) == (tag is None):
        raise InvalidRequestError("give exactly one of a deployment or a tag", where="cohort")
    if tag is not None:
        if not tag.strip():
            raise InvalidRequestError("the tag is empty", where="tag", hint="give the tag of the devices to roll back")
        members = devices.list_devices(session, tag=tag)
        if not members:
            raise NotFoundError(f"no device has the tag {tag!r}", where="tag")
        return members, {"tag": tag}, f"tag {tag}", None
    assert deployment_id is not None
    deployment = deployments.get_deployment(session, deployment_id=deployment_id)
    owner = deployments.owned_by_rollout(deployment) or deployments.owned_by_experiment(deployment)
    if owner:
        raise ConflictError(f"deployment {deployment_id} belongs to {owner}", where="deployment_id",
                            hint="abort the rollout (it rolls its devices back), or roll back by tag")
    ids = list(dict.fromkeys(t.device_id for t in deployments.targets_of(session, deployment_id=deployment_id)))
    members = [d for chunk in _chunks(ids) for d in session.exec(select(Device).where(col(Device.id).in_(chunk)))]
    members.sort(key=lambda d: d.id)
    return members, {"deployment": deployment_id}, f"deployment {deployment_id}", deployment.bundle_digest


def plan_cohort_rollback(session: Session, *, deployment_id: str | None = None, tag: str | None = None
                         ) -> CohortPlan:
    """Which bundle each device of the cohort (a tag, or the devices of a deployment that still run its
    bundle) would go back to, grouped by bundle, and which devices are skipped and why."""
    members, selector, cohort, must_run = _cohort(session, deployment_id=deployment_id, tag=tag)
    previous = previous_bundles(session, cohort=members)
    groups: dict[str, list[str]] = {}
    by_digest: dict[str, Bundle] = {}
    skipped: list[dict[str, str]] = []
    for device in members:
        running = (device.installed or {}).get("digest")
        bundle = previous.get(device.id)
        if running is None:
            reason: str | None = "runs no bundle"
        elif must_run is not None and running != must_run:
            reason = "does not run this deployment's bundle"
        elif bundle is None:
            reason = "never committed another bundle to roll back to"
        else:
            reason = deployments.incompatibility(BundleManifest.model_validate(bundle.manifest), device)
        if reason is not None or bundle is None:
            skipped.append({"device_id": device.id, "reason": reason or "no bundle"})
            continue
        by_digest[bundle.digest] = bundle
        groups.setdefault(bundle.digest, []).append(device.id)
    ordered = sorted(groups.items(), key=lambda item: (-len(item[1]), item[0]))
    return CohortPlan(cohort=cohort, selector=selector, matching=len(members), skipped=skipped,
                      groups=[RollbackGroup(bundle=by_digest[digest], device_ids=ids) for digest, ids in ordered])


def rollback_cohort(session: Session, *, issuer: OrderIssuer, actor: str, now: float, timeout_s: float,
                    deployment_id: str | None = None, tag: str | None = None) -> CohortRollback:
    """Order every device of the cohort that can be rolled back back to its previous bundle: one
    deployment per bundle. Refused (:class:`ConflictError`, nothing stored) when no device can."""
    plan = plan_cohort_rollback(session, deployment_id=deployment_id, tag=tag)
    if not plan.groups:
        first = "; ".join(f"{s['device_id']}: {s['reason']}" for s in plan.skipped[:5])
        raise ConflictError(f"no device of {plan.cohort} can be rolled back", where="cohort",
                            hint=f"skipped: {first}{' ...' if len(plan.skipped) > 5 else ''}")
    made: list[Deployment] = []
    for group in plan.groups:
        made.append(deployments.create_deployment(
            session, bundle_digest=group.bundle.digest, issuer=issuer, actor=actor, now=now, timeout_s=timeout_s,
            device_ids=group.device_ids, note=f"roll back {plan.cohort} to {deployments.bundle_label(group.bundle)}"))
    details: dict[str, Any] = {
        "groups": [{"bundle": g.bundle.digest, "devices": g.device_ids, "deployment": d.id}
                   for g, d in zip(plan.groups, made, strict=True)],
        "skipped": plan.skipped}
    audit.record(session, actor=actor, action="cohort.rollback", target=plan.audit_target, details=details, now=now)
    log.info("%s rolled back by %s: %d device(s) in %d deployment(s), %d skipped", plan.cohort, actor,
             plan.devices, len(made), len(plan.skipped))
    return CohortRollback(plan=plan, deployments=made)
