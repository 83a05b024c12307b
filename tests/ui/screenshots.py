"""Regenerate the README screenshots of the web UI (not a test):

    .venv/bin/python tests/ui/screenshots.py docs/img

Starts the real controller app on a free port with a temp data dir, seeds the same fleet as the
UI tests (without the hostile strings), logs in with Debian's Chromium and saves
``ui-overview.png`` and ``ui-device.png``; then the same with the staged rollouts of the rollout
tests, saving ``ui-rollout.png`` (a canary soaking, its gates' charts against their limits).
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

from playwright.sync_api import sync_playwright

sys.path[:0] = [str(Path(__file__).parent), str(Path(__file__).parent.parent)]  # ui helpers, tests/onnx_models.py

from ui_fleet import seed  # noqa: E402
from ui_support import CHROMIUM, CHROMIUM_ARGS  # noqa: E402

from edgefleet.cloud.ports import free_port  # noqa: E402
from edgefleet.cloud.server import BackgroundServer  # noqa: E402
from edgefleet.cloud.settings import ControllerSettings  # noqa: E402
from ui.ui_rollout_fleet import seed_rollouts  # noqa: E402  (a package module: it imports ui_fleet relatively)

TOKEN = "eft_screenshot-admin"


def _shoot(out: Path, seed_with, pages) -> None:
    """Seed a fresh controller, sign in and save a full-page screenshot of each ``(path, file)``."""
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
                for path, name in pages(seeded):
                    page.goto(f"{base}{path}")
                    page.screenshot(path=str(out / name), full_page=True)
                browser.close()
        finally:
            server.stop()


def main(out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    _shoot(out, lambda controller: seed(controller, now=time.time(), hostile=False),
           lambda fleet: [("/", "ui-overview.png"), ("/ui/devices/cam-03", "ui-device.png")])
    _shoot(out, lambda controller: seed_rollouts(controller, now=time.time()),
           lambda fleet: [(f"/ui/rollouts/{fleet.rollouts['soaking']}", "ui-rollout.png")])
    print(f"wrote {out / 'ui-overview.png'}, {out / 'ui-device.png'} and {out / 'ui-rollout.png'}")


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "docs/img"))
