"""Staged rollouts over stored state: create, approve, pause, resume, promote, abort, cancel, and
the one idempotent sweep :func:`advance_rollouts` that the reconciler runs.

A rollout's orders are targets of one deployment of its own, so signing, publishing, status
reports, timeouts and re-sending on reconnect are the deployments' (:mod:`..deployments`). This
module decides which device gets an order when: stage by stage, at the policy's pace, inside its
maintenance windows, judged by the gates, stopped by the abort criteria, rolled back on abort.
Each pass only moves state forward from what is stored, so a controller restart resumes where it
stopped and a second pass changes nothing.
"""

from __future__ import annotations

import logging
import math
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from pydantic import ValidationError
from sqlalchemy import String, cast
from sqlmodel import Session, col, select

from edgefleet.cloud.services import audit, deployments, devices, registry, webhooks
from edgefleet.cloud.services.auth import PermissionDeniedError, rank
from edgefleet.cloud.services.orders import OrderIssuer
from edgefleet.cloud.services.rollouts import gates, pacing
from edgefleet.cloud.services.rollouts.policy import (
    AbortAction,
    Baseline,
    FailureKind,
    Gates,
    OnAbort,
    OnSuccess,
    RolloutPolicy,
    Selector,
    StageKind,
    fill_devices,
)
from edgefleet.cloud.services.rollouts.states import (
    DEVICE_TRANSITIONS,
    EXECUTED_STATES,
    OPEN_ROLLOUT_STATES,
    ROLLOUT_TRANSITIONS,
    STAGE_TRANSITIONS,
    DeviceEvent,
    RolloutEvent,
    StageEvent,
)
from edgefleet.cloud.services.transitions import advance
from edgefleet.cloud.store.engine import OpenSession
from edgefleet.cloud.store.tables import (
    Bundle,
    Deployment,
    DeploymentTarget,
    Device,
    Incident,
    Rollout,
    RolloutDevice,
    RolloutStage,
    TelemetryRecord,
    row_id,
)
from edgefleet.cloud.vocabulary import DeploymentStatus, DeviceState, Role, RolloutState, StageState, WebhookEvent
from edgefleet.protocol.errors import ConflictError, InvalidRequestError, NotFoundError
from edgefleet.protocol.manifest import BundleManifest
from edgefleet.protocol.messages import histogram_quantile
from edgefleet.protocol.vocabulary import Outcome, Reason

log = logging.getLogger(__name__)


_FAILURE_OF = {DeviceState.FAILED: FailureKind.FAILED, DeviceState.TIMED_OUT: FailureKind.TIMED_OUT,
               DeviceState.ROLLED_BACK: FailureKind.ROLLED_BACK, DeviceState.REJECTED: FailureKind.REJECTED}


# ------------------------------------------------------------------------------------ creating

def create_rollout(session: Session, *, bundle_digest: str, selector: Selector, policy: RolloutPolicy,
                   protected_tags: Iterable[str], actor: str, now: float, note: str = "",
                   incidents: Sequence[str] = ()) -> Rollout:
    """A rollout of the bundle to the devices the selector matches. Incompatible devices and those
    already on the bundle are skipped. It runs at once, unless a device carries a protected tag:
    then it waits for approval by someone other than ``actor``. Naming drift ``incidents`` makes it
    a rollout back to health (docs/rollouts.md §4, :func:`_heal`)."""
    bundle = registry.get_bundle(session, digest=bundle_digest)
    manifest = BundleManifest.model_validate(bundle.manifest)
    rollout_id = f"ro-{uuid.uuid4().hex[:12]}"
    named, drifted, selector, policy = _heal(session, bundle=bundle, incident_ids=incidents, selector=selector,
                                             policy=policy)
    matched = [d for d in devices.list_devices(session) if selector.matches(d.id, d.tags)]
    if not matched:
        raise ConflictError("no device matches the selector", where="selector", hint=selector.describe())
    outside = sorted(set(drifted) - {d.id for d in matched})
    if outside:
        raise ConflictError(f"the selector leaves out drifted device(s) of the incidents: {', '.join(outside)}",
                            where="selector", hint="widen the selector, or leave it out: the incidents' cohort")
    note = note or (f"back to health after {', '.join(named)}" if named else "")
    protected = sorted({t for d in matched for t in d.tags} & set(protected_tags))
    deployment = Deployment(id=f"dep-{rollout_id}", bundle_id=row_id(bundle), bundle_digest=bundle.digest,
                            selector={"rollout": rollout_id}, note=note, created_at=now, created_by=actor,
                            timeout_s=policy.device_timeout_s)
    state = RolloutState.WAITING_APPROVAL if protected else RolloutState.RUNNING
    rollout = Rollout(id=rollout_id, bundle_id=row_id(bundle), bundle_digest=bundle.digest,
                      deployment_id=deployment.id, selector=selector.model_dump(mode="json"),
                      policy=policy.model_dump(mode="json"), state=state, note=note, protected_tags=protected,
                      incidents=named, created_at=now, created_by=actor, started_at=None if protected else now,
                      updated_at=now,
                      reason=f"waiting for approval: devices tagged {', '.join(protected)}" if protected else None)
    session.add(deployment)
    session.add(rollout)
    session.flush()
    for index, stage in enumerate(policy.stages):
        session.add(RolloutStage(rollout_id=rollout_id, index=index, name=stage.name, state=StageState.PENDING))
    for device in matched:
        _add_device(session, rollout=rollout, device=device, manifest=manifest, bundle=bundle, now=now)
    audit.record(session, actor=actor, action="rollout.create", target=f"rollout:{rollout_id}",
                 details={"bundle": bundle.digest, "selector": rollout.selector, "devices": len(matched),
                          "protected_tags": protected, "state": state, "incidents": named}, now=now)
    log.info("rollout %s: bundle %s %s to %d device(s), %s", rollout_id, bundle.name, bundle.version, len(matched),
             state)
    return rollout


