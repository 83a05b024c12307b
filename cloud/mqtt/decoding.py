"""Decoding raw device messages: a pure step (bytes and the senders' public keys in; decoded items
or rejections out) that the ingest worker runs in its own thread or, for throughput, in worker
processes. A message is stored only if it verifies with the key of the device its topic names.

This module imports only the protocol (and pydantic-core, which the protocol uses), so a decode
worker process starts light. Telemetry and events are turned into ready table rows here (a telemetry
row as the database driver takes it, its JSON columns serialized), so the storer only hands them to
the database; the items are named tuples, which pickle (to and from the decode processes) several
times faster than dataclasses.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NamedTuple

import pydantic_core

from edgefleet.protocol import device_signatures
from edgefleet.protocol.errors import MessageError
from edgefleet.protocol.messages import MAX_PAYLOAD, Event, Message, TelemetryWindow, decode
from edgefleet.protocol.topics import DEVICE_KINDS, parse_device_topic
from edgefleet.protocol.vocabulary import Reason


class Raw(NamedTuple):
    topic: str
    payload: bytes
    received_at: float


@dataclass(frozen=True)
class DeviceKeys:
    """Who may publish, for the devices of one batch: the raw message key of each enrolled device
    that has one, and the enrolled devices without one (enrolled before message signatures)."""

    keys: dict[str, bytes]
    keyless: frozenset[str] = frozenset()
    accept_keyless: bool = False
    """Store unsigned messages of keyless devices (setting ``accept_unsigned_devices``: migration only)."""


class Decoded(NamedTuple):
    device_id: str
    kind: str
    msg_id: str
    received_at: float
    message: Message | None = None
    """hello / state / status: the typed message, applied through the services."""
    row: tuple[Any, ...] | dict[str, Any] | None = None
    """telemetry (a tuple, :func:`telemetry_row`) / events (a dict): the row to bulk-insert."""


class Rejected(NamedTuple):
    code: str
    topic: str
    size: int
    text: str


TELEMETRY_COLUMNS = ("msg_id", "device_id", "bundle_digest", "bundle_name", "bundle_version", "window_seq",
                     "window_start", "window_end", "requests", "batches", "samples", "errors", "latency_bounds",
                     "latency_counts", "predictions", "drift_psi", "drift_js", "drift_ks", "drift_level",
                     "drift_samples", "labelled", "correct", "confusion", "raw", "received_at")
"""The ``telemetry_windows`` columns a window fills, in the order of :func:`telemetry_row`."""
JSON_COLUMNS = frozenset({"latency_bounds", "latency_counts", "predictions", "confusion"})


def _json(value: Any) -> str:
    return pydantic_core.to_json(value).decode("utf-8")   # as the engine's JSON columns write it


def telemetry_row(window: TelemetryWindow, *, raw: bytes, now: float) -> tuple[Any, ...]:
    """The ``telemetry_windows`` row of a window as the database driver takes it (values in
    :data:`TELEMETRY_COLUMNS` order, JSON columns already serialized), so the storer's thread, which
    holds the controller's GIL, only hands rows to the driver. ``raw`` is kept verbatim (unknown fields too)."""
    drift, bundle, feedback = window.drift, window.bundle, window.feedback
    return (
        window.msg_id, window.device_id, bundle.digest if bundle else None, bundle.name if bundle else None,
        bundle.version if bundle else None, window.window_seq, window.window_start, window.window_end,
        window.requests, window.batches, window.samples, window.errors,
        _json(window.latency_ms.bounds), _json(window.latency_ms.counts), _json(window.predictions),
        drift.psi if drift else None, drift.js if drift else None, drift.ks if drift else None,
        drift.level if drift else None, drift.samples if drift else None,
        feedback.labelled if feedback else 0, feedback.correct if feedback else 0,
        _json(feedback.confusion if feedback else {}), raw.decode("utf-8"), now,
    )


def event_row(event: Event, *, now: float) -> dict[str, Any]:
    return {"msg_id": event.msg_id, "device_id": event.device_id, "level": event.level, "kind": event.kind,
            "text": event.text, "data": event.data, "sent_at": event.sent_at, "received_at": now}


def decode_raw(raw: Raw, *, prefix: str, keys: DeviceKeys) -> Decoded:
    """Check who sent one raw message, then decode it; or raise :class:`MessageError` (its
    ``code`` says why). Nothing of a payload is parsed before its signature is verified."""
    try:
        device_id, kind = parse_device_topic(raw.topic, prefix)
    except MessageError as exc:
        raise MessageError(exc.message, code=Reason.BAD_TOPIC, where="topic") from None
    if kind not in DEVICE_KINDS:
        raise MessageError(f"devices do not publish {kind!r}", code=Reason.BAD_TOPIC, where="topic")
    if len(raw.payload) > MAX_PAYLOAD[kind]:
        raise MessageError(f"payload of {len(raw.payload)} bytes exceeds the {MAX_PAYLOAD[kind]}-byte limit",
                           code=Reason.PAYLOAD_TOO_LARGE, where=kind)
    key = keys.keys.get(device_id)
    if key is not None:
        device_signatures.verify(key, raw.topic, raw.payload)
    elif device_id not in keys.keyless:
        raise MessageError(f"device {device_id!r} is not enrolled (or decommissioned)", code=Reason.UNKNOWN_DEVICE,
                           where="topic")
    elif not keys.accept_keyless:
        raise MessageError(f"device {device_id!r} has registered no message key, so nothing it sends can be "
                           "verified", code=Reason.UNSIGNED, where="device_id",
                           hint="upgrade its agent (it registers a key at start) or re-enroll the device")
    message = decode(kind, raw.payload)
    if message.device_id != device_id:
        raise MessageError(f"payload device_id {message.device_id!r} differs from the topic's {device_id!r}",
                           code=Reason.DEVICE_MISMATCH, where="device_id")
    if isinstance(message, TelemetryWindow):
        return Decoded(device_id, kind, message.msg_id, raw.received_at,
                       row=telemetry_row(message, raw=raw.payload, now=raw.received_at))
    if isinstance(message, Event):
        return Decoded(device_id, kind, message.msg_id, raw.received_at, row=event_row(message, now=raw.received_at))
    return Decoded(device_id, kind, message.msg_id, raw.received_at, message=message)


def warm_up() -> None:
    """Run in each new decode process: load what the first batch would (the verifier's library)."""
    import nacl.bindings  # noqa: F401


def decode_many(raws: list[Raw], prefix: str, keys: DeviceKeys) -> list[Decoded | Rejected]:
    """Decode every message; one that cannot be decoded, for whatever reason, is rejected alone."""
    out: list[Decoded | Rejected] = []
    for raw in raws:
        try:
            out.append(decode_raw(raw, prefix=prefix, keys=keys))
        except MessageError as exc:
            out.append(Rejected(exc.code, raw.topic[:200], len(raw.payload), str(exc)[:300]))
        except Exception as exc:  # a decoder bug must not cost the rest of the batch
            out.append(Rejected(Reason.DECODE_ERROR, raw.topic[:200], len(raw.payload), repr(exc)[:300]))
    return out
