"""The embedded MQTT broker (iotcore: rumqttd in a child process), used when no broker URL is set."""

from __future__ import annotations

import logging

from iotcore import Broker

from edgefleet.cloud.ports import free_port

log = logging.getLogger(__name__)


class EmbeddedBroker:
    def __init__(self, *, host: str = "127.0.0.1", port: int = 0, max_payload_size: int = 1024 * 1024) -> None:
        self.host = host
        self.port = port or free_port(host)
        self._broker = Broker(port=self.port, listen=host, max_payload_size=max_payload_size)

    @property
    def url(self) -> str:
        host = "127.0.0.1" if self.host in ("0.0.0.0", "::", "") else self.host
        return f"mqtt://{host}:{self.port}"

    @property
    def running(self) -> bool:
        return self._broker.is_running

    def start(self) -> EmbeddedBroker:
        self._broker.start()
        log.info("embedded MQTT broker listening on %s", self.url)
        return self

    def stop(self) -> None:
        self._broker.stop()
