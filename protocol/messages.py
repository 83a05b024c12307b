"""Typed wire messages (pydantic v2). docs/protocol.md is the prose version of this file.

Every message is a JSON object with ``schema_version``, ``type``, ``msg_id`` (receivers
de-duplicate on it: a retried publish carries the same id), ``device_id`` and ``sent_at``.
Unknown fields are kept (``extra="allow"``) so a newer sender's fields survive a round trip
through an older receiver.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import time
import typing
import uuid
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, model_validator

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
    "ack": 32 * KiB,
}
"""Largest accepted payload per topic kind, in bytes. Larger payloads are rejected unread."""

Sha256Hex = Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]
Count = Annotated[int, Field(ge=0)]


def _exact(enum: type[StrEnum]) -> BeforeValidator:
    """Decoding is strict (no coercion, :func:`decode`), which for an enum field would take only enum
    instances: this turns the exact string value into the member first (anything else stays as it is
    and is refused)."""
    values = {m.value: m for m in enum}
    return BeforeValidator(lambda v: values.get(v, v) if type(v) is str else v)


WireRuntime = Annotated[Runtime, _exact(Runtime)]
WireDeviceStatus = Annotated[DeviceStatus, _exact(DeviceStatus)]
WireUpdateState = Annotated[UpdateState, _exact(UpdateState)]
WireOutcome = Annotated[Outcome, _exact(Outcome)]
WireOrderAction = Annotated[OrderAction, _exact(OrderAction)]
WireDriftLevel = Annotated[DriftLevel, _exact(DriftLevel)]
WireEventLevel = Annotated[EventLevel, _exact(EventLevel)]
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
    build: Count
    digest: Sha256Hex
    runtime: WireRuntime
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
    free_disk_bytes: Count = 0
    tags: list[str] = []
    root_version: int | None = Field(default=None, ge=1)
    """The version of the trust root the device holds (``None``: none, it trusts its configured keys)."""


class State(Message):
    """Retained on the state topic; also the last will (``status="offline"``) and the heartbeat."""

    type: Literal["state"] = "state"
    status: WireDeviceStatus
    update_state: WireUpdateState = UpdateState.IDLE
    deployment_id: str | None = None
    sequence: int | None = Field(default=None, ge=0)
    """The sequence of the order ``deployment_id`` refers to."""
    outcome: WireOutcome | None = None
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
    action: WireOrderAction = OrderAction.INSTALL
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


MAX_ROOTS = 12
"""Trust roots one message carries (a device offline through more rotations walks several messages)."""


class OrderMessage(Message):
    type: Literal["order"] = "order"
    order: SignedOrder
    roots: list[SignedRoot] = Field(default_factory=list, max_length=MAX_ROOTS)
    """Trust roots newer than the device's (not covered by the order's signature: each carries its
    own): a device that was offline through a key rotation walks them before verifying the order."""


class StatusReport(Message):
    """Deployment progress; ``final`` is true exactly once per (deployment, sequence)."""

    type: Literal["status"] = "status"
    deployment_id: str
    sequence: Count = 0
    state: WireUpdateState
    final: bool = False
    outcome: WireOutcome | None = None
    reason: str | None = None
    """A :class:`~edgefleet.protocol.vocabulary.Reason` value (``str``: a newer sender's new code survives)."""
    detail: str | None = Field(default=None, max_length=2000)
    bytes_done: Count | None = None
    bytes_total: Count | None = None
    bundle_digest: str | None = None
    attempt: Count = 0


class Histogram(WireModel):
    """Fixed-bin histogram: ``counts[i]`` counts values in ``(bounds[i-1], bounds[i]]``;
    ``counts`` has ``len(bounds) + 1`` entries (the last is the overflow bin). Histograms with the
    same bounds merge by adding counts."""

    bounds: list[float] = Field(max_length=256)
    counts: list[Count] = Field(max_length=257)

    @model_validator(mode="after")
    def _shape(self) -> Histogram:
        if len(self.counts) != len(self.bounds) + 1:
            raise ValueError(f"a histogram of {len(self.bounds)} bounds has {len(self.bounds) + 1} counts, "
                             f"not {len(self.counts)}")
        if any(b <= a for a, b in zip(self.bounds, self.bounds[1:], strict=False)):
            raise ValueError("histogram bounds must increase strictly")
        return self

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
    level: WireDriftLevel = DriftLevel.OK
    samples: Count = 0
    regime: str | None = Field(default=None, max_length=64)
    """The known regime of the reference profile the window matched best, when it matched one better
    than the reference itself (protocol/drift.py ``Regime``); ``None``: judged against the reference."""


MAX_CONFUSION_CELLS = 400
"""A window's confusion table has at most this many cells (true x predicted); past it, only the counts."""
MAX_LABEL_CHARS = 64
"""A label in a confusion table has at most this many characters."""
LabelName = Annotated[str, Field(max_length=MAX_LABEL_CHARS)]


class Feedback(WireModel):
    """Labels the application gave back for served predictions, counted in the window they arrived
    in: ``labelled`` samples, ``correct`` of them, and the confusion cells true -> predicted -> count
    (non-zero cells only; empty past :data:`MAX_CONFUSION_CELLS`). When the table is given, its cells
    sum to ``labelled`` and its diagonal to ``correct``."""

    labelled: int = Field(ge=0, le=1 << 40, strict=True)
    correct: int = Field(ge=0, le=1 << 40, strict=True)
    confusion: dict[LabelName, dict[LabelName, Annotated[int, Field(ge=1, strict=True)]]] = {}

    @model_validator(mode="after")
    def _consistent(self) -> Feedback:
        if self.correct > self.labelled:
            raise ValueError(f"correct ({self.correct}) exceeds labelled ({self.labelled})")
        if self.confusion:
            cells = [(t, p, c) for t, row in self.confusion.items() for p, c in row.items()]
            if len(cells) > MAX_CONFUSION_CELLS:
                raise ValueError(f"confusion has {len(cells)} cells, at most {MAX_CONFUSION_CELLS}")
            if sum(c for *_, c in cells) != self.labelled:
                raise ValueError(f"confusion cells sum to {sum(c for *_, c in cells)}, not labelled ({self.labelled})")
            if sum(c for t, p, c in cells if t == p) != self.correct:
                raise ValueError(f"the confusion diagonal sums to {sum(c for t, p, c in cells if t == p)}, "
                                 f"not correct ({self.correct})")
        return self

    @property
    def accuracy(self) -> float | None:
        return self.correct / self.labelled if self.labelled else None


class TelemetryWindow(Message):
    type: Literal["telemetry"] = "telemetry"
    window_seq: int = Field(ge=0)
    window_start: float
    window_end: float
    bundle: InstalledBundle | None = None
    requests: Count = 0
    batches: Count = 0
    samples: Count = 0
    errors: Count = 0
    latency_ms: Histogram
    features: list[list[Count]] = []
    predictions: dict[str, Count] = {}
    drift: DriftScores | None = None
    feedback: Feedback | None = None
    """Labels that came back in this window (``POST /v1/feedback`` on the device), if any."""

    @model_validator(mode="after")
    def _window(self) -> TelemetryWindow:
        if self.window_end < self.window_start:
            raise ValueError(f"window_end ({self.window_end}) is before window_start ({self.window_start})")
        if self.errors > self.requests:
            raise ValueError(f"errors ({self.errors}) exceed requests ({self.requests})")
        return self


class Event(Message):
    type: Literal["event"] = "event"
    level: WireEventLevel = EventLevel.INFO
    kind: str
    text: str = Field(default="", max_length=2000)
    data: dict[str, Any] = {}


UploadId = Annotated[str, Field(pattern=r"^[0-9a-f]{32}$")]
MAX_UPLOAD_BYTES = 1024 * 1024 * 1024
"""The largest batch of captured samples a device may ask to upload (the bundle's ``[capture]``
``max_bytes`` bounds it further; the controller's ``max_capture_bytes`` too)."""


class UploadRequest(Message):
    """On the events topic: a sealed batch of captured samples (docs/protocol.md §upload) asks the
    controller for an upload grant. Sent again (same ``upload_id``) until a grant arrives."""

    type: Literal["upload_request"] = "upload_request"
    upload_id: UploadId
    bundle_digest: Sha256Hex
    size: int = Field(ge=1, le=MAX_UPLOAD_BYTES)
    sha256: Sha256Hex
    samples: int = Field(ge=1)
    labelled: int = Field(ge=0)
    t_from: float
    t_to: float

    @model_validator(mode="after")
    def _consistent(self) -> UploadRequest:
        if self.labelled > self.samples:
            raise ValueError(f"labelled ({self.labelled}) exceeds samples ({self.samples})")
        if self.t_from > self.t_to:
            raise ValueError(f"t_from ({self.t_from}) is after t_to ({self.t_to})")
        return self


class UploadGrant(WireModel):
    """The body the controller key signs: ``device_id`` may PUT upload ``upload_id`` (at most
    ``max_bytes``) to ``url`` until ``expires_at``. Times are integer Unix seconds (canonical JSON)."""

    device_id: DeviceId
    upload_id: UploadId
    url: str = Field(min_length=1, max_length=2048)
    max_bytes: int = Field(ge=1, le=MAX_UPLOAD_BYTES)
    issued_at: int
    expires_at: int
    key_id: str = ""


class SignedUploadGrant(WireModel):
    signed: UploadGrant
    signatures: list[Signature] = Field(min_length=1, max_length=8)


class UploadGrantMessage(Message):
    """On the device's cmd topic: the answer to an :class:`UploadRequest`."""

    type: Literal["upload_grant"] = "upload_grant"
    grant: SignedUploadGrant


MAX_DELEGATIONS = 32
ANY_HARDWARE_CLASS = "*"
"""In a delegation's ``hardware_classes``, alone: every hardware class."""
NamePattern = Annotated[str, Field(pattern=r"^[a-z0-9_.*?\[\]!-]{1,64}$")]
"""A bundle-name pattern, ``fnmatch`` style (``*``, ``?``, ``[seq]``, ``[!seq]``), matched case-sensitively."""


class DelegationScope(BaseModel):
    """Delegation bodies refuse unknown fields (``extra="forbid"``, unlike every other wire model): a
    field a newer signer added would be a restriction this receiver cannot enforce, so it fails closed."""

    model_config = ConfigDict(extra="forbid")


class Delegation(DelegationScope):
    """One delegated key (docs/security.md §6): it may sign bundles whose ``name`` matches one of
    ``name_patterns``, targeting only ``hardware_classes`` (``["*"]``: any), until ``expires_at``."""

    name: str = Field(pattern=r"^[a-z0-9][a-z0-9_.-]{0,63}$")
    keyid: Sha256Hex
    public_key: Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]
    """The raw 32-byte Ed25519 public key, lowercase hex (its sha256 is ``keyid``)."""
    name_patterns: list[NamePattern] = Field(min_length=1, max_length=16)
    hardware_classes: list[Annotated[str, Field(min_length=1, max_length=64)]] = Field(min_length=1, max_length=64)
    expires_at: int

    @model_validator(mode="after")
    def _consistent(self) -> Delegation:
        if hashlib.sha256(bytes.fromhex(self.public_key)).hexdigest() != self.keyid:
            raise ValueError("keyid is not the sha256 of public_key")
        if ANY_HARDWARE_CLASS in self.hardware_classes and len(self.hardware_classes) > 1:
            raise ValueError(f"{ANY_HARDWARE_CLASS!r} means every hardware class: give it alone")
        return self


