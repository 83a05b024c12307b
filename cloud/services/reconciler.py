"""The controller's long-running logic as one idempotent pass over stored state.

:func:`reconcile` may run any number of times, at any moment, in any process: it only moves
state forward from what is stored (heartbeat timeouts, deployment timeouts, unsent orders,
old message ids), so a restart loses nothing and a double run changes nothing.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from sqlalchemy import delete, func
from sqlmodel import col, select

from edgefleet.cloud.metrics import ControllerMetrics
from edgefleet.cloud.services import deployments, devices, experiments, fleet_history
from edgefleet.cloud.services.orders import OrderIssuer
from edgefleet.cloud.services.rollouts import service as rollouts
from edgefleet.cloud.store.engine import OpenSession
from edgefleet.cloud.store.tables import Deployment, Device, ProcessedMessage

log = logging.getLogger(__name__)


@dataclass
class ReconcileReport:
    went_offline: list[str] = field(default_factory=list)
    timed_out: list[tuple[str, str]] = field(default_factory=list)
    rollouts_advanced: list[str] = field(default_factory=list)
    experiments_advanced: list[str] = field(default_factory=list)
    orders_published: int = 0
    pruned_ids: int = 0
    history: fleet_history.PassReport = field(default_factory=fleet_history.PassReport)


def reconcile(open_session: OpenSession, *, now: float, heartbeat_timeout_s: float, processed_id_retention_s: float,
              publish: deployments.Publish, issuer: OrderIssuer, prefix: str,
              metrics: ControllerMetrics | None = None,
              history: fleet_history.HistoryPolicy | None = None) -> ReconcileReport:
    """One pass: devices silent too long go offline and their open targets time out; every running
    rollout and every running experiment advances (each in its own transaction and row lock); then
    every stored, unsent order is published, old message ids are pruned, and a fleet snapshot is taken when
    one is due (``history``; old snapshots and online/offline transitions pruned)."""
    report = ReconcileReport()
    with open_session() as session:
        report.went_offline = devices.expire_heartbeats(session, now=now, timeout_s=heartbeat_timeout_s)
        report.timed_out = deployments.expire_silent_targets(session, now=now)
    report.rollouts_advanced = rollouts.advance_rollouts(open_session, now=now, issuer=issuer)
    report.experiments_advanced = experiments.advance_experiments(open_session, now=now, issuer=issuer)
    with open_session() as session:
        report.orders_published = deployments.publish_pending(session, publish=publish, prefix=prefix,
                                                              issuer=issuer, now=now)
        pruned = session.exec(delete(ProcessedMessage)
                              .where(col(ProcessedMessage.received_at) < now - processed_id_retention_s))
        report.pruned_ids = pruned.rowcount or 0
        report.history = fleet_history.reconcile_pass(session, now=now, policy=history or fleet_history.HistoryPolicy())
        if metrics is not None:
            metrics.devices_online.set(session.exec(select(func.count()).select_from(Device)
                                                    .where(col(Device.online) == True)).one())  # noqa: E712
            metrics.deployments_active.set(session.exec(select(func.count()).select_from(Deployment)
                                                        .where(col(Deployment.finished_at).is_(None))).one())
            metrics.orders_published.inc(report.orders_published)
    return report
