"""A/B experiments over stored state: split a cohort between bundle A (control) and bundle B
(treatment) for a duration, read the results, stop, or promote the winner to a rollout of the rest;
and the one idempotent sweep :func:`advance_experiments` that the reconciler runs.

Each arm's orders are the targets of one deployment of its own (selector ``{"experiment": id, "arm":
"a"}``), so signing, publishing, status reports, timeouts and re-sending on reconnect are the
deployments' (:mod:`.deployments`). The arms come from the rollouts' stable shuffle
(:func:`.rollouts.pacing.rollout_order`), the statistics from the rollout gates' sequential test
(:mod:`.experiment_results`), and a promotion is a rollout (:func:`.rollouts.service.create_rollout`).
Each pass only moves state forward from what is stored, so a restart resumes where it stopped and a
second pass changes nothing.
"""

from __future__ import annotations

import logging
import math
import uuid
from collections.abc import Iterable, Sequence
from typing import Any

from pydantic import BaseModel, ConfigDict, Field
from sqlmodel import Session, col, select

from edgefleet.cloud.services import audit, deployments, devices, registry, webhooks
from edgefleet.cloud.services.experiment_results import Results, compare_arms
from edgefleet.cloud.services.experiment_states import (
    ARM_DEVICE_TRANSITIONS,
    EXPERIMENT_TRANSITIONS,
    ArmDeviceEvent,
    ExperimentEvent,
)
from edgefleet.cloud.services.orders import OrderIssuer
from edgefleet.cloud.services.rollouts import pacing
from edgefleet.cloud.services.rollouts import service as rollouts
from edgefleet.cloud.services.rollouts.gates import WindowSample
from edgefleet.cloud.services.rollouts.policy import DAY_S, RolloutPolicy, Selector
from edgefleet.cloud.services.transitions import advance
from edgefleet.cloud.store.engine import OpenSession
from edgefleet.cloud.store.tables import (
    Bundle,
    Deployment,
    DeploymentTarget,
    Device,
    Experiment,
    ExperimentDevice,
    TelemetryRecord,
    row_id,
)
from edgefleet.cloud.vocabulary import Arm, ArmDeviceState, DeploymentStatus, ExperimentState, WebhookEvent
from edgefleet.protocol.errors import ConflictError, InvalidRequestError, NotFoundError
from edgefleet.protocol.manifest import BundleManifest
from edgefleet.protocol.messages import histogram_quantile
from edgefleet.protocol.vocabulary import Outcome

log = logging.getLogger(__name__)


