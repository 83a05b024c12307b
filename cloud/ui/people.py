"""People from the UI, through the services ``/api/v1/users`` and ``/api/v1/me/tokens`` call (which
write the audit entries): the users page (admin: list, create with a role, change the role, disable
or enable), and the signed-in person's own API tokens (anyone signed in as a person: create -- shown
once -- and revoke; a shared token has no personal tokens, as in the API), and for admins every API
token, people's and shared (``/api/v1/tokens``: list, revoke behind a confirmation)."""

from __future__ import annotations

import logging
from typing import Annotated

from fastapi import APIRouter, Form, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from sqlmodel import Session

from edgefleet.cloud.deps import ControllerDep, PasswordPolicyDep, SessionDep
from edgefleet.cloud.services import auth, users
from edgefleet.cloud.services.auth import PermissionDeniedError, Principal
from edgefleet.cloud.store.tables import ApiToken, User
from edgefleet.cloud.ui.csrf import CsrfField
from edgefleet.cloud.ui.device_actions import hours
from edgefleet.cloud.ui.render import base_path, forbidden, not_found, render
from edgefleet.cloud.ui.session import posted_by, signed_in, to_login
from edgefleet.cloud.vocabulary import OPERATOR_ROLES, Role
from edgefleet.protocol.errors import ConfigError, ConflictError, EdgeFleetError, NotFoundError

log = logging.getLogger(__name__)

router = APIRouter(include_in_schema=False)

Short = Annotated[str, Form(max_length=200)]
Secret = Annotated[str, Form(max_length=1024)]


# --------------------------------------------------------------------------- users (admin)

def _users_page(request: Request, session: Session, controller: ControllerDep, user: Principal, *,
                problem: EdgeFleetError | None = None, status_code: int = 200,
                form: dict[str, str] | None = None) -> Response:
    return render(request, "people.html", status_code=status_code, user=user, now=controller.now(),
                  people=users.list_users(session), roles=list(OPERATOR_ROLES), problem=problem,
                  form=form or {"name": "", "display_name": "", "role": Role.VIEWER})


@router.get("/ui/people", response_class=HTMLResponse)
def people(request: Request, session: SessionDep, controller: ControllerDep) -> Response:
    user = signed_in(request, session)
    if user is None:
        return to_login(request)
    refusal = user.refusal(Role.ADMIN)
    if refusal is not None:
        return forbidden(request, user, refusal)
    return _users_page(request, session, controller, user)


@router.post("/ui/people", response_class=HTMLResponse)
def create_user(request: Request, controller: ControllerDep, policy: PasswordPolicyDep, name: Short = "",
                display_name: Short = "", role: Short = "", password: Secret = "", confirm: Short = "",
                csrf_token: CsrfField = "") -> Response:
    """A new user with a role (and a password, if one is given: else they cannot sign in with one yet)."""
    user = posted_by(request, controller, csrf_token, "user create", role=Role.ADMIN)
    if isinstance(user, Response):
        return user
    form = {"name": name.strip(), "display_name": display_name.strip(), "role": role}
    try:
        if confirm != "yes":
            raise ConfigError("the new user was not confirmed", where="confirm", hint="tick the confirmation box")
        with controller.session() as session:
            users.create_user(session, name=form["name"], role=role, display_name=form["display_name"],
                              password=password or None, actor=user.actor, now=controller.now(), policy=policy)
    except EdgeFleetError as exc:
        with controller.session() as session:
            return _users_page(request, session, controller, user, problem=exc, form=form,
                               status_code=409 if isinstance(exc, ConflictError) else 400)
    log.info("user %s created from the UI by %s", form["name"], user.actor)
    return RedirectResponse(f"{base_path(request)}/ui/people", status_code=303)


@router.post("/ui/people/{name}", response_class=HTMLResponse)
def update_user(request: Request, name: str, controller: ControllerDep, role: Short = "", disabled: Short = "",
                csrf_token: CsrfField = "") -> Response:
    """Change the role (``role``) or disable / enable (``disabled``: ``yes`` / ``no``)."""
    user = posted_by(request, controller, csrf_token, f"change of user {name}", role=Role.ADMIN)
    if isinstance(user, Response):
        return user
    try:
        if disabled not in ("", "yes", "no"):
            raise ConfigError(f"disabled is yes or no, not {disabled[:20]!r}", where="disabled")
        with controller.session() as session:
            users.update_user(session, name=name, role=role or None, actor=user.actor, now=controller.now(),
                              disabled={"yes": True, "no": False}.get(disabled))
    except NotFoundError as exc:
        return not_found(request, user, exc)
    except EdgeFleetError as exc:
        with controller.session() as session:
            return _users_page(request, session, controller, user, problem=exc,
                               status_code=409 if isinstance(exc, ConflictError) else 400)
    log.info("user %s changed from the UI by %s", name, user.actor)
    return RedirectResponse(f"{base_path(request)}/ui/people", status_code=303)


# --------------------------------------------------------------------------- tokens: one's own, and every one (admin)

def _owner(session: Session, user: Principal) -> User | None:
    return users.find_user(session, name=user.user) if user.user else None


