"""A short fingerprint of what the live pages show, so the UI re-fetches a page only when it changed.

Each fingerprint is a handful of aggregates the database answers from an index or a table's newest row
(no page is rendered, no device list is loaded), hashed to a few characters: cheap to ask for every few
seconds by every open page, at 10 000 devices too.

What changes it: the *fleet* mark (the overview, the trends, every other live page) moves when a device is
enrolled, goes online or offline (each flip writes a ``device_transitions`` row), sends telemetry or an
event, a deployment target, deployment, rollout or incident changes, or anything is audited (tags, tokens,
users, decommissioning, ...).
The *device* mark (a device's page) moves only with that device's row (state, bundle, tags, online), its
telemetry, events and deployment targets, and the audit log. Heartbeats that change nothing but
``last_seen`` move neither, so an idle fleet costs no page re-fetch at all.
"""

from __future__ import annotations

import hashlib

from sqlalchemy import func
from sqlmodel import Session, select

from edgefleet.cloud.store.tables import (
    AuditEntry,
    Deployment,
    DeploymentTarget,
    Device,
    DeviceEvent,
    DeviceTransition,
    Incident,
    Rollout,
    TelemetryRecord,
)


def _digest(parts: list[object]) -> str:
    return hashlib.blake2s(repr(parts).encode(), digest_size=8).hexdigest()


def fleet_mark(session: Session) -> str:
    """The fingerprint of the fleet's state as the live pages show it."""
    one = session.exec
    parts: list[object] = [
        one(select(func.count()).select_from(Device)).one(),
        one(select(func.max(DeviceTransition.id))).one(),   # every online/offline flip writes one (no scan)
        one(select(func.max(DeviceEvent.id))).one(),
        one(select(func.max(TelemetryRecord.id))).one(),
        one(select(func.max(DeploymentTarget.updated_at))).one(),
        one(select(func.count(), func.max(Deployment.finished_at)).select_from(Deployment)).one(),
        one(select(func.max(Rollout.updated_at))).one(),
        one(select(func.max(Incident.updated_at))).one(),
        one(select(func.max(AuditEntry.id))).one(),
    ]
    return _digest(parts)


def device_mark(session: Session, *, device_id: str) -> str:
    """The fingerprint of one device's page; an unknown device has one too (its page is a 404 that stays)."""
    device = session.get(Device, device_id)
    row = None if device is None else (device.online, device.update_state, device.installed, device.tags,
                                       device.hardware_class, bool(device.mqtt_password_hash))
    parts: list[object] = [
        row,
        session.exec(select(func.max(TelemetryRecord.id)).where(TelemetryRecord.device_id == device_id)).one(),
        session.exec(select(func.max(DeviceEvent.id)).where(DeviceEvent.device_id == device_id)).one(),
        session.exec(select(func.max(DeploymentTarget.updated_at))
                     .where(DeploymentTarget.device_id == device_id)).one(),
        session.exec(select(func.max(AuditEntry.id))).one(),
    ]
    return _digest(parts)
