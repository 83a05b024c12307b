"""The one parser of broker URLs, for the agent and the controller.

``mqtt://[user[:password]@]host[:port]`` (port 1883) or ``mqtts://...`` (TLS, port 8883);
``tcp://`` and ``ssl://`` are accepted as their aliases, as paho and Mosquitto name them.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

from edgefleet.protocol.errors import ConfigError

PLAIN_SCHEMES = ("mqtt", "tcp")
TLS_SCHEMES = ("mqtts", "ssl")


@dataclass(frozen=True)
class BrokerAddress:
    host: str
    port: int
    tls: bool = False
    username: str | None = None
    password: str | None = None

    @property
    def public_url(self) -> str:
        """The URL without credentials (what devices are told at enrollment, what logs show)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{'mqtts' if self.tls else 'mqtt'}://{host}:{self.port}"


def parse_broker_url(url: str, *, where: str = "broker_url") -> BrokerAddress:
    """Parse ``url`` or raise :class:`ConfigError` naming ``where`` and what is wrong."""
    parts = urlsplit(url)
    if parts.scheme not in PLAIN_SCHEMES + TLS_SCHEMES:
        raise ConfigError(f"broker URL {url!r} must start with mqtt:// or mqtts://", where=where)
    if not parts.hostname:
        raise ConfigError(f"broker URL {url!r} has no host", where=where, hint="e.g. mqtt://127.0.0.1:1883")
    try:
        port = parts.port
    except ValueError:
        raise ConfigError(f"broker URL {url!r} has a bad port", where=where) from None
    tls = parts.scheme in TLS_SCHEMES
    return BrokerAddress(host=parts.hostname, port=port or (8883 if tls else 1883), tls=tls,
                         username=unquote(parts.username) if parts.username else None,
                         password=unquote(parts.password) if parts.password else None)
