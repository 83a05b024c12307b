"""UI test fixtures: the real controller app (``create_app``) served by uvicorn in a background
thread on a free port, SQLite in a temp dir, the real Mosquitto on 127.0.0.1:1883 when it is
listening (else the embedded broker), a seeded fleet, and Debian's Chromium driven by Playwright.
A second such controller (``rollout_server``) holds staged rollouts for the rollout pages.

Chromium missing: the browser tests skip locally and FAIL under CI=true.
"""

from __future__ import annotations

import threading
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import uvicorn
from fastapi.testclient import TestClient

from edgefleet.cloud.app import create_app
from edgefleet.cloud.controller import Controller
from edgefleet.cloud.settings import ControllerSettings

from .ui_fleet import seed
from .ui_rollout_fleet import seed_rollouts
from .ui_support import CHROMIUM, CHROMIUM_ARGS
from testkit import free_port, missing_part, port_open

ADMIN_TOKEN = "eft_ui-test-admin-" + uuid.uuid4().hex


@pytest.fixture
def app(tmp_path):
    """For the HTTP tests (*_http.py): the app with a stand-in MQTT transport, admin token
    ``test_ui_http.ADMIN``, no background reconciler."""
    from .test_ui_http import ADMIN, NoTransport

    settings = ControllerSettings(data_dir=tmp_path / "controller", broker_url="mqtt://127.0.0.1:1", admin_token=ADMIN)
    return create_app(settings, transport_factory=lambda url, on_message: NoTransport(),
                      reconcile_in_background=False)


@pytest.fixture
def client(app):
    with TestClient(app, follow_redirects=False) as c:
        yield c



@dataclass
class Server:
    url: str
    controller: Controller
    fleet: Any
    """What the seed stored (:class:`ui_fleet.Fleet`, :class:`ui_rollout_fleet.RolloutFleet`)."""
    admin_token: str


@contextmanager
def serve(data_dir: Path, seed_with: Callable[..., Any], *, reconcile_in_background: bool = True
          ) -> Iterator[Server]:
    """The controller app in uvicorn on a free port, seeded with ``seed_with(controller, now=...)``."""
    port = free_port()
    prefix = f"uitest-{uuid.uuid4().hex[:8]}/v1"
    settings = ControllerSettings(
        data_dir=data_dir, listen_port=port, admin_token=ADMIN_TOKEN,
        broker_url="mqtt://127.0.0.1:1883" if port_open("127.0.0.1", 1883) else None,
        topic_prefix=prefix, mqtt_client_id=f"edgefleet-ui-test-{uuid.uuid4().hex[:8]}",
        heartbeat_timeout_s=6 * 3600, reconcile_interval_s=1.0)
    app = create_app(settings, reconcile_in_background=reconcile_in_background)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, name="ui-test-uvicorn", daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            pytest.fail("the controller did not start")
        time.sleep(0.05)
    with urllib.request.urlopen(f"{url}/healthz", timeout=5) as response:
        assert response.status == 200
    controller: Controller = app.state.controller
    fleet = seed_with(controller, now=time.time())
    try:
        yield Server(url=url, controller=controller, fleet=fleet, admin_token=ADMIN_TOKEN)
    finally:
        server.should_exit = True
        thread.join(15)


@pytest.fixture(scope="session")
def ui_server(tmp_path_factory) -> Iterator[Server]:
    with serve(tmp_path_factory.mktemp("controller"), seed) as server:
        yield server


@pytest.fixture(scope="session")
def rollout_server(tmp_path_factory) -> Iterator[Server]:
    """A second controller with staged rollouts (:mod:`ui_rollout_fleet`). It does not reconcile in
    the background: rollouts move only when a test (or a page's action) advances them."""
    with serve(tmp_path_factory.mktemp("rollouts"), seed_rollouts, reconcile_in_background=False) as server:
        yield server


@pytest.fixture
def server(ui_server) -> Server:
    """The controller the ``page`` fixtures browse (a test module may override it)."""
    return ui_server


@pytest.fixture(scope="session")
def chromium_path() -> str:
    if not Path(CHROMIUM).exists():
        message = f"Chromium is not installed at {CHROMIUM} (apt-get install chromium)"
        missing_part(message)
    return CHROMIUM


@pytest.fixture(scope="session")
def browser(chromium_path):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium_path, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture
def page(browser, server):
    """A fresh browser context (no cookies) on the controller; fails the test on any page error
    or JavaScript dialog (an XSS payload that ran would show up here)."""
    context = browser.new_context(base_url=server.url, viewport={"width": 1360, "height": 900})
    page = context.new_page()
    problems: list[str] = []
    page.on("pageerror", lambda exc: problems.append(f"page error: {exc}"))
    page.on("dialog", lambda dialog: (problems.append(f"dialog: {dialog.message}"), dialog.dismiss()))
    page.on("console", lambda msg: problems.append(f"console {msg.type}: {msg.text}")
            if msg.type == "error" and not msg.text.startswith("Failed to load resource") else None)
    try:
        yield page
    finally:
        context.close()
    assert not problems, problems


@pytest.fixture
def logged_in(page, server):
    page.goto("/ui/login")
    page.fill("#token", server.admin_token)
    page.click("button[type=submit]")
    page.wait_for_url(f"{server.url}/")
    return page

