"""Agent configuration: a TOML file, overridden key by key by ``EDGEFLEET_AGENT_<KEY>``.

Keys are flat (one TOML table, no nesting) so that every key has exactly one environment
name, e.g. ``telemetry_interval_s`` <- ``EDGEFLEET_AGENT_TELEMETRY_INTERVAL_S``. List values
in the environment are comma-separated (or a JSON array). A bad value raises
:class:`~edgefleet.protocol.errors.ConfigError` naming the key and where it came from.
"""

from __future__ import annotations

import json
import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from edgefleet.protocol.brokers import BrokerAddress, parse_broker_url
from edgefleet.protocol.errors import ConfigError, MessageError
from edgefleet.protocol.topics import DEFAULT_PREFIX, validate_device_id

ENV_PREFIX = "EDGEFLEET_AGENT_"
MiB = 1024 * 1024


class AgentConfig(BaseModel):
    """Every tunable of the device agent. Times are seconds, sizes bytes."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    device_id: str
    state_dir: Path
    broker_url: str = "mqtt://127.0.0.1:1883"
    mqtt_protocol: Literal["3.1.1", "5"] = "3.1.1"
    username: str | None = None
    password: str | None = None
    ca_file: Path | None = None
    tls_cert: Path | None = None
    """The device's TLS client certificate (PEM; the controller signs it at enrollment when it has
    ``device_certificates``); with ``tls_key``, presented to an ``mqtts://`` broker."""
    tls_key: Path | None = None
    clean_session: bool = False
    topic_prefix: str = DEFAULT_PREFIX
    controller_url: str | None = None
    bundle_origins: list[str] = Field(default_factory=list)
    """Origins besides the controller's that orders may point bundle URLs at (``https://host[:port]``)."""
    allow_http_bundles: bool = False
    """Plain ``http`` bundle URLs off the controller's own origin (on it, http is allowed when the
    ``controller_url`` is http): agent/url_policy.py."""
    release_keys: list[Path] = Field(default_factory=list)
    controller_keys: list[Path] = Field(default_factory=list)
    device_key: Path | None = None
    """The device's own Ed25519 private key, which signs every message it publishes (default
    ``state_dir/keys/device.key``; made at enrollment, or at the first start if missing)."""
    hardware_class: str = "generic"
    tags: list[str] = Field(default_factory=list)

    telemetry_interval_s: float = Field(60.0, gt=0)
    heartbeat_interval_s: float = Field(30.0, gt=0)
    reconnect_min_s: float = Field(1.0, gt=0)
    reconnect_max_s: float = Field(60.0, gt=0)
    ack_timeout_s: float = Field(30.0, gt=0)
    """How long a published outbox row waits for the controller's acknowledgement before it is sent
    again (doubling per attempt, with jitter, up to ``ack_retry_cap_s``)."""
    ack_retry_cap_s: float = Field(600.0, gt=0)
    delivery: Literal["auto", "broker"] = "auto"
    """``auto``: end to end once the controller has acknowledged a message (remembered in the outbox);
    ``broker``: a row leaves the outbox on the broker's PUBACK, whatever the controller does."""
    outbox_max_rows: int = Field(100_000, ge=1)
    """The outbox keeps at most this many rows; past it the oldest go first (a very long outage)."""

    max_bundle_bytes: int = Field(512 * MiB, gt=0)
    max_payload_bytes: int = Field(32 * 1024, gt=0)
    max_request_bytes: int = Field(64 * MiB, gt=0)

    inference_listen: str = "127.0.0.1:8470"
    """``host:port`` of the local inference endpoint; port 0 picks a free port (written to
    ``state_dir/inference.addr``); ``off`` disables the endpoint."""

    health_check_inferences: int = Field(10, ge=0)
    health_check_timeout_s: float = Field(60.0, gt=0)
    update_timeout_s: float = Field(3600.0, gt=0)
    download_attempts: int = Field(8, ge=1)
    download_timeout_s: float = Field(30.0, gt=0)
    retry_base_s: float = Field(1.0, gt=0)
    retry_cap_s: float = Field(60.0, gt=0)
    drift_max_rows: int = Field(16384, ge=0)
    """Inputs binned for drift per telemetry window (counts of requests/samples are always complete)."""
    feedback_window_s: float = Field(3600.0, ge=0)
    """How long a served prediction can be labelled (``POST /v1/feedback``); 0 turns feedback off."""
    feedback_max_samples: int = Field(100_000, ge=1)
    """At most this many served samples are remembered for feedback (oldest first out)."""
    upload_chunk_bytes: int = Field(256 * 1024, ge=1024)
    """Bytes per PUT when uploading captured samples (a cut connection costs at most one chunk's resend)."""
    upload_retry_s: float = Field(30.0, gt=0)
    """Wait before asking again for an upload grant that did not come, or retrying a failed upload."""
    upload_timeout_s: float = Field(30.0, gt=0)
    """Per HTTP request of an upload of captured samples."""
    fault_pause_in: list[str] = Field(default_factory=list)
    """Testing only: update states in which the agent stops right after persisting the
    state (before its side effect), so a test can kill it exactly there. Leave empty."""

    @field_validator("device_id")
    @classmethod
    def _device_id(cls, value: str) -> str:
        try:
            return validate_device_id(value)
        except MessageError as exc:
            raise ValueError(exc.message) from None

    @field_validator("broker_url")
    @classmethod
    def _broker_url(cls, value: str) -> str:
        try:
            parse_broker_url(value)
        except ConfigError as exc:
            raise ValueError(exc.message) from None
        return value

    @field_validator("inference_listen")
    @classmethod
    def _listen(cls, value: str) -> str:
        if value != "off":
            parse_listen(value)
        return value

    @property
    def broker(self) -> BrokerAddress:
        return parse_broker_url(self.broker_url)

    @property
    def listen(self) -> tuple[str, int] | None:
        return None if self.inference_listen == "off" else parse_listen(self.inference_listen)


