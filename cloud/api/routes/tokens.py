"""API tokens of people and automation (admin only): list, create (shown once), revoke."""

from __future__ import annotations

from fastapi import APIRouter

from edgefleet.cloud.api.params import RowId
from edgefleet.cloud.api.schemas import TokenCreate, TokenCreated, TokenOut
from edgefleet.cloud.deps import AdminDep, ControllerDep, SessionDep
from edgefleet.cloud.services import auth

api = APIRouter(prefix="/api/v1")


@api.get("/tokens", tags=["tokens"])
def list_tokens(session: SessionDep, _: AdminDep) -> list[TokenOut]:
    return [TokenOut.model_validate(t) for t in auth.list_tokens(session)]


@api.post("/tokens", tags=["tokens"], status_code=201)
def create_token(body: TokenCreate, controller: ControllerDep, session: SessionDep, who: AdminDep) -> TokenCreated:
    row, secret = auth.create_token(session, name=body.name, role=body.role, actor=who.actor, now=controller.now())
    return TokenCreated.model_validate(row.model_dump() | {"token": secret})


@api.delete("/tokens/{token_id}", tags=["tokens"])
def revoke_token(token_id: RowId, controller: ControllerDep, session: SessionDep, who: AdminDep) -> TokenOut:
    return TokenOut.model_validate(auth.revoke_token(session, token_id=token_id, actor=who.actor,
                                                     now=controller.now()))
