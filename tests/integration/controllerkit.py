"""Helpers for controller integration tests: a running controller (real MQTT bridge, real
broker), simulated devices speaking MQTT with paho, and polling waits."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import paho.mqtt.client as mqtt
from fastapi.testclient import TestClient
from paho.mqtt.enums import CallbackAPIVersion

from edgefleet.cloud.app import create_app
from edgefleet.cloud.controller import Controller
from edgefleet.cloud.settings import ControllerSettings
from edgefleet.protocol.brokers import parse_broker_url
from edgefleet.protocol.messages import Message, OrderMessage, State, decode, encode
from edgefleet.protocol.topics import device_topic

from testkit import DeviceKey, wait_until

ADMIN = "eft_integration-admin"


def controller_settings(tmp_path: Path, *, broker_url: str | None, prefix: str, release_pub: Path,
                        **overrides) -> ControllerSettings:
    values = {"data_dir": tmp_path / "controller", "broker_url": broker_url, "topic_prefix": prefix,
              "release_key_paths": [release_pub], "admin_token": ADMIN,
              "mqtt_client_id": f"ctl-{prefix.split('/')[0]}", "reconcile_interval_s": 0.2}
    return ControllerSettings(**(values | overrides))


@contextmanager
def running_controller(settings: ControllerSettings) -> Iterator[tuple[TestClient, Controller]]:
    """The app with its lifespan running (embedded broker if no URL, MQTT bridge, ingest, reconciler)."""
    app = create_app(settings)
    with TestClient(app) as client:
        client.headers["Authorization"] = f"Bearer {ADMIN}"
        controller: Controller = app.state.controller
        wait_until(lambda: controller.transport.connected, what="MQTT bridge connected")
        yield client, controller


def enroll(client: TestClient, device_id: str, **token: object) -> dict:
    """Enroll ``device_id`` as its agent would (its own message key in the request); the reply's
    credentials plus ``key``, the device's :class:`DeviceKey`."""
    secret = client.post("/api/v1/enrollment-tokens", json={"device_id": device_id, **token}).json()["token"]
    key = DeviceKey()
    r = client.post("/api/v1/enroll", json={"token": secret, "device_id": device_id, "device_public_key_pem": key.pem},
                    headers={"Authorization": ""})
    assert r.status_code == 201, r.text
    return r.json() | {"key": key}


class SimDevice:
    """One device on MQTT: publishes protocol messages (signed with ``key``, as the agent does;
    unsigned without one), collects orders from its cmd topic, and sets a last will (state
    offline) like the agent."""

    def __init__(self, broker_url: str, device_id: str, prefix: str, *, key: DeviceKey | None = None,
                 username: str | None = None, password: str | None = None) -> None:
        self.device_id, self.prefix, self.key = device_id, prefix, key
        self.orders: list[OrderMessage] = []
        self._subscribed = threading.Event()
        address = parse_broker_url(broker_url)
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"sim-{device_id}-{prefix[:17]}")
        if username:
            self.client.username_pw_set(username, password)
        will = State(device_id=device_id, status="offline")
        will_topic = device_topic(device_id, "state", prefix)
        self.client.will_set(will_topic, self.payload(will_topic, encode(will)), qos=1, retain=True)
        self.client.on_connect = self._on_connect
        self.client.on_message = self._on_message
        self.client.on_subscribe = lambda *a: self._subscribed.set()
        self.client.connect(address.host, address.port, keepalive=5)
        self.client.loop_start()
        if not self._subscribed.wait(10):
            raise AssertionError("simulated device did not subscribe")

    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        client.subscribe(device_topic(self.device_id, "cmd", self.prefix), qos=1)

    def _on_message(self, client, userdata, message) -> None:
        self.orders.append(decode("cmd", message.payload))

    def payload(self, topic: str, body: bytes) -> bytes:
        return self.key.seal(topic, body) if self.key is not None else body

    def publish(self, message: Message, kind: str) -> None:
        topic = device_topic(self.device_id, kind, self.prefix)
        self.publish_raw(topic, self.payload(topic, encode(message)))

    def publish_raw(self, topic: str, payload: bytes) -> None:
        self.client.publish(topic, payload, qos=1).wait_for_publish(10)

    def vanish(self) -> None:
        """Drop the connection without DISCONNECT, so the broker publishes the last will."""
        self.client.loop_stop()
        self.client.socket().close()

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()
