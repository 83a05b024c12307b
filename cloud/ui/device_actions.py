"""Device actions from the UI (operator or admin), each behind a confirmation step and through the same
service calls as the REST API (which write the audit entries): edit a device's tags
(``PATCH /api/v1/devices/{id}``), decommission it (``POST .../decommission``: its API token and MQTT
password are revoked, and its client is disabled on a broker the controller manages), and one-time
enrollment tokens (``/api/v1/enrollment-tokens``: create -- shown once, with a copy button --, list, revoke),
and roll a device back to the bundle it ran before (``POST .../rollback``)."""

from __future__ import annotations

import logging
from typing import Annotated
from urllib.parse import quote

from fastapi import APIRouter, Form, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from edgefleet.cloud.deps import ControllerDep, SessionDep
from edgefleet.cloud.services import deployments, devices
from edgefleet.cloud.services.auth import Principal
from edgefleet.cloud.ui.csrf import CsrfField
from edgefleet.cloud.ui.render import base_path, forbidden, not_found, render
from edgefleet.cloud.ui.session import posted_by, signed_in, to_login
from edgefleet.cloud.vocabulary import Role
from edgefleet.protocol.errors import ConfigError, EdgeFleetError, NotFoundError

log = logging.getLogger(__name__)

router = APIRouter(include_in_schema=False)

Short = Annotated[str, Form(max_length=200)]
Long = Annotated[str, Form(max_length=4000)]
MAX_TOKEN_HOURS = 24 * 30


def split_words(text: str) -> list[str]:
    """Tags typed into a form, separated by commas or white space, in order, once each."""
    return list(dict.fromkeys(w for w in text.replace(",", " ").split() if w))


def hours(text: str, *, where: str) -> float:
    """A token lifetime typed in hours (1 to :data:`MAX_TOKEN_HOURS`), in seconds."""
    try:
        value = float(text)
    except ValueError:
        raise ConfigError(f"{text[:20]!r} is not a number of hours", where=where) from None
    if not 1 <= value <= MAX_TOKEN_HOURS:
        raise ConfigError(f"{value:g} hours is out of range", where=where, hint=f"give 1 to {MAX_TOKEN_HOURS} hours")
    return value * 3600.0


def _to_device(request: Request, device_id: str) -> Response:
    return RedirectResponse(f"{base_path(request)}/ui/devices/{quote(device_id)}", status_code=303)


@router.post("/ui/devices/{device_id}/tags")
def edit_tags(request: Request, device_id: str, controller: ControllerDep, tags: Long = "",
              csrf_token: CsrfField = "") -> Response:
    """Replace the device's tags with those typed (the form shows the current ones)."""
    user = posted_by(request, controller, csrf_token, f"tags of {device_id}")
    if isinstance(user, Response):
        return user
    try:
        with controller.session() as session:
            devices.update_tags(session, device_id=device_id, actor=user.actor, now=controller.now(),
                                tags=split_words(tags))
    except NotFoundError as exc:
        return not_found(request, user, exc)
    log.info("tags of %s set from the UI by %s", device_id, user.actor)
    return _to_device(request, device_id)


@router.post("/ui/devices/{device_id}/decommission")
def decommission(request: Request, device_id: str, controller: ControllerDep, confirm: Short = "",
                 csrf_token: CsrfField = "") -> Response:
    """Decommission once the device id is typed again (the confirmation): credentials revoked."""
    user = posted_by(request, controller, csrf_token, f"decommission of {device_id}")
    if isinstance(user, Response):
        return user
    if confirm.strip() != device_id:
        return render(request, "error.html", status_code=400, user=user, title="Not confirmed", status=400,
                      message=f"type the device id {device_id!r} to confirm its decommissioning",
                      where="confirm", hint="nothing was changed")
    try:
        with controller.session() as session:
            devices.decommission(session, device_id=device_id, actor=user.actor, now=controller.now(),
                                 broker=controller.broker_identity)
    except NotFoundError as exc:
        return not_found(request, user, exc)
    log.info("device %s decommissioned from the UI by %s", device_id, user.actor)
    return _to_device(request, device_id)


def _tokens_page(request: Request, session: SessionDep, controller: ControllerDep, user: Principal, *,
                 created: str | None = None, problem: EdgeFleetError | None = None, status_code: int = 200,
                 form: dict[str, str] | None = None) -> Response:
    return render(request, "enrollment.html", status_code=status_code, user=user, now=controller.now(),
                  tokens=devices.list_enrollment_tokens(session, include_used=True), created=created,
                  problem=problem, form=form or {"device_id": "", "tags": "", "hours": "24"})


