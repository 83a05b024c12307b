"""The console pages without a browser: error pages (HTML for pages, JSON for the API), the audit log's
filters and paging, the models page, /docs served from the controller, and the pure cores behind them
(compression report tables, the recent-events feed, threshold labels)."""

from __future__ import annotations

import re
import time
from types import SimpleNamespace

import numpy as np
import pytest
from fastapi.testclient import TestClient

from edgefleet.cloud.services import audit, auth, registry
from edgefleet.cloud.ui import charts, feed
from edgefleet.cloud.ui.audit_log import PAGE_SIZE, parse_utc
from edgefleet.cloud.ui.error_pages import error_fields, wants_page
from edgefleet.cloud.ui.report_view import report_view
from edgefleet.protocol.errors import InvalidRequestError

from .test_ui_http import login
from .ui_fleet import (
    LEGACY_REPORT,
    WINDOWS,
    _window,
    build_release,
    compression_report,
    enroll,
    hello,
    ingest,
    register_release,
)


@pytest.fixture(scope="module")
def real_report() -> dict:
    return compression_report()


# --------------------------------------------------------------------------- error pages

def test_an_unknown_page_is_a_styled_404_and_an_unknown_api_path_stays_json(client):
    login(client)
    page = client.get("/ui/no-such-page")
    assert page.status_code == 404 and page.headers["content-type"].startswith("text/html")
    assert '<h1>Not found</h1>' in page.text and 'href="/ui/static/ui.css"' in page.text
    assert "<nav" in page.text                                   # signed in: the top bar is there
    assert "script-src 'self'" in page.headers["content-security-policy"]
    api = client.get("/api/v1/no-such-thing")
    assert api.status_code == 404 and api.headers["content-type"] == "application/json"
    assert api.json()["error"]["code"] == "not_found"


def test_a_parameter_that_does_not_parse_is_a_422_page_naming_it(client):
    login(client)
    r = client.get("/ui/audit?page=first")
    assert r.status_code == 422 and "Cannot read the request" in r.text
    assert re.search(r"<dt>Where</dt><dd[^>]*>query\.page</dd>", r.text)


def test_a_wrong_method_is_a_405_page_keeping_allow(client):
    r = client.delete("/ui/models")
    assert r.status_code == 405 and r.headers["allow"] == "GET" and "Not possible here" in r.text


def test_a_viewer_gets_a_403_page_for_the_audit_log(client, app):
    with app.state.controller.session() as session:
        _, secret = auth.create_token(session, name="watcher", role="viewer", actor="admin:admin", now=time.time())
    login(client, secret)
    r = client.get("/ui/audit")
    assert r.status_code == 403 and "Not allowed" in r.text and "needs operator" in r.text
    assert 'href="/ui/audit"' not in r.text                      # and the top bar offers no audit link


def test_a_failing_page_is_a_500_page_and_the_api_keeps_json(app):
    def boom() -> None:
        raise RuntimeError("database on fire")

    app.add_api_route("/ui/boom", boom)
    app.add_api_route("/api/v1/boom", boom)
    with TestClient(app, raise_server_exceptions=False) as c:
        r = c.get("/ui/boom")
        assert r.status_code == 500 and "Something went wrong" in r.text and "database on fire" not in r.text
        assert c.get("/api/v1/boom").status_code == 500


@pytest.mark.parametrize(("path", "accept", "page"), [
    ("/", b"*/*", True), ("/ui/devices", b"application/json", True), ("/api/v1/devices", b"text/html", False),
    ("/healthz", b"text/html", False), ("/nowhere", b"text/html,application/xhtml+xml", True),
    ("/nowhere", b"application/json", False)])
def test_which_answers_become_pages(path, accept, page):
    assert wants_page({"path": path, "headers": [(b"accept", accept)]}) is page


def test_error_fields_read_our_json_body_and_plain_text():
    body = b'{"error": {"code": "not_found", "message": "no bundle \'x\'", "where": "digest", "hint": null}}'
    assert error_fields(404, body, "application/json") == {"message": "no bundle 'x'", "where": "digest",
                                                          "hint": None, "code": "not_found"}
    assert error_fields(404, b"not found", "text/plain")["message"] == "not found"
    assert error_fields(404, b"{broken", "application/json")["message"] == "There is no page at this address."


# --------------------------------------------------------------------------- audit log

def _entries(app, n: int, *, at: float) -> None:
    with app.state.controller.session() as session:
        for i in range(n):
            audit.record(session, actor="admin:alice" if i % 2 else "admin:bob", action=f"device.tag.{i % 3}",
                         target=f"device:d{i}", now=at + i, details={"n": i})
        session.commit()


