"""The audit log: who did what to which target, newest first, with filters."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from edgefleet.cloud.api.params import Offset, TextQuery
from edgefleet.cloud.api.schemas import AuditOut
from edgefleet.cloud.deps import OperatorDep, SessionDep
from edgefleet.cloud.services import audit

api = APIRouter(prefix="/api/v1")


@api.get("/audit", tags=["audit"])
def audit_log(session: SessionDep, _: OperatorDep, limit: Annotated[int, Query(ge=1, le=1000)] = 100,
              offset: Offset = 0, action: TextQuery = None, actor: TextQuery = None,
              target: TextQuery = None) -> list[AuditOut]:
    return [AuditOut.model_validate(e) for e in audit.list_entries(session, limit=limit, offset=offset,
                                                                   action=action, actor=actor, target=target)]
