"""Models, model versions (with their model file) and bundles: upload, list, show, download."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request, Response
from fastapi.responses import FileResponse

from edgefleet.cloud import auth, bundle_builds, datasets, registry
from edgefleet.cloud.blobstore import BlobStore, Incoming
from edgefleet.cloud.deps import BearerDep, ControllerDep, OperatorDep, SessionDep, ViewerDep
from edgefleet.cloud.schemas import (BundleBuildRequest, BundleDetail, BundleOut, DatasetOut, ModelCreate, ModelDetail,
                                     ModelOut, ModelVersionCreate, ModelVersionOut)
from edgefleet.protocol.errors import MessageError, NotFoundError, SizeLimitError

api = APIRouter(prefix="/api/v1")
uploads = APIRouter(prefix="/api/v1")
"""The streaming upload routes: included with the (large) upload body limit instead of the API's."""

_OCTETS = {"requestBody": {"required": True, "content": {"application/octet-stream": {
    "schema": {"type": "string", "format": "binary"}}}}}


class LargeFileResponse(FileResponse):
    chunk_size = 1024 * 1024


async def _receive(request: Request, store: BlobStore, max_bytes: int) -> Incoming:
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.isdigit():
            raise MessageError("Content-Length is not a number", where="Content-Length")
        if int(declared) > max_bytes:
            raise SizeLimitError(f"upload of {declared} bytes exceeds {max_bytes} bytes", where="body")
    incoming = await store.receive(request.stream(), max_bytes=max_bytes)
    if incoming.size == 0:
        store.discard(incoming)
        raise MessageError("empty upload", where="body", hint="send the file as the raw request body")
    return incoming


# ---------------------------------------------------------------- models

@api.get("/models", tags=["models"])
def list_models(session: SessionDep, _: ViewerDep) -> list[ModelOut]:
    return [ModelOut.model_validate(m) for m in registry.list_models(session)]


@api.post("/models", tags=["models"], status_code=201)
def create_model(body: ModelCreate, controller: ControllerDep, session: SessionDep, who: OperatorDep) -> ModelOut:
    return ModelOut.model_validate(registry.create_model(session, name=body.name, description=body.description,
                                                         actor=who.actor, now=controller.now()))


@api.get("/models/{name}", tags=["models"])
def show_model(name: str, session: SessionDep, _: ViewerDep) -> ModelDetail:
    model = registry.get_model(session, name=name)
    versions = [ModelVersionOut.model_validate(v) for v in registry.list_model_versions(session, model_name=name)]
    return ModelDetail.model_validate(model.model_dump() | {"versions": versions,
                                                            "lineage": registry.lineage(session, model_name=name)})


@api.post("/models/{name}/versions", tags=["models"], status_code=201)
def create_model_version(name: str, body: ModelVersionCreate, controller: ControllerDep, session: SessionDep,
                         who: OperatorDep) -> ModelVersionOut:
    row = registry.create_model_version(session, model_name=name, version=body.version, kind=body.kind,
                                        parent_version=body.parent, format=body.format, report=body.report,
                                        actor=who.actor, now=controller.now())
    return ModelVersionOut.model_validate(row)


@api.get("/models/{name}/versions/{version}", tags=["models"])
def show_model_version(name: str, version: str, session: SessionDep, _: ViewerDep) -> ModelVersionOut:
    return ModelVersionOut.model_validate(registry.get_model_version(session, model_name=name, version=version))


@uploads.put("/models/{name}/versions/{version}/artifact", tags=["models"], openapi_extra=_OCTETS)
async def upload_artifact(name: str, version: str, request: Request, controller: ControllerDep,
                          session: SessionDep, who: OperatorDep) -> ModelVersionOut:
    """Upload the model file (ONNX / TFLite bytes) of a version as the raw request body."""
    registry.get_model_version(session, model_name=name, version=version)
    incoming = await _receive(request, controller.artifacts, controller.settings.max_artifact_bytes)
    row = registry.attach_artifact(session, model_name=name, version=version, incoming=incoming,
                                   store=controller.artifacts, actor=who.actor, now=controller.now())
    return ModelVersionOut.model_validate(row)


@api.get("/models/{name}/versions/{version}/artifact", tags=["models"], response_class=LargeFileResponse)
def download_artifact(name: str, version: str, controller: ControllerDep, session: SessionDep,
                      _: ViewerDep) -> LargeFileResponse:
    row = registry.get_model_version(session, model_name=name, version=version)
    if row.artifact_digest is None:
        raise NotFoundError(f"{name}@{version} has no model file", where="artifact")
    return LargeFileResponse(controller.artifacts.open_path(row.artifact_digest),
                             media_type="application/octet-stream",
                             filename=f"{name}-{version}.{row.format}")


@uploads.put("/models/{name}/dataset", tags=["models"], openapi_extra=_OCTETS)
async def upload_dataset(name: str, request: Request, controller: ControllerDep, session: SessionDep,
                         who: OperatorDep) -> DatasetOut:
    """Upload the model's sample set as the raw body: an ``.npz`` with ``x`` (inputs, samples
    first) and optional integer labels ``y``. Used by compression jobs and server builds with
    ``"data": "dataset"``; replaces the previous one. A malformed archive stores nothing."""
    registry.get_model(session, name=name)
    limit = controller.settings.max_dataset_bytes
    incoming = await _receive(request, controller.artifacts, limit)
    row = datasets.store_dataset(session, model_name=name, incoming=incoming, store=controller.artifacts,
                                 max_unpacked=limit, actor=who.actor, now=controller.now())
    return DatasetOut.model_validate(row)


