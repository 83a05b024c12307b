"""The device list over plain HTTP (create_app with a stand-in MQTT transport, the 130 devices of
:mod:`ui_device_fleet`): a filter that cannot be read is a 422 page naming its field; a page past the end is
the last page; every refused bulk post (bad action, no selection, unknown device, no tag, no CSRF token, too
many ids to deploy by list) answers precisely and changes nothing."""

from __future__ import annotations

import time

import pytest
from fastapi.testclient import TestClient
from sqlmodel import select

from edgefleet.cloud.app import create_app
from edgefleet.cloud.services import audit
from edgefleet.cloud.settings import ControllerSettings
from edgefleet.cloud.store.tables import Device
from edgefleet.cloud.ui import csrf, device_list

from .test_ui_http import ADMIN, NoTransport, login
from .ui_device_fleet import seed_devices


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    settings = ControllerSettings(data_dir=tmp_path_factory.mktemp("list-http"), broker_url="mqtt://127.0.0.1:1",
                                  admin_token=ADMIN)
    app = create_app(settings, transport_factory=lambda url, on_message: NoTransport(),
                     reconcile_in_background=False)
    with TestClient(app, follow_redirects=False):
        seed_devices(app.state.controller, now=time.time())
    return app


@pytest.fixture(scope="module")
def client(app):
    with TestClient(app, follow_redirects=False) as c:
        login(c)
        yield c


def snapshot(app) -> tuple[list[list[str]], int]:
    with app.state.controller.session() as session:
        tags = [list(d.tags) for d in session.exec(select(Device).order_by(Device.id))]
        return tags, len(audit.list_entries(session, limit=10_000))


@pytest.mark.parametrize(("query", "where", "words"), [
    ("drift=purple", "drift", "not a drift level"), ("size=7", "size", "not a page size"),
    ("online=maybe", "online", "not yes or no"), ("sort=colour", "sort", "not a column to sort by"),
    ("update=broken", "update", "not an update state"), ("dir=up", "dir", "not a direction")])
def test_a_filter_that_cannot_be_read_is_a_422_naming_its_field(client, query, where, words):
    r = client.get(f"/ui/devices?{query}")
    assert r.status_code == 422
    assert f'data-where="{where}"' in r.text and words in r.text and 'id="devices"' not in r.text


def test_a_page_past_the_end_is_the_last_page(client):
    r = client.get("/ui/devices?page=999&size=25")
    assert r.status_code == 200 and "126–130 of 130" in r.text and 'aria-current="page" class="current">6<' in r.text


def test_every_refused_bulk_post_says_why_and_changes_nothing(app, client, monkeypatch):
    before = snapshot(app)
    token = client.headers[csrf.HEADER]
    cases = [
        ({"action": "paint", "tags": "x", "id": "node-001"}, 400, "not a bulk action"),
        ({"action": "add_tag", "tags": "x"}, 400, "no device is selected"),
        ({"action": "add_tag", "tags": "x", "id": ["node-001", "ghost"], "confirm": "yes"}, 404,
         "no device &#39;ghost&#39;"),
        ({"action": "add_tag", "tags": " , ", "id": "node-001", "confirm": "yes"}, 400, "no tag given"),
        ({"action": "add_tag", "tags": "x", "all_matching": "yes", "drift": "purple", "confirm": "yes"}, 400,
         "not a drift level"),
    ]
    for data, status, words in cases:
        r = client.post("/ui/devices/bulk", data=data)
        assert r.status_code == status and words in r.text and "Nothing was changed" in r.text, (data, r.text[-600:])
    del client.headers[csrf.HEADER]
    r = client.post("/ui/devices/bulk", data={"action": "add_tag", "tags": "x", "id": "node-001", "confirm": "yes"})
    assert r.status_code == 403
    client.headers[csrf.HEADER] = token
    monkeypatch.setattr(device_list, "DEPLOY_URL_IDS", 40)
    r = client.post("/ui/devices/bulk", data={"action": "deploy", "all_matching": "yes", "online": "yes"})
    assert r.status_code == 400 and "too many to deploy to as a list" in r.text and "deploy to that tag" in r.text
    assert snapshot(app) == before
    r = client.post("/ui/devices/bulk", data={"action": "deploy", "id": ["node-001", "node-002"]})
    assert r.status_code == 303 and r.headers["location"] == "/ui/deploy?device_ids=node-001+node-002"
    r = client.post("/ui/devices/bulk", data={"action": "add_tag", "tags": "x", "id": "node-001"})
    assert r.status_code == 200 and 'id="bulk-confirm"' in r.text       # the confirmation: still nothing stored
    assert snapshot(app) == before
