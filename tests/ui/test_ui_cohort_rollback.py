"""The console end to end in real Chromium, on a controller that manages its broker's identities
(``broker_admin = "dynsec"``: a private Mosquitto with the dynamic-security plugin, started here) with
two REAL agents: an operator uploads a new signed bundle from the bundle list, deploys it to a tag from
the UI and both agents install it; rolls
the deployment's devices back from its page (the confirmation names the bundle and the count) and both
agents return to the old bundle; then decommissions one device from the UI, after which the broker
itself refuses that device's credentials (a real paho client with them is refused)."""

from __future__ import annotations

import secrets
import sys
import tomllib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from edgefleet.compression.samples import load_digits_split, train_mlp

from . import test_ui_console as console
from .test_ui_actions import PASSWORD, api
from .ui_support import sign_in, watched_page
from testkit import missing_part, wait_until

sys.path.insert(0, str(Path(__file__).parents[1] / "integration"))
from dynseckit import Client, DynsecMosquitto, missing_parts  # noqa: E402
from fleetkit import Agents, ControllerProcess, cli_json, run_cli  # noqa: E402

pytestmark = [pytest.mark.browser, pytest.mark.integration]

CONTROLLER_USER = "edgefleet-controller"
DEVICES = ("co-1", "co-2")


def recipe(version: str, build: int) -> str:
    return (f'[bundle]\nname = "digits"\nversion = "{version}"\nbuild = {build}\nruntime = "onnx"\n'
            'model = "model.onnx"\nlabels = ["0", "1", "2", "3", "4", "5", "6", "7", "8", "9"]\n')


def installed(url: str, token: str) -> dict[str, str | None]:
    return {d: (api(url, token, f"/api/v1/devices/{d}")["installed"] or {}).get("digest") for d in DEVICES}


def succeeded(url: str, token: str, dep_id: str) -> bool:
    return api(url, token, f"/api/v1/deployments/{dep_id}")["status"] == "succeeded"


@pytest.fixture
def managed(tmp_path, monkeypatch, capsys, chromium_path):
    """The private broker, ``edgefleet serve`` managing it, two bundles built (1.0.0 pushed, 2.0.0 left
    for the UI to upload) and two agents with the tag ``lab`` running 1.0.0; an operator ``olga``."""
    missing = missing_parts()
    if missing:
        missing_part(missing)
    broker = DynsecMosquitto(tmp_path / "mosquitto").start()
    monkeypatch.chdir(tmp_path)
    (tmp_path / "keys").mkdir()
    assert run_cli(capsys, "keys", "generate", "release", "--out", str(tmp_path / "keys"))[0] == 0
    admin = "efa_ui_" + secrets.token_urlsafe(12)
    controller = ControllerProcess(tmp_path, admin_token=admin,
                                   broker_url=broker.url(CONTROLLER_USER, secrets.token_urlsafe(12)),
                                   prefix=f"uicohort-{secrets.token_hex(4)}/v1",
                                   release_pub=tmp_path / "keys" / "release.pub", broker_admin="dynsec",
                                   broker_admin_url=broker.admin_url, reconcile_interval_s=0.5,
                                   heartbeat_timeout_s=30)
    agents = Agents(tmp_path)
    try:
        with ThreadPoolExecutor(1) as pool:
            starting = pool.submit(controller.start)        # it starts while the bundles are built
            try:
                data = load_digits_split()
                np.save(tmp_path / "samples.npy", data.x_train[:200])
                model = train_mlp(data, hidden=(16,), seed=0)
                built = {}
                for version, build in (("1.0.0", 1), ("2.0.0", 2)):
                    folder = tmp_path / f"model-{build}"
                    folder.mkdir()
                    (folder / "model.onnx").write_bytes(model)
                    (folder / "recipe.toml").write_text(recipe(version, build))
                    built[version] = cli_json(capsys, "bundle", "build", str(folder / "recipe.toml"), "--key",
                                              "keys/release.key", "--samples", str(tmp_path / "samples.npy"),
                                              "--out", f"v{build}.efb")
            finally:
                starting.result()
        monkeypatch.setenv("EDGEFLEET_URL", controller.url)
        monkeypatch.setenv("EDGEFLEET_TOKEN", admin)
        monkeypatch.setenv("EDGEFLEET_CLI_CONFIG", str(tmp_path / "no-cli.toml"))
        cli_json(capsys, "bundle", "push", built["1.0.0"]["bundle"])        # 2.0.0 is uploaded from the UI
        digests = {version: made["digest"] for version, made in built.items()}
        for device_id in DEVICES:
            agents.start(capsys, controller.url, device_id, "lab")
        api(controller.url, admin, "/api/v1/users", "POST", {"name": "olga", "role": "operator", "password": PASSWORD})
        wait_until(lambda: all(api(controller.url, admin, f"/api/v1/devices/{d}")["online"] for d in DEVICES),
                   "both agents online", timeout=90)
        first = api(controller.url, admin, "/api/v1/deployments", "POST", {"bundle": digests["1.0.0"], "tag": "lab"})
        wait_until(lambda: succeeded(controller.url, admin, first["id"]), "both agents on 1.0.0", timeout=120)
        yield controller, admin, digests, Path(built["2.0.0"]["bundle"]), agents, broker
    finally:
        agents.stop()
        controller.stop()
        broker.stop()


