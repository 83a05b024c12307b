"""Chart ranges, fleet trends and live updates in a real Chromium, against a controller of their own (it does
not reconcile in the background: the test runs the reconciler, so devices go offline exactly when it says).

The seed: three devices on the animal classifier; tr-01 and tr-02 were last heard from 7 hours ago (past the
6-hour heartbeat timeout of the UI test controller), tr-03 is online and has 400 telemetry windows, one every
20 minutes over the last five and a half days (more than a 7-day chart has points for, so they merge)."""

from __future__ import annotations

import re
import time

import numpy as np
import pytest
from playwright.sync_api import expect

from edgefleet.cloud.mqtt.ingest import Raw
from edgefleet.protocol.messages import State, encode
from edgefleet.protocol.topics import device_topic

from .axe import axe_source
from .conftest import serve
from .test_ui_console import check_pages
from .ui_fleet import KEYS, _window, build_release, enroll, hello, ingest, installed, register_release
from testkit import missing_part

pytestmark = pytest.mark.browser

LONG_WINDOWS, LONG_SPACING = 400, 1200.0
TAGS = {"tr-01": ["site-a"], "tr-02": ["site-b"], "tr-03": ["site-a", "camera"]}


def seed_trends(controller, *, now: float) -> dict:
    release = build_release()
    register_release(controller, release, now=now)
    bundle = release.bundles["1.2.0"]
    rng = np.random.default_rng(5)
    for device_id, tags in TAGS.items():
        enroll(controller, device_id, tags, now=now - 8 * 3600)
    for device_id in ("tr-01", "tr-02"):
        hello(controller, device_id, TAGS[device_id], bundle, now=now - 7 * 3600)
    topic = device_topic("tr-03", "telemetry", controller.settings.topic_prefix)
    batch = []
    for seq in range(LONG_WINDOWS):                           # one batch through the real ingest path
        end = now - 60 - (LONG_WINDOWS - 1 - seq) * LONG_SPACING
        window = _window("tr-03", seq, end, bundle, {"drift": "ok", "latency": 2.0}, rng)
        batch.append(Raw(topic, KEYS[id(controller), "tr-03"].seal(topic, encode(window)), end))
    assert controller.ingestor.process(batch).stored == LONG_WINDOWS
    hello(controller, "tr-03", TAGS["tr-03"], bundle, now=now - 30)
    ingest(controller, "tr-03", "state", State(device_id="tr-03", status="online", update_state="committed",
                                               installed=installed(bundle), heartbeat_interval_s=30, sent_at=now - 20),
           now - 20)
    return {"bundle": bundle}


@pytest.fixture(scope="module")
def trends_server(tmp_path_factory):
    with serve(tmp_path_factory.mktemp("trends"), seed_trends, reconcile_in_background=False) as server:
        yield server


@pytest.fixture
def server(trends_server):
    return trends_server


@pytest.fixture(scope="module")
def axe() -> str:
    source = axe_source()
    if source is None:
        missing_part("npm is not installed: axe-core cannot be fetched from the npm registry")
    return source


def points(page, chart: str) -> int:
    return int(page.locator(f"svg[data-chart={chart}]").get_attribute("data-points") or "0")


def axis_labels(page, chart: str) -> list[str]:
    return page.locator(f"svg[data-chart={chart}] text.tick[text-anchor=middle]").all_text_contents()


def values(page, chart: str, series: str) -> list[float]:
    """The values of one series of a line chart, read from its points' tooltips."""
    titles = page.locator(f"svg[data-chart={chart}] circle.pt title").all_text_contents()
    return [float(t.split(": ", 1)[1].split(" ", 1)[0]) for t in titles if t.startswith(series + ": ")]


def test_the_range_picker_changes_what_the_device_charts_hold(logged_in):
    page = logged_in
    page.goto("/ui/devices/tr-03")
    expect(page.locator("#range-picker a.current")).to_have_text("6 h")
    six_hours = points(page, "latency")
    assert six_hours == 2 * 18                               # p50 and p95 of the windows of the last 6 hours
    page.locator("#range-picker a[data-range='1h']").click()
    expect(page).to_have_url(re.compile(r"/ui/devices/tr-03\?range=1h#charts$"))
    assert points(page, "latency") == 2 * 3
    assert all(re.fullmatch(r"\d\d:\d\d", label) for label in axis_labels(page, "latency"))
    page.locator("#range-picker a[data-range='7d']").click()
    expect(page.locator("#range-picker a.current")).to_have_text("7 d")
    week = points(page, "latency")
    assert 2 * 100 < week < 2 * LONG_WINDOWS                 # 400 windows merged into at most 240 points
    labels = axis_labels(page, "latency")
    assert len(labels) >= 3 and all(re.fullmatch(r"\d\d-\d\d", label) for label in labels)
    expect(page.locator("#latency-chart").locator("..")).to_contain_text("each point merges several")
    assert points(page, "drift") == week                      # PSI and JS per merged point, like latency
    page.goto("/ui/devices/tr-03?range=2h")
    expect(page.locator("main")).to_contain_text("is not a chart range")
    expect(page.locator("main")).to_contain_text("use one of 1h, 6h, 24h, 7d")


