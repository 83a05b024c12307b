"""Bundles: upload (verified before anything is stored), list, show, delete, download with Range."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request, Response
from starlette.concurrency import run_in_threadpool

from edgefleet.cloud.api.params import DigestPath
from edgefleet.cloud.api.schemas import BundleDetail, BundleOut
from edgefleet.cloud.api.transfer import (
    BUNDLE_MEDIA_TYPE,
    OCTET_BODY,
    LargeFileResponse,
    accel_redirect,
    attachment,
    presigned_redirect,
    receive_upload,
    token_expiry,
)
from edgefleet.cloud.deps import BearerDep, ControllerDep, OperatorDep, SessionDep, ViewerDep
from edgefleet.cloud.services import auth, registry
from edgefleet.protocol.errors import NotFoundError

api = APIRouter(prefix="/api/v1")
uploads = APIRouter(prefix="/api/v1")
"""The streaming upload route: included with the (large) upload body limit instead of the API's."""


# ---------------------------------------------------------------- bundles

@uploads.post("/bundles", tags=["bundles"], status_code=201, openapi_extra=OCTET_BODY)
async def upload_bundle(request: Request, response: Response, controller: ControllerDep, session: SessionDep,
                        who: OperatorDep,
                        model: Annotated[str | None, Query(max_length=128)] = None,
                        model_version: Annotated[str | None, Query(max_length=64)] = None) -> BundleOut:
    """Upload a signed bundle as the raw body. The release signature and every file are verified
    before anything is stored (201); the same bytes again return the existing bundle (200)."""
    incoming = await receive_upload(request, controller.bundles, controller.settings.max_bundle_bytes)
    bundle, created = await run_in_threadpool(lambda: registry.register_bundle(   # off the event loop (see transfer.py)
        session, incoming=incoming, store=controller.bundles, trusted=controller.trusted_release_keys(session),
        max_bytes=controller.settings.max_bundle_bytes, model_name=model, model_version=model_version,
        actor=who.actor, now=controller.now()))
    if not created:
        response.status_code = 200
    return BundleOut.model_validate(bundle)


@api.get("/bundles", tags=["bundles"])
def list_bundles(session: SessionDep, _: ViewerDep,
                 name: Annotated[str | None, Query(max_length=128)] = None) -> list[BundleOut]:
    return [BundleOut.model_validate(b) for b in registry.list_bundles(session, name=name)]


@api.get("/bundles/{digest}", tags=["bundles"])
def show_bundle(digest: DigestPath, session: SessionDep, _: ViewerDep) -> BundleDetail:
    bundle = registry.get_bundle(session, digest=digest)
    return BundleDetail.model_validate(bundle.model_dump() | {
        "download_path": f"/api/v1/bundles/{bundle.digest}/download"})


@api.delete("/bundles/{digest}", tags=["bundles"], status_code=204)
def delete_bundle(digest: DigestPath, controller: ControllerDep, session: SessionDep, who: OperatorDep) -> None:
    registry.delete_bundle(session, digest=digest, store=controller.bundles, actor=who.actor, now=controller.now())


@api.get("/bundles/{digest}/download", tags=["bundles"], response_class=LargeFileResponse,
         responses={206: {"description": "Partial content (Range)"}, 416: {"description": "Range not satisfiable"},
                    307: {"description": "To a short-lived presigned URL of the S3 bundle store "
                                         "(``bundle_store = \"s3\"``)"}})
def download_bundle(request: Request, digest: DigestPath, controller: ControllerDep, session: SessionDep,
                    credentials: BearerDep,
                    token: Annotated[str | None, Query(max_length=256)] = None) -> Response:
    """The bundle bytes, with HTTP Range (resume). Authorized by any API token (devices use
    theirs) or by the short-lived signed ``token`` the order's URL carries. Behind nginx
    (``download_offload``) the bytes come from nginx, with an S3 store from the bucket (a 307 to a
    presigned URL): the authorization is the same (docs/operations.md, "Downloads that scale")."""
    authorized_until: float | None = None
    if token is not None and credentials is None:
        try:
            auth.check_download_token(controller.controller_key, digest=digest, token=token, now=controller.now())
        except auth.AuthenticationError:   # a link signed just before a controller key rotation still works
            if controller.previous_controller_key is None:
                raise
            auth.check_download_token(controller.previous_controller_key, digest=digest, token=token,
                                      now=controller.now())
        authorized_until = token_expiry(token)
    else:
        auth.authenticate(session, secret=credentials.credentials if credentials else None)
    bundle = registry.get_bundle(session, digest=digest)
    if bundle.digest != digest:
        raise NotFoundError("download needs the full digest", where="digest")
    headers = {"etag": f'"{bundle.digest}"', "cache-control": "private, max-age=31536000, immutable",
               "content-disposition": attachment(f"{bundle.name}-{bundle.version}+{bundle.build}.efb")}
    settings = controller.settings
    if settings.bundle_store == "s3":
        lifetime = settings.s3_presign_lifetime_s
        if authorized_until is not None:   # the presigned URL never outlives the controller's authorization
            lifetime = max(1, min(lifetime, int(authorized_until - controller.now())))
        return presigned_redirect(controller.bundles, bundle.digest, method=request.method, expires_in=lifetime,
                                  disposition=headers["content-disposition"])
    if settings.download_offload == "nginx":
        controller.bundles.open_path(bundle.digest)   # 404 here, not a bare nginx 404, when the file is gone
        return accel_redirect(settings.download_offload_prefix, bundle.digest, headers=headers,
                              media_type=BUNDLE_MEDIA_TYPE)
    return LargeFileResponse(controller.bundles.open_path(bundle.digest), media_type=BUNDLE_MEDIA_TYPE,
                             headers=headers)


api.add_api_route("/bundles/{digest}/download", download_bundle, methods=["HEAD"], include_in_schema=False,
                  response_class=LargeFileResponse)