def token_rows(session: Session) -> list[dict[str, object]]:
    """Every API token but the devices' (``GET /api/v1/tokens``), newest first, with whose it is: a
    person's (and whether a password sign-in to the UI made it) or shared."""
    names = {u.id: u.name for u in users.list_users(session)}
    return [{"token": t, "owner": names.get(t.user_id, "?") if t.user_id is not None else None}
            for t in sorted(auth.list_tokens(session), key=lambda t: t.id or 0, reverse=True)]


def _tokens_page(request: Request, session: Session, controller: ControllerDep, user: Principal, *,
                 created: str | None = None, problem: EdgeFleetError | None = None, unchanged: str = "created",
                 status_code: int = 200) -> Response:
    owner = _owner(session, user)
    mine = [t for t in auth.user_tokens(session, user=owner) if not t.ui_session] if owner else []
    return render(request, "tokens.html", status_code=status_code, user=user, now=controller.now(), owner=owner,
                  tokens=mine, created=created, problem=problem, unchanged=unchanged,
                  everyone=token_rows(session) if user.refusal(Role.ADMIN) is None else None,
                  roles=[r for r in OPERATOR_ROLES if auth.rank(r) <= auth.rank(user.role)])


@router.get("/ui/tokens", response_class=HTMLResponse)
def my_tokens(request: Request, session: SessionDep, controller: ControllerDep) -> Response:
    user = signed_in(request, session)
    if user is None:
        return to_login(request)
    return _tokens_page(request, session, controller, user)


@router.post("/ui/tokens", response_class=HTMLResponse)
def create_my_token(request: Request, controller: ControllerDep, name: Short = "", role: Short = "",
                    days: Annotated[str, Form(max_length=20)] = "30", csrf_token: CsrfField = "") -> Response:
    """A personal token: at most the person's role and the session's, shown this once."""
    user = posted_by(request, controller, csrf_token, "token create", role=Role.VIEWER)
    if isinstance(user, Response):
        return user
    try:
        if not name.strip():
            raise ConfigError("give the token a name (where it will be used)", where="name")
        role = role or user.role
        if role not in OPERATOR_ROLES or auth.rank(role) > auth.rank(user.role):
            raise PermissionDeniedError(f"a session with the {user.role} role may not make a token with the "
                                        f"{role[:20]} role", where="role", hint=f"choose a role up to {user.role}")
        try:
            lifetime = hours(str(float(days) * 24), where="days")
        except ConfigError:
            raise ConfigError(f"{days[:20]!r} is not 1 hour to 30 days", where="days") from None
        with controller.session() as session:
            owner = _owner(session, user)
            if owner is None:
                raise PermissionDeniedError(f"{user.actor} is a shared token, not a person's", where="session",
                                            hint="sign in with a user name and password for personal tokens")
            now = controller.now()
            _, secret = auth.create_token(session, name=name.strip(), role=Role(role), actor=user.actor, now=now,
                                          user=owner, expires_at=now + lifetime)
    except (EdgeFleetError, ValueError) as exc:
        problem = exc if isinstance(exc, EdgeFleetError) else ConfigError(f"{days[:20]!r} is not a number of days",
                                                                          where="days")
        with controller.session() as session:
            return _tokens_page(request, session, controller, user, problem=problem,
                                status_code=403 if isinstance(problem, PermissionDeniedError) else 400)
    log.info("personal token created from the UI by %s", user.actor)
    with controller.session() as session:
        return _tokens_page(request, session, controller, user, created=secret)


@router.post("/ui/tokens/{token_id}/revoke")
def revoke_token(request: Request, token_id: str, controller: ControllerDep, confirm: Short = "",
                 csrf_token: CsrfField = "") -> Response:
    """Revoke one of the signed-in person's tokens, or (an admin, ``confirm=yes``) anyone's, as
    ``DELETE /api/v1/me/tokens/{id}`` and ``DELETE /api/v1/tokens/{id}`` do; to anyone else another's
    token is "not found", as in the API."""
    user = posted_by(request, controller, csrf_token, f"revoke of token {token_id[:20]}", role=Role.VIEWER)
    if isinstance(user, Response):
        return user
    admin = user.refusal(Role.ADMIN) is None
    try:
        with controller.session() as session:
            owner = _owner(session, user)
            row = session.get(ApiToken, int(token_id)) if token_id.isdigit() and len(token_id) <= 18 else None
            if row is None or ((owner is None or row.user_id != owner.id) and not admin):
                raise NotFoundError(f"no token {token_id[:20]!r} of {user.actor}", where="token_id")
            mine = owner is not None and row.user_id == owner.id
            if not mine and confirm != "yes":
                raise ConfigError(f"the revoke of token {row.id} ({row.name}) was not confirmed", where="confirm",
                                  hint="tick the box that says what revoking it does")
            auth.revoke_token(session, token_id=row.id or 0, actor=user.actor, now=controller.now(),
                              user=owner if mine else None)
    except NotFoundError as exc:
        return not_found(request, user, exc)
    except ConfigError as exc:
        with controller.session() as session:
            return _tokens_page(request, session, controller, user, problem=exc, unchanged="revoked",
                                status_code=400)
    log.info("token %s revoked from the UI by %s", token_id, user.actor)
    return RedirectResponse(f"{base_path(request)}/ui/tokens{'' if mine else '#all-tokens'}", status_code=303)
