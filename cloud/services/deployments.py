"""Deployments: a bundle to one device, a list, a tag or every compatible device.

Creating a deployment signs one order per device and stores it on the device's target row
(``published_at`` empty); :func:`publish_pending` sends stored orders and is called right after
the request and by the reconciler, so an order survives a controller restart or a broker outage.
Status reports move each target to a final outcome (a batch of them: :class:`ReportBatch`, its targets
loaded in one query and each deployment rolled up once); :func:`expire_silent_targets` fails targets
whose device stays silent past the deployment's timeout.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import bindparam, func, or_, tuple_
from sqlmodel import Session, col, select

from edgefleet.cloud.services import audit, devices
from edgefleet.cloud.services.orders import OrderIssuer
from edgefleet.cloud.services.registry import get_bundle
from edgefleet.cloud.store.tables import Bundle, Deployment, DeploymentTarget, Device, row_id
from edgefleet.cloud.vocabulary import DeploymentStatus, TargetState
from edgefleet.protocol.errors import ConflictError, InvalidRequestError, NotFoundError, TargetMismatchError
from edgefleet.protocol.manifest import BundleManifest, check_target
from edgefleet.protocol.messages import HealthCheck, OrderMessage, State, StatusReport, encode
from edgefleet.protocol.topics import cmd
from edgefleet.protocol.vocabulary import OrderAction, Outcome, Reason, UpdateState

log = logging.getLogger(__name__)

Publish = Callable[[str, bytes], bool]
"""Hands ``payload`` to the broker for ``topic`` (QoS 1); False when not connected."""

HISTORY_MAX = 50


def _history(target: DeploymentTarget, now: float, **entry: Any) -> None:
    target.history = (list(target.history) + [{"at": now, **entry}])[-HISTORY_MAX:]


def _select_devices(session: Session, *, device_ids: list[str] | None, tag: str | None,
                    all_devices: bool) -> tuple[list[Device], dict[str, Any]]:
    chosen = [bool(device_ids), bool(tag), bool(all_devices)]
    if sum(chosen) != 1:
        raise InvalidRequestError("give exactly one of device_ids, tag or all", where="target")
    if device_ids:
        missing = [d for d in device_ids if session.get(Device, d) is None]
        if missing:
            raise NotFoundError(f"unknown devices: {', '.join(missing)}", where="device_ids")
        return ([devices.get_device(session, device_id=d) for d in dict.fromkeys(device_ids)],
                {"device_ids": list(device_ids)})
    if tag:
        return devices.list_devices(session, tag=tag), {"tag": tag}
    return devices.list_devices(session), {"all": True}


@dataclass(frozen=True)
class TargetPlan:
    """The devices a deployment's target matches: those it would order and those it would skip (why)."""

    matching: int
    chosen: list[Device]
    skipped: list[dict[str, Any]]
    selector: dict[str, Any]


def plan_targets(session: Session, *, bundle: Bundle, device_ids: list[str] | None = None, tag: str | None = None,
                 all_devices: bool = False) -> TargetPlan:
    """Which devices ``create_deployment`` would order (compatible, and for a tag or ``all`` not already
    running the bundle); nothing is stored. The UI's live count of a target asks this too."""
    manifest = BundleManifest.model_validate(bundle.manifest)
    candidates, selector = _select_devices(session, device_ids=device_ids, tag=tag, all_devices=all_devices)
    chosen: list[Device] = []
    skipped: list[dict[str, Any]] = []
    for device in candidates:
        reason = incompatibility(manifest, device)
        if reason is None and not device_ids and (device.installed or {}).get("digest") == bundle.digest:
            reason = "already runs this bundle"
        if reason is None:
            chosen.append(device)
        else:
            skipped.append({"device_id": device.id, "reason": reason})
    return TargetPlan(matching=len(candidates), chosen=chosen, skipped=skipped, selector=selector)


