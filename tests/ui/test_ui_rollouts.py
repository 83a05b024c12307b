"""The rollout pages in a real Chromium against the real controller app (the ``rollout_server``
of conftest, seeded by :mod:`ui_rollout_fleet`): the list, the stage timeline with the gates'
verdicts and charts, the create form, and the people's actions by role."""

from __future__ import annotations

import re
import time

import pytest
from playwright.sync_api import Page, expect

from edgefleet.cloud.services import audit, auth
from edgefleet.cloud.services.rollouts import service as rollouts
from edgefleet.cloud.services.rollouts.policy import TEMPLATES, Selector

from .ui_rollout_fleet import COHORTS
from .ui_support import screenshot

pytestmark = pytest.mark.browser


@pytest.fixture
def server(rollout_server):
    return rollout_server


def token(server, role: str, name: str) -> str:
    with server.controller.session() as session:
        _, secret = auth.create_token(session, name=name, role=role, actor="admin:ui-test", now=time.time())
    return secret


def log_in(page: Page, server, secret: str) -> Page:
    page.goto("/ui/login")
    page.fill("#token", secret)
    page.click("button[type=submit]")
    page.wait_for_url(f"{server.url}/")
    return page


def rollout_state(server, rollout_id: str) -> str:
    with server.controller.session() as session:
        return rollouts.get_rollout(session, rollout_id=rollout_id).state


def make_rollout(server, device_ids: list[str], actor: str = "operator:seed") -> str:
    controller = server.controller
    with controller.session() as session:
        rollout = rollouts.create_rollout(session, bundle_digest=server.fleet.bundles["1.3.0"].digest,
                                          selector=Selector(device_ids=device_ids),
                                          policy=TEMPLATES["canary-half-rest"][1],
                                          protected_tags=controller.settings.protected_tags, actor=actor,
                                          now=time.time())
        rollout_id = rollout.id
    controller.advance_rollouts()
    return rollout_id


def points(chart, css: str) -> list[tuple[float, float]]:
    """``(cx, cy)`` of a line chart's points of one series (SVG y grows downwards)."""
    return [(float(c.get_attribute("cx")), float(c.get_attribute("cy")))
            for c in chart.locator(f"circle.pt.{css}").all()]


def test_rollout_list_shows_state_stage_and_devices(logged_in, server):
    page = logged_in
    ids = server.fleet.rollouts
    page.click("header nav >> text=Rollouts")
    expect(page).to_have_url(f"{server.url}/ui/rollouts")
    passed = page.locator(f"#rollouts tr[data-rollout='{ids['passed']}']")
    expect(passed).to_have_attribute("data-state", "running")
    expect(passed).to_contain_text("animals 1.3.0")
    expect(passed).to_contain_text("tags line-a")
    expect(passed.locator(".stage-cell")).to_have_text(re.compile(r"2/2\s+rest"))
    expect(passed.locator(".device-counts")).to_contain_text("7 in progress")
    expect(passed.locator("svg[data-chart=rollout-devices] rect.seg")).to_have_count(2)
    aborted = page.locator(f"#rollouts tr[data-rollout='{ids['aborted']}']")
    expect(aborted.locator(".badge")).to_have_text("aborted")
    expect(aborted.locator(".reason-text")).to_contain_text("stage canary failed its gates (error_rate")
    expect(aborted.locator(".stage-cell")).to_have_text(re.compile(r"1/3\s+canary"))
    page.click("nav.pills >> text=aborted")
    expect(page).to_have_url(f"{server.url}/ui/rollouts?state=aborted")
    expect(page.locator(f"#rollouts tr[data-rollout='{ids['aborted']}']")).to_have_count(1)
    expect(page.locator(f"#rollouts tr[data-rollout='{ids['passed']}']")).to_have_count(0)
    states = page.locator("#rollouts tbody tr").evaluate_all("rows => rows.map(r => r.dataset.state)")
    assert states and set(states) == {"aborted"}
    screenshot(page, "rollouts")


