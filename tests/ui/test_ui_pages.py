"""The web UI in a real Chromium against the real controller app: login, every page, the charts,
per-device deployment progress, live refresh and escaping of device-supplied text."""

from __future__ import annotations

import re
import time

import pytest
from playwright.sync_api import expect

from edgefleet.cloud.services import audit, auth, deployments
from edgefleet.protocol.messages import Event

from .ui_fleet import DEVICES, WINDOWS, XSS_TAG, XSS_TEXT, ingest
from .ui_support import screenshot

pytestmark = pytest.mark.browser

PAGES = ["/", "/ui/devices", "/ui/devices/cam-03", "/ui/bundles", "/ui/deployments"]


@pytest.mark.parametrize("path", PAGES)
def test_pages_redirect_to_login_without_a_session(page, ui_server, path):
    page.goto(path)
    expect(page).to_have_url(re.compile(r"/ui/login\?next="))
    expect(page.locator("h1")).to_have_text("Log in to the controller")
    expect(page.locator("header nav")).to_have_count(0)


def test_login_returns_to_the_requested_page(page, ui_server):
    page.goto("/ui/devices/cam-01")
    page.fill("#token", ui_server.admin_token)
    page.click("button[type=submit]")
    expect(page).to_have_url(f"{ui_server.url}/ui/devices/cam-01")
    expect(page.locator("h1")).to_contain_text("cam-01")


def test_login_cookie_is_httponly_and_samesite_strict(logged_in, ui_server):
    cookies = {c["name"]: c for c in logged_in.context.cookies()}
    cookie = cookies["edgefleet_ui"]
    assert cookie["httpOnly"] is True
    assert cookie["sameSite"] == "Strict"
    assert "edgefleet_ui" not in logged_in.evaluate("document.cookie")


def test_wrong_token_is_refused(page, ui_server):
    page.goto("/ui/login")
    page.fill("#token", "eft_not-a-real-token")
    page.click("button[type=submit]")
    expect(page.locator(".error")).to_contain_text("not valid")
    screenshot(page, "login")
    assert [c["name"] for c in page.context.cookies()] == ["edgefleet_login"]   # the form's CSRF nonce only
    page.goto("/")
    expect(page).to_have_url(re.compile(r"/ui/login"))


def test_device_token_cannot_log_in(page, ui_server):
    with ui_server.controller.session() as session:
        _, secret = auth.create_token(session, name="device cam-01", role="device", device_id="cam-01",
                                      actor="device:cam-01", now=time.time())
    page.goto("/ui/login")
    page.fill("#token", secret)
    page.click("button[type=submit]")
    expect(page.locator(".error")).to_be_visible()
    assert [c["name"] for c in page.context.cookies()] == ["edgefleet_login"]   # the form's CSRF nonce only


def test_logout_ends_the_session(logged_in, ui_server):
    logged_in.click("text=Log out")
    expect(logged_in).to_have_url(re.compile(r"/ui/login"))
    logged_in.goto("/ui/devices")
    expect(logged_in).to_have_url(re.compile(r"/ui/login\?next=/ui/devices"))


def test_overview_shows_the_counts(logged_in, ui_server):
    page = logged_in
    fleet = ui_server.fleet

    def count(name: str) -> str:
        return page.locator(f"[data-count={name}]").inner_text()

    assert count("devices") == str(len(DEVICES))
    assert count("online") == str(len(fleet.online))
    assert count("offline") == str(len(fleet.offline))
    assert count("active-deployments") == "1"
    assert count("drift-alarms") == "1"
    assert count("bundles") == "2"
    donut = page.locator("svg[data-chart=fleet]")
    expect(donut).to_be_visible()
    expect(donut.locator("text.donut-value")).to_have_text(f"{len(fleet.online)}/{len(DEVICES)}")
    alarms = page.locator("#drift-alarms tbody tr")
    expect(alarms).to_have_count(2)
    expect(alarms.first).to_contain_text("cam-03")
    expect(alarms.first).to_contain_text("alarm")
    expect(page.locator(f"a[href='/ui/deployments/{fleet.deployment_id}']").first).to_be_visible()


