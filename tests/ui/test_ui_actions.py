"""The UI's actions in real Chromium against a real controller (``edgefleet serve``, its embedded
broker) with a REAL agent: an operator deploys a bundle from the UI (bundle, target, the live count,
the confirmation step) and the device installs it; then the device is decommissioned from the UI and
its credentials stop working. The action pages pass axe at 1280 and 400 px."""

from __future__ import annotations

import json
import secrets
import sys
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edgefleet.compression.samples import load_digits_split, train_mlp

from . import test_ui_console as console
from .ui_support import sign_in, watched_page
from testkit import wait_until

sys.path.insert(0, str(Path(__file__).parents[1] / "integration"))
from fleetkit import Agents, ControllerProcess, cli_json, run_cli  # noqa: E402

pytestmark = [pytest.mark.browser, pytest.mark.integration]

PASSWORD = "olga-" + secrets.token_urlsafe(12)
RECIPE = """
[bundle]
name = "digits"
version = "1.0.0"
build = 1
runtime = "onnx"
model = "model.onnx"
labels = ["0", "1", "2", "3", "4", "5", "6", "7", "8", "9"]
"""


def rejected(url: str) -> float:
    """Messages the controller refused because no enrolled device sent them (``/metrics``)."""
    with urllib.request.urlopen(f"{url}/metrics", timeout=10) as response:
        text = response.read().decode()
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith("edgefleet_mqtt_rejected_total") and 'reason="unknown_device"' in line)


def api(url: str, token: str, path: str, method: str = "GET", body: dict | None = None) -> Any:
    request = urllib.request.Request(url + path, method=method, data=json.dumps(body).encode() if body else None,
                                     headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())


@pytest.fixture
def live(tmp_path, monkeypatch, capsys, chromium_path):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "keys").mkdir()
    assert run_cli(capsys, "keys", "generate", "release", "--out", str(tmp_path / "keys"))[0] == 0
    admin = "efa_ui_" + secrets.token_urlsafe(12)
    controller = ControllerProcess(tmp_path, admin_token=admin, broker_url=None,
                                   prefix=f"uiact-{secrets.token_hex(4)}/v1",
                                   release_pub=tmp_path / "keys" / "release.pub",
                                   reconcile_interval_s=0.5, heartbeat_timeout_s=30)
    controller.start()
    monkeypatch.setenv("EDGEFLEET_URL", controller.url)
    monkeypatch.setenv("EDGEFLEET_TOKEN", admin)
    monkeypatch.setenv("EDGEFLEET_CLI_CONFIG", str(tmp_path / "no-cli.toml"))
    data = load_digits_split()
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "model.onnx").write_bytes(train_mlp(data, hidden=(16,), seed=0))
    (folder / "recipe.toml").write_text(RECIPE)
    np.save(tmp_path / "samples.npy", data.x_train[:200])
    built = cli_json(capsys, "bundle", "build", str(folder / "recipe.toml"), "--key", "keys/release.key",
                     "--samples", str(tmp_path / "samples.npy"), "--out", "v1.efb")
    cli_json(capsys, "bundle", "push", built["bundle"])
    agents = Agents(tmp_path)
    try:
        agents.start(capsys, controller.url, "ui-d1", "lab")
        api(controller.url, admin, "/api/v1/users", "POST",
            {"name": "olga", "role": "operator", "password": PASSWORD})
        wait_until(lambda: api(controller.url, admin, "/api/v1/devices/ui-d1")["online"], "the agent online",
                   timeout=90)
        yield controller, admin, built["digest"]
    finally:
        agents.stop()
        controller.stop()


def test_an_operator_deploys_from_the_ui_and_the_agent_installs_then_decommissions_it(live, browser):
    controller, admin, digest = live
    context, page, problems = watched_page(browser, controller.url)
    try:
        sign_in(page, controller.url, username="olga", password=PASSWORD)
        page.goto("/ui/deployments")
        page.click("#new-deployment")
        page.select_option("#bundle", digest)
        page.fill("#device_ids", "ui-d1")
        page.wait_for_selector('#deploy-count[data-compatible="1"]')
        assert "1 device match, 1 compatible" in page.inner_text("#deploy-count")
        page.click("#deploy-next")
        assert "to 1 device?" in page.inner_text("h1")
        page.click("#deploy-confirm")
        page.wait_for_url(f"{controller.url}/ui/deployments/dep-*")
        dep_id = page.url.rsplit("/", 1)[1]
        wait_until(lambda: api(controller.url, admin, f"/api/v1/deployments/{dep_id}")["status"] == "succeeded",
                   "the agent installs the bundle", timeout=120)
        device = api(controller.url, admin, "/api/v1/devices/ui-d1")
        assert device["installed"]["digest"] == digest
        created = api(controller.url, admin, "/api/v1/audit?action=deployment.create")
        assert created and created[0]["actor"] == "user:olga"

        rejected_before = rejected(controller.url)
        page.goto("/ui/devices/ui-d1")
        page.click("#decommission summary")
        page.fill("#confirm-id", "ui-d1")
        page.click("#decommission button[type=submit]")
        page.wait_for_selector("#decommissioned")
        shown = api(controller.url, admin, "/api/v1/devices/ui-d1")
        assert shown["decommissioned"] is True and shown["online"] is False
        assert api(controller.url, admin, "/api/v1/audit?action=device.decommission")[0]["actor"] == "user:olga"
        # the agent still runs and sends heartbeats: the controller now refuses every message of it
        wait_until(lambda: rejected(controller.url) > rejected_before, "the decommissioned agent's messages refused",
                   timeout=60)
        assert api(controller.url, admin, "/api/v1/devices/ui-d1")["online"] is False
    finally:
        context.close()
    assert not problems, problems


axe = console.axe
"""axe-core from the npm registry (the console tests' fixture)."""


@pytest.mark.parametrize("width", console.WIDTHS)
def test_the_action_pages_fit_and_pass_axe(browser, ui_server, axe, width):
    """The action pages of the seeded controller at 1280 and 400 px: no sideways scroll, no serious or
    critical axe violation, no console error (the live count's script runs on the deploy form)."""
    fleet = ui_server.fleet
    console.check_pages(browser, ui_server, axe, [
        (f"/ui/deploy?bundle={fleet.bundles['1.3.0'].digest}&tag=site-b", 200), ("/ui/enrollment", 200),
        ("/ui/people", 200), ("/ui/tokens", 200), ("/ui/devices/cam-01", 200),
        (f"/ui/deployments/{fleet.deployment_id}", 200)], width, "actions")