def create_deployment(session: Session, *, bundle_digest: str, issuer: OrderIssuer, actor: str, now: float,
                      timeout_s: float, device_ids: list[str] | None = None, tag: str | None = None,
                      all_devices: bool = False, note: str = "", health_check: HealthCheck | None = None
                      ) -> Deployment:
    """Target the devices, check each one can run the bundle, and sign one order per device.

    Devices named explicitly must all be compatible (else :class:`TargetMismatchError`);
    devices matched by a tag or ``all`` are skipped when incompatible or already running the
    bundle (listed in ``skipped``).
    A device's open target in an older deployment is superseded. ``health_check`` goes into every
    order and overrides the devices' own health-check window.
    """
    bundle = get_bundle(session, digest=bundle_digest)
    plan = plan_targets(session, bundle=bundle, device_ids=device_ids, tag=tag, all_devices=all_devices)
    chosen, skipped, selector = plan.chosen, plan.skipped, plan.selector
    if device_ids and skipped:
        raise TargetMismatchError(f"device {skipped[0]['device_id']}: {skipped[0]['reason']}", where="device_ids")
    if not chosen:
        raise ConflictError("no compatible device matches the target", where="target",
                            hint=f"skipped: {skipped[:5]}{' ...' if len(skipped) > 5 else ''}" if skipped
                            else "enroll devices or change the selector")
    deployment = Deployment(id=f"dep-{uuid.uuid4().hex[:12]}", bundle_id=row_id(bundle), bundle_digest=bundle.digest,
                            selector=selector, skipped=skipped, note=note, created_at=now, created_by=actor,
                            timeout_s=timeout_s)
    session.add(deployment)
    session.flush()
    for device in chosen:
        order_device(session, deployment=deployment, bundle=bundle, device=device, issuer=issuer, now=now,
                     health_check=health_check)
    audit.record(session, actor=actor, action="deployment.create", target=f"deployment:{deployment.id}",
                 details={"bundle": bundle.digest, "selector": selector, "devices": [d.id for d in chosen],
                          "skipped": skipped}, now=now)
    log.info("deployment %s: bundle %s %s to %d device(s), %d skipped", deployment.id, bundle.name,
             bundle.version, len(chosen), len(skipped))
    return deployment


def order_device(session: Session, *, deployment: Deployment, bundle: Bundle, device: Device, issuer: OrderIssuer,
                 now: float, health_check: HealthCheck | None = None) -> DeploymentTarget:
    """Sign an install order for ``device`` and store it on a new target of ``deployment`` (published
    by :func:`publish_pending`). The device's open target in another deployment is superseded."""
    _supersede_open_targets(session, device_id=device.id, by=deployment.id, now=now)
    message = issuer.issue(session, device=device, deployment_id=deployment.id, bundle=bundle,
                           action=OrderAction.INSTALL, now=now, health_check=health_check)
    target = DeploymentTarget(deployment_id=deployment.id, device_id=device.id,
                              sequence=message.order.signed.sequence, order=message.model_dump(mode="json"),
                              created_at=now, updated_at=now)
    _history(target, now, state=TargetState.PENDING, sequence=target.sequence)
    session.add(target)
    return target


def reorder_target(session: Session, *, target: DeploymentTarget, issuer: OrderIssuer, now: float) -> None:
    """Send a finished target's install order again, newly signed (a retry after a failure)."""
    deployment = get_deployment(session, deployment_id=target.deployment_id)
    device = devices.get_device(session, device_id=target.device_id)
    previous = OrderMessage.model_validate(target.order).order.signed
    _supersede_open_targets(session, device_id=device.id, by=deployment.id, now=now)
    message = issuer.issue(session, device=device, deployment_id=deployment.id, bundle=_bundle_of(session, deployment),
                           action=OrderAction.INSTALL, now=now, health_check=previous.health_check)
    target.sequence, target.order = message.order.signed.sequence, message.model_dump(mode="json")
    target.final, target.outcome, target.reason, target.detail = False, None, None, None
    target.state, target.published_at, target.updated_at = TargetState.PENDING, None, now
    _history(target, now, state=TargetState.PENDING, sequence=target.sequence, note="sent again (retry)")
    session.add(target)


