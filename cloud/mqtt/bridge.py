"""MQTT I/O of the controller (paho-mqtt 2.x): subscribe to the device topics, hand every raw
message to a callback, publish orders. Decoding and storing happen in :mod:`ingest`."""

from __future__ import annotations

import logging
import ssl
import threading
from collections.abc import Callable
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from edgefleet.protocol.brokers import parse_broker_url

log = logging.getLogger(__name__)

OnMessage = Callable[[str, bytes], None]


class MqttBridge:
    """One paho client with its own network thread; reconnects by itself.

    With ``shared_group`` it speaks MQTT 5 and uses shared subscriptions so several controller
    replicas split the ingest; otherwise MQTT 3.1.1 with a persistent session, so QoS 1
    messages published while the controller is down are delivered when it is back.
    """

    def __init__(self, *, url: str, client_id: str, subscriptions: list[str], on_message: OnMessage,
                 shared_group: str | None = None, persistent_session: bool = True) -> None:
        self.address = parse_broker_url(url)
        self.subscriptions = subscriptions
        self._on_message_cb = on_message
        self._connected = threading.Event()
        v5 = shared_group is not None
        if v5:
            self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)
        else:
            self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv311,
                                      clean_session=not persistent_session)
        if self.address.username:
            self.client.username_pw_set(self.address.username, self.address.password)
        if self.address.tls:
            self.client.tls_set(cert_reqs=ssl.CERT_REQUIRED)
        # No window of our own (paho's is 20): orders and acknowledgements go out in bursts of one per
        # device, and with a window paho scans every message in flight on each PUBACK (up to 1000 before).
        self.client.max_inflight_messages_set(0)
        self.client.max_queued_messages_set(0)
        self.client.reconnect_delay_set(1, 30)
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.on_message = self._on_message

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    def start(self, timeout: float = 10.0) -> None:
        self.client.connect_async(self.address.host, self.address.port, keepalive=30)
        self.client.loop_start()
        if not self._connected.wait(timeout):
            log.warning("MQTT broker %s not reachable yet; retrying in the background", self.address.public_url)

    def stop(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()
        self._connected.clear()

    def publish(self, topic: str, payload: bytes) -> bool:
        if not self.connected:
            return False
        info = self.client.publish(topic, payload, qos=1)
        return info.rc == mqtt.MQTT_ERR_SUCCESS

    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: mqtt.ConnectFlags, reason_code: ReasonCode,
                    properties: Properties | None) -> None:
        if reason_code.is_failure:
            log.error("MQTT connect to %s refused: %s", self.address.public_url, reason_code)
            return
        client.subscribe([(topic, 1) for topic in self.subscriptions])
        self._connected.set()
        log.info("MQTT bridge connected to %s, subscribed to %d filters", self.address.public_url,
                 len(self.subscriptions))

    def _on_disconnect(self, client: mqtt.Client, userdata: Any, flags: mqtt.DisconnectFlags,
                       reason_code: ReasonCode, properties: Properties | None) -> None:
        self._connected.clear()
        log.warning("MQTT bridge disconnected from %s: %s", self.address.public_url, reason_code)

    def _on_message(self, client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        try:
            self._on_message_cb(message.topic, bytes(message.payload))
        except Exception:  # a callback bug must never kill the network thread
            log.exception("MQTT message handler failed on %s", message.topic)
