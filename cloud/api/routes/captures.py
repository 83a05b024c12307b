"""Captured datasets (samples devices uploaded, docs/operations.md): list, show, download, delete.
Raw device inputs: operator role for everything, and every download and deletion is audited."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query
from pydantic import Field

from edgefleet.cloud.api.params import MAX_TIME, RowId
from edgefleet.cloud.api.schemas import CapturedDatasetOut
from edgefleet.cloud.api.transfer import LargeFileResponse
from edgefleet.cloud.deps import ControllerDep, OperatorDep, SessionDep
from edgefleet.cloud.services import captures

api = APIRouter(prefix="/api/v1")


@api.get("/captures", tags=["captures"])
def list_captures(session: SessionDep, _: OperatorDep, *,
                  model: Annotated[str | None, Query(min_length=1, max_length=128,
                                                     description="the registry model")] = None,
                  device_id: Annotated[list[Annotated[str, Field(min_length=1, max_length=64)]],
                                       Query(max_length=1000, default_factory=list, description="repeatable")],
                  since: Annotated[float | None, Query(ge=0, le=MAX_TIME, allow_inf_nan=False,
                                                   description="datasets with samples from then on")] = None,
                  ) -> list[CapturedDatasetOut]:
    return [CapturedDatasetOut.model_validate(d)
            for d in captures.list_captured(session, model_name=model, device_ids=device_id or None, since=since)]


@api.get("/captures/{dataset_id}", tags=["captures"])
def show_capture(dataset_id: RowId, session: SessionDep, _: OperatorDep) -> CapturedDatasetOut:
    return CapturedDatasetOut.model_validate(captures.get_captured(session, dataset_id=dataset_id))


@api.get("/captures/{dataset_id}/download", tags=["captures"], response_class=LargeFileResponse)
def download_capture(dataset_id: RowId, controller: ControllerDep, session: SessionDep,
                     who: OperatorDep) -> LargeFileResponse:
    """The ``.npz`` as the device sealed it (``input:<name>`` arrays, ``label`` -1 = unlabelled, ...)."""
    dataset = captures.get_captured(session, dataset_id=dataset_id)
    captures.record_download(session, dataset=dataset, actor=who.actor, now=controller.now())
    return LargeFileResponse(controller.captures.open_path(dataset.blob_digest), media_type="application/octet-stream",
                             filename=f"capture-{dataset.id}-{dataset.device_id}.npz")


@api.delete("/captures/{dataset_id}", tags=["captures"], status_code=204)
def delete_capture(dataset_id: RowId, controller: ControllerDep, session: SessionDep, who: OperatorDep) -> None:
    """Delete the dataset and its file."""
    captures.delete_captured(session, dataset_id=dataset_id, store=controller.captures, actor=who.actor,
                             now=controller.now())