class ExperimentPlan(BaseModel):
    """What an experiment compares how: the devices (``selector``), the share of them on bundle B,
    an optional cap on how many take part, how long it runs, and the sequential test's ``alpha`` and
    ``min_windows`` (per arm, before the first look)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(default="", max_length=128)
    """Absent: ``<bundle A> vs <bundle B>``."""
    selector: Selector = Selector()
    """The devices that may take part; also the target of the rollout a promotion creates."""
    split_percent: float = Field(default=50.0, gt=0, lt=100)
    cohort_size: int | None = Field(default=None, ge=2, le=1_000_000)
    duration_s: float = Field(default=DAY_S, gt=0, le=90 * DAY_S)
    alpha: float = Field(default=0.05, gt=0, lt=0.5)
    min_windows: int = Field(default=20, ge=2, le=10_000)


# ------------------------------------------------------------------------------------ creating

def create_experiment(session: Session, *, bundle_a_digest: str, bundle_b_digest: str, plan: ExperimentPlan,
                      timeout_s: float, issuer: OrderIssuer, actor: str, now: float) -> Experiment:
    """Split the devices the selector matches between the two bundles and order every device not
    already on its arm's bundle. Devices that cannot run both bundles, or that another running
    experiment has, are skipped (with the reason) before the split, so both arms are drawn from the
    same devices."""
    bundles = {Arm.A: registry.get_bundle(session, digest=bundle_a_digest),
               Arm.B: registry.get_bundle(session, digest=bundle_b_digest)}
    if bundles[Arm.A].digest == bundles[Arm.B].digest:
        raise InvalidRequestError("bundle A and bundle B are the same bundle", where="bundle_b",
                                  hint="an experiment compares two different bundles")
    experiment_id = f"ex-{uuid.uuid4().hex[:12]}"
    matched = [d for d in devices.list_devices(session) if plan.selector.matches(d.id, d.tags)]
    if not matched:
        raise ConflictError("no device matches the selector", where="selector", hint=plan.selector.describe())
    reasons = _why_not(session, matched, bundles)
    arms = assign_arms(experiment_id, [d.id for d in matched if d.id not in reasons],
                       split_percent=plan.split_percent, cohort_size=plan.cohort_size)
    if len(arms) < 2:
        raise ConflictError(f"{len(arms)} of {len(matched)} matching device(s) can take part; an experiment "
                            "needs at least two", where="selector",
                            hint="; ".join(f"{d}: {r}" for d, r in list(reasons.items())[:5]) or None)
    arm_deployments = {arm: Deployment(
        id=f"dep-{experiment_id}-{arm}", bundle_id=row_id(bundles[arm]), bundle_digest=bundles[arm].digest,
        selector={"experiment": experiment_id, "arm": str(arm)}, note=f"arm {arm.upper()} of experiment "
        f"{experiment_id}", created_at=now, created_by=actor, timeout_s=timeout_s) for arm in Arm}
    experiment = Experiment(
        id=experiment_id, name=plan.name or f"{_label(bundles[Arm.A])} vs {_label(bundles[Arm.B])}",
        bundle_a_id=row_id(bundles[Arm.A]), bundle_a_digest=bundles[Arm.A].digest,
        bundle_b_id=row_id(bundles[Arm.B]), bundle_b_digest=bundles[Arm.B].digest,
        deployment_a_id=arm_deployments[Arm.A].id, deployment_b_id=arm_deployments[Arm.B].id,
        selector=plan.selector.model_dump(mode="json"), split_percent=plan.split_percent,
        cohort_size=plan.cohort_size, duration_s=plan.duration_s, alpha=plan.alpha, min_windows=plan.min_windows,
        state=ExperimentState.RUNNING, created_at=now, created_by=actor, started_at=now,
        ends_at=now + plan.duration_s, updated_at=now)
    session.add_all([*arm_deployments.values(), experiment])
    session.flush()
    for device in matched:
        if device.id in reasons:
            session.add(ExperimentDevice(experiment_id=experiment_id, device_id=device.id,
                                         state=ArmDeviceState.SKIPPED, reason=reasons[device.id],
                                         previous_digest=_installed(device), updated_at=now))
        elif device.id in arms:
            arm = arms[device.id]
            _add_device(session, experiment, device, arm, bundle=bundles[arm], deployment=arm_deployments[arm],
                        issuer=issuer, now=now)
    counts = {str(arm): sum(a == arm for a in arms.values()) for arm in Arm}
    _record(session, experiment, actor, "create", now, bundle_a=experiment.bundle_a_digest,
            bundle_b=experiment.bundle_b_digest, selector=experiment.selector, split_percent=plan.split_percent,
            duration_s=plan.duration_s, devices=counts, skipped=len(reasons))
    log.info("experiment %s: %s, %d device(s) on A, %d on B, %d skipped, for %.0f s", experiment_id, experiment.name,
             counts[Arm.A], counts[Arm.B], len(reasons), plan.duration_s)
    return experiment


def assign_arms(experiment_id: str, device_ids: Sequence[str], *, split_percent: float,
                cohort_size: int | None = None) -> dict[str, Arm]:
    """The devices that take part and their arms: the first ``cohort_size`` (all by default) in the
    stable shuffle of :func:`~.rollouts.pacing.rollout_order`; of those, ``split_percent`` (rounded,
    at least one, and leaving one) on B, the rest on A. Fewer than two devices: none take part."""
    cohort = pacing.rollout_order(experiment_id, device_ids)[:cohort_size]
    if len(cohort) < 2:
        return {}
    on_b = min(len(cohort) - 1, max(1, math.floor(len(cohort) * split_percent / 100.0 + 0.5)))
    return {d: Arm.B if i < on_b else Arm.A for i, d in enumerate(cohort)}


def _why_not(session: Session, matched: Sequence[Device], bundles: dict[Arm, Bundle]) -> dict[str, str]:
    """Why each device that cannot take part is left out (by device id)."""
    manifests = {arm: BundleManifest.model_validate(b.manifest) for arm, b in bundles.items()}
    busy = dict(session.exec(select(ExperimentDevice.device_id, ExperimentDevice.experiment_id)
                             .join(Experiment, col(Experiment.id) == ExperimentDevice.experiment_id)
                             .where(Experiment.state == ExperimentState.RUNNING,
                                    col(ExperimentDevice.arm).is_not(None),
                                    col(ExperimentDevice.device_id).in_([d.id for d in matched]))).all())
    reasons = {}
    for device in matched:
        problems = [f"cannot run bundle {arm.upper()}: {why}" for arm in Arm
                    if (why := deployments.incompatibility(manifests[arm], device)) is not None]
        if device.id in busy:
            problems.insert(0, f"in experiment {busy[device.id]}")
        if problems:
            reasons[device.id] = problems[0]
    return reasons


def _add_device(session: Session, experiment: Experiment, device: Device, arm: Arm, *, bundle: Bundle,
                deployment: Deployment, issuer: OrderIssuer, now: float) -> ExperimentDevice:
    row = ExperimentDevice(experiment_id=experiment.id, device_id=device.id, arm=arm, state=ArmDeviceState.RUNNING,
                           previous_digest=_installed(device), running_since=now, updated_at=now)
    if row.previous_digest != bundle.digest:
        deployments.order_device(session, deployment=deployment, bundle=bundle, device=device, issuer=issuer, now=now)
        row.state, row.running_since, row.ordered_at = ArmDeviceState.ORDERED, None, now
    session.add(row)
    return row


# ------------------------------------------------------------------------------------ reading

def get_experiment(session: Session, *, experiment_id: str, lock: bool = False) -> Experiment:
    """The experiment; with ``lock``, its row is locked for this transaction (waiting for the sweep)."""
    query = select(Experiment).where(Experiment.id == experiment_id)
    experiment = session.exec(query.with_for_update() if lock else query).first()
    if experiment is None:
        raise NotFoundError(f"no experiment {experiment_id!r}", where="experiment_id")
    return experiment


def list_experiments(session: Session, *, state: ExperimentState | None = None, limit: int = 100
                     ) -> list[Experiment]:
    query = select(Experiment).order_by(col(Experiment.created_at).desc()).limit(limit)
    if state is not None:
        query = query.where(Experiment.state == state)
    return list(session.exec(query))


def devices_of(session: Session, *, experiment_id: str) -> list[ExperimentDevice]:
    return list(session.exec(select(ExperimentDevice).where(ExperimentDevice.experiment_id == experiment_id)
                             .order_by(col(ExperimentDevice.device_id))))


def results(session: Session, experiment: Experiment) -> Results:
    """Per metric: A, B, B - A with its always-valid confidence interval and p-value, a verdict."""
    return compare_arms(samples(session, experiment), alpha=experiment.alpha, min_windows=experiment.min_windows)


def samples(session: Session, experiment: Experiment) -> list[WindowSample]:
    """The telemetry windows the results count (``canary``: arm B): those of the arms' devices while
    they ran their arm's bundle, from the start until the experiment left ``running`` (or now). A
    window of a device on any other bundle (before its install, or moved on) does not count."""
    arm_of = {r.device_id: Arm(r.arm) for r in devices_of(session, experiment_id=experiment.id) if r.arm is not None}
    digest = {Arm.A: experiment.bundle_a_digest, Arm.B: experiment.bundle_b_digest}
    query = select(TelemetryRecord).where(col(TelemetryRecord.device_id).in_(list(arm_of)),
                                          col(TelemetryRecord.bundle_digest).in_(list(digest.values())),
                                          col(TelemetryRecord.window_end) >= experiment.started_at)
    if experiment.finished_at is not None:
        query = query.where(col(TelemetryRecord.window_end) <= experiment.finished_at)
    return [WindowSample(device_id=r.device_id, canary=arm_of[r.device_id] == Arm.B, window_end=r.window_end,
                         requests=r.requests, errors=r.errors,
                         p95_ms=histogram_quantile(r.latency_bounds, r.latency_counts, 0.95), psi=r.drift_psi,
                         predictions=dict(r.predictions), labelled=r.labelled, correct=r.correct)
            for r in session.exec(query) if r.bundle_digest == digest[arm_of[r.device_id]]]


def bundle_digest(experiment: Experiment, arm: Arm) -> str:
    return experiment.bundle_a_digest if arm == Arm.A else experiment.bundle_b_digest


def deployment_id(experiment: Experiment, arm: Arm) -> str:
    return experiment.deployment_a_id if arm == Arm.A else experiment.deployment_b_id


# ------------------------------------------------------------------------------------ people act

def stop_experiment(session: Session, *, experiment_id: str, actor: str, now: float, issuer: OrderIssuer,
                    reason: str = "") -> Experiment:
    """End it without a winner: devices keep what they run; orders still out are cancelled."""
    experiment = get_experiment(session, experiment_id=experiment_id, lock=True)
    was_running = experiment.state == ExperimentState.RUNNING
    _move(experiment, ExperimentEvent.STOP, now=now, reason=_by("stopped", actor, reason))
    if was_running:
        _close(session, experiment, now=now, issuer=issuer, status=DeploymentStatus.CANCELLED,
               why="the experiment was stopped before it installed")
    _record(session, experiment, actor, "stop", now, reason=reason)
    _announce(session, experiment, WebhookEvent.EXPERIMENT_STOPPED, now, reason=experiment.reason)
    return experiment


def promote_experiment(session: Session, *, experiment_id: str, arm: Arm, policy: RolloutPolicy,
                       protected_tags: Iterable[str], actor: str, now: float, issuer: OrderIssuer,
                       reason: str = "") -> Experiment:
    """End it with ``arm`` the winner: a rollout of that arm's bundle to the experiment's selector,
    by ``policy`` (devices already on the bundle are skipped by the rollout). Running or finished."""
    experiment = get_experiment(session, experiment_id=experiment_id, lock=True)
    was_running = experiment.state == ExperimentState.RUNNING
    _move(experiment, ExperimentEvent.PROMOTE, now=now, reason=_by(f"arm {arm.upper()} promoted", actor, reason))
    if was_running:
        _close(session, experiment, now=now, issuer=issuer, status=DeploymentStatus.SUCCEEDED,
               why="the experiment was promoted before it installed")
    session.flush()
    rollout = rollouts.create_rollout(session, bundle_digest=bundle_digest(experiment, arm),
                                      selector=Selector.model_validate(experiment.selector), policy=policy,
                                      protected_tags=protected_tags, actor=actor, now=now,
                                      note=f"winner of experiment {experiment.id} ({experiment.name})")
    experiment.promoted_arm, experiment.rollout_id = arm, rollout.id
    _record(session, experiment, actor, "promote", now, arm=arm, rollout=rollout.id, reason=reason)
    _announce(session, experiment, WebhookEvent.EXPERIMENT_PROMOTED, now, arm=arm,
              bundle_digest=bundle_digest(experiment, arm), rollout_id=rollout.id)
    return experiment


def _by(verb: str, actor: str, reason: str) -> str:
    return f"{verb} by {actor}: {reason}" if reason else f"{verb} by {actor}"


# ------------------------------------------------------------------------------------ the sweep

def advance_experiments(open_session: OpenSession, *, now: float, issuer: OrderIssuer) -> list[str]:
    """One pass over every running experiment, each in its own transaction and row lock (a second
    controller skips one another is advancing): follow the installs, finish those whose duration is
    over. Returns the ids it advanced."""
    with open_session() as session:
        ids = list(session.exec(select(Experiment.id).where(Experiment.state == ExperimentState.RUNNING)))
    advanced = []
    for experiment_id in ids:
        with open_session() as session:
            experiment = session.exec(select(Experiment).where(Experiment.id == experiment_id,
                                                               Experiment.state == ExperimentState.RUNNING)
                                      .with_for_update(skip_locked=True)).first()
            if experiment is None:
                continue  # another controller has it right now, or it ended meanwhile
            advance_one(session, experiment, now=now, issuer=issuer)
            advanced.append(experiment_id)
    return advanced


def advance_one(session: Session, experiment: Experiment, *, now: float, issuer: OrderIssuer) -> None:
    _follow_devices(session, experiment, now=now)
    if now >= experiment.ends_at:
        _move(experiment, ExperimentEvent.FINISH, now=now, reason="its duration is over")
        _close(session, experiment, now=now, issuer=issuer, status=DeploymentStatus.SUCCEEDED,
               why="the experiment ended before it installed")
        verdicts = results(session, experiment).verdicts()
        _record(session, experiment, "system", "finished", now, verdicts=verdicts)
        _announce(session, experiment, WebhookEvent.EXPERIMENT_FINISHED, now, verdicts=verdicts)
    session.add(experiment)


def _follow_devices(session: Session, experiment: Experiment, *, now: float) -> None:
    """Move ordered devices along from their arm deployments' targets."""
    ordered = [r for r in devices_of(session, experiment_id=experiment.id) if r.state == ArmDeviceState.ORDERED]
    if not ordered:
        return
    targets = {(t.deployment_id, t.device_id): t for t in session.exec(select(DeploymentTarget).where(
        col(DeploymentTarget.device_id).in_([r.device_id for r in ordered]),
        col(DeploymentTarget.deployment_id).in_([experiment.deployment_a_id, experiment.deployment_b_id])))}
    for row in ordered:
        target = targets.get((deployment_id(experiment, Arm(str(row.arm))), row.device_id))
        if target is None or not target.final:
            continue
        if target.outcome == Outcome.COMMITTED:
            _device(experiment, row, ArmDeviceEvent.INSTALL, now=now, reason=None)
            row.running_since = now
        else:
            event = ArmDeviceEvent.CANCEL if target.outcome == Outcome.CANCELLED else ArmDeviceEvent.FAIL
            _device(experiment, row, event, now=now, reason=": ".join(
                str(p) for p in (target.outcome, target.detail or target.reason) if p))
        session.add(row)