def _heal(session: Session, *, bundle: Bundle, incident_ids: Sequence[str], selector: Selector,
          policy: RolloutPolicy) -> tuple[list[str], list[str], Selector, RolloutPolicy]:
    """A rollout back to health: the incidents it names (ids, each once), their drifted devices (the
    union of theirs, sorted), the selector (an empty one becomes the devices that run any of the
    incidents' bundles, plus the drifted ones) and the policy, whose ``devices`` stages that list
    none take the drifted devices. Without incidents, the selector and policy as given."""
    named: list[Incident] = []
    for incident_id in dict.fromkeys(incident_ids):
        incident = session.get(Incident, incident_id)
        if incident is None:
            raise NotFoundError(f"no incident {incident_id!r}", where="incidents",
                                hint="list them with `edgefleet incidents list`")
        if incident.bundle_digest == bundle.digest:
            raise ConflictError(f"{incident.id} is about this bundle; roll out the bundle that fixes it",
                                where="incidents")
        named.append(incident)
    unlisted = policy.unlisted_devices()
    if not named:
        if unlisted:
            raise InvalidRequestError(f"stage {policy.stages[unlisted[0]].name!r} selects devices but lists none",
                                      where=f"policy.stages.{unlisted[0]}.devices",
                                      hint="give `incidents` (their drifted devices are the stage's) or list the "
                                           "devices")
        return [], [], selector, policy
    drifted = sorted({d for i in named for d in i.devices})
    if not drifted:
        raise ConflictError(f"the incidents name no device ({', '.join(i.id for i in named)})", where="incidents")
    if selector == Selector(dynamic=selector.dynamic):   # empty: every device
        failing = {i.bundle_digest for i in named}
        cohort = {d.id for d in devices.list_devices(session) if (d.installed or {}).get("digest") in failing}
        try:
            selector = Selector(device_ids=sorted(cohort | set(drifted)), dynamic=selector.dynamic)
        except ValidationError:
            raise ConflictError(f"{len(cohort | set(drifted))} devices run the incidents' bundles: more than a "
                                "selector lists", where="selector", hint="give a selector (e.g. a tag)") from None
    return [i.id for i in named], drifted, selector, fill_devices(policy, drifted)


def skip_reason(manifest: BundleManifest, device: Device, bundle: Bundle) -> str | None:
    """Why a matching device gets no order of the rollout (``None``: it gets one)."""
    reason = deployments.incompatibility(manifest, device)
    if reason is None and (device.installed or {}).get("digest") == bundle.digest:
        reason = "already runs this bundle"
    return reason


def _add_device(session: Session, *, rollout: Rollout, device: Device, manifest: BundleManifest, bundle: Bundle,
                now: float, stage_index: int | None = None) -> RolloutDevice:
    installed = (device.installed or {}).get("digest")
    reason = skip_reason(manifest, device, bundle)
    row = RolloutDevice(rollout_id=rollout.id, device_id=device.id, state=DeviceState.QUEUED,
                        previous_digest=installed, stage_index=stage_index, updated_at=now)
    if reason is not None:
        row.state, row.reason = DeviceState.SKIPPED, reason
    session.add(row)
    return row


@dataclass(frozen=True)
class StagePlan:
    """How many devices a stage of a rollout not yet created would take."""

    name: str
    devices: int
    exact: bool
    """False when an earlier stage picks devices at random (a count or a percent) and this one takes
    devices by tag or id, or follows such a stage: which ones the random pick takes is decided with
    the rollout's id, so ``devices`` is one possible outcome."""


@dataclass(frozen=True)
class RolloutPlan:
    """What :func:`create_rollout` would do with a bundle, a selector and a policy; nothing stored."""

    matching: int
    chosen: list[str]
    """The matching devices that would get an order, in id order."""
    skipped: list[dict[str, str]]
    """The matching devices that would not (``device_id``, ``reason``)."""
    protected_tags: list[str]
    """The protected tags among the matching devices: the rollout would wait for approval."""
    stages: list[StagePlan]