def owned_by_rollout(deployment: Deployment) -> str | None:
    """The rollout whose orders this deployment holds (its status follows the rollout, not its targets)."""
    owner = deployment.selector.get("rollout")
    return owner if isinstance(owner, str) else None


def owned_by_experiment(deployment: Deployment) -> str | None:
    """The experiment one of whose arms this deployment holds (its status follows the experiment)."""
    owner = deployment.selector.get("experiment")
    return owner if isinstance(owner, str) else None


def incompatibility(manifest: BundleManifest, device: Device) -> str | None:
    """Why ``device`` cannot run the bundle of ``manifest`` (``None``: it can)."""
    if not device.mqtt_password_hash:
        return "device is decommissioned"
    facts = devices.facts(device)
    if facts is None:
        return "device has not said hello yet (facts unknown)"
    try:
        check_target(manifest, facts)
    except TargetMismatchError as exc:
        return exc.message
    return None


def _supersede_open_targets(session: Session, *, device_id: str, by: str, now: float) -> None:
    for target in session.exec(select(DeploymentTarget).where(DeploymentTarget.device_id == device_id,
                                                              DeploymentTarget.final == False)):  # noqa: E712
        _finish(target, now, outcome=Outcome.CANCELLED, reason=Reason.SUPERSEDED, detail=f"superseded by {by}")
        session.add(target)
        session.flush()
        _rollup(session, deployment_id=target.deployment_id, now=now)


def _finish(target: DeploymentTarget, now: float, *, outcome: Outcome, reason: str | None,
            detail: str | None = None) -> None:
    target.final, target.outcome, target.reason, target.detail = True, outcome, reason, detail
    target.updated_at = now
    _history(target, now, state=target.state, outcome=outcome, reason=reason)
    log.info("deployment %s device %s: %s (%s)", target.deployment_id, target.device_id, outcome, reason)


def _rollup(session: Session, *, deployment_id: str, now: float) -> None:
    deployment = session.get(Deployment, deployment_id)
    if deployment is None or deployment.finished_at is not None or owned_by_rollout(deployment) \
            or owned_by_experiment(deployment):
        return
    # one COUNT on (deployment_id, final) per batch of status reports (ix_targets_deployment_open); the targets
    # are loaded only once, at the end (loading them all on every report made a rollout to N devices cost N^2)
    open_targets = session.exec(select(func.count()).select_from(DeploymentTarget).where(
        DeploymentTarget.deployment_id == deployment_id, col(DeploymentTarget.final) == False)).one()  # noqa: E712
    if open_targets:
        return
    targets = list(session.exec(select(DeploymentTarget).where(DeploymentTarget.deployment_id == deployment_id)))
    committed = sum(t.outcome == Outcome.COMMITTED for t in targets)
    if deployment.status == DeploymentStatus.CANCELLED or all(t.outcome == Outcome.CANCELLED for t in targets):
        deployment.status = DeploymentStatus.CANCELLED
    elif committed == len(targets):
        deployment.status = DeploymentStatus.SUCCEEDED
    elif committed == 0:
        deployment.status = DeploymentStatus.FAILED
    else:
        deployment.status = DeploymentStatus.PARTIAL
    deployment.finished_at = now
    session.add(deployment)
    log.info("deployment %s finished: %s (%d/%d committed)", deployment_id, deployment.status, committed,
             len(targets))


def list_deployments(session: Session, *, status: DeploymentStatus | None = None, bundle_id: int | None = None,
                     limit: int = 100) -> list[Deployment]:
    """Newest first; optionally only those with ``status`` or of one bundle."""
    query = select(Deployment).order_by(col(Deployment.created_at).desc()).limit(limit)
    if status:
        query = query.where(Deployment.status == status)
    if bundle_id is not None:
        query = query.where(Deployment.bundle_id == bundle_id)
    return list(session.exec(query))


