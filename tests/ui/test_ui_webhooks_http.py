"""Webhooks from the UI over plain HTTP (admin only, as the API): register one (its secret shown once,
and it is the secret the deliveries are signed with), its last delivery on the list, a ping and its
deliveries on the webhook's page, removal (confirmed) -- each with its audit entry; an operator, a post
without the CSRF token, a bad URL and an unconfirmed removal change nothing and say why."""

from __future__ import annotations

import re
import time

import pytest
from fastapi.testclient import TestClient

from edgefleet.cloud.app import create_app
from edgefleet.cloud.services import audit, auth, webhooks
from edgefleet.cloud.settings import ControllerSettings

from .test_ui_http import ADMIN, NoTransport, login

URL = "https://ops.example.com/edgefleet"


@pytest.fixture
def app(tmp_path):
    settings = ControllerSettings(data_dir=tmp_path / "controller", broker_url="mqtt://127.0.0.1:1", admin_token=ADMIN)
    return create_app(settings, transport_factory=lambda url, on_message: NoTransport(), reconcile_in_background=False)


@pytest.fixture
def client(app):
    with TestClient(app, follow_redirects=False) as c:
        yield c


def hooks(app) -> list:
    with app.state.controller.session() as session:
        return webhooks.list_webhooks(session)


def actions(app) -> list[str]:
    with app.state.controller.session() as session:
        return [e.action for e in audit.list_entries(session) if e.action.startswith("webhook.")]


def test_an_admin_registers_pings_and_removes_a_webhook(app, client):
    login(client)
    assert "No webhook yet" in client.get("/ui/webhooks").text
    r = client.post("/ui/webhooks", data={"url": URL, "events": "rollout.aborted, ping", "confirm": "yes",
                                          "description": "ops pager"})
    assert r.status_code == 200 and 'id="secret-once"' in r.text
    secret = re.search(r'id="secret-value">([^<]+)<', r.text).group(1)
    (hook,) = hooks(app)
    assert hook.url == URL and hook.events == ["ping", "rollout.aborted"] and hook.secret == secret
    listed = client.get("/ui/webhooks").text
    assert secret not in listed and "ops pager" in listed and "none yet" in listed   # shown that once only
    assert client.post(f"/ui/webhooks/{hook.id}/ping").status_code == 303
    sent: list[dict] = []

    def post(url: str, body: bytes, headers: dict[str, str], timeout_s: float) -> int:
        sent.append({"url": url, "ok": webhooks.verify(secret, headers[webhooks.SIGNATURE_HEADER], body, time.time())})
        return 204

    webhooks.deliver_due(app.state.controller.session, now=time.time(), post=post)
    assert sent == [{"url": URL, "ok": True}]                       # signed with the secret the page showed
    detail = client.get(f"/ui/webhooks/{hook.id}").text
    assert re.search(r'id="delivery-\d+" data-state="delivered"', detail) and "HTTP 204" in detail
    row = client.get("/ui/webhooks").text.split(f'id="webhook-{hook.id}"', 1)[1]
    assert ">delivered</span>" in row.split("</tr>", 1)[0]
    assert client.post(f"/ui/webhooks/{hook.id}/delete", data={"confirm": "yes"}).status_code == 303
    assert hooks(app) == [] and actions(app) == ["webhook.delete", "webhook.ping", "webhook.create"]
    assert client.get(f"/ui/webhooks/{hook.id}").status_code == 404


def test_refusals_change_nothing_and_say_why(app, client):
    login(client)
    r = client.post("/ui/webhooks", data={"url": "ftp://x", "confirm": "yes"})
    assert r.status_code == 400 and 'data-where="url"' in r.text and "Nothing was changed" in r.text
    r = client.post("/ui/webhooks", data={"url": URL, "events": "no.such", "confirm": "yes"})
    assert r.status_code == 400 and 'data-where="events"' in r.text
    assert client.post("/ui/webhooks", data={"url": URL}).status_code == 400            # not confirmed
    assert hooks(app) == []
    assert client.post("/ui/webhooks", data={"url": URL, "confirm": "yes"}).status_code == 200
    (hook,) = hooks(app)
    assert hook.events == ["*"]                                     # empty: every event
    r = client.post(f"/ui/webhooks/{hook.id}/delete")
    assert r.status_code == 400 and 'data-where="confirm"' in r.text
    assert client.post("/ui/webhooks/999/ping").status_code == 404
    headers = dict(client.headers)
    del client.headers["X-CSRF-Token"]
    r = client.post(f"/ui/webhooks/{hook.id}/delete", data={"confirm": "yes"})
    assert r.status_code == 403 and "CSRF" in r.text
    client.headers.update(headers)
    with app.state.controller.session() as session:
        operator = auth.create_token(session, name="op", role="operator", actor="admin:test", now=time.time())[1]
    login(client, token=operator)
    assert client.get("/ui/webhooks").status_code == 403
    assert client.post(f"/ui/webhooks/{hook.id}/delete", data={"confirm": "yes"}).status_code == 403
    assert "/ui/webhooks" not in client.get("/").text                # no nav item below admin
    assert len(hooks(app)) == 1 and actions(app) == ["webhook.create"]
