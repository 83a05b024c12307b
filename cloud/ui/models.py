"""The model registry in the UI: ``/ui/models`` (every model, its versions and bundles counted) and
``/ui/models/{name}`` (the lineage tree model version -> compressed variants -> bundles, every version
with its compression report as tables). Read-only, any signed-in role."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, Response

from edgefleet.cloud.deps import ControllerDep, SessionDep
from edgefleet.cloud.services import devices, registry
from edgefleet.cloud.store.tables import Model, ModelVersion
from edgefleet.cloud.ui.render import not_found, render
from edgefleet.cloud.ui.report_view import report_view
from edgefleet.cloud.ui.session import signed_in, to_login
from edgefleet.cloud.vocabulary import ModelKind
from edgefleet.protocol.errors import NotFoundError

router = APIRouter(include_in_schema=False)


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


@router.get("/ui/models/{name}", response_class=HTMLResponse)
def model_detail(request: Request, name: str, session: SessionDep, controller: ControllerDep) -> Response:
    user = signed_in(request, session)
    if user is None:
        return to_login(request)
    try:
        model = registry.get_model(session, name=name)
    except NotFoundError as exc:
        return not_found(request, user, exc)
    versions = registry.list_model_versions(session, model_name=name)
    by_id = {v.id: v for v in versions}
    tree = registry.lineage(session, model_name=name)
    reports = {v.version: report_view(v.report) for v in versions}
    return render(request, "model.html", user=user, now=controller.now(), model=model, versions=versions,
                  parents={v.id: by_id[v.parent_id].version for v in versions if v.parent_id in by_id},
                  tree=tree, counts=count_tree(tree), reports=reports, installed=_installed_counts(session))
