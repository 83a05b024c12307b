"""The audit log in the UI: ``/ui/audit``, newest first, filtered by actor, action (a prefix such as
``rollout.``), target and time (UTC), paged on the server (:data:`PAGE_SIZE` entries a page). Operators
and admins only, as ``GET /api/v1/audit``. A filter that cannot be read is shown next to its field
(422) and nothing is queried."""

from __future__ import annotations

import calendar
import time
from dataclasses import dataclass
from typing import Annotated, Any
from urllib.parse import urlencode

from fastapi import APIRouter, Query, Request
from fastapi.responses import HTMLResponse, Response

from edgefleet.cloud.deps import ControllerDep, SessionDep
from edgefleet.cloud.services import audit
from edgefleet.cloud.ui.render import forbidden, render
from edgefleet.cloud.ui.session import signed_in, to_login
from edgefleet.cloud.vocabulary import Role
from edgefleet.protocol.errors import InvalidRequestError

router = APIRouter(include_in_schema=False)

PAGE_SIZE = 50
MAX_PAGE = 100_000
TIME_FORMATS = ("%Y-%m-%dT%H:%M:%S", "%Y-%m-%dT%H:%M", "%Y-%m-%d %H:%M:%S", "%Y-%m-%d %H:%M", "%Y-%m-%d")
Text = Annotated[str, Query(max_length=200)]


def parse_utc(text: str, *, where: str) -> float | None:
    """``2026-12-03``, ``2026-12-03 14:05`` or ``2026-12-03T14:05:30`` (UTC) as Unix seconds; ``""``: none."""
    text = text.strip()
    if not text:
        return None
    for fmt in TIME_FORMATS:
        try:
            return float(calendar.timegm(time.strptime(text, fmt)))
        except ValueError:
            continue
    raise InvalidRequestError(f"{text!r} is not a date and time", where=where,
                              hint="write it as YYYY-MM-DD or YYYY-MM-DD HH:MM (UTC)")


@dataclass(frozen=True)
class Filters:
    actor: str = ""
    action: str = ""
    target: str = ""
    since: str = ""
    until: str = ""

    def query(self, **extra: int) -> str:
        """The query string of these filters (empty ones left out) and ``extra``."""
        pairs = {k: v for k, v in vars(self).items() if v}
        return urlencode({**pairs, **extra})


@router.get("/ui/audit", response_class=HTMLResponse)
def audit_page(request: Request, session: SessionDep, controller: ControllerDep, actor: Text = "",
               action: Text = "", target: Text = "", since: Text = "", until: Text = "",
               page: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 1) -> Response:
    user = signed_in(request, session)
    if user is None:
        return to_login(request)
    refusal = user.refusal(Role.OPERATOR)
    if refusal is not None:
        return forbidden(request, user, refusal, hint="sign in with an operator or admin token")
    filters = Filters(actor.strip(), action.strip(), target.strip(), since.strip(), until.strip())
    context: dict[str, Any] = {"user": user, "now": controller.now(), "filters": filters, "page": page,
                               "page_size": PAGE_SIZE, "actions": audit.list_actions(session), "Filters": Filters}
    try:
        start = parse_utc(filters.since, where="since")
        end = parse_utc(filters.until, where="until")
    except InvalidRequestError as exc:
        return render(request, "audit.html", status_code=422, error=exc, entries=[], more=False, **context)
    found = audit.list_entries(session, limit=PAGE_SIZE + 1, offset=(page - 1) * PAGE_SIZE,
                               actor=filters.actor or None, action=filters.action or None,
                               target=filters.target or None, since=start, until=end)
    return render(request, "audit.html", error=None, entries=found[:PAGE_SIZE], more=len(found) > PAGE_SIZE,
                  **context)