def test_deploy_roll_back_and_decommission_from_the_ui_with_real_agents(managed, browser):
    controller, admin, digests, new_file, agents, broker = managed
    old, new = digests["1.0.0"], digests["2.0.0"]
    context, page, problems = watched_page(browser, controller.url)
    try:
        sign_in(page, controller.url, username="olga", password=PASSWORD)

        # upload 2.0.0 from the bundle list (verified as the REST upload does), then deploy it to the tag
        page.goto("/ui/bundles")
        page.click("#upload summary")
        page.set_input_files("#bundle-file", str(new_file))
        page.click("#upload-submit")
        page.wait_for_selector(f'#bundles a[href="/ui/bundles/{new}"]')
        assert api(controller.url, admin, "/api/v1/audit?action=bundle.upload")[0]["actor"] == "user:olga"
        page.goto("/ui/deploy")
        page.select_option("#bundle", new)
        page.fill("#tag", "lab")
        page.wait_for_selector('#deploy-count[data-compatible="2"]')
        page.click("#deploy-next")
        page.click("#deploy-confirm")
        page.wait_for_url(f"{controller.url}/ui/deployments/dep-*")
        forward = page.url.rsplit("/", 1)[1]
        wait_until(lambda: succeeded(controller.url, admin, forward), "both agents install 2.0.0", timeout=120)
        assert installed(controller.url, admin) == {d: new for d in DEVICES}

        # roll the deployment's devices back from its page: the confirmation says to what, then both go back
        page.reload()
        page.click("#cohort-rollback")
        page.wait_for_selector("#cohort-groups")
        assert f"Roll back 2 devices of deployment {forward}?" in page.inner_text("h1")
        row = page.locator("#cohort-groups tbody tr")
        assert row.count() == 1 and row.get_attribute("data-bundle") == old
        assert "1.0.0" in row.inner_text() and row.get_attribute("data-devices") == "2"
        page.click("#cohort-confirm")
        page.wait_for_url(f"{controller.url}/ui/deployments/dep-*")
        back = page.url.rsplit("/", 1)[1]
        assert back != forward
        wait_until(lambda: succeeded(controller.url, admin, back), "both agents back on 1.0.0", timeout=120)
        assert installed(controller.url, admin) == {d: old for d in DEVICES}
        (entry,) = api(controller.url, admin, "/api/v1/audit?action=cohort.rollback")
        assert entry["actor"] == "user:olga" and entry["target"] == f"deployment:{forward}"

        # decommission co-2 from the UI: the broker refuses its credentials from then on
        config = tomllib.loads((agents.dirs["co-2"] / "agent.toml").read_text())
        username, password = config["username"], config["password"]
        page.goto("/ui/devices/co-2")
        page.click("#decommission summary")
        page.fill("#confirm-id", "co-2")
        page.click("#decommission button[type=submit]")
        page.wait_for_selector("#decommissioned")
        shown = api(controller.url, admin, "/api/v1/devices/co-2")
        assert shown["decommissioned"] is True and shown["broker_disable_pending"] is False
        probe = Client(broker, username=username, password=password, client_id="co-2")
        assert probe.refused.is_set() and not probe.accepted, probe.connack
        probe.close()
        # the other device's credentials still work: its agent stays on line
        assert api(controller.url, admin, "/api/v1/devices/co-1")["online"] is True
    finally:
        context.close()
    assert not problems, problems


axe = console.axe
"""axe-core from the npm registry (the console tests' fixture)."""


@pytest.mark.parametrize("width", console.WIDTHS)
def test_the_rollback_and_upload_pages_fit_and_pass_axe(browser, ui_server, axe, width):
    """The cohort rollback's pages (a deployment's plan, a tag's, the empty form) at 1280 and 400 px: no
    sideways scroll, no serious or critical axe violation, no console error. (The bundle list with its
    upload form is among the console test's pages.)"""
    fleet = ui_server.fleet
    console.check_pages(browser, ui_server, axe, [
        (f"/ui/rollback?deployment={fleet.deployment_id}", 200), ("/ui/rollback?tag=site-b", 200),
        ("/ui/rollback", 200)], width, "cohort")
