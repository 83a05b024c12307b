"""The device list (/ui/devices, cloud/ui/device_list.py) in a real Chromium against a real controller (uvicorn)
with 130 devices: search, filters, sorting and paging, all in the URL; a bulk tag action end to end ("all
matching", confirmation, the tags on the devices, one audit entry) and by ticked rows; "deploy selected" onto
the deploy form; a viewer sees no selection and is refused; no horizontal scroll at 400 px and no serious
axe-core violation on the list's states and the confirmation page."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator

import pytest
from playwright.sync_api import expect

from edgefleet.cloud.services import audit, auth
from edgefleet.cloud.store.tables import Device

from .axe import axe_source, violations
from .conftest import Server, serve
from .test_ui_console import open_page
from .ui_device_fleet import N, device_id, seed_devices
from .ui_support import screenshot
from testkit import missing_part

pytestmark = pytest.mark.browser

@pytest.fixture(scope="module")
def list_server(tmp_path_factory) -> Iterator[Server]:
    with serve(tmp_path_factory.mktemp("device-list"), seed_devices) as server:
        yield server


@pytest.fixture
def server(list_server) -> Server:
    return list_server


@pytest.fixture(scope="module")
def axe() -> str:
    source = axe_source()
    if source is None:
        missing_part("npm is not installed: axe-core cannot be fetched from the npm registry")
    return source


def rows(page):
    return page.locator("#devices tbody tr")


def ids_on(page) -> list[str]:
    return page.locator("#devices tbody tr").evaluate_all("rs => rs.map(r => r.dataset.device)")


def tags_of(server: Server, device: str) -> list[str]:
    with server.controller.session() as session:
        found = session.get(Device, device)
        assert found is not None
        return list(found.tags)


def test_search_filter_sort_and_pages_live_in_the_url(logged_in, list_server):
    page = logged_in
    page.goto("/ui/devices")
    expect(page.locator("#device-range")).to_have_text("1–50 of 130")
    expect(rows(page)).to_have_count(50)
    assert ids_on(page)[:2] == ["node-000", "node-001"]
    expect(page.locator(".page-links a")).to_have_count(3)
    page.click("nav.pager a[rel=next]")
    expect(page.locator("#device-range")).to_have_text("51–100 of 130")
    assert ids_on(page)[0] == "node-050" and "page=2" in page.url

    page.fill("form.filters input[name=q]", "NODE-01")                      # id substring, any case
    page.select_option("select[name=tag]", "north")
    page.click("form.filters button[type=submit]")
    assert ids_on(page) == ["node-010", "node-012", "node-014", "node-016", "node-018"]
    assert re.search(r"q=NODE-01&tag=north", page.url) and "page=" not in page.url
    expect(page.locator("#device-range")).to_have_text("1–5 of 5")

    head = page.locator("th:has(a[data-sort=last_seen])")
    page.click("a[data-sort=last_seen]")                          # newest first on the first click
    expect(head).to_have_attribute("aria-sort", "descending")
    assert ids_on(page)[0] == "node-010"
    page.click("a[data-sort=last_seen]")
    expect(head).to_have_attribute("aria-sort", "ascending")
    assert ids_on(page)[0] == "node-018" and "q=NODE-01" in page.url and "dir=" not in page.url   # asc: the default
    expect(page.locator("form.filters input[name=q]")).to_have_value("NODE-01")   # the form keeps its state

    page.goto("/ui/devices?drift=alarm")                          # newest judged window of the span
    assert ids_on(page) == ["node-007"]
    expect(rows(page).first).to_contain_text("PSI 0.41")
    page.goto("/ui/devices?sort=drift&dir=desc&size=25")
    assert ids_on(page)[:3] == ["node-007", "node-008", "node-000"]      # node-009's alarm is older than the span
    expect(page.locator("#device-range")).to_have_text("1–25 of 130")
    expect(page.locator("#devices tr[data-device='node-009'] td").last).to_have_text("—")

    page.goto("/ui/devices")
    page.select_option("select[name=bundle]", "animals@1.3.0")
    page.select_option("select[name=update]", "failed")
    page.click("form.filters button[type=submit]")
    assert ids_on(page) == ["node-100", "node-125"]
    page.select_option("select[name=online]", "no")
    page.click("form.filters button[type=submit]")
    assert ids_on(page) == []                                     # 100 and 125 are online (i % 3 != 0)
    expect(page.locator("p.empty")).to_contain_text("No device matches")

    response = page.goto("/ui/devices?drift=purple")
    assert response is not None and response.status == 422
    expect(page.locator("#filter-error")).to_contain_text("not a drift level")
    expect(page.locator("select[name=drift]")).to_have_attribute("aria-invalid", "true")


def test_bulk_tag_all_matching_then_ticked_rows_with_audit(logged_in, list_server):
    page, server = logged_in, list_server
    tagged = [device_id(i) for i in range(0, N, 10) if i % 3 != 0]         # gpu and online
    page.goto("/ui/devices?tag=gpu&online=yes")
    assert ids_on(page) == tagged
    page.check("#all-matching")
    expect(page.locator("#selected-count")).to_have_text(f"All {len(tagged)} matching selected")
    page.select_option("#bulk-action", "add_tag")
    page.fill("#bulk-tags", "canary")
    page.click("#bulk-go")
    expect(page.locator("h1")).to_contain_text(f"Add tag canary to {len(tagged)} devices")
    expect(page.locator("#bulk-ids li")).to_have_count(len(tagged))
    assert all(tags_of(server, d).count("canary") == 0 for d in tagged)      # nothing changes before confirming
    page.click("#bulk-confirm-button")
    expect(page.locator("#bulk-notice")).to_have_text(f"Added tag canary to {len(tagged)} devices.")
    assert "tag=gpu" in page.url and "online=yes" in page.url                # back on the same filters
    assert all("canary" in tags_of(server, d) for d in tagged)
    assert "canary" not in tags_of(server, "node-000")                       # gpu but offline
    expect(page.locator("#devices tr[data-device='node-010'] .tags")).to_contain_text("canary")
    with server.controller.session() as session:
        entry = audit.list_entries(session, action="devices.bulk_tags", limit=1)[0]
    assert entry.actor.startswith("admin") and entry.target == f"devices:{len(tagged)}"
    assert entry.details["added"] == ["canary"] and entry.details["changed"] == len(tagged)
    assert entry.details["selection"] == {"all_matching": {"tag": "gpu", "online": "yes"}}

    page.goto("/ui/devices?tag=canary")                                      # ticked rows: take it off two
    page.check("#devices tr[data-device='node-010'] input[name=id]")
    page.check("#devices tr[data-device='node-020'] input[name=id]")
    expect(page.locator("#selected-count")).to_have_text("2 selected")
    page.select_option("#bulk-action", "remove_tag")
    page.fill("#bulk-tags", "canary")
    page.click("#bulk-go")
    expect(page.locator("#bulk-ids li")).to_have_count(2)
    page.click("#bulk-confirm-button")
    expect(page.locator("#bulk-notice")).to_have_text("Removed tag canary from 2 devices.")
    expect(rows(page)).to_have_count(len(tagged) - 2)
    assert "canary" not in tags_of(server, "node-010") and "canary" in tags_of(server, "node-040")
    with server.controller.session() as session:
        assert [e.details["changed"] for e in audit.list_entries(session, action="devices.bulk_tags")] == [
            2, len(tagged)]

    page.check("#devices tr[data-device='node-040'] input[name=id]")         # deploy selected -> the deploy form
    page.check("#devices tr[data-device='node-050'] input[name=id]")
    page.select_option("#bulk-action", "deploy")
    expect(page.locator("#bulk-tags")).to_be_hidden()
    page.click("#bulk-go")
    expect(page).to_have_url(re.compile(r"/ui/deploy\?device_ids=node-040"))
    expect(page.locator("#device_ids")).to_have_value("node-040 node-050")
    page.goto("/ui/devices?tag=canary")                                      # all matching a tag -> deploy by tag
    page.check("#all-matching")
    page.select_option("#bulk-action", "deploy")
    page.click("#bulk-go")
    expect(page.locator("#tag")).to_have_value("canary")
    expect(page.locator("#device_ids")).to_have_value("")


def test_a_viewer_sees_no_selection_and_is_refused(browser, list_server):
    with list_server.controller.session() as session:
        token = auth.create_token(session, name="list-viewer", role="viewer", actor="admin:test", now=time.time())[1]
    context = browser.new_context(base_url=list_server.url)
    try:
        page = context.new_page()
        page.goto("/ui/login")
        page.fill("#token", token)
        page.click("button[type=submit]")
        page.wait_for_url(f"{list_server.url}/")
        page.goto("/ui/devices")
        expect(rows(page)).to_have_count(50)
        expect(page.locator("#bulk")).to_have_count(0)
        expect(page.locator("input[name=id]")).to_have_count(0)
        csrf = page.locator("form[action$='/ui/logout'] input[name=csrf_token]").get_attribute("value")
        before = tags_of(list_server, "node-001")
        r = page.request.post(f"{list_server.url}/ui/devices/bulk", headers={"Origin": list_server.url},
                              form={"csrf_token": csrf or "", "action": "add_tag", "tags": "evil", "id": "node-001",
                                    "confirm": "yes"})
        assert r.status == 403 and "viewer) may not do this" in r.text()
        assert tags_of(list_server, "node-001") == before
    finally:
        context.close()


@pytest.mark.parametrize("width", (1280, 400))
def test_list_states_fit_and_pass_axe(browser, list_server, axe, width):
    context, page, problems = open_page(browser, list_server, width)
    failures = []
    try:
        for path, status in (("/ui/devices", 200), ("/ui/devices?tag=north&sort=last_seen&dir=desc&page=2", 200),
                             ("/ui/devices?size=7", 422)):
            response = page.goto(path)
            assert response is not None and response.status == status, path
            scroll = page.evaluate("[document.documentElement.scrollWidth, document.documentElement.clientWidth]")
            if scroll[0] > scroll[1]:
                failures.append(f"{path} at {width} px scrolls sideways: {scroll}")
            found = violations(page, axe)
            if found:
                failures.append(f"{path} at {width} px: {found}")
            screenshot(page, f"device-list-{width}-{re.sub(r'[^a-z0-9]+', '-', path)[:40]}")
        page.goto("/ui/devices?tag=south")
        page.check("#devices tr[data-device='node-001'] input[name=id]")
        page.fill("#bulk-tags", "spare")
        page.click("#bulk-go")
        expect(page.locator("#bulk-confirm")).to_be_visible()
        if page.evaluate("document.documentElement.scrollWidth > document.documentElement.clientWidth"):
            failures.append(f"the confirmation at {width} px scrolls sideways")
        found = violations(page, axe)
        if found:
            failures.append(f"the confirmation at {width} px: {found}")
        screenshot(page, f"device-list-{width}-confirm")
    finally:
        context.close()
    assert not failures, "\n".join(failures)
    assert not problems, problems
