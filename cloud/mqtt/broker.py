"""The embedded MQTT broker (iotcore: rumqttd in a child process), used when no broker URL is set.

Its port is chosen once per data directory and kept in ``<data_dir>/broker.port``: every device
enrolled with the controller holds the broker's URL in its ``agent.toml``, so a restart must not
move the broker.
"""

from __future__ import annotations

import ipaddress
import logging
from pathlib import Path

from iotcore import Broker

from edgefleet.cloud.ports import free_port, port_is_free
from edgefleet.protocol.errors import ConfigError
from edgefleet.protocol.files import atomic_write

log = logging.getLogger(__name__)

PORT_FILE = "broker.port"
"""In the data directory: the embedded broker's port, chosen at the first start and kept."""


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


def embedded_broker_port(data_dir: Path, *, host: str, configured: int = 0) -> int:
    """The port the embedded broker listens on: ``configured`` if not 0, else the one kept in
    ``data_dir/broker.port`` (a free port is chosen and kept there at the first start). Raises
    :class:`ConfigError` if the file is damaged or another process holds the port."""
    path = data_dir / PORT_FILE
    if configured:
        port, source = configured, "embedded_broker_port"
    else:
        try:
            text = path.read_text(encoding="ascii").strip()
        except FileNotFoundError:
            port = free_port(host)
            atomic_write(path, f"{port}\n".encode())
            log.info("embedded MQTT broker: chose port %d, kept in %s", port, path)
            return port
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"cannot read the embedded broker's port file: {exc}", where=str(path),
                              hint="fix its permissions, or write the port the broker had into it") from None
        if not text.isdigit() or not 0 < int(text) <= 65535:
            raise ConfigError(f"the embedded broker's port file holds {text[:20]!r}, not a port number",
                              where=str(path), hint="write the port the broker had into it (the port in the "
                                                    "broker_url of an enrolled device's agent.toml)")
        port, source = int(text), str(path)
    if not port_is_free(port, host):
        kept = "" if configured else " (kept there since the first start, so enrolled devices find the broker again)"
        raise ConfigError(f"port {port} of the embedded MQTT broker{kept} is taken by another process on {host}",
                          where=source,
                          hint=f"stop whatever listens on {host}:{port} (ss -ltnp 'sport = :{port}' shows it), or "
                               "give the broker another port with embedded_broker_port; devices enrolled before "
                               "then keep the old port in their agent.toml (broker_url) and need it changed")
    return port


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
