"""Trusted release public keys: the configured ones and those registered through the API."""

from __future__ import annotations

from fastapi import APIRouter

from edgefleet.cloud.api.schemas import ReleaseKeyCreate, ReleaseKeyOut
from edgefleet.cloud.deps import AdminDep, ControllerDep, SessionDep, ViewerDep
from edgefleet.cloud.services import trust
from edgefleet.protocol.keys import key_id, public_key_pem

api = APIRouter(prefix="/api/v1")


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
