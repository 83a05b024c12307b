"""The operator console's pages in a real Chromium: every page at 1280 and 400 px with no horizontal page
scroll, no serious or critical axe-core violation and no console error; the collapsing navigation and
the keyboard; the models and audit pages; the styled error page; /docs without any other origin; the
drift chart's threshold labels; the overview's recent drift and "Recent events"."""

from __future__ import annotations

import re

import pytest
from playwright.sync_api import expect

from edgefleet.cloud.services.incidents import service as incidents

from .axe import axe_source, violations
from .ui_support import screenshot, sign_in, watched_page
from testkit import missing_part

pytestmark = pytest.mark.browser

WIDTHS = (1280, 400)


@pytest.fixture(scope="module")
def axe() -> str:
    source = axe_source()
    if source is None:
        message = "npm is not installed: axe-core cannot be fetched from the npm registry"
        missing_part(message)
    return source


def open_page(browser, server, width: int):
    """A signed-in page at ``width`` px, recording page errors and console errors (an error answer the
    page itself is, e.g. a 404 page, logs "Failed to load resource": that one is expected)."""
    context, page, problems = watched_page(browser, server.url, width=width, ignore_failed_loads=True)
    sign_in(page, server.url, token=server.admin_token)
    return context, page, problems


def ui_pages(server) -> list[tuple[str, int]]:
    fleet = server.fleet
    with server.controller.session() as session:
        incident = incidents.list_incidents(session, limit=1)
    pages = [("/", 200), ("/ui/devices", 200), ("/ui/devices/cam-03", 200), ("/ui/devices/gate-02", 200),
             ("/ui/bundles", 200), (f"/ui/bundles/{fleet.bundles['1.3.0'].digest}", 200),
             (f"/ui/bundles/{fleet.bundles['1.2.0'].digest}", 200), ("/ui/deployments", 200),
             (f"/ui/deployments/{fleet.deployment_id}", 200), ("/ui/models", 200), ("/ui/models/animals", 200),
             ("/ui/audit", 200), ("/ui/audit?since=yesterday", 422), ("/ui/incidents", 200),
             ("/ui/rollouts", 200), ("/ui/rollouts/new", 200), ("/ui/trends", 200), ("/ui/webhooks", 200),
             ("/ui/no-such-page", 404),
             ("/ui/devices/no-such-device", 404)]
    return pages + [(f"/ui/incidents/{i.id}", 200) for i in incident]


def check_pages(browser, server, axe: str, pages: list[tuple[str, int]], width: int, name: str) -> None:
    context, page, problems = open_page(browser, server, width)
    failures = []
    try:
        for path, status in pages:
            response = page.goto(path)
            assert response is not None and response.status == status, (path, response and response.status)
            scroll = page.evaluate("[document.documentElement.scrollWidth, document.documentElement.clientWidth]")
            if scroll[0] > scroll[1]:
                failures.append(f"{path} at {width} px scrolls sideways: {scroll}")
            found = violations(page, axe)
            if found:
                failures.append(f"{path} at {width} px: {found}")
            screenshot(page, f"{name}-{width}-{re.sub(r'[^a-z0-9]+', '-', path)[:40]}")
    finally:
        context.close()
    assert not failures, "\n".join(failures)
    assert not problems, problems


@pytest.mark.parametrize("width", WIDTHS)
def test_every_page_fits_and_passes_axe(browser, ui_server, axe, width):
    check_pages(browser, ui_server, axe, ui_pages(ui_server), width, "console")


@pytest.mark.parametrize("width", WIDTHS)
def test_every_rollout_page_fits_and_passes_axe(browser, rollout_server, axe, width):
    pages = [("/ui/rollouts", 200)] + [(f"/ui/rollouts/{rid}", 200) for rid in rollout_server.fleet.rollouts.values()]
    check_pages(browser, rollout_server, axe, pages, width, "rollouts")


def test_login_page_passes_axe_at_both_widths(browser, ui_server, axe):
    for width in WIDTHS:
        context = browser.new_context(base_url=ui_server.url, viewport={"width": width, "height": 800})
        page = context.new_page()
        page.goto("/ui/login")
        assert violations(page, axe) == []
        assert page.evaluate("document.documentElement.scrollWidth <= document.documentElement.clientWidth")
        context.close()


