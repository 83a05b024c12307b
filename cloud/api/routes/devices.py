"""Devices: list, show, tags and hardware class, decommission, their deployments, events and telemetry."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query

from edgefleet.cloud.api.params import DeviceIdPath, Offset, Since, TagQuery
from edgefleet.cloud.api.schemas import BrokerPassword, DeviceOut, DevicePatch, EventOut, TargetOut
from edgefleet.cloud.deps import AdminDep, ControllerDep, OperatorDep, SessionDep, ViewerDep
from edgefleet.cloud.services import broker_identity, deployments, devices, telemetry
from edgefleet.cloud.store.tables import Device

api = APIRouter(prefix="/api/v1")


def device_out(device: Device) -> DeviceOut:
    return DeviceOut.model_validate(device.model_dump() | {"decommissioned": not device.mqtt_password_hash})

@api.get("/devices", tags=["devices"])
def list_devices(session: SessionDep, _: ViewerDep, tag: TagQuery = None, online: bool | None = None,
                 offset: Offset = 0,
                 limit: Annotated[int | None, Query(ge=1, le=10_000)] = None) -> list[DeviceOut]:
    return [device_out(d) for d in devices.list_devices(session, tag=tag, online=online, offset=offset, limit=limit)]


@api.get("/devices/{device_id}", tags=["devices"])
def show_device(device_id: DeviceIdPath, session: SessionDep, _: ViewerDep) -> DeviceOut:
    return device_out(devices.get_device(session, device_id=device_id))


@api.patch("/devices/{device_id}", tags=["devices"])
def patch_device(device_id: DeviceIdPath, body: DevicePatch, controller: ControllerDep, session: SessionDep,
                 who: OperatorDep) -> DeviceOut:
    """Set tags (``tags`` replaces, ``add_tags``/``remove_tags`` edit) and the hardware class."""
    now = controller.now()
    device = devices.get_device(session, device_id=device_id)
    if body.tags is not None or body.add_tags or body.remove_tags:
        device = devices.update_tags(session, device_id=device_id, tags=body.tags, add=body.add_tags,
                                     remove=body.remove_tags, actor=who.actor, now=now)
    if body.hardware_class is not None:
        device = devices.set_hardware_class(session, device_id=device_id, hardware_class=body.hardware_class,
                                            actor=who.actor, now=now)
    return device_out(device)


@api.post("/devices/{device_id}/decommission", tags=["devices"])
def decommission(device_id: DeviceIdPath, controller: ControllerDep, session: SessionDep,
                 who: OperatorDep) -> DeviceOut:
    """Revoke the device's credentials (and disable its client on a managed broker); its history stays."""
    return device_out(devices.decommission(session, device_id=device_id, actor=who.actor, now=controller.now(),
                                           broker=controller.broker_identity))


@api.post("/devices/{device_id}/broker-password", tags=["devices"])
def rotate_broker_password(device_id: DeviceIdPath, controller: ControllerDep, session: SessionDep,
                           who: AdminDep) -> BrokerPassword:
    """A new MQTT password for the device, shown once; the old one stops working (at once on a managed
    broker, else when the password file is re-exported). Put it into the device's ``agent.toml``."""
    rotated = broker_identity.rotate_password(session, controller.broker_identity, device_id=device_id,
                                              actor=who.actor, now=controller.now())
    return BrokerPassword(device_id=rotated.device_id, mqtt_username=rotated.device_id,
                          mqtt_password=rotated.password, broker_updated=rotated.broker_updated)


@api.get("/devices/{device_id}/deployments", tags=["devices"])
def device_deployments(device_id: DeviceIdPath, session: SessionDep, _: ViewerDep,
                       limit: Annotated[int, Query(ge=1, le=500)] = 20) -> list[TargetOut]:
    devices.get_device(session, device_id=device_id)
    targets = deployments.targets_for_device(session, device_id=device_id, limit=limit)
    return [TargetOut.model_validate(t) for t in targets]


@api.get("/devices/{device_id}/events", tags=["devices"])
def device_events(device_id: DeviceIdPath, session: SessionDep, _: ViewerDep,
                  limit: Annotated[int, Query(ge=1, le=1000)] = 100) -> list[EventOut]:
    return [EventOut.model_validate(e) for e in devices.list_events(session, device_id=device_id, limit=limit)]


@api.get("/devices/{device_id}/telemetry", tags=["telemetry"])
def device_series(device_id: DeviceIdPath, session: SessionDep, _: ViewerDep, since: Since = None,
                  limit: Annotated[int, Query(ge=1, le=5000)] = 200) -> list[dict[str, Any]]:
    """Per-window points for charts (oldest first): p50/p95 latency, drift scores, counts."""
    devices.get_device(session, device_id=device_id)
    return telemetry.series(session, device_id=device_id, since=since, limit=limit)