def deployments_by_id(session: Session, *, ids: set[str]) -> dict[str, Deployment]:
    if not ids:
        return {}
    return {d.id: d for d in session.exec(select(Deployment).where(col(Deployment.id).in_(ids)))}


def targets_by_deployment(session: Session, *, deployment_ids: list[str]) -> dict[str, list[DeploymentTarget]]:
    """The targets of each deployment (every id gets a list, maybe empty)."""
    found: dict[str, list[DeploymentTarget]] = {i: [] for i in deployment_ids}
    if deployment_ids:
        for t in session.exec(select(DeploymentTarget)
                              .where(col(DeploymentTarget.deployment_id).in_(deployment_ids))):
            found[t.deployment_id].append(t)
    return found


def describe_selector(selector: dict[str, Any]) -> str:
    """What a deployment targets, for people: ``tag onnx``, ``all compatible devices``, ``cam-1, cam-2 +3``."""
    if selector.get("rollout"):
        return f"rollout {selector['rollout']}"
    if selector.get("experiment"):
        return f"experiment {selector['experiment']} arm {str(selector.get('arm', '')).upper()}"
    if selector.get("all"):
        return "all compatible devices"
    if selector.get("tag"):
        return f"tag {selector['tag']}"
    ids = list(selector.get("device_ids") or [])
    return ", ".join(ids[:3]) + (f" +{len(ids) - 3}" if len(ids) > 3 else "")


def bundle_label(bundle: Bundle) -> str:
    return f"{bundle.name} {bundle.version}+{bundle.build}"


def _bundle_of(session: Session, deployment: Deployment) -> Bundle:
    bundle = session.get(Bundle, deployment.bundle_id)
    if bundle is None:  # bundles used by deployments cannot be deleted (registry.delete_bundle)
        raise NotFoundError(f"deployment {deployment.id} refers to a missing bundle", where="bundle_id")
    return bundle


def get_deployment(session: Session, *, deployment_id: str) -> Deployment:
    deployment = session.get(Deployment, deployment_id)
    if deployment is None:
        raise NotFoundError(f"no deployment {deployment_id!r}", where="deployment_id")
    return deployment


def targets_of(session: Session, *, deployment_id: str) -> list[DeploymentTarget]:
    return list(session.exec(select(DeploymentTarget).where(DeploymentTarget.deployment_id == deployment_id)
                             .order_by(DeploymentTarget.device_id)))


def targets_for_device(session: Session, *, device_id: str, limit: int = 20) -> list[DeploymentTarget]:
    return list(session.exec(select(DeploymentTarget).where(DeploymentTarget.device_id == device_id)
                             .order_by(col(DeploymentTarget.created_at).desc()).limit(limit)))


def progress(targets: list[DeploymentTarget]) -> dict[str, int]:
    """Counts per display state: pending/sent/in-progress states, then final outcomes."""
    counts: dict[str, int] = {}
    for t in targets:
        key = (t.outcome or t.state) if t.final else t.state
        counts[key] = counts.get(key, 0) + 1
    return counts


def cancel_deployment(session: Session, *, deployment_id: str, issuer: OrderIssuer, actor: str,
                      now: float) -> Deployment:
    """Send a signed cancel order to every device not yet final and mark those targets cancelled."""
    deployment = get_deployment(session, deployment_id=deployment_id)
    if deployment.finished_at is not None:
        raise ConflictError(f"deployment {deployment_id} already finished ({deployment.status})",
                            where="deployment_id")
    bundle = _bundle_of(session, deployment)
    cancelled = []
    for target in targets_of(session, deployment_id=deployment_id):
        if target.final:
            continue
        device = devices.get_device(session, device_id=target.device_id)
        message = issuer.issue(session, device=device, deployment_id=deployment_id, bundle=bundle,
                               action=OrderAction.CANCEL, now=now)
        target.sequence = message.order.signed.sequence
        target.order = message.model_dump(mode="json")
        target.published_at = None
        _finish(target, now, outcome=Outcome.CANCELLED, reason=Reason.CANCELLED_BY_OPERATOR)
        session.add(target)
        cancelled.append(target.device_id)
    deployment.status = DeploymentStatus.CANCELLED
    session.add(deployment)
    session.flush()
    _rollup(session, deployment_id=deployment_id, now=now)
    audit.record(session, actor=actor, action="deployment.cancel", target=f"deployment:{deployment_id}",
                 details={"devices": cancelled}, now=now)
    return deployment


