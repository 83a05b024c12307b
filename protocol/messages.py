"""Typed wire messages (pydantic v2). docs/protocol.md is the prose version of this file.

Every message is a JSON object with ``schema_version``, ``type``, ``msg_id`` (receivers
de-duplicate on it: a retried publish carries the same id), ``device_id`` and ``sent_at``.
Unknown fields are kept (``extra="allow"``) so a newer sender's fields survive a round trip
through an older receiver.
"""

from __future__ import annotations

import json
import math
import time
import uuid
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from edgefleet.protocol.errors import MessageError, first_problem
from edgefleet.protocol.vocabulary import (
    DeviceStatus,
    DriftLevel,
    EventLevel,
    OrderAction,
    Outcome,
    Reason,
    Runtime,
    UpdateState,
)

SCHEMA_VERSION = 1

KiB = 1024
MAX_PAYLOAD: dict[str, int] = {
    "hello": 16 * KiB,
    "state": 16 * KiB,
    "telemetry": 256 * KiB,
    "events": 32 * KiB,
    "status": 16 * KiB,
    "cmd": 32 * KiB,
}
"""Largest accepted payload per topic kind, in bytes. Larger payloads are rejected unread."""

Sha256Hex = Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]
DeviceId = Annotated[str, Field(pattern=r"^[A-Za-z0-9_.-]{1,64}$")]


def new_msg_id() -> str:
    return uuid.uuid4().hex


class WireModel(BaseModel):
    """Base of every wire structure: unknown fields survive a round trip."""

    model_config = ConfigDict(extra="allow")


class Message(WireModel):
    schema_version: int = SCHEMA_VERSION
    type: str
    msg_id: str = Field(default_factory=new_msg_id, min_length=1, max_length=64)
    device_id: DeviceId
    sent_at: float = Field(default_factory=time.time)


class InstalledBundle(WireModel):
    name: str
    version: str
    build: int
    digest: Sha256Hex
    runtime: Runtime
    slot: str = ""


class Hello(Message):
    """Published on connect: what the device is and can run."""

    type: Literal["hello"] = "hello"
    agent_version: str
    arch: str
    os: str
    runtimes: list[str]
    hardware_class: str = "generic"
    installed: InstalledBundle | None = None
    free_disk_bytes: int = 0
    tags: list[str] = []


class State(Message):
    """Retained on the state topic; also the last will (``status="offline"``) and the heartbeat."""

    type: Literal["state"] = "state"
    status: DeviceStatus
    update_state: UpdateState = UpdateState.IDLE
    deployment_id: str | None = None
    sequence: int | None = Field(default=None, ge=0)
    """The sequence of the order ``deployment_id`` refers to."""
    outcome: Outcome | None = None
    """How that order ended, once it did: the heartbeat repeats the final status report, so a
    report lost on the way (a controller killed before it stored it) still closes the target."""
    installed: InstalledBundle | None = None
    uptime_s: float = 0.0
    heartbeat_interval_s: float = 30.0


class HealthCheck(WireModel):
    """How a device judges a newly activated model before it commits (overrides its configuration).
    After the smoke test it waits for up to ``inferences`` live inferences (0: none), at most
    ``timeout_s`` seconds; any failure rolls back. Integers, like everything the controller signs."""

    inferences: int = Field(ge=0, le=100_000)
    timeout_s: int = Field(ge=0, le=86_400)


class DeploymentOrder(WireModel):
    """The body the controller key signs. Times are integer Unix seconds (canonical JSON)."""

    device_id: DeviceId
    deployment_id: str = Field(min_length=1, max_length=64)
    action: OrderAction = OrderAction.INSTALL
    bundle_digest: Sha256Hex | None = None
    bundle_size: int | None = Field(default=None, ge=0)
    bundle_url: str | None = None
    bundle_name: str | None = None
    bundle_version: str | None = None
    sequence: int = Field(ge=1)
    issued_at: int
    expires_at: int
    key_id: str = ""
    health_check: HealthCheck | None = Field(default=None, exclude_if=lambda v: v is None)
    """Absent: the device's own configuration decides (``health_check_inferences``, ``health_check_timeout_s``).
    Left out of the JSON (and so of the signed bytes) when absent, so orders of controllers that do not
    send it verify as before."""


class Signature(WireModel):
    keyid: str
    sig: str
    """Base64 of the Ed25519 signature over the canonical JSON of the signed body."""


class SignedOrder(WireModel):
    signed: DeploymentOrder
    signatures: list[Signature] = Field(min_length=1, max_length=8)


class OrderMessage(Message):
    type: Literal["order"] = "order"
    order: SignedOrder


