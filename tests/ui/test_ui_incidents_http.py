"""The incident pages over plain HTTP (create_app with a stand-in MQTT transport, the fleet of
:mod:`ui_fleet`, whose cam-03 drifts into alarm): sign-in, the close form's role, origin and reason
checks (nothing closed when refused), and a close that is shown."""

from __future__ import annotations

import time

import pytest

from edgefleet.cloud.services import auth, registry
from edgefleet.cloud.services.incidents import service as incidents
from edgefleet.cloud.services.rollouts import service as rollouts
from edgefleet.cloud.services.rollouts.policy import Selector, heal_policy

from .test_ui_http import login
from .ui_fleet import seed


@pytest.fixture
def incident_id(app, client) -> str:
    now = time.time()
    seed(app.state.controller, now=now)
    [opened] = app.state.controller.process_incidents(now).opened
    return opened


def state_of(app, incident_id: str) -> str:
    with app.state.controller.session() as session:
        return incidents.get_incident(session, incident_id=incident_id).state


def test_incident_pages_need_a_sign_in(client, incident_id):
    for path in ("/ui/incidents", f"/ui/incidents/{incident_id}"):
        r = client.get(path)
        assert r.status_code == 303 and r.headers["location"].startswith("/ui/login?next=")
    assert client.post(f"/ui/incidents/{incident_id}/close", data={"reason": "x"}).status_code == 303


def test_only_operators_from_the_controllers_own_pages_close_with_a_reason(app, client, incident_id):
    with app.state.controller.session() as session:
        viewer = auth.create_token(session, name="viewer", role="viewer", actor="admin:test", now=time.time())[1]
    login(client, viewer)
    assert 'id="act-close"' not in client.get(f"/ui/incidents/{incident_id}").text
    r = client.post(f"/ui/incidents/{incident_id}/close", data={"reason": "x"})
    assert r.status_code == 403 and "needs operator" in r.text
    login(client)
    assert 'id="act-close"' in client.get(f"/ui/incidents/{incident_id}").text
    evil = client.post(f"/ui/incidents/{incident_id}/close", data={"reason": "x"},
                       headers={"Origin": "http://evil.example"})
    assert evil.status_code == 403
    blank = client.post(f"/ui/incidents/{incident_id}/close", data={"reason": "  "})
    assert blank.status_code == 400 and 'id="action-error"' in blank.text and "say why you close it" in blank.text
    assert state_of(app, incident_id) == "open"
    r = client.post(f"/ui/incidents/{incident_id}/close", data={"reason": "re-aimed"})
    assert r.status_code == 303 and r.headers["location"] == f"/ui/incidents/{incident_id}"
    assert state_of(app, incident_id) == "closed"
    again = client.post(f"/ui/incidents/{incident_id}/close", data={"reason": "again"})
    assert again.status_code == 409 and "is closed: cannot close" in again.text
    assert client.post("/ui/incidents/inc-nope/close", data={"reason": "x"}).status_code == 404
    assert client.get("/ui/incidents/inc-nope").status_code == 404


def test_the_state_filter_and_the_overview_count(client, incident_id):
    login(client)
    assert f'data-incident="{incident_id}"' in client.get("/ui/incidents?state=open").text
    assert 'data-incident=' not in client.get("/ui/incidents?state=closed").text
    assert f'data-incident="{incident_id}"' in client.get("/ui/incidents?state=bogus").text   # all
    assert 'data-count="open-incidents">1<' in client.get("/").text


def test_the_incident_lists_its_rollout_back_to_health_and_the_rollout_links_back(app, client, incident_id):
    login(client)
    assert "No rollout names it yet" in client.get(f"/ui/incidents/{incident_id}").text
    controller = app.state.controller
    with controller.session() as session:
        (fixed,) = [b for b in registry.list_bundles(session, name="animals") if b.version == "1.3.0"]
        drifted = incidents.get_incident(session, incident_id=incident_id).devices
        rollout_id = rollouts.create_rollout(session, bundle_digest=fixed.digest, selector=Selector(),
                                             policy=heal_policy([]), protected_tags=[], actor="admin:test",
                                             now=time.time(), incidents=[incident_id]).id
    page = client.get(f"/ui/incidents/{incident_id}").text
    assert f'href="/ui/rollouts/{rollout_id}"' in page and "No rollout names it yet" not in page
    detail = client.get(f"/ui/rollouts/{rollout_id}").text
    assert f'href="/ui/incidents/{incident_id}"' in detail
    assert f"the devices {', '.join(drifted)}" in detail   # the drifted stage, in words