class DelegationsDocument(DelegationScope):
    """The body the release keys sign (with their threshold): every delegation in force. Revoking one
    is signing the next ``version`` without it. Times are integer Unix seconds (canonical JSON)."""

    type: Literal["delegations"] = "delegations"
    version: int = Field(ge=1)
    expires_at: int
    delegations: list[Delegation] = Field(default_factory=list, max_length=MAX_DELEGATIONS)

    @model_validator(mode="after")
    def _unique(self) -> DelegationsDocument:
        for attr in ("name", "keyid"):
            values = [getattr(d, attr) for d in self.delegations]
            if len(set(values)) != len(values):
                raise ValueError(f"two delegations share a {attr}: one delegation per key and name")
        return self

    def by_keyid(self, keyid: str) -> Delegation | None:
        return next((d for d in self.delegations if d.keyid == keyid), None)


class SignedDelegations(WireModel):
    signed: DelegationsDocument
    signatures: list[Signature] = Field(min_length=1, max_length=8)


RawPublicKey = Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]
"""A raw 32-byte Ed25519 public key, lowercase hex (its sha256 is the key id)."""


class RoleKeys(DelegationScope):
    """The keys of one role in a trust root and how many of them must sign."""

    keys: list[RawPublicKey] = Field(min_length=1, max_length=16)
    threshold: int = Field(default=1, ge=1)

    @model_validator(mode="after")
    def _reachable(self) -> RoleKeys:
        if len(set(self.keys)) != len(self.keys):
            raise ValueError("a key is listed twice")
        if self.threshold > len(self.keys):
            raise ValueError(f"threshold {self.threshold} is more than the {len(self.keys)} key(s) listed")
        return self


