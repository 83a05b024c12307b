"""The new rollout's live count and confirmation step over plain HTTP (create_app with a stand-in MQTT
transport, the fleet of :mod:`ui_fleet`: five devices on bundle 1.2.0, 1.3.0 registered): the count of
matching and compatible devices follows the selector and the bundle, the confirmation step shows the
stages with their devices, the policy and the skipped devices and stores nothing, only a confirmed post
creates the rollout (with its audit entry), and viewers, other origins and posts without the CSRF
token are refused."""

from __future__ import annotations

import re
import time

import pytest
from fastapi.testclient import TestClient

from edgefleet.cloud.services import audit, auth, devices
from edgefleet.cloud.services.rollouts import service as rollouts
from edgefleet.cloud.ui import csrf

from .test_ui_http import login
from .ui_fleet import seed


@pytest.fixture
def fleet(app, client):
    return seed(app.state.controller, now=time.time())


def stored(app) -> int:
    with app.state.controller.session() as session:
        return len(rollouts.list_rollouts(session, limit=1000))


def form(fleet, **fields) -> dict[str, str]:
    return {"bundle": fleet.bundles["1.3.0"].digest, "tags": "camera", "template": "canary-half-rest",
            "note": "cameras first"} | fields


def token(app, role: str, name: str) -> str:
    with app.state.controller.session() as session:
        return auth.create_token(session, name=name, role=role, actor="admin:test", now=time.time())[1]


def count(client, fleet, **params) -> dict:
    r = client.get("/ui/rollouts/count", params={"bundle": fleet.bundles["1.3.0"].digest} | params)
    assert r.status_code == 200, r.text
    return r.json()


def test_the_count_follows_the_selector_and_the_bundle(client, fleet):
    login(client)
    every = count(client, fleet)
    assert (every["matching"], every["compatible"], every["problem"]) == (5, 5, "")
    assert [s["devices"] for s in every["stages"]] == [1, 2, 2]          # canary, half of the other 4, the rest
    cameras = count(client, fleet, tags="camera")
    assert (cameras["matching"], cameras["compatible"]) == (3, 3)
    assert (count(client, fleet, tags="camera site-a")["matching"]) == 2  # every tag given
    assert count(client, fleet, tags="camera", exclude_device_ids="cam-01")["matching"] == 2
    assert count(client, fleet, exclude_tags="site-b")["matching"] == 2
    assert count(client, fleet, device_ids="gate-01, gate-02")["matching"] == 2
    assert count(client, fleet, tags="camera", template="all-at-once")["stages"] == [
        {"name": "all", "devices": 3, "exact": True}]
    assert count(client, fleet, template="custom")["stages"] == []         # a pasted policy: judged on confirming
    on_it = count(client, fleet, bundle=fleet.bundles["1.2.0"].digest)     # every device runs 1.2.0
    assert (on_it["matching"], on_it["compatible"]) == (5, 0)
    assert {s["reason"] for s in on_it["skipped"]} == {"already runs this bundle"}


def test_the_count_says_what_is_wrong_and_is_for_operators(client, app, fleet):
    login(client)
    bad = count(client, fleet, tags="ok not/ok")
    assert bad["where"] == "selector: tags.1" and bad["matching"] == 0
    assert count(client, fleet, bundle="")["where"] == "bundle"
    assert "no bundle" in count(client, fleet, bundle="0" * 64)["problem"]
    viewer = TestClient(app, follow_redirects=False)
    login(viewer, token=token(app, "viewer", "vera"))
    assert viewer.get("/ui/rollouts/count", params={"bundle": fleet.bundles["1.3.0"].digest}).status_code == 403
    assert TestClient(app).get("/ui/rollouts/count").status_code == 403     # not signed in


def test_the_confirmation_step_shows_stages_policy_and_skipped_and_stores_nothing(client, app, fleet):
    login(client)
    with app.state.controller.session() as session:
        before = len(audit.list_entries(session))
    r = client.post("/ui/rollouts/confirm", data=form(fleet, tags="", exclude_device_ids="gate-02"))
    assert r.status_code == 200, r.text[:400]
    page = r.text
    assert "to 4 devices?" in page
    stages = dict(re.findall(r'<tr data-stage="([^"]+)" data-devices="(\d+)"', page))
    assert stages == {"canary": "1", "half": "2", "rest": "1"}
    assert "template canary-half-rest:" in page and "no pace limit" in page
    assert 'name="confirm" value="yes"' in page and 'value="gate-02"' in page   # carried to the create post
    assert stored(app) == 0
    with app.state.controller.session() as session:
        assert len(audit.list_entries(session)) == before
    # a selector every device of which already runs the bundle: refused with the reason, nothing stored
    r = client.post("/ui/rollouts/confirm", data=form(fleet, bundle=fleet.bundles["1.2.0"].digest))
    assert r.status_code == 409 and "already runs this bundle" in r.text and 'data-where="selector"' in r.text
    r = client.post("/ui/rollouts/confirm", data=form(fleet, device_ids="nobody-here"))
    assert r.status_code == 409 and "no device matches the selector" in r.text
    assert stored(app) == 0