def test_audit_log_pages_on_the_server_and_filters(client, app):
    login(client)
    _entries(app, PAGE_SIZE + 10, at=1_700_000_000.0)
    first = client.get("/ui/audit?action=device.tag")
    assert first.status_code == 200
    assert first.text.count('data-action="device.tag.') == PAGE_SIZE and 'rel="next"' in first.text
    second = client.get("/ui/audit?action=device.tag&page=2")
    assert second.text.count('data-action="device.tag.') == 10 and 'rel="next"' not in second.text
    assert 'rel="prev" href="/ui/audit?action=device.tag&amp;page=1"' in second.text
    bob = client.get("/ui/audit?actor=admin:bob&action=device.tag")
    assert bob.text.count("data-entry=") == (PAGE_SIZE + 10 + 1) // 2
    one = client.get("/ui/audit?target=device:d7")
    assert one.text.count("data-entry=") == 1 and "admin:alice" in one.text
    window = client.get("/ui/audit?action=device.tag&since=2023-11-14 22:13:25&until=2023-11-14 22:13:30")
    assert window.text.count("data-entry=") == 5                  # at 1_700_000_005 .. 1_700_000_009


def test_an_unreadable_time_filter_is_a_422_next_to_its_field(client):
    login(client)
    r = client.get("/ui/audit?since=yesterday")
    assert r.status_code == 422
    assert 'data-where="since"' in r.text and "YYYY-MM-DD" in r.text and "data-entry=" not in r.text
    assert 'name="since" value="yesterday"' in r.text and 'aria-invalid="true"' in r.text


def test_parse_utc():
    assert parse_utc("2023-11-14", where="since") == 1_699_920_000.0
    assert parse_utc("2023-11-14T22:13:20", where="since") == 1_700_000_000.0
    assert parse_utc("  ", where="since") is None
    with pytest.raises(InvalidRequestError) as caught:
        parse_utc("14/11/2023", where="until")
    assert caught.value.where == "until" and "YYYY-MM-DD" in (caught.value.hint or "")


# --------------------------------------------------------------------------- models and reports

def test_models_pages_list_versions_and_unknown_model_is_404(client, app, real_report):
    login(client)
    now = time.time()
    with app.state.controller.session() as session:
        registry.create_model(session, name="kws", description="keyword spotter", actor="admin:admin", now=now)
        registry.create_model_version(session, model_name="kws", version="2.0", actor="admin:admin", now=now)
        registry.create_model_version(session, model_name="kws", version="2.0-int8", kind="compressed",
                                      parent_version="2.0", report=real_report, actor="admin:admin", now=now)
        session.commit()
    listing = client.get("/ui/models")
    assert listing.status_code == 200 and 'data-model="kws"' in listing.text and "keyword spotter" in listing.text
    detail = client.get("/ui/models/kws")
    assert detail.status_code == 200
    assert 'data-version="2.0-int8"' in detail.text and 'data-verdict="passed"' in detail.text
    assert "Fidelity per output" in detail.text and "{'" not in detail.text     # no Python reprs
    missing = client.get("/ui/models/nope")
    assert missing.status_code == 404 and "no model &#39;nope&#39;" in missing.text


def test_a_compression_report_becomes_tables(real_report):
    view = report_view(real_report)
    assert view is not None and view.structured and view.verdict == "passed"
    titles = [t.title for t in view.tables]
    assert titles[0] == "Size" and "Accuracy gate" in titles and any(t.startswith("Fidelity") for t in titles)
    size = view.tables[0]
    assert size.rows[0][0] == "model file" and size.rows[0][3].endswith("×")
    fidelity = next(t for t in view.tables if t.title.startswith("Fidelity"))
    assert [r[0] for r in fidelity.rows] == ["probs"] and "top-1 agreement 100.00%" in fidelity.rows[0][2]
    # which operators the fallback keeps in float depends on the CPU's int8 kernels (an AVX2-only EPYC keeps
    # matmul_0 for this model, a VNNI one none): the view lists exactly what the report says
    assert view.float_operators == real_report["float_operators"]


def test_a_failed_gate_is_shown_failed_with_its_check(real_report):
    checks = [dict(c, passed=False, value=0.5) for c in real_report["gate"]["checks"]]
    view = report_view(dict(real_report, gate=dict(real_report["gate"], passed=False, checks=checks)))
    assert view is not None and view.verdict == "failed" and "probs failed" in view.verdict_text
    gate = next(t for t in view.tables if t.title == "Accuracy gate")
    assert gate.row_css == ["bad"] and gate.rows[0][2] == "50.00%"


def test_a_report_of_another_shape_is_labelled_values():
    view = report_view(LEGACY_REPORT)
    assert view is not None and not view.structured and view.verdict == "passed"
    assert ("Method", "dynamic_int8") in view.summary
    accuracy = next(t for t in view.tables if t.title == "Accuracy")
    assert accuracy.rows == [("original", "0.962"), ("compressed", "0.958")]
    assert report_view(None) is None and report_view({}) is None


# --------------------------------------------------------------------------- /docs