class RootDocument(DelegationScope):
    """The trust root (docs/security.md §9, TUF's root role): which keys devices trust for each role.
    Version ``n + 1`` is accepted only when a threshold of version ``n``'s root keys *and* of its own
    root keys sign it, so devices follow rotations and revocations without re-enrollment."""

    type: Literal["root"] = "root"
    version: int = Field(ge=1)
    expires_at: int
    root: RoleKeys
    """The keys that sign the next version (kept offline)."""
    release: RoleKeys
    controller: RoleKeys


class SignedRoot(WireModel):
    signed: RootDocument
    signatures: list[Signature] = Field(min_length=1, max_length=16)


class RootsMessage(Message):
    """On the device's cmd topic: trust roots newer than the one the device said it has (after its
    ``hello``, and when a new version is pushed), oldest first, for it to walk."""

    type: Literal["roots"] = "roots"
    roots: list[SignedRoot] = Field(min_length=1, max_length=MAX_ROOTS)


class DelegationsMessage(Message):
    """On the device's cmd topic: the controller's current delegations document (on every new
    version, and after each ``hello``). The device keeps the newest valid one it has seen."""

    type: Literal["delegations"] = "delegations"
    delegations: SignedDelegations


MAX_ACKED = 200
"""Message ids one acknowledgement lists at most (a longer list is split over several)."""