def test_navigation_collapses_at_400_px_and_works_from_the_keyboard(browser, ui_server):
    context, page, problems = open_page(browser, ui_server, 400)
    try:
        nav = page.locator("#main-nav")
        toggle = page.locator("button.nav-toggle")
        expect(nav).to_be_hidden()
        page.keyboard.press("Tab")
        expect(page.locator("a.skip")).to_be_focused()
        page.keyboard.press("Enter")
        expect(page.locator("main#live")).to_be_focused()
        toggle.focus()
        page.keyboard.press("Enter")
        expect(toggle).to_have_attribute("aria-expanded", "true")
        expect(nav).to_be_visible()
        page.keyboard.press("Tab")
        expect(nav.locator("a").first).to_be_focused()
        page.keyboard.press("Escape")
        expect(nav).to_be_hidden()
        expect(toggle).to_be_focused()
        page.keyboard.press("Enter")
        nav.get_by_role("link", name="Models").click()
        expect(page).to_have_url(f"{ui_server.url}/ui/models")
    finally:
        context.close()
    assert not problems, problems


def test_navigation_is_a_plain_bar_at_1280_px(logged_in):
    expect(logged_in.locator("button.nav-toggle")).to_be_hidden()
    nav = logged_in.locator("#main-nav")
    for name in ("Overview", "Devices", "Bundles", "Models", "Audit", "API"):     # Audit: an admin signed in
        expect(nav.get_by_role("link", name=name, exact=True)).to_be_visible()
    logged_in.locator("#main-nav").get_by_role("link", name="Audit").click()
    expect(logged_in.locator("h1")).to_have_text("Audit log")


def test_tables_scroll_inside_their_box_at_400_px(browser, ui_server):
    context, page, problems = open_page(browser, ui_server, 400)
    try:
        page.goto("/ui/devices")
        box = page.locator("#devices").locator("xpath=..")
        assert box.evaluate("e => e.scrollWidth > e.clientWidth")      # the table is wider than its box
        assert page.evaluate("document.documentElement.scrollWidth <= document.documentElement.clientWidth")
    finally:
        context.close()
    assert not problems, problems


def test_models_page_shows_lineage_and_the_report_as_tables(logged_in, ui_server):
    page = logged_in
    page.goto("/ui/models")
    row = page.locator("#models tr[data-model=animals]")
    expect(row).to_contain_text("animal classifier")
    row.get_by_role("link", name="animals").click()
    expect(page.locator("h1")).to_have_text("animals")
    lineage = page.locator("#lineage")
    expect(lineage.locator(".node.source")).to_contain_text("1.0.0")
    expect(lineage.locator(".node.compressed")).to_contain_text("1.0.0-int8")
    expect(lineage.locator(".tree .tree .tree .node.bundle")).to_have_count(2)   # under the compressed variant
    version = page.locator("#v-1\\.0\\.0-int8")
    expect(version.locator(".verdict")).to_have_attribute("data-verdict", "passed")
    expect(version.locator("table.gate-checks tbody tr")).to_have_count(1)
    expect(version.locator("table.gate-checks")).to_contain_text("top-1 agreement")
    # what the fallback kept in float depends on the CPU's int8 kernels (test_ui_console_http.py): the page says
    # what the stored report says
    kept = ui_server.fleet.bundles["1.3.0"].manifest.compression["float_operators"]
    expect(version.locator(".float-ops")).to_contain_text(", ".join(kept) if kept else "none")
    expect(page.locator("#versions tr[data-version='1.0.0-int8']")).to_contain_text("1.0.0")   # its parent


def test_bundle_page_renders_the_compression_report_as_tables(logged_in, ui_server):
    page = logged_in
    page.goto(f"/ui/bundles/{ui_server.fleet.bundles['1.3.0'].digest}")
    report = page.locator(".report")
    expect(report).to_have_attribute("data-structured", "yes")
    size = report.locator("table.report-table").first
    expect(size.locator("thead")).to_contain_text("Compressed")
    expect(size.locator("tbody tr").first).to_contain_text("model file")
    expect(report.locator("h4", has_text="Fidelity per output")).to_have_count(1)
    expect(report).to_contain_text("probs")
    expect(report).not_to_contain_text("{'")
    page.goto(f"/ui/bundles/{ui_server.fleet.bundles['1.2.0'].digest}")   # a report of another shape
    expect(page.locator(".report")).to_have_attribute("data-structured", "no")
    expect(page.locator(".report .verdict")).to_have_attribute("data-verdict", "passed")
    expect(page.locator(".report")).to_contain_text("dynamic_int8")