def test_device_list_shows_devices_and_their_online_state(logged_in, ui_server):
    page = logged_in
    page.goto("/ui/devices")
    rows = page.locator("#devices tbody tr")
    expect(rows).to_have_count(len(DEVICES))
    for device_id, spec in DEVICES.items():
        row = page.locator(f"#devices tr[data-device='{device_id}']")
        expect(row.locator(".online-state")).to_have_attribute("data-online", "yes" if spec["online"] else "no")
        expect(row).to_contain_text("animals 1.2.0")
    expect(page.locator("#devices tr[data-device='cam-03']")).to_contain_text("alarm")
    page.select_option("select[name=online]", "no")
    page.click("form.filters button")
    expect(rows).to_have_count(len(ui_server.fleet.offline))
    expect(rows.first).to_contain_text("gate-02")


def test_device_detail_renders_latency_and_drift_charts(logged_in, ui_server):
    page = logged_in
    page.goto("/ui/devices/cam-03")
    expect(page.locator("h1")).to_contain_text("cam-03")
    latency = page.locator("#latency-chart svg[data-chart=latency]")
    expect(latency).to_be_visible()
    assert int(latency.get_attribute("data-points")) == 2 * WINDOWS       # p50 and p95 per window
    expect(latency.locator("circle.pt")).to_have_count(2 * WINDOWS)
    expect(latency.locator("polyline.line")).to_have_count(2)
    box = latency.bounding_box()
    assert box and box["width"] > 300 and box["height"] > 100
    drift = page.locator("#drift-chart svg[data-chart=drift]")
    expect(drift.locator("circle.pt")).to_have_count(2 * WINDOWS)         # PSI and JS per window
    expect(drift.locator("line.threshold")).to_have_count(2)
    expect(drift.locator("rect.band-alarm")).to_have_count(1)
    # The newest PSI point lies above the alarm line (smaller y), the first one below it.
    alarm_y = float(drift.locator("line.th-alarm").get_attribute("y1"))
    psi_points = drift.locator("circle.pt.s3")
    assert float(psi_points.last.get_attribute("cy")) < alarm_y < float(psi_points.first.get_attribute("cy"))
    preds = page.locator("#predictions-chart svg[data-chart=predictions]")
    expect(preds.locator("rect.bar")).to_have_count(3)
    expect(preds.locator("line.ref-mark")).to_have_count(3)
    expect(page.locator("#device-deployments tbody tr")).to_have_count(1)
    expect(page.locator(".kpi-bad")).to_contain_text("alarm")


def test_device_without_telemetry_shows_empty_charts(logged_in):
    logged_in.goto("/ui/devices/gate-02")
    expect(logged_in.locator("#latency-chart svg.chart-empty")).to_contain_text("no telemetry yet")
    expect(logged_in.locator("h1 .online-state")).to_have_attribute("data-online", "no")


def test_unknown_device_is_a_404_page(logged_in):
    response = logged_in.goto("/ui/devices/no-such-device")
    assert response.status == 404
    expect(logged_in.locator("h1")).to_have_text("Not found")


def test_deployment_page_shows_per_device_progress(logged_in, ui_server):
    page = logged_in
    fleet = ui_server.fleet
    page.goto("/ui/deployments")
    row = page.locator(f"#deployments tr[data-deployment='{fleet.deployment_id}']")
    expect(row).to_contain_text("animals 1.3.0")
    expect(row).to_contain_text("2 / 4 finished")
    expect(row.locator("svg[data-chart=progress] rect.seg")).to_have_count(4)
    row.locator("a.mono").click()
    expect(page).to_have_url(f"{ui_server.url}/ui/deployments/{fleet.deployment_id}")
    targets = page.locator("#targets tbody tr")
    expect(targets).to_have_count(len(fleet.targets))
    for device_id, report in fleet.targets.items():
        target = page.locator(f"#targets tr[data-device='{device_id}']")
        expect(target).to_have_attribute("data-state", report["state"])
        expect(target).to_have_attribute("data-outcome", report.get("outcome") or "")
    failed = page.locator("#targets tr[data-device='gate-01']")
    expect(failed).to_contain_text("smoke_test_failed")
    expect(failed).to_contain_text("output 0 differs")
    downloading = page.locator("#targets tr[data-device='cam-02'] progress")
    done, total = fleet.targets["cam-02"]["bytes_done"], fleet.targets["cam-02"]["bytes_total"]
    expect(downloading).to_have_attribute("value", str(done))
    expect(downloading).to_have_attribute("max", str(total))
    expect(page.locator("main")).to_have_attribute("data-refresh", "3")


