"""Turning raw device messages into stored state, fast and idempotently.

The MQTT network thread only enqueues ``(topic, payload, received_at)``; one worker thread
decodes (topic, size limit, schema, device id in topic == in payload), then stores a whole batch
in one transaction: telemetry and events as bulk inserts, hello/state/status through the
services, each message at most once (by ``msg_id``). A rejected message is logged and counted,
never stored; a storage error is logged and the batch retried message by message.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from sqlalchemy import insert
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError, SQLAlchemyError
from sqlmodel import Session, col, select

from edgefleet.cloud import deployments, devices, telemetry
from edgefleet.cloud.db import session_scope
from edgefleet.cloud.metrics import ControllerMetrics
from edgefleet.cloud.models import Device, DeviceEvent, ProcessedMessage, TelemetryRecord
from edgefleet.protocol.errors import MessageError
from edgefleet.protocol.messages import Event, Hello, Message, State, StatusReport, TelemetryWindow, decode
from edgefleet.protocol.topics import DEVICE_KINDS, parse_device_topic

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Raw:
    topic: str
    payload: bytes
    received_at: float


@dataclass(frozen=True)
class Incoming:
    device_id: str
    kind: str
    message: Message
    received_at: float


@dataclass
class BatchResult:
    stored: int = 0
    duplicates: int = 0
    rejected: dict[str, int] = field(default_factory=dict)

    def reject(self, reason: str) -> None:
        self.rejected[reason] = self.rejected.get(reason, 0) + 1


def parse(raw: Raw, *, prefix: str) -> Incoming:
    """Decode one raw message or raise :class:`MessageError` (``code`` says why)."""
    try:
        device_id, kind = parse_device_topic(raw.topic, prefix)
    except MessageError as exc:
        raise MessageError(exc.message, code="bad_topic", where="topic") from None
    if kind not in DEVICE_KINDS:
        raise MessageError(f"devices do not publish {kind!r}", code="bad_topic", where="topic")
    message = decode(kind, raw.payload)
    if message.device_id != device_id:
        raise MessageError(f"payload device_id {message.device_id!r} differs from the topic's {device_id!r}",
                           code="device_mismatch", where="device_id")
    return Incoming(device_id, kind, message, raw.received_at)


def store_batch(session: Session, items: list[Incoming], result: BatchResult) -> None:
    """Apply decoded messages in arrival order, each at most once; the caller commits."""
    found = session.exec(select(Device).where(col(Device.id).in_({i.device_id for i in items})))
    known = {d.id: d for d in found if d.mqtt_password_hash}
    accepted = []
    for item in items:
        if item.device_id in known:
            accepted.append(item)
        else:
            result.reject("unknown_device")
            log.warning("message from unknown or decommissioned device %s rejected", item.device_id)
    seen = _already_processed(session, accepted)
    telemetry_rows, event_rows = [], []
    for item in accepted:
        msg_id = item.message.msg_id
        if msg_id in seen:
            result.duplicates += 1
            continue
        seen.add(msg_id)
        device = known[item.device_id]
        message = item.message
        if isinstance(message, TelemetryWindow):
            telemetry_rows.append(telemetry.record_row(message, now=item.received_at))
            devices.mark_seen(device, now=item.received_at)
        elif isinstance(message, Event):
            event_rows.append({"msg_id": msg_id, "device_id": item.device_id, "level": message.level,
                               "kind": message.kind, "text": message.text, "data": message.data,
                               "sent_at": message.sent_at, "received_at": item.received_at})
            devices.mark_seen(device, now=item.received_at)
        else:
            session.add(ProcessedMessage(msg_id=msg_id, device_id=item.device_id, kind=item.kind,
                                         received_at=item.received_at))
            if isinstance(message, Hello):
                devices.apply_hello(device, message, now=item.received_at)
            elif isinstance(message, State):
                devices.apply_state(device, message, now=item.received_at)
            elif isinstance(message, StatusReport):
                devices.mark_seen(device, now=item.received_at)
                session.add(device)
                deployments.apply_status(session, device_id=item.device_id, report=message, now=item.received_at)
        session.add(device)
        result.stored += 1
    if telemetry_rows:
        session.execute(insert(TelemetryRecord), telemetry_rows)
    if event_rows:
        session.execute(insert(DeviceEvent), event_rows)


def _already_processed(session: Session, items: list[Incoming]) -> set[str]:
    ids: dict[str, list[str]] = {"telemetry": [], "events": [], "other": []}
    for item in items:
        ids[item.kind if item.kind in ("telemetry", "events") else "other"].append(item.message.msg_id)
    seen: set[str] = set()
    for kind, column in (("telemetry", TelemetryRecord.msg_id), ("events", DeviceEvent.msg_id),
                         ("other", ProcessedMessage.msg_id)):
        if ids[kind]:
            seen.update(session.exec(select(column).where(col(column).in_(ids[kind]))))
    return seen


class Ingestor:
    """Queue + one worker thread that stores batches of device messages."""

    def __init__(self, *, engine: Engine, prefix: str, metrics: ControllerMetrics,
                 clock: Callable[[], float] = time.time, batch_max: int = 1000, queue_max: int = 100_000) -> None:
        self.engine = engine
        self.prefix = prefix
        self.metrics = metrics
        self.clock = clock
        self.batch_max = batch_max
        self._queue: queue.Queue[Raw | None] = queue.Queue(maxsize=queue_max)
        self._thread: threading.Thread | None = None

    def submit(self, topic: str, payload: bytes) -> None:
        """Called on the MQTT network thread; blocks when the queue is full (back-pressure)."""
        self._queue.put(Raw(topic, payload, self.clock()))

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="edgefleet-ingest", daemon=True)
            self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join(timeout)
            self._thread = None

    def flush(self) -> None:
        """Block until everything submitted so far is stored (tests, shutdown)."""
        self._queue.join()

    def _run(self) -> None:
        while True:
            first = self._queue.get()
            batch = [first]
            while len(batch) < self.batch_max:
                try:
                    batch.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            raws = [r for r in batch if r is not None]
            try:
                if raws:
                    self.process(raws)
            finally:
                for _ in batch:
                    self._queue.task_done()
                self.metrics.ingest_queue_depth.set(self._queue.qsize())
            if len(raws) != len(batch):
                return

    def process(self, raws: list[Raw]) -> BatchResult:
        """Decode and store ``raws``; never raises."""
        result = BatchResult()
        items = []
        for raw in raws:
            try:
                items.append(parse(raw, prefix=self.prefix))
            except MessageError as exc:
                result.reject(exc.code)
                log.warning("rejected MQTT message on %s (%d bytes): %s", raw.topic[:200], len(raw.payload), exc)
        started = time.perf_counter()
        try:
            with session_scope(self.engine) as session:
                store_batch(session, items, result)
        except SQLAlchemyError as exc:
            log.warning("batch of %d messages failed (%s); storing one by one", len(items), exc.__class__.__name__)
            result = BatchResult(rejected=result.rejected)
            for item in items:
                self._store_one(item, result)
        self.metrics.ingest_batch_seconds.observe(time.perf_counter() - started)
        self._count(items, result)
        return result

    def _store_one(self, item: Incoming, result: BatchResult) -> None:
        try:
            with session_scope(self.engine) as session:
                store_batch(session, [item], result)
        except IntegrityError:
            result.duplicates += 1
        except SQLAlchemyError:
            log.exception("could not store %s message %s from %s", item.kind, item.message.msg_id, item.device_id)
            result.reject("store_error")

    def _count(self, items: list[Incoming], result: BatchResult) -> None:
        for reason, n in result.rejected.items():
            self.metrics.mqtt_rejected.labels(reason).inc(n)
        if result.duplicates:
            self.metrics.mqtt_duplicates.labels("any").inc(result.duplicates)
        kinds: dict[str, int] = {}
        for item in items:
            kinds[item.kind] = kinds.get(item.kind, 0) + 1
        for kind, n in kinds.items():
            self.metrics.mqtt_messages.labels(kind).inc(n)