RETRIED_OUTCOMES = (Outcome.FAILED, Outcome.ROLLED_BACK, Outcome.REFUSED)
"""The final outcomes a retry sends the order again for (committed and cancelled devices are left alone)."""


def retry_failed(session: Session, *, deployment_id: str, issuer: OrderIssuer, actor: str, now: float) -> list[str]:
    """Send the install order again, newly signed, to every device of the deployment whose order
    failed, was rolled back or refused; the deployment runs again until they finish. A deployment a
    rollout or an experiment owns is retried by its owner, not here. Returns the devices ordered again."""
    deployment = get_deployment(session, deployment_id=deployment_id)
    owner = owned_by_rollout(deployment) or owned_by_experiment(deployment)
    if owner:
        raise ConflictError(f"deployment {deployment_id} belongs to {owner}", where="deployment_id",
                            hint="act on the rollout or experiment instead")
    if deployment.status == DeploymentStatus.CANCELLED:
        raise ConflictError(f"deployment {deployment_id} was cancelled", where="deployment_id",
                            hint="create a new deployment for the devices")
    failed = [t for t in targets_of(session, deployment_id=deployment_id)
              if t.final and t.outcome in RETRIED_OUTCOMES]
    if not failed:
        raise ConflictError(f"deployment {deployment_id} has no failed device to retry", where="deployment_id")
    for target in failed:
        reorder_target(session, target=target, issuer=issuer, now=now)
    deployment.status, deployment.finished_at = DeploymentStatus.ACTIVE, None
    session.add(deployment)
    audit.record(session, actor=actor, action="deployment.retry", target=f"deployment:{deployment_id}",
                 details={"devices": [t.device_id for t in failed]}, now=now)
    log.info("deployment %s: %d failed device(s) ordered again by %s", deployment_id, len(failed), actor)
    return [t.device_id for t in failed]


def previous_bundle(session: Session, *, device_id: str) -> Bundle | None:
    """The bundle the device ran before its current one: the newest other bundle a deployment
    committed on it (``None`` when it never committed another)."""
    device = devices.get_device(session, device_id=device_id)
    current = (device.installed or {}).get("digest")
    committed = session.exec(select(DeploymentTarget).where(   # at the same time: the newer order first
        DeploymentTarget.device_id == device_id, DeploymentTarget.outcome == Outcome.COMMITTED
    ).order_by(col(DeploymentTarget.updated_at).desc(), col(DeploymentTarget.sequence).desc())).all()
    found = deployments_by_id(session, ids={t.deployment_id for t in committed})
    for target in committed:
        deployment = found.get(target.deployment_id)
        if deployment is not None and deployment.bundle_digest != current:
            return _bundle_of(session, deployment)
    return None


def rollback_device(session: Session, *, device_id: str, issuer: OrderIssuer, actor: str, now: float,
                    timeout_s: float) -> Deployment:
    """A deployment of the bundle the device ran before (:func:`previous_bundle`) to that device."""
    previous = previous_bundle(session, device_id=device_id)
    if previous is None:
        raise ConflictError(f"device {device_id} never committed another bundle to roll back to",
                            where="device_id", hint="deploy the bundle you want instead")
    deployment = create_deployment(session, bundle_digest=previous.digest, issuer=issuer, actor=actor, now=now,
                                   timeout_s=timeout_s, device_ids=[device_id],
                                   note=f"roll back {device_id} to {bundle_label(previous)}")
    audit.record(session, actor=actor, action="device.rollback", target=f"device:{device_id}",
                 details={"bundle": previous.digest, "deployment": deployment.id}, now=now)
    return deployment


