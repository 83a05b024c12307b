"""The device list, ``/ui/devices``: search and filters (id substring, tag, installed bundle, update state,
drift level of the overview's span, online), sorting and paging -- all in SQL (:mod:`device_search`), so it
holds at 10 000 devices. The filter state lives in the URL (a GET form), so links, paging and the live
refresh keep it.

Bulk actions (operators and admins): a checkbox per row or "all N matching the filters"; add or remove a
tag (a confirmation step, then one ``devices.bulk_tags`` audit entry) or deploy to the selection (the deploy
form, ``/ui/deploy``, with the selection as its target: the tag when the filter is just a tag, else the
device ids). Viewers see no checkboxes, and their posts are refused (403)."""

from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass
from typing import Annotated, Any
from urllib.parse import urlencode

from fastapi import APIRouter, Form, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from edgefleet.cloud.deps import ControllerDep, SessionDep
from edgefleet.cloud.services import device_search, live_marks
from edgefleet.cloud.services.auth import Principal
from edgefleet.cloud.services.device_search import DeviceQuery, DeviceSort
from edgefleet.cloud.ui.csrf import CsrfField
from edgefleet.cloud.ui.device_actions import split_words
from edgefleet.cloud.ui.render import base_path, render
from edgefleet.cloud.ui.session import posted_by, signed_in, to_login
from edgefleet.cloud.vocabulary import Role
from edgefleet.protocol.errors import EdgeFleetError, InvalidRequestError, NotFoundError

log = logging.getLogger(__name__)

router = APIRouter(include_in_schema=False)

PAGE_SIZES = (25, 50, 100, 200)
DEFAULT_PAGE_SIZE = 50
MAX_PAGE = 100_000
MAX_SELECTED = 1000
"""Device ids a bulk post may name one by one (a page holds at most 200; more: "all matching")."""
DEPLOY_URL_IDS = 6000
"""Characters of device ids the deploy form is handed in its URL; a larger selection is refused with a hint
to tag it first (and deploy to the tag)."""
BULK_ACTIONS = {"add_tag": "Add tag", "remove_tag": "Remove tag", "deploy": "Deploy"}
Text = Annotated[str, Query(max_length=200)]
Short = Annotated[str, Form(max_length=200)]
DESC_FIRST = {DeviceSort.LAST_SEEN, DeviceSort.DRIFT}
"""Columns whose first click sorts descending (newest seen, worst drift first)."""


@dataclass(frozen=True)
class ListState:
    """What the URL says (as typed: a bad value is shown back next to its field)."""

    q: str = ""
    tag: str = ""
    bundle: str = ""
    update: str = ""
    drift: str = ""
    online: str = ""
    sort: str = DeviceSort.ID
    dir: str = "asc"
    size: int = DEFAULT_PAGE_SIZE

    def query(self, **changes: Any) -> str:
        """The query string of this state with ``changes`` (defaults left out)."""
        merged = {**asdict(self), **changes}
        defaults = asdict(ListState())
        return urlencode({k: v for k, v in merged.items() if v not in ("", None) and v != defaults.get(k)})

    def filters_only(self) -> dict[str, str]:
        return {k: v for k, v in asdict(self).items() if k in FILTER_KEYS and v}

    def spec(self) -> DeviceQuery:
        """The query these parameters ask for; :class:`InvalidRequestError` (``where`` = the parameter)."""
        if self.online not in ("", "yes", "no"):
            raise InvalidRequestError(f"{self.online[:40]!r} is not yes or no", where="online",
                                      hint="use online=yes, online=no, or leave it out")
        if self.sort not in set(DeviceSort):
            raise InvalidRequestError(f"{self.sort[:40]!r} is not a column to sort by", where="sort",
                                      hint=f"use one of {', '.join(DeviceSort)}")
        if self.dir not in ("asc", "desc"):
            raise InvalidRequestError(f"{self.dir[:40]!r} is not a direction", where="dir", hint="use asc or desc")
        if self.size not in PAGE_SIZES:
            raise InvalidRequestError(f"{self.size} is not a page size", where="size",
                                      hint=f"use one of {', '.join(map(str, PAGE_SIZES))}")
        try:
            return DeviceQuery(text=self.q, tag=self.tag, bundle=self.bundle, update_state=self.update,
                               drift=self.drift, online={"yes": True, "no": False}.get(self.online),
                               sort=DeviceSort(self.sort), descending=self.dir == "desc")
        except InvalidRequestError as exc:
            where = {"update_state": "update", "text": "q"}.get(exc.where or "", exc.where)
            raise InvalidRequestError(exc.message, where=where, hint=exc.hint) from None

    def sort_link(self, column: str) -> str:
        """The query that sorts by ``column``: the other direction when it is the current sort."""
        if self.sort == column:
            return self.query(dir="asc" if self.dir == "desc" else "desc", page=None)
        return self.query(sort=column, dir="desc" if column in DESC_FIRST else "asc")

    def aria_sort(self, column: str) -> str:
        if self.sort != column:
            return "none"
        return "descending" if self.dir == "desc" else "ascending"


