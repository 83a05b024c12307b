"""OIDC sign-in against a real provider over HTTP (:mod:`oidckit`) and the real controller app in uvicorn
(docs/security.md §12): every redirect goes through real sockets, the provider checks PKCE, the
controller checks the state, the ID token's signature, audience, expiry and nonce."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from types import SimpleNamespace
from urllib.parse import parse_qs, urlencode, urlsplit

import httpx2 as httpx
import pytest
from fastapi.testclient import TestClient
from playwright.sync_api import expect
from pydantic import ValidationError
from sqlmodel import col, select

from edgefleet.cloud import deps
from edgefleet.cloud.app import create_app
from edgefleet.cloud.controller import Controller
from edgefleet.cloud.services import auth, oidc, users
from edgefleet.cloud.services.users import PasswordPolicy
from edgefleet.cloud.settings import ControllerSettings
from edgefleet.cloud.store.tables import ApiToken, AuditEntry

from . import oidckit
from testkit import free_port, wait_until

ADMIN = "eft_ui-oidc-admin"
ROLE_MAP = {"fleet-viewers": "viewer", "fleet-operators": "operator", "fleet-approvers": "approver"}


class NoTransport:
    connected = True

    def start(self) -> None: ...

    def stop(self) -> None: ...

    def publish(self, topic: str, payload: bytes) -> bool:
        return True


@dataclass
class Controllers:
    url: str
    controller: Controller
    idp: oidckit.Provider
    app: object


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Iterator[Controllers]:
    with oidckit.provider() as idp:
        port = free_port()
        settings = ControllerSettings(
            data_dir=tmp_path_factory.mktemp("oidc"), broker_url="mqtt://127.0.0.1:1", admin_token=ADMIN,
            listen_port=port, public_url=f"http://127.0.0.1:{port}", auth_failure_limit=1000,
            oidc_issuer=idp.issuer, oidc_client_id=oidckit.CLIENT_ID, oidc_client_secret=oidckit.CLIENT_SECRET,
            oidc_provider_name="Test IdP", oidc_role_map=ROLE_MAP)
        idp.redirect_uri = f"http://127.0.0.1:{port}/ui/login/oidc/callback"
        app = create_app(settings, transport_factory=lambda url, on_message: NoTransport(),
                         reconcile_in_background=False)
        with oidckit.serve(app, port):
            yield Controllers(url=f"http://127.0.0.1:{port}", controller=app.state.controller, idp=idp, app=app)


@pytest.fixture
def idp(site) -> Iterator[oidckit.Provider]:
    site.idp.reset()
    yield site.idp
    site.idp.reset()


@pytest.fixture
def server(site) -> Controllers:
    """What the Chromium ``page`` fixture (conftest) browses: this module's controller."""
    return site


@pytest.fixture
def client() -> Iterator[httpx.Client]:
    """A browser's HTTP side: cookies, redirects followed (not SameSite: see the Chromium test)."""
    with httpx.Client(follow_redirects=True, timeout=30) as client:
        yield client


def sign_in(client: httpx.Client, site: Controllers, next: str = "/ui/devices") -> httpx.Response:
    """From the login page's button to the controller's answer after the provider's redirect."""
    return client.get(f"{site.url}/ui/login/oidc", params={"next": next})


def to_callback(client: httpx.Client, site: Controllers) -> str:
    """Start a sign-in and stop at the provider's redirect back: the callback URL (not yet followed)."""
    start = client.get(f"{site.url}/ui/login/oidc", follow_redirects=False)
    assert start.status_code == 303
    at_provider = client.get(start.headers["location"], follow_redirects=False)
    assert at_provider.status_code == 302
    return at_provider.headers["location"]


def with_query(url: str, **changes: str) -> str:
    parts = urlsplit(url)
    query = {k: v[0] for k, v in parse_qs(parts.query).items()} | changes
    return parts._replace(query=urlencode(query)).geturl()


def failures(site: Controllers) -> int:
    return len(site.app.state.auth_limiter.failures.get("127.0.0.1", ()))  # type: ignore[attr-defined]


def counted(site: Controllers, expected: int) -> None:
    """The address's failures reach ``expected`` (the guard records one after the answer is sent)."""
    wait_until(lambda: failures(site) >= expected, "the failure counted toward the lockout", timeout=10)
    assert failures(site) == expected


def sessions_of(site: Controllers, name: str) -> int:
    with site.controller.session() as session:
        user = users.find_user(session, name=name)
        if user is None:
            return 0
        return len(session.exec(select(ApiToken).where(ApiToken.user_id == user.id, col(ApiToken.ui_session))).all())


def refused(response: httpx.Response, status: int, text: str) -> None:
    assert response.status_code == status, response.text[:500]
    assert "Sign-in failed" in response.text
    assert text in response.text, response.text[:2000]
    assert "edgefleet_ui" not in response.cookies


