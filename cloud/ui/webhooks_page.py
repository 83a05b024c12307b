"""Webhooks from the UI (admin only, as ``/api/v1/webhooks``), through the same service calls (which
write the audit entries): ``/ui/webhooks`` lists every receiver with the state of its last delivery and
registers a new one (its signing secret shown this once); ``/ui/webhooks/{id}`` shows its recent
deliveries and sends a ``ping``; removing one (confirmed) drops its pending deliveries too."""

from __future__ import annotations

import logging
from typing import Annotated

from fastapi import APIRouter, Form, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from sqlmodel import Session

from edgefleet.cloud.deps import ControllerDep, SessionDep
from edgefleet.cloud.services import webhooks
from edgefleet.cloud.services.auth import Principal
from edgefleet.cloud.store.tables import WebhookDelivery
from edgefleet.cloud.ui.csrf import CsrfField
from edgefleet.cloud.ui.render import base_path, forbidden, not_found, render
from edgefleet.cloud.ui.session import form_refusal, signed_in, to_login
from edgefleet.cloud.vocabulary import DeliveryState, Role
from edgefleet.protocol.errors import ConfigError, EdgeFleetError, NotFoundError

log = logging.getLogger(__name__)

router = APIRouter(include_in_schema=False)

DELIVERIES_SHOWN = 50
DELIVERY_CSS = {DeliveryState.PENDING: "st-wait", DeliveryState.DELIVERED: "st-ok", DeliveryState.FAILED: "st-bad"}
"""Colour class of a delivery's state (static/ui.css)."""


def parse_events(text: str) -> list[str]:
    """The events field: names separated by commas or spaces; empty means every event (``*``)."""
    names = [n for n in text.replace(",", " ").split() if n]
    return names or [webhooks.ALL_EVENTS]


def _admin(request: Request, controller: ControllerDep, csrf_token: str | None, what: str
           ) -> tuple[Principal | None, Response | None]:
    """The signed-in admin, or the response that refuses the page (``csrf_token=None``) or the post."""
    with controller.session() as session:
        user = signed_in(request, session)
    if user is None:
        return None, to_login(request)
    refusal = user.refusal(Role.ADMIN) if csrf_token is None else form_refusal(request, user, csrf_token, Role.ADMIN)
    if refusal is not None:
        log.warning("UI %s refused for %s: %s", what, user.actor, refusal)
        return user, forbidden(request, user, refusal)
    return user, None


def _last_deliveries(session: Session) -> dict[int, WebhookDelivery]:
    return {hook.id: last for hook in webhooks.list_webhooks(session) if hook.id is not None
            for last in webhooks.deliveries_of(session, hook.id, 1)}


def _list_page(request: Request, session: Session, controller: ControllerDep, user: Principal, *,
               created: str | None = None, problem: EdgeFleetError | None = None,
               form: dict[str, str] | None = None, status_code: int = 200) -> Response:
    return render(request, "webhooks.html", status_code=status_code, user=user, now=controller.now(),
                  hooks=webhooks.list_webhooks(session), last=_last_deliveries(session), css=DELIVERY_CSS,
                  events=webhooks.EVENTS, created=created, problem=problem,
                  form=form or {"url": "", "events": "", "description": ""})


@router.get("/ui/webhooks", response_class=HTMLResponse)
def webhook_list(request: Request, session: SessionDep, controller: ControllerDep) -> Response:
    user, refused = _admin(request, controller, None, "webhooks page")
    if refused is not None or user is None:
        return refused or to_login(request)
    return _list_page(request, session, controller, user)


@router.post("/ui/webhooks", response_class=HTMLResponse)
def create_webhook(request: Request, controller: ControllerDep, url: Annotated[str, Form(max_length=2048)] = "",
                   events: Annotated[str, Form(max_length=2000)] = "",
                   description: Annotated[str, Form(max_length=500)] = "",
                   confirm: Annotated[str, Form(max_length=8)] = "",
                   csrf_token: CsrfField = "") -> Response:
    """Register a receiver; the page shows its secret this once."""
    user, refused = _admin(request, controller, csrf_token, "webhook create")
    if refused is not None or user is None:
        return refused or to_login(request)
    form = {"url": url.strip(), "events": events, "description": description.strip()}
    try:
        if confirm != "yes":
            raise ConfigError("the new webhook was not confirmed", where="confirm", hint="tick the confirmation box")
        with controller.session() as session:
            row, secret = webhooks.create_webhook(session, url=form["url"], events=parse_events(events),
                                                  description=form["description"], actor=user.actor,
                                                  now=controller.now())
            hook_id = row.id
    except EdgeFleetError as exc:
        with controller.session() as session:
            return _list_page(request, session, controller, user, problem=exc, form=form, status_code=400)
    log.info("webhook %s created from the UI by %s", hook_id, user.actor)
    with controller.session() as session:
        return _list_page(request, session, controller, user, created=secret)


@router.get("/ui/webhooks/{webhook_id}", response_class=HTMLResponse)
def webhook_detail(request: Request, webhook_id: int, session: SessionDep, controller: ControllerDep) -> Response:
    user, refused = _admin(request, controller, None, f"webhook {webhook_id} page")
    if refused is not None or user is None:
        return refused or to_login(request)
    try:
        hook = webhooks.get_webhook(session, webhook_id)
    except NotFoundError as exc:
        return not_found(request, user, exc)
    return render(request, "webhook.html", user=user, now=controller.now(), hook=hook, css=DELIVERY_CSS,
                  deliveries=webhooks.deliveries_of(session, webhook_id, DELIVERIES_SHOWN))


@router.post("/ui/webhooks/{webhook_id}/ping")
def ping_webhook(request: Request, webhook_id: int, controller: ControllerDep, csrf_token: CsrfField = "") -> Response:
    """Queue a ``ping`` delivery to this webhook (the controller's sender posts it)."""
    user, refused = _admin(request, controller, csrf_token, f"ping of webhook {webhook_id}")
    if refused is not None or user is None:
        return refused or to_login(request)
    try:
        with controller.session() as session:
            webhooks.ping(session, webhook_id=webhook_id, actor=user.actor, now=controller.now())
    except NotFoundError as exc:
        return not_found(request, user, exc)
    return RedirectResponse(f"{base_path(request)}/ui/webhooks/{webhook_id}", status_code=303)


@router.post("/ui/webhooks/{webhook_id}/delete")
def delete_webhook(request: Request, webhook_id: int, controller: ControllerDep,
                   confirm: Annotated[str, Form(max_length=8)] = "", csrf_token: CsrfField = "") -> Response:
    """Remove the webhook and its deliveries (pending ones are not sent)."""
    user, refused = _admin(request, controller, csrf_token, f"delete of webhook {webhook_id}")
    if refused is not None or user is None:
        return refused or to_login(request)
    try:
        if confirm != "yes":
            raise ConfigError(f"the removal of webhook {webhook_id} was not confirmed", where="confirm",
                              hint="tick the confirmation box")
        with controller.session() as session:
            webhooks.delete_webhook(session, webhook_id=webhook_id, actor=user.actor, now=controller.now())
    except NotFoundError as exc:
        return not_found(request, user, exc)
    except ConfigError as exc:
        with controller.session() as session:
            return _list_page(request, session, controller, user, problem=exc, status_code=400)
    log.info("webhook %s deleted from the UI by %s", webhook_id, user.actor)
    return RedirectResponse(f"{base_path(request)}/ui/webhooks", status_code=303)
