"""Devices: enrollment (one-time tokens exchanged for credentials), facts, tags, online state.

Devices learn nothing secret from MQTT: their credentials come from :func:`enroll` over HTTPS.
The facts used for target checks (arch, runtimes, agent version, hardware class) come from the
device's ``hello``; the hardware class set at enrollment (token tags) is not overwritten by it.
"""

from __future__ import annotations

import logging
import secrets
from dataclasses import dataclass

from sqlalchemy import or_
from sqlmodel import Session, col, select

from edgefleet.cloud.services import audit, auth, broker_identity, fleet_history
from edgefleet.cloud.services.auth import AuthenticationError
from edgefleet.cloud.store.tables import Device, DeviceEvent, EnrollmentToken
from edgefleet.cloud.vocabulary import Role, TransitionCause
from edgefleet.protocol.device_signatures import encode_public_key
from edgefleet.protocol.errors import ConfigError, ConflictError, InvalidRequestError, NotFoundError
from edgefleet.protocol.keys import load_public_key_pem
from edgefleet.protocol.manifest import DeviceFacts
from edgefleet.protocol.messages import Hello, State
from edgefleet.protocol.topics import validate_device_id
from edgefleet.protocol.vocabulary import DeviceStatus

log = logging.getLogger(__name__)

ENROLL_PREFIX = "efe_"


@dataclass
class Enrollment:
    """What :func:`enroll` hands back; the plaintext secrets exist only here."""

    device: Device
    mqtt_username: str
    mqtt_password: str
    api_token: str


def create_enrollment_token(session: Session, *, actor: str, now: float, lifetime_s: float = 86400.0,
                            device_id: str | None = None, tags: list[str] | None = None
                            ) -> tuple[EnrollmentToken, str]:
    if device_id is not None:
        validate_device_id(device_id)
    secret = auth.new_secret(ENROLL_PREFIX)
    row = EnrollmentToken(token_hash=auth.hash_secret(secret), device_id=device_id, tags=list(tags or []),
                          created_at=now, expires_at=now + lifetime_s, created_by=actor)
    session.add(row)
    session.flush()
    audit.record(session, actor=actor, action="enrollment_token.create", target=f"enrollment_token:{row.id}",
                 details={"device_id": device_id, "tags": row.tags, "expires_at": row.expires_at}, now=now)
    return row, secret


def list_enrollment_tokens(session: Session, *, include_used: bool = False) -> list[EnrollmentToken]:
    query = select(EnrollmentToken).order_by(col(EnrollmentToken.id).desc())
    if not include_used:
        query = query.where(col(EnrollmentToken.used_at).is_(None))
    return list(session.exec(query))


def revoke_enrollment_token(session: Session, *, token_id: int, actor: str, now: float) -> EnrollmentToken:
    """End an unused token now (it expires at once; the row stays for the list and the audit log)."""
    row = session.get(EnrollmentToken, token_id)
    if row is None:
        raise NotFoundError(f"no enrollment token {token_id}", where="token_id")
    if row.used_at is not None:
        raise ConflictError(f"enrollment token {token_id} was already used by {row.used_by_device}",
                            where="token_id", hint=f"decommission the device {row.used_by_device} instead")
    if row.expires_at > now:
        row.expires_at = now
        session.add(row)
        audit.record(session, actor=actor, action="enrollment_token.revoke", target=f"enrollment_token:{token_id}",
                     now=now)
    return row


def message_key(pem: str, *, where: str) -> str:
    """A device's message public key (PEM, Ed25519) as stored: base64 of its raw bytes."""
    try:
        return encode_public_key(load_public_key_pem(pem.encode("utf-8"), where=where))
    except ConfigError as exc:
        raise InvalidRequestError(exc.message, where=where, hint="send the device's Ed25519 public key in PEM") \
            from None