def test_the_login_page_offers_the_provider(site, client):
    page = client.get(f"{site.url}/ui/login", params={"next": "/ui/devices"})
    assert page.status_code == 200
    assert "Sign in with Test IdP" in page.text and "oidc-sign-in" in page.text
    assert 'href="/ui/login/oidc?next=/ui/devices"' in page.text


def test_a_new_user_signs_in_through_the_provider_and_lands_on_the_page_with_the_mapped_role(site, idp, client):
    idp.behaviour.claims = {"sub": "u-alice", "preferred_username": "Alice", "name": "Alice Li",
                            "groups": ["fleet-viewers", "fleet-approvers", "other"]}
    answer = sign_in(client, site)
    assert answer.status_code == 200, answer.text[:500]
    assert [r.status_code for r in answer.history] == [303, 302]
    assert answer.history[0].headers["location"].startswith(f"{idp.issuer}/authorize?")
    assert "code_challenge_method=S256" in answer.history[0].headers["location"]
    target = re.search(r'http-equiv="refresh" content="0; url=([^"]+)"', answer.text)
    assert target is not None and target.group(1) == "/ui/devices"
    page = client.get(f"{site.url}{target.group(1)}", follow_redirects=False)
    assert page.status_code == 200
    assert re.search(r'<span class="role">approver</span>\s*alice', page.text), page.text[:3000]
    with site.controller.session() as session:
        user = users.get_user(session, name="alice")
        assert (user.role, user.password_hash, user.display_name, user.created_by) == \
            ("approver", None, "Alice Li", "system:oidc")
        assert user.last_login_at is not None
        who = auth.identify(session, secret=client.cookies["edgefleet_ui"])
        assert who is not None and who.actor == "user:alice" and who.role == "approver"
        entries = session.exec(select(AuditEntry).where(AuditEntry.action == "user.sign_in",
                                                        AuditEntry.actor == "user:alice")).all()
        assert [e.details for e in entries] == [{"method": "oidc"}]
    assert "edgefleet_oidc" not in client.cookies   # the sign-in in progress is gone


@pytest.mark.browser
def test_a_sign_in_in_chromium_lands_on_the_page_signed_in(site, idp, page):
    idp.behaviour.claims = {"sub": "u-frank", "preferred_username": "frank", "groups": ["fleet-operators"]}
    page.goto("/ui/devices")
    page.click("#oidc-sign-in")
    expect(page).to_have_url(f"{site.url}/ui/devices")
    expect(page.locator("header")).to_contain_text("operator frank")
    cookies = {c["name"]: c for c in page.context.cookies()}
    assert cookies["edgefleet_ui"]["sameSite"] == "Strict" and "edgefleet_oidc" not in cookies


def test_a_known_user_gets_the_highest_mapped_role_and_the_change_is_audited(site, idp, client):
    with site.controller.session() as session:
        users.create_user(session, name="bob", role="viewer", actor="system", now=time.time(),
                          policy=PasswordPolicy())
    idp.behaviour.claims = {"sub": "u-bob", "preferred_username": "bob",
                            "groups": ["fleet-viewers", "fleet-operators"]}
    assert sign_in(client, site).status_code == 200
    with site.controller.session() as session:
        assert users.get_user(session, name="bob").role == "operator"
        change = session.exec(select(AuditEntry).where(AuditEntry.action == "user.update",
                                                       AuditEntry.target == "user:bob")).one()
        assert change.actor == "system:oidc" and change.details == {"role": ["viewer", "operator"]}


def test_the_user_name_falls_back_to_sub(site, idp, client):
    idp.behaviour.claims = {"sub": "8d1f-42", "groups": "fleet-viewers"}
    assert sign_in(client, site).status_code == 200
    with site.controller.session() as session:
        assert users.get_user(session, name="8d1f-42").role == "viewer"


def test_a_disabled_user_is_refused(site, idp, client):
    with site.controller.session() as session:
        users.create_user(session, name="carol", role="operator", actor="system", now=time.time(),
                          policy=PasswordPolicy())
        users.update_user(session, name="carol", disabled=True, actor="system", now=time.time())
    idp.behaviour.claims = {"sub": "u-carol", "preferred_username": "carol", "groups": ["fleet-operators"]}
    refused(sign_in(client, site), 403, "the user &#39;carol&#39; is disabled")
    assert sessions_of(site, "carol") == 0


def test_a_user_whose_groups_map_to_no_role_is_refused_and_not_created(site, idp, client):
    idp.behaviour.claims = {"sub": "u-dave", "preferred_username": "dave", "groups": ["marketing"]}
    refused(sign_in(client, site), 403, "has no role here")
    with site.controller.session() as session:
        assert users.find_user(session, name="dave") is None


