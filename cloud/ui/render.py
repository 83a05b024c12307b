"""Rendering pages: the Jinja environment (autoescaped), security headers, error pages."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import jinja2
from fastapi import Request
from fastapi.responses import HTMLResponse

from edgefleet.cloud.services.auth import Principal
from edgefleet.cloud.ui import csrf
from edgefleet.cloud.ui.filters import FILTERS
from edgefleet.cloud.vocabulary import DeploymentStatus, Role
from edgefleet.protocol.errors import EdgeFleetError
from edgefleet.protocol.vocabulary import DriftLevel, EventLevel

HERE = Path(__file__).parent
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
                               "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}


def _env() -> jinja2.Environment:
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(HERE / "templates"), autoescape=True,
                             undefined=jinja2.ChainableUndefined, trim_blocks=True, lstrip_blocks=True)
    env.filters.update(FILTERS)
    env.globals.update(DriftLevel=DriftLevel, EventLevel=EventLevel, Role=Role,
                       DEPLOYMENT_FILTERS=[(s, "in progress" if s == DeploymentStatus.ACTIVE else s.value)
                                           for s in DeploymentStatus])
    return env


templates = _env()


def base_path(request: Request) -> str:
    """The path the UI is mounted under (behind a reverse proxy), without a trailing slash."""
    return str(request.scope.get("root_path", "")).rstrip("/")


def render(request: Request, name: str, status_code: int = 200, **context: Any) -> HTMLResponse:
    context.setdefault("now", time.time())
    context.setdefault("refresh", None)
    context.setdefault("csrf", csrf.page_token(request.cookies))
    html = templates.get_template(name).render(base=base_path(request), path=request.url.path, **context)
    return HTMLResponse(html, status_code=status_code, headers=SECURITY_HEADERS)


def not_found(request: Request, user: Principal, exc: EdgeFleetError) -> HTMLResponse:
    return render(request, "error.html", status_code=404, user=user, now=time.time(), refresh=None,
                  title="Not found", status=404, message=exc.message, where=exc.where, hint=exc.hint)


def forbidden(request: Request, user: Principal, message: str, hint: str | None = None) -> HTMLResponse:
    return render(request, "error.html", status_code=403, user=user, title="Not allowed", status=403,
                  message=message, hint=hint)