def enroll(session: Session, *, token: str, device_id: str | None, now: float, public_key_pem: str | None = None,
           require_key: bool = True, broker: broker_identity.BrokerIdentity | None = None) -> Enrollment:
    """Exchange a one-time enrollment token for the device's own credentials.

    A device id that already exists is re-enrolled (credentials and message key replaced) only with
    a token issued for exactly that id. ``public_key_pem`` is the key the device signs its messages
    with (it made the pair; the private half never leaves it); without one the enrollment is
    refused unless ``require_key`` is off (``accept_unsigned_devices``).
    """
    row = session.exec(select(EnrollmentToken).where(EnrollmentToken.token_hash == auth.hash_secret(token))
                       ).first()
    if row is None or row.used_at is not None or now >= row.expires_at:
        raise AuthenticationError("enrollment token is unknown, used or expired", where="token",
                                  hint="ask an operator for a new one: edgefleet devices enroll")
    if row.device_id and device_id and device_id != row.device_id:
        raise ConflictError(f"this token is for device {row.device_id!r}", where="device_id")
    device_id = validate_device_id(device_id or row.device_id or f"dev-{secrets.token_hex(4)}")
    device = session.get(Device, device_id)
    if device is not None and row.device_id != device_id:
        raise ConflictError(f"device {device_id!r} is already enrolled", where="device_id",
                            hint="re-enrolling needs a token created for this device id")
    key = message_key(public_key_pem, where="device_public_key_pem") if public_key_pem else ""
    if not key and require_key:
        raise InvalidRequestError("the device sent no message key (device_public_key_pem)",
                                  where="device_public_key_pem",
                                  hint="enroll with an agent that signs its messages (this release or later)")
    password = secrets.token_urlsafe(24)
    if device is None:
        device = Device(id=device_id, enrolled_at=now)
    else:
        auth.revoke_device_tokens(session, device_id=device_id, now=now)
    device.mqtt_password_hash = auth.mosquitto_password_hash(password)
    device.message_key = key
    device.tags = sorted(set(device.tags) | set(row.tags))
    device.enrolled_at, device.enrolled_by = now, row.created_by
    session.add(device)
    session.flush()
    _, api_token = auth.create_token(session, name=f"device {device_id}", role=Role.DEVICE, device_id=device_id,
                                     actor=f"device:{device_id}", now=now)
    row.used_at, row.used_by_device = now, device_id
    session.add(row)
    audit.record(session, actor=f"device:{device_id}", action="device.enroll", target=f"device:{device_id}",
                 details={"enrollment_token": row.id}, now=now)
    broker_identity.enrolled(broker, device, password)  # raises if the broker refuses: nothing is kept
    log.info("device %s enrolled", device_id)
    return Enrollment(device=device, mqtt_username=device_id, mqtt_password=password, api_token=api_token)


def register_message_key(session: Session, *, device_id: str, mqtt_password: str, public_key_pem: str,
                         now: float) -> Device:
    """A device enrolled before message signatures registers the key it will sign with, once,
    proving who it is with its MQTT credentials; a different key than the one registered needs a
    re-enrollment (an operator's token), so a leaked password cannot replace it."""
    device = session.get(Device, device_id)
    if device is None or not device.mqtt_password_hash or not auth.check_mosquitto_password(
            mqtt_password, device.mqtt_password_hash):
        raise AuthenticationError("unknown device or wrong MQTT password", where="Authorization",
                                  hint="authenticate with the device id and MQTT password of its agent.toml")
    key = message_key(public_key_pem, where="public_key_pem")
    if device.message_key == key:
        return device
    if device.message_key:
        raise ConflictError(f"device {device_id!r} already has a message key", where="public_key_pem",
                            hint="re-enroll the device (edgefleet devices enroll --device-id) to give it a new one")
    device.message_key = key
    session.add(device)
    audit.record(session, actor=f"device:{device_id}", action="device.message_key", target=f"device:{device_id}",
                 details={"key": key}, now=now)
    log.info("device %s registered its message key", device_id)
    return device


def list_devices(session: Session, *, tag: str | None = None, online: bool | None = None,
                 offset: int = 0, limit: int | None = None) -> list[Device]:
    """Devices by id; ``offset``/``limit`` page through the (filtered) list."""
    query = select(Device).order_by(Device.id)
    if online is not None:
        query = query.where(Device.online == online)
    if not tag:
        return list(session.exec(query.offset(offset).limit(limit)))
    tagged = [d for d in session.exec(query) if tag in d.tags]
    return tagged[offset:None if limit is None else offset + limit]


def get_device(session: Session, *, device_id: str) -> Device:
    device = session.get(Device, device_id)
    if device is None:
        raise NotFoundError(f"no device {device_id!r}", where="device_id")
    return device


def update_tags(session: Session, *, device_id: str, actor: str, now: float, tags: list[str] | None = None,
                add: list[str] | None = None, remove: list[str] | None = None) -> Device:
    device = get_device(session, device_id=device_id)
    before = list(device.tags)
    new = set(tags) if tags is not None else set(device.tags)
    new = (new | set(add or [])) - set(remove or [])
    device.tags = sorted(new)
    session.add(device)
    audit.record(session, actor=actor, action="device.tags", target=f"device:{device_id}",
                 details={"before": before, "after": device.tags}, now=now)
    return device


def set_hardware_class(session: Session, *, device_id: str, hardware_class: str, actor: str, now: float) -> Device:
    device = get_device(session, device_id=device_id)
    audit.record(session, actor=actor, action="device.hardware_class", target=f"device:{device_id}",
                 details={"before": device.hardware_class, "after": hardware_class}, now=now)
    device.hardware_class = hardware_class
    session.add(device)
    return device


