"""The UI's actions over plain HTTP (create_app with a stand-in MQTT transport, the fleet of :mod:`ui_fleet`):
deploy (live count, confirmation, created, audit), device tags and decommission, enrollment tokens, users
and one's own API tokens. For each: who sees the button, that a refused post (role, CSRF) changes
nothing, and the precise refusal of bad input."""

from __future__ import annotations

import time

import pytest
from fastapi.testclient import TestClient

from edgefleet.cloud.deps import password_policy
from edgefleet.cloud.services import audit, auth, deployments, devices, users
from edgefleet.cloud.services.auth import AuthenticationError
from edgefleet.cloud.ui import csrf
from edgefleet.cloud.ui.device_actions import split_words
from edgefleet.protocol.messages import State, StatusReport

from .test_ui_http import login
from .ui_fleet import ingest, installed, seed
from testkit import DeviceKey


@pytest.fixture
def fleet(app, client):
    return seed(app.state.controller, now=time.time(), hostile=False)


def token_of(app, role: str, name: str = "t") -> str:
    with app.state.controller.session() as session:
        return auth.create_token(session, name=f"{name}-{role}", role=role, actor="admin:test", now=time.time())[1]


def person(app, name: str, role: str) -> str:
    """A user and a personal token of theirs (their session's token when signed in with it)."""
    with app.state.controller.session() as session:
        user = users.create_user(session, name=name, role=role, actor="admin:test", now=time.time(),
                                 policy=password_policy(app.state.controller))
        return auth.create_token(session, name="session", role=role, actor="admin:test", now=time.time(),
                                 user=user)[1]


def entries(app, action: str) -> list:
    with app.state.controller.session() as session:
        return audit.list_entries(session, action=action)


def n_deployments(app) -> int:
    with app.state.controller.session() as session:
        return len(deployments.list_deployments(session, limit=1000))


def device(app, device_id: str):
    with app.state.controller.session() as session:
        return devices.get_device(session, device_id=device_id)


def without_csrf(client: TestClient) -> None:
    client.headers.pop(csrf.HEADER, None)


# --------------------------------------------------------------------------- who sees what

def test_a_viewer_sees_no_action_and_every_post_is_refused(app, client, fleet):
    login(client, token=token_of(app, "viewer"))
    assert 'id="new-deployment"' not in client.get("/ui/deployments").text
    assert 'id="enrollment-link"' not in client.get("/ui/devices").text
    page = client.get("/ui/devices/cam-01").text
    assert 'id="device-actions"' not in page and "/ui/people" not in page
    for path in ("/ui/deploy", "/ui/enrollment", "/ui/people"):
        r = client.get(path)
        assert r.status_code == 403 and "needs" in r.text, path
    assert client.get("/ui/deploy/count", params={"bundle": fleet.bundles["1.3.0"].digest, "all": "on"}
                      ).status_code == 403
    before = (n_deployments(app), device(app, "cam-01").tags, len(entries(app, "")))
    posts = {"/ui/deploy": {"bundle": fleet.bundles["1.3.0"].digest, "all": "on", "confirm": "yes"},
             "/ui/deploy/confirm": {"bundle": fleet.bundles["1.3.0"].digest, "all": "on"},
             "/ui/devices/cam-01/tags": {"tags": "x"}, "/ui/devices/cam-01/decommission": {"confirm": "cam-01"},
             "/ui/enrollment": {"confirm": "yes", "hours": "1"},
             "/ui/people": {"name": "eve", "role": "admin", "confirm": "yes"}, "/ui/people/x": {"role": "admin"},
             "/ui/devices/cam-01/rollback": {}}
    for path, data in posts.items():
        r = client.post(path, data=data)
        assert r.status_code == 403 and "viewer) may not do this" in r.text, path
    assert (n_deployments(app), device(app, "cam-01").tags, len(entries(app, ""))) == before
    assert device(app, "cam-01").mqtt_password_hash


