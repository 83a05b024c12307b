"""The web UI in a real Chromium: login, every page, charts, per-device progress, escaping."""

from __future__ import annotations

import pytest

from conftest import screenshot

pytestmark = pytest.mark.browser


def test_screens(logged_in, ui_server):
    page = logged_in
    fleet = ui_server.fleet
    screenshot(page, "overview")
    for path, name in [("/ui/devices", "devices"), ("/ui/devices/cam-03", "device"),
                       ("/ui/bundles", "bundles"), (f"/ui/bundles/{fleet.bundles['1.3.0'].digest}", "bundle"),
                       ("/ui/deployments", "deployments"), (f"/ui/deployments/{fleet.deployment_id}", "deployment")]:
        page.goto(path)
        screenshot(page, name)
