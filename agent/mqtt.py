"""The agent's MQTT link: one paho-mqtt 2.x client driven from ONE thread.

:meth:`MqttLink.run` is the agent's event loop: it (re)connects with jittered, capped
backoff, lets paho read and write (``client.loop``), and calls ``tick()`` between rounds, so
every paho call happens on this thread and the agent's periodic work (outbox, heartbeats,
telemetry) keeps running while the broker is away. Inbound messages are handed over raw;
decoding and size checks happen in the agent.
"""

from __future__ import annotations

import logging
import random
import ssl
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode

from edgefleet.agent.backoff import delay
from edgefleet.agent.config import AgentConfig

if TYPE_CHECKING:
    from paho.mqtt.properties import Properties
    from paho.mqtt.reasoncodes import ReasonCode

log = logging.getLogger(__name__)


class MqttLink:
    def __init__(self, config: AgentConfig, *, will: tuple[str, bytes] | None = None,
                 on_connected: Callable[[], None] = lambda: None,
                 on_message: Callable[[str, bytes], None] = lambda t, p: None,
                 on_published: Callable[[int], None] = lambda mid: None,
                 rng: random.Random | None = None, monotonic: Callable[[], float] = time.monotonic) -> None:
        self.config = config
        self.rng = rng or random.Random()
        self.monotonic = monotonic
        self._on_connected = on_connected
        self._on_message = on_message
        self._on_published = on_published
        v5 = config.mqtt_protocol == "5"
        self.client = paho.Client(CallbackAPIVersion.VERSION2, client_id=config.device_id,
                                  protocol=paho.MQTTv5 if v5 else paho.MQTTv311,
                                  clean_session=None if v5 else config.clean_session)
        if config.username is not None:
            self.client.username_pw_set(config.username, config.password)
        if config.broker.tls:
            self.client.tls_set(ca_certs=str(config.ca_file) if config.ca_file else None,
                                certfile=str(config.tls_cert) if config.tls_cert else None,
                                keyfile=str(config.tls_key) if config.tls_key else None,
                                cert_reqs=ssl.CERT_REQUIRED)
        if will is not None:
            self.client.will_set(will[0], will[1], qos=1, retain=True)
        self.client.on_connect = self._connected
        self.client.on_disconnect = self._disconnected
        self.client.on_message = self._message
        self.client.on_publish = self._published
        self.connected = False
        self.connects = 0
        self._attempt = 0
        self._socket_open = False
        self._next_try = 0.0

    # paho callbacks (run inside client.loop(), i.e. on our thread)

    def _connected(self, client: paho.Client, userdata: Any, flags: paho.ConnectFlags, reason_code: ReasonCode,
                   properties: Properties | None) -> None:
        if reason_code.is_failure:
            hint = " (this broker speaks no MQTT 5: set mqtt_protocol = \"3.1.1\")" \
                if self.config.mqtt_protocol == "5" and str(reason_code) == "Unsupported protocol version" else ""
            log.warning("broker refused the connection: %s%s", reason_code, hint)
            return
        self.connected = True
        self.connects += 1
        self._attempt = 0
        log.info("connected to %s:%d as %s (session present: %s)", self.config.broker.host,
                 self.config.broker.port, self.config.device_id, flags.session_present)
        self._on_connected()

    def _disconnected(self, client: paho.Client, userdata: Any, flags: paho.DisconnectFlags,
                      reason_code: ReasonCode, properties: Properties | None) -> None:
        if self.connected:
            log.warning("disconnected from the broker: %s", reason_code)
        self.connected = False

    def _message(self, client: paho.Client, userdata: Any, message: paho.MQTTMessage) -> None:
        # paho types the payload bytes | bytearray; it decodes bytes, which bytes() returns as is
        self._on_message(message.topic, bytes(message.payload))

    def _published(self, client: paho.Client, userdata: Any, mid: int, reason_code: ReasonCode,
                   properties: Properties) -> None:
        self._on_published(mid)

    # used from tick() (same thread)

    def publish(self, topic: str, payload: bytes, qos: int = 1, retain: bool = False) -> int | None:
        """Hand a message to paho; None when not connected (the caller keeps it)."""
        if not self.connected:
            return None
        info = self.client.publish(topic, payload, qos=qos, retain=retain)
        if info.rc not in (MQTTErrorCode.MQTT_ERR_SUCCESS, MQTTErrorCode.MQTT_ERR_NO_CONN):
            return None
        return info.mid

    def subscribe(self, topic: str, qos: int = 1) -> None:
        self.client.subscribe(topic, qos=qos)

    # the loop

    def _try_connect(self) -> None:
        broker = self.config.broker
        try:
            if self.config.mqtt_protocol == "5":
                from paho.mqtt.packettypes import PacketTypes
                from paho.mqtt.properties import Properties
                props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]  # paho leaves it unannotated
                props.SessionExpiryInterval = 0 if self.config.clean_session else 7 * 24 * 3600
                self.client.connect(broker.host, broker.port, keepalive=30,
                                    clean_start=self.config.clean_session, properties=props)
            else:
                self.client.connect(broker.host, broker.port, keepalive=30)
            self._socket_open = True
        except (OSError, ValueError) as exc:
            self._schedule_retry(f"cannot connect to {broker.host}:{broker.port}: {exc}")

    def _schedule_retry(self, why: str) -> None:
        wait = delay(self._attempt, self.rng, base=self.config.reconnect_min_s, cap=self.config.reconnect_max_s)
        self._attempt += 1
        self._next_try = self.monotonic() + wait
        log.info("%s; retrying in %.1f s", why, wait)

    def run(self, stop: threading.Event, tick: Callable[[], None], *, poll_s: float = 0.05) -> None:
        while not stop.is_set():
            if not self._socket_open and self.monotonic() >= self._next_try:
                self._try_connect()
            if self._socket_open:
                rc = self.client.loop(timeout=poll_s)
                if rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
                    self._socket_open = False
                    self.connected = False
                    self._schedule_retry(f"connection lost ({paho.error_string(rc)})")
            else:
                stop.wait(poll_s)
            tick()

    def close(self, final: tuple[str, bytes] | None = None, timeout: float = 2.0) -> None:
        """Publish ``final`` (retained, QoS 1) if connected, then disconnect cleanly."""
        if self.connected and final is not None:
            info = self.client.publish(final[0], final[1], qos=1, retain=True)
            end = self.monotonic() + timeout
            while not info.is_published() and self.monotonic() < end:
                if self.client.loop(timeout=0.05) != MQTTErrorCode.MQTT_ERR_SUCCESS:
                    break
        if self._socket_open:
            self.client.disconnect()
            self.client.loop(timeout=0.1)
        self._socket_open = False
        self.connected = False
