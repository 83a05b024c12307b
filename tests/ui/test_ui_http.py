"""The UI's HTTP behaviour without a browser: login cookie, redirects, security headers, static
files and escaping of query text (create_app with a stand-in MQTT transport)."""

from __future__ import annotations

import time

import pytest
from fastapi.testclient import TestClient

from edgefleet.cloud.services import auth
from edgefleet.cloud.ui import csrf

ADMIN = "eft_ui-http-admin"


class NoTransport:
    connected = True

    def start(self) -> None: ...

    def stop(self) -> None: ...

    def publish(self, topic: str, payload: bytes) -> bool:
        return True


def login(client: TestClient, token: str = ADMIN, next: str = "/"):
    """Sign in as a browser does (the form's CSRF nonce first); later posts carry the session's CSRF
    token in the X-CSRF-Token header, as the pages' forms carry it in a field."""
    client.get("/ui/login")
    r = client.post("/ui/login", data={"token": token, "next": next,
                                       "csrf_token": client.cookies.get(csrf.LOGIN_COOKIE, "")})
    client.headers[csrf.HEADER] = csrf.session_token(token)
    return r


def test_pages_redirect_to_login_keeping_the_target(client):
    r = client.get("/ui/devices?tag=site-a")
    assert r.status_code == 303
    assert r.headers["location"] == "/ui/login?next=/ui/devices%3Ftag%3Dsite-a"


def test_login_sets_a_strict_httponly_cookie_and_follows_next(client):
    r = login(client, next="/ui/deployments")
    assert r.status_code == 303 and r.headers["location"] == "/ui/deployments"
    cookie = r.headers["set-cookie"].lower()
    assert "httponly" in cookie and "samesite=strict" in cookie and "path=/" in cookie
    assert client.get("/ui/deployments").status_code == 200


@pytest.mark.parametrize("target", ["//evil.example/", "https://evil.example/", "/\\evil.example", "javascript:x"])
def test_login_never_redirects_off_site(client, target):
    r = login(client, next=target)
    assert r.status_code == 303 and r.headers["location"] == "/"


def test_wrong_token_gets_401_and_no_cookie(client):
    r = login(client, token="eft_wrong")
    assert r.status_code == 401
    assert "set-cookie" not in r.headers
    assert "not valid" in r.text


def test_revoked_token_ends_the_session(client, app):
    controller = app.state.controller
    with controller.session() as session:
        row, secret = auth.create_token(session, name="viewer", role="viewer", actor="admin:test", now=time.time())
        token_id = row.id
    assert login(client, token=secret).status_code == 303
    assert client.get("/").status_code == 200
    with controller.session() as session:
        auth.revoke_token(session, token_id=token_id, actor="admin:test", now=time.time())
    r = client.get("/")
    assert r.status_code == 303 and r.headers["location"].startswith("/ui/login")
    assert 'edgefleet_ui=""' in r.headers.get("set-cookie", "") or "Max-Age=0" in r.headers.get("set-cookie", "")


def test_logout_clears_the_cookie(client):
    login(client)
    r = client.post("/ui/logout")
    assert r.status_code == 303 and r.headers["location"] == "/ui/login"
    assert client.get("/").status_code == 303


def test_pages_send_security_headers(client):
    login(client)
    r = client.get("/")
    csp = r.headers["content-security-policy"]
    assert "default-src 'self'" in csp and "unsafe-inline" not in csp and "frame-ancestors 'none'" in csp
    assert r.headers["x-content-type-options"] == "nosniff"
    assert r.headers["cache-control"] == "no-store"


def test_pages_load_nothing_from_other_origins(client):
    login(client)
    for path in ("/", "/ui/devices", "/ui/bundles", "/ui/deployments", "/ui/login"):
        html = client.get(path, follow_redirects=True).text
        assert "http://" not in html and "https://" not in html, path


def test_query_text_is_escaped(client):
    login(client)
    r = client.get("/ui/devices", params={"q": '"><script>alert(1)</script>', "tag": "<b>x</b>"})
    assert r.status_code == 200
    assert "<script>alert(1)" not in r.text and "&lt;script&gt;" in r.text


def test_static_files_and_no_traversal(client):
    r = client.get("/ui/static/ui.css")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/css")
    assert client.get("/ui/static/ui.js").headers["content-type"].startswith("text/javascript")
    for name in ("..%2Fui.py", ".hidden.css", "missing.css", "ui.py"):
        assert client.get(f"/ui/static/{name}").status_code == 404, name


def test_unknown_things_are_404_pages(client):
    login(client)
    for path in ("/ui/devices/nope", "/ui/bundles/" + "0" * 64, "/ui/deployments/dep-nope"):
        r = client.get(path)
        assert r.status_code == 404 and "Not found" in r.text, path


def test_empty_controller_pages_render(client):
    login(client)
    overview = client.get("/").text
    assert "No deployment is rolling out" in overview
    assert "No device matches" in client.get("/ui/devices").text
    assert "No bundle yet" in client.get("/ui/bundles").text
    assert "No deployment" in client.get("/ui/deployments").text


@pytest.fixture
def seeded(app, client):
    from .ui_fleet import seed
    return seed(app.state.controller, now=time.time())


def test_only_operators_see_and_use_the_cancel_button(client, app, seeded):
    with app.state.controller.session() as session:
        _, viewer = auth.create_token(session, name="viewer", role="viewer", actor="admin:test", now=time.time())
    path = f"/ui/deployments/{seeded.deployment_id}"
    login(client, token=viewer)
    assert 'id="cancel"' not in client.get(path).text
    r = client.post(f"{path}/cancel")
    assert r.status_code == 403 and "needs operator" in r.text
    login(client)
    assert 'id="cancel"' in client.get(path).text


def test_cancel_from_another_origin_is_refused(client, seeded):
    login(client)
    path = f"/ui/deployments/{seeded.deployment_id}"
    r = client.post(f"{path}/cancel", headers={"Origin": "http://evil.example"})
    assert r.status_code == 403
    assert "badge st-run" in client.get(path).text                    # still active
    r = client.post(f"{path}/cancel", headers={"Origin": "http://testserver"})
    assert r.status_code == 303 and r.headers["location"] == path
    assert ">cancelled<" in client.get(path).text