TargetKey = tuple[str, str]
"""``(deployment id, device id)``: one target (they are unique together)."""

_KEY = tuple_(col(DeploymentTarget.deployment_id), col(DeploymentTarget.device_id))
_REPORTED_TARGETS = (select(DeploymentTarget)
                     .where(_KEY.in_(bindparam("keys", expanding=True)),
                            or_(col(DeploymentTarget.final) == False,  # noqa: E712
                                _KEY.in_(bindparam("any_state", expanding=True))))
                     .order_by(col(DeploymentTarget.id)).with_for_update())
"""The targets of ``keys`` that are open or in ``any_state``, locked in id order until the batch commits (on
PostgreSQL; SQLite has one writer): another controller storing a report of one of them meanwhile waits, then
reads what this batch stored, instead of writing over it from what it read before. A batch takes these locks
in one statement, before it writes anything, so two batches cannot deadlock on them. Built once, with
expanding IN parameters (as the ingest's own statements)."""


@dataclass
class ReportBatch:
    """The deployment targets a batch of device messages names, loaded a batch at a time, and the deployments
    whose roll-up waits for the end of the batch: storing N status reports costs a few statements, not
    three per report (the target's SELECT, its UPDATE flushed at once, the roll-up's COUNT).
    Made by :func:`report_batch`, passed to :func:`apply_status` and :func:`apply_heartbeat`, ended by
    :func:`finish_batch` (in the same session and transaction)."""

    targets: dict[TargetKey, DeploymentTarget] = field(default_factory=dict)
    loaded: set[TargetKey] = field(default_factory=set)
    """Keys whose target, open or final, is in ``targets`` if it exists."""
    loaded_open: set[TargetKey] = field(default_factory=set)
    """Keys whose target is in ``targets`` if it was open (a report never opens a target again)."""
    rollups: dict[str, float] = field(default_factory=dict)
    """Deployment id -> the time of the last report that moved one of its targets."""


def _load_targets(session: Session, batch: ReportBatch, keys: set[TargetKey], *, any_state: set[TargetKey]) -> None:
    """One query: the targets of ``keys``, those not in ``any_state`` only if open."""
    if not keys:
        return
    for target in session.exec(_REPORTED_TARGETS, params={"keys": sorted(keys), "any_state": sorted(any_state)}):
        batch.targets[(target.deployment_id, target.device_id)] = target
    batch.loaded.update(any_state)
    batch.loaded_open.update(keys - any_state)


def _heartbeat_key(device_id: str, state: State) -> TargetKey | None:
    """The target a heartbeat may end: it names an order and how that order ended."""
    if state.outcome is None or state.deployment_id is None or state.sequence is None:
        return None
    return state.deployment_id, device_id


def report_batch(session: Session, messages: Iterable[tuple[str, StatusReport | State]]) -> ReportBatch:
    """Load the targets of these ``(device id, message)`` at once: every target a status report names (it
    may only land in the history), the open target a heartbeat names. One query."""
    reported: set[TargetKey] = set()
    heartbeats: set[TargetKey] = set()
    for device_id, message in messages:
        if isinstance(message, StatusReport):
            reported.add((message.deployment_id, device_id))
        elif (key := _heartbeat_key(device_id, message)) is not None:
            heartbeats.add(key)
    batch = ReportBatch()
    _load_targets(session, batch, reported | heartbeats, any_state=reported)
    return batch