FILTER_KEYS = ("q", "tag", "bundle", "update", "drift", "online")


def grouped(n: int) -> str:
    """``10 000``: thousands apart by a narrow no-break space, as people read them."""
    return f"{n:,}".replace(",", "\u202f")


def page_links(page: int, pages: int) -> list[int | None]:
    """The pages to link: first, last and two around the current one; ``None`` is a gap."""
    wanted = sorted({1, pages, *range(max(1, page - 2), min(pages, page + 2) + 1)})
    out: list[int | None] = []
    for p in wanted:
        if out and p - (out[-1] or 0) > 1:
            out.append(None)
        out.append(p)
    return out


@router.get("/ui/devices", response_class=HTMLResponse)
def device_list(request: Request, session: SessionDep, controller: ControllerDep, q: Text = "", tag: Text = "",
                bundle: Text = "", update: Text = "", drift: Text = "", online: Text = "",
                sort: Text = DeviceSort.ID, dir: Text = "asc", size: Annotated[int, Query(ge=1, le=1000)] = 50,
                page: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 1, done: Text = "", n: int = 0,
                value: Text = "") -> Response:
    user = signed_in(request, session)
    if user is None:
        return to_login(request)
    now = controller.now()
    state = ListState(q.strip(), tag.strip(), bundle.strip(), update.strip(), drift.strip(), online.strip(),
                      sort.strip(), dir.strip(), size)
    mark = live_marks.fleet_mark(session)   # before reading: the page is at least as new as its mark
    found_facets = device_search.facets(session)
    context: dict[str, Any] = {
        "user": user, "now": now, "state": state, "can_act": user.refusal(Role.OPERATOR) is None,
        "facets": found_facets, "page_sizes": PAGE_SIZES,
        "states": device_search.STATE_CHOICES, "drift_levels": device_search.DRIFT_CHOICES,
        "drift_span": controller.settings.ui_drift_span_s, "actions": BULK_ACTIONS, "grouped": grouped,
        "notice": _notice(done, n, value)}
    try:
        spec = state.spec()
    except InvalidRequestError as exc:
        return render(request, "devices.html", status_code=422, error=exc, rows=[], total=0, page=1, pages=1,
                      first=0, links=[], **context)
    since = now - controller.settings.ui_drift_span_s
    found = device_search.search(session, spec, since=since, offset=(page - 1) * state.size, limit=state.size)
    pages = max(1, math.ceil(found.total / state.size))
    page = found.offset // state.size + 1
    return render(request, "devices.html", refresh=10, live_version=mark, error=None, rows=found.rows,
                  total=found.total, page=page, pages=pages, first=found.offset, links=page_links(page, pages),
                  **context)


def _notice(done: str, n: int, value: str) -> str:
    """The line a finished bulk action leaves on the list (fixed words; the tag is escaped by the template)."""
    if done == "add_tag":
        return f"Added tag {value} to {grouped(n)} device{'s' * (n != 1)}."
    if done == "remove_tag":
        return f"Removed tag {value} from {grouped(n)} device{'s' * (n != 1)}."
    return ""