class AckBody(WireModel):
    """The body the controller key signs: these messages of ``device_id`` are stored (or were stored
    before: a duplicate), so the device may delete them from its outbox. Times are integer Unix seconds."""

    device_id: DeviceId
    acked: list[Annotated[str, Field(min_length=1, max_length=64)]] = Field(min_length=1, max_length=MAX_ACKED)
    issued_at: int
    key_id: str = ""


class SignedAck(WireModel):
    signed: AckBody
    signatures: list[Signature] = Field(min_length=1, max_length=8)


class AckMessage(Message):
    """On the device's ack topic: the controller has committed the listed messages (protocol/acks.py)."""

    type: Literal["ack"] = "ack"
    ack: SignedAck


MESSAGE_TYPES: dict[str, type[Message]] = {
    "hello": Hello,
    "state": State,
    "telemetry": TelemetryWindow,
    "events": Event,
    "status": StatusReport,
    "cmd": OrderMessage,
    "ack": AckMessage,
}
"""The message model carried by each topic kind."""

VARIANTS: dict[str, dict[str, type[Message]]] = {
    "events": {"event": Event, "upload_request": UploadRequest},
    "cmd": {"order": OrderMessage, "upload_grant": UploadGrantMessage, "delegations": DelegationsMessage,
            "roots": RootsMessage},
}
"""Kinds whose topic carries several message types, told apart by ``type``."""


def _refuse_constant(name: str) -> float:
    raise ValueError(f"{name} is not valid JSON")


def _finite_float(text: str) -> float:
    value = float(text)
    if math.isinf(value):  # 1e400: valid JSON text, but no finite number
        raise ValueError(f"number {text[:32]} is out of range")
    return value


def encode(msg: Message) -> bytes:
    return msg.model_dump_json(exclude_none=False).encode("utf-8")


def _may_hold_floats(annotation: Any) -> bool:
    """Whether a field of this type can hold a float (directly, in a container, in a nested model)."""
    if annotation is float or annotation is Any:
        return True
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return True
    return any(_may_hold_floats(arg) for arg in typing.get_args(annotation) if not isinstance(arg, (str, int)))


@functools.cache
def _float_fields(model: type[BaseModel]) -> tuple[str, ...]:
    return tuple(name for name, f in model.model_fields.items()
                 if f.annotation is not None and _may_hold_floats(f.annotation))


