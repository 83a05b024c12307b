"""Webhooks from the UI in real Chromium, on the seeded controller with its background webhook sender
and a real HTTP receiver on a local port: an admin registers a receiver (the secret shown once), sends a
ping from its page, the receiver gets it signed with that secret and the page shows it ``delivered``;
then the admin removes the webhook. The list and the webhook's page pass axe at 1280 and 400 px."""

from __future__ import annotations

import http.server
import threading
import time
from collections.abc import Iterator

import pytest
from playwright.sync_api import expect

from edgefleet.cloud.services import webhooks

from . import test_ui_console as console
from testkit import free_port, wait_until

pytestmark = pytest.mark.browser

axe = console.axe


class Receiver(http.server.BaseHTTPRequestHandler):
    received: list[tuple[dict[str, str], bytes]] = []

    def do_POST(self) -> None:  # noqa: N802 (the http.server name)
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        Receiver.received.append((dict(self.headers), body))
        self.send_response(204)
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        pass


@pytest.fixture
def receiver() -> Iterator[str]:
    Receiver.received = []
    server = http.server.ThreadingHTTPServer(("127.0.0.1", free_port()), Receiver)
    thread = threading.Thread(target=server.serve_forever, name="webhook-receiver", daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/hook"
    finally:
        server.shutdown()
        server.server_close()


def test_register_ping_and_remove_a_webhook(logged_in, ui_server, receiver, axe, browser):
    page = logged_in
    page.goto("/ui/webhooks")
    page.fill("#url", receiver)
    page.fill("#events", "ping, incident.opened")
    page.fill("#description", "ui test receiver")
    page.check("#webhook-form input[name=confirm]")
    page.click("#create-webhook")
    secret = page.inner_text("#secret-value").strip()
    assert secret.startswith(webhooks.SECRET_PREFIX)
    row = page.locator("#webhooks tbody tr", has_text=receiver)
    expect(row).to_contain_text("incident.opened, ping")
    expect(row.locator(".last-delivery")).to_contain_text("none yet")
    row.get_by_role("link", name=receiver).click()
    page.click("#ping")
    wait_until(lambda: Receiver.received, "the receiver gets the ping", timeout=30)
    (headers, body), = Receiver.received
    assert headers[webhooks.EVENT_HEADER] == "ping"
    assert webhooks.verify(secret, headers[webhooks.SIGNATURE_HEADER], body, time.time())
    hook_path = page.url.removeprefix(ui_server.url)
    hook_id = int(hook_path.rsplit("/", 1)[1])
    wait_until(lambda: _states(ui_server, hook_id) == ["delivered"], "the sender records the answer", timeout=30)
    page.reload()
    expect(page.locator('#deliveries tr[data-state="delivered"]')).to_have_count(1)
    expect(page.locator("#deliveries")).to_contain_text("HTTP 204")
    for width in console.WIDTHS:
        console.check_pages(browser, ui_server, axe, [("/ui/webhooks", 200), (hook_path, 200)], width, "webhooks")
    page.goto("/ui/webhooks")
    row = page.locator("#webhooks tbody tr", has_text=receiver)
    expect(row.locator(".last-delivery")).to_contain_text("delivered")
    row.locator("details summary").click()
    row.locator("input[name=confirm]").check()
    row.locator("button.danger").click()
    page.wait_for_url(f"{ui_server.url}/ui/webhooks")
    expect(page.locator("#webhooks tbody tr", has_text=receiver)).to_have_count(0)
    with ui_server.controller.session() as session:
        assert receiver not in [h.url for h in webhooks.list_webhooks(session)]


def _states(server, hook_id: int) -> list[str]:
    with server.controller.session() as session:
        return [d.state for d in webhooks.deliveries_of(session, hook_id)]
