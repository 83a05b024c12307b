"""UI sign-in, two ways: a user name and password (:mod:`edgefleet.cloud.services.users`), which makes
a session token of that user (role: the user's, 12 hours, revoked at sign-out), or an API token pasted
as before (viewer, operator, approver or admin role). The cookie holds the token, HttpOnly and
SameSite=Strict, and is checked on every request: the session names the person (``user:NAME``) for
a password sign-in or a personal token. Without a valid cookie a page redirects to the login form.
Every form post, sign-in and sign-out included, must carry its CSRF token
(:mod:`edgefleet.cloud.ui.csrf`). A refused sign-in of either kind is a 401, which counts toward the
address's lockout (:mod:`edgefleet.cloud.api.guards`). With OIDC configured, a third way: the provider's
sign-in (:mod:`edgefleet.cloud.ui.oidc`), which makes the same session token."""

from __future__ import annotations

import logging
from typing import Annotated
from urllib.parse import quote

from fastapi import APIRouter, Form, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from edgefleet.cloud.deps import ControllerDep, PasswordPolicyDep, SessionDep
from edgefleet.cloud.services import audit, auth, users
from edgefleet.cloud.services.auth import AuthenticationError, Principal
from edgefleet.cloud.store.tables import User
from edgefleet.cloud.ui import csrf
from edgefleet.cloud.ui.csrf import CsrfField
from edgefleet.cloud.ui.render import base_path, forbidden, render
from edgefleet.cloud.vocabulary import OPERATOR_ROLES, HttpRefusal, Role
from edgefleet.protocol.vocabulary import Reason

log = logging.getLogger(__name__)

COOKIE = csrf.SESSION_COOKIE
COOKIE_MAX_AGE = 12 * 3600

router = APIRouter(include_in_schema=False)


def safe_next(target: str | None) -> str:
    """Only same-site paths (no ``//host``, no scheme) are followed after login."""
    if not target or not target.startswith("/") or target.startswith("//") or "\\" in target:
        return "/"
    return target


def operator(session: SessionDep, secret: str | None, now: float | None = None) -> Principal | None:
    """The person holding ``secret``, if it is a live operator token (not a device's)."""
    principal = auth.identify(session, secret=secret, now=now)
    return principal if principal is not None and principal.role in OPERATOR_ROLES else None


def signed_in(request: Request, session: SessionDep) -> Principal | None:
    return operator(session, request.cookies.get(COOKIE), request.app.state.controller.now())


def to_login(request: Request) -> RedirectResponse:
    target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    response = RedirectResponse(f"{base_path(request)}/ui/login?next={quote(target, safe='/')}", status_code=303)
    if COOKIE in request.cookies:
        response.delete_cookie(COOKIE, path="/", httponly=True, samesite="strict")
    return response


def same_origin(request: Request) -> bool:
    """A state-changing form post must come from a page of this site (SameSite=Strict already
    keeps the cookie off cross-site posts; this also refuses a foreign or opaque Origin)."""
    origin = request.headers.get("origin") or request.headers.get("referer")
    if origin is None:
        return True
    host = request.headers.get("host", "")
    parts = origin.split("://", 1)
    return len(parts) == 2 and parts[1].split("/", 1)[0] == host


def csrf_refusal(request: Request, token: str | None) -> str | None:
    """Why this post fails the CSRF check of the signed-in session (``token``: the form's field);
    ``None`` when it carries the session's token (in the field or the ``X-CSRF-Token`` header)."""
    secret = request.cookies.get(COOKIE)
    given = token or request.headers.get(csrf.HEADER)
    if secret and csrf.matches(csrf.session_token(secret), given):
        return None
    request.app.state.controller.metrics.http_errors.labels(HttpRefusal.CSRF_REFUSED).inc()
    return ("this form has no valid CSRF token (an old page, or a post from another site): "
            "reload the page and try again")


def form_refusal(request: Request, user: Principal, token: str | None, role: Role = Role.OPERATOR) -> str | None:
    """Why ``user`` may not act through this form post: ``role`` (or a higher one) is needed, the form must
    come from the controller's own pages and carry the session's CSRF token (``token``). ``None`` when it may."""
    return user.refusal(role) or (None if same_origin(request) else
                                  "this form was not posted from the controller's own pages") \
        or csrf_refusal(request, token)


def posted_by(request: Request, controller: ControllerDep, csrf_token: str | None, what: str,
              role: Role = Role.OPERATOR) -> Principal | Response:
    """The signed-in person who may post this form (:func:`form_refusal`), or the response that refuses
    it: the sign-in page, or a 403 page saying why (logged with ``what`` the post would have done)."""
    with controller.session() as session:
        user = signed_in(request, session)
    if user is None:
        return to_login(request)
    refusal = form_refusal(request, user, csrf_token, role)
    if refusal is not None:
        log.warning("UI %s refused for %s: %s", what, user.actor, refusal)
        return forbidden(request, user, refusal)
    return user


