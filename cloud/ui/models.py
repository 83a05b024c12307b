"""The model registry in the UI: ``/ui/models`` (every model, its versions and bundles counted) and
``/ui/models/{name}`` (the lineage tree model version -> compressed variants -> bundles, every version
with its compression report as tables, and the model's compression jobs with their state), for any
signed-in role. ``POST /ui/models/{name}/compress`` (operator or admin, confirmed, CSRF-checked) queues a
compression job through the same service call as ``POST /api/v1/models/{name}/versions/{version}/compress``
(which writes the audit entry); the controller's worker runs it and the page shows the job and, once it
succeeded, the variant with its report."""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import APIRouter, Form, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from sqlmodel import Session

from edgefleet.cloud.deps import ControllerDep, SessionDep
from edgefleet.cloud.services import compression_jobs, devices, model_recipes, registry
from edgefleet.cloud.services.auth import Principal
from edgefleet.cloud.store.tables import Model, ModelVersion
from edgefleet.cloud.ui.csrf import CsrfField
from edgefleet.cloud.ui.render import base_path, not_found, render
from edgefleet.cloud.ui.report_view import report_view
from edgefleet.cloud.ui.session import posted_by, signed_in, to_login
from edgefleet.cloud.vocabulary import DataSource, ModelKind, Role
from edgefleet.compression import CompressionConfig
from edgefleet.compression.modes import Mode
from edgefleet.protocol.errors import ConfigError, ConflictError, EdgeFleetError, NotFoundError
from edgefleet.protocol.vocabulary import Runtime

log = logging.getLogger(__name__)

router = APIRouter(include_in_schema=False)

Short = Annotated[str, Form(max_length=200)]
RECIPE = "recipe"
"""The mode choice that takes the whole ``[compression]`` table of the model's stored recipe."""
VARIANT = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]{0,63}$")
"""A variant version string, as the REST API's ``variant`` field takes it."""
JOBS_SHOWN = 20


@dataclass(frozen=True)
class TreeCounts:
    versions: int
    compressed: int
    bundles: int


def count_tree(nodes: list[dict[str, Any]]) -> TreeCounts:
    """Versions, compressed variants and bundles in a lineage forest (:func:`registry.lineage`)."""
    versions = compressed = bundles = 0
    stack = list(nodes)
    while stack:
        node = stack.pop()
        versions += 1
        compressed += node["kind"] == ModelKind.COMPRESSED
        bundles += len(node["bundles"])
        stack.extend(node["children"])
    return TreeCounts(versions, compressed, bundles)


def _installed_counts(session: SessionDep) -> dict[str, int]:
    counts: dict[str, int] = {}
    for d in devices.list_devices(session):
        digest = (d.installed or {}).get("digest")
        if digest:
            counts[digest] = counts.get(digest, 0) + 1
    return counts


@router.get("/ui/models", response_class=HTMLResponse)
def model_list(request: Request, session: SessionDep, controller: ControllerDep) -> Response:
    user = signed_in(request, session)
    if user is None:
        return to_login(request)
    rows: list[tuple[Model, TreeCounts, list[ModelVersion]]] = []
    for model in registry.list_models(session):
        versions = registry.list_model_versions(session, model_name=model.name)
        rows.append((model, count_tree(registry.lineage(session, model_name=model.name)), versions[-3:][::-1]))
    return render(request, "models.html", user=user, now=controller.now(), rows=rows)


def _recipe_config(session: Session, name: str) -> CompressionConfig | None:
    recipe = model_recipes.find_recipe(session, model_name=name)
    return recipe.compression if recipe is not None else None