def test_docs_are_served_from_the_controller_with_no_inline_script(client):
    r = client.get("/docs")
    assert r.status_code == 200
    assert "http" not in re.sub(r'href="/[^"]*"|src="/[^"]*"', "", r.text).replace("http-equiv", "")
    assert not re.search(r"<script(?![^>]*\bsrc=)[^>]*>", r.text)
    csp = r.headers["content-security-policy"]
    assert "script-src 'self';" in csp and "unsafe-inline" not in csp and "cdn" not in csp
    for src in re.findall(r'(?:src|href)="(/[^"]+)"', r.text):
        asset = client.get(src)
        assert asset.status_code == 200 and len(asset.content) > 100, src
    assert client.get("/docs/assets/../../etc/passwd").status_code == 404
    assert client.get("/docs/assets/index.html").status_code == 404
    assert client.get("/redoc").status_code == 404


# --------------------------------------------------------------------------- recent events and drift

def test_recent_verdicts_drop_stale_windows():
    latest = {"a": SimpleNamespace(window_end=1000.0), "b": SimpleNamespace(window_end=5000.0)}
    assert list(feed.recent_verdicts(latest, since=4000.0)) == ["b"]


def test_the_feed_merges_warnings_drift_and_offline_devices_newest_first():
    event = SimpleNamespace(device_id="gate-01", level="warning", kind="inference.slow", text="slow",
                            received_at=900.0)
    info = SimpleNamespace(device_id="gate-01", level="info", kind="model.reloaded", text="", received_at=950.0)
    old = SimpleNamespace(device_id="gate-01", level="error", kind="old", text="", received_at=10.0)
    devices = [SimpleNamespace(id="gate-02", online=False, last_seen=990.0),
               SimpleNamespace(id="cam-01", online=True, last_seen=999.0),
               SimpleNamespace(id="gone", online=False, last_seen=5.0)]
    items = feed.build_feed(events=[event, info, old], episodes=[("cam-03", "alarm", 800.0, 0.4),
                                                                  ("cam-03", "ok", 700.0, 0.0)],
                            devices=devices, since=100.0, limit=10)
    assert [(i.device_id, i.kind, i.level) for i in items] == [
        ("gate-02", "offline", "offline"), ("gate-01", "event", "warning"), ("cam-03", "drift", "alarm")]
    assert len(feed.build_feed(events=[event], episodes=[], devices=devices, since=100.0, limit=1)) == 1


# --------------------------------------------------------------------------- threshold labels

def test_threshold_labels_sit_right_of_the_plot_and_do_not_overlap():
    pts = [(1000.0 + 60 * i, 0.02 * i) for i in range(20)]
    svg = str(charts.line_chart([charts.Series("PSI", pts, "s3")], kind="drift", title="t",
                                thresholds=[charts.Threshold(0.1, "warn 0.1", "warn"),
                                            charts.Threshold(0.11, "alarm 0.11", "alarm", band=True)]))
    right = max(float(x) for x in re.findall(r'<line class="threshold[^"]*" x1="[^"]*" x2="([^"]*)"', svg))
    labels = re.findall(r'<text class="th-label[^"]*" x="([^"]*)" y="([^"]*)"', svg)
    assert len(labels) == 2 and all(float(x) > right for x, _ in labels)
    ys = sorted(float(y) for _, y in labels)
    assert ys[1] - ys[0] >= charts.LABEL_LINE_H


def test_spread_keeps_labels_apart_and_inside():
    tops = charts.spread([50.0, 52.0, 200.0], [13.0, 13.0, 26.0], lo=40.0, hi=210.0)
    assert tops[0] == 50.0 and tops[1] == 63.0
    assert tops[2] + 26.0 <= 210.0
    assert charts.label_lines("limit 2 × control + 0.01 = 0.02") == ["limit 2", "× control + 0.01", "= 0.02"]


def test_overview_counts_drift_from_recent_windows_only(client, app):
    """A device whose newest alarm window is older than ``ui_drift_span_s`` no longer counts as an alarm."""
    login(client)
    controller = app.state.controller
    now = time.time()
    release = build_release()
    register_release(controller, release, now=now)
    bundle = release.bundles["1.2.0"]
    rng = np.random.default_rng(3)
    span = controller.settings.ui_drift_span_s
    for device_id, end in (("fresh-01", now - 60), ("stale-01", now - span - 600)):
        enroll(controller, device_id, ["site-c"], now=now - 2 * span)
        hello(controller, device_id, ["site-c"], bundle, now=end - 60)
        ingest(controller, device_id, "telemetry",
               _window(device_id, WINDOWS - 1, end, bundle, {"drift": "alarm", "latency": 2.0}, rng), end)
    page = client.get("/")
    assert re.search(r'data-count="drift-alarms">1<', page.text)
    alarms = page.text[page.text.index('id="drift-alarms"'):]
    assert "fresh-01" in alarms and "stale-01" not in alarms.split("</table>")[0]
    assert 'data-span="drift">last 60 min<' in page.text
    assert 'data-kind="drift" data-device="fresh-01" data-level="alarm"' in page.text
    assert 'data-kind="drift" data-device="stale-01" data-level="alarm"' in page.text   # within the feed's day