def test_an_operator_sees_the_actions_but_not_the_users(app, client, fleet):
    login(client, token=token_of(app, "operator"))
    assert 'id="new-deployment"' in client.get("/ui/deployments").text
    page = client.get("/ui/devices/cam-01").text
    assert 'id="edit-tags"' in page and 'id="decommission"' in page and 'href="/ui/people"' not in page
    assert client.get("/ui/people").status_code == 403
    r = client.post("/ui/people", data={"name": "eve", "role": "admin", "confirm": "yes"})
    assert r.status_code == 403 and "needs admin" in r.text
    with app.state.controller.session() as session:
        assert users.find_user(session, name="eve") is None


@pytest.mark.parametrize("path", ["/ui/deploy", "/ui/devices/cam-01/tags", "/ui/devices/cam-01/decommission",
                                  "/ui/enrollment", "/ui/people", "/ui/tokens", "/ui/people/x",
                                  "/ui/tokens/1/revoke", "/ui/deploy/confirm", "/ui/devices/cam-01/rollback",
                                  "/ui/deployments/x/retry", "/ui/enrollment/1/revoke"])
def test_a_post_without_the_csrf_token_is_refused(app, client, fleet, path):
    login(client)
    without_csrf(client)
    before = (n_deployments(app), device(app, "cam-01").tags, len(entries(app, "")))
    r = client.post(path, data={"bundle": fleet.bundles["1.3.0"].digest, "all": "on", "confirm": "cam-01",
                                "tags": "x", "name": "eve", "role": "viewer"})
    assert r.status_code == 403 and "CSRF" in r.text
    assert (n_deployments(app), device(app, "cam-01").tags, len(entries(app, ""))) == before


# --------------------------------------------------------------------------- deploy

def test_the_live_count_tells_matching_and_compatible_devices(app, client, fleet):
    login(client)
    new, old = fleet.bundles["1.3.0"].digest, fleet.bundles["1.2.0"].digest
    c = client.get("/ui/deploy/count", params={"bundle": new, "tag": "site-b"}).json()
    assert (c["matching"], c["compatible"], c["problem"]) == (3, 3, "")
    c = client.get("/ui/deploy/count", params={"bundle": old, "tag": "site-a"}).json()
    assert (c["matching"], c["compatible"]) == (2, 0)                       # they already run it
    assert {s["reason"] for s in c["skipped"]} == {"already runs this bundle"}
    c = client.get("/ui/deploy/count", params={"bundle": new, "tag": "site-a", "all": "on"}).json()
    assert c["compatible"] == 0 and c["where"] == "target" and "exactly one" in c["problem"]
    c = client.get("/ui/deploy/count", params={"bundle": new, "device_ids": "cam-01 nope"}).json()
    assert c["where"] == "device_ids" and "nope" in c["problem"]
    c = client.get("/ui/deploy/count", params={"bundle": "f" * 64, "all": "on"}).json()
    assert c["problem"] and c["compatible"] == 0
    r = client.get("/ui/deploy")
    assert 'data-count="/ui/deploy/count"' in r.text and "/ui/static/deploy.js" in r.text
    assert "<script>" not in r.text                                       # no inline script
    assert client.get("/ui/static/deploy.js").status_code == 200


def test_deploy_confirm_then_create_redirects_to_the_deployment(app, client, fleet):
    login(client)
    new = fleet.bundles["1.3.0"].digest
    form = {"bundle": new, "tag": "site-b", "note": "site b to 1.3"}
    page = client.post("/ui/deploy/confirm", data=form)
    assert page.status_code == 200 and "to 3 devices?" in page.text
    for d in ("cam-03", "gate-01", "gate-02"):
        assert f">{d}</a>" in page.text
    before = n_deployments(app)
    r = client.post("/ui/deploy", data=form)                              # not confirmed
    assert r.status_code == 400 and "not confirmed" in r.text and n_deployments(app) == before
    r = client.post("/ui/deploy", data=form | {"confirm": "yes"})
    assert r.status_code == 303 and r.headers["location"].startswith("/ui/deployments/dep-")
    dep_id = r.headers["location"].rsplit("/", 1)[1]
    with app.state.controller.session() as session:
        dep = deployments.get_deployment(session, deployment_id=dep_id)
        targets = {t.device_id for t in deployments.targets_of(session, deployment_id=dep_id)}
    assert dep.created_by.startswith("admin:")
    assert targets == {"cam-03", "gate-01", "gate-02"} and dep.note == "site b to 1.3"
    entry = entries(app, "deployment.create")[0]
    assert entry.target == f"deployment:{dep_id}" and entry.actor == dep.created_by
    assert "site b to 1.3" in client.get(r.headers["location"]).text