def test_the_confirmation_step_lists_the_skipped_devices_with_why(client, app, fleet):
    login(client)
    with app.state.controller.session() as session:
        devices.decommission(session, device_id="cam-03", actor="admin:test", now=time.time())
    assert count(client, fleet, tags="camera")["skipped"] == [{"device_id": "cam-03",
                                                                "reason": "device is decommissioned"}]
    r = client.post("/ui/rollouts/confirm", data=form(fleet))
    assert r.status_code == 200
    skipped = re.search(r'<ul class="plain small" id="confirm-skipped">(.*?)</ul>', r.text, re.S)
    assert skipped and 'data-device="cam-03"' in skipped.group(1) and "decommissioned" in skipped.group(1)
    chosen = re.search(r'<ul class="plain" id="confirm-devices">(.*?)</ul>', r.text, re.S)
    assert chosen and "cam-01" in chosen.group(1) and "cam-03" not in chosen.group(1)
    assert "to 2 devices?" in r.text


def test_back_returns_to_the_form_as_typed(client, fleet):
    login(client)
    r = client.post("/ui/rollouts/confirm", data=form(fleet, edit="yes", exclude_tags="site-b"))
    assert r.status_code == 200 and 'id="rollout-form"' in r.text
    assert 'id="exclude_tags" value="site-b"' in r.text and 'value="cameras first"' in r.text


def test_a_post_without_confirm_creates_nothing_and_a_confirmed_one_creates_it_with_its_audit_entry(
        client, app, fleet):
    login(client)
    for confirm in ("", "no", "YES"):
        r = client.post("/ui/rollouts", data=form(fleet, confirm=confirm))
        assert r.status_code == 400 and 'data-where="confirm"' in r.text and "not confirmed" in r.text
        assert "Nothing was created" in r.text
    assert stored(app) == 0
    r = client.post("/ui/rollouts", data=form(fleet, confirm="yes"))
    assert r.status_code == 303 and r.headers["location"].startswith("/ui/rollouts/ro-")
    rollout_id = r.headers["location"].rsplit("/", 1)[1]
    assert stored(app) == 1
    with app.state.controller.session() as session:
        rollout = rollouts.get_rollout(session, rollout_id=rollout_id)
        assert rollout.state == "running" and rollout.note == "cameras first"
        assert len(rollouts.devices_of(session, rollout_id=rollout_id)) == 3
        entries = audit.list_entries(session, target=f"rollout:{rollout_id}")
    created = [e for e in entries if e.action == "rollout.create"]
    assert len(created) == 1 and created[0].actor == "admin:admin" and created[0].details["devices"] == 3
    page = client.get(r.headers["location"]).text
    assert 'data-stage="canary"' in page and "cameras first" in page


def test_a_viewer_is_refused_at_both_steps(app, fleet):
    viewer = TestClient(app, follow_redirects=False)
    login(viewer, token=token(app, "viewer", "vera"))
    for path, extra in (("/ui/rollouts/confirm", {}), ("/ui/rollouts", {"confirm": "yes"})):
        r = viewer.post(path, data=form(fleet, **extra))
        assert r.status_code == 403 and "needs operator" in r.text, path
    assert stored(app) == 0


def test_without_the_csrf_token_or_from_another_origin_both_steps_are_refused(client, app, fleet):
    login(client)
    good = client.headers.pop(csrf.HEADER)
    for path, extra in (("/ui/rollouts/confirm", {}), ("/ui/rollouts", {"confirm": "yes"})):
        r = client.post(path, data=form(fleet, **extra))
        assert r.status_code == 403 and "no valid CSRF token" in r.text, path
        r = client.post(path, data=form(fleet, **extra, csrf_token="x" * 43))
        assert r.status_code == 403, path
        r = client.post(path, data=form(fleet, **extra, csrf_token=good), headers={"Origin": "http://evil.example"})
        assert r.status_code == 403, path
    assert stored(app) == 0
    r = client.post("/ui/rollouts", data=form(fleet, confirm="yes", csrf_token=good))
    assert r.status_code == 303 and stored(app) == 1


def test_the_form_asks_for_the_count_and_posts_to_the_confirmation_step(client, fleet):
    login(client)
    page = client.get("/ui/rollouts/new").text
    assert 'action="/ui/rollouts/confirm"' in page and 'data-count="/ui/rollouts/count"' in page
    assert 'data-count-out="rollout-count"' in page and 'id="rollout-count"' in page
    fields = re.search(r'data-count-fields="([^"]+)"', page)
    assert fields and set(fields.group(1).split()) == {"bundle", "tags", "device_ids", "exclude_tags",
                                                       "exclude_device_ids", "template"}
    assert '<script src="/ui/static/deploy.js" defer></script>' in page
