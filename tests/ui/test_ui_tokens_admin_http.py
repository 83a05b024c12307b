"""Every API token on ``/ui/tokens`` over plain HTTP (create_app with a stand-in MQTT transport): an
admin sees people's and shared tokens with whose they are, and revokes any of them behind a
confirmation, through the service ``DELETE /api/v1/tokens/{id}`` calls (the same audit entry), after
which the REST API refuses the token (401); anyone else sees and revokes only their own; posts without
the CSRF token or from another origin are refused and change nothing."""

from __future__ import annotations

import re
import time

from fastapi.testclient import TestClient

from edgefleet.cloud.deps import password_policy
from edgefleet.cloud.services import audit, auth, users
from edgefleet.cloud.ui import csrf

from .test_ui_http import login


def person(app, name: str, role: str, token_name: str) -> tuple[int, str]:
    """A user and a personal token of theirs: its id and secret."""
    with app.state.controller.session() as session:
        user = users.find_user(session, name=name) or users.create_user(
            session, name=name, role=role, actor="admin:test", now=time.time(),
            policy=password_policy(app.state.controller))
        row, secret = auth.create_token(session, name=token_name, role=role, actor="admin:test", now=time.time(),
                                        user=user, expires_at=time.time() + 86400)
        return row.id or 0, secret


def shared(app, name: str, role: str = "operator") -> tuple[int, str]:
    with app.state.controller.session() as session:
        row, secret = auth.create_token(session, name=name, role=role, actor="admin:test", now=time.time())
        return row.id or 0, secret


def api_status(app, secret: str) -> int:
    """What the REST API answers the token (a fresh client: no UI session cookie)."""
    with TestClient(app) as rest:
        return rest.get("/api/v1/me", headers={"Authorization": f"Bearer {secret}"}).status_code


def rows(page: str) -> dict[str, str]:
    """Token id -> its row's state, in the admins' table."""
    table = re.search(r'<table class="table" id="every-token">(.*?)</table>', page, re.S)
    assert table, "no table of every token"
    return dict(re.findall(r'<tr data-token="(\d+)" data-state="(\w+)">', table.group(1)))


def revokes(app) -> list:
    with app.state.controller.session() as session:
        return audit.list_entries(session, action="token.revoke")


def test_an_admin_sees_every_token_with_whose_it_is(client, app):
    otto_id, _ = person(app, "otto", "operator", "otto-laptop")
    ci_id, _ = shared(app, "ci-pipeline")
    login(client)
    page = client.get("/ui/tokens").text
    listed = rows(page)
    assert listed[str(otto_id)] == "active" and listed[str(ci_id)] == "active"
    row = re.search(rf'<tr data-token="{otto_id}".*?</tr>', page, re.S)
    assert row and "otto-laptop" in row.group(0) and "otto" in row.group(0) and "operator" in row.group(0)
    row = re.search(rf'<tr data-token="{ci_id}".*?</tr>', page, re.S)
    assert row and "ci-pipeline" in row.group(0) and ">shared<" in row.group(0) and "never" in row.group(0)
    assert 'name="confirm" value="yes" required' in page


def test_an_admin_revokes_someone_elses_token_after_confirming_and_the_api_refuses_it(client, app):
    otto_id, otto = person(app, "otto", "operator", "otto-laptop")
    login(client)
    assert api_status(app, otto) == 200
    r = client.post(f"/ui/tokens/{otto_id}/revoke")                       # not confirmed
    assert r.status_code == 400 and 'data-where="confirm"' in r.text and "Nothing was revoked" in r.text
    assert api_status(app, otto) == 200 and revokes(app) == []
    r = client.post(f"/ui/tokens/{otto_id}/revoke", data={"confirm": "yes"})
    assert r.status_code == 303 and r.headers["location"] == "/ui/tokens#all-tokens"
    assert api_status(app, otto) == 401
    entry = revokes(app)[0]
    assert (entry.actor, entry.target, entry.details) == ("admin:admin", f"token:{otto_id}", {"name": "otto-laptop"})
    assert rows(client.get("/ui/tokens").text)[str(otto_id)] == "revoked"


def test_an_admin_revokes_a_shared_token(client, app):
    ci_id, ci = shared(app, "ci-pipeline")
    login(client)
    assert client.post(f"/ui/tokens/{ci_id}/revoke", data={"confirm": "yes"}).status_code == 303
    assert api_status(app, ci) == 401
    assert [e.target for e in revokes(app)] == [f"token:{ci_id}"]
    assert client.post("/ui/tokens/999999/revoke", data={"confirm": "yes"}).status_code == 404


def test_a_person_who_is_not_an_admin_sees_and_revokes_only_their_own(client, app):
    vera_id, vera = person(app, "vera", "operator", "vera-cli")
    otto_id, otto = person(app, "otto", "operator", "otto-laptop")
    ci_id, ci = shared(app, "ci-pipeline")
    login(client, token=vera)
    page = client.get("/ui/tokens").text
    assert 'id="every-token"' not in page and 'id="all-tokens"' not in page
    assert "vera-cli" in page and "otto-laptop" not in page and "ci-pipeline" not in page
    for other in (otto_id, ci_id):
        assert client.post(f"/ui/tokens/{other}/revoke", data={"confirm": "yes"}).status_code == 404
    assert api_status(app, otto) == 200 and api_status(app, ci) == 200 and revokes(app) == []
    own_id, own = person(app, "vera", "operator", "vera-spare")
    r = client.post(f"/ui/tokens/{own_id}/revoke")                        # one's own: no box to tick
    assert r.status_code == 303 and r.headers["location"] == "/ui/tokens"
    assert api_status(app, own) == 401 and api_status(app, vera) == 200
    assert [e.actor for e in revokes(app)] == ["user:vera"]


def test_a_viewer_sees_only_their_own(client, app):
    _, viv = person(app, "viv", "viewer", "viv-cli")
    otto_id, otto = person(app, "otto", "operator", "otto-laptop")
    login(client, token=viv)
    assert 'id="every-token"' not in client.get("/ui/tokens").text
    assert client.post(f"/ui/tokens/{otto_id}/revoke", data={"confirm": "yes"}).status_code == 404
    assert api_status(app, otto) == 200


def test_without_the_csrf_token_or_from_another_origin_nothing_is_revoked(client, app):
    otto_id, otto = person(app, "otto", "operator", "otto-laptop")
    login(client)
    good = client.headers.pop(csrf.HEADER)
    r = client.post(f"/ui/tokens/{otto_id}/revoke", data={"confirm": "yes"})
    assert r.status_code == 403 and "no valid CSRF token" in r.text
    r = client.post(f"/ui/tokens/{otto_id}/revoke", data={"confirm": "yes", "csrf_token": good},
                    headers={"Origin": "http://evil.example"})
    assert r.status_code == 403
    assert api_status(app, otto) == 200 and revokes(app) == []
    r = client.post(f"/ui/tokens/{otto_id}/revoke", data={"confirm": "yes", "csrf_token": good})
    assert r.status_code == 303 and api_status(app, otto) == 401