def test_detail_shows_the_stage_timeline_with_verdicts_and_devices(logged_in, server):
    page = logged_in
    rollout_id = server.fleet.rollouts["passed"]
    page.goto("/ui/rollouts")
    page.click(f"#rollouts a:text('{rollout_id}')")
    expect(page).to_have_url(f"{server.url}/ui/rollouts/{rollout_id}")
    expect(page.locator("h1 .badge")).to_have_text("running")
    expect(page.locator("#stage-position")).to_have_text("2 of 2")
    canary = page.locator("#stages li[data-stage=canary]")
    expect(canary).to_have_attribute("data-state", "passed")
    expect(canary.locator(".stage-times")).to_contain_text("soak until")
    expect(canary.locator(".stage-times")).to_contain_text("finished")
    verdicts = canary.locator("table.gates tbody tr")
    expect(verdicts).to_have_count(6)
    assert verdicts.evaluate_all("rows => rows.map(r => [r.dataset.gate, r.dataset.verdict])") == [
        ["install", "pass"], ["error_rate", "pass"], ["latency_p95", "pass"], ["drift_psi", "pass"],
        ["predictions", "pass"], ["accuracy", "pass"]]
    expect(canary.locator("tr[data-gate=latency_p95]")).to_contain_text("is within 1.5 x control + 1 ms")
    rest = page.locator("#stages li[data-stage=rest]")
    expect(rest).to_have_attribute("data-state", "running")
    expect(rest.locator("svg[data-chart=stage-devices] rect.seg")).to_have_count(1)
    expect(rest.locator("table.gates tr[data-verdict='']")).to_have_count(6)      # not judged while it runs
    devices = page.locator("#rollout-devices tbody tr")
    expect(devices).to_have_count(len(COHORTS["passed"].devices))
    first = page.locator(f"#rollout-devices tr[data-device='{server.fleet.canary['passed']}']")
    expect(first).to_have_attribute("data-stage", "canary")
    expect(first).to_have_attribute("data-state", "succeeded")
    expect(first).to_contain_text("animals 1.2.0")                              # the bundle it ran before
    expect(page.locator("#rollout-devices tr[data-stage=rest][data-state=in_progress]")).to_have_count(7)
    # A finished stage is charted as it was judged: its control devices' windows on the old bundle,
    # from before later stages took them, give the limit per window.
    chart = canary.locator("figure[data-gate=error_rate] svg")
    expect(chart.locator("polyline.line.lim")).to_have_count(1)
    assert points(chart, "lim") and len(points(chart, "s2")) >= 2


def test_a_soaking_stage_charts_the_canary_against_its_limit(logged_in, server):
    page = logged_in
    page.goto(f"/ui/rollouts/{server.fleet.rollouts['soaking']}")
    canary = page.locator("#stages li[data-stage=canary]")
    expect(canary).to_have_attribute("data-state", "soaking")
    expect(canary.locator(".stage-times")).to_contain_text("left)")
    for gate in ("error_rate", "latency_p95", "drift_psi"):
        chart = canary.locator(f"figure[data-gate={gate}] svg[data-chart=gate-{gate}]")
        expect(chart.locator("polyline.line.s2")).to_have_count(1)                # the canary
        expect(chart.locator("polyline.line.lim")).to_have_count(1)               # ratio x control + margin
        mine, limit = points(chart, "s2"), points(chart, "lim")
        assert len(mine) >= 8 and [x for x, _ in limit] == [x for x, _ in mine], gate   # one point per window
        if gate != "error_rate":   # far within its limit: every window lies below (larger y than) the limit
            assert all(c[1] > lim[1] for c, lim in zip(mine, limit, strict=True)), gate
    expect(canary.locator("tr[data-gate=latency_p95]")).to_have_attribute("data-verdict", "pass")
    predictions = canary.locator("figure[data-gate=predictions] svg[data-chart=gate-predictions]")
    expect(predictions.locator("rect.bar[data-group=canary]")).to_have_count(3)
    expect(predictions.locator("rect.bar[data-group=control]")).to_have_count(3)
    expect(page.locator("#stages li[data-stage=rest]")).to_have_attribute("data-state", "pending")
    expect(page.locator("#stages li[data-stage=rest] table.gates")).to_have_count(0)
    screenshot(page, "rollout")


