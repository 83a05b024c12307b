"""People: users (admin), one's own password and personal API tokens (docs/security.md, "People and roles").

``POST /api/v1/me/tokens`` also takes ``Authorization: Basic`` (user name and password), so a person
with only a password can get their first token (``edgefleet tokens create --user NAME``); a failed
attempt is a 401 like a bad token and counts toward the address's lockout.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Path
from fastapi.security import HTTPBasic, HTTPBasicCredentials
from sqlmodel import Session

from edgefleet.cloud.api.params import RowId
from edgefleet.cloud.api.schemas import (
    MeOut,
    PasswordChange,
    PersonalTokenCreate,
    TokenCreated,
    TokenOut,
    UserCreate,
    UserOut,
    UserUpdate,
)
from edgefleet.cloud.deps import AdminDep, BearerDep, ControllerDep, PasswordPolicyDep, PrincipalDep, SessionDep
from edgefleet.cloud.services import auth, users
from edgefleet.cloud.services.auth import PermissionDeniedError, Principal
from edgefleet.cloud.store.tables import User
from edgefleet.cloud.vocabulary import Role

api = APIRouter(prefix="/api/v1")
_basic = HTTPBasic(auto_error=False, description="user name and password (only for `POST /api/v1/me/tokens`)")
BasicDep = Annotated[HTTPBasicCredentials | None, Depends(_basic)]
UserNamePath = Annotated[str, Path(min_length=1, max_length=64, description="a user name")]


def user_out(user: User) -> UserOut:
    return UserOut.model_validate(user.model_dump() | {"has_password": user.password_hash is not None})


def _owner(session: Session, who: Principal) -> User:
    """The user a personal token (or UI session) speaks for; a shared token has none."""
    if who.user is None:
        raise PermissionDeniedError(f"{who.actor} is a shared token, not a person's", where="Authorization",
                                    hint="use a personal token, or sign in with a user name and password")
    return users.get_user(session, name=who.user)


@api.get("/users", tags=["users"])
def list_users(session: SessionDep, _: AdminDep) -> list[UserOut]:
    return [user_out(u) for u in users.list_users(session)]


@api.post("/users", tags=["users"], status_code=201)
def create_user(body: UserCreate, controller: ControllerDep, session: SessionDep, who: AdminDep,
                policy: PasswordPolicyDep) -> UserOut:
    return user_out(users.create_user(session, name=body.name, role=body.role, display_name=body.display_name,
                                      password=body.password, actor=who.actor, now=controller.now(), policy=policy))


@api.patch("/users/{name}", tags=["users"])
def update_user(name: UserNamePath, body: UserUpdate, controller: ControllerDep, session: SessionDep,
                who: AdminDep) -> UserOut:
    """Change the role or display name; disable (``{"disabled": true}``) or enable again."""
    return user_out(users.update_user(session, name=name, role=body.role, disabled=body.disabled,
                                      display_name=body.display_name, actor=who.actor, now=controller.now()))


@api.post("/users/{name}/password", tags=["users"])
def set_password(name: UserNamePath, body: PasswordChange, controller: ControllerDep, session: SessionDep,
                 who: PrincipalDep, policy: PasswordPolicyDep) -> UserOut:
    """An admin sets anyone's password; users change their own, giving the current one."""
    if who.user == name:
        current = users.get_user(session, name=name).password_hash
        if current is not None and (body.current_password is None or
                                    not users.password_matches(current, body.current_password, policy=policy)):
            raise PermissionDeniedError("the current password is missing or wrong", where="current_password",
                                        hint="give your current password to change it (or ask an admin)")
    else:
        who.require(Role.ADMIN)
    return user_out(users.set_password(session, name=name, password=body.password, actor=who.actor,
                                       now=controller.now(), policy=policy))


@api.get("/me", tags=["users"])
def me(session: SessionDep, who: PrincipalDep) -> MeOut:
    owner = users.get_user(session, name=who.user) if who.user else None
    return MeOut(actor=who.actor, role=who.role, token_id=who.token_id, user=user_out(owner) if owner else None)


def _caller(session: SessionDep, controller: ControllerDep, bearer: BearerDep, basic: BasicDep,
            policy: PasswordPolicyDep) -> Principal:
    """A bearer token, or else a user name and password."""
    if bearer is None and basic is not None:
        user = users.verify_password(session, name=basic.username, password=basic.password, now=controller.now(),
                                     policy=policy)
        return Principal(name=user.name, role=user.role, user=user.name)
    return auth.authenticate(session, secret=bearer.credentials if bearer else None, now=controller.now())


@api.post("/me/tokens", tags=["users"], status_code=201)
def create_my_token(body: PersonalTokenCreate, controller: ControllerDep, session: SessionDep,
                    who: Annotated[Principal, Depends(_caller)]) -> TokenCreated:
    """A personal token: at most the owner's role and the calling token's, expiring (30 days by default)."""
    owner = _owner(session, who)
    role = body.role or who.role
    if auth.rank(role) > auth.rank(who.role):
        raise PermissionDeniedError(f"a token with the {who.role} role may not make one with the {role} role",
                                    where="role", hint=f"choose a role up to {who.role}")
    now = controller.now()
    row, secret = auth.create_token(session, name=body.name, role=Role(role), actor=who.actor, now=now, user=owner,
                                    expires_at=now + body.expires_in_s)
    return TokenCreated.model_validate(row.model_dump() | {"token": secret})


@api.get("/me/tokens", tags=["users"])
def list_my_tokens(session: SessionDep, who: PrincipalDep) -> list[TokenOut]:
    return [TokenOut.model_validate(t) for t in auth.user_tokens(session, user=_owner(session, who))]


@api.delete("/me/tokens/{token_id}", tags=["users"])
def revoke_my_token(token_id: RowId, controller: ControllerDep, session: SessionDep, who: PrincipalDep) -> TokenOut:
    """Revoke one of your tokens (the one of this request too)."""
    owner = _owner(session, who)
    return TokenOut.model_validate(auth.revoke_token(session, token_id=token_id, actor=who.actor,
                                                     now=controller.now(), user=owner))