def _login_page(request: Request, *, status_code: int = 200, next: str = "/", error: str | None = None,
                username: str = "") -> Response:
    """The sign-in form with its double-submit nonce (kept when the browser has one, else a new one)."""
    kept = request.cookies.get(csrf.LOGIN_COOKIE)
    nonce = kept or csrf.new_nonce()
    settings = request.app.state.controller.settings
    response = render(request, "login.html", status_code=status_code, next=safe_next(next), error=error, user=None,
                      csrf=nonce, username=username,
                      oidc=settings.oidc_provider_name if settings.oidc_issuer else None)
    if not kept:
        response.set_cookie(csrf.LOGIN_COOKIE, nonce, max_age=csrf.LOGIN_COOKIE_MAX_AGE, path="/", httponly=True,
                            samesite="strict", secure=request.url.scheme == "https")
    return response


@router.get("/ui/login", response_class=HTMLResponse)
def login_form(request: Request, session: SessionDep, next: str = "/") -> Response:
    if signed_in(request, session) is not None:
        return RedirectResponse(safe_next(next), status_code=303)
    return _login_page(request, next=next)


def start_ui_session(session: SessionDep, *, user: User, now: float, method: str) -> str:
    """A new session token of ``user`` (the user's role, 12 hours), audited as ``user.sign_in`` with the
    ``method`` (``password``, ``oidc``); the secret goes into the cookie (:func:`set_session_cookie`)."""
    _, secret = auth.create_token(session, name="ui session", role=Role(user.role), actor=f"user:{user.name}",
                                  now=now, user=user, expires_at=now + COOKIE_MAX_AGE, ui_session=True)
    audit.record(session, actor=f"user:{user.name}", action="user.sign_in", target=f"user:{user.name}",
                 details={"method": method}, now=now)
    return secret


def set_session_cookie(request: Request, response: Response, secret: str) -> None:
    response.set_cookie(COOKIE, secret, max_age=COOKIE_MAX_AGE, path="/", httponly=True, samesite="strict",
                        secure=request.url.scheme == "https")


def _password_session(session: SessionDep, controller: ControllerDep, policy: PasswordPolicyDep, *,
                      username: str, password: str) -> tuple[Principal, str] | None:
    """A new UI session token of the user whose password this is; ``None`` when it is not."""
    now = controller.now()
    try:
        user = users.verify_password(session, name=username, password=password, now=now, policy=policy)
    except AuthenticationError:
        return None
    secret = start_ui_session(session, user=user, now=now, method="password")
    principal = operator(session, secret, now)
    return (principal, secret) if principal is not None else None


@router.post("/ui/login", response_class=HTMLResponse)
def login(request: Request, session: SessionDep, controller: ControllerDep, policy: PasswordPolicyDep,
          token: Annotated[str, Form(max_length=512)] = "", username: Annotated[str, Form(max_length=64)] = "",
          password: Annotated[str, Form(max_length=1024)] = "", next: Annotated[str, Form(max_length=2048)] = "/",
          csrf_token: CsrfField = "") -> Response:
    if not csrf.matches(request.cookies.get(csrf.LOGIN_COOKIE), csrf_token or request.headers.get(csrf.HEADER)):
        log.warning("UI login without the form's CSRF token from %s", request.client.host if request.client else "?")
        controller.metrics.http_errors.labels(HttpRefusal.CSRF_REFUSED).inc()
        return _login_page(request, status_code=403, next=next,
                           error="This sign-in form has expired or was not sent from this site: sign in again.")
    username, token = username.strip(), token.strip()
    if username:
        signed = _password_session(session, controller, policy, username=username, password=password)
        principal, token = signed if signed is not None else (None, "")
        refused = "Unknown user name or wrong password."
    else:
        principal = operator(session, token, controller.now())
        refused = ("That token is not valid here. Use an operator API token "
                   "(viewer, operator, approver or admin role), not a device token.")
    if principal is None:
        log.warning("UI login refused from %s", request.client.host if request.client else "?")
        controller.metrics.http_errors.labels(Reason.UI_LOGIN_REFUSED).inc()
        return _login_page(request, status_code=401, next=next, error=refused, username=username)
    log.info("UI login by %s", principal.actor)
    response = RedirectResponse(safe_next(next), status_code=303)
    set_session_cookie(request, response, token)
    return response


@router.post("/ui/logout")
def logout(request: Request, session: SessionDep, controller: ControllerDep, csrf_token: CsrfField = "") -> Response:
    """Sign out; a password sign-in's session token is revoked (a pasted API token stays valid)."""
    if COOKIE in request.cookies:
        refusal = csrf_refusal(request, csrf_token)
        user = signed_in(request, session)
        if refusal is not None and user is not None:
            return forbidden(request, user, refusal)
        auth.end_ui_session(session, secret=request.cookies[COOKIE], now=controller.now())
    response = RedirectResponse(f"{base_path(request)}/ui/login", status_code=303)
    response.delete_cookie(COOKIE, path="/", httponly=True, samesite="strict")
    return response