def _model_page(request: Request, session: Session, controller: ControllerDep, user: Principal, model: Model, *,
                problem: EdgeFleetError | None = None, form: dict[str, str] | None = None,
                status_code: int = 200) -> Response:
    name = model.name
    versions = registry.list_model_versions(session, model_name=name)
    by_id = {v.id: v for v in versions}
    tree = registry.lineage(session, model_name=name)
    reports = {v.version: report_view(v.report) for v in versions}
    jobs = compression_jobs.list_jobs(session, model_name=name, limit=JOBS_SHOWN)
    sources = [v.version for v in versions if v.artifact_digest is not None]
    recipe = _recipe_config(session, name)
    return render(request, "model.html", status_code=status_code, user=user, now=controller.now(), model=model,
                  versions=versions,
                  parents={v.id: by_id[v.parent_id].version for v in versions if v.parent_id in by_id},
                  tree=tree, counts=count_tree(tree), reports=reports, installed=_installed_counts(session),
                  jobs=jobs, job_reports={j.id: report_view(j.report) for j in jobs if j.report},
                  variants={v.id: v.version for v in versions}, sources=sources,
                  modes=([RECIPE] if recipe is not None else []) + list(Mode), runtimes=list(Runtime),
                  data_sources=list(DataSource), can_compress=user.refusal(Role.OPERATOR) is None,
                  problem=problem, form=form or {"version": sources[-1] if sources else "", "variant": "",
                                                 "mode": RECIPE if recipe is not None else Mode.DYNAMIC_INT8,
                                                 "runtime": Runtime.ONNX, "data": DataSource.DIGITS})


@router.get("/ui/models/{name}", response_class=HTMLResponse)
def model_detail(request: Request, name: str, session: SessionDep, controller: ControllerDep) -> Response:
    user = signed_in(request, session)
    if user is None:
        return to_login(request)
    try:
        model = registry.get_model(session, name=name)
    except NotFoundError as exc:
        return not_found(request, user, exc)
    return _model_page(request, session, controller, user, model)


def _job_config(session: Session, name: str, mode: str) -> CompressionConfig:
    """The config the form's mode choice names: the stored recipe's table, or the defaults with that mode."""
    if mode == RECIPE:
        recipe = _recipe_config(session, name)
        if recipe is None:
            raise ConflictError(f"model {name!r} has no stored recipe with a [compression] table", where="mode",
                                hint=f"choose a mode, or store a recipe: PUT /api/v1/models/{name}/recipe")
        return recipe
    if mode not in set(Mode):
        raise ConfigError(f"unknown mode {mode[:30]!r}", where="mode", hint=f"one of {', '.join(Mode)}")
    return CompressionConfig(mode=Mode(mode))


@router.post("/ui/models/{name}/compress", response_class=HTMLResponse)
def compress_version(request: Request, name: str, controller: ControllerDep, version: Short = "",
                     variant: Short = "", mode: Short = "", runtime: Short = "", data: Short = "",
                     confirm: Short = "", csrf_token: CsrfField = "") -> Response:
    """Queue a compression job of ``version`` into the compressed ``variant`` and wake the worker."""
    form = {"version": version, "variant": variant.strip(), "mode": mode, "runtime": runtime, "data": data}
    user = posted_by(request, controller, csrf_token, f"compression of {name}")
    if isinstance(user, Response):
        return user
    with controller.session() as session:
        try:
            model = registry.get_model(session, name=name)
        except NotFoundError as exc:
            return not_found(request, user, exc)
    try:
        if confirm != "yes":
            raise ConfigError("the compression job was not confirmed", where="confirm",
                              hint="tick the confirmation box")
        if not VARIANT.fullmatch(form["variant"]):
            raise ConfigError(f"{form['variant'][:64]!r} is not a version string", where="variant",
                              hint="letters, digits and . _ + - (up to 64), e.g. 1.0.0-int8")
        if runtime not in set(Runtime) or data not in set(DataSource):
            raise ConfigError(f"runtime {runtime[:20]!r} / data {data[:20]!r} unknown", where="runtime",
                              hint=f"runtime: {', '.join(Runtime)}; data: {', '.join(DataSource)}")
        with controller.session() as session:
            job = compression_jobs.create_job(session, model_name=name, version=version, variant=form["variant"],
                                              runtime=Runtime(runtime), config=_job_config(session, name, mode),
                                              data=DataSource(data), actor=user.actor, now=controller.now())
            job_id = job.id
    except EdgeFleetError as exc:
        with controller.session() as session:
            return _model_page(request, session, controller, user, model, problem=exc, form=form,
                               status_code=409 if isinstance(exc, ConflictError) else 400)
    controller.wake_jobs()   # after the commit, so the worker finds the job
    log.info("compression job %s (%s@%s -> %s) queued from the UI by %s", job_id, name, version, form["variant"],
             user.actor)
    return RedirectResponse(f"{base_path(request)}/ui/models/{name}#job-{job_id}", status_code=303)