def _refused(request: Request, user: Principal, exc: EdgeFleetError, status: int) -> Response:
    return render(request, "error.html", status_code=status, user=user, title="Nothing was changed", status=status,
                  message=exc.message, where=exc.where, hint=exc.hint)


@router.post("/ui/devices/bulk", response_class=HTMLResponse)
def bulk(request: Request, controller: ControllerDep, action: Short = "", tags: Short = "",
         id: Annotated[list[str], Form(max_length=MAX_SELECTED)] = [],  # noqa: B006 (FastAPI reads it)
         all_matching: Short = "", confirm: Short = "", q: Short = "", tag: Short = "", bundle: Short = "",
         update: Short = "", drift: Short = "", online: Short = "", csrf_token: CsrfField = "") -> Response:
    """A bulk action on the selection: without ``confirm=yes`` the confirmation page (nothing changes);
    with it the change, then back to the list. ``deploy`` goes to the deploy form (its own confirmation)."""
    user = posted_by(request, controller, csrf_token, "bulk device action")
    if isinstance(user, Response):
        return user
    state = ListState(q.strip(), tag.strip(), bundle.strip(), update.strip(), drift.strip(), online.strip())
    every = all_matching == "yes"
    now = controller.now()
    try:
        if action not in BULK_ACTIONS:
            raise InvalidRequestError(f"{action[:40]!r} is not a bulk action", where="action",
                                      hint=f"choose one of {', '.join(BULK_ACTIONS.values())}")
        spec = state.spec()
        words = split_words(tags)
        if action != "deploy" and not words:
            raise InvalidRequestError("no tag given", where="tags", hint="type the tag to add or remove")
        with controller.session() as session:
            if every:
                ids = device_search.matching_ids(session, spec, since=now - controller.settings.ui_drift_span_s)
            else:
                ids = device_search.existing_ids(session, [i.strip() for i in id if i.strip()])
        if not ids:
            raise InvalidRequestError("no device is selected", where="id",
                                      hint="tick the devices (or \"all matching\") first")
        if action == "deploy":
            return _to_deploy(request, state, spec, ids, every)
        if confirm != "yes":
            return render(request, "devices_bulk.html", user=user, now=now, action=action,
                          label=BULK_ACTIONS[action], tags=words, ids=ids, every=every, state=state,
                          grouped=grouped, shown=ids[:50])
        with controller.session() as session:
            result = device_search.bulk_tags(
                session, device_ids=ids, actor=user.actor, now=now,
                add=words if action == "add_tag" else (), remove=words if action == "remove_tag" else (),
                selection={"all_matching": state.filters_only()} if every else None)
            session.commit()
    except NotFoundError as exc:
        return _refused(request, user, exc, 404)
    except EdgeFleetError as exc:
        return _refused(request, user, exc, 400)
    log.info("bulk %s %s on %d devices (%d changed) from the UI by %s", action, words, result.selected,
             len(result.changed), user.actor)
    back = state.query(done=action, n=len(result.changed), value=" ".join(words))
    return RedirectResponse(f"{base_path(request)}/ui/devices?{back}", status_code=303)


def _to_deploy(request: Request, state: ListState, spec: DeviceQuery, ids: list[str], every: bool) -> Response:
    """The deploy form with the selection as its target (deploy has its own confirmation step)."""
    if every and spec.only_tag():
        target = {"tag": spec.tag}
    else:
        listed = " ".join(ids)
        if len(listed) > DEPLOY_URL_IDS:
            raise InvalidRequestError(
                f"{grouped(len(ids))} devices are too many to deploy to as a list", where="id",
                hint="add a tag to them (Add tag), then deploy to that tag")
        target = {"device_ids": listed}
    return RedirectResponse(f"{base_path(request)}/ui/deploy?{urlencode(target)}", status_code=303)
