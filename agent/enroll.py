"""Device side of enrollment: exchange a one-time token for this device's own credentials.

``edgefleet-agent enroll --controller URL --token T --state-dir DIR`` makes the device's own key
pair (``DIR/keys/device.key``; it signs every message the agent publishes), posts the token and
the public key to the controller's ``/api/v1/enroll``, stores the trusted controller and release public keys it gets
back under ``DIR/keys/`` and writes a complete agent config (``DIR/agent.toml``, mode 0600: it
holds the MQTT password). The agent then runs with ``edgefleet-agent --config DIR/agent.toml``.
Standard library only (urllib), like the rest of the agent.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from edgefleet.agent.config import load_config
from edgefleet.agent.identity import create_key, registered_marker
from edgefleet.agent.outbox import OUTBOX_FILE, Outbox
from edgefleet.agent.trust_root import ROOT_FILE
from edgefleet.protocol.errors import ConfigError, EdgeFleetError, TransportError
from edgefleet.protocol.files import atomic_write
from edgefleet.protocol.keys import load_public_key_pem, public_key_pem
from edgefleet.protocol.messages import SignedRoot
from edgefleet.protocol.root import root_json, verify_self

log = logging.getLogger(__name__)


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    return json.dumps(str(value))  # a JSON string is a valid TOML basic string


def render_config(values: dict[str, Any]) -> str:
    lines = ["# EdgeFleet agent configuration, written by 'edgefleet-agent enroll'.",
             "# Every key can be overridden by EDGEFLEET_AGENT_<KEY>; see docs/agent.md."]
    lines += [f"{key} = {_toml_value(value)}" for key, value in values.items() if value is not None]
    return "\n".join(lines) + "\n"


def _post_json(url: str, body: dict[str, Any], timeout: float) -> dict[str, Any]:
    request = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST",
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as resp:
            reply: dict[str, Any] = json.loads(resp.read())
            return reply
    except urllib.error.HTTPError as exc:
        try:
            err = json.loads(exc.read()).get("error", {})
        except ValueError:
            err = {}
        raise TransportError(f"controller refused the enrollment ({exc.code}): {err.get('message', exc.reason)}",
                             code=err.get("code") or "enroll_refused", where=url, hint=err.get("hint")) from None
    except (urllib.error.URLError, OSError) as exc:
        raise TransportError(f"cannot reach the controller: {getattr(exc, 'reason', exc)}", where=url,
                             hint="check --controller and the network") from None


def _tls_request(device_id: str | None) -> tuple[bytes, str]:
    """A new TLS key (PEM) and a certificate request for it: the controller decides the name."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    csr = (x509.CertificateSigningRequestBuilder()
           .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, device_id or "edgefleet-device")]))
           .sign(key, hashes.SHA256()))
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    return pem, csr.public_bytes(serialization.Encoding.PEM).decode("ascii")