def test_a_refused_deploy_says_where_and_creates_nothing(app, client, fleet):
    login(client)
    before = n_deployments(app)
    old = fleet.bundles["1.2.0"].digest
    cases = [({"tag": "site-a"}, 409, "no compatible device"),
             ({}, 400, "exactly one of device_ids, tag or all"),
             ({"device_ids": "cam-01, ghost"}, 404, "unknown devices: ghost")]
    for extra, status, text in cases:
        for path, data in (("/ui/deploy/confirm", {"bundle": old} | extra),
                           ("/ui/deploy", {"bundle": old, "confirm": "yes"} | extra)):
            r = client.post(path, data=data)
            assert text in r.text and 'id="form-error"' in r.text and "Nothing was created" in r.text, (path, extra)
            assert r.status_code in (status, 400), (path, extra, r.status_code)
    r = client.post("/ui/deploy/confirm", data={"bundle": "", "all": "on"})
    assert r.status_code == 400 and 'data-where="bundle"' in r.text
    assert n_deployments(app) == before


# --------------------------------------------------------------------------- device actions

def test_edit_tags_replaces_them_and_is_audited(app, client, fleet):
    login(client)
    r = client.post("/ui/devices/cam-01/tags", data={"tags": "site-a, camera  lab lab"})
    assert r.status_code == 303 and r.headers["location"] == "/ui/devices/cam-01"
    assert device(app, "cam-01").tags == ["camera", "lab", "site-a"]
    entry = entries(app, "device.tags")[0]
    assert entry.target == "device:cam-01" and entry.details["after"] == ["camera", "lab", "site-a"]
    assert client.post("/ui/devices/ghost/tags", data={"tags": "x"}).status_code == 404
    assert split_words(" a,b  a ") == ["a", "b"]


def test_decommission_needs_the_id_typed_and_revokes_the_credentials(app, client, fleet):
    login(client)
    r = client.post("/ui/devices/cam-02/decommission", data={"confirm": "cam-01"})
    assert r.status_code == 400 and "type the device id" in r.text
    assert device(app, "cam-02").mqtt_password_hash                        # unchanged
    r = client.post("/ui/devices/cam-02/decommission", data={"confirm": "cam-02"})
    assert r.status_code == 303
    gone = device(app, "cam-02")
    assert gone.mqtt_password_hash == "" and not gone.online
    assert entries(app, "device.decommission")[0].target == "device:cam-02"
    page = client.get("/ui/devices/cam-02").text
    assert 'id="decommissioned"' in page and 'id="decommission"' not in page
    assert client.post("/ui/devices/ghost/decommission", data={"confirm": "ghost"}).status_code == 404


def test_an_enrollment_token_is_shown_once_and_enrolls_a_device(app, client, fleet):
    login(client)
    r = client.post("/ui/enrollment", data={"device_id": "cam-09", "tags": "site-c", "hours": "2"})
    assert r.status_code == 400 and "not confirmed" in r.text
    for hours, text in (("0", "out of range"), ("many", "not a number of hours"), ("99999", "out of range")):
        r = client.post("/ui/enrollment", data={"hours": hours, "confirm": "yes"})
        assert r.status_code == 400 and text in r.text and 'data-where="hours"' in r.text
    r = client.post("/ui/enrollment", data={"device_id": "cam-09", "tags": "site-c", "hours": "2", "confirm": "yes"})
    assert r.status_code == 200 and 'id="secret-once"' in r.text and "/ui/static/copy.js" in r.text
    secret = r.text.split('id="secret-value">', 1)[1].split("<", 1)[0]
    assert secret.startswith(devices.ENROLL_PREFIX)
    listing = client.get("/ui/enrollment").text
    assert secret not in listing and "cam-09" in listing                  # listed, never shown again
    assert entries(app, "enrollment_token.create")[0].details["device_id"] == "cam-09"
    with app.state.controller.session() as session:
        devices.enroll(session, token=secret, device_id="cam-09", now=time.time(), public_key_pem=DeviceKey().pem)
    assert device(app, "cam-09").tags == ["site-c"]


