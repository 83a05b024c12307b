"""Webhooks over real HTTP: a running controller (real broker: Mosquitto or the embedded one) POSTs
to a real receiver on 127.0.0.1 that checks every signature with ``webhooks.verify`` and answers
500 the first time, 200 after: the delivery is retried with the same id and ends delivered."""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from edgefleet.cloud.services import webhooks

from controllerkit import controller_settings, running_controller, wait_until

pytestmark = pytest.mark.integration


@dataclass
class Received:
    delivery: str
    event: str
    verified: bool
    answered: int
    doc: dict


@dataclass
class Receiver:
    """What the handler saw; ``secret`` is set once the webhook exists."""

    secret: str = ""
    requests: list[Received] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def take(self, headers, body: bytes) -> int:
        with self.lock:
            verified = webhooks.verify(self.secret, headers.get("EdgeFleet-Signature", ""), body, now=time.time())
            answer = (500 if not self.requests else 200) if verified else 401
            self.requests.append(Received(headers.get("EdgeFleet-Delivery", ""), headers.get("EdgeFleet-Event", ""),
                                          verified, answer, json.loads(body)))
            return answer


class _Handler(BaseHTTPRequestHandler):
    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        status = self.server.receiver.take(self.headers, body)
        self.send_response(status)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args) -> None:
        pass  # quiet


@pytest.fixture
def receiver():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    server.receiver = Receiver()
    thread = threading.Thread(target=server.serve_forever, name="webhook-receiver", daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/hooks/edgefleet", server.receiver
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)


@pytest.fixture(params=["mosquitto", "embedded"])
def controller(request, tmp_path, topic_prefix, release_key):
    broker_url = request.getfixturevalue("mqtt_broker").url if request.param == "mosquitto" else None
    settings = controller_settings(tmp_path, broker_url=broker_url, prefix=topic_prefix,
                                   release_pub=release_key.public_path, webhook_interval_s=0.1,
                                   webhook_retry_base_s=0.2, webhook_timeout_s=5)
    with running_controller(settings) as (client, ctl):
        yield client, ctl


def test_a_ping_is_retried_after_a_500_and_delivered_signed_with_one_id(controller, receiver):
    client, _ = controller
    url, seen = receiver
    r = client.post("/api/v1/webhooks", json={"url": url, "events": ["rollout.paused"], "description": "test"})
    assert r.status_code == 201, r.text
    hook = r.json()
    seen.secret = hook["secret"]
    r = client.post(f"/api/v1/webhooks/{hook['id']}/ping")
    assert r.status_code == 202, r.text
    delivery_id = r.json()["id"]

    def delivered() -> dict | None:
        [d] = client.get(f"/api/v1/webhooks/{hook['id']}/deliveries").json()
        return d if d["state"] == "delivered" else None

    d = wait_until(delivered, what="the ping delivered")
    assert (d["id"], d["attempts"], d["last_status"], d["last_error"]) == (delivery_id, 2, 200, None)
    first, second = seen.requests
    assert (first.answered, second.answered) == (500, 200)
    assert first.verified and second.verified
    assert first.delivery == second.delivery == str(delivery_id)
    assert first.event == second.event == "ping"
    assert first.doc == second.doc and second.doc["id"] == delivery_id
    assert second.doc["data"] == {"webhook_id": hook["id"]}