def test_the_provider_refusing_is_an_error_page_counted_toward_the_lockout(site, idp, client):
    idp.behaviour.deny = True
    before = failures(site)
    refused(sign_in(client, site), 401, "the provider refused the sign-in (access_denied): the user declined")
    counted(site, before + 1)


def test_a_wrong_state_is_refused_before_the_code_is_used(site, idp, client):
    callback = to_callback(client, site)
    before = failures(site)
    refused(client.get(with_query(callback, state="x" * 43)), 401, "state differs")
    counted(site, before + 1)
    assert idp.refusals == [] and not idp.grants[parse_qs(urlsplit(callback).query)["code"][0]].used


def test_a_callback_without_a_sign_in_in_progress_is_refused(site, idp, client):
    callback = to_callback(client, site)
    client.cookies.delete("edgefleet_oidc")
    refused(client.get(callback), 401, "no sign-in is in progress")


def test_a_replayed_code_is_refused_by_the_provider(site, idp, client):
    idp.behaviour.claims = {"sub": "u-erin", "preferred_username": "erin", "groups": ["fleet-viewers"]}
    first = to_callback(client, site)
    assert client.get(first).status_code == 200
    with httpx.Client(follow_redirects=True, timeout=30) as other:   # another client, its own sign-in
        second = to_callback(other, site)
        stolen = with_query(second, code=parse_qs(urlsplit(first).query)["code"][0])
        refused(other.get(stolen), 401, "the provider refused the authorization code (invalid_grant)")
    assert idp.refusals == ["code already used"]
    assert sessions_of(site, "erin") == 1


def test_a_wrong_pkce_verifier_is_refused_by_the_provider(site, idp, client):
    callback = to_callback(client, site)
    pending = oidc.Pending.decode(client.cookies["edgefleet_oidc"])
    assert pending is not None
    forged = oidc.Pending(state=pending.state, nonce=pending.nonce, verifier="v" * 64, next=pending.next,
                          expires_at=pending.expires_at)
    client.cookies.set("edgefleet_oidc", forged.encode(), domain="127.0.0.1", path="/ui/login/oidc")
    refused(client.get(callback), 401, "refused the authorization code")
    assert idp.refusals == ["code_verifier does not match the code_challenge"]


@pytest.mark.parametrize(("change", "text"), [
    ({"signer": "rogue"}, "the ID token does not verify (BadSignatureError)"),
    ({"signer": "stranger"}, "signed with a key the provider does not publish"),
    ({"audience": "another-client"}, "the ID token is not valid here"),
    ({"lifetime_s": -3600}, "the ID token is not valid here"),
    ({"nonce": "a nonce of another sign-in"}, "the ID token is not valid here"),
], ids=["tampered-signature", "unknown-key", "wrong-audience", "expired", "nonce-mismatch"])
def test_an_id_token_that_does_not_verify_is_refused(site, idp, client, change, text):
    idp.behaviour.claims = {"sub": "u-mallory", "preferred_username": "mallory", "groups": ["fleet-approvers"]}
    for name, value in change.items():
        setattr(idp.behaviour, name, value)
    fetches, before = idp.jwks_fetches, failures(site)
    refused(sign_in(client, site), 401, text)
    counted(site, before + 1)
    with site.controller.session() as session:
        assert users.find_user(session, name="mallory") is None
    if change.get("signer") == "stranger":
        assert idp.jwks_fetches == fetches + 1   # an unknown key id fetches the JWKS once more, then refuses


def test_a_controller_without_oidc_has_no_button_and_no_route(tmp_path):
    settings = ControllerSettings(data_dir=tmp_path / "c", broker_url="mqtt://127.0.0.1:1", admin_token=ADMIN)
    app = create_app(settings, transport_factory=lambda url, on_message: NoTransport(), reconcile_in_background=False)
    with TestClient(app, follow_redirects=False) as client:
        assert "oidc-sign-in" not in client.get("/ui/login").text
        answer = client.get("/ui/login/oidc")
        assert answer.status_code == 404 and "OIDC sign-in is not configured" in answer.text


def test_an_unreachable_provider_is_a_502_page_not_counted(tmp_path):
    settings = ControllerSettings(data_dir=tmp_path / "c", broker_url="mqtt://127.0.0.1:1", admin_token=ADMIN,
                                  oidc_issuer=f"http://127.0.0.1:{free_port()}", oidc_client_id="c",
                                  oidc_default_role="viewer")
    app = create_app(settings, transport_factory=lambda url, on_message: NoTransport(), reconcile_in_background=False)
    with TestClient(app, follow_redirects=False) as client:
        answer = client.get("/ui/login/oidc")
        assert answer.status_code == 502 and "the provider could not be reached" in answer.text
        assert app.state.auth_limiter.failures == {}