def test_an_aborted_rollout_shows_the_failed_gate_and_the_roll_back(logged_in, server):
    page = logged_in
    rollout_id = server.fleet.rollouts["aborted"]
    page.goto(f"/ui/rollouts/{rollout_id}")
    expect(page.locator("#reason")).to_contain_text("stage canary failed its gates (error_rate")
    canary = page.locator("#stages li[data-stage=canary]")
    expect(canary).to_have_attribute("data-state", "failed")
    expect(canary.locator("tr[data-gate=error_rate]")).to_have_attribute("data-verdict", "fail")
    expect(canary.locator("tr[data-gate=error_rate] .evidence")).to_contain_text(
        re.compile(r"canary mean 0\.[1-4]\d*, limit 2 × control 0\.00\d+ \+ 0\.01 = 0\.0\d+;"))
    chart = canary.locator("figure[data-gate=error_rate] svg")
    limits = dict(points(chart, "lim"))   # the limit of each window, from the control still on the old bundle
    above = [(x, y) for x, y in points(chart, "s2") if x in limits]
    assert above and all(y < limits[x] for x, y in above)                      # every window above the limit
    expect(page.locator(f"#rollout-devices tr[data-device='{server.fleet.canary['aborted']}']")).to_have_attribute(
        "data-state", "reverting")
    expect(page.locator("#rollout-devices tr[data-state=skipped]")).to_have_count(5)
    expect(page.locator("a:text-matches('^dep-')")).to_have_count(2)            # its orders and the roll-back
    expect(page.locator("#actions details.action")).to_have_count(0)
    expect(page.locator("#actions")).to_contain_text("Nothing to do")


def test_create_from_a_template_leads_to_the_running_rollout(logged_in, server):
    page = logged_in
    page.goto("/ui/rollouts")
    page.click("#new-rollout")
    expect(page).to_have_url(f"{server.url}/ui/rollouts/new")
    expect(page.locator("#templates")).to_contain_text(TEMPLATES["careful"][0])
    page.select_option("#bundle", server.fleet.bundles["1.3.0"].digest)
    page.fill("#device_ids", "s-01, s-02")
    page.select_option("#template", "canary-half-rest")
    page.fill("#note", "from the form")
    page.click("#rollout-form button[type=submit]")
    expect(page.locator("#confirm-stages tbody tr")).to_have_count(3)          # the confirmation step
    page.click("#rollout-confirm")
    expect(page).to_have_url(re.compile(rf"{server.url}/ui/rollouts/ro-[0-9a-f]+$"))
    rollout_id = page.url.rsplit("/", 1)[1]
    expect(page.locator("h1 .badge")).to_have_text("running")
    expect(page.locator("#stages li.stage")).to_have_count(3)
    expect(page.locator("#stages li[data-stage=canary]")).to_have_attribute("data-state", "running")
    expect(page.locator("#rollout-devices tbody tr")).to_have_count(2)
    expect(page.locator("#rollout-devices tr[data-state=in_progress]")).to_have_count(1)   # advanced at once
    expect(page.locator("main")).to_contain_text("from the form")
    with server.controller.session() as session:
        rollout = rollouts.get_rollout(session, rollout_id=rollout_id)
        assert rollout.created_by == "admin:admin"
        assert rollouts.policy_of(rollout) == TEMPLATES["canary-half-rest"][1]
        assert Selector.model_validate(rollout.selector).device_ids == ["s-01", "s-02"]


def test_a_bad_policy_shows_where_it_is_wrong_and_creates_nothing(logged_in, server):
    page = logged_in
    with server.controller.session() as session:
        before = len(rollouts.list_rollouts(session, limit=1000))
    policy = '[[stages]]\nname = "canary"\nselect = "count"\ncount = 0\n\n[[stages]]\nname = "rest"\nselect = "rest"\n'
    page.goto("/ui/rollouts/new")
    page.select_option("#bundle", server.fleet.bundles["1.3.0"].digest)
    page.fill("#device_ids", "s-05")
    page.select_option("#template", "custom")
    page.fill("#policy", policy)
    page.click("#rollout-form button[type=submit]")
    error = page.locator("#form-error")
    expect(error).to_have_attribute("data-where", "policy: stages.0.count")
    expect(error).to_contain_text("greater than or equal to 1")
    expect(error).to_contain_text("Nothing was created")
    expect(page.locator("#policy")).to_have_attribute("aria-invalid", "true")
    expect(page.locator("#policy")).to_have_value(policy)                      # kept as typed
    expect(page.locator("#device_ids")).to_have_value("s-05")
    with server.controller.session() as session:
        assert len(rollouts.list_rollouts(session, limit=1000)) == before


