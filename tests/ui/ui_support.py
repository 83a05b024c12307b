"""Browser settings shared by the UI tests and tests/ui/screenshots.py."""

from __future__ import annotations

import os
from pathlib import Path

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]
SCREENSHOT_DIR = os.environ.get("EDGEFLEET_UI_SCREENSHOTS")
"""Set to a directory to keep one screenshot per page (for looking at the design)."""


def screenshot(page, name: str) -> None:
    if SCREENSHOT_DIR:
        Path(SCREENSHOT_DIR).mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(Path(SCREENSHOT_DIR) / f"{name}.png"), full_page=True)


def watched_page(browser, base_url: str, *, width: int = 1280, height: int = 800,
                 ignore_failed_loads: bool = False):
    """``(context, page, problems)``: a fresh context on ``base_url`` whose page errors and console errors
    land in ``problems`` (with ``ignore_failed_loads``, not the "Failed to load resource" an error page
    logs about itself). The test asserts ``not problems`` when it is done."""
    context = browser.new_context(base_url=base_url, viewport={"width": width, "height": height})
    page = context.new_page()
    problems: list[str] = []
    page.on("pageerror", lambda exc: problems.append(f"page error: {exc}"))
    page.on("console", lambda msg: problems.append(f"console {msg.type}: {msg.text}")
            if msg.type == "error" and not (ignore_failed_loads and msg.text.startswith("Failed to load resource"))
            else None)
    return context, page, problems


def sign_in(page, base_url: str, *, token: str | None = None, username: str = "", password: str = "") -> None:
    """Through the sign-in page: with an API token, or a user name and password."""
    page.goto("/ui/login")
    if token is not None:
        page.fill("#token", token)
    else:
        page.fill("#username", username)
        page.fill("#password", password)
    page.click("button[type=submit]")
    page.wait_for_url(f"{base_url}/")