@api.get("/models/{name}/dataset", tags=["models"])
def show_dataset(name: str, session: SessionDep, _: ViewerDep) -> DatasetOut:
    return DatasetOut.model_validate(datasets.get_dataset(session, model_name=name))


@api.post("/models/{name}/versions/{version}/bundles", tags=["bundles"], status_code=201)
def build_bundle(name: str, version: str, body: BundleBuildRequest, response: Response, controller: ControllerDep,
                 session: SessionDep, who: OperatorDep) -> BundleOut:
    """Build, sign and register a bundle of this version on the controller (opt-in: needs
    ``release_signing_key_path``, whose public key must be trusted). The body is the bundle
    recipe as JSON (``bundle``, ``target``, ``smoke_test``, ``drift``...; ``bundle.runtime`` must
    be the version's format) and ``data``, the samples for the drift profile and smoke test.
    Synchronous: small models build in well under a second. The same recipe again gives the
    same bytes and returns the stored bundle (200)."""
    bundle, created = bundle_builds.build_and_register(
        session, model_name=name, version=version, recipe=body.model_dump(mode="json", exclude={"data"}),
        data=body.data, key=controller.release_signing_key, trusted=controller.trusted_release_keys(session),
        artifacts=controller.artifacts, bundles=controller.bundles,
        max_bundle_bytes=controller.settings.max_bundle_bytes, max_dataset_bytes=controller.settings.max_dataset_bytes, actor=who.actor, now=controller.now())
    if not created:
        response.status_code = 200
    return BundleOut.model_validate(bundle)


# ---------------------------------------------------------------- bundles

@uploads.post("/bundles", tags=["bundles"], status_code=201, openapi_extra=_OCTETS)
async def upload_bundle(request: Request, response: Response, controller: ControllerDep, session: SessionDep,
                        who: OperatorDep,
                        model: Annotated[str | None, Query(max_length=128)] = None,
                        model_version: Annotated[str | None, Query(max_length=64)] = None) -> BundleOut:
    """Upload a signed bundle as the raw body. The release signature and every file are verified
    before anything is stored (201); the same bytes again return the existing bundle (200)."""
    incoming = await _receive(request, controller.bundles, controller.settings.max_bundle_bytes)
    bundle, created = registry.register_bundle(
        session, incoming=incoming, store=controller.bundles, trusted=controller.trusted_release_keys(session),
        max_bytes=controller.settings.max_bundle_bytes, model_name=model, model_version=model_version,
        actor=who.actor, now=controller.now())
    if not created:
        response.status_code = 200
    return BundleOut.model_validate(bundle)


@api.get("/bundles", tags=["bundles"])
def list_bundles(session: SessionDep, _: ViewerDep, name: str | None = None) -> list[BundleOut]:
    return [BundleOut.model_validate(b) for b in registry.list_bundles(session, name=name)]


@api.get("/bundles/{digest}", tags=["bundles"])
def show_bundle(digest: str, session: SessionDep, _: ViewerDep) -> BundleDetail:
    bundle = registry.get_bundle(session, digest=digest)
    return BundleDetail.model_validate(bundle.model_dump() | {
        "download_path": f"/api/v1/bundles/{bundle.digest}/download"})


@api.delete("/bundles/{digest}", tags=["bundles"], status_code=204)
def delete_bundle(digest: str, controller: ControllerDep, session: SessionDep, who: OperatorDep) -> None:
    registry.delete_bundle(session, digest=digest, store=controller.bundles, actor=who.actor, now=controller.now())


@api.get("/bundles/{digest}/download", tags=["bundles"], response_class=LargeFileResponse,
         responses={206: {"description": "Partial content (Range)"}, 416: {"description": "Range not satisfiable"}})
def download_bundle(digest: str, controller: ControllerDep, session: SessionDep, credentials: BearerDep,
                    token: Annotated[str | None, Query(max_length=256)] = None) -> LargeFileResponse:
    """The bundle bytes, with HTTP Range (resume). Authorized by any API token (devices use
    theirs) or by the short-lived signed ``token`` the order's URL carries."""
    if token is not None and credentials is None:
        auth.check_download_token(controller.controller_key, digest=digest, token=token, now=controller.now())
    else:
        auth.authenticate(session, secret=credentials.credentials if credentials else None)
    bundle = registry.get_bundle(session, digest=digest)
    if bundle.digest != digest:
        raise NotFoundError("download needs the full digest", where="digest")
    return LargeFileResponse(controller.bundles.open_path(bundle.digest), media_type="application/x-tar",
                             headers={"etag": f'"{bundle.digest}"',
                                      "cache-control": "private, max-age=31536000, immutable"})


api.add_api_route("/bundles/{digest}/download", download_bundle, methods=["HEAD"], include_in_schema=False,
                  response_class=LargeFileResponse)
