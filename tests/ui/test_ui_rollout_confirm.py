"""The new rollout's live count and confirmation step in a real Chromium against the real controller
app (the ``rollout_server`` of conftest, seeded by :mod:`ui_rollout_fleet`: six spare devices tagged
``spare`` on 1.2.0): typing a selector changes the count, the confirmation step shows the stages with
their devices and passes axe at 1280 and 400 px without scrolling sideways, and confirming creates the
rollout and lands on it, running."""

from __future__ import annotations

import re

import pytest
from playwright.sync_api import expect

from edgefleet.cloud.services.rollouts import service as rollouts
from edgefleet.cloud.services.rollouts.policy import Selector

from . import test_ui_console as console
from .axe import violations
from .ui_rollout_fleet import SPARE
from .ui_support import screenshot

pytestmark = pytest.mark.browser

axe = console.axe


@pytest.fixture
def server(rollout_server):
    return rollout_server


def test_type_a_selector_see_the_count_confirm_and_land_on_the_running_rollout(logged_in, server, axe):
    page = logged_in
    with server.controller.session() as session:
        before = {r.id for r in rollouts.list_rollouts(session, limit=1000)}
    page.goto("/ui/rollouts/new")
    count = page.locator("#rollout-count")
    page.select_option("#bundle", server.fleet.bundles["1.3.0"].digest)
    page.select_option("#template", "canary-half-rest")
    page.fill("#tags", "spare")
    expect(count).to_have_attribute("data-matching", str(len(SPARE)))
    expect(count).to_contain_text(f"{len(SPARE)} devices match, {len(SPARE)} compatible")
    page.fill("#exclude_device_ids", "s-05 s-06")
    expect(count).to_have_attribute("data-matching", "4")
    expect(count).to_contain_text("4 devices match, 4 compatible (would get the order); stages: canary 1, half 2, "
                                  "rest 1")
    page.fill("#tags", "spare nowhere")                                        # every tag given: none has both
    expect(count).to_have_attribute("data-matching", "0")
    page.fill("#tags", "spare")
    expect(count).to_have_attribute("data-compatible", "4")
    page.fill("#note", "spares, two left out")

    page.click("#rollout-next")
    expect(page).to_have_url(f"{server.url}/ui/rollouts/confirm")
    expect(page.locator("h1")).to_contain_text("to 4 devices?")
    stages = page.locator("#confirm-stages tbody tr")
    expect(stages).to_have_count(3)
    assert [(r.get_attribute("data-stage"), r.get_attribute("data-devices")) for r in stages.all()] == [
        ("canary", "1"), ("half", "2"), ("rest", "1")]
    expect(page.locator("#confirm-devices li")).to_have_count(4)
    expect(page.locator("#confirm-policy")).to_contain_text("template canary-half-rest")
    with server.controller.session() as session:                               # the step stored nothing
        assert {r.id for r in rollouts.list_rollouts(session, limit=1000)} == before
    for width in (1280, 400):
        page.set_viewport_size({"width": width, "height": 800})
        assert violations(page, axe) == [], width
        scroll = page.evaluate("[document.documentElement.scrollWidth, document.documentElement.clientWidth]")
        assert scroll[0] <= scroll[1], (width, scroll)
        screenshot(page, f"rollout-confirm-{width}")

    page.click("#rollout-confirm")
    expect(page).to_have_url(re.compile(rf"{server.url}/ui/rollouts/ro-[0-9a-f]+$"))
    expect(page.locator("h1 .badge")).to_have_text("running")
    expect(page.locator("#rollout-devices tbody tr")).to_have_count(4)
    expect(page.locator("#rollout-devices tr[data-state=in_progress]")).to_have_count(1)   # the canary's order
    expect(page.locator("main")).to_contain_text("spares, two left out")
    rollout_id = page.url.rsplit("/", 1)[1]
    assert rollout_id not in before
    with server.controller.session() as session:
        rollout = rollouts.get_rollout(session, rollout_id=rollout_id)
        selector = Selector.model_validate(rollout.selector)
    assert (selector.tags, selector.exclude_device_ids) == (["spare"], ["s-05", "s-06"])
