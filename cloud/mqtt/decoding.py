"""Decoding raw device messages: a pure step (bytes and the senders' public keys in; decoded items
or rejections out) that the ingest worker runs in its own thread or, for throughput, in worker
processes. A message is stored only if it verifies with the key of the device its topic names.

This module imports only the protocol, so a decode worker process starts light. Telemetry and
events are turned into ready table rows here, so only small dicts travel back to the storer; the
items are named tuples, which pickle (to and from the decode processes) several times faster than
dataclasses.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NamedTuple

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
    row: dict[str, Any] | None = None
    """telemetry / events: the row to bulk-insert."""


class Rejected(NamedTuple):
    code: str
    topic: str
    size: int
    text: str


def telemetry_row(window: TelemetryWindow, *, raw: bytes, now: float) -> dict[str, Any]:
    """The ``telemetry_windows`` row of a window; ``raw`` is kept verbatim (unknown fields too)."""
    drift, bundle, feedback = window.drift, window.bundle, window.feedback
    return {
        "msg_id": window.msg_id, "device_id": window.device_id,
        "bundle_digest": bundle.digest if bundle else None, "bundle_name": bundle.name if bundle else None,
        "bundle_version": bundle.version if bundle else None, "window_seq": window.window_seq,
        "window_start": window.window_start, "window_end": window.window_end, "requests": window.requests,
        "batches": window.batches, "samples": window.samples, "errors": window.errors,
        "latency_bounds": window.latency_ms.bounds, "latency_counts": window.latency_ms.counts,
        "predictions": window.predictions,
        "drift_psi": drift.psi if drift else None, "drift_js": drift.js if drift else None,
        "drift_ks": drift.ks if drift else None, "drift_level": drift.level if drift else None,
        "drift_samples": drift.samples if drift else None,
        "labelled": feedback.labelled if feedback else 0, "correct": feedback.correct if feedback else 0,
        "confusion": feedback.confusion if feedback else {}, "raw": raw.decode("utf-8"), "received_at": now,
    }


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
