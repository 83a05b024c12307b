"""Retraining (docs/retraining.md): a model's recipe, and jobs that retrain a version on its reference
data and the captured samples, then register, compress and bundle the result, off the request path."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, BackgroundTasks, Query, Request
from starlette.concurrency import run_in_threadpool

from edgefleet.cloud.api.params import NamePath, RowId
from edgefleet.cloud.api.schemas import RecipeOut, RetrainingJobOut, RetrainRequest
from edgefleet.cloud.deps import ControllerDep, OperatorDep, SessionDep, ViewerDep
from edgefleet.cloud.services import model_recipes, retraining
from edgefleet.cloud.vocabulary import RetrainState

api = APIRouter(prefix="/api/v1")

RECIPE_BODY = {"requestBody": {"required": True, "content": {
    "application/toml": {"schema": {"type": "string"}},
    "application/json": {"schema": {"type": "object"}}}}}


@api.get("/models/{name}/recipe", tags=["retraining"])
def show_recipe(name: NamePath, session: SessionDep, _: ViewerDep) -> RecipeOut:
    row = model_recipes.get_recipe_row(session, model_name=name)
    return RecipeOut(model=name, recipe=row.recipe, updated_at=row.updated_at, updated_by=row.updated_by)


@api.put("/models/{name}/recipe", tags=["retraining"], openapi_extra=RECIPE_BODY)
async def set_recipe(name: NamePath, request: Request, controller: ControllerDep, session: SessionDep,
                     who: OperatorDep) -> RecipeOut:
    """Store the model's recipe: TOML (the file format of ``firmware-bundles/``) or JSON with the same
    tables — ``[training]`` (entry point, limits, ``auto``), ``[compression]`` and the bundle tables.
    Every table is validated; an error (``invalid_recipe``) names the key and nothing is stored."""
    document = model_recipes.decode(await request.body(), content_type=request.headers.get("content-type"))
    row = await run_in_threadpool(lambda: model_recipes.set_recipe(   # off the event loop (see transfer.py)
        session, model_name=name, document=document, actor=who.actor, now=controller.now()))
    return RecipeOut(model=name, recipe=row.recipe, updated_at=row.updated_at, updated_by=row.updated_by)


@api.post("/models/{name}/retrain", tags=["retraining"], status_code=202)
def retrain(name: NamePath, body: RetrainRequest, background: BackgroundTasks, controller: ControllerDep,
            session: SessionDep, who: OperatorDep) -> RetrainingJobOut:
    """Queue a retraining job of ``parent`` (default: the newest source version with a model file). What
    it needs is checked now: the recipe's tables, the model file, the reference dataset, a signing key
    (409 otherwise). Follow it with ``GET /retraining-jobs/{id}``: ``phase`` and ``timings`` grow as it runs."""
    controller.bundle_signer(session)
    job = retraining.create_job(session, model_name=name, parent_version=body.parent, incident_id=body.incident_id,
                                note=body.note, actor=who.actor, now=controller.now())
    background.add_task(controller.wake_jobs)   # after the commit, so the worker finds the job
    return RetrainingJobOut.model_validate(job)


@api.get("/retraining-jobs", tags=["retraining"])
def list_retraining_jobs(session: SessionDep, _: ViewerDep,
                         model: Annotated[str | None, Query(max_length=128)] = None,
                         state: RetrainState | None = None,
                         limit: Annotated[int, Query(gt=0, le=1000)] = 100) -> list[RetrainingJobOut]:
    return [RetrainingJobOut.model_validate(j)
            for j in retraining.list_jobs(session, model_name=model, state=state, limit=limit)]


@api.get("/retraining-jobs/{job_id}", tags=["retraining"])
def show_retraining_job(job_id: RowId, session: SessionDep, _: ViewerDep) -> RetrainingJobOut:
    return RetrainingJobOut.model_validate(retraining.get_job(session, job_id=job_id))
