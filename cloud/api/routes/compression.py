"""Compression jobs: compress a model version into a registered variant, off the request path."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, BackgroundTasks, Query

from edgefleet.cloud.api.params import NamePath, RowId, VersionPath
from edgefleet.cloud.api.schemas import CompressionJobCreate, CompressionJobOut
from edgefleet.cloud.deps import ControllerDep, OperatorDep, SessionDep, ViewerDep
from edgefleet.cloud.services import compression_jobs
from edgefleet.cloud.vocabulary import JobState

api = APIRouter(prefix="/api/v1")


@api.post("/models/{name}/versions/{version}/compress", tags=["compression"], status_code=202)
def create_compression_job(name: NamePath, version: VersionPath, body: CompressionJobCreate,
                           background: BackgroundTasks, controller: ControllerDep, session: SessionDep,
                           who: OperatorDep) -> CompressionJobOut:
    """Queue a job that compresses this version (which needs its model file) and registers the
    result as the ``compressed`` version ``variant`` (parent: this version). The config is checked
    now; follow the job with ``GET /compression-jobs/{id}``. A result refused by the accuracy gate
    ends the job ``failed`` with ``accuracy_gate_failed`` and its report; nothing is registered."""
    job = compression_jobs.create_job(session, model_name=name, version=version, variant=body.variant,
                                      runtime=body.runtime, config=body.config, data=body.data, actor=who.actor,
                                      now=controller.now())
    background.add_task(controller.wake_jobs)   # after the commit, so the worker finds the job
    return CompressionJobOut.model_validate(job)


@api.get("/compression-jobs", tags=["compression"])
def list_compression_jobs(session: SessionDep, _: ViewerDep,
                          model: Annotated[str | None, Query(max_length=128)] = None,
                          state: JobState | None = None,
                          limit: Annotated[int, Query(gt=0, le=1000)] = 100) -> list[CompressionJobOut]:
    return [CompressionJobOut.model_validate(j)
            for j in compression_jobs.list_jobs(session, model_name=model, state=state, limit=limit)]


@api.get("/compression-jobs/{job_id}", tags=["compression"])
def show_compression_job(job_id: RowId, session: SessionDep, _: ViewerDep) -> CompressionJobOut:
    return CompressionJobOut.model_validate(compression_jobs.get_job(session, job_id=job_id))
