"""Enrollment of many simulated devices at once, and the state file that keeps what they got.

Each device enrolls as the agent does (agent/enroll.py): an operator asks for a one-time token pinned to
the device id (``POST /api/v1/enrollment-tokens``), the device posts it with the public half of its own
new message key (``POST /api/v1/enroll``) and gets its MQTT credentials and the keys it must trust.
Requests run concurrently over one ``httpx2.AsyncClient``. The state file (JSON, mode 0600: it holds
private keys and passwords) lets a second run on the same controller skip enrollment; it is written
after every batch, so an interrupted enrollment resumes where it stopped.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edgefleet.protocol.errors import ConfigError, TransportError
from edgefleet.protocol.files import atomic_write
from edgefleet.protocol.keys import TrustedKeys, generate_private_key, load_public_key_pem, public_key_pem

if TYPE_CHECKING:
    import httpx2 as httpx

STATE_VERSION = 1
API = "/api/v1"


@dataclass
class DeviceCredentials:
    device_id: str
    username: str
    password: str
    key_hex: str
    """The raw 32-byte Ed25519 private key of the device's message key, hex."""
    sequence: int = 0
    """The last order sequence the device accepted (kept so a later run refuses replays too)."""

    def private_key(self) -> Ed25519PrivateKey:
        return Ed25519PrivateKey.from_private_bytes(bytes.fromhex(self.key_hex))


@dataclass
class FleetCredentials:
    controller_url: str
    topic_prefix: str = ""
    broker_url: str | None = None
    controller_keys_pem: list[str] = field(default_factory=list)
    release_keys_pem: list[str] = field(default_factory=list)
    devices: dict[str, DeviceCredentials] = field(default_factory=dict)

    def controller_keys(self) -> TrustedKeys:
        keys = [load_public_key_pem(p.encode(), where="controller key") for p in self.controller_keys_pem]
        return TrustedKeys.of(keys, role="controller")

    def release_keys(self) -> TrustedKeys:
        return TrustedKeys.of([load_public_key_pem(p.encode(), where="release key") for p in self.release_keys_pem],
                              role="release")


def load_state(path: Path, controller_url: str) -> FleetCredentials:
    """The credentials kept in ``path`` for this controller; empty ones when the file does not exist or
    was made for another controller (enrolling again there is the only way on)."""
    if not path.exists():
        return FleetCredentials(controller_url=controller_url)
    try:
        raw = json.loads(path.read_text())
        if raw.get("version") != STATE_VERSION:
            raise ConfigError(f"simulator state file version {raw.get('version')!r}, expected {STATE_VERSION}",
                              where=str(path), hint="delete it: the devices enroll again")
        devices = {d["device_id"]: DeviceCredentials(**d) for d in raw["devices"]}
        creds = FleetCredentials(controller_url=raw["controller_url"], topic_prefix=raw["topic_prefix"],
                                 broker_url=raw["broker_url"], controller_keys_pem=raw["controller_keys_pem"],
                                 release_keys_pem=raw["release_keys_pem"], devices=devices)
    except (ValueError, KeyError, TypeError) as exc:
        raise ConfigError(f"simulator state file is not readable: {exc!s:.200}", where=str(path),
                          hint="delete it: the devices enroll again") from None
    if creds.controller_url != controller_url:
        return FleetCredentials(controller_url=controller_url)
    return creds


def save_state(path: Path, creds: FleetCredentials) -> None:
    body = {"version": STATE_VERSION, "controller_url": creds.controller_url, "topic_prefix": creds.topic_prefix,
            "broker_url": creds.broker_url, "controller_keys_pem": creds.controller_keys_pem,
            "release_keys_pem": creds.release_keys_pem, "devices": [asdict(d) for d in creds.devices.values()]}
    atomic_write(path, json.dumps(body, indent=0).encode(), secret=True)


def _raise_for(resp: httpx.Response, what: str) -> dict[str, Any]:
    if resp.status_code >= 400:
        try:
            err = resp.json().get("error", {})
        except ValueError:
            err = {}
        raise TransportError(f"{what}: controller answered {resp.status_code}: {err.get('message', resp.text[:200])}",
                             code=err.get("code") or f"http_{resp.status_code}", where=str(resp.request.url),
                             hint=err.get("hint") or "check --url and --token (an operator's API token)")
    body: dict[str, Any] = resp.json()
    return body


async def enroll_one(client: httpx.AsyncClient, *, token: str, device_id: str,
                     tags: list[str]) -> tuple[DeviceCredentials, dict[str, Any]]:
    secret = _raise_for(await client.post(f"{API}/enrollment-tokens", json={"device_id": device_id, "tags": tags},
                                          headers={"Authorization": f"Bearer {token}"}),
                        f"enrollment token for {device_id}")["token"]
    key = generate_private_key()
    reply = _raise_for(await client.post(f"{API}/enroll", json={
        "token": secret, "device_id": device_id,
        "device_public_key_pem": public_key_pem(key.public_key()).decode("ascii")}), f"enrollment of {device_id}")
    raw = key.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw,
                            serialization.NoEncryption())
    return DeviceCredentials(device_id=reply["device_id"], username=reply["mqtt_username"],
                             password=reply["mqtt_password"], key_hex=raw.hex()), reply


async def enroll_fleet(client: httpx.AsyncClient, creds: FleetCredentials, device_ids: list[str], *, token: str,
                       tags: list[str], concurrency: int, state_path: Path | None = None, batch: int = 500,
                       progress: Callable[[int], None] | None = None) -> int:
    """Enroll every device of ``device_ids`` that ``creds`` does not hold yet; return how many enrolled."""
    missing = [d for d in device_ids if d not in creds.devices]
    gate = asyncio.Semaphore(concurrency)

    async def one(device_id: str) -> None:
        async with gate:
            device, reply = await enroll_one(client, token=token, device_id=device_id, tags=tags)
        creds.devices[device.device_id] = device
        creds.topic_prefix = reply["topic_prefix"]
        creds.broker_url = creds.broker_url or reply.get("broker_url")
        creds.controller_keys_pem = [reply["controller_public_key_pem"]]
        creds.release_keys_pem = list(reply["release_public_keys_pem"])

    for start in range(0, len(missing), batch):
        await asyncio.gather(*(one(d) for d in missing[start:start + batch]))
        if state_path is not None:
            save_state(state_path, creds)
        if progress is not None:
            progress(min(start + batch, len(missing)))
    return len(missing)
