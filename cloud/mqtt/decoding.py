"""Decoding raw device messages: a pure step (bytes in; decoded items or rejections out) that
the ingest worker runs in its own thread or, for throughput, in worker processes.

This module imports only the protocol, so a decode worker process starts light. Telemetry and
events are turned into ready table rows here, so only small dicts travel back to the storer.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from edgefleet.protocol.errors import MessageError
from edgefleet.protocol.messages import Event, Message, TelemetryWindow, decode
from edgefleet.protocol.topics import DEVICE_KINDS, parse_device_topic
from edgefleet.protocol.vocabulary import Reason


@dataclass(frozen=True)
class Raw:
    topic: str
    payload: bytes
    received_at: float


@dataclass(frozen=True)
class Decoded:
    device_id: str
    kind: str
    msg_id: str
    received_at: float
    message: Message | None = None
    """hello / state / status: the typed message, applied through the services."""
    row: dict[str, Any] | None = None
    """telemetry / events: the row to bulk-insert."""


@dataclass(frozen=True)
class Rejected:
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


def decode_raw(raw: Raw, *, prefix: str) -> Decoded:
    """Decode one raw message or raise :class:`MessageError` (its ``code`` says why)."""
    try:
        device_id, kind = parse_device_topic(raw.topic, prefix)
    except MessageError as exc:
        raise MessageError(exc.message, code=Reason.BAD_TOPIC, where="topic") from None
    if kind not in DEVICE_KINDS:
        raise MessageError(f"devices do not publish {kind!r}", code=Reason.BAD_TOPIC, where="topic")
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


def decode_many(raws: list[Raw], prefix: str) -> list[Decoded | Rejected]:
    """Decode every message; one that cannot be decoded, for whatever reason, is rejected alone."""
    out: list[Decoded | Rejected] = []
    for raw in raws:
        try:
            out.append(decode_raw(raw, prefix=prefix))
        except MessageError as exc:
            out.append(Rejected(exc.code, raw.topic[:200], len(raw.payload), str(exc)[:300]))
        except Exception as exc:  # a decoder bug must not cost the rest of the batch
            out.append(Rejected(Reason.DECODE_ERROR, raw.topic[:200], len(raw.payload), repr(exc)[:300]))
    return out
