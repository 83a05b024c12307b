"""Health, metrics, controller info, API tokens, trusted release keys, audit log, broker export."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version
from typing import Annotated

from fastapi import APIRouter, Query, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from sqlalchemy import text

from edgefleet.cloud import audit, auth, devices, trust
from edgefleet.cloud.deps import AdminDep, ControllerDep, OperatorDep, SessionDep, ViewerDep
from edgefleet.cloud.schemas import (AuditOut, InfoOut, ReleaseKeyCreate, ReleaseKeyOut, TokenCreate, TokenCreated,
                                     TokenOut)
from edgefleet.protocol.keys import key_id, public_key_pem

router = APIRouter()
api = APIRouter(prefix="/api/v1")


def _version() -> str:
    try:
        return version("edgefleet")
    except PackageNotFoundError:
        return "0+unknown"


@router.get("/healthz", tags=["system"])
def healthz(controller: ControllerDep, session: SessionDep) -> dict:
    """Liveness and readiness: database reachable, MQTT bridge connected."""
    session.exec(text("SELECT 1"))
    transport = controller.transport
    mqtt = "connected" if transport is not None and transport.connected else "disconnected"
    return {"status": "ok", "database": "ok", "mqtt": mqtt}


@router.get("/metrics", tags=["system"], response_class=Response)
def metrics(controller: ControllerDep) -> Response:
    """Prometheus metrics (unauthenticated, like most exporters; restrict at the network level)."""
    return Response(generate_latest(controller.metrics.registry), media_type=CONTENT_TYPE_LATEST)


@api.get("/info", tags=["system"])
def info(controller: ControllerDep, session: SessionDep, _: ViewerDep) -> InfoOut:
    return InfoOut(version=_version(), broker_url=controller.device_broker_url,
                   topic_prefix=controller.settings.topic_prefix, public_url=controller.settings.resolved_public_url,
                   controller_key_id=controller.controller_key_id,
                   controller_public_key_pem=controller.controller_public_pem,
                   release_key_ids=sorted(controller.trusted_release_keys(session).keys))


@api.get("/tokens", tags=["tokens"])
def list_tokens(session: SessionDep, _: AdminDep) -> list[TokenOut]:
    return [TokenOut.model_validate(t) for t in auth.list_tokens(session)]


@api.post("/tokens", tags=["tokens"], status_code=201)
def create_token(body: TokenCreate, controller: ControllerDep, session: SessionDep, who: AdminDep) -> TokenCreated:
    row, secret = auth.create_token(session, name=body.name, role=body.role, actor=who.actor, now=controller.now())
    return TokenCreated.model_validate(row.model_dump() | {"token": secret})


@api.delete("/tokens/{token_id}", tags=["tokens"])
def revoke_token(token_id: int, controller: ControllerDep, session: SessionDep, who: AdminDep) -> TokenOut:
    return TokenOut.model_validate(auth.revoke_token(session, token_id=token_id, actor=who.actor,
                                                     now=controller.now()))


@api.get("/release-keys", tags=["keys"])
def list_release_keys(controller: ControllerDep, session: SessionDep, _: ViewerDep) -> list[ReleaseKeyOut]:
    configured = [ReleaseKeyOut(key_id=key_id(k), name="configured", pem=public_key_pem(k).decode(),
                                source="settings") for k in controller.configured_release_keys]
    stored = [ReleaseKeyOut.model_validate(r) for r in trust.list_release_keys(session)]
    return configured + stored


@api.post("/release-keys", tags=["keys"], status_code=201)
def add_release_key(body: ReleaseKeyCreate, controller: ControllerDep, session: SessionDep,
                    who: AdminDep) -> ReleaseKeyOut:
    """Trust another release public key (PEM) for bundle uploads. Devices get it at enrollment."""
    return ReleaseKeyOut.model_validate(trust.add_release_key(session, pem=body.pem, name=body.name,
                                                              actor=who.actor, now=controller.now()))


@api.delete("/release-keys/{key_id}", tags=["keys"], status_code=204)
def remove_release_key(key_id: str, controller: ControllerDep, session: SessionDep, who: AdminDep) -> None:
    trust.remove_release_key(session, key_id_=key_id, actor=who.actor, now=controller.now())


@api.get("/audit", tags=["audit"])
def audit_log(session: SessionDep, _: OperatorDep, limit: Annotated[int, Query(ge=1, le=1000)] = 100,
              offset: Annotated[int, Query(ge=0)] = 0, action: str | None = None, actor: str | None = None,
              target: str | None = None) -> list[AuditOut]:
    return [AuditOut.model_validate(e) for e in audit.list_entries(session, limit=limit, offset=offset,
                                                                   action=action, actor=actor, target=target)]


@api.get("/broker/passwd", tags=["devices"], response_class=Response)
def broker_password_file(session: SessionDep, _: AdminDep) -> Response:
    """A Mosquitto ``password_file`` for every enrolled device (PBKDF2 hashes, no plaintext)."""
    return Response(devices.mosquitto_passwd(session), media_type="text/plain")