def plan_rollout(session: Session, *, bundle_digest: str, selector: Selector, policy: RolloutPolicy,
                 protected_tags: Iterable[str]) -> RolloutPlan:
    """The devices a rollout would match, order and skip, and how many each stage would take if every
    order went out now. Refuses what :func:`create_rollout` refuses about the bundle and the policy
    (not an empty match: the plan says 0)."""
    bundle = registry.get_bundle(session, digest=bundle_digest)
    manifest = BundleManifest.model_validate(bundle.manifest)
    _heal(session, bundle=bundle, incident_ids=(), selector=selector, policy=policy)
    matched = [d for d in devices.list_devices(session) if selector.matches(d.id, d.tags)]
    chosen: list[Device] = []
    skipped: list[dict[str, str]] = []
    for device in matched:
        reason = skip_reason(manifest, device, bundle)
        if reason is None:
            chosen.append(device)
        else:
            skipped.append({"device_id": device.id, "reason": reason})
    tags = {d.id: d.tags for d in chosen}
    remaining = [(d, tags[d]) for d in pacing.rollout_order("plan", list(tags))]
    stages: list[StagePlan] = []
    picked_at_random, exact = False, True
    for spec in policy.stages:
        exact = exact and not (picked_at_random and spec.select in (StageKind.TAG, StageKind.DEVICES))
        taken = set(pacing.stage_size(spec, remaining))
        picked_at_random = picked_at_random or (spec.select in (StageKind.COUNT, StageKind.PERCENT) and bool(taken))
        remaining = [(d, t) for d, t in remaining if d not in taken]
        stages.append(StagePlan(spec.name, len(taken), exact))
    protected = sorted({t for d in matched for t in d.tags} & set(protected_tags))
    return RolloutPlan(matching=len(matched), chosen=[d.id for d in chosen], skipped=skipped,
                       protected_tags=protected, stages=stages)


# ------------------------------------------------------------------------------------ reading

def get_rollout(session: Session, *, rollout_id: str) -> Rollout:
    rollout = session.get(Rollout, rollout_id)
    if rollout is None:
        raise NotFoundError(f"no rollout {rollout_id!r}", where="rollout_id")
    return rollout


def list_rollouts(session: Session, *, state: RolloutState | None = None, limit: int = 100) -> list[Rollout]:
    query = select(Rollout).order_by(col(Rollout.created_at).desc()).limit(limit)
    if state is not None:
        query = query.where(Rollout.state == state)
    return list(session.exec(query))


def rollouts_naming(session: Session, *, incident_id: str, limit: int = 100) -> list[Rollout]:
    """The rollouts that name the drift incident (to heal it), newest first."""
    query = select(Rollout).where(cast(col(Rollout.incidents), String).contains(f'"{incident_id}"', autoescape=True)) \
        .order_by(col(Rollout.created_at).desc()).limit(limit)
    return [r for r in session.exec(query) if incident_id in r.incidents]


def stages_of(session: Session, *, rollout_id: str) -> list[RolloutStage]:
    return list(session.exec(select(RolloutStage).where(RolloutStage.rollout_id == rollout_id)
                             .order_by(col(RolloutStage.index))))


def devices_of(session: Session, *, rollout_id: str) -> list[RolloutDevice]:
    return list(session.exec(select(RolloutDevice).where(RolloutDevice.rollout_id == rollout_id)
                             .order_by(col(RolloutDevice.device_id))))


def devices_in_running_stages(session: Session) -> set[str]:
    """The devices of the current stage of every running rollout (whose reports can move it)."""
    rows = session.exec(select(RolloutDevice.device_id).join(Rollout, col(Rollout.id) == RolloutDevice.rollout_id)
                        .where(Rollout.state == RolloutState.RUNNING,
                               col(RolloutDevice.stage_index) == col(Rollout.stage_index)))
    return set(rows)


def policy_of(rollout: Rollout) -> RolloutPolicy:
    return RolloutPolicy.model_validate(rollout.policy)


# ------------------------------------------------------------------------------------ people act

def approve_rollout(session: Session, *, rollout_id: str, actor: str, role: str, now: float,
                    reason: str = "") -> Rollout:
    """Let a rollout to protected devices start. ``actor`` names the person (``user:NAME`` whichever of
    their tokens they use), ``role`` the rights they act with: approver or admin, and not the creator."""
    rollout = get_rollout(session, rollout_id=rollout_id)
    if actor == rollout.created_by:
        raise PermissionDeniedError("a rollout to protected devices needs approval by someone other than its "
                                    "creator", where="approve", hint="ask another approver to approve it")
    if rank(role) < rank(Role.APPROVER):
        raise PermissionDeniedError(f"approving a rollout to protected devices needs the approver role; {actor} "
                                    f"acts as {role}", where="approve",
                                    hint="ask someone with the approver (or admin) role to approve it")
    _move(session, rollout, RolloutEvent.APPROVE, now=now, reason=None)
    rollout.approved_at, rollout.approved_by, rollout.started_at = now, actor, now
    _record(session, rollout, actor, "approve", now, reason=reason)
    return rollout


def pause_rollout(session: Session, *, rollout_id: str, actor: str, now: float, reason: str = "") -> Rollout:
    rollout = get_rollout(session, rollout_id=rollout_id)
    _move(session, rollout, RolloutEvent.PAUSE, now=now, reason=_by("paused", actor, reason))
    _record(session, rollout, actor, "pause", now, reason=reason)
    return rollout


def resume_rollout(session: Session, *, rollout_id: str, actor: str, now: float, reason: str = "") -> Rollout:
    rollout = get_rollout(session, rollout_id=rollout_id)
    _move(session, rollout, RolloutEvent.RESUME, now=now, reason=None)
    _record(session, rollout, actor, "resume", now, reason=reason)
    return rollout