def _target(session: Session, batch: ReportBatch, key: TargetKey, *, open_only: bool) -> DeploymentTarget | None:
    """The target of ``key`` (only if open: ``open_only``), from the batch; one not loaded yet is loaded now."""
    if key not in batch.loaded and not (open_only and key in batch.loaded_open):
        _load_targets(session, batch, {key}, any_state=set() if open_only else {key})
    target = batch.targets.get(key)
    return None if target is None or (open_only and target.final) else target


def finish_batch(session: Session, batch: ReportBatch) -> None:
    """Roll up every deployment the batch's reports moved, once each, at the time of its last report
    (a deployment ends at its last open target's final report: later reports of it in the batch are
    ignored, so that report is its last)."""
    if batch.rollups:
        session.flush()
    for deployment_id, now in batch.rollups.items():
        _rollup(session, deployment_id=deployment_id, now=now)
    batch.rollups.clear()


def apply_status(session: Session, *, device_id: str, report: StatusReport, now: float,
                 batch: ReportBatch | None = None) -> DeploymentTarget | None:
    """Move the device's target in ``report.deployment_id`` along; stale reports only land in history.
    Without ``batch``, the deployment is rolled up now; with one, by :func:`finish_batch`."""
    alone = batch is None
    batch = batch if batch is not None else ReportBatch()
    target = _target(session, batch, (report.deployment_id, device_id), open_only=False)
    if target is None:
        log.warning("status from %s for unknown deployment %s ignored", device_id, report.deployment_id)
        return None
    _apply_report(session, target, report=report, now=now, batch=batch)
    if alone:
        finish_batch(session, batch)
    return target


def _apply_report(session: Session, target: DeploymentTarget, *, report: StatusReport, now: float,
                  batch: ReportBatch) -> None:
    device_id = target.device_id
    entry = {"state": report.state, "sequence": report.sequence, "final": report.final,
             "outcome": report.outcome, "reason": report.reason}
    if target.final or (report.sequence and report.sequence < target.sequence):
        _history(target, now, ignored=True, **entry)
        session.add(target)
        return
    if report.outcome == Outcome.REFUSED and report.reason == Reason.REPLAYED_ORDER:
        # A redelivered copy of an order the device already accepted (QoS 1 duplicate, re-publish
        # after a crash): the device is working on it, progress reports follow. If it really
        # never runs it, the deployment timeout ends the target.
        log.warning("deployment %s device %s: duplicate order refused as replay; ignored", target.deployment_id,
                    device_id)
        _history(target, now, ignored=True, **entry)
        session.add(target)
        return
    target.state = report.state
    target.bytes_done, target.bytes_total = report.bytes_done, report.bytes_total
    target.updated_at = now
    if report.final:
        outcome = report.outcome or (Outcome.COMMITTED if report.state == UpdateState.COMMITTED else Outcome.FAILED)
        _finish(target, now, outcome=outcome, reason=report.reason, detail=report.detail)
    else:
        target.detail = report.detail  # what the device is doing now (e.g. the health-check window)
        _history(target, now, **entry)
        log.info("deployment %s device %s: %s", target.deployment_id, device_id, report.state)
    session.add(target)
    batch.rollups[target.deployment_id] = now


def heartbeat_ends(target: DeploymentTarget, state: State, *, now: float) -> bool:
    """Whether the heartbeat ``state`` ends ``target``: the target is open, on the order the heartbeat names,
    and a heartbeat interval has passed since its last report."""
    return (not target.final and target.sequence == state.sequence
            and target.updated_at <= now - state.heartbeat_interval_s)