def parse_listen(value: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"{value!r} is not host:port (or 'off')")
    return host.strip("[]"), int(port)


def _env_value(field: str, raw: str) -> Any:
    annotation = str(AgentConfig.model_fields[field].annotation)
    if annotation.startswith("list"):
        raw = raw.strip()
        if raw.startswith("["):
            return json.loads(raw)
        return [item.strip() for item in raw.split(",") if item.strip()]
    return raw


def load_config(path: str | Path | None = None, *, environ: Mapping[str, str] | None = None) -> AgentConfig:
    """Read ``path`` (TOML), apply ``EDGEFLEET_AGENT_*`` overrides, validate."""
    source = str(path) if path is not None else "<environment>"
    data: dict[str, Any] = _read_toml(path, source) if path is not None else {}
    origin: dict[str, str] = {key: source for key in data}
    _apply_environ(data, origin, os.environ if environ is None else environ)
    _resolve_paths(data, origin, base=Path(path).parent if path is not None else Path.cwd(), source=source)
    try:
        return AgentConfig.model_validate(data)
    except ValidationError as exc:
        raise _config_error(exc, origin, source) from None


def _read_toml(path: str | Path, source: str) -> dict[str, Any]:
    try:
        with open(path, "rb") as fh:
            return tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError("config file not found", where=source) from None
    except OSError as exc:
        raise ConfigError(f"cannot read config file: {exc.strerror}", where=source) from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"not valid TOML: {exc}", where=source) from None


def _apply_environ(data: dict[str, Any], origin: dict[str, str], environ: Mapping[str, str]) -> None:
    """Override ``data`` with the ``EDGEFLEET_AGENT_*`` variables, recording where each came from."""
    for name, raw in environ.items():
        if not name.startswith(ENV_PREFIX):
            continue
        key = name[len(ENV_PREFIX):].lower()
        if key not in AgentConfig.model_fields:
            raise ConfigError("unknown configuration key", where=f"{name} (environment)")
        try:
            data[key] = _env_value(key, raw)
        except json.JSONDecodeError:
            raise ConfigError("not a JSON array", where=f"{name} (environment)") from None
        origin[key] = f"{name} (environment)"


def _resolve_paths(data: dict[str, Any], origin: dict[str, str], *, base: Path, source: str) -> None:
    """Make relative paths given in the config file relative to the file's folder."""
    for key in ("state_dir", "ca_file", "device_key", "tls_cert", "tls_key"):
        if isinstance(data.get(key), str) and origin.get(key) == source:
            data[key] = str(base / data[key])
    for key in ("release_keys", "controller_keys"):
        if isinstance(data.get(key), list) and origin.get(key) == source:
            data[key] = [str(base / p) if isinstance(p, str) else p for p in data[key]]


def _config_error(exc: ValidationError, origin: dict[str, str], source: str) -> ConfigError:
    """The first problem of a validation error, naming the key and where its value came from."""
    first = exc.errors()[0]
    key = str(first["loc"][0]) if first["loc"] else "?"
    where = f"{key} ({origin.get(key, source)})"
    if first["type"] == "missing":
        return ConfigError("required key is missing", where=where)
    if first["type"] == "extra_forbidden":
        return ConfigError("unknown configuration key", where=where)
    message = first["msg"].removeprefix("Value error, ")
    return ConfigError(message, where=where)