def test_trends_show_a_device_going_offline_and_coming_back(logged_in, trends_server):
    page = logged_in
    controller = trends_server.controller
    report = controller.reconcile()                          # the real reconciler: 7 h of silence > 6 h
    assert sorted(report.went_offline) == ["tr-01", "tr-02"]
    ingest(controller, "tr-01", "state", State(device_id="tr-01", status="online", update_state="idle",
                                               heartbeat_interval_s=30, sent_at=time.time()), time.time())
    page.goto("/ui/trends?range=1h")
    expect(page.locator("#trend-changes tr[data-device='tr-01'][data-online='no']")).to_contain_text(
        "no heartbeat within the timeout")
    expect(page.locator("#trend-changes tr[data-device='tr-01'][data-online='yes']")).to_contain_text("came online")
    expect(page.locator("#trend-changes tr[data-device='tr-02'][data-online='no']")).to_have_count(1)
    expect(page.locator("#trend-changes tr[data-device='tr-02'][data-online='yes']")).to_have_count(0)
    assert min(values(page, "trend-online", "fewest online")) == 1     # only tr-03 while both were gone
    assert values(page, "trend-online", "online")[-1] == 2             # tr-03 and tr-01, back
    assert values(page, "trend-versions", "animals 1.2.0")[-1] == 3
    page.goto("/")
    back = page.locator("#recent-events li[data-kind='online'][data-device='tr-01']")
    expect(back).to_contain_text("came back")
    expect(back).to_contain_text("offline")
    expect(page.locator("#recent-events li[data-kind='offline'][data-device='tr-02']")).to_contain_text(
        "no heartbeat within the timeout")


def test_a_live_page_refetches_only_when_something_changed(logged_in, trends_server):
    page = logged_in
    page.goto("/ui/trends?range=1h")
    version = page.locator("main").get_attribute("data-live-version")
    assert version and page.request.get("/ui/live.json").json()["version"] == version
    page.evaluate("window.__sameDocument = true")
    fetched: list[str] = []
    page.on("request", lambda r: fetched.append(r.url))
    with page.expect_request(re.compile(r"/ui/live\.json")):
        pass                                                  # the first poll: nothing changed
    page.wait_for_timeout(300)
    assert not [u for u in fetched if "/ui/trends" in u]     # so the page was not fetched again
    expect(page.locator("#live-state")).to_contain_text(re.compile(r"live · updated \d+ s ago"))
    now = time.time()
    ingest(trends_server.controller, "tr-03", "state", State(device_id="tr-03", status="offline", sent_at=now), now)
    assert page.request.get("/ui/live.json").json()["version"] != version      # its last will: offline
    expect(page.locator("#trend-changes tr[data-device='tr-03'][data-online='no']")).to_contain_text(
        "last will", timeout=20_000)
    assert page.evaluate("window.__sameDocument") is True    # swapped in place, not reloaded
    expect(page.locator("main")).not_to_have_attribute("data-live-version", version)
    page.evaluate("document.querySelector('main').insertAdjacentHTML('beforeend', "
                  "'<details open id=\"acting\"><summary>x</summary></details>')")
    expect(page.locator("#live-state")).to_contain_text("paused (a form is open)")


@pytest.mark.parametrize("width", (1280, 400))
def test_trend_and_range_pages_fit_and_pass_axe(browser, trends_server, axe, width):
    check_pages(browser, trends_server, axe, [("/ui/trends?range=7d", 200), ("/ui/devices/tr-03?range=7d", 200),
                                              ("/ui/trends?range=1w", 422)], width, "trends")


def test_without_javascript_the_pages_still_work(browser, trends_server):
    context = browser.new_context(base_url=trends_server.url, java_script_enabled=False)
    page = context.new_page()
    try:
        page.goto("/ui/login")
        page.fill("#token", trends_server.admin_token)
        page.click("button[type=submit]")
        page.goto("/ui/trends")
        expect(page.locator("#live-state")).to_be_hidden()   # no claim of being live without the script
        page.locator("#range-picker a[data-range='7d']").click()
        expect(page.locator("#range-picker a.current")).to_have_text("7 d")
        assert points(page, "trend-online") > 0
    finally:
        context.close()
