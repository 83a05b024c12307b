"""Enrollment: one-time tokens (operators), the device's token exchange, the broker password export."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Response
from fastapi.security import HTTPBasic, HTTPBasicCredentials

from edgefleet.cloud.api.params import RowId
from edgefleet.cloud.api.schemas import (
    EnrollmentTokenCreate,
    EnrollmentTokenCreated,
    EnrollmentTokenOut,
    EnrollRequest,
    EnrollResponse,
    MessageKeyRegistration,
)
from edgefleet.cloud.deps import AdminDep, ControllerDep, OperatorDep, SessionDep
from edgefleet.cloud.services import devices, trust
from edgefleet.cloud.services.device_ca import DeviceCA
from edgefleet.protocol.errors import NotFoundError
from edgefleet.protocol.keys import public_key_pem

api = APIRouter(prefix="/api/v1")


@api.post("/enrollment-tokens", tags=["devices"], status_code=201)
def create_enrollment_token(body: EnrollmentTokenCreate, controller: ControllerDep, session: SessionDep,
                            who: OperatorDep) -> EnrollmentTokenCreated:
    """A one-time token a device exchanges at ``POST /api/v1/enroll`` for its credentials."""
    controller.check_device_id(body.device_id)
    row, secret = devices.create_enrollment_token(session, actor=who.actor, now=controller.now(),
                                                  lifetime_s=body.ttl_s, device_id=body.device_id, tags=body.tags)
    return EnrollmentTokenCreated.model_validate(row.model_dump() | {"token": secret})


@api.get("/enrollment-tokens", tags=["devices"])
def list_enrollment_tokens(session: SessionDep, _: OperatorDep,
                           include_used: bool = False) -> list[EnrollmentTokenOut]:
    return [EnrollmentTokenOut.model_validate(t)
            for t in devices.list_enrollment_tokens(session, include_used=include_used)]


@api.delete("/enrollment-tokens/{token_id}", tags=["devices"])
def revoke_enrollment_token(token_id: RowId, controller: ControllerDep, session: SessionDep,
                            who: OperatorDep) -> EnrollmentTokenOut:
    """End an unused token now (409 when a device already used it)."""
    return EnrollmentTokenOut.model_validate(devices.revoke_enrollment_token(session, token_id=token_id,
                                                                             actor=who.actor, now=controller.now()))


@api.post("/enroll", tags=["devices"], status_code=201)
def enroll(body: EnrollRequest, controller: ControllerDep, session: SessionDep) -> EnrollResponse:
    """Device side: exchange a one-time enrollment token (in the body, no API token needed) for the
    device's MQTT credentials, API token and the public keys it must trust. With a managed broker
    (``broker_admin``) a broker that does not take the credentials answers 503 and nothing is kept:
    the token stays valid."""
    controller.check_device_id(body.device_id)
    result = devices.enroll(session, token=body.token, device_id=body.device_id, now=controller.now(),
                            public_key_pem=body.device_public_key_pem,
                            require_key=not controller.settings.accept_unsigned_devices,
                            broker=controller.broker_identity)
    release = [public_key_pem(k).decode() for k in
               trust.release_keys(session, configured=controller.configured_release_keys)]
    return EnrollResponse(device_id=result.device.id, mqtt_username=result.mqtt_username,
                          mqtt_password=result.mqtt_password, api_token=result.api_token,
                          broker_url=controller.device_broker_url, topic_prefix=controller.settings.topic_prefix,
                          controller_url=controller.settings.resolved_public_url,
                          controller_public_key_pem=controller.controller_public_pem,
                          release_public_keys_pem=release, trust_root=trust.current_root(session),
                          **_certificate(controller.device_ca, result.device.id, body.tls_csr_pem,
                                         now=controller.now(), days=controller.settings.device_certificate_days))


def _certificate(ca: DeviceCA | None, device_id: str, csr_pem: str | None, *, now: float,
                 days: int) -> dict[str, str]:
    if ca is None or csr_pem is None:
        return {}
    return {"tls_certificate_pem": ca.sign(csr_pem, device_id=device_id, now=now, days=days),
            "tls_ca_pem": ca.certificate_pem}


@api.post("/device/message-key", tags=["devices"])
def register_message_key(body: MessageKeyRegistration, controller: ControllerDep, session: SessionDep,
                         credentials: Annotated[HTTPBasicCredentials, Depends(HTTPBasic())]) -> dict[str, str]:
    """Device side, for a device enrolled before message signatures: register the key it signs its
    messages with, once (HTTP Basic: the device id and MQTT password from its agent.toml)."""
    device = devices.register_message_key(session, device_id=credentials.username, mqtt_password=credentials.password,
                                          public_key_pem=body.public_key_pem, now=controller.now())
    return {"device_id": device.id, "message_key": device.message_key}


@api.get("/broker/ca", tags=["devices"], response_class=Response)
def broker_ca(controller: ControllerDep, _: AdminDep) -> Response:
    """The device CA's certificate (PEM) for the broker's ``cafile`` (404 without ``device_certificates``)."""
    if controller.device_ca is None:
        raise NotFoundError("this controller signs no device certificates", where="device_certificates",
                            hint="set device_certificates = true")
    return Response(controller.device_ca.certificate_pem, media_type="application/x-pem-file")


@api.get("/broker/passwd", tags=["devices"], response_class=Response)
def broker_password_file(session: SessionDep, _: AdminDep) -> Response:
    """A Mosquitto ``password_file`` for every enrolled device (PBKDF2 hashes, no plaintext)."""
    return Response(devices.mosquitto_passwd(session), media_type="text/plain")