@pytest.mark.parametrize(("settings", "message"), [
    ({"oidc_issuer": "http://sso.example.com", "oidc_client_id": "c", "oidc_default_role": "viewer"},
     "is not an https URL (http only on a loopback address)"),
    ({"oidc_issuer": "https://sso.example.com"}, "oidc_issuer is set but oidc_client_id is not"),
    ({"oidc_client_id": "c"}, "oidc_client_id/oidc_client_secret are set but oidc_issuer is not"),
    ({"oidc_issuer": "https://sso.example.com", "oidc_client_id": "c"}, "nobody could get a role"),
    ({"oidc_issuer": "https://sso.example.com", "oidc_client_id": "c", "oidc_default_role": "viewer",
      "oidc_scopes": ["profile"]}, "lacks 'openid'"),
    ({"oidc_issuer": "https://sso.example.com", "oidc_client_id": "c", "oidc_role_map": {"ops": "root"}},
     "oidc_role_map.ops"),
    ({"oidc_issuer": "https://sso.example.com", "oidc_client_id": "c", "oidc_default_role": "device"},
     "oidc_default_role"),
])
def test_a_wrong_oidc_configuration_is_refused_with_what_to_fix(tmp_path, settings, message):
    with pytest.raises(ValidationError, match=re.escape(message)):
        ControllerSettings(data_dir=tmp_path, **settings)


def _config(**changes) -> oidc.OidcConfig:
    settings = ControllerSettings(oidc_issuer="https://sso.example.com/realms/fleet", oidc_client_id="edgefleet",
                                  oidc_role_map=ROLE_MAP, **changes)
    config = deps.oidc_config(SimpleNamespace(settings=settings))  # type: ignore[arg-type]
    assert config is not None
    return config


def test_role_mapping_reads_nested_claims_and_falls_back_to_the_default_role():
    config = _config(oidc_role_claim="realm_access.roles", oidc_default_role="viewer")
    assert oidc.mapped_role({"realm_access": {"roles": ["fleet-operators", "x"]}}, config) == "operator"
    assert oidc.mapped_role({"realm_access": {"roles": ["x"]}}, config) == "viewer"
    assert oidc.mapped_role({"realm_access": "fleet-operators"}, config) == "viewer"
    assert config.redirect_uri == "http://127.0.0.1:8080/ui/login/oidc/callback"


def test_unknown_users_are_refused_when_just_in_time_creation_is_off():
    config = _config(oidc_create_users=False)
    with pytest.raises(oidc.OidcNotAllowedError, match="there is no user 'zoe'"):
        oidc.decide({"sub": "1", "preferred_username": "zoe", "groups": ["fleet-viewers"]}, config=config,
                    existing=None)


def test_a_name_that_is_no_user_name_is_refused():
    with pytest.raises(oidc.OidcNotAllowedError, match="is not a user name here") as caught:
        oidc.decide({"sub": "1", "preferred_username": "Zoë Smith", "groups": ["fleet-viewers"]}, config=_config(),
                    existing=None)
    assert caught.value.where == "preferred_username"


def test_a_discovery_document_for_another_issuer_or_without_s256_is_refused():
    issuer = "https://sso.example.com/realms/fleet"
    doc = {"issuer": issuer, "authorization_endpoint": f"{issuer}/auth", "token_endpoint": f"{issuer}/token",
           "jwks_uri": f"{issuer}/certs", "id_token_signing_alg_values_supported": ["RS256", "HS256"]}
    assert oidc.parse_metadata(doc, issuer=issuer).algorithms == ("RS256",)
    with pytest.raises(oidc.OidcProviderError, match="names the issuer"):
        oidc.parse_metadata(doc | {"issuer": issuer + "/"}, issuer=issuer)
    with pytest.raises(oidc.OidcProviderError, match="PKCE with S256"):
        oidc.parse_metadata(doc | {"code_challenge_methods_supported": ["plain"]}, issuer=issuer)
    with pytest.raises(oidc.OidcProviderError, match="token_endpoint is missing or not an https URL"):
        oidc.parse_metadata(doc | {"token_endpoint": "http://sso.example.com/token"}, issuer=issuer)
    with pytest.raises(oidc.OidcProviderError, match="signs ID tokens with none of"):
        oidc.parse_metadata(doc | {"id_token_signing_alg_values_supported": ["HS256", "none"]}, issuer=issuer)


@pytest.mark.parametrize("cookie", [None, "", "!!!", "W10", "x" * 5000, "WyJhIiwiYiIsImMiLCJkIiwiZSJd"])
def test_a_cookie_that_is_no_sign_in_in_progress_reads_as_none(cookie):
    assert oidc.Pending.decode(cookie) is None
