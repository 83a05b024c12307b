"""CSRF protection of the UI's cookie-authenticated forms: every state-changing post (sign-in and
sign-out included) needs the token its form carries; a post without it, with a wrong one or with
another session's is refused and changes nothing. Driven as a browser would: tokens are read from
the pages' hidden fields, never computed here."""

from __future__ import annotations

import re
import time

import pytest
from fastapi.routing import APIRoute
from fastapi.testclient import TestClient

from edgefleet.cloud.services import auth, deployments
from edgefleet.cloud.services.incidents import service as incidents
from edgefleet.cloud.services.rollouts import service as rollouts
from edgefleet.cloud.services.rollouts.policy import TEMPLATES, Selector

from .test_ui_http import ADMIN
from .ui_fleet import seed

REFUSED = "no valid CSRF token"


@pytest.fixture
def world(app):
    """The seeded fleet (a running deployment), one running rollout and one open incident."""
    controller = app.state.controller
    now = time.time()
    fleet = seed(controller, now=now)
    [incident_id] = controller.process_incidents(now).opened
    with controller.session() as session:
        rollout = rollouts.create_rollout(session, bundle_digest=fleet.bundles["1.3.0"].digest,
                                          selector=Selector(device_ids=["gate-02"]),
                                          policy=TEMPLATES["all-at-once"][1], protected_tags=[],
                                          actor="admin:test", now=now)
    return {"deployment": fleet.deployment_id, "rollout": rollout.id, "incident": incident_id,
            "bundle": fleet.bundles["1.3.0"].digest}


def field_token(html: str) -> str:
    tokens = set(re.findall(r'<input type="hidden" name="csrf_token" value="([^"]*)">', html))
    assert len(tokens) == 1, tokens
    return tokens.pop()


def sign_in(app, token: str = ADMIN) -> tuple[TestClient, str]:
    """A browser session: the sign-in form, then the token every form of its pages carries."""
    client = TestClient(app, follow_redirects=False)
    form = client.get("/ui/login")
    r = client.post("/ui/login", data={"token": token, "next": "/", "csrf_token": field_token(form.text)})
    assert r.status_code == 303, r.text
    return client, field_token(client.get("/ui/deployments").text)


def state(app, world) -> dict[str, object]:
    with app.state.controller.session() as session:
        return {"deployment": deployments.get_deployment(session, deployment_id=world["deployment"]).status,
                "rollout": rollouts.get_rollout(session, rollout_id=world["rollout"]).state,
                "rollouts": len(rollouts.list_rollouts(session, limit=100)),
                "incident": incidents.get_incident(session, incident_id=world["incident"]).state}


FORMS = {
    "cancel a deployment": (lambda w: f"/ui/deployments/{w['deployment']}/cancel", lambda w: {}, "deployment"),
    "create a rollout": (lambda w: "/ui/rollouts", lambda w: {"bundle": w["bundle"], "device_ids": "cam-01",
                                                             "template": "all-at-once", "confirm": "yes"},
                          "rollouts"),
    "pause a rollout": (lambda w: f"/ui/rollouts/{w['rollout']}/pause", lambda w: {"reason": "x"}, "rollout"),
    "close an incident": (lambda w: f"/ui/incidents/{w['incident']}/close", lambda w: {"reason": "x"}, "incident"),
}


@pytest.mark.parametrize("name", FORMS)
def test_a_form_post_without_the_sessions_token_is_refused_and_changes_nothing(app, world, name):
    url, data, changes = (f(world) if callable(f) else f for f in FORMS[name])
    with TestClient(app):
        client, token = sign_in(app)
        other_session_token = sign_in(app, token=operator(app))[1]
        before = state(app, world)
        for wrong in ("", "x" * 43, token[:-1] + ("A" if token[-1] != "A" else "B"), other_session_token):
            r = client.post(url, data=data | {"csrf_token": wrong})
            assert r.status_code == 403 and REFUSED in r.text, (wrong, r.status_code)
        assert state(app, world) == before
        r = client.post(url, data=data | {"csrf_token": token})
        assert r.status_code == 303, r.text
        after = state(app, world)
    assert after[changes] != before[changes]
    assert {k: v for k, v in after.items() if k != changes} == {k: v for k, v in before.items() if k != changes}