def _close(session: Session, experiment: Experiment, *, now: float, issuer: OrderIssuer, status: DeploymentStatus,
           why: str) -> None:
    """The experiment left ``running``: orders still out are cancelled (signed cancel orders), the
    arm deployments end with ``status``."""
    _follow_devices(session, experiment, now=now)   # a device may have committed since the last pass
    for arm in Arm:
        deployment = deployments.get_deployment(session, deployment_id=deployment_id(experiment, arm))
        if deployment.finished_at is None and any(not t.final for t in deployments.targets_of(
                session, deployment_id=deployment.id)):
            deployments.cancel_deployment(session, deployment_id=deployment.id, issuer=issuer, actor="system",
                                          now=now)
        deployment.status, deployment.finished_at = status, deployment.finished_at or now
        session.add(deployment)
    for row in devices_of(session, experiment_id=experiment.id):
        if row.state == ArmDeviceState.ORDERED:
            _device(experiment, row, ArmDeviceEvent.CANCEL, now=now, reason=why)
            session.add(row)


# ------------------------------------------------------------------------------------ plumbing

def _move(experiment: Experiment, event: ExperimentEvent, *, now: float, reason: str | None) -> None:
    was_running = experiment.state == ExperimentState.RUNNING
    experiment.state = advance(EXPERIMENT_TRANSITIONS, experiment.state, event, what=f"experiment {experiment.id}")
    experiment.reason, experiment.updated_at = reason, now
    if was_running:
        experiment.finished_at = now
    log.info("experiment %s: %s -> %s%s", experiment.id, event.value, experiment.state,
             f" ({reason})" if reason else "")