def enroll_device(*, controller_url: str, token: str, state_dir: Path, device_id: str | None = None,
                  broker_url: str | None = None, settings: dict[str, Any] | None = None,
                  timeout: float = 30.0) -> Path:
    """Enroll and write ``state_dir/agent.toml``; return its path. ``settings`` adds or overrides
    config keys (e.g. ``hardware_class``, ``inference_listen``, ``telemetry_interval_s``)."""
    controller_url = controller_url.rstrip("/")
    state_dir = Path(state_dir).resolve()
    keys_dir = state_dir / "keys"
    keys_dir.mkdir(parents=True, exist_ok=True)
    device_key = keys_dir / "device.key"   # a new pair each enrollment: the private key never leaves here
    registered_marker(device_key).unlink(missing_ok=True)
    own = create_key(device_key)
    tls_key, csr = _tls_request(device_id)
    body = {"token": token, **({"device_id": device_id} if device_id else {}),
            "device_public_key_pem": public_key_pem(own.public_key()).decode("ascii"), "tls_csr_pem": csr}
    reply = _post_json(f"{controller_url}/api/v1/enroll", body, timeout)
    atomic_write(registered_marker(device_key), b"")
    tls: dict[str, str] = {}
    if reply.get("tls_certificate_pem"):   # the controller signs device certificates: keep key and certificate
        atomic_write(keys_dir / "mqtt-tls.key", tls_key, secret=True)
        atomic_write(keys_dir / "mqtt-tls.crt", reply["tls_certificate_pem"].encode())
        tls = {"tls_cert": str(keys_dir / "mqtt-tls.crt"), "tls_key": str(keys_dir / "mqtt-tls.key")}
    controller_pem = reply["controller_public_key_pem"].encode()
    load_public_key_pem(controller_pem, where="controller key from the controller")
    atomic_write(keys_dir / "controller.pub", controller_pem)
    release_paths = []
    for i, pem in enumerate(reply["release_public_keys_pem"]):
        load_public_key_pem(pem.encode(), where=f"release key {i} from the controller")
        path = keys_dir / f"release-{i}.pub"
        atomic_write(path, pem.encode())
        release_paths.append(str(path))
    if reply.get("trust_root"):   # pinned: from now on it says which keys this device trusts
        root = SignedRoot.model_validate(reply["trust_root"])
        verify_self(root, where="trust root from the controller")
        atomic_write(state_dir / ROOT_FILE, root_json(root))
    if not release_paths:
        raise ConfigError("the controller trusts no release key", where="controller settings: release_key_paths",
                          hint="configure the release public key on the controller, then enroll again")
    values: dict[str, Any] = {
        "device_id": reply["device_id"],
        "state_dir": str(state_dir),
        "broker_url": broker_url or reply.get("broker_url"),
        "username": reply["mqtt_username"],
        "password": reply["mqtt_password"],
        "topic_prefix": reply["topic_prefix"],
        "controller_url": reply.get("controller_url") or controller_url,
        "controller_keys": [str(keys_dir / "controller.pub")],
        "release_keys": release_paths,
        "device_key": str(device_key),
        **tls,
        **(settings or {}),
    }
    config_path = state_dir / "agent.toml"
    atomic_write(config_path, render_config(values).encode(), secret=True)
    load_config(config_path, environ={})  # the file we wrote must be a valid config
    _discard_old_messages(state_dir)
    return config_path


def _discard_old_messages(state_dir: Path) -> None:
    """A re-enrollment replaces the device key: messages still queued were signed with the old one, and
    the controller would refuse them for ever (docs/security.md §8). They go; the counters stay."""
    path = state_dir / OUTBOX_FILE
    if not path.exists():
        return
    outbox = Outbox(path)
    try:
        dropped = outbox.discard_messages()
    finally:
        outbox.close()
    if dropped:
        log.warning("re-enrolled: dropped %d queued message(s) signed with the replaced device key", dropped)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="edgefleet-agent enroll",
                                     description="Exchange a one-time enrollment token for device credentials")
    parser.add_argument("--controller", required=True, help="controller URL, e.g. https://fleet.example:8080")
    parser.add_argument("--token", required=True, help="one-time enrollment token (edgefleet devices enroll)")
    parser.add_argument("--state-dir", required=True, type=Path, help="the agent's state directory")
    parser.add_argument("--device-id", help="ask for this device id (default: the token's, or generated)")
    parser.add_argument("--broker-url", help="override the broker URL the controller announces")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="extra config key, e.g. hardware_class=rpi4 (repeatable)")
    args = parser.parse_args(argv)
    extra: dict[str, Any] = {}
    for item in args.set:
        key, sep, value = item.partition("=")
        if not sep:
            print(f"edgefleet-agent enroll: --set {item!r} is not KEY=VALUE", file=sys.stderr)
            return 2
        extra[key.strip()] = value
    try:
        path = enroll_device(controller_url=args.controller, token=args.token, state_dir=args.state_dir,
                             device_id=args.device_id, broker_url=args.broker_url, settings=extra)
    except EdgeFleetError as exc:
        print(f"edgefleet-agent enroll: {exc}", file=sys.stderr)
        return 2 if isinstance(exc, ConfigError) else 1
    print(f"enrolled; config written to {path}")
    print(f"start the agent with: edgefleet-agent --config {path}")
    return 0