def test_an_unused_enrollment_token_is_revoked(app, client, fleet):
    login(client)
    r = client.post("/ui/enrollment", data={"hours": "2", "confirm": "yes"})
    secret = r.text.split('id="secret-value">', 1)[1].split("<", 1)[0]
    with app.state.controller.session() as session:
        row = next(t for t in devices.list_enrollment_tokens(session) if t.used_at is None)
        used = next(t for t in devices.list_enrollment_tokens(session, include_used=True) if t.used_at is not None)
    assert f'id="revoke-{row.id}"' in client.get("/ui/enrollment").text
    r = client.post(f"/ui/enrollment/{row.id}/revoke")
    assert r.status_code == 303 and r.headers["location"] == "/ui/enrollment"
    assert entries(app, "enrollment_token.revoke")[0].target == f"enrollment_token:{row.id}"
    assert f'id="revoke-{row.id}"' not in client.get("/ui/enrollment").text
    with app.state.controller.session() as session, pytest.raises(AuthenticationError):
        devices.enroll(session, token=secret, device_id="late-1", now=time.time(), public_key_pem=DeviceKey().pem)
    r = client.post(f"/ui/enrollment/{used.id}/revoke")
    assert r.status_code == 409 and "already used" in r.text
    assert client.post("/ui/enrollment/999999/revoke").status_code == 404
    assert client.post("/ui/enrollment/nope/revoke").status_code == 404


# --------------------------------------------------------------------------- people and tokens

def test_an_admin_creates_a_user_changes_the_role_and_disables_them(app, client, fleet):
    login(client)
    assert 'href="/ui/people"' in client.get("/").text
    r = client.post("/ui/people", data={"name": "olga", "role": "operator"})
    assert r.status_code == 400 and "not confirmed" in r.text
    r = client.post("/ui/people", data={"name": "olga", "role": "operator", "confirm": "yes"})
    assert r.status_code == 303
    r = client.post("/ui/people", data={"name": "olga", "role": "viewer", "confirm": "yes"})
    assert r.status_code == 409 and "already a user" in r.text
    r = client.post("/ui/people", data={"name": "bob", "role": "root", "confirm": "yes"})
    assert r.status_code == 400 and 'data-where="role"' in r.text
    assert client.post("/ui/people/olga", data={"role": "approver"}).status_code == 303
    assert client.post("/ui/people/olga", data={"disabled": "maybe"}).status_code == 400
    assert client.post("/ui/people/olga", data={"disabled": "yes"}).status_code == 303
    with app.state.controller.session() as session:
        olga = users.get_user(session, name="olga")
        assert olga.role == "approver" and olga.disabled_at is not None
        assert users.find_user(session, name="bob") is None
    assert [e.action for e in entries(app, "user.")][:3] == ["user.update", "user.update", "user.create"]
    assert client.post("/ui/people/ghost", data={"role": "viewer"}).status_code == 404
    assert "disabled" in client.get("/ui/people").text


def test_a_person_creates_and_revokes_their_own_tokens(app, client, fleet):
    secret = person(app, "vera", "viewer")
    login(client, token=secret)
    r = client.post("/ui/tokens", data={"name": "cli", "role": "admin", "days": "3"})
    assert r.status_code == 403 and "up to viewer" in r.text
    r = client.post("/ui/tokens", data={"name": "cli", "days": "forever"})
    assert r.status_code == 400 and 'data-where="days"' in r.text
    r = client.post("/ui/tokens", data={"name": "cli", "role": "viewer", "days": "3"})
    assert r.status_code == 200 and 'id="secret-once"' in r.text
    new = r.text.split('id="secret-value">', 1)[1].split("<", 1)[0]
    with app.state.controller.session() as session:
        who = auth.identify(session, secret=new)
        assert who is not None and who.user == "vera" and who.role == "viewer"
        token_id = who.token_id
    assert new not in client.get("/ui/tokens").text
    r = client.post(f"/ui/tokens/{token_id}/revoke")
    assert r.status_code == 303
    with app.state.controller.session() as session:
        assert auth.identify(session, secret=new) is None
    assert entries(app, "token.revoke")[0].target == f"token:{token_id}"
    other = person(app, "otto", "operator")
    with app.state.controller.session() as session:
        otto_id = auth.identify(session, secret=other).token_id
    assert client.post(f"/ui/tokens/{otto_id}/revoke").status_code == 404      # not vera's
    with app.state.controller.session() as session:
        assert auth.identify(session, secret=other) is not None


