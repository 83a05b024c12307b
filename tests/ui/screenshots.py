"""Regenerate the README screenshots of the web UI (not a test):

    .venv/bin/python tests/ui/screenshots.py docs/img

Starts the real controller app on a free port with a temp data dir, seeds the same fleet as the
UI tests (without the hostile strings), logs in with Debian's Chromium and saves
``ui-overview.png`` and ``ui-device.png``.
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

TOKEN = "eft_screenshot-admin"


def main(out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        server = BackgroundServer(ControllerSettings(data_dir=Path(tmp), listen_port=free_port(), admin_token=TOKEN,
                                                     heartbeat_timeout_s=3600)).start()
        try:
            seed(server.controller, now=time.time(), hostile=False)
            with sync_playwright() as p:
                browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
                page = browser.new_page(viewport={"width": int(os.environ.get("WIDTH", 1280)), "height": 800},
                                        device_scale_factor=1)
                base = server.url
                page.goto(f"{base}/ui/login")
                page.fill("#token", TOKEN)
                page.click("button[type=submit]")
                page.wait_for_url(f"{base}/")
                page.screenshot(path=str(out / "ui-overview.png"), full_page=True)
                page.goto(f"{base}/ui/devices/cam-03")
                page.screenshot(path=str(out / "ui-device.png"), full_page=True)
                browser.close()
        finally:
            server.stop()
    print(f"wrote {out / 'ui-overview.png'} and {out / 'ui-device.png'}")


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "docs/img"))
