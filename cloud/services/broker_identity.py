"""Broker identity: the per-device client and role the controller keeps on a broker it manages
(setting ``broker_admin``; Mosquitto's dynamic-security plugin in :mod:`edgefleet.cloud.mqtt.dynsec`).

The device service calls in here at enrollment and decommission, the API for a password rotation,
the reconciler for what a decommission could not finish. Without a managed broker (``identity is
None``) the broker's users and ACLs are the operator's (the exported ``password_file``), and only the
stored password hash changes.

* Enrollment (and re-enrollment) provisions the device's client with its new password; a broker
  that does not take it fails the enrollment as a whole: the caller's transaction rolls back, so no
  device row is half made and the enrollment token stays unused.
* Decommission always takes effect in the database (API token revoked, message key and password
  hash cleared, so nothing the device says is stored any more). A broker that cannot be told marks
  the device ``broker_disable_pending``: every reconcile pass retries until the broker disables the
  client, and the device is listed with the flag meanwhile, so the two never disagree silently.
* A rotation gives the device a new random password, shown once; connections made with the old one
  are dropped by the broker.
"""

from __future__ import annotations

import logging
import secrets
from dataclasses import dataclass
from typing import Protocol

from sqlmodel import Session, select

from edgefleet.cloud.services import audit, auth
from edgefleet.cloud.store.tables import Device
from edgefleet.protocol.errors import ConflictError, NotFoundError, TransportError

log = logging.getLogger(__name__)


class BrokerIdentity(Protocol):
    """What the device service needs from a broker it manages (the real one is
    :class:`edgefleet.cloud.mqtt.dynsec.DynsecIdentity`). Failures raise :class:`TransportError`."""

    def provision_device(self, device_id: str, password: str) -> None:
        """Create or update the device's client (this password, client id = device id, enabled) and
        its role (its own topics only)."""

    def disable_device(self, device_id: str) -> None:
        """Disconnect the device's client and refuse it from now on."""


def new_password() -> str:
    return secrets.token_urlsafe(24)


def enrolled(identity: BrokerIdentity | None, device: Device, password: str) -> None:
    """Give the broker the enrolled device's credentials; on failure raise (the enrollment fails)."""
    if identity is not None:
        _provision(identity, device.id, password, hint="nothing was enrolled and the enrollment token is still "
                   "valid: once the broker and its dynamic-security plugin answer, enroll again")
    device.broker_disable_pending = False


def decommissioned(session: Session, identity: BrokerIdentity | None, device: Device, *, actor: str,
                   now: float) -> None:
    """Disable the decommissioned device's client; a broker that cannot be told leaves the device
    marked ``broker_disable_pending`` for :func:`retry_pending`."""
    if identity is None:
        return
    try:
        identity.disable_device(device.id)
    except TransportError as exc:
        device.broker_disable_pending = True
        audit.record(session, actor=actor, action="device.broker_disable_pending", target=f"device:{device.id}",
                     details={"error": str(exc)}, now=now)
        log.error("device %s decommissioned, but the broker did not disable its client (%s); retrying on every "
                  "reconcile pass", device.id, exc)
        return
    device.broker_disable_pending = False


@dataclass(frozen=True)
class RotatedPassword:
    device_id: str
    password: str
    """The new password, in plaintext only here."""
    broker_updated: bool
    """True when the controller gave it to the broker itself; false: re-export the password file."""


def rotate_password(session: Session, identity: BrokerIdentity | None, *, device_id: str, actor: str,
                    now: float) -> RotatedPassword:
    """A new broker password for an enrolled device (for a device enrolled before the broker was
    managed, this creates its client). The device needs it in its ``agent.toml`` (``password``)."""
    device = session.get(Device, device_id)
    if device is None:
        raise NotFoundError(f"no device {device_id!r}", where="device_id")
    if not device.mqtt_password_hash:
        raise ConflictError(f"device {device_id!r} is decommissioned", where="device_id",
                            hint="re-enroll it (edgefleet devices enroll --device-id) to give it credentials again")
    password = new_password()
    device.mqtt_password_hash = auth.mosquitto_password_hash(password)
    if identity is not None:
        _provision(identity, device_id, password, hint="the old password still works: once the broker and its "
                   "dynamic-security plugin answer, rotate again")
    session.add(device)
    audit.record(session, actor=actor, action="device.broker_password", target=f"device:{device_id}",
                 details={"broker_updated": identity is not None}, now=now)
    log.info("device %s has a new broker password", device_id)
    return RotatedPassword(device_id=device_id, password=password, broker_updated=identity is not None)


def pending(session: Session) -> list[Device]:
    return list(session.exec(select(Device).where(Device.broker_disable_pending == True)  # noqa: E712
                             .order_by(Device.id)))


def retry_pending(session: Session, identity: BrokerIdentity | None, *, now: float) -> list[str]:
    """Disable the clients of decommissioned devices the broker could not be told about; returns the
    ids done. Stops at the first failure (the broker is still away; the next pass tries again)."""
    if identity is None:
        return []
    done = []
    for device in pending(session):
        try:
            identity.disable_device(device.id)
        except TransportError as exc:
            log.warning("the broker still does not disable decommissioned device %s: %s", device.id, exc)
            break
        device.broker_disable_pending = False
        session.add(device)
        audit.record(session, actor="controller", action="device.broker_disabled", target=f"device:{device.id}",
                     now=now)
        log.info("device %s: its broker client is disabled now", device.id)
        done.append(device.id)
    return done


def _provision(identity: BrokerIdentity, device_id: str, password: str, *, hint: str) -> None:
    try:
        identity.provision_device(device_id, password)
    except TransportError as exc:
        raise TransportError(f"the broker did not take the credentials of device {device_id!r}: {exc.message}",
                             where=exc.where or "broker_admin",
                             hint=f"{hint}; {exc.hint}" if exc.hint else hint) from exc