def promote_rollout(session: Session, *, rollout_id: str, actor: str, now: float, reason: str = "") -> Rollout:
    """Take the stage it paused in as passed (a person's verdict) and go on with the next."""
    rollout = get_rollout(session, rollout_id=rollout_id)
    _move(session, rollout, RolloutEvent.PROMOTE, now=now, reason=None)
    stage = stages_of(session, rollout_id=rollout_id)[rollout.stage_index]
    if stage.state in (StageState.RUNNING, StageState.SOAKING):
        stage.state = advance(STAGE_TRANSITIONS, stage.state, StageEvent.PASS, what=f"stage {stage.name}")
        stage.finished_at = now
        session.add(stage)
        _announce(session, rollout, WebhookEvent.ROLLOUT_STAGE_PASSED, now, stage=stage.name,
                  verdicts=stage.verdicts, promoted_by=actor)
    _record(session, rollout, actor, "promote", now, stage=stage.name, reason=reason)
    return rollout


def abort_rollout(session: Session, *, rollout_id: str, actor: str, now: float, issuer: OrderIssuer,
                  reason: str = "") -> Rollout:
    rollout = get_rollout(session, rollout_id=rollout_id)
    _abort(session, rollout, now=now, issuer=issuer, reason=_by("aborted", actor, reason))
    _record(session, rollout, actor, "abort", now, reason=reason)
    return rollout


def cancel_rollout(session: Session, *, rollout_id: str, actor: str, now: float, issuer: OrderIssuer,
                   reason: str = "") -> Rollout:
    """Stop giving out orders; devices that took the bundle keep it (use abort to roll them back)."""
    rollout = get_rollout(session, rollout_id=rollout_id)
    _move(session, rollout, RolloutEvent.CANCEL, now=now, reason=_by("cancelled", actor, reason))
    _stop_open_devices(session, rollout, now=now, issuer=issuer, why="the rollout was cancelled")
    _finish_deployment(session, rollout, now=now, status=DeploymentStatus.CANCELLED)
    _record(session, rollout, actor, "cancel", now, reason=reason)
    return rollout


def _by(verb: str, actor: str, reason: str) -> str:
    return f"{verb} by {actor}: {reason}" if reason else f"{verb} by {actor}"


# ------------------------------------------------------------------------------------ the sweep

def advance_rollouts(open_session: OpenSession, *, now: float, issuer: OrderIssuer) -> list[str]:
    """One pass over every rollout with work left, each in its own transaction and row lock (a
    second controller skips a rollout another one is advancing). Returns the ids it advanced."""
    with open_session() as session:
        ids = list(session.exec(select(Rollout.id).where(
            col(Rollout.state).in_((RolloutState.RUNNING, RolloutState.PAUSED, RolloutState.ABORTED)),
            col(Rollout.finished_at).is_(None))))
    advanced = []
    for rollout_id in ids:
        with open_session() as session:
            rollout = session.exec(select(Rollout).where(Rollout.id == rollout_id)
                                   .with_for_update(skip_locked=True)).first()
            if rollout is None:
                continue  # another controller has it right now
            advance_one(session, rollout, now=now, issuer=issuer)
            advanced.append(rollout_id)
    return advanced


def advance_one(session: Session, rollout: Rollout, *, now: float, issuer: OrderIssuer) -> None:
    """Everything one pass does for one rollout: follow its devices, retry, judge, order."""
    policy = policy_of(rollout)
    rows = devices_of(session, rollout_id=rollout.id)
    _follow_devices(session, rollout, rows, now=now)
    if rollout.state == RolloutState.ABORTED:
        _roll_back_late_installs(session, rollout, rows, now=now, issuer=issuer)
        _finish_if_reverted(session, rollout, rows, now=now)
        return
    if rollout.state != RolloutState.RUNNING:
        return
    _schedule_retries(session, rows, policy, now=now, issuer=issuer)
    if _abort_criteria_met(session, rollout, rows, policy, now=now, issuer=issuer):
        return
    if Selector.model_validate(rollout.selector).dynamic:
        rows += _join_new_devices(session, rollout, rows, now=now)
    stages = stages_of(session, rollout_id=rollout.id)
    for _ in stages:   # a stage that passes lets the next one start in the same pass
        stage = stages[rollout.stage_index]
        _advance_stage(session, rollout, stage, rows, policy, now=now, issuer=issuer)
        if stage.state != StageState.PASSED or rollout.state != RolloutState.RUNNING:
            break
        _next_stage(session, rollout, stages, policy, now=now)
        if rollout.state != RolloutState.RUNNING:
            break
    session.add(rollout)


def _advance_stage(session: Session, rollout: Rollout, stage: RolloutStage, rows: list[RolloutDevice],
                   policy: RolloutPolicy, *, now: float, issuer: OrderIssuer) -> None:
    if stage.state == StageState.PENDING:
        _start_stage(session, rollout, stage, rows, policy, now=now)
    if stage.state == StageState.RUNNING:
        _run_stage(session, rollout, stage, rows, policy, now=now, issuer=issuer)
    if stage.state == StageState.SOAKING:
        _judge_stage(session, rollout, stage, rows, policy, now=now, issuer=issuer)


