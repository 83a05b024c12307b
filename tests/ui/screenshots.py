"""Regenerate the README screenshots of the web UI (not a test):

    .venv/bin/python tests/ui/screenshots.py docs/img

Starts the real controller app on a free port with a temp data dir, seeds the same fleet as the
UI tests (without the hostile strings), logs in with Debian's Chromium and saves
``ui-overview.png`` and ``ui-device.png`` (whole pages), and for the README's console walk-through the
1280x800 viewport of ``ui-deploy.png`` (the deploy form once its live count has answered),
``ui-models.png`` (the model registry's lineage), ``ui-audit.png`` (the audit log), ``ui-devices.png``
(the device list filtered by a tag, worst drift first) and ``ui-trends.png`` (the fleet trends of the last
hour); ``ui-rollback.png`` (a cohort rollback's confirmation, on the fleet with site b moved to 1.3.0);
then the same with the staged rollouts of the rollout tests, saving the viewport of ``ui-rollout.png`` (a
canary soaking, its gates' charts against their limits).
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

from playwright.sync_api import sync_playwright

sys.path[:0] = [str(Path(__file__).parent), str(Path(__file__).parent.parent)]  # ui helpers, tests/onnx_models.py

from ui_fleet import ingest, installed, seed  # noqa: E402
from ui_support import CHROMIUM, CHROMIUM_ARGS  # noqa: E402

from edgefleet.cloud.ports import free_port  # noqa: E402
from edgefleet.cloud.server import BackgroundServer  # noqa: E402
from edgefleet.cloud.services import deployments  # noqa: E402
from edgefleet.cloud.settings import ControllerSettings  # noqa: E402
from edgefleet.protocol.messages import State, StatusReport  # noqa: E402
from ui.ui_rollout_fleet import seed_rollouts  # noqa: E402  (a package module: it imports ui_fleet relatively)

TOKEN = "eft_screenshot-admin"
DEVICE_FILTER = "/ui/devices?tag=site-b&sort=drift&dir=desc"
"""The device list filtered by a tag, worst drift first."""


def _shoot(out: Path, seed_with, pages) -> None:
    """Seed a fresh controller, sign in and save a screenshot of each ``(path, file)`` (the whole page), or
    of each ``(path, file, selector)`` (the viewport, once ``selector`` is on the page)."""
    with tempfile.TemporaryDirectory() as tmp:
        server = BackgroundServer(ControllerSettings(data_dir=Path(tmp), listen_port=free_port(), admin_token=TOKEN,
                                                     heartbeat_timeout_s=3600)).start()
        try:
            seeded = seed_with(server.controller)
            with sync_playwright() as p:
                browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
                page = browser.new_page(viewport={"width": int(os.environ.get("WIDTH", 1280)), "height": 800},
                                        device_scale_factor=1)
                base = server.url
                page.goto(f"{base}/ui/login")
                page.fill("#token", TOKEN)
                page.click("button[type=submit]")
                page.wait_for_url(f"{base}/")
                for path, name, *wait in pages(seeded):
                    page.goto(f"{base}{path}")
                    if wait:
                        page.wait_for_selector(wait[0])
                    page.screenshot(path=str(out / name), full_page=not wait)
                browser.close()
        finally:
            server.stop()


def _committed(controller, built, device_ids: list[str], now: float) -> str:
    """A deployment of ``built`` that the devices report committed (as their agents would)."""
    with controller.session() as session:
        dep = deployments.create_deployment(session, bundle_digest=built.digest, issuer=controller.issuer,
                                            actor="user:olga", now=now, timeout_s=600, device_ids=device_ids)
        dep_id = dep.id
        sequences = {t.device_id: t.sequence for t in deployments.targets_of(session, deployment_id=dep_id)}
    for device_id, sequence in sequences.items():
        ingest(controller, device_id, "status", StatusReport(
            device_id=device_id, deployment_id=dep_id, sequence=sequence, bundle_digest=built.digest,
            state="committed", final=True, outcome="committed", sent_at=now), now)
        ingest(controller, device_id, "state", State(device_id=device_id, status="online", update_state="committed",
                                                     installed=installed(built), sent_at=now), now)
    return dep_id


def _rolled_forward(controller):
    """The UI fleet, with site b moved to 1.3.0: two of its devices committed 1.2.0 before, the third
    never committed another bundle (the cohort rollback's confirmation lists it as skipped)."""
    now = time.time()
    fleet = seed(controller, now=now, hostile=False)
    _committed(controller, fleet.bundles["1.2.0"], ["cam-03", "gate-01"], now - 60)
    fleet.deployment_id = _committed(controller, fleet.bundles["1.3.0"], ["cam-03", "gate-01", "gate-02"], now - 30)
    return fleet


def main(out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    _shoot(out, lambda controller: seed(controller, now=time.time(), hostile=False),
           lambda fleet: [("/", "ui-overview.png"), ("/ui/devices/cam-03", "ui-device.png"),
                          (f"/ui/deploy?bundle={fleet.bundles['1.3.0'].digest}&tag=site-b", "ui-deploy.png",
                           '#deploy-count[data-compatible="3"]'),
                          ("/ui/models/animals", "ui-models.png", "h1"), ("/ui/audit", "ui-audit.png", "h1"),
                          (DEVICE_FILTER, "ui-devices.png", "#devices"),
                          ("/ui/trends?range=1h", "ui-trends.png", "h1")])
    _shoot(out, _rolled_forward,
           lambda fleet: [(f"/ui/rollback?deployment={fleet.deployment_id}", "ui-rollback.png", "#cohort-groups")])
    _shoot(out, lambda controller: seed_rollouts(controller, now=time.time()),
           lambda fleet: [(f"/ui/rollouts/{fleet.rollouts['soaking']}", "ui-rollout.png", "h1")])
    names = ("ui-overview", "ui-device", "ui-deploy", "ui-models", "ui-audit", "ui-devices", "ui-trends", "ui-rollback",
             "ui-rollout")
    print("wrote " + ", ".join(str(out / f"{n}.png") for n in names))


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "docs/img"))
