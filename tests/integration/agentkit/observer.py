"""An MQTT client that records everything under one device's subtree and can publish orders."""

from __future__ import annotations

import json
import threading
import time
import uuid

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion


class Observer:
    def __init__(self, host: str, port: int, prefix: str, device_id: str, *, persistent: bool = False,
                 tls_ca=None) -> None:
        self.prefix = prefix
        self.device_id = device_id
        self.base = f"{prefix}/devices/{device_id}"
        self.messages: list[tuple[str, dict | None, bytes, bool]] = []  # kind, obj, raw, retained
        self.cond = threading.Condition()
        # persistent: a broker restart keeps our session, so QoS 1 messages wait for us
        self.client = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"obs-{uuid.uuid4().hex[:8]}",
                                  clean_session=not persistent)
        if tls_ca is not None:
            self.client.tls_set(ca_certs=str(tls_ca))
        self.client.on_message = self._on_message
        self.client.reconnect_delay_set(0.1, 0.5)
        subscribed = threading.Event()
        self.client.on_subscribe = lambda *a: subscribed.set()
        self.client.on_connect = lambda c, *a: c.subscribe(f"{self.base}/#", qos=1)
        self.client.connect(host, port)
        self.client.loop_start()
        assert subscribed.wait(10), "observer could not subscribe"

    def _on_message(self, client, userdata, msg) -> None:
        kind = msg.topic.rsplit("/", 1)[-1]
        try:
            obj = json.loads(msg.payload)
        except ValueError:
            obj = None
        with self.cond:
            self.messages.append((kind, obj, msg.payload, msg.retain))
            self.cond.notify_all()

    def of(self, kind: str) -> list[dict]:
        with self.cond:
            return [o for k, o, _, _ in self.messages if k == kind and o is not None]

    def wait_for(self, predicate, timeout: float = 60.0, what: str = "condition"):
        """Wait until ``predicate(self)`` returns a truthy value; return it."""
        end = time.monotonic() + timeout
        with self.cond:
            while True:
                result = predicate(self)
                if result:
                    return result
                left = end - time.monotonic()
                if left <= 0:
                    kinds = [(k, (o or {}).get("state"), (o or {}).get("outcome"))
                             for k, o, _, _ in self.messages][-30:]
                    raise AssertionError(f"timed out waiting for {what}; last messages: {kinds}")
                self.cond.wait(min(left, 0.5))

    def final_status(self, deployment_id: str, timeout: float = 120.0) -> dict:
        return self.wait_for(lambda o: next((m for m in o.of("status")
                                             if m["deployment_id"] == deployment_id and m["final"]), None),
                             timeout, f"final status of {deployment_id}")

    def states_of(self, deployment_id: str) -> list[str]:
        return [m["state"] for m in self.of("status") if m["deployment_id"] == deployment_id and not m["final"]]

    def publish(self, kind: str, payload: bytes, qos: int = 1) -> None:
        info = self.client.publish(f"{self.base}/{kind}", payload, qos=qos)
        info.wait_for_publish(10)

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()
