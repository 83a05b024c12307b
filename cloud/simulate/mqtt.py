"""paho-mqtt clients driven by the asyncio loop: paho's documented external-event-loop integration
(``on_socket_open`` / ``on_socket_register_write`` hand the socket to the loop, which calls
``loop_read`` / ``loop_write`` when it is ready). Thousands of connections share one thread; one
:class:`Housekeeper` task calls ``loop_misc`` (keep-alive pings) for all of them.

A thread per client (``loop_start``) stalls at a few hundred clients on two cores (DESIGN.md §10), and
aiomqtt is this same integration with a future per operation on top (docs/operations.md, "Simulating a
fleet", has the measurement).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Callable
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode


class LoopClient:
    """One MQTT connection whose socket the asyncio loop watches. Callbacks run on the loop."""

    def __init__(self, loop: asyncio.AbstractEventLoop, *, client_id: str, username: str | None,
                 password: str | None, will: tuple[str, bytes], on_connected: Callable[[], None],
                 on_lost: Callable[[], None], on_message: Callable[[bytes], None]) -> None:
        self.loop = loop
        self.connected = False
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=False,
                                  protocol=mqtt.MQTTv311)
        if username:
            self.client.username_pw_set(username, password)
        self.client.will_set(will[0], will[1], qos=1, retain=True)
        self.client.max_queued_messages_set(1000)
        self._on_connected, self._on_lost, self._on_message = on_connected, on_lost, on_message
        c = self.client
        c.on_socket_open = self._socket_open
        c.on_socket_close = self._socket_close
        c.on_socket_register_write = self._register_write
        c.on_socket_unregister_write = self._unregister_write
        c.on_connect = self._connect
        c.on_disconnect = self._disconnect
        c.on_message = lambda _c, _u, msg: self._on_message(bytes(msg.payload))

    # paho -> loop
    def _socket_open(self, client: mqtt.Client, userdata: Any, sock: Any) -> None:
        self.loop.add_reader(sock, client.loop_read)

    def _socket_close(self, client: mqtt.Client, userdata: Any, sock: Any) -> None:
        self.loop.remove_reader(sock)
        self.loop.remove_writer(sock)

    def _register_write(self, client: mqtt.Client, userdata: Any, sock: Any) -> None:
        self.loop.add_writer(sock, client.loop_write)

    def _unregister_write(self, client: mqtt.Client, userdata: Any, sock: Any) -> None:
        self.loop.remove_writer(sock)

    def _connect(self, client: mqtt.Client, userdata: Any, flags: Any, reason_code: Any, properties: Any) -> None:
        if reason_code.is_failure:
            return
        self.connected = True
        self._on_connected()

    def _disconnect(self, client: mqtt.Client, userdata: Any, flags: Any, reason_code: Any, properties: Any) -> None:
        was = self.connected
        self.connected = False
        if was:
            self._on_lost()

    # the device's side
    def connect(self, host: str, port: int, keepalive: int) -> None:
        """Open the TCP connection and send CONNECT (blocking for the TCP handshake only: loopback or LAN)."""
        self.client.connect(host, port, keepalive=keepalive)

    def reconnect(self) -> None:
        self.client.reconnect()

    def subscribe(self, topic: str) -> None:
        self.client.subscribe(topic, qos=1)

    def publish(self, topic: str, payload: bytes, *, retain: bool = False) -> bool:
        if not self.connected:
            return False
        return self.client.publish(topic, payload, qos=1, retain=retain).rc == MQTTErrorCode.MQTT_ERR_SUCCESS

    def drop(self) -> None:
        """Cut the connection without DISCONNECT (the broker publishes the last will), as a power cut does."""
        sock = self.client.socket()
        if isinstance(sock, socket.socket):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        self.connected = False
        self.client.disconnect()

    def misc(self) -> None:
        self.client.loop_misc()


class Housekeeper:
    """One task that gives every client its ``loop_misc`` (keep-alive) every ``period_s``."""

    def __init__(self, clients: Callable[[], list[LoopClient]], period_s: float = 2.0, slice_size: int = 500) -> None:
        self.clients, self.period_s, self.slice_size = clients, period_s, slice_size

    async def run(self) -> None:
        while True:
            batch = self.clients()
            for i in range(0, len(batch), self.slice_size):
                for client in batch[i:i + self.slice_size]:
                    client.misc()
                await asyncio.sleep(0)
            await asyncio.sleep(self.period_s)