def test_audit_log_filters_from_the_page(logged_in, ui_server):
    page = logged_in
    page.goto("/ui/audit")
    expect(page.locator("#audit tbody tr").first).to_be_visible()
    page.fill("input[name=action]", "model")
    page.click("form.audit-filters button[type=submit]")
    rows = page.locator("#audit tbody tr")
    expect(rows.first).to_be_visible()
    actions = rows.evaluate_all("rs => rs.map(r => r.dataset.action)")
    assert actions and all(a.startswith("model") for a in actions)
    expect(page).to_have_url(re.compile(r"/ui/audit\?.*\baction=model\b"))
    page.fill("input[name=since]", "last tuesday")
    page.click("form.audit-filters button[type=submit]")
    expect(page.locator("#filter-error")).to_contain_text("From")
    expect(page.locator("input[name=since]")).to_have_attribute("aria-invalid", "true")


def test_error_page_is_styled_and_keeps_the_navigation(logged_in):
    response = logged_in.goto("/ui/bundles/0000000000000000")
    assert response.status == 404
    card = logged_in.locator("section.error-page")
    expect(card).to_have_attribute("data-status", "404")
    expect(card.locator("h1")).to_have_text("Not found")
    expect(card).to_contain_text("digest")                      # where
    expect(logged_in.locator("#main-nav")).to_be_visible()
    assert logged_in.locator("link[rel=stylesheet]").get_attribute("href") == "/ui/static/ui.css"


def test_docs_render_with_nothing_from_another_origin(page, ui_server):
    outside: list[str] = []
    page.on("request", lambda r: outside.append(r.url) if not r.url.startswith(ui_server.url) else None)
    page.goto("/docs")
    expect(page.locator(".opblock").first).to_be_visible(timeout=60_000)   # 1.5 MB of script on a busy machine
    expect(page.locator("#swagger-ui")).to_contain_text("/api/v1/devices")
    assert page.locator(".opblock").count() > 20
    assert outside == []


def test_drift_chart_labels_do_not_overlap_each_other_or_the_curve(logged_in):
    assert_drift_labels_clear(logged_in)


def assert_drift_labels_clear(page) -> None:
    """On cam-03's page: the threshold labels sit in the right margin, one above the other, the
    points left of them (also run at 400 px, test_ui_post_pages_axe.py)."""
    page.goto("/ui/devices/cam-03")
    chart = page.locator("#drift-chart svg[data-chart=drift]")
    labels = [chart.locator("text.th-label").nth(i).bounding_box() for i in range(2)]
    plot_right = chart.locator("line.threshold").first.evaluate("l => l.getBoundingClientRect().right")
    assert all(b is not None and b["x"] >= plot_right for b in labels)       # in the margin, off the curve
    a, b = sorted(labels, key=lambda box: box["y"])
    assert a["y"] + a["height"] <= b["y"] + 0.5                             # one above the other
    points_right = max(chart.locator("circle.pt").evaluate_all("cs => cs.map(c => c.getBoundingClientRect().right)"))
    assert points_right <= plot_right + 4


def test_overview_counts_recent_drift_and_lists_recent_events(logged_in, ui_server):
    page = logged_in
    expect(page.locator("[data-span=drift]")).to_have_text("last 60 min")
    feed = page.locator("#recent-events")
    expect(feed.locator("li[data-kind=offline][data-device=gate-02]")).to_have_count(1)
    expect(feed.locator("li[data-kind=event][data-device=gate-01]")).to_contain_text("inference.slow")
    expect(feed.locator("li[data-kind=drift][data-device=cam-03][data-level=alarm]")).to_have_count(1)
    expect(feed.locator("li[data-kind=drift][data-device=gate-01][data-level=warn]")).to_have_count(1)
    times = feed.locator("li").evaluate_all("ls => ls.map(l => l.querySelector('[title]').title)")
    assert times == sorted(times, reverse=True)                               # newest first
