"""The pages a browser reaches only by posting a form, in real Chromium at 1280 and 400 px: the deploy
confirmation and the "shown this once" pages of a new enrollment token, personal API token and webhook
secret. Each: no horizontal page scroll, no serious or critical axe-core violation, no console error
(as ``test_ui_console.py`` holds every page reached by a link). And the drift chart's threshold labels at
400 px: beside their lines, apart, off the curve (the console test checks 1280 px)."""

from __future__ import annotations

import secrets
import urllib.request
from collections.abc import Iterator

import pytest

from . import test_ui_console as console
from .axe import violations
from .test_ui_actions import api
from .ui_support import screenshot, sign_in, watched_page

pytestmark = pytest.mark.browser

axe = console.axe
"""axe-core from the npm registry (the console tests' fixture)."""


@pytest.fixture(scope="module")
def person(ui_server) -> Iterator[tuple[str, str]]:
    """A user with a password on the shared test controller (personal tokens belong to people); disabled
    when the module is done."""
    name, password = f"axe-{secrets.token_hex(3)}", "axe-" + secrets.token_urlsafe(12)
    api(ui_server.url, ui_server.admin_token, "/api/v1/users", "POST",
        {"name": name, "role": "operator", "password": password})
    yield name, password
    api(ui_server.url, ui_server.admin_token, f"/api/v1/users/{name}", "PATCH", {"disabled": True})


def problems_of(page, axe_js: str, what: str, width: int) -> list[str]:
    """What is wrong with the page shown now: a sideways page scroll, serious or critical axe violations."""
    found = []
    scroll = page.evaluate("[document.documentElement.scrollWidth, document.documentElement.clientWidth]")
    if scroll[0] > scroll[1]:
        found.append(f"{what} at {width} px scrolls sideways: {scroll}")
    bad = violations(page, axe_js)
    if bad:
        found.append(f"{what} at {width} px: {bad}")
    screenshot(page, f"post-{width}-{what}")
    return found


@pytest.mark.parametrize("width", console.WIDTHS)
def test_the_pages_after_a_post_fit_and_pass_axe(browser, ui_server, axe, person, width):
    fleet = ui_server.fleet
    hook_url = f"https://hooks.example.com/axe-{width}"
    failures: list[str] = []
    context, page, problems = console.open_page(browser, ui_server, width)     # the admin token
    try:
        # the deploy confirmation (POST /ui/deploy/confirm): nothing is stored yet
        page.goto(f"/ui/deploy?bundle={fleet.bundles['1.3.0'].digest}&tag=site-b")
        page.click("#deploy-next")
        page.wait_for_selector("#deploy-confirm")
        assert "site-b" in page.inner_text("main")
        failures += problems_of(page, axe, "deploy-confirm", width)

        # a new enrollment token, shown this once (POST /ui/enrollment)
        page.goto("/ui/enrollment")
        page.fill("#device_id", f"axe-device-{width}")
        page.check("#confirm")
        page.click("#create-token")
        page.wait_for_selector("#secret-once #secret-value")
        assert page.locator("#secret-once button[data-copy]").is_visible()         # copy.js ran
        failures += problems_of(page, axe, "enrollment-secret", width)

        # a new webhook's signing secret, shown this once (POST /ui/webhooks)
        page.goto("/ui/webhooks")
        page.fill("#url", hook_url)
        page.fill("#events", "ping")                       # nothing is ever sent to it unless pinged
        page.check("#webhook-form input[name=confirm]")
        page.click("#create-webhook")
        page.wait_for_selector("#secret-once #secret-value")
        failures += problems_of(page, axe, "webhook-secret", width)
    finally:
        context.close()
        for hook in api(ui_server.url, ui_server.admin_token, "/api/v1/webhooks"):
            if hook["url"] == hook_url:                     # leave the shared controller as it was
                remove = urllib.request.Request(f"{ui_server.url}/api/v1/webhooks/{hook['id']}", method="DELETE",
                                                headers={"Authorization": f"Bearer {ui_server.admin_token}"})
                with urllib.request.urlopen(remove, timeout=10) as answer:
                    assert answer.status == 204
    assert not problems, problems

    # a personal API token, shown this once (POST /ui/tokens): signed in as a person
    context, page, problems = watched_page(browser, ui_server.url, width=width, ignore_failed_loads=True)
    try:
        sign_in(page, ui_server.url, username=person[0], password=person[1])
        page.goto("/ui/tokens")
        page.fill("#name", f"axe {width}")
        page.click("#create-token")
        page.wait_for_selector("#secret-once #secret-value")
        failures += problems_of(page, axe, "token-secret", width)
    finally:
        context.close()
    assert not failures, "\n".join(failures)
    assert not problems, problems


def test_drift_chart_labels_do_not_overlap_at_400_px(browser, ui_server):
    """The console test's geometry check, on a 400 px wide page."""
    context, page, problems = console.open_page(browser, ui_server, 400)
    try:
        assert page.evaluate("document.documentElement.clientWidth") == 400
        console.assert_drift_labels_clear(page)
    finally:
        context.close()
    assert not problems, problems
