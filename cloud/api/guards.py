"""What every request and response passes through, API and UI alike (ASGI middleware, outermost first):

* :class:`SecurityHeaders` -- Content-Security-Policy (a ``default-src 'none'`` one for the API and every
  answer that sets none; the UI's pages and ``/docs`` set their own, ``edgefleet.cloud.ui``),
  ``X-Content-Type-Options``, ``X-Frame-Options``, ``Referrer-Policy``, ``Cache-Control: no-store`` on
  API answers that set no caching of their own, and HSTS when the controller's public URL is https.
* :class:`AuthFailureLimit` -- a client address that got too many 401 answers within the window gets
  429 with ``Retry-After`` (:mod:`edgefleet.cloud.services.lockout` decides); each lockout is logged
  and audited (``auth.lockout``).
* :class:`JsonBodyBounds` -- a JSON body with an integer past 64 bits, a non-finite number, deep
  nesting or bytes that are not UTF-8 is a 422 before any route parses it (:mod:`bounds`).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Awaitable, Callable
from email.message import Message as MimeMessage
from typing import Any

from fastapi import FastAPI
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import MutableHeaders
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from edgefleet.cloud.api import bounds
from edgefleet.cloud.api.errors import error_body
from edgefleet.cloud.deps import ControllerDep
from edgefleet.cloud.services import audit
from edgefleet.cloud.services.lockout import FailureLimiter, FailureRule
from edgefleet.cloud.vocabulary import HttpRefusal
from edgefleet.protocol.vocabulary import Reason

log = logging.getLogger(__name__)

API_PREFIX = "/api/"
API_CSP = "default-src 'none'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
"""For everything that is not a UI page: JSON, files, redirects. The UI's pages set their own
(``edgefleet.cloud.ui.render``: scripts, styles and images from the controller only, no inline script)."""
ALWAYS = {"X-Content-Type-Options": "nosniff", "X-Frame-Options": "DENY", "Referrer-Policy": "same-origin"}
NO_CREDENTIALS = ("/healthz", "/metrics", "/openapi.json", "/docs", "/ui/static/")
"""Paths that take no credentials: never locked out."""


class SecurityHeaders:
    def __init__(self, app: ASGIApp, *, hsts: str | None) -> None:
        self.app = app
        self.hsts = hsts

    def _add(self, message: Message, path: str, csp: str) -> None:
        headers = MutableHeaders(scope=message)
        for name, value in ALWAYS.items():
            headers.setdefault(name, value)
        headers.setdefault("Content-Security-Policy", csp)
        if path.startswith(API_PREFIX):
            headers.setdefault("Cache-Control", "no-store")
        if self.hsts:
            headers.setdefault("Strict-Transport-Security", self.hsts)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path: str = scope["path"]

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                self._add(message, path, API_CSP)
            await send(message)

        await self.app(scope, receive, send_with_headers)


def client_address(scope: Scope) -> str:
    """The caller's address as the server gives it (behind a reverse proxy: uvicorn takes it from
    ``X-Forwarded-For`` only for the proxies in ``FORWARDED_ALLOW_IPS``)."""
    client = scope.get("client")
    return str(client[0]) if client else "unknown"


class AuthFailureLimit:
    def __init__(self, app: ASGIApp, *, limiter: FailureLimiter, clock: Callable[[], float],
                 on_lockout: Callable[[str, float], Awaitable[None]], on_refusal: Callable[[], None]) -> None:
        self.app = app
        self.limiter = limiter
        self.clock = clock
        self.on_lockout = on_lockout
        self.on_refusal = on_refusal

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"].startswith(NO_CREDENTIALS) or self.limiter.rule.limit <= 0:
            await self.app(scope, receive, send)
            return
        client = client_address(scope)
        wait = self.limiter.retry_after(client, now=self.clock())
        if wait is not None:
            self.on_refusal()
            await self.refusal(scope["path"], wait)(scope, receive, send)
            return
        status: list[int] = []

        async def watch(message: Message) -> None:
            if message["type"] == "http.response.start":
                status.append(message["status"])
            await send(message)

        await self.app(scope, receive, watch)
        if status and status[0] == 401:
            locked = self.limiter.fail(client, now=self.clock())
            if locked is not None:
                await self.on_lockout(client, locked)

    def refusal(self, path: str, wait: float) -> Response:
        seconds = max(1, math.ceil(wait))
        headers = {"Retry-After": str(seconds)}
        rule = self.limiter.rule
        message = f"{rule.limit} failed authentications from this address within {rule.window_s:g} s"
        if not path.startswith(API_PREFIX):
            return PlainTextResponse(f"Too many failed sign-ins from your address: try again in {seconds} s.",
                                     status_code=429, headers=headers)
        return JSONResponse(error_body(HttpRefusal.RATE_LIMITED, message, "Authorization",
                                       f"check the credentials, then try again in {seconds} s"),
                            status_code=429, headers=headers)


def _is_json(scope: Scope) -> bool:
    for name, value in scope["headers"]:
        if name == b"content-type":
            mime = MimeMessage()
            mime["content-type"] = value.decode("latin-1")
            subtype = mime.get_content_subtype()
            return mime.get_content_maintype() == "application" and (subtype == "json" or subtype.endswith("+json"))
    return False


class JsonBodyBounds:
    def __init__(self, app: ASGIApp, *, max_bytes: int, on_refusal: Callable[[], None]) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.on_refusal = on_refusal

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not scope["path"].startswith(API_PREFIX) or not _is_json(scope):
            await self.app(scope, receive, send)
            return
        held: list[Message] = []
        size, complete = 0, False
        while not complete and size <= self.max_bytes:   # past the limit the route answers 413
            message = await receive()
            held.append(message)
            if message["type"] != "http.request":
                break
            size += len(message.get("body", b""))
            complete = not message.get("more_body", False)
        if complete:
            found = bounds.violation(b"".join(m.get("body", b"") for m in held))
            if found is not None:
                self.on_refusal()
                where, why = found
                await JSONResponse(error_body(Reason.INVALID_REQUEST, why, where, "see /docs for the request schema"),
                                   status_code=422)(scope, receive, send)
                return

        async def replay() -> Message:
            return held.pop(0) if held else await receive()

        await self.app(scope, replay, send)


def install(app: FastAPI, controller: ControllerDep) -> None:
    """Add the three guards to ``app`` (the last added runs first)."""
    settings = controller.settings
    limiter = FailureLimiter(FailureRule(settings.auth_failure_limit, settings.auth_failure_window_s))
    app.state.auth_limiter = limiter
    errors = controller.metrics.http_errors

    async def lockout(client: str, retry_after: float) -> None:
        log.warning("authentication lockout of %s: %d failures within %g s, refused for %.0f s", client,
                    limiter.rule.limit, limiter.rule.window_s, retry_after)
        details: dict[str, Any] = {"failures": limiter.rule.limit, "window_s": limiter.rule.window_s,
                                   "retry_after_s": round(retry_after, 1)}

        def record() -> None:
            with controller.session() as session:
                audit.record(session, actor="system", action="auth.lockout", target=f"client:{client}",
                             details=details, now=controller.now())

        await run_in_threadpool(record)

    app.add_middleware(JsonBodyBounds, max_bytes=settings.max_request_bytes,
                       on_refusal=lambda: errors.labels(Reason.INVALID_REQUEST).inc())
    app.add_middleware(AuthFailureLimit, limiter=limiter, clock=controller.now, on_lockout=lockout,
                       on_refusal=lambda: errors.labels(HttpRefusal.RATE_LIMITED).inc())
    https = settings.resolved_public_url.startswith("https://") and settings.hsts_max_age_s > 0
    app.add_middleware(SecurityHeaders, hsts=f"max-age={settings.hsts_max_age_s}" if https else None)
