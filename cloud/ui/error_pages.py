"""The UI's error page, everywhere a person browses: an error answer to a page (``/``, ``/ui/...``, or any
path outside ``/api/`` asked for as HTML) is replaced by the styled page (``error.html``) with the same
status, what went wrong, where and what to do; an unhandled exception becomes a 500 page (logged with its
traceback) instead of a bare text. ``/api/...`` answers keep their JSON error body.

An ASGI middleware, so it sees the answers of every route and of the framework (unknown path, wrong
method, a query parameter that does not parse) without the API's error handlers knowing about pages.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse
from starlette.concurrency import run_in_threadpool
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from edgefleet.cloud.services.auth import Principal
from edgefleet.cloud.ui.render import render
from edgefleet.cloud.ui.session import signed_in

log = logging.getLogger(__name__)

API_PREFIX = "/api/"
MACHINE_PATHS = ("/healthz", "/metrics", "/openapi.json")
TITLES = {400: "Bad request", 401: "Not signed in", 403: "Not allowed", 404: "Not found",
          405: "Not possible here", 409: "Conflict", 413: "Too large", 422: "Cannot read the request",
          429: "Too many attempts", 500: "Something went wrong", 503: "Unavailable"}
MAX_TEXT = 300


def wants_page(scope: Scope) -> bool:
    """Whether an error answer to this request is for a person (HTML) rather than a program (JSON)."""
    path: str = scope["path"]
    if path.startswith(API_PREFIX) or path in MACHINE_PATHS:
        return False
    if path == "/" or path.startswith("/ui/"):
        return True
    accept = next((v for k, v in scope.get("headers", []) if k == b"accept"), b"")
    return b"text/html" in accept


def error_fields(status: int, body: bytes, content_type: str) -> dict[str, str | None]:
    """``message``, ``where``, ``hint`` and ``code`` of an error answer (our JSON body, or plain text)."""
    fields: dict[str, str | None] = {"message": None, "where": None, "hint": None, "code": None}
    if "json" in content_type:
        try:
            data: Any = json.loads(body)
        except ValueError:
            data = None
        error = data.get("error") if isinstance(data, dict) else None
        if isinstance(error, dict):
            for key in fields:
                value = error.get(key)
                fields[key] = str(value)[:MAX_TEXT] if value not in (None, "") else None
        elif isinstance(data, dict) and isinstance(data.get("detail"), str):
            fields["message"] = data["detail"][:MAX_TEXT]
    elif content_type.startswith("text/plain"):
        fields["message"] = body.decode("utf-8", "replace").strip()[:MAX_TEXT] or None
    if not fields["message"] or (status == 404 and fields["message"] == "Not Found"):
        fields["message"] = {404: "There is no page at this address.",
                             405: "This page cannot be used that way."}.get(status, TITLES.get(status, "Error"))
    return fields


def page(request: Request, user: Principal | None, status: int, **fields: str | None) -> HTMLResponse:
    return render(request, "error.html", status_code=status, user=user, refresh=None,
                  title=TITLES.get(status, f"Error {status}"), status=status, **fields)


def _user(request: Request) -> Principal | None:
    controller = getattr(request.app.state, "controller", None)
    if controller is None:
        return None
    try:
        with controller.session() as session:
            return signed_in(request, session)
    except Exception:   # the database may be what failed: the page still renders, without the top bar
        log.exception("error page: the signed-in user could not be read")
        return None


class HtmlErrors:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not wants_page(scope):
            await self.app(scope, receive, send)
            return
        held: list[Message] = []
        started = False

        async def watch(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                headers = {k.lower(): v for k, v in message.get("headers", [])}
                if message["status"] >= 400 and not headers.get(b"content-type", b"").startswith(b"text/html"):
                    held.append(message)
                    return
            elif held:
                held.append(message)
                if not message.get("more_body", False):
                    await self._replace(scope, receive, send, held)
                return
            await send(message)

        try:
            await self.app(scope, receive, watch)
        except Exception:
            if started:
                raise
            log.exception("%s %s failed", scope.get("method"), scope["path"])
            request = Request(scope)
            user = await run_in_threadpool(_user, request)
            await page(request, user, 500, message="The controller failed to answer this page.",
                       hint="try again; if it keeps failing, the controller's log says why")(scope, receive, send)

    async def _replace(self, scope: Scope, receive: Receive, send: Send, held: list[Message]) -> None:
        start = held[0]
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in start.get("headers", [])}
        body = b"".join(m.get("body", b"") for m in held[1:])
        fields = error_fields(start["status"], body, headers.get("content-type", ""))
        request = Request(scope)
        user = await run_in_threadpool(_user, request)
        response = page(request, user, start["status"], **fields)
        for name in ("retry-after", "allow", "www-authenticate"):
            if name in headers:
                response.headers[name] = headers[name]
        await response(scope, receive, send)


def install(app: FastAPI) -> None:
    app.add_middleware(HtmlErrors)
