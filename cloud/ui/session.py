"""UI sign-in: the operator pastes an API token (viewer, operator or admin role); it is kept in an
HttpOnly, SameSite=Strict cookie and checked on every request. Without a valid cookie a page
redirects to the login form."""

from __future__ import annotations

import logging
from typing import Annotated
from urllib.parse import quote

from fastapi import APIRouter, Form, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from edgefleet.cloud.deps import ControllerDep, SessionDep
from edgefleet.cloud.services import auth
from edgefleet.cloud.services.auth import Principal
from edgefleet.cloud.ui.render import base_path, render
from edgefleet.cloud.vocabulary import OPERATOR_ROLES, Role
from edgefleet.protocol.vocabulary import Reason

log = logging.getLogger(__name__)

COOKIE = "edgefleet_ui"
COOKIE_MAX_AGE = 12 * 3600

router = APIRouter(include_in_schema=False)


def safe_next(target: str | None) -> str:
    """Only same-site paths (no ``//host``, no scheme) are followed after login."""
    if not target or not target.startswith("/") or target.startswith("//") or "\\" in target:
        return "/"
    return target


def operator(session: SessionDep, secret: str | None) -> Principal | None:
    """The person holding ``secret``, if it is a live operator token (not a device's)."""
    principal = auth.identify(session, secret=secret)
    return principal if principal is not None and principal.role in OPERATOR_ROLES else None


def signed_in(request: Request, session: SessionDep) -> Principal | None:
    return operator(session, request.cookies.get(COOKIE))


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


def form_refusal(request: Request, user: Principal) -> str | None:
    """Why ``user`` may not act through this form post: an operator's (or admin's) role is needed,
    and the form must come from the controller's own pages. ``None`` when it may."""
    return user.refusal(Role.OPERATOR) or (None if same_origin(request) else
                                           "this form was not posted from the controller's own pages")


@router.get("/ui/login", response_class=HTMLResponse)
def login_form(request: Request, session: SessionDep, next: str = "/") -> Response:
    if signed_in(request, session) is not None:
        return RedirectResponse(safe_next(next), status_code=303)
    return render(request, "login.html", next=safe_next(next), error=None, user=None)


@router.post("/ui/login", response_class=HTMLResponse)
def login(request: Request, session: SessionDep, controller: ControllerDep,
          token: Annotated[str, Form(max_length=512)] = "", next: Annotated[str, Form(max_length=2048)] = "/"
          ) -> Response:
    token = token.strip()
    principal = operator(session, token)
    if principal is None:
        log.warning("UI login refused from %s", request.client.host if request.client else "?")
        controller.metrics.http_errors.labels(Reason.UI_LOGIN_REFUSED).inc()
        return render(request, "login.html", status_code=401, next=safe_next(next), user=None,
                      error="That token is not valid here. Use an operator API token "
                            "(viewer, operator or admin role), not a device token.")
    log.info("UI login by %s", principal.actor)
    response = RedirectResponse(safe_next(next), status_code=303)
    response.set_cookie(COOKIE, token, max_age=COOKIE_MAX_AGE, path="/", httponly=True, samesite="strict",
                        secure=request.url.scheme == "https")
    return response


@router.post("/ui/logout")
def logout(request: Request) -> Response:
    response = RedirectResponse(f"{base_path(request)}/ui/login", status_code=303)
    response.delete_cookie(COOKIE, path="/", httponly=True, samesite="strict")
    return response
