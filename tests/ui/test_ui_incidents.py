"""The incident pages in a real Chromium against the real controller app: a controller of this module's
own, seeded with the UI fleet (:mod:`ui_fleet`: cam-03 drifts into alarm now) plus a drift spell of
cam-01 and cam-02 three hours ago, judged by the real incident pass. The list and its state filter,
the nav link, the overview's count, an incident's cohort, devices and drift chart, and a close by role."""

from __future__ import annotations

import time

import numpy as np
import pytest
from playwright.sync_api import Page, expect

from edgefleet.cloud.controller import Controller
from edgefleet.cloud.services import audit, auth
from edgefleet.cloud.services.incidents import service as incidents
from edgefleet.protocol.vocabulary import DriftLevel

from .conftest import serve
from .ui_fleet import WINDOW_S, Fleet, _window, ingest, seed
from .ui_support import screenshot

pytestmark = pytest.mark.browser

SPELL = 6
"""Alarm windows of cam-01 and cam-02 in their old drift spell."""


def seed_incidents(controller: Controller, *, now: float) -> Fleet:
    fleet = seed(controller, now=now)
    rng = np.random.default_rng(3)
    start = now - 3 * 3600
    for offset, device_id in enumerate(("cam-01", "cam-02")):
        for i in range(SPELL):   # an ok window of the seed's, its drift replaced by an alarm
            window = _window(device_id, 1000 + i, start + i * WINDOW_S, fleet.bundles["1.2.0"],
                             fleet.devices[device_id], rng)
            drift = window.drift.model_copy(update={"psi": 0.3 + 0.02 * i + 0.05 * offset, "level": DriftLevel.ALARM,
                                                    "samples": 150})
            ingest(controller, device_id, "telemetry", window.model_copy(update={"drift": drift}), start + i * WINDOW_S)
    controller.process_incidents(now)
    return fleet


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with serve(tmp_path_factory.mktemp("incidents"), seed_incidents, reconcile_in_background=False) as server:
        yield server


def found(server) -> dict[str, str]:
    """``{"device:cam-03": incident id, ...}`` of what the pass opened."""
    with server.controller.session() as session:
        return {f"{i.cohort_kind}:{i.cohort_key}": i.id for i in incidents.list_incidents(session)}


def log_in(page: Page, server, role: str) -> Page:
    with server.controller.session() as session:
        _, secret = auth.create_token(session, name=f"{role}-ui", role=role, actor="admin:ui-test", now=time.time())
    page.goto("/ui/login")
    page.fill("#token", secret)
    page.click("button[type=submit]")
    page.wait_for_url(f"{server.url}/")
    return page


def test_the_pass_found_the_drifting_device_now_and_the_old_spell(server):
    assert set(found(server)) == {"device:cam-03", "device:cam-01", "device:cam-02", "tag:site-a", "tag:camera"}


def test_the_list_shows_every_incident_and_filters_by_state(logged_in, server):
    page = logged_in
    ids = found(server)
    expect(page.locator("#kpi-incidents [data-count=open-incidents]")).to_have_text("1")
    expect(page.locator(f"#open-incidents a[href$='/ui/incidents/{ids['device:cam-03']}']")).to_be_visible()
    page.click("header nav >> text=Incidents")
    expect(page).to_have_url(f"{server.url}/ui/incidents")
    expect(page.locator("#incidents tbody tr")).to_have_count(5)
    tag = page.locator(f"#incidents tr[data-incident='{ids['tag:site-a']}']")
    expect(tag).to_have_attribute("data-state", "closed")
    expect(tag).to_contain_text("2 devices")
    expect(tag).to_contain_text("animals 1.2.0")
    expect(tag.locator(".reason-text")).to_have_text("no alarm window for 600 s")
    screenshot(page, "incidents")
    page.click(".pills >> text=open (1)")
    expect(page).to_have_url(f"{server.url}/ui/incidents?state=open")
    expect(page.locator("#incidents tbody tr")).to_have_count(1)
    expect(page.locator("#incidents tbody tr")).to_have_attribute("data-cohort", "device:cam-03")


def test_a_tag_incident_shows_its_cohort_devices_and_a_drift_line_per_device(logged_in, server):
    page = logged_in
    incident_id = found(server)["tag:site-a"]
    page.goto(f"/ui/incidents/{incident_id}")
    expect(page.locator("h1")).to_contain_text(incident_id)
    expect(page.locator("#cohort")).to_contain_text("tag site-a")
    expect(page.locator("#devices a")).to_have_text(["cam-01", "cam-02"])
    expect(page.locator("#closed")).not_to_contain_text("not yet")
    chart = page.locator("#incident-chart svg[data-chart=incident-drift]")
    expect(chart.locator("polyline.line.s1")).to_have_count(1)
    expect(chart.locator("polyline.line.s2")).to_have_count(1)
    expect(chart.locator("circle.pt")).to_have_count(2 * SPELL)
    expect(chart.locator("rect.band-alarm")).to_have_count(1)
    alarm_y = float(chart.locator("line.th-alarm").get_attribute("y1"))
    assert all(float(c.get_attribute("cy")) < alarm_y for c in chart.locator("circle.pt").all())
    expect(page.locator("#incident-windows tbody tr[data-level=alarm]")).to_have_count(2 * SPELL)
    expect(page.locator("#act-close")).to_have_count(0)
    screenshot(page, "incident-tag")


def test_a_viewer_watches_an_open_incident_and_an_operator_closes_it_with_a_reason(page, server):
    incident_id = found(server)["device:cam-03"]
    viewer = log_in(page, server, "viewer")
    viewer.goto(f"/ui/incidents/{incident_id}")
    expect(viewer.locator("h1 .badge")).to_have_text("open")
    expect(viewer.locator("#act-close")).to_have_count(0)
    expect(viewer.locator("#actions")).to_contain_text("operators close it")
    chart = viewer.locator("#incident-chart svg[data-chart=incident-drift]")
    expect(chart.locator("polyline.line.s1")).to_have_count(1)
    viewer.click("text=Log out")

    operator = log_in(page, server, "operator")
    operator.goto(f"/ui/incidents/{incident_id}")
    screenshot(operator, "incident-open")
    operator.click("#act-close summary")
    operator.fill("#act-close input[name=reason]", "camera re-aimed <b>on site</b>")
    operator.click("#act-close button[type=submit]")
    expect(operator).to_have_url(f"{server.url}/ui/incidents/{incident_id}")
    expect(operator.locator("h1 .badge")).to_have_text("closed")
    expect(operator.locator("#reason")).to_have_text("closed by operator:operator-ui: camera re-aimed <b>on site</b>")
    expect(operator.locator("#act-close")).to_have_count(0)
    with server.controller.session() as session:
        [entry] = audit.list_entries(session, action="incident.close")
    assert entry.actor == "operator:operator-ui" and entry.target == f"incident:{incident_id}"
    operator.goto("/")
    expect(operator.locator("#kpi-incidents [data-count=open-incidents]")).to_have_text("0")