def test_operator_pauses_resumes_and_aborts_after_confirming(page, server):
    rollout_id = make_rollout(server, ["s-03", "s-04"])
    log_in(page, server, token(server, "operator", "olga"))
    page.goto(f"/ui/rollouts/{rollout_id}")
    expect(page.locator("#act-approve")).to_have_count(0)
    pause = page.locator("#act-pause")
    expect(pause.locator("button[type=submit]")).to_be_hidden()                # the confirmation step
    pause.locator("summary").click()
    pause.locator("input[name=reason]").fill("looking at the canary")
    pause.locator("button[type=submit]").click()
    expect(page.locator("h1 .badge")).to_have_text("paused")
    expect(page.locator("#reason")).to_have_text("paused by operator:olga: looking at the canary")
    expect(page.locator("#act-pause")).to_have_count(0)
    page.locator("#act-resume summary").click()
    page.locator("#act-resume button[type=submit]").click()
    expect(page.locator("h1 .badge")).to_have_text("running")
    page.locator("#act-abort summary").click()
    page.locator("#act-abort button[type=submit]").click()
    expect(page.locator("h1 .badge")).to_have_text("aborted")
    expect(page.locator("#actions details.action")).to_have_count(0)
    expect(page.locator("#rollout-devices tr[data-state=skipped]")).to_have_count(2)
    assert rollout_state(server, rollout_id) == "aborted"
    with server.controller.session() as session:
        entries = audit.list_entries(session, target=f"rollout:{rollout_id}")
    acts = sorted((e.action, e.actor) for e in entries if e.actor == "operator:olga")
    assert acts == [("rollout.abort", "operator:olga"), ("rollout.pause", "operator:olga"),
                    ("rollout.resume", "operator:olga")]


def test_a_viewer_sees_no_actions_and_a_post_is_refused(page, server):
    rollout_id = server.fleet.rollouts["soaking"]
    log_in(page, server, token(server, "viewer", "vera"))
    page.goto("/ui/rollouts")
    expect(page.locator(f"#rollouts tr[data-rollout='{rollout_id}']")).to_have_count(1)
    expect(page.locator("#new-rollout")).to_have_count(0)
    page.goto(f"/ui/rollouts/{rollout_id}")
    expect(page.locator("#stages li[data-stage=canary]")).to_be_visible()
    expect(page.locator("#actions details.action")).to_have_count(0)
    expect(page.locator("#actions")).to_contain_text("you can watch this rollout")
    refused = page.request.post(f"/ui/rollouts/{rollout_id}/pause", form={"reason": "x"}, max_redirects=0)
    assert refused.status == 403 and "needs operator" in refused.text()
    assert rollout_state(server, rollout_id) == "running"
    assert page.goto("/ui/rollouts/new").status == 403


def test_the_creator_cannot_approve_a_protected_rollout(page, server):
    log_in(page, server, server.admin_token)
    page.goto("/ui/rollouts/new")
    page.select_option("#bundle", server.fleet.bundles["1.3.0"].digest)
    page.fill("#device_ids", "p-01")
    page.click("#rollout-form button[type=submit]")
    expect(page.locator("#confirm-approval")).to_contain_text("devices tagged production are protected")
    page.click("#rollout-confirm")
    expect(page.locator("h1 .badge")).to_have_text("waiting approval")
    rollout_id = page.url.rsplit("/", 1)[1]
    expect(page.locator("#reason")).to_contain_text("waiting for approval: devices tagged production")
    approve = page.locator("#act-approve")
    approve.locator("summary").click()
    expect(approve).to_contain_text("You created this rollout")
    approve.locator("button[type=submit]").click()
    expect(page.locator("#action-error")).to_contain_text(
        "a rollout to protected devices needs approval by someone other than its creator")
    expect(page.locator("#action-error")).to_contain_text("ask another approver to approve it")
    expect(page.locator("h1 .badge")).to_have_text("waiting approval")
    assert rollout_state(server, rollout_id) == "waiting_approval"
    page.click("text=Log out")
    log_in(page, server, token(server, "approver", "otto"))
    page.goto(f"/ui/rollouts/{rollout_id}")
    expect(page.locator("#act-approve")).not_to_contain_text("You created this rollout")
    page.locator("#act-approve summary").click()
    page.locator("#act-approve button[type=submit]").click()
    expect(page.locator("h1 .badge")).to_have_text("running")
    expect(page.locator("main")).to_contain_text("approved by approver:otto")
    expect(page.locator("#rollout-devices tr[data-device='p-01']")).to_have_attribute("data-state", "in_progress")
