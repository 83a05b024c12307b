"""Password sign-in in a real Chromium against the real controller app (docs/security.md, "People and
roles"): the session names the user, sign-out ends it for good, a wrong password is refused."""

from __future__ import annotations

import re
import time

import pytest
from playwright.sync_api import expect

from edgefleet.cloud.services import auth, users
from edgefleet.cloud.services.users import PasswordPolicy

pytestmark = pytest.mark.browser

PASSWORD = "a passphrase for the browser"


@pytest.fixture(scope="module")
def alice(ui_server) -> str:
    s = ui_server.controller.settings
    policy = PasswordPolicy(min_length=s.password_min_length, time_cost=s.password_time_cost,
                            memory_kib=s.password_memory_kib, parallelism=s.password_parallelism)
    with ui_server.controller.session() as session:
        users.create_user(session, name="alice", role="approver", display_name="Alice Li", password=PASSWORD,
                          actor="system", now=time.time(), policy=policy)
    return "alice"


def test_a_user_signs_in_with_a_password_and_signs_out_for_good(page, ui_server, alice):
    page.goto("/ui/devices")
    page.fill("#username", alice)
    page.fill("#password", PASSWORD)
    page.click("button[type=submit]")
    expect(page).to_have_url(f"{ui_server.url}/ui/devices")
    expect(page.locator("header")).to_contain_text("approver alice")
    cookie = {c["name"]: c for c in page.context.cookies()}["edgefleet_ui"]
    assert cookie["httpOnly"] is True and cookie["sameSite"] == "Strict"
    with ui_server.controller.session() as session:
        who = auth.identify(session, secret=cookie["value"])
        assert who is not None and who.actor == "user:alice"
    page.click("text=Log out")
    expect(page).to_have_url(re.compile(r"/ui/login"))
    with ui_server.controller.session() as session:
        assert auth.identify(session, secret=cookie["value"]) is None   # the session token is revoked


def test_a_wrong_password_is_refused_and_keeps_the_name(page, alice):
    page.goto("/ui/login")
    page.fill("#username", alice)
    page.fill("#password", "not the password at all")
    page.click("button[type=submit]")
    expect(page.locator(".error")).to_contain_text("Unknown user name or wrong password")
    expect(page.locator("#username")).to_have_value(alice)
    assert [c["name"] for c in page.context.cookies()] == ["edgefleet_login"]   # the form's CSRF nonce only