def _follow_devices(session: Session, rollout: Rollout, rows: list[RolloutDevice], *, now: float) -> None:
    """Move devices along from their deployment targets (installs, and roll-backs after an abort)."""
    watched = [r for r in rows if r.state in (DeviceState.IN_PROGRESS, DeviceState.REVERTING)]
    if not watched:
        return
    targets = {(t.deployment_id, t.device_id): t for t in session.exec(select(DeploymentTarget).where(
        col(DeploymentTarget.device_id).in_([r.device_id for r in watched]),
        col(DeploymentTarget.deployment_id).in_([rollout.deployment_id, *rollout.rollback])))}
    for row in watched:
        if row.state == DeviceState.IN_PROGRESS:
            target = targets.get((rollout.deployment_id, row.device_id))
            event = _install_event(target)
        else:
            target = targets.get((row.revert_deployment_id or "", row.device_id))
            event = None if target is None or not target.final else \
                DeviceEvent.REVERTED if target.outcome == Outcome.COMMITTED else DeviceEvent.REVERT_FAIL
        if event is not None and target is not None:
            _device(row, event, now=now, reason=target.reason)
            session.add(row)
            if event == DeviceEvent.SUCCEED:
                rollout.succeeded += 1


def _install_event(target: DeploymentTarget | None) -> DeviceEvent | None:
    if target is None or not target.final:
        return None
    if target.outcome == Outcome.COMMITTED:
        return DeviceEvent.SUCCEED
    if target.outcome == Outcome.ROLLED_BACK:
        return DeviceEvent.ROLL_BACK
    if target.outcome == Outcome.REFUSED:
        return DeviceEvent.REJECT
    if target.outcome == Outcome.CANCELLED:
        return DeviceEvent.SKIP
    return DeviceEvent.TIME_OUT if target.reason == Reason.DEPLOYMENT_TIMEOUT else DeviceEvent.FAIL


def _schedule_retries(session: Session, rows: list[RolloutDevice], policy: RolloutPolicy, *, now: float,
                      issuer: OrderIssuer) -> None:
    for row in rows:
        kind = _FAILURE_OF.get(DeviceState(row.state)) if row.state in set(_FAILURE_OF) else None
        retry = policy.retries.get(kind) if kind is not None else None
        if retry is None:
            continue
        if row.retry_at is None:
            row.retry_at = pacing.retry_at(retry, attempts=row.attempts, now=now)
            if row.retry_at is None:
                continue
        if row.retry_at <= now:
            _device(row, DeviceEvent.RETRY, now=now, reason=f"retry {row.attempts} after {row.state}")
            row.retry_at = None
        session.add(row)


def _abort_criteria_met(session: Session, rollout: Rollout, rows: list[RolloutDevice], policy: RolloutPolicy, *,
                        now: float, issuer: OrderIssuer) -> bool:
    criteria = policy.abort
    executed = [r for r in rows if r.state in EXECUTED_STATES]
    if len(executed) < criteria.min_executed:
        return False
    failed = [r for r in executed if r.state != DeviceState.SUCCEEDED
              and _FAILURE_OF[DeviceState(r.state)] in criteria.failure_kinds]
    share = 100.0 * len(failed) / len(executed)
    if share < criteria.threshold_percent:
        return False
    why = (f"abort criteria: {len(failed)} of {len(executed)} executed devices failed ({share:.0f}% >= "
           f"{criteria.threshold_percent:g}%)")
    if criteria.action == AbortAction.PAUSE:
        _move(session, rollout, RolloutEvent.PAUSE, now=now, reason=why)
    else:
        _abort(session, rollout, now=now, issuer=issuer, reason=why)
    _record(session, rollout, "system", "abort_criteria", now, reason=why)
    return True


def _join_new_devices(session: Session, rollout: Rollout, rows: list[RolloutDevice], *, now: float
                      ) -> list[RolloutDevice]:
    """Dynamic selectors: devices that match now and were not there before join the current stage."""
    known = {r.device_id for r in rows}
    selector = Selector.model_validate(rollout.selector)
    bundle = registry.get_bundle(session, digest=rollout.bundle_digest)
    manifest = BundleManifest.model_validate(bundle.manifest)
    joined = [_add_device(session, rollout=rollout, device=d, manifest=manifest, bundle=bundle, now=now,
                          stage_index=rollout.stage_index)
              for d in devices.list_devices(session) if d.id not in known and selector.matches(d.id, d.tags)]
    if joined:
        log.info("rollout %s: %d device(s) joined (dynamic selector)", rollout.id, len(joined))
    return joined


def _start_stage(session: Session, rollout: Rollout, stage: RolloutStage, rows: list[RolloutDevice],
                 policy: RolloutPolicy, *, now: float) -> None:
    spec = policy.stages[stage.index]
    if spec.not_before is not None and now < spec.not_before.timestamp():
        rollout.reason = f"stage {stage.name} starts at {spec.not_before.isoformat()}"
        return
    tags = {d.id: d.tags for d in session.exec(select(Device).where(
        col(Device.id).in_([r.device_id for r in rows if r.stage_index is None])))}
    remaining = [(d, tags.get(d, [])) for d in pacing.rollout_order(rollout.id, [
        r.device_id for r in rows if r.stage_index is None and r.state == DeviceState.QUEUED])]
    taken = set(pacing.stage_size(spec, remaining))
    for row in rows:
        if row.device_id in taken:
            row.stage_index = stage.index
            session.add(row)
    stage.state = advance(STAGE_TRANSITIONS, stage.state, StageEvent.START, what=f"stage {stage.name}")
    stage.started_at, rollout.reason = now, None
    session.add(stage)
    log.info("rollout %s: stage %s started with %d device(s)", rollout.id, stage.name, len(taken))


