"""Domain errors -> HTTP, in one place. Every error body is
``{"error": {"code", "message", "where", "hint"}}``."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException

from edgefleet.cloud.services.auth import AuthenticationError, PermissionDeniedError
from edgefleet.cloud.store.engine import DatabaseUnavailable
from edgefleet.protocol.errors import (
    ConfigError,
    ConflictError,
    EdgeFleetError,
    InvalidRequestError,
    MessageError,
    NotFoundError,
    SizeLimitError,
    TransportError,
    VerificationError,
)
from edgefleet.protocol.vocabulary import Reason

log = logging.getLogger(__name__)

STATUS: list[tuple[type[EdgeFleetError], int]] = [
    (AuthenticationError, 401),
    (PermissionDeniedError, 403),
    (NotFoundError, 404),
    (ConflictError, 409),
    (SizeLimitError, 413),
    (VerificationError, 422),
    (MessageError, 400),
    (InvalidRequestError, 400),
    (TransportError, 503),
    (ConfigError, 500),
]
"""First match wins, so subclasses come before their bases."""


HTTP_CODES = {404: Reason.NOT_FOUND, 405: Reason.METHOD_NOT_ALLOWED, 413: Reason.SIZE_LIMIT}
"""Our code for an HTTP error raised by the framework (unknown path, wrong method, body too large)."""


class ErrorDetail(BaseModel):
    code: str
    """A stable machine-readable reason (docs/protocol.md §8)."""
    message: str
    where: str | None = None
    """The parameter, header or field at fault."""
    hint: str | None = None
    """What to do about it."""


class ErrorBody(BaseModel):
    """The body of every error answer."""

    error: ErrorDetail


ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorBody, "description": text} for status, text in [
        (400, "Invalid request"), (401, "Missing, unknown or revoked credentials"), (403, "Not allowed for this role"),
        (404, "No such resource"), (409, "Conflicts with the current state"), (413, "Body too large"),
        (422, "A parameter or body field out of its bounds"),
        (429, "Too many failed authentications from this address (Retry-After says when to try again)")]}
"""The error answers every API operation documents (the OpenAPI schema the fuzz test checks them against)."""


def status_for(exc: EdgeFleetError) -> int:
    for cls, status in STATUS:
        if isinstance(exc, cls):
            return status
    return 400


def error_body(code: str, message: str, where: str | None = None, hint: str | None = None) -> dict[str, Any]:
    return {"error": {"code": code, "message": message, "where": where, "hint": hint}}


def install(app: FastAPI) -> None:
    def count(code: str) -> None:
        controller = getattr(app.state, "controller", None)
        if controller is not None:
            controller.metrics.http_errors.labels(code).inc()

    @app.exception_handler(EdgeFleetError)
    async def _domain(request: Request, exc: EdgeFleetError) -> JSONResponse:
        status = status_for(exc)
        if status >= 500:
            log.error("%s %s failed: %s", request.method, request.url.path, exc)
        count(exc.code)
        headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
        return JSONResponse({"error": exc.to_dict()}, status_code=status, headers=headers)

    @app.exception_handler(DatabaseUnavailable)
    async def _database(request: Request, exc: DatabaseUnavailable) -> JSONResponse:
        """The database went away (restarted, unreachable): say so and when to come back, not a bare 500.
        The connection pool checks connections before use, so the first request after it is back works."""
        log.error("%s %s: the database does not answer: %s", request.method, request.url.path,
                  str(exc.orig or exc).strip().splitlines()[0][:200])
        count(Reason.TRANSPORT_FAILED)
        return JSONResponse(error_body(Reason.TRANSPORT_FAILED, "the controller's database does not answer",
                                       "database", "retry in a few seconds; if it lasts, check the database server "
                                       "and the controller's database_url"),
                            status_code=503, headers={"Retry-After": "5"})

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {"loc": (), "msg": "invalid request"}
        where = ".".join(str(p) for p in first.get("loc", ()))
        count(Reason.INVALID_REQUEST)
        return JSONResponse(error_body(Reason.INVALID_REQUEST, str(first.get("msg")), where,
                                       "see /docs for the request schema"), status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = HTTP_CODES.get(exc.status_code, Reason.INVALID_REQUEST)
        count(code)
        return JSONResponse(error_body(code, str(exc.detail)), status_code=exc.status_code,
                            headers=getattr(exc, "headers", None))