def decommission(session: Session, *, device_id: str, actor: str, now: float,
                 broker: broker_identity.BrokerIdentity | None = None) -> Device:
    """Revoke the device's API token and MQTT password; the row (and its history) stays."""
    device = get_device(session, device_id=device_id)
    auth.revoke_device_tokens(session, device_id=device_id, now=now)
    device.mqtt_password_hash = ""
    device.message_key = ""
    if device.online:
        fleet_history.note(device, online=False, cause=TransitionCause.DECOMMISSIONED, at=now)
    device.online = False
    session.add(device)
    audit.record(session, actor=actor, action="device.decommission", target=f"device:{device_id}", now=now)
    broker_identity.decommissioned(session, broker, device, actor=actor, now=now)
    return device


def list_events(session: Session, *, device_id: str, limit: int = 100) -> list[DeviceEvent]:
    get_device(session, device_id=device_id)
    return list(session.exec(select(DeviceEvent).where(DeviceEvent.device_id == device_id)
                             .order_by(col(DeviceEvent.sent_at).desc()).limit(limit)))


def recent_events(session: Session, *, device_id: str | None = None, levels: tuple[str, ...] | None = None,
                  limit: int = 10) -> list[DeviceEvent]:
    """Newest received first, of one device or the whole fleet, optionally only some levels."""
    query = select(DeviceEvent).order_by(col(DeviceEvent.received_at).desc()).limit(limit)
    if device_id is not None:
        query = query.where(DeviceEvent.device_id == device_id)
    if levels is not None:
        query = query.where(col(DeviceEvent.level).in_(levels))
    return list(session.exec(query))


def facts(device: Device) -> DeviceFacts | None:
    """What target checks need; ``None`` until the device has said hello."""
    if not device.arch or not device.agent_version:
        return None
    return DeviceFacts(arch=device.arch, runtimes=list(device.runtimes), agent_version=device.agent_version,
                       hardware_class=device.hardware_class or "generic")


def apply_hello(device: Device, hello: Hello, *, now: float) -> None:
    device.arch, device.os, device.agent_version = hello.arch, hello.os, hello.agent_version
    device.runtimes = list(hello.runtimes)
    if not device.hardware_class or device.hardware_class == "generic":
        device.hardware_class = hello.hardware_class
    device.installed = hello.installed.model_dump(mode="json") if hello.installed else None
    device.free_disk_bytes = hello.free_disk_bytes
    device.root_version = hello.root_version
    if hello.tags and not set(hello.tags) <= set(device.tags):
        device.tags = sorted(set(device.tags) | set(hello.tags))
    _seen(device, now=now)


def apply_state(device: Device, state: State, *, now: float) -> None:
    """A heartbeat (online) carries the device's state; an offline state only says it is gone. The
    last will is built when the agent connects and MQTT cannot change it mid-connection, so what it
    says of the update state and the installed bundle may be that old: the last known state stays."""
    if state.status == DeviceStatus.OFFLINE:
        if device.online:
            log.info("device %s offline (last will)", device.id)
            fleet_history.note(device, online=False, cause=TransitionCause.LAST_WILL, at=now)
        device.online = False
        return
    device.update_state = state.update_state
    device.installed = state.installed.model_dump(mode="json") if state.installed else device.installed
    device.heartbeat_interval_s = state.heartbeat_interval_s
    _seen(device, now=now)


def mark_seen(device: Device, *, now: float) -> None:
    _seen(device, now=now)


def _seen(device: Device, *, now: float) -> None:
    if not device.online:
        log.info("device %s online", device.id)
        fleet_history.note(device, online=True, cause=TransitionCause.HEARD, at=now)
    device.online = True
    device.last_seen = max(device.last_seen or 0.0, now)


def expire_heartbeats(session: Session, *, now: float, timeout_s: float) -> list[str]:
    """Mark online devices silent for longer than the timeout (or 3 heartbeat intervals) offline."""
    gone = []
    candidates = select(Device).where(Device.online == True,  # noqa: E712
                                      or_(col(Device.last_seen).is_(None), col(Device.last_seen) < now - timeout_s))
    for device in session.exec(candidates):
        limit = max(timeout_s, 3 * (device.heartbeat_interval_s or 0.0))
        if device.last_seen is None or now - device.last_seen > limit:
            fleet_history.note(device, online=False, cause=TransitionCause.HEARTBEAT_TIMEOUT, at=now)
            device.online = False
            session.add(device)
            gone.append(device.id)
            log.info("device %s offline (no heartbeat for %.0f s)", device.id, now - (device.last_seen or 0.0))
    return gone


def mosquitto_passwd(session: Session) -> str:
    """A Mosquitto ``password_file`` with every enrolled device (hashes only)."""
    rows = session.exec(select(Device).where(Device.mqtt_password_hash != "").order_by(Device.id))
    return "".join(f"{d.id}:{d.mqtt_password_hash}\n" for d in rows)