def _run_stage(session: Session, rollout: Rollout, stage: RolloutStage, rows: list[RolloutDevice],
               policy: RolloutPolicy, *, now: float, issuer: OrderIssuer) -> None:
    mine = [r for r in rows if r.stage_index == stage.index]
    queued = [r for r in mine if r.state == DeviceState.QUEUED]
    if queued:
        _order(session, rollout, queued, policy, now=now, issuer=issuer)
    if all(r.state not in (DeviceState.QUEUED, DeviceState.IN_PROGRESS) and r.retry_at is None for r in mine):
        stage.state = advance(STAGE_TRANSITIONS, stage.state, StageEvent.EXECUTED, what=f"stage {stage.name}")
        stage.executed_at = now
        stage.soak_until = now + policy.stages[stage.index].soak_s
        session.add(stage)


def _order(session: Session, rollout: Rollout, queued: list[RolloutDevice], policy: RolloutPolicy, *, now: float,
           issuer: OrderIssuer) -> None:
    """Orders for queued devices, as many as the pace allows, only inside a maintenance window."""
    if not pacing.in_window(policy.windows, now):
        rollout.reason = "waiting for a maintenance window"
        return
    budget = pacing.allowance(policy.pace, started_at=rollout.started_at or now, now=now, ordered=rollout.ordered,
                              succeeded=rollout.succeeded)
    deployment = deployments.get_deployment(session, deployment_id=rollout.deployment_id)
    bundle = registry.get_bundle(session, digest=rollout.bundle_digest)
    existing = {t.device_id: t for t in deployments.targets_of(session, deployment_id=deployment.id)}
    for row in queued[:budget]:
        device = devices.get_device(session, device_id=row.device_id)
        if row.device_id in existing:
            deployments.reorder_target(session, target=existing[row.device_id], issuer=issuer, now=now)
        else:
            deployments.order_device(session, deployment=deployment, bundle=bundle, device=device, issuer=issuer,
                                     now=now, health_check=policy.health_check)
        row.attempts += 1
        row.ordered_at = now
        _device(row, DeviceEvent.ORDER, now=now, reason=None)
        session.add(row)
        rollout.ordered += 1
    rollout.reason = None if len(queued) <= budget else f"pace: {len(queued) - budget} device(s) wait their turn"


def _judge_stage(session: Session, rollout: Rollout, stage: RolloutStage, rows: list[RolloutDevice],
                 policy: RolloutPolicy, *, now: float, issuer: OrderIssuer) -> None:
    taken = [DeviceState(r.state) for r in rows if r.stage_index == stage.index]
    if taken:
        judged_by = policy.gates_of(stage.index)
        samples = _samples(session, rollout, rows, stage, judged_by)
        results = gates.evaluate(judged_by, devices=taken, samples=samples)
    else:
        results = [gates.GateResult("devices", gates.Verdict.PASS, "the stage took no device")]
    stage.verdicts = [asdict(r) for r in results]
    verdict = gates.judge(results)
    session.add(stage)
    if verdict == gates.Verdict.FAIL:
        failing = [r for r in results if r.verdict == gates.Verdict.FAIL]
        for r in failing:
            _announce(session, rollout, WebhookEvent.ROLLOUT_GATE_FAILED, now, stage=stage.name, gate=r.gate,
                      verdict=r.verdict, summary=r.summary)
        failed = "; ".join(f"{r.gate}: {r.summary}" for r in failing)
        stage.state = advance(STAGE_TRANSITIONS, stage.state, StageEvent.FAIL, what=f"stage {stage.name}")
        stage.finished_at = now
        why = f"stage {stage.name} failed its gates ({failed})"
        if policy.abort.action == AbortAction.PAUSE:
            _move(session, rollout, RolloutEvent.PAUSE, now=now, reason=why)
        else:
            _abort(session, rollout, now=now, issuer=issuer, reason=why)
        _record(session, rollout, "system", "gate_failed", now, stage=stage.name, reason=why)
        return
    if stage.soak_until is not None and now < stage.soak_until:
        return
    if verdict == gates.Verdict.INCONCLUSIVE:
        if stage.soak_until is not None and now < policy.stages[stage.index].evidence_until(stage.soak_until):
            rollout.reason = f"stage {stage.name}: the gates are inconclusive; collecting more telemetry"
            session.add(rollout)
            return
        _move(session, rollout, RolloutEvent.PAUSE, now=now,
              reason=f"stage {stage.name}: the gates are inconclusive after its soak; promote or abort")
        _record(session, rollout, "system", "inconclusive", now, stage=stage.name)
        return
    stage.state = advance(STAGE_TRANSITIONS, stage.state, StageEvent.PASS, what=f"stage {stage.name}")
    stage.finished_at = now
    _record(session, rollout, "system", "stage_passed", now, stage=stage.name)
    _announce(session, rollout, WebhookEvent.ROLLOUT_STAGE_PASSED, now, stage=stage.name, verdicts=stage.verdicts)
    if policy.stages[stage.index].on_success == OnSuccess.PAUSE and stage.index + 1 < len(policy.stages):
        _move(session, rollout, RolloutEvent.PAUSE, now=now, reason=f"stage {stage.name} passed; promote to go on")


