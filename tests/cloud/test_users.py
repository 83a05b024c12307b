"""People and roles (docs/security.md, "People and roles"): argon2id passwords (hashing, verification,
rehash on new parameters, one verification for unknown users), the role ranks, users through the API
(admin only, precise refusals that change nothing), personal tokens (scoped to at most the owner's and
the caller's role, expiring, revocable, last use shown, dead with a disabled owner), every audit entry
naming the person, the approval rule (no self-approval across two tokens of one user, approver role
needed), password sign-in to the UI (a session of the user, revoked at sign-out, failures locked out),
and the ``edgefleet users``/``tokens`` commands."""

from __future__ import annotations

import base64
import io
import json

import pytest
from argon2 import PasswordHasher
from fastapi.testclient import TestClient

from edgefleet.cloud.app import create_app
from edgefleet.cloud.cli import users as cli_users
from edgefleet.cloud.services import auth, users
from edgefleet.cloud.services.auth import LAST_USED_EVERY_S, Principal
from edgefleet.cloud.services.users import PasswordPolicy
from edgefleet.cloud.vocabulary import Role
from edgefleet.protocol.errors import InvalidRequestError

from cloudkit import ADMIN, cli_runner
from simfleet import Sim

CHEAP = PasswordPolicy(min_length=12, time_cost=1, memory_kib=1024, parallelism=1)
"""Fast argon2 parameters for the tests (the controller's defaults cost ~50 ms a hash)."""
PASSWORD = "correct horse battery"


