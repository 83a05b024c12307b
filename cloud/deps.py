"""FastAPI dependencies as ``Annotated`` aliases: the controller, a DB session, the caller, the password policy;
the OIDC configuration (:func:`oidc_config`)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlmodel import Session

from edgefleet.cloud.controller import Controller
from edgefleet.cloud.services.auth import Principal, authenticate
from edgefleet.cloud.services.oidc import CALLBACK_PATH, OidcConfig
from edgefleet.cloud.services.users import PasswordPolicy
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


def get_principal(session: SessionDep, controller: ControllerDep, credentials: BearerDep) -> Principal:
    return authenticate(session, secret=credentials.credentials if credentials else None, now=controller.now())


PrincipalDep = Annotated[Principal, Depends(get_principal)]


def _role(role: Role) -> Callable[[Principal], Principal]:
    def check(principal: PrincipalDep) -> Principal:
        return principal.require(role)
    return check


ViewerDep = Annotated[Principal, Depends(_role(Role.VIEWER))]
OperatorDep = Annotated[Principal, Depends(_role(Role.OPERATOR))]
AdminDep = Annotated[Principal, Depends(_role(Role.ADMIN))]


def password_policy(controller: ControllerDep) -> PasswordPolicy:
    s = controller.settings
    return PasswordPolicy(min_length=s.password_min_length, time_cost=s.password_time_cost,
                          memory_kib=s.password_memory_kib, parallelism=s.password_parallelism)


PasswordPolicyDep = Annotated[PasswordPolicy, Depends(password_policy)]


def oidc_config(controller: Controller) -> OidcConfig | None:
    """The OIDC sign-in configuration (``oidc_*`` settings, validated there); ``None`` when it is off."""
    s = controller.settings
    if s.oidc_issuer is None or s.oidc_client_id is None:
        return None
    secret = s.oidc_client_secret
    return OidcConfig(issuer=s.oidc_issuer, client_id=s.oidc_client_id,
                      client_secret=secret.get_secret_value() if secret is not None else None,
                      scopes=tuple(s.oidc_scopes), username_claim=s.oidc_username_claim, role_claim=s.oidc_role_claim,
                      role_map=dict(s.oidc_role_map), default_role=s.oidc_default_role,
                      create_users=s.oidc_create_users, sync_role=s.oidc_sync_role, provider_name=s.oidc_provider_name,
                      redirect_uri=s.resolved_public_url + CALLBACK_PATH)
