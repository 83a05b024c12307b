"""Security headers on every answer, API and UI: a Content-Security-Policy without inline script
(the docs page's own inline script admitted by its hash only), nosniff, frame denial, a referrer
policy, no-store on API answers, HSTS exactly when the public URL is https."""

from __future__ import annotations

import re

import pytest
from fastapi.testclient import TestClient

from edgefleet.cloud.app import create_app

from cloudkit import ADMIN

COMMON = {"x-content-type-options": "nosniff", "x-frame-options": "DENY", "referrer-policy": "same-origin"}


def common_headers_of(r) -> dict[str, str]:
    return {k: r.headers.get(k) for k in COMMON}


@pytest.mark.parametrize(("method", "path", "status"), [
    ("GET", "/api/v1/devices", 200), ("GET", "/api/v1/devices/nope", 404), ("GET", "/api/v1/nowhere", 404),
    ("DELETE", "/api/v1/info", 405), ("GET", "/api/v1/audit?limit=0", 422), ("GET", "/healthz", 200),
    ("GET", "/openapi.json", 200), ("POST", "/api/v1/models", 422)])
def test_api_answers_carry_the_headers_and_a_no_script_policy(client, method, path, status):
    r = client.request(method, path)
    assert r.status_code == status
    assert common_headers_of(r) == COMMON
    csp = r.headers["content-security-policy"]
    assert "default-src 'none'" in csp and "frame-ancestors 'none'" in csp and "script-src" not in csp
    if path.startswith("/api/"):
        assert r.headers["cache-control"] == "no-store"
    assert "strict-transport-security" not in r.headers   # public_url is http://controller.test


def test_an_unauthenticated_api_answer_is_not_cached_either(app):
    with TestClient(app) as anonymous:
        r = anonymous.get("/api/v1/devices")
    assert r.status_code == 401 and r.headers["cache-control"] == "no-store"
    assert common_headers_of(r) == COMMON


def test_a_bundle_download_keeps_its_own_private_immutable_caching(client, make_bundle, upload):
    digest = upload(make_bundle())["digest"]
    r = client.get(f"/api/v1/bundles/{digest}/download")
    assert r.status_code == 200
    assert r.headers["cache-control"] == "private, max-age=31536000, immutable"   # content-addressed
    assert common_headers_of(r) == COMMON


def test_ui_pages_keep_their_own_policy_and_static_files_get_the_headers(client):
    client.get("/ui/login")
    r = client.post("/ui/login", data={"token": ADMIN, "csrf_token": client.cookies.get("edgefleet_login")},
                    follow_redirects=False)
    assert r.status_code == 303
    page = client.get("/ui/devices")
    csp = page.headers["content-security-policy"]
    assert "script-src 'self'" in csp and "unsafe-inline" not in csp and "frame-ancestors 'none'" in csp
    assert common_headers_of(page) == COMMON and page.headers["cache-control"] == "no-store"
    assert "<script>" not in page.text
    css = client.get("/ui/static/ui.css")
    assert common_headers_of(css) == COMMON and css.headers["cache-control"] == "public, max-age=300"
    assert common_headers_of(r) == COMMON   # redirects too


def test_no_template_or_static_file_has_inline_script_or_handlers():
    from edgefleet.cloud.ui import render
    sources = list((render.HERE / "templates").glob("*.html")) + list((render.HERE / "static").glob("*"))
    assert len(sources) >= 10
    for path in sources:
        text = re.sub(r"\{([%{#]).*?[%}#]\}", "", path.read_text(), flags=re.DOTALL)   # without Jinja's own tags
        assert not re.search(r"<script(?![^>]*\bsrc=)[^>]*>", text), path.name        # only <script src=...>
        assert not re.search(r"<[a-z][^>]*\son[a-z]+\s*=", text), path.name              # no onclick= etc.
        assert "javascript:" not in text, path.name


def test_the_docs_page_loads_everything_from_the_controller_and_runs_no_inline_script(client):
    r = client.get("/docs")
    assert r.status_code == 200
    assert not re.search(r"<script(?![^>]*\bsrc=)[^>]*>", r.text)            # only <script src=...>
    assert all(src.startswith("/") for src in re.findall(r'(?:src|href)="([^"]+)"', r.text))
    csp = r.headers["content-security-policy"]
    script_src = next(part for part in csp.split(";") if part.strip().startswith("script-src")).split()
    assert script_src == ["script-src", "'self'"] and "unsafe-inline" not in csp and "frame-ancestors 'none'" in csp
    assert common_headers_of(r) == COMMON


@pytest.mark.parametrize(("public_url", "max_age", "expected"), [
    ("https://fleet.example", 31536000, "max-age=31536000"), ("https://fleet.example", 0, None),
    ("http://fleet.example", 31536000, None)])
def test_hsts_exactly_when_served_over_https(settings, clock, transport, public_url, max_age, expected):
    app = create_app(settings.model_copy(update={"public_url": public_url, "hsts_max_age_s": max_age}), clock=clock,
                     transport_factory=lambda url, on_message: transport, reconcile_in_background=False)
    with TestClient(app) as c:
        for path in ("/api/v1/info", "/ui/login", "/healthz"):
            assert c.get(path).headers.get("strict-transport-security") == expected, path
