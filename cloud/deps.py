"""FastAPI dependencies as ``Annotated`` aliases: the controller, a DB session, the caller."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlmodel import Session

from edgefleet.cloud.controller import Controller
from edgefleet.cloud.services.auth import Principal, authenticate
from edgefleet.cloud.vocabulary import Role

_bearer = HTTPBearer(auto_error=False, description="API token: `Authorization: Bearer eft_...`")


def get_controller(request: Request) -> Controller:
    controller: Controller = request.app.state.controller
    return controller


ControllerDep = Annotated[Controller, Depends(get_controller)]


def get_session(controller: ControllerDep) -> Iterator[Session]:
    """One transaction per request, committed before the response is sent."""
    with controller.session() as session:
        yield session


SessionDep = Annotated[Session, Depends(get_session, scope="function")]
BearerDep = Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]


def get_principal(session: SessionDep, credentials: BearerDep) -> Principal:
    return authenticate(session, secret=credentials.credentials if credentials else None)


PrincipalDep = Annotated[Principal, Depends(get_principal)]


def _role(role: Role) -> Callable[[Principal], Principal]:
    def check(principal: PrincipalDep) -> Principal:
        return principal.require(role)
    return check


ViewerDep = Annotated[Principal, Depends(_role(Role.VIEWER))]
OperatorDep = Annotated[Principal, Depends(_role(Role.OPERATOR))]
AdminDep = Annotated[Principal, Depends(_role(Role.ADMIN))]