def test_bundle_pages_show_manifest_and_lineage(logged_in, ui_server):
    page = logged_in
    page.goto("/ui/bundles")
    expect(page.locator("#bundles tbody tr")).to_have_count(2)
    page.click("text=animals >> nth=0")
    expect(page.locator("h1")).to_contain_text("animals")
    expect(page.locator(".lineage")).to_contain_text("1.0.0-int8")
    expect(page.locator(".lineage .node.this")).to_have_count(1)
    expect(page.locator("dl.facts").first).to_contain_text("model.onnx")
    expect(page.locator("svg[data-chart=reference] rect.bar")).to_have_count(3)


def test_pages_refresh_in_place(logged_in, ui_server):
    """The device page polls itself and swaps <main> without reloading."""
    page = logged_in
    page.goto("/ui/devices/cam-01")
    expect(page.locator("main")).to_have_attribute("data-refresh", "10")
    page.evaluate("window.__sameDocument = true")
    controller = ui_server.controller
    event = Event(device_id="cam-01", level="info", kind="model.reloaded", text="refresh-marker-42")
    ingest(controller, "cam-01", "events", event, time.time())   # signed by cam-01's key, stored once
    expect(page.locator("main")).to_contain_text("refresh-marker-42", timeout=20_000)
    assert page.evaluate("window.__sameDocument") is True


def test_device_text_is_escaped(logged_in, ui_server):
    """A tag and an event text full of HTML show up as text; nothing of them runs or parses."""
    page = logged_in
    for path in ("/", "/ui/devices", "/ui/devices/gate-01"):
        page.goto(path)
        expect(page.locator("main")).to_be_visible()
        assert page.evaluate("window.__xss") is None
        assert page.locator("img[src=x]").count() == 0
        assert page.locator("main script").count() == 0
    page.goto("/ui/devices")
    expect(page.locator("#devices tr[data-device='gate-01'] .tag").first).to_have_text(XSS_TAG)
    page.goto("/ui/devices/gate-01")
    expect(page.locator("ul.events")).to_contain_text(XSS_TEXT)


def test_every_page_renders(logged_in, ui_server):
    """Every page answers 200 with no script error; EDGEFLEET_UI_SCREENSHOTS=dir keeps screenshots."""
    page = logged_in
    fleet = ui_server.fleet
    screenshot(page, "overview")
    for path, name in [("/ui/devices", "devices"), ("/ui/devices/cam-03", "device"), ("/ui/bundles", "bundles"),
                       (f"/ui/bundles/{fleet.bundles['1.3.0'].digest}", "bundle"),
                       ("/ui/deployments", "deployments"), (f"/ui/deployments/{fleet.deployment_id}", "deployment")]:
        response = page.goto(path)
        assert response.status == 200, path
        screenshot(page, name)


def test_operator_cancels_a_deployment(logged_in, ui_server):
    controller = ui_server.controller
    with controller.session() as session:
        dep = deployments.create_deployment(session, bundle_digest=ui_server.fleet.bundles["1.3.0"].digest,
                                            issuer=controller.issuer, actor="admin:ui-test", now=time.time(),
                                            timeout_s=600, device_ids=["gate-02"])
        dep_id = dep.id
    page = logged_in
    page.goto(f"/ui/deployments/{dep_id}")
    expect(page.locator("#targets tr[data-device='gate-02']")).to_have_attribute("data-outcome", "")
    page.click("#cancel summary")
    page.click("#cancel button[type=submit]")
    expect(page).to_have_url(f"{ui_server.url}/ui/deployments/{dep_id}")
    expect(page.locator("h1 .badge")).to_have_text("cancelled")
    expect(page.locator("#targets tr[data-device='gate-02']")).to_have_attribute("data-outcome", "cancelled")
    expect(page.locator("#cancel")).to_have_count(0)
    with controller.session() as session:
        entries = audit.list_entries(session, action="deployment.cancel", target=f"deployment:{dep_id}")
        assert [e.actor for e in entries] == ["admin:admin"]
