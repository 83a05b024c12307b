"""Drift incidents end to end: a device (paho) publishes real telemetry windows, scored by
protocol/drift.py against a reference profile, through a real broker (the real Mosquitto, or the
embedded one) into a running controller served over HTTP. Three windows in a row at alarm open one
incident: it is in the REST API and in ``edgefleet incidents list|show``, a webhook receiver gets a
signed ``incident.opened``; with no alarm window for the (short) cooldown it closes by itself and the
receiver gets ``incident.closed``."""

from __future__ import annotations

import json
import secrets
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx2 as httpx
import numpy as np
import pytest
from fleetkit import cli_json, run_cli

from edgefleet.cloud.server import BackgroundServer
from edgefleet.cloud.services import webhooks
from edgefleet.cloud.settings import ControllerSettings
from edgefleet.protocol import drift
from edgefleet.protocol.messages import Histogram, InstalledBundle, TelemetryWindow

from controllerkit import SimDevice, enroll
from testkit import free_port, wait_until

pytestmark = pytest.mark.integration

COOLDOWN_S = 3.0
BUNDLE = InstalledBundle(name="sensor-net", version="1.4.0", build=9, digest="5e" * 32, runtime="onnx")


class Receiver(BaseHTTPRequestHandler):
    """Keeps every verified delivery as ``(event, data)`` on the server; answers 200."""

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        server = self.server
        if webhooks.verify(server.secret, self.headers.get("EdgeFleet-Signature", ""), body, now=time.time()):
            doc = json.loads(body)
            server.events.append((doc["event"], doc["data"]))
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args) -> None:
        pass


@pytest.fixture
def receiver():
    server = ThreadingHTTPServer(("127.0.0.1", 0), Receiver)
    server.secret, server.events = "", []
    thread = threading.Thread(target=server.serve_forever, name="webhook-receiver", daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)


@pytest.fixture(params=["mosquitto", "embedded"])
def controller(request, tmp_path, monkeypatch, topic_prefix, release_key):
    broker_url = request.getfixturevalue("mqtt_broker").url if request.param == "mosquitto" else None
    admin = "efa_test_" + secrets.token_urlsafe(12)
    settings = ControllerSettings(data_dir=tmp_path / "controller", listen_port=free_port(), broker_url=broker_url,
                                  topic_prefix=topic_prefix, release_key_paths=[release_key.public_path],
                                  admin_token=admin, reconcile_interval_s=0.2, webhook_interval_s=0.2,
                                  incident_cooldown_s=COOLDOWN_S)
    server = BackgroundServer(settings).start()
    monkeypatch.setenv("EDGEFLEET_URL", server.url)
    monkeypatch.setenv("EDGEFLEET_TOKEN", admin)
    monkeypatch.setenv("EDGEFLEET_CLI_CONFIG", str(tmp_path / "no-cli.toml"))
    with httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {admin}"}, timeout=10) as client:
        wait_until(lambda: server.controller.transport.connected, what="MQTT bridge connected")
        yield client
    server.stop()


class Sensor:
    """A device's inputs scored like the agent scores them: the bundle's reference profile, live counts."""

    def __init__(self, seed: int) -> None:
        self.rng = np.random.default_rng(seed)
        self.profile = drift.build_profile(self.rng.normal(size=(2000, 4)).astype(np.float32), input_name="x")
        self.binner = drift.FeatureBinner(self.profile)
        self.seq = 0

    def window(self, device_id: str, *, end: float, shift: float, samples: int = 200) -> TelemetryWindow:
        x = (self.rng.normal(size=(samples, 4)) + shift).astype(np.float32)
        counts = self.binner.trim(self.binner.counts(x))
        self.seq += 1
        return TelemetryWindow(device_id=device_id, window_seq=self.seq, window_start=end - 0.1, window_end=end,
                               bundle=BUNDLE, requests=samples, batches=samples, samples=samples,
                               latency_ms=Histogram(bounds=[1.0, 5.0], counts=[samples, 0, 0]), features=counts,
                               drift=drift.score(self.profile, counts), sent_at=end)


def test_three_alarm_windows_open_one_incident_everywhere_and_the_cooldown_closes_it(controller, receiver, capsys,
                                                                                     topic_prefix):
    client = controller
    hook = client.post("/api/v1/webhooks", json={"url": f"http://127.0.0.1:{receiver.server_address[1]}/h",
                                                 "events": ["incident.opened", "incident.closed"]}).json()
    receiver.secret = hook["secret"]
    creds = enroll(client, "sensor-7", tags=["line-3"])
    device = SimDevice(creds["broker_url"], "sensor-7", topic_prefix, key=creds["key"])
    sensor = Sensor(seed=11)
    try:
        start = time.time() - 0.5   # five windows of 0.1 s that ended just now
        published = [sensor.window("sensor-7", end=start + 0.1 * i, shift=0.0 if i < 2 else 1.5) for i in range(5)]
        assert [w.drift.level for w in published] == ["ok", "ok", "alarm", "alarm", "alarm"]
        for window in published:
            device.publish(window, "telemetry")

        def opened() -> list[dict]:
            return client.get("/api/v1/incidents", params={"state": "open"}).json()

        [incident] = wait_until(opened, what="an open incident over REST")
        assert (incident["cohort_kind"], incident["cohort_key"], incident["bundle_digest"]) == \
            ("device", "sensor-7", BUNDLE.digest)
        assert (incident["windows"], incident["first_alarm_at"], incident["opened_at"]) == \
            (3, published[2].window_end, published[4].window_end)
        listed = cli_json(capsys, "incidents", "list", "--state", "open")
        assert [i["id"] for i in listed] == [incident["id"]]
        rc, out, _ = run_cli(capsys, "incidents", "show", incident["id"])
        assert rc == 0 and "sensor-7" in out and "sensor-net 1.4.0" in out and "3 at alarm" in out
        [(event, data)] = wait_until(lambda: receiver.events, what="incident.opened at the webhook receiver")
        assert event == "incident.opened" and data["incident_id"] == incident["id"]

        def closed() -> dict | None:
            shown = client.get(f"/api/v1/incidents/{incident['id']}").json()
            return shown if shown["state"] == "closed" else None

        shown = wait_until(closed, what="the incident closed after the cooldown", timeout=COOLDOWN_S + 30)
        assert shown["closed_at"] == pytest.approx(published[4].window_end + COOLDOWN_S)
        assert [w["drift_level"] for w in shown["evidence"]] == ["ok", "ok", "alarm", "alarm", "alarm"]
        wait_until(lambda: len(receiver.events) == 2, what="incident.closed at the webhook receiver")
        assert [e for e, _ in receiver.events] == ["incident.opened", "incident.closed"]
        assert cli_json(capsys, "incidents", "show", incident["id"])["state"] == "closed"
        assert client.get("/api/v1/incidents", params={"state": "open"}).json() == []
    finally:
        device.close()
