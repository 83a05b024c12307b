"""The device's own key pair: every message the agent publishes is signed with it.

The pair is made on the device (at enrollment, or at the first start of an agent upgraded from
before message signatures) and the private key never leaves ``state_dir/keys/device.key`` (mode
0600). The controller learns the public key in the enrollment request; an upgraded device
registers it once over HTTPS, proving who it is with its MQTT credentials
(``POST /api/v1/device/message-key``). Until the controller knows the key, it stores nothing the
device sends (docs/security.md "Message signatures").
"""

from __future__ import annotations

import base64
import json
import logging
import random
import threading
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edgefleet.agent.backoff import delay
from edgefleet.agent.config import AgentConfig
from edgefleet.protocol import device_signatures
from edgefleet.protocol.errors import TransportError
from edgefleet.protocol.files import atomic_write
from edgefleet.protocol.keys import generate_private_key, load_private_key, public_key_pem, save_private_key

log = logging.getLogger(__name__)


def key_path(config: AgentConfig) -> Path:
    return config.device_key or config.state_dir / "keys" / "device.key"


def registered_marker(path: Path) -> Path:
    """Exists once the controller knows the key (it came with the enrollment, or was registered)."""
    return path.with_name(path.name + ".registered")


def create_key(path: Path) -> Ed25519PrivateKey:
    key = generate_private_key()
    save_private_key(key, path)
    return key


@dataclass
class DeviceIdentity:
    device_id: str
    key: Ed25519PrivateKey
    path: Path

    @classmethod
    def load_or_create(cls, config: AgentConfig) -> DeviceIdentity:
        path = key_path(config)
        if path.exists():
            return cls(config.device_id, load_private_key(path), path)
        log.warning("no device key at %s: making one (the controller must learn it before it accepts this "
                    "device's messages)", path)
        return cls(config.device_id, create_key(path), path)

    def seal(self, topic: str, body: bytes) -> bytes:
        return device_signatures.seal(self.key, topic, body)

    @property
    def public_pem(self) -> str:
        return public_key_pem(self.key.public_key()).decode("ascii")

    @property
    def registered(self) -> bool:
        return registered_marker(self.path).exists()

    def register(self, config: AgentConfig, *, timeout: float = 10.0) -> None:
        """Tell the controller this device's public key; raise :class:`TransportError` if it cannot."""
        if not (config.controller_url and config.username and config.password):
            raise TransportError("cannot register the device key: controller_url, username or password is not set",
                                 where="agent config", hint="re-enroll the device: edgefleet-agent enroll")
        url = f"{config.controller_url.rstrip('/')}/api/v1/device/message-key"
        basic = base64.b64encode(f"{config.username}:{config.password}".encode()).decode()
        request = urllib.request.Request(url, data=json.dumps({"public_key_pem": self.public_pem}).encode(),
                                         method="POST", headers={"Content-Type": "application/json",
                                                                 "Authorization": f"Basic {basic}"})
        try:
            with urllib.request.urlopen(request, timeout=timeout) as resp:
                resp.read()
        except urllib.error.HTTPError as exc:
            raise TransportError(f"the controller refused the device key ({exc.code})", where=url,
                                 hint="a device whose key changed must be re-enrolled") from None
        except (urllib.error.URLError, OSError) as exc:
            raise TransportError(f"cannot reach the controller: {getattr(exc, 'reason', exc)}", where=url) from None
        atomic_write(registered_marker(self.path), b"")
        log.info("device key registered with the controller")

    def register_in_background(self, config: AgentConfig, stop: threading.Event, *, done: threading.Event,
                               rng: random.Random | None = None) -> threading.Thread | None:
        """Until the controller knows the key, try to register it, backing off up to 5 minutes;
        ``done`` is set once it has."""
        if self.registered:
            return None
        rng = rng or random.Random()

        def attempts() -> None:
            attempt = 0
            while not stop.is_set():
                try:
                    self.register(config)
                    done.set()
                    return
                except TransportError as exc:
                    log.error("%s; retrying", exc)
                stop.wait(delay(attempt, rng, base=2.0, cap=300.0))
                attempt += 1
        thread = threading.Thread(target=attempts, name="edgefleet-register-key", daemon=True)
        thread.start()
        return thread