@pytest.fixture
def settings(settings):
    return settings.model_copy(update={"password_time_cost": CHEAP.time_cost, "password_memory_kib": CHEAP.memory_kib,
                                       "password_parallelism": CHEAP.parallelism})


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def basic(name: str, password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{name}:{password}".encode()).decode()}


def add_user(client, name: str, role: str, password: str = PASSWORD) -> dict:
    r = client.post("/api/v1/users", json={"name": name, "role": role, "password": password})
    assert r.status_code == 201, r.text
    return r.json()


def token_of(client, name: str, role: str | None = None, password: str = PASSWORD, **body) -> dict:
    """A personal token of ``name``, got with their password."""
    r = client.post("/api/v1/me/tokens", json={"name": "laptop", "role": role, **body}, headers=basic(name, password))
    assert r.status_code == 201, r.text
    return r.json()


# ---------------------------------------------------------------- passwords (the service)

def test_passwords_are_stored_as_argon2id_and_verified(controller, clock):
    with controller.session() as session:
        user = users.create_user(session, name="alice", role="operator", password=PASSWORD, actor="system",
                                 now=clock(), policy=CHEAP)
        stored = user.password_hash
    assert stored is not None and stored.startswith("$argon2id$v=19$m=1024,t=1,p=1$") and PASSWORD not in stored
    assert users.password_matches(stored, PASSWORD, policy=CHEAP)
    assert not users.password_matches(stored, PASSWORD + "!", policy=CHEAP)
    with controller.session() as session:
        assert users.verify_password(session, name="alice", password=PASSWORD, now=clock() + 5,
                                     policy=CHEAP).last_login_at == clock() + 5
        with pytest.raises(auth.AuthenticationError, match="unknown user name or wrong password"):
            users.verify_password(session, name="alice", password="wrong password!", now=clock(), policy=CHEAP)


@pytest.mark.parametrize(("password", "why"), [("short", "at least 12"), (" padded password ", "white space"),
                                                ("x" * 1025, "longer than 1024")])
def test_a_weak_or_odd_password_is_refused_with_what_to_do(controller, clock, password, why):
    with controller.session() as session, pytest.raises(InvalidRequestError, match=why) as refused:
        users.create_user(session, name="bob", role="viewer", password=password, actor="system", now=clock(),
                          policy=CHEAP)
    assert refused.value.where == "password"
    with controller.session() as session:
        assert users.find_user(session, name="bob") is None


def test_a_hash_made_with_old_parameters_is_renewed_at_the_next_sign_in(controller, clock):
    old = PasswordPolicy(min_length=12, time_cost=2, memory_kib=2048, parallelism=1)
    with controller.session() as session:
        users.create_user(session, name="carol", role="viewer", password=PASSWORD, actor="system", now=clock(),
                          policy=old)
    with controller.session() as session:
        users.verify_password(session, name="carol", password=PASSWORD, now=clock(), policy=CHEAP)
    with controller.session() as session:
        renewed = users.get_user(session, name="carol").password_hash
    assert renewed is not None and renewed.startswith("$argon2id$v=19$m=1024,t=1,p=1$")
    assert users.password_matches(renewed, PASSWORD, policy=CHEAP)


def test_every_refused_sign_in_costs_one_verification_and_says_the_same(controller, clock, monkeypatch):
    with controller.session() as session:
        users.create_user(session, name="dora", role="viewer", password=PASSWORD, actor="system", now=clock(),
                          policy=CHEAP)
        users.create_user(session, name="eve", role="viewer", password=PASSWORD, actor="system", now=clock(),
                          policy=CHEAP)
        users.create_user(session, name="nopass", role="viewer", actor="system", now=clock(), policy=CHEAP)
        users.update_user(session, name="eve", disabled=True, actor="system", now=clock())
    calls = []
    real = PasswordHasher.verify
    monkeypatch.setattr(PasswordHasher, "verify", lambda self, h, p: calls.append(h) or real(self, h, p))
    messages = set()
    for name, password in [("nobody", PASSWORD), ("dora", "wrong password!"), ("eve", PASSWORD),
                           ("nopass", PASSWORD), ("Not A Name!", PASSWORD)]:
        with controller.session() as session, pytest.raises(auth.AuthenticationError) as refused:
            users.verify_password(session, name=name, password=password, now=clock(), policy=CHEAP)
        messages.add(refused.value.message)
    assert len(calls) == 5 and messages == {users.SIGN_IN_REFUSED}


# ---------------------------------------------------------------- roles

def test_roles_rank_viewer_operator_approver_admin():
    assert [auth.rank(r) for r in (Role.VIEWER, Role.OPERATOR, Role.APPROVER, Role.ADMIN)] == [1, 2, 3, 4]
    assert auth.rank(Role.DEVICE) == 0 and auth.rank("root") == 0
    approver = Principal(name="ann", role=Role.APPROVER, user="ann")
    assert approver.refusal(Role.OPERATOR) is None and approver.refusal(Role.APPROVER) is None
    assert approver.refusal(Role.ADMIN) == "ann (approver) may not do this; needs admin"
    assert approver.actor == "user:ann" and Principal(name="ci", role=Role.OPERATOR).actor == "operator:ci"
    assert Principal(name="cam-1", role=Role.DEVICE, device_id="cam-1").refusal(Role.VIEWER) is not None


# ---------------------------------------------------------------- users through the API

def test_an_admin_creates_lists_and_changes_users(client):
    made = add_user(client, "alice", "operator")
    assert made == {"name": "alice", "display_name": "", "role": "operator", "created_at": made["created_at"],
                    "created_by": "admin:admin", "disabled_at": None, "last_login_at": None, "has_password": True}
    assert client.patch("/api/v1/users/alice", json={"role": "approver", "display_name": "Alice Li"}).json()["role"] \
        == "approver"
    listed = client.get("/api/v1/users").json()
    assert [(u["name"], u["role"], u["display_name"]) for u in listed] == [("alice", "approver", "Alice Li")]
    audit = client.get("/api/v1/audit", params={"target": "user:alice"}).json()
    assert [e["action"] for e in audit] == ["user.update", "user.create"]
    assert audit[0]["details"]["role"] == ["operator", "approver"]


@pytest.mark.parametrize(("body", "status", "where"), [
    ({"name": "Alice", "role": "viewer", "password": PASSWORD}, 422, "body.name"),
    ({"name": "alice", "role": "device", "password": PASSWORD}, 422, "body.role"),
    ({"name": "alice", "role": "viewer", "password": "short"}, 400, "password"),
    ({"name": "alice", "role": "viewer", "password": PASSWORD, "admin": True}, 422, "body.admin"),
])
def test_a_bad_user_is_refused_with_where_and_nothing_is_stored(client, body, status, where):
    r = client.post("/api/v1/users", json=body)
    assert r.status_code == status and r.json()["error"]["where"] == where, r.text
    assert client.get("/api/v1/users").json() == []


def test_only_admins_manage_users_and_no_one_demotes_or_disables_themselves(client):
    add_user(client, "root", "admin")
    add_user(client, "olga", "operator")
    olga = token_of(client, "olga")["token"]
    for method, path, body in [("GET", "/api/v1/users", None),
                               ("POST", "/api/v1/users", {"name": "x", "role": "admin"}),
                               ("PATCH", "/api/v1/users/olga", {"role": "admin"}),
                               ("POST", "/api/v1/users/root/password", {"password": "a new long password"})]:
        r = client.request(method, path, json=body, headers=bearer(olga))
        assert r.status_code == 403 and r.json()["error"]["code"] == "forbidden", (method, path)
    assert client.post("/api/v1/users", json={"name": "olga", "role": "viewer"}).status_code == 409
    root = token_of(client, "root")["token"]
    r = client.patch("/api/v1/users/root", json={"disabled": True}, headers=bearer(root))
    assert r.status_code == 409 and "your own role" in r.json()["error"]["message"]
    assert {u["name"]: u["role"] for u in client.get("/api/v1/users").json()} == {"olga": "operator", "root": "admin"}


def test_users_change_their_own_password_with_the_current_one_and_admins_reset_any(client):
    add_user(client, "alice", "viewer")
    mine = token_of(client, "alice")["token"]
    r = client.post("/api/v1/users/alice/password", json={"password": "another long password"}, headers=bearer(mine))
    assert r.status_code == 403 and r.json()["error"]["where"] == "current_password"
    r = client.post("/api/v1/users/alice/password", json={"password": "too short", "current_password": PASSWORD},
                    headers=bearer(mine))
    assert r.status_code == 400 and "at least 12" in r.json()["error"]["message"]
    assert client.post("/api/v1/users/alice/password", headers=bearer(mine),
                       json={"password": "another long password", "current_password": PASSWORD}).status_code == 200
    assert client.post("/api/v1/me/tokens", json={"name": "x"}, headers=basic("alice", PASSWORD)).status_code == 401
    assert client.post("/api/v1/users/alice/password", json={"password": "reset by the admin"}).status_code == 200
    token_of(client, "alice", password="reset by the admin")
    assert client.post("/api/v1/users/nobody/password", json={"password": "reset by the admin"}).status_code == 404


# ---------------------------------------------------------------- personal tokens

def test_a_token_has_at_most_its_owners_role_and_its_makers(client):
    add_user(client, "olga", "operator")
    for role in ("approver", "admin"):
        r = client.post("/api/v1/me/tokens", json={"name": "x", "role": role}, headers=basic("olga", PASSWORD))
        assert r.status_code == 403 and r.json()["error"]["where"] == "role", role
    default = token_of(client, "olga")
    assert default["role"] == "operator" and default["user_id"] is not None
    viewer = token_of(client, "olga", role="viewer")["token"]
    r = client.post("/api/v1/me/tokens", json={"name": "y", "role": "operator"}, headers=bearer(viewer))
    assert r.status_code == 403
    assert "viewer role may not make one with the operator role" in r.json()["error"]["message"]
    me = client.get("/api/v1/me", headers=bearer(viewer)).json()
    assert me["actor"] == "user:olga" and me["role"] == "viewer" and me["user"]["role"] == "operator"
    assert len(client.get("/api/v1/me/tokens", headers=bearer(viewer)).json()) == 2


def test_a_shared_token_has_no_personal_tokens(client):
    r = client.get("/api/v1/me/tokens")
    assert r.status_code == 403 and "shared token" in r.json()["error"]["message"]
    me = client.get("/api/v1/me").json()
    assert (me["actor"], me["role"], me["user"]) == ("admin:admin", "admin", None)


def test_a_token_stops_at_its_expiry(client, clock):
    add_user(client, "alice", "viewer")
    token = token_of(client, "alice", expires_in_s=3600)
    assert token["expires_at"] == clock() + 3600
    clock.advance(3599)
    assert client.get("/api/v1/me", headers=bearer(token["token"])).status_code == 200
    clock.advance(1)
    r = client.get("/api/v1/me", headers=bearer(token["token"]))
    assert r.status_code == 401 and "expired" in r.json()["error"]["message"]
    for lifetime in (59, 367 * 86400):
        r = client.post("/api/v1/me/tokens", json={"name": "x", "expires_in_s": lifetime},
                        headers=basic("alice", PASSWORD))
        assert r.status_code == 422 and r.json()["error"]["where"] == "body.expires_in_s"


def test_a_revoked_token_stops_and_no_one_revokes_anothers(client):
    add_user(client, "alice", "viewer")
    add_user(client, "bob", "viewer")
    alices, bobs = token_of(client, "alice"), token_of(client, "bob")
    r = client.delete(f"/api/v1/me/tokens/{alices['id']}", headers=bearer(bobs["token"]))
    assert r.status_code == 404 and client.get("/api/v1/me", headers=bearer(alices["token"])).status_code == 200
    revoked = client.delete(f"/api/v1/me/tokens/{alices['id']}", headers=bearer(alices["token"])).json()
    assert revoked["revoked_at"] is not None
    assert client.get("/api/v1/me", headers=bearer(alices["token"])).status_code == 401


def test_a_disabled_users_tokens_stop_and_work_again_when_enabled(client):
    add_user(client, "alice", "operator")
    token = token_of(client, "alice")["token"]
    assert client.patch("/api/v1/users/alice", json={"disabled": True}).json()["disabled_at"] is not None
    assert client.get("/api/v1/me", headers=bearer(token)).status_code == 401
    assert client.post("/api/v1/me/tokens", json={"name": "x"}, headers=basic("alice", PASSWORD)).status_code == 401
    client.patch("/api/v1/users/alice", json={"disabled": False})
    assert client.get("/api/v1/me", headers=bearer(token)).status_code == 200


def test_a_demoted_users_tokens_act_with_the_new_role_at_once(client):
    add_user(client, "alice", "admin")
    token = token_of(client, "alice")["token"]
    assert client.get("/api/v1/users", headers=bearer(token)).status_code == 200
    client.patch("/api/v1/users/alice", json={"role": "viewer"})
    assert client.get("/api/v1/users", headers=bearer(token)).status_code == 403
    assert client.get("/api/v1/me", headers=bearer(token)).json()["role"] == "viewer"


def test_last_use_is_shown_and_written_at_most_once_a_minute(client, clock):
    add_user(client, "alice", "viewer")
    token = token_of(client, "alice")
    assert token["last_used_at"] is None
    start = clock()
    client.get("/api/v1/me", headers=bearer(token["token"]))
    clock.advance(LAST_USED_EVERY_S - 1)
    shown = {t["id"]: t for t in client.get("/api/v1/me/tokens", headers=bearer(token["token"])).json()}
    assert shown[token["id"]]["last_used_at"] == start
    clock.advance(1)
    shown = {t["id"]: t for t in client.get("/api/v1/me/tokens", headers=bearer(token["token"])).json()}
    assert shown[token["id"]]["last_used_at"] == start + LAST_USED_EVERY_S
    assert {t["id"] for t in client.get("/api/v1/tokens").json()} >= {token["id"]}   # the admin sees it too


def test_tokens_are_stored_hashed(client, controller):
    add_user(client, "alice", "viewer")
    token = token_of(client, "alice")
    with controller.session() as session:
        row = session.get(auth.ApiToken, token["id"])
        assert row is not None and row.token_hash == auth.hash_secret(token["token"])
        assert token["token"] not in row.model_dump_json()


# ---------------------------------------------------------------- audit and approval

@pytest.fixture
def protected(fleet, transport, clock, make_bundle, upload):
    old, new = make_bundle(name="det", version="1.0.0", build=1), make_bundle(name="det", version="1.1.0", build=2)
    upload(old)
    upload(new)
    Sim(fleet, transport, clock, old, new, n=2, tags=("site", "production"))
    return new


def create_rollout(client, bundle, token: str) -> dict:
    r = client.post("/api/v1/rollouts", json={"bundle": bundle.digest, "selector": {"tags": ["site"]},
                                              "policy": {"stages": [{"name": "all", "select": "rest"}]}},
                    headers=bearer(token))
    assert r.status_code == 201, r.text
    return r.json()


def test_no_one_approves_their_own_rollout_with_another_of_their_tokens(client, protected):
    add_user(client, "ann", "approver")
    first, second = token_of(client, "ann")["token"], token_of(client, "ann")["token"]
    ro = create_rollout(client, protected, first)
    assert ro["state"] == "waiting_approval" and ro["created_by"] == "user:ann"
    r = client.post(f"/api/v1/rollouts/{ro['id']}/approve", headers=bearer(second))
    assert r.status_code == 403 and "other than its creator" in r.json()["error"]["message"]
    assert client.get(f"/api/v1/rollouts/{ro['id']}").json()["state"] == "waiting_approval"


def test_an_approver_approves_and_an_operator_may_not(client, protected):
    add_user(client, "olga", "operator")
    add_user(client, "ann", "approver")
    add_user(client, "abe", "approver")
    ro = create_rollout(client, protected, token_of(client, "olga")["token"])
    r = client.post(f"/api/v1/rollouts/{ro['id']}/approve", json={"reason": "looks fine"},
                    headers=bearer(token_of(client, "abe", role="operator")["token"]))
    assert r.status_code == 403 and "needs the approver role" in r.json()["error"]["message"]
    add_user(client, "otto", "operator")
    r = client.post(f"/api/v1/rollouts/{ro['id']}/approve", headers=bearer(token_of(client, "otto")["token"]))
    assert r.status_code == 403 and r.json()["error"]["hint"].startswith("ask someone with the approver")
    approved = client.post(f"/api/v1/rollouts/{ro['id']}/approve", json={"reason": "looks fine"},
                           headers=bearer(token_of(client, "ann")["token"]))
    assert approved.status_code == 200 and approved.json()["state"] == "running"
    assert approved.json()["approved_by"] == "user:ann"


def test_every_audit_entry_names_the_person(client, protected):
    add_user(client, "olga", "operator")
    add_user(client, "ann", "approver")
    ro = create_rollout(client, protected, token_of(client, "olga")["token"])
    client.post(f"/api/v1/rollouts/{ro['id']}/approve", headers=bearer(token_of(client, "ann")["token"]))
    entries = client.get("/api/v1/audit", params={"limit": 100}).json()
    actors = {(e["action"], e["actor"]) for e in entries}
    assert {("rollout.create", "user:olga"), ("rollout.approve", "user:ann"), ("user.create", "admin:admin"),
            ("token.create", "user:olga"), ("token.create", "user:ann")} <= actors, actors


# ---------------------------------------------------------------- the UI's password sign-in

def ui_client(app, address: str = "192.0.2.10") -> TestClient:
    return TestClient(app, client=(address, 50000), follow_redirects=False)


def sign_in(ui: TestClient, **form: str):
    ui.get("/ui/login")
    return ui.post("/ui/login", data={"csrf_token": ui.cookies.get("edgefleet_login"), **form})


def test_a_password_sign_in_opens_a_session_of_the_user_that_sign_out_ends(app, client, clock):
    add_user(client, "alice", "operator")
    ui = ui_client(app)
    r = sign_in(ui, username="alice", password=PASSWORD, next="/ui/devices")
    assert r.status_code == 303 and r.headers["location"] == "/ui/devices"
    cookie = ui.cookies.get("edgefleet_ui")
    page = ui.get("/ui/devices")
    assert page.status_code == 200 and "alice" in page.text and "operator" in page.text
    sessions = client.get("/api/v1/tokens").json()
    session_row = next(t for t in sessions if t["ui_session"])
    assert session_row["role"] == "operator" and session_row["expires_at"] == clock() + 12 * 3600
    assert client.get("/api/v1/audit", params={"action": "user.sign_in"}).json()[0]["actor"] == "user:alice"
    assert client.get("/api/v1/users").json()[0]["last_login_at"] == clock()
    from edgefleet.cloud.ui import csrf
    out = ui.post("/ui/logout", data={"csrf_token": csrf.session_token(cookie)})
    assert out.status_code == 303
    ui.cookies.set("edgefleet_ui", cookie)   # a stolen copy of the cookie is dead too
    assert ui.get("/ui/devices").status_code == 303
    assert client.get("/api/v1/me", headers=bearer(cookie)).status_code == 401


def test_a_token_sign_in_still_works_and_sign_out_leaves_the_token_alive(app, client):
    add_user(client, "alice", "viewer")
    token = token_of(client, "alice")["token"]
    ui = ui_client(app)
    assert sign_in(ui, token=token).status_code == 303
    assert "alice" in ui.get("/ui/devices").text
    from edgefleet.cloud.ui import csrf
    ui.post("/ui/logout", data={"csrf_token": csrf.session_token(token)})
    assert client.get("/api/v1/me", headers=bearer(token)).status_code == 200


@pytest.fixture
def limited_app(settings, clock, transport):
    return create_app(settings.model_copy(update={"auth_failure_limit": 3, "auth_failure_window_s": 60.0}),
                      clock=clock, transport_factory=lambda url, on_message: transport, reconcile_in_background=False)


def test_wrong_passwords_are_refused_and_lock_the_address_out(limited_app, clock):
    with TestClient(limited_app) as admin:
        admin.headers["Authorization"] = f"Bearer {ADMIN}"
        add_user(admin, "alice", "operator")
        ui = ui_client(limited_app, "192.0.2.20")
        for _ in range(3):
            r = sign_in(ui, username="alice", password="wrong password!")
            assert r.status_code == 401 and "Unknown user name or wrong password" in r.text
            assert "edgefleet_ui" not in ui.cookies
        r = sign_in(ui, username="alice", password=PASSWORD)
        assert r.status_code == 429 and "edgefleet_ui" not in ui.cookies
        api = ui_client(limited_app, "192.0.2.21")
        for _ in range(3):
            assert api.post("/api/v1/me/tokens", json={"name": "x"},
                            headers=basic("alice", "wrong password!")).status_code == 401
        assert api.post("/api/v1/me/tokens", json={"name": "x"}, headers=basic("alice", PASSWORD)).status_code == 429
        clock.advance(60)
        assert sign_in(ui, username="alice", password=PASSWORD).status_code == 303


# ---------------------------------------------------------------- the commands

@pytest.fixture
def run(client, capsys, monkeypatch):
    return cli_runner(capsys, monkeypatch, client, cli_users)


def stdin(monkeypatch, *lines: str) -> None:
    monkeypatch.setattr("sys.stdin", io.StringIO("".join(f"{line}\n" for line in lines)))


def test_the_first_admin_and_their_token_from_the_command_line(run, monkeypatch, client):
    stdin(monkeypatch, PASSWORD)
    out = run("users", "create", "root", "--role", "admin", "--password-stdin")
    assert "user root (admin) created" in out
    stdin(monkeypatch, PASSWORD)
    created = json.loads(run("tokens", "create", "laptop", "--user", "root", "--password-stdin", "--expires", "30d",
                             "--json"))
    assert created["role"] == "admin" and created["expires_at"] - created["created_at"] == 30 * 86400
    assert client.get("/api/v1/me", headers=bearer(created["token"])).json()["actor"] == "user:root"
    run("users", "create", "olga", "--role", "operator", "--no-password")
    run("users", "set-role", "olga", "approver")
    assert "disabled" in run("users", "disable", "olga")
    listed = json.loads(run("users", "list", "--json"))
    assert [(u["name"], u["role"], u["disabled_at"] is not None, u["has_password"]) for u in listed] == [
        ("olga", "approver", True, False), ("root", "admin", False, True)]
    stdin(monkeypatch, "a new password for olga")
    assert "has a new password" in run("users", "passwd", "olga", "--password-stdin")


def test_the_commands_refuse_with_one_line(run, monkeypatch):
    assert "is not a role" in run("users", "create", "x", "--role", "root", "--no-password", rc=2)
    assert "is not a duration" in run("tokens", "create", "x", "--expires", "soon", rc=2)
    stdin(monkeypatch)
    assert "no password on stdin" in run("users", "create", "x", "--role", "viewer", "--password-stdin", rc=2)
    stdin(monkeypatch, "short")
    out = run("users", "create", "x", "--role", "viewer", "--password-stdin", rc=1)
    assert "at least 12" in out and "Traceback" not in out


def test_the_bootstrap_admin_token_is_made_only_while_no_admin_exists(controller, clock):
    with controller.session() as session:
        for row in auth.list_tokens(session):
            auth.revoke_token(session, token_id=row.id, actor="system", now=clock())
    with controller.session() as session:
        first = auth.ensure_admin_token(session, secret=None, now=clock())
    assert first is not None and first.startswith("eft_")
    with controller.session() as session:
        auth.revoke_token(session, token_id=auth.list_tokens(session)[-1].id, actor="system", now=clock())
        users.create_user(session, name="root", role="admin", password=PASSWORD, actor="system", now=clock(),
                          policy=CHEAP)
    with controller.session() as session:
        assert auth.ensure_admin_token(session, secret=None, now=clock()) is None   # root signs in
        users.update_user(session, name="root", disabled=True, actor="system", now=clock())
    with controller.session() as session:
        assert auth.ensure_admin_token(session, secret=None, now=clock()) is not None