def _next_stage(session: Session, rollout: Rollout, stages: list[RolloutStage], policy: RolloutPolicy, *,
                now: float) -> None:
    if rollout.stage_index + 1 < len(stages):
        rollout.stage_index += 1
        log.info("rollout %s: stage %s next", rollout.id, stages[rollout.stage_index].name)
        return
    _move(session, rollout, RolloutEvent.FINISH, now=now, reason=None)
    rollout.finished_at = now
    _finish_deployment(session, rollout, now=now, status=DeploymentStatus.SUCCEEDED)
    _record(session, rollout, "system", "succeeded", now)


def stage_samples(session: Session, *, rollout_id: str, stage_index: int) -> list[gates.WindowSample]:
    """The telemetry windows a stage's gates read (canary and baseline), e.g. to chart them."""
    rollout = get_rollout(session, rollout_id=rollout_id)
    stages = stages_of(session, rollout_id=rollout_id)
    if not 0 <= stage_index < len(stages):
        raise NotFoundError(f"rollout {rollout_id} has no stage {stage_index}", where="stage_index")
    return _samples(session, rollout, devices_of(session, rollout_id=rollout_id), stages[stage_index],
                    policy_of(rollout).gates_of(stage_index))


def _samples(session: Session, rollout: Rollout, rows: list[RolloutDevice], stage: RolloutStage,
             gates_spec: Gates) -> list[gates.WindowSample]:
    """What the gates read, from the stage's start to its end (or now). Canary: the stage's devices
    on the new bundle. Control (baseline ``control``): the devices no stage had taken by then
    (untaken, or taken by a later stage), on their old bundle, over the same time; with baseline
    ``before``: the stage's own devices on their old bundle, in the ``before_s`` before their order.
    The same rows give the same samples later, so a finished stage can be charted as it was judged."""
    taken = {r.device_id: r for r in rows if r.stage_index == stage.index}
    if not taken:
        return []
    since, until = stage.started_at or 0.0, stage.finished_at or math.inf
    before = gates_spec.baseline == Baseline.BEFORE
    control = set() if before else {r.device_id for r in rows if r.stage_index is None
                                    or r.stage_index > stage.index}
    oldest = min((r.ordered_at or since) for r in taken.values()) - gates_spec.before_s if before else since
    records = session.exec(select(TelemetryRecord).where(
        col(TelemetryRecord.device_id).in_(set(taken) | control), col(TelemetryRecord.window_end) >= oldest,
        col(TelemetryRecord.window_end) <= until))
    samples = []
    for r in records:
        on_new = r.bundle_digest == rollout.bundle_digest
        row = taken.get(r.device_id)
        if row is not None and on_new:
            is_canary = r.window_end >= since
        elif row is not None and before:   # the same device before its update
            ordered = row.ordered_at or since
            if r.bundle_digest != row.previous_digest or not ordered - gates_spec.before_s <= r.window_end < ordered:
                continue
            is_canary = False
        elif row is None and not on_new and r.window_end >= since:
            is_canary = False
        else:
            continue  # a canary window from before the stage, or a control device that moved on
        samples.append(gates.WindowSample(
            device_id=r.device_id, canary=is_canary, window_end=r.window_end, requests=r.requests, errors=r.errors,
            p95_ms=histogram_quantile(r.latency_bounds, r.latency_counts, 0.95), psi=r.drift_psi,
            predictions=dict(r.predictions), drift_level=r.drift_level, labelled=r.labelled, correct=r.correct))
    return samples


# ------------------------------------------------------------------------------------ ending

def _abort(session: Session, rollout: Rollout, *, now: float, issuer: OrderIssuer, reason: str) -> None:
    _move(session, rollout, RolloutEvent.ABORT, now=now, reason=reason)
    rollout.aborted_at = now
    rows = devices_of(session, rollout_id=rollout.id)
    _follow_devices(session, rollout, rows, now=now)   # a device may have committed since the last pass
    _stop_open_devices(session, rollout, now=now, issuer=issuer, why="the rollout was aborted")
    if OnAbort(policy_of(rollout).on_abort) == OnAbort.ROLLBACK:
        _roll_back(session, rollout, [r for r in rows if r.state == DeviceState.SUCCEEDED], now=now, issuer=issuer)
    _finish_deployment(session, rollout, now=now, status=DeploymentStatus.CANCELLED)
    log.warning("rollout %s aborted: %s", rollout.id, reason)
    _announce(session, rollout, WebhookEvent.ROLLOUT_ABORTED, now, reason=reason, rollback=list(rollout.rollback))


def _stop_open_devices(session: Session, rollout: Rollout, *, now: float, issuer: OrderIssuer, why: str) -> None:
    """Queued devices are skipped; devices with an order out get a signed cancel order."""
    deployment = deployments.get_deployment(session, deployment_id=rollout.deployment_id)
    if deployment.finished_at is None and any(not t.final for t in deployments.targets_of(
            session, deployment_id=deployment.id)):
        deployments.cancel_deployment(session, deployment_id=deployment.id, issuer=issuer, actor="system", now=now)
    for row in devices_of(session, rollout_id=rollout.id):
        if row.state in (DeviceState.QUEUED, DeviceState.IN_PROGRESS):
            _device(row, DeviceEvent.SKIP, now=now, reason=why)
            session.add(row)
        row.retry_at = None


