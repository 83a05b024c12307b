"""Models and their versions: model files, the sample set, server-side bundle builds."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from starlette.concurrency import run_in_threadpool

from edgefleet.cloud.api.params import NamePath, VersionPath
from edgefleet.cloud.api.schemas import (
    BundleBuildRequest,
    BundleOut,
    DatasetOut,
    ModelCreate,
    ModelDetail,
    ModelOut,
    ModelVersionCreate,
    ModelVersionOut,
)
from edgefleet.cloud.api.transfer import OCTET_BODY, LargeFileResponse, receive_upload
from edgefleet.cloud.deps import ControllerDep, OperatorDep, SessionDep, ViewerDep
from edgefleet.cloud.services import bundle_builds, datasets, registry
from edgefleet.protocol.errors import NotFoundError

api = APIRouter(prefix="/api/v1")
uploads = APIRouter(prefix="/api/v1")
"""The streaming upload routes: included with the (large) upload body limit instead of the API's."""


# ---------------------------------------------------------------- models

@api.get("/models", tags=["models"])
def list_models(session: SessionDep, _: ViewerDep) -> list[ModelOut]:
    return [ModelOut.model_validate(m) for m in registry.list_models(session)]


@api.post("/models", tags=["models"], status_code=201)
def create_model(body: ModelCreate, controller: ControllerDep, session: SessionDep, who: OperatorDep) -> ModelOut:
    return ModelOut.model_validate(registry.create_model(session, name=body.name, description=body.description,
                                                         actor=who.actor, now=controller.now()))


@api.get("/models/{name}", tags=["models"])
def show_model(name: NamePath, session: SessionDep, _: ViewerDep) -> ModelDetail:
    model = registry.get_model(session, name=name)
    versions = [ModelVersionOut.model_validate(v) for v in registry.list_model_versions(session, model_name=name)]
    return ModelDetail.model_validate(model.model_dump() | {"versions": versions,
                                                            "lineage": registry.lineage(session, model_name=name)})


@api.post("/models/{name}/versions", tags=["models"], status_code=201)
def create_model_version(name: NamePath, body: ModelVersionCreate, controller: ControllerDep, session: SessionDep,
                         who: OperatorDep) -> ModelVersionOut:
    row = registry.create_model_version(session, model_name=name, version=body.version, kind=body.kind,
                                        parent_version=body.parent, format=body.format, report=body.report,
                                        lineage=body.lineage, actor=who.actor, now=controller.now())
    return ModelVersionOut.model_validate(row)


@api.get("/models/{name}/versions/{version}", tags=["models"])
def show_model_version(name: NamePath, version: VersionPath, session: SessionDep, _: ViewerDep) -> ModelVersionOut:
    return ModelVersionOut.model_validate(registry.get_model_version(session, model_name=name, version=version))


@uploads.put("/models/{name}/versions/{version}/artifact", tags=["models"], openapi_extra=OCTET_BODY)
async def upload_artifact(name: NamePath, version: VersionPath, request: Request, controller: ControllerDep,
                          session: SessionDep, who: OperatorDep) -> ModelVersionOut:
    """Upload the model file (ONNX / TFLite bytes) of a version as the raw request body."""
    await run_in_threadpool(registry.get_model_version, session, model_name=name, version=version)
    incoming = await receive_upload(request, controller.artifacts, controller.settings.max_artifact_bytes)
    row = await run_in_threadpool(lambda: registry.attach_artifact(   # off the event loop (see transfer.py)
        session, model_name=name, version=version, incoming=incoming, store=controller.artifacts, actor=who.actor,
        now=controller.now()))
    return ModelVersionOut.model_validate(row)


@api.get("/models/{name}/versions/{version}/artifact", tags=["models"], response_class=LargeFileResponse)
def download_artifact(name: NamePath, version: VersionPath, controller: ControllerDep, session: SessionDep,
                      _: ViewerDep) -> LargeFileResponse:
    row = registry.get_model_version(session, model_name=name, version=version)
    if row.artifact_digest is None:
        raise NotFoundError(f"{name}@{version} has no model file", where="artifact")
    return LargeFileResponse(controller.artifacts.open_path(row.artifact_digest),
                             media_type="application/octet-stream",
                             filename=f"{name}-{version}.{row.format}")


@uploads.put("/models/{name}/dataset", tags=["models"], openapi_extra=OCTET_BODY)
async def upload_dataset(name: NamePath, request: Request, controller: ControllerDep, session: SessionDep,
                         who: OperatorDep) -> DatasetOut:
    """Upload the model's sample set as the raw body: an ``.npz`` with ``x`` (inputs, samples
    first) and optional integer labels ``y``. Used by compression jobs and server builds with
    ``"data": "dataset"``; replaces the previous one. A malformed archive stores nothing."""
    await run_in_threadpool(registry.get_model, session, name=name)
    limit = controller.settings.max_dataset_bytes
    incoming = await receive_upload(request, controller.artifacts, limit)
    row = await run_in_threadpool(lambda: datasets.store_dataset(   # off the event loop (see transfer.py)
        session, model_name=name, incoming=incoming, store=controller.artifacts, max_unpacked=limit, actor=who.actor,
        now=controller.now()))
    return DatasetOut.model_validate(row)


@api.get("/models/{name}/dataset", tags=["models"])
def show_dataset(name: NamePath, session: SessionDep, _: ViewerDep) -> DatasetOut:
    return DatasetOut.model_validate(datasets.get_dataset(session, model_name=name))


@api.get("/models/{name}/dataset/download", tags=["models"], response_class=LargeFileResponse)
def download_dataset(name: NamePath, controller: ControllerDep, session: SessionDep,
                     _: OperatorDep) -> LargeFileResponse:
    """The model's reference dataset as uploaded (``.npz``: ``x``, optional ``y``), e.g. for a training
    pipeline outside the controller (docs/retraining.md)."""
    row = datasets.get_dataset(session, model_name=name)
    return LargeFileResponse(controller.artifacts.open_path(row.digest), media_type="application/octet-stream",
                             filename=f"{name}-dataset.npz")


@api.post("/models/{name}/versions/{version}/bundles", tags=["bundles"], status_code=201)
def build_bundle(name: NamePath, version: VersionPath, body: BundleBuildRequest, response: Response,
                 controller: ControllerDep, session: SessionDep, who: OperatorDep) -> BundleOut:
    """Build, sign and register a bundle of this version on the controller (opt-in: needs
    ``delegated_signing_key_path``, a key the current delegations document delegates, or
    ``release_signing_key_path``, whose public key must be trusted). The body is the bundle
    recipe as JSON (``bundle``, ``target``, ``smoke_test``, ``drift``...; ``bundle.runtime`` must
    be the version's format) and ``data``, the samples for the drift profile and smoke test.
    Synchronous: small models build in well under a second. The same recipe again gives the
    same bytes and returns the stored bundle (200)."""
    signer = controller.bundle_signer(session)
    bundle, created = bundle_builds.build_and_register(
        session, model_name=name, version=version, recipe=body.model_dump(mode="json", exclude={"data"}),
        data=body.data, key=signer.key, delegations=signer.delegations,
        trusted=controller.trusted_release_keys(session),
        artifacts=controller.artifacts, bundles=controller.bundles,
        max_bundle_bytes=controller.settings.max_bundle_bytes, max_dataset_bytes=controller.settings.max_dataset_bytes,
        actor=who.actor, now=controller.now())
    if not created:
        response.status_code = 200
    return BundleOut.model_validate(bundle)
