"""The embedded MQTT broker (iotcore: rumqttd in a child process), used when no broker URL is set."""

from __future__ import annotations

import ipaddress
import logging

from iotcore import Broker

from edgefleet.cloud.ports import free_port
from edgefleet.protocol.errors import ConfigError

log = logging.getLogger(__name__)


def is_loopback(host: str) -> bool:
    """``localhost`` or a loopback address literal; any other name could resolve to anything."""
    if host.lower() in ("localhost", "localhost."):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_listen_address(host: str, *, insecure: bool) -> None:
    """The embedded broker checks no credentials and no topic rights: refuse to let it listen beyond
    this machine unless ``insecure`` says that is meant."""
    if insecure or is_loopback(host):
        return
    raise ConfigError(f"the embedded MQTT broker would listen on {host!r}, beyond this machine, but it checks no "
                      "credentials: any client that reaches it could read every device's orders and publish on "
                      "any topic", where="embedded_broker_host",
                      hint="for devices on other machines run Mosquitto with the dynamic-security plugin "
                           "(broker_url, broker_admin = \"dynsec\"; docs/operations.md §3), or pass "
                           "--insecure-broker (insecure_broker = true) if that is really meant")


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
        if not is_loopback(self.host):
            log.warning("the embedded MQTT broker listens on %s:%d without authentication (insecure_broker): any "
                        "client that reaches it can read every order and publish on any topic; only message "
                        "signatures keep it from speaking for a device", self.host, self.port)
        return self

    def stop(self) -> None:
        self._broker.stop()
