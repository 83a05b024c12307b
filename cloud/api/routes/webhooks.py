"""Webhooks (admin only): register a receiver (its secret shown once), list, remove, its
deliveries, and a ``ping`` to test it. The controller POSTs to whatever URL an admin registers."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from edgefleet.cloud.api.params import RowId
from edgefleet.cloud.api.schemas import WebhookCreate, WebhookCreated, WebhookDeliveryOut, WebhookOut
from edgefleet.cloud.deps import AdminDep, ControllerDep, SessionDep
from edgefleet.cloud.services import webhooks

api = APIRouter(prefix="/api/v1")


@api.post("/webhooks", tags=["webhooks"], status_code=201)
def create_webhook(body: WebhookCreate, controller: ControllerDep, session: SessionDep,
                   who: AdminDep) -> WebhookCreated:
    row, secret = webhooks.create_webhook(session, url=body.url, events=body.events, description=body.description,
                                          actor=who.actor, now=controller.now())
    return WebhookCreated.model_validate(row.model_dump() | {"secret": secret})


@api.get("/webhooks", tags=["webhooks"])
def list_webhooks(session: SessionDep, _: AdminDep) -> list[WebhookOut]:
    return [WebhookOut.model_validate(w) for w in webhooks.list_webhooks(session)]


@api.delete("/webhooks/{webhook_id}", tags=["webhooks"], status_code=204)
def delete_webhook(webhook_id: RowId, controller: ControllerDep, session: SessionDep, who: AdminDep) -> None:
    """Remove the webhook and its deliveries (pending ones are not sent)."""
    webhooks.delete_webhook(session, webhook_id=webhook_id, actor=who.actor, now=controller.now())


@api.get("/webhooks/{webhook_id}/deliveries", tags=["webhooks"])
def webhook_deliveries(webhook_id: RowId, session: SessionDep, _: AdminDep,
                       limit: Annotated[int, Query(ge=1, le=1000)] = 50) -> list[WebhookDeliveryOut]:
    """The latest deliveries, newest first."""
    return [WebhookDeliveryOut.model_validate(d) for d in webhooks.deliveries_of(session, webhook_id, limit)]


@api.post("/webhooks/{webhook_id}/ping", tags=["webhooks"], status_code=202)
def ping_webhook(webhook_id: RowId, controller: ControllerDep, session: SessionDep,
                 who: AdminDep) -> WebhookDeliveryOut:
    """Queue a ``ping`` event to this webhook; follow it in its deliveries."""
    return WebhookDeliveryOut.model_validate(webhooks.ping(session, webhook_id=webhook_id, actor=who.actor,
                                                           now=controller.now()))