def _device(experiment: Experiment, row: ExperimentDevice, event: ArmDeviceEvent, *, now: float,
            reason: str | None) -> None:
    row.state = advance(ARM_DEVICE_TRANSITIONS, row.state, event, what=f"device {row.device_id}")
    row.reason, row.updated_at = reason, now
    log.info("experiment %s device %s (arm %s): %s%s", experiment.id, row.device_id, row.arm, row.state,
             f" ({reason})" if reason else "")


def _record(session: Session, experiment: Experiment, actor: str, action: str, now: float, **details: Any) -> None:
    audit.record(session, actor=actor, action=f"experiment.{action}", target=f"experiment:{experiment.id}",
                 details={"state": experiment.state} | {k: v for k, v in details.items() if v}, now=now)
    session.add(experiment)


def _announce(session: Session, experiment: Experiment, event: WebhookEvent, now: float, **data: Any) -> None:
    """Tell the webhooks (docs/webhooks.md), in this transaction: sent exactly when it commits."""
    webhooks.emit(session, event=event, now=now, payload={
        "experiment_id": experiment.id, "name": experiment.name, "bundle_a_digest": experiment.bundle_a_digest,
        "bundle_b_digest": experiment.bundle_b_digest, "state": experiment.state, **data})


def _installed(device: Device) -> str | None:
    digest = (device.installed or {}).get("digest")
    return digest if isinstance(digest, str) else None


def _label(bundle: Bundle) -> str:
    return f"{bundle.name} {bundle.version}"