def test_a_shared_token_has_no_personal_tokens(app, client, fleet):
    login(client)
    assert 'id="shared-token"' in client.get("/ui/tokens").text
    r = client.post("/ui/tokens", data={"name": "cli", "days": "3"})
    assert r.status_code == 403 and "shared token" in r.text



# --------------------------------------------------------------------------- retry and roll back

def commit(app, device_id: str, built) -> str:
    """Deploy ``built`` to the device and have it report the commit and its new state, as an agent does."""
    controller, now = app.state.controller, time.time()
    with controller.session() as session:
        dep = deployments.create_deployment(session, bundle_digest=built.digest, issuer=controller.issuer,
                                            actor="admin:test", now=now, timeout_s=600, device_ids=[device_id])
        dep_id = dep.id
        (target,) = deployments.targets_of(session, deployment_id=dep_id)
        sequence = target.sequence
    ingest(controller, device_id, "status", StatusReport(
        device_id=device_id, deployment_id=dep_id, sequence=sequence, bundle_digest=built.digest, state="committed",
        final=True, outcome="committed", sent_at=now), now)
    ingest(controller, device_id, "state", State(device_id=device_id, status="online", update_state="committed",
                                                 installed=installed(built), sent_at=now), now)
    return dep_id


def test_retry_orders_the_failed_devices_again(app, client, fleet):
    path = f"/ui/deployments/{fleet.deployment_id}"
    login(client, token=token_of(app, "viewer"))
    assert 'id="retry"' not in client.get(path).text
    assert client.post(f"{path}/retry").status_code == 403
    login(client)
    assert 'id="retry"' in client.get(path).text                          # gate-01 failed
    r = client.post(f"{path}/retry")
    assert r.status_code == 303 and r.headers["location"] == path
    with app.state.controller.session() as session:
        target = {t.device_id: t for t in deployments.targets_of(session, deployment_id=fleet.deployment_id)}
    assert not target["gate-01"].final and target["cam-01"].outcome == "committed"
    assert entries(app, "deployment.retry")[0].details["devices"] == ["gate-01"]
    r = client.post(f"{path}/retry")                                      # nothing failed any more
    assert r.status_code == 409 and "no failed device" in r.text
    assert client.post("/ui/deployments/dep-nope/retry").status_code == 404


def test_roll_back_a_device_to_the_bundle_it_ran_before(app, client, fleet):
    login(client)
    assert 'id="rollback"' not in client.get("/ui/devices/cam-02").text   # never committed another bundle
    r = client.post("/ui/devices/cam-02/rollback")
    assert r.status_code == 409 and "never committed another bundle" in r.text
    old, new = fleet.bundles["1.2.0"], fleet.bundles["1.3.0"]
    commit(app, "cam-02", old)
    commit(app, "cam-02", new)
    page = client.get("/ui/devices/cam-02").text
    assert 'id="rollback"' in page and "Roll cam-02 back to 1.2.0" in page
    r = client.post("/ui/devices/cam-02/rollback")
    assert r.status_code == 303 and r.headers["location"].startswith("/ui/deployments/dep-")
    with app.state.controller.session() as session:
        dep = deployments.get_deployment(session, deployment_id=r.headers["location"].rsplit("/", 1)[1])
    assert dep.bundle_digest == old.digest and dep.selector == {"device_ids": ["cam-02"]}
    assert entries(app, "device.rollback")[0].target == "device:cam-02"
