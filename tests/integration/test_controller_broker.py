"""The embedded broker: started on a free port with a raised payload limit, stopped cleanly."""

from __future__ import annotations

import threading

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from edgefleet.cloud.mqtt.broker import EmbeddedBroker
from edgefleet.cloud.ports import port_is_free
from edgefleet.protocol.brokers import parse_broker_url

pytestmark = pytest.mark.integration


def test_embedded_broker_carries_large_payloads_and_releases_its_port():
    broker = EmbeddedBroker(max_payload_size=512 * 1024).start()
    address = parse_broker_url(broker.url)
    got = threading.Event()
    received: list[bytes] = []
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="broker-test")
    client.on_message = lambda c, u, m: (received.append(m.payload), got.set())
    try:
        client.connect(address.host, address.port)
        client.loop_start()
        payload = b"x" * (100 * 1024)          # over iotcore's default 20 KB limit
        subscribed = threading.Event()
        client.on_subscribe = lambda *a: subscribed.set()
        client.subscribe("t/#", qos=1)
        assert subscribed.wait(10)
        client.publish("t/big", payload, qos=1).wait_for_publish(10)
        assert got.wait(10) and received[0] == payload
    finally:
        client.disconnect()
        client.loop_stop()
        broker.stop()
    assert not broker.running
    assert port_is_free(address.port, address.host)  # the port is free again
