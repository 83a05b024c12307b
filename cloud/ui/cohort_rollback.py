"""Roll a cohort back from the UI (operator or admin): every device of a deployment (the *Roll back
these devices…* link on its page) or of a tag, each to the bundle it ran before. ``GET /ui/rollback``
is the confirmation step -- how many devices go back to which bundle, and which are skipped and why;
nothing is stored -- and ``POST /ui/rollback`` makes the deployments through the same service call as
``POST /api/v1/deployments/{id}/rollback`` and ``POST /api/v1/devices/rollback`` (which write the audit
entries)."""

from __future__ import annotations

import logging
from typing import Annotated
from urllib.parse import quote

from fastapi import APIRouter, Form, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from edgefleet.cloud.deps import ControllerDep, SessionDep
from edgefleet.cloud.services import cohort_rollback
from edgefleet.cloud.ui.csrf import CsrfField
from edgefleet.cloud.ui.render import base_path, forbidden, not_found, render
from edgefleet.cloud.ui.session import posted_by, signed_in, to_login
from edgefleet.cloud.vocabulary import Role
from edgefleet.protocol.errors import ConfigError, ConflictError, EdgeFleetError, NotFoundError

log = logging.getLogger(__name__)

router = APIRouter(include_in_schema=False)

Short = Annotated[str, Form(max_length=200)]


def _cohort(deployment: str, tag: str) -> dict[str, str | None]:
    """The cohort the form or link names: a deployment or a tag (exactly one; the service says so)."""
    return {"deployment_id": deployment.strip() or None, "tag": tag.strip() or None}


def _refused(request: Request, user: object, exc: EdgeFleetError, title: str) -> Response:
    """The service's refusal on a page: 409 when the state does not allow it, else 400 (the request)."""
    status = 409 if isinstance(exc, ConflictError) else 400
    return render(request, "error.html", status_code=status, user=user, title=title, status=status,
                  message=exc.message, where=exc.where, hint=exc.hint)


@router.get("/ui/rollback", response_class=HTMLResponse)
def rollback_confirm(request: Request, session: SessionDep, controller: ControllerDep, deployment: str = "",
                     tag: str = "") -> Response:
    """The confirmation step: the devices grouped by the bundle each goes back to, and those skipped."""
    user = signed_in(request, session)
    if user is None:
        return to_login(request)
    refusal = user.refusal(Role.OPERATOR)
    if refusal is not None:
        return forbidden(request, user, refusal)
    if not deployment.strip() and not tag.strip():
        return render(request, "cohort_rollback.html", user=user, now=controller.now(), plan=None, tag="",
                      deployment="")
    try:
        plan = cohort_rollback.plan_cohort_rollback(session, **_cohort(deployment[:200], tag[:200]))
    except NotFoundError as exc:
        return not_found(request, user, exc)
    except EdgeFleetError as exc:
        return _refused(request, user, exc, "Cannot roll back")
    return render(request, "cohort_rollback.html", user=user, now=controller.now(), plan=plan, tag=tag.strip(),
                  deployment=deployment.strip())


@router.post("/ui/rollback")
def rollback_cohort(request: Request, controller: ControllerDep, deployment: Short = "", tag: Short = "",
                    confirm: Short = "", csrf_token: CsrfField = "") -> Response:
    """Roll the cohort back once confirmed; one deployment per bundle, orders out at once. One deployment
    made: its page; several: the deployments list."""
    user = posted_by(request, controller, csrf_token, "cohort rollback")
    if isinstance(user, Response):
        return user
    if confirm != "yes":
        return _refused(request, user, ConfigError("the rollback was not confirmed", where="confirm",
                                                   hint="check the devices on the confirmation step and press "
                                                        "Roll back"), "Not confirmed")
    try:
        with controller.session() as session:
            done = cohort_rollback.rollback_cohort(session, issuer=controller.issuer, actor=user.actor,
                                                   now=controller.now(),
                                                   timeout_s=controller.settings.deployment_timeout_s,
                                                   **_cohort(deployment, tag))
            made = [d.id for d in done.deployments]
    except NotFoundError as exc:
        return not_found(request, user, exc)
    except EdgeFleetError as exc:
        return _refused(request, user, exc, "Not rolled back")
    log.info("%s rolled back from the UI by %s (%s)", done.plan.cohort, user.actor, ", ".join(made))
    controller.publish_pending()
    where = f"/ui/deployments/{quote(made[0])}" if len(made) == 1 else "/ui/deployments"
    return RedirectResponse(f"{base_path(request)}{where}", status_code=303)
