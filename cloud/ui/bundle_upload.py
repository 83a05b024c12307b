"""Upload a signed bundle from the UI (operator or admin): the form on ``/ui/bundles`` posts the file
(``multipart/form-data``) to ``POST /ui/bundles/upload``, which checks the role, the origin and the
CSRF token before the file is read, streams it into the bundle store bounded by ``max_bundle_bytes``,
and registers it with the same service call as ``POST /api/v1/bundles``
(:func:`edgefleet.cloud.services.registry.register_bundle`: release signature or delegation, archive,
every file; the ``bundle.upload`` audit entry). Nothing is stored when it fails; the refusal is the
styled error page with the service's status, message, where and hint (a tampered or unsigned file:
verification failed; too large: 413). Then the bundle list, with the new bundle in it.

Like the REST upload the route is ``async`` (it streams the body) and every database call goes through
``run_in_threadpool`` (see ``edgefleet.cloud.api.transfer``)."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator

from fastapi import APIRouter, Request
from fastapi.responses import RedirectResponse, Response
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartException

from edgefleet.cloud.deps import ControllerDep
from edgefleet.cloud.services import registry
from edgefleet.cloud.services.auth import Principal
from edgefleet.cloud.ui.csrf import FIELD
from edgefleet.cloud.ui.render import base_path, forbidden
from edgefleet.cloud.ui.session import form_refusal, signed_in, to_login
from edgefleet.cloud.vocabulary import Role
from edgefleet.protocol.errors import InvalidRequestError, SizeLimitError

log = logging.getLogger(__name__)

router = APIRouter(include_in_schema=False)

FILE_FIELD = "bundle"
FORM_MARGIN = 64 * 1024
"""Bytes of the form around the file (boundaries, part headers, the CSRF token and the text fields)."""
CHUNK = 1024 * 1024


def form_limit(max_bundle_bytes: int) -> int:
    """The largest form the route reads: the largest bundle plus the form around it."""
    return max_bundle_bytes + FORM_MARGIN


def body_limit(max_bundle_bytes: int) -> int:
    """The request body bound of the route (the framework's, answered with a bare 413 text): twice
    :func:`form_limit`, so that a browser's upload of a file up to twice too large, whose Content-Length
    says so, gets this module's page instead (refused before a byte of it is read)."""
    return 2 * form_limit(max_bundle_bytes)


def _user(request: Request, controller: ControllerDep) -> Principal | None:
    with controller.session() as session:
        return signed_in(request, session)


async def _chunks(upload: UploadFile) -> AsyncIterator[bytes]:
    while chunk := await upload.read(CHUNK):
        yield chunk


def _text(value: object, *, where: str) -> str | None:
    if value is None or value == "":
        return None
    if not isinstance(value, str) or len(value) > 128:
        raise InvalidRequestError(f"{where} must be a text of at most 128 characters", where=where)
    return value.strip() or None


@router.post("/ui/bundles/upload")
async def upload_bundle(request: Request, controller: ControllerDep) -> Response:
    """Verify and store the posted bundle file, then show the bundle list (303)."""
    user = await run_in_threadpool(_user, request, controller)
    if user is None:
        return to_login(request)
    refusal = user.refusal(Role.OPERATOR)
    if refusal is not None:        # before a byte of the file is read
        return forbidden(request, user, refusal)
    max_bytes = controller.settings.max_bundle_bytes
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > form_limit(max_bytes):
        raise SizeLimitError(f"the upload of {declared} bytes is larger than the bundle limit of {max_bytes} bytes",
                             where=FILE_FIELD, hint="raise EDGEFLEET_MAX_BUNDLE_BYTES if this is intended")
    try:
        async with request.form(max_files=1, max_fields=8, max_part_size=4096) as form:
            token = form.get(FIELD)
            refusal = form_refusal(request, user, token if isinstance(token, str) else None)
            if refusal is not None:
                log.warning("UI bundle upload refused for %s: %s", user.actor, refusal)
                return forbidden(request, user, refusal)
            upload = form.get(FILE_FIELD)
            if not isinstance(upload, UploadFile) or not upload.filename:
                raise InvalidRequestError("no bundle file was chosen", where=FILE_FIELD,
                                          hint="choose the signed bundle file (.efb) made by edgefleet bundle build")
            model = _text(form.get("model"), where="model")
            model_version = _text(form.get("model_version"), where="model_version")
            incoming = await controller.bundles.receive(_chunks(upload), max_bytes=max_bytes)
    except MultiPartException as exc:
        raise InvalidRequestError(f"the form could not be read: {exc.message}", where="body",
                                  hint="post the form of the bundles page") from None
    if incoming.size == 0:
        controller.bundles.discard(incoming)
        raise InvalidRequestError(f"the file {upload.filename!r} is empty", where=FILE_FIELD)

    def register() -> tuple[str, bool]:
        with controller.session() as session:
            bundle, created = registry.register_bundle(
                session, incoming=incoming, store=controller.bundles, trusted=controller.trusted_release_keys(session),
                max_bytes=max_bytes, model_name=model, model_version=model_version, actor=user.actor,
                now=controller.now())
            return bundle.digest, created

    digest, created = await run_in_threadpool(register)
    log.info("bundle %s %s from the UI by %s", digest[:12], "uploaded" if created else "uploaded again", user.actor)
    return RedirectResponse(f"{base_path(request)}/ui/bundles", status_code=303)