def apply_heartbeat(session: Session, *, device_id: str, state: State, now: float,
                    batch: ReportBatch | None = None) -> DeploymentTarget | None:
    """The device's heartbeat says how its last order ended: if that order's target is still open a
    heartbeat interval after its last report (the final report was lost, e.g. the controller died
    before storing it), end it so. Sooner, the final report is merely behind the heartbeat.
    Without ``batch``, the deployment is rolled up now; with one, by :func:`finish_batch`."""
    key = _heartbeat_key(device_id, state)
    if key is None:
        return None
    alone = batch is None
    batch = batch if batch is not None else ReportBatch()
    target = _target(session, batch, key, open_only=True)
    if target is None or not heartbeat_ends(target, state, now=now):
        return None
    log.warning("deployment %s device %s: final report missing; its heartbeat says %s", state.deployment_id,
                device_id, state.outcome)
    _apply_report(session, target, now=now, batch=batch, report=StatusReport(
        device_id=device_id, deployment_id=key[0], sequence=target.sequence, state=state.update_state,
        final=True, outcome=state.outcome, detail="from the device's heartbeat (its final report did not arrive)",
        sent_at=state.sent_at))
    if alone:
        finish_batch(session, batch)
    return target


def resend_unacknowledged(session: Session, *, device_id: str, now: float) -> int:
    """A device (re)connected: queue again every order it has not acknowledged yet (it may have
    been offline when the order was published). A copy it already has is refused as a replay,
    which :func:`apply_status` ignores."""
    targets = list(session.exec(select(DeploymentTarget).where(DeploymentTarget.device_id == device_id,
                                                               DeploymentTarget.final == False,  # noqa: E712
                                                               DeploymentTarget.state == TargetState.SENT)))
    for target in targets:
        target.published_at = None
        _history(target, now, state=TargetState.SENT, note="device reconnected; order queued again")
        session.add(target)
    return len(targets)


def expire_silent_targets(session: Session, *, now: float) -> list[tuple[str, str]]:
    """Fail every open target whose device has been silent longer than its deployment's timeout."""
    expired = []
    rows = session.exec(select(DeploymentTarget, Deployment)
                        .join(Deployment, col(Deployment.id) == DeploymentTarget.deployment_id)
                        .where(DeploymentTarget.final == False,  # noqa: E712
                               col(DeploymentTarget.updated_at) + col(Deployment.timeout_s) < now))
    for target, deployment in rows:
        _finish(target, now, outcome=Outcome.FAILED, reason=Reason.DEPLOYMENT_TIMEOUT,
                detail=f"no report for {now - target.updated_at:.0f} s (state {target.state})")
        session.add(target)
        expired.append((deployment.id, target.device_id))
    session.flush()
    for deployment_id in {d for d, _ in expired}:
        _rollup(session, deployment_id=deployment_id, now=now)
    return expired


def publish_pending(session: Session, *, publish: Publish, prefix: str, issuer: OrderIssuer,
                    now: float) -> int:
    """Publish every stored order not yet handed to the broker (install orders of open targets,
    cancel orders); re-sign orders that expired unsent. Each order is locked while it goes out (on
    PostgreSQL; SQLite has one writer anyway): a second controller publishing at the same time skips it,
    so no order is sent twice."""
    sent = 0
    pending = list(session.exec(
        select(DeploymentTarget).where(col(DeploymentTarget.published_at).is_(None),
                                       or_(col(DeploymentTarget.final) == False,  # noqa: E712
                                           col(DeploymentTarget.reason) == Reason.CANCELLED_BY_OPERATOR))
        .order_by(col(DeploymentTarget.id)).with_for_update(skip_locked=True)))
    for target in pending:
        message = OrderMessage.model_validate(target.order)
        if message.order.signed.expires_at <= now + 60:
            device = devices.get_device(session, device_id=target.device_id)
            bundle = _bundle_of(session, get_deployment(session, deployment_id=target.deployment_id))
            message = issuer.issue(session, device=device, deployment_id=target.deployment_id, bundle=bundle,
                                   action=message.order.signed.action, now=now,
                                   health_check=message.order.signed.health_check)
            target.sequence = message.order.signed.sequence
            target.order = message.model_dump(mode="json")
        if not publish(cmd(target.device_id, prefix), encode(message)):
            break
        target.published_at = now
        if target.state == TargetState.PENDING:
            target.state = TargetState.SENT
            _history(target, now, state=TargetState.SENT, sequence=target.sequence)
        session.add(target)
        sent += 1
    return sent