def operator(app) -> str:
    with app.state.controller.session() as session:
        return auth.create_token(session, name="olga", role="operator", actor="admin:test", now=time.time())[1]


def test_the_token_may_come_in_the_header_instead_of_the_field(app, world):
    with TestClient(app):
        client, token = sign_in(app)
        r = client.post(f"/ui/rollouts/{world['rollout']}/pause", data={"reason": "x"}, headers={"X-CSRF-Token": token})
        assert r.status_code == 303
        assert state(app, world)["rollout"] == "paused"


def routes(items, prefix: str = ""):
    """(path, methods) of every route of the app, through the routers it includes."""
    for route in items:
        if isinstance(route, APIRoute):
            yield prefix + route.path, route.methods
        elif hasattr(route, "original_router"):
            yield from routes(route.original_router.routes, prefix + route.include_context.prefix)


def test_every_ui_post_route_checks_the_token(app):
    """A form route added later without the check fails here."""
    posts = sorted(path for path, methods in routes(app.routes) if "POST" in methods and path.startswith("/ui/"))
    assert len(posts) >= 6 and "/ui/login" in posts and "/ui/logout" in posts
    with TestClient(app):
        client, _ = sign_in(app)
        for path in posts:
            url = re.sub(r"\{name\}", "pause", re.sub(r"\{(?!name)[^}]+\}", "1", path))   # "1": a valid int id too
            r = client.post(url, data={"reason": "x", "token": ADMIN})
            assert r.status_code == 403 and ("CSRF" in r.text or "sign in again" in r.text), (path, r.status_code)


def test_sign_in_needs_the_forms_nonce_and_sets_no_session_without_it(app):
    with TestClient(app):
        client = TestClient(app, follow_redirects=False)
        form = client.get("/ui/login")
        cookie = form.headers["set-cookie"].lower()
        assert "edgefleet_login=" in cookie and "httponly" in cookie and "samesite=strict" in cookie
        nonce = field_token(form.text)
        for data in ({"token": ADMIN}, {"token": ADMIN, "csrf_token": "forged"}):
            r = client.post("/ui/login", data=data)
            assert r.status_code == 403 and "sign in again" in r.text
            assert "edgefleet_ui=" not in r.headers.get("set-cookie", "")
            assert client.get("/ui/devices").status_code == 303          # not signed in
        assert client.cookies.get("edgefleet_login") == nonce          # double submit: cookie and field agree
        other = TestClient(app, follow_redirects=False)                # another browser's nonce is no use here
        assert other.post("/ui/login", data={"token": ADMIN, "csrf_token": nonce}).status_code == 403
        r = client.post("/ui/login", data={"token": ADMIN, "csrf_token": nonce})
        assert r.status_code == 303 and "samesite=strict" in r.headers["set-cookie"].lower()


def test_sign_out_needs_the_token_too(app):
    with TestClient(app):
        client, token = sign_in(app)
        assert client.post("/ui/logout").status_code == 403
        assert client.get("/ui/devices").status_code == 200            # still signed in
        assert client.post("/ui/logout", data={"csrf_token": token}).status_code == 303
        assert client.get("/ui/devices").status_code == 303            # to the sign-in form


def test_the_sessions_token_ends_with_the_session(app):
    with TestClient(app):
        client, token = sign_in(app, token=operator(app))
        again, token_again = sign_in(app, token=ADMIN)
        assert token != token_again                                    # bound to the session's secret
        assert field_token(client.get("/ui/devices").text) == token    # stable while the session lasts