@router.get("/ui/enrollment", response_class=HTMLResponse)
def enrollment_tokens(request: Request, session: SessionDep, controller: ControllerDep) -> Response:
    user = signed_in(request, session)
    if user is None:
        return to_login(request)
    refusal = user.refusal(Role.OPERATOR)
    if refusal is not None:
        return forbidden(request, user, refusal)
    return _tokens_page(request, session, controller, user)


@router.post("/ui/enrollment", response_class=HTMLResponse)
def create_enrollment_token(request: Request, controller: ControllerDep, device_id: Short = "", tags: Long = "",
                            hours_valid: Annotated[str, Form(max_length=20, alias="hours")] = "24",
                            confirm: Short = "", csrf_token: CsrfField = "") -> Response:
    """A one-time token, shown on the page this once (only its hash is kept)."""
    user = posted_by(request, controller, csrf_token, "enrollment token")
    if isinstance(user, Response):
        return user
    form = {"device_id": device_id.strip(), "tags": tags, "hours": hours_valid}
    try:
        if confirm != "yes":
            raise ConfigError("the token was not confirmed", where="confirm", hint="tick the confirmation box")
        lifetime = hours(hours_valid, where="hours")
        controller.check_device_id(form["device_id"] or None)
        with controller.session() as session:
            _, secret = devices.create_enrollment_token(session, actor=user.actor, now=controller.now(),
                                                        lifetime_s=lifetime, device_id=form["device_id"] or None,
                                                        tags=split_words(tags))
    except EdgeFleetError as exc:
        with controller.session() as session:
            return _tokens_page(request, session, controller, user, problem=exc, status_code=400, form=form)
    log.info("enrollment token created from the UI by %s", user.actor)
    with controller.session() as session:
        return _tokens_page(request, session, controller, user, created=secret)


@router.post("/ui/devices/{device_id}/rollback")
def rollback(request: Request, device_id: str, controller: ControllerDep, csrf_token: CsrfField = "") -> Response:
    """Deploy the bundle the device ran before to it (``POST /api/v1/devices/{id}/rollback``), then show
    that deployment; a device that never ran another bundle gets the refusal on a page."""
    user = posted_by(request, controller, csrf_token, f"rollback of {device_id}")
    if isinstance(user, Response):
        return user
    try:
        with controller.session() as session:
            deployment = deployments.rollback_device(session, device_id=device_id, issuer=controller.issuer,
                                                     actor=user.actor, now=controller.now(),
                                                     timeout_s=controller.settings.deployment_timeout_s)
            deployment_id = deployment.id
    except NotFoundError as exc:
        return not_found(request, user, exc)
    except EdgeFleetError as exc:
        return render(request, "error.html", status_code=409, user=user, title="Not rolled back", status=409,
                      message=exc.message, where=exc.where, hint=exc.hint)
    log.info("device %s rolled back from the UI by %s (%s)", device_id, user.actor, deployment_id)
    controller.publish_pending()
    return RedirectResponse(f"{base_path(request)}/ui/deployments/{quote(deployment_id)}", status_code=303)


@router.post("/ui/enrollment/{token_id}/revoke")
def revoke_enrollment_token(request: Request, token_id: str, controller: ControllerDep,
                            csrf_token: CsrfField = "") -> Response:
    """End an unused enrollment token now (``DELETE /api/v1/enrollment-tokens/{id}``)."""
    user = posted_by(request, controller, csrf_token, f"revoke of enrollment token {token_id[:20]}")
    if isinstance(user, Response):
        return user
    try:
        if not token_id.isdigit() or len(token_id) > 18:
            raise NotFoundError(f"no enrollment token {token_id[:20]!r}", where="token_id")
        with controller.session() as session:
            devices.revoke_enrollment_token(session, token_id=int(token_id), actor=user.actor, now=controller.now())
    except NotFoundError as exc:
        return not_found(request, user, exc)
    except EdgeFleetError as exc:
        with controller.session() as session:
            return _tokens_page(request, session, controller, user, problem=exc, status_code=409)
    log.info("enrollment token %s revoked from the UI by %s", token_id, user.actor)
    return RedirectResponse(f"{base_path(request)}/ui/enrollment", status_code=303)