class StatusReport(Message):
    """Deployment progress; ``final`` is true exactly once per (deployment, sequence)."""

    type: Literal["status"] = "status"
    deployment_id: str
    sequence: int = 0
    state: UpdateState
    final: bool = False
    outcome: Outcome | None = None
    reason: str | None = None
    """A :class:`~edgefleet.protocol.vocabulary.Reason` value (``str``: a newer sender's new code survives)."""
    detail: str | None = Field(default=None, max_length=2000)
    bytes_done: int | None = None
    bytes_total: int | None = None
    bundle_digest: str | None = None
    attempt: int = 0


class Histogram(WireModel):
    """Fixed-bin histogram: ``counts[i]`` counts values in ``(bounds[i-1], bounds[i]]``;
    ``counts`` has ``len(bounds) + 1`` entries (the last is the overflow bin). Histograms with the
    same bounds merge by adding counts."""

    bounds: list[float]
    counts: list[int]

    def quantile(self, q: float) -> float | None:
        return histogram_quantile(self.bounds, self.counts, q)


def histogram_quantile(bounds: list[float], counts: list[int], q: float) -> float | None:
    """The ``q``-quantile (0..1) of a fixed-bin histogram, interpolated linearly inside its bin
    (the first bin starts at 0; the overflow bin reports the last bound); ``None`` when empty."""
    total = sum(counts)
    if total == 0 or not bounds:
        return None
    rank = q * total
    seen = 0.0
    for i, c in enumerate(counts):
        if c and seen + c >= rank:
            if i >= len(bounds):
                return float(bounds[-1])
            lower = bounds[i - 1] if i > 0 else 0.0
            return float(lower + (bounds[i] - lower) * max(0.0, rank - seen) / c)
        seen += c
    return float(bounds[-1])


class DriftScores(WireModel):
    psi: float
    js: float
    ks: float = 0.0
    per_feature_psi: list[float] = []
    prediction_psi: float | None = None
    level: DriftLevel = DriftLevel.OK
    samples: int = 0


class TelemetryWindow(Message):
    type: Literal["telemetry"] = "telemetry"
    window_seq: int = Field(ge=0)
    window_start: float
    window_end: float
    bundle: InstalledBundle | None = None
    requests: int = 0
    batches: int = 0
    samples: int = 0
    errors: int = 0
    latency_ms: Histogram
    features: list[list[int]] = []
    predictions: dict[str, int] = {}
    drift: DriftScores | None = None


class Event(Message):
    type: Literal["event"] = "event"
    level: EventLevel = EventLevel.INFO
    kind: str
    text: str = Field(default="", max_length=2000)
    data: dict[str, Any] = {}


MESSAGE_TYPES: dict[str, type[Message]] = {
    "hello": Hello,
    "state": State,
    "telemetry": TelemetryWindow,
    "events": Event,
    "status": StatusReport,
    "cmd": OrderMessage,
}
"""The message model carried by each topic kind."""


def _refuse_constant(name: str) -> float:
    raise ValueError(f"{name} is not valid JSON")


def _finite_float(text: str) -> float:
    value = float(text)
    if math.isinf(value):  # 1e400: valid JSON text, but no finite number
        raise ValueError(f"number {text[:32]} is out of range")
    return value


def encode(msg: Message) -> bytes:
    return msg.model_dump_json(exclude_none=False).encode("utf-8")


def decode(kind: str, payload: bytes) -> Message:
    """Parse a payload received on a topic of ``kind``; raise :class:`MessageError` on any
    problem (too large, not JSON, wrong type, wrong schema) without side effects."""
    model = MESSAGE_TYPES.get(kind)
    if model is None:
        raise MessageError(f"unknown topic kind {kind!r}", where="topic")
    limit = MAX_PAYLOAD[kind]
    if len(payload) > limit:
        raise MessageError(f"payload of {len(payload)} bytes exceeds the {limit}-byte limit",
                           code=Reason.PAYLOAD_TOO_LARGE, where=kind)
    try:
        obj = json.loads(payload, parse_constant=_refuse_constant, parse_float=_finite_float)
    except (ValueError, RecursionError) as exc:  # bad UTF-8/JSON, NaN/Infinity, absurd nesting
        raise MessageError(f"payload is not JSON: {str(exc)[:200]}", where=kind) from None
    if not isinstance(obj, dict):
        raise MessageError("payload is not a JSON object", where=kind)
    version = obj.get("schema_version")
    if type(version) is not int or version != SCHEMA_VERSION:  # true == 1 and 1.0 == 1 in Python
        raise MessageError(f"unsupported schema_version {version!r}", code=Reason.UNSUPPORTED_SCHEMA,
                           where=kind, hint=f"this receiver speaks schema_version {SCHEMA_VERSION}")
    try:
        return model.model_validate(obj)
    except ValidationError as exc:
        loc, problem = first_problem(exc)
        raise MessageError(f"invalid {kind} message: {problem}", where=f"{kind}.{loc}") from None