def _finite(value: Any) -> bool:
    """No NaN or infinity anywhere in ``value`` (a validated model, its unknown fields included)."""
    if type(value) is float:
        return math.isfinite(value)
    if isinstance(value, BaseModel):
        extra = value.__pydantic_extra__
        return all(_finite(getattr(value, name)) for name in _float_fields(type(value))) and \
            (not extra or all(_finite(v) for v in extra.values()))
    if isinstance(value, list):
        try:   # a list of numbers in one C loop: a NaN or an infinity makes the sum non-finite
            return math.isfinite(sum(value))
        except OverflowError:   # an integer too large for a float: let the reference decoder judge
            return False
        except TypeError:       # not only numbers
            return all(_finite(v) for v in value)
    if isinstance(value, dict):
        return all(_finite(v) for v in value.values())
    return True


def decode(kind: str, payload: bytes) -> Message:
    """Parse a payload received on a topic of ``kind``; raise :class:`MessageError` on any
    problem (too large, not JSON, wrong type, wrong schema) without side effects.

    Fast path: pydantic-core parses and validates the bytes in one strict pass (about a third
    of the cost). It accepts a subset of what the reference decoder below accepts, with the same
    result (tests/protocol/test_protocol_fast_decode.py); anything it refuses goes through the
    reference decoder, which accepts it or says precisely why not."""
    if kind not in MESSAGE_TYPES:
        raise MessageError(f"unknown topic kind {kind!r}", where="topic")
    limit = MAX_PAYLOAD[kind]
    if len(payload) > limit:
        raise MessageError(f"payload of {len(payload)} bytes exceeds the {limit}-byte limit",
                           code=Reason.PAYLOAD_TOO_LARGE, where=kind)
    fast = decode_fast(kind, payload)
    return fast if fast is not None else decode_reference(kind, payload)


def decode_fast(kind: str, payload: bytes) -> Message | None:
    """The message, when pydantic-core's strict JSON validation accepts it at once; ``None`` for
    anything else (a topic whose type is told apart by ``type``, a non-finite number, any error)."""
    if kind in VARIANTS or kind not in MESSAGE_TYPES:
        return None
    try:   # its parser takes NaN, Infinity and 1e400 (as inf): the walk below refuses them
        msg = MESSAGE_TYPES[kind].model_validate_json(payload, strict=True)
    except ValidationError:
        return None
    if msg.schema_version != SCHEMA_VERSION or "schema_version" not in msg.model_fields_set or not _finite(msg):
        return None
    return msg


def decode_reference(kind: str, payload: bytes) -> Message:
    """The reference decoder (Python's json with NaN, Infinity and out-of-range numbers refused, then
    strict validation): :func:`decode` without the fast path, with the precise error."""
    if kind not in MESSAGE_TYPES:
        raise MessageError(f"unknown topic kind {kind!r}", where="topic")
    limit = MAX_PAYLOAD[kind]
    if len(payload) > limit:
        raise MessageError(f"payload of {len(payload)} bytes exceeds the {limit}-byte limit",
                           code=Reason.PAYLOAD_TOO_LARGE, where=kind)
    try:   # UTF-8 only: json.loads would take UTF-16 and UTF-32 bytes too
        obj = json.loads(payload.decode("utf-8"), parse_constant=_refuse_constant, parse_float=_finite_float)
    except (ValueError, RecursionError) as exc:  # bad UTF-8/JSON, NaN/Infinity, absurd nesting
        raise MessageError(f"payload is not JSON: {str(exc)[:200]}", where=kind) from None
    if not isinstance(obj, dict):
        raise MessageError("payload is not a JSON object", where=kind)
    version = obj.get("schema_version")
    if type(version) is not int or version != SCHEMA_VERSION:  # true == 1 and 1.0 == 1 in Python
        raise MessageError(f"unsupported schema_version {version!r}", code=Reason.UNSUPPORTED_SCHEMA,
                           where=kind, hint=f"this receiver speaks schema_version {SCHEMA_VERSION}")
    model = MESSAGE_TYPES[kind]
    if kind in VARIANTS:
        type_ = obj.get("type")
        variant = VARIANTS[kind].get(type_) if isinstance(type_, str) else None
        if variant is None:
            raise MessageError(f"unknown {kind} message type {str(type_)[:64]!r}", where=f"{kind}.type",
                               hint=f"expected one of {', '.join(VARIANTS[kind])}")
        model = variant
    try:   # strict: "3" is not 3, "yes" is not true, 1.0 is not an int
        return model.model_validate(obj, strict=True)
    except ValidationError as exc:
        loc, problem = first_problem(exc)
        raise MessageError(f"invalid {kind} message: {problem}", where=f"{kind}.{loc}") from None