def _roll_back(session: Session, rollout: Rollout, rows: list[RolloutDevice], *, now: float,
               issuer: OrderIssuer) -> None:
    """Every device that took the new bundle gets a signed order for the one it ran before (one
    deployment per previous bundle), tracked to its end by :func:`_follow_devices`."""
    by_previous: dict[str, list[RolloutDevice]] = {}
    for row in rows:
        known = row.previous_digest and registry.bundles_by_digest(session, digests={row.previous_digest})
        if known:
            by_previous.setdefault(str(row.previous_digest), []).append(row)
        else:
            row.reason = "nothing to roll back to: its previous bundle is not in the registry"
            session.add(row)
    for digest, group in sorted(by_previous.items()):
        deployment = deployments.create_deployment(
            session, bundle_digest=digest, issuer=issuer, actor="system", now=now,
            timeout_s=policy_of(rollout).device_timeout_s, device_ids=[r.device_id for r in group],
            note=f"rollback of rollout {rollout.id}")
        rollout.rollback = [*rollout.rollback, deployment.id]
        for row in group:
            _device(row, DeviceEvent.REVERT, now=now, reason=f"rolling back to {digest[:12]}")
            row.revert_deployment_id = deployment.id
            session.add(row)


LATE_INSTALL_GRACE_S = 300.0
"""After an abort, how long devices whose cancel order came too late (they were past activation) are
watched for having installed the bundle anyway, to roll them back too."""


def _roll_back_late_installs(session: Session, rollout: Rollout, rows: list[RolloutDevice], *, now: float,
                             issuer: OrderIssuer) -> None:
    if OnAbort(policy_of(rollout).on_abort) != OnAbort.ROLLBACK:
        return
    skipped = {r.device_id: r for r in rows if r.state == DeviceState.SKIPPED and r.ordered_at is not None}
    if not skipped:
        return
    late = [skipped[d.id] for d in session.exec(select(Device).where(col(Device.id).in_(list(skipped))))
            if (d.installed or {}).get("digest") == rollout.bundle_digest]
    if late:
        log.warning("rollout %s: %d device(s) installed the bundle after the abort; rolling them back", rollout.id,
                    len(late))
        _roll_back(session, rollout, late, now=now, issuer=issuer)


def _finish_if_reverted(session: Session, rollout: Rollout, rows: list[RolloutDevice], *, now: float) -> None:
    grace_over = now >= (rollout.aborted_at or now) + LATE_INSTALL_GRACE_S
    if grace_over and all(r.state != DeviceState.REVERTING for r in rows):
        rollout.finished_at = now
        session.add(rollout)


def _finish_deployment(session: Session, rollout: Rollout, *, now: float, status: DeploymentStatus) -> None:
    deployment = deployments.get_deployment(session, deployment_id=rollout.deployment_id)
    if deployment.finished_at is None or deployment.status != status:
        deployment.status, deployment.finished_at = status, deployment.finished_at or now
        session.add(deployment)


# ------------------------------------------------------------------------------------ plumbing

def _move(session: Session, rollout: Rollout, event: RolloutEvent, *, now: float, reason: str | None) -> None:
    rollout.state = advance(ROLLOUT_TRANSITIONS, rollout.state, event, what=f"rollout {rollout.id}")
    rollout.reason, rollout.updated_at = reason, now
    if rollout.state not in OPEN_ROLLOUT_STATES and rollout.state != RolloutState.ABORTED:
        rollout.finished_at = rollout.finished_at or now
    log.info("rollout %s: %s -> %s%s", rollout.id, event.value, rollout.state, f" ({reason})" if reason else "")
    if rollout.state == RolloutState.PAUSED:
        _announce(session, rollout, WebhookEvent.ROLLOUT_PAUSED, now, reason=reason)
    elif rollout.state == RolloutState.SUCCEEDED:
        _announce(session, rollout, WebhookEvent.ROLLOUT_SUCCEEDED, now, ordered=rollout.ordered,
                  succeeded=rollout.succeeded)


def _announce(session: Session, rollout: Rollout, event: WebhookEvent, now: float, **data: Any) -> None:
    """Tell the webhooks (docs/webhooks.md), in this transaction: sent exactly when it commits."""
    webhooks.emit(session, event=event, now=now, payload={
        "rollout_id": rollout.id, "bundle_digest": rollout.bundle_digest, "stage_index": rollout.stage_index, **data})


def _device(row: RolloutDevice, event: DeviceEvent, *, now: float, reason: str | None) -> None:
    row.state = advance(DEVICE_TRANSITIONS, row.state, event, what=f"device {row.device_id}")
    row.reason, row.updated_at = reason, now
    if row.state not in (DeviceState.QUEUED, DeviceState.IN_PROGRESS, DeviceState.REVERTING):
        row.finished_at = now


def _record(session: Session, rollout: Rollout, actor: str, action: str, now: float, **details: Any) -> None:
    audit.record(session, actor=actor, action=f"rollout.{action}", target=f"rollout:{rollout.id}",
                 details={"state": rollout.state, "stage": rollout.stage_index}
                 | {k: v for k, v in details.items() if v}, now=now)
    session.add(rollout)
