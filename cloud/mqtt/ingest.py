"""Turning raw device messages into stored state, fast and idempotently.

The MQTT network thread only enqueues ``(topic, payload, received_at)``. A collector thread
takes batches off that queue and decodes them (:mod:`decoding`: topic, size limit, schema,
device id in topic == in payload) -- itself, overlapping the storer's SQLite work, or in
``decode_workers`` processes. A storer thread then writes each batch, in order, in one
transaction: telemetry and events as bulk inserts plus one bulk ``last_seen`` update,
hello/state/status through the services, each message at most once (by ``msg_id``), upload requests
idempotently (by ``upload_id``, services/captures.py).
A rejected message is logged and counted, never stored; a storage error is logged and the
batch retried message by message. Nothing here ever raises into the MQTT thread.

Once a batch is committed, ``on_acked`` gets the ids of every message of it that is stored now
or was before (a duplicate), by device: the controller publishes them, signed, on each device's
``ack`` topic so the agent deletes exactly those from its outbox (docs/protocol.md "Delivery
acknowledgements"). Rejected messages are not acknowledged: the agent sends them again, with backoff.
In the threaded pipeline an acknowledging thread does this, after the storer: it takes every batch
committed since its last call and merges them by device, so one signed acknowledgement covers all of
a device's messages stored meanwhile. It waits ``ack_gap_s`` (20 ms) for a next batch, and while
batches keep coming that fast (a backlog being drained) up to ``ack_linger_s`` (1 s) in all, so a
device's windows of several batches share one signature and one publish; agents wait
``ack_timeout_s`` (30 s) before sending a window again.
"""

from __future__ import annotations

import functools
import json
import logging
import multiprocessing
import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Insert, bindparam, insert, update
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import IntegrityError, SQLAlchemyError
from sqlmodel import Session, col, select

from edgefleet.cloud.metrics import ControllerMetrics
from edgefleet.cloud.mqtt.decoding import (
    JSON_COLUMNS,
    TELEMETRY_COLUMNS,
    Decoded,
    DeviceKeys,
    Raw,
    Rejected,
    decode_many,
    warm_up,
)
from edgefleet.cloud.services import captures, deployments, devices, fleet_history
from edgefleet.cloud.store.engine import session_scope
from edgefleet.cloud.store.tables import Device, DeviceEvent, ProcessedMessage, TelemetryRecord
from edgefleet.protocol.device_signatures import decode_public_key
from edgefleet.protocol.errors import MessageError
from edgefleet.protocol.messages import Hello, State, StatusReport, UploadRequest
from edgefleet.protocol.topics import parse_device_topic
from edgefleet.protocol.vocabulary import DeviceStatus, Reason

log = logging.getLogger(__name__)

_CONTROL_KINDS = ("hello", "state", "status")
_REMEMBERED_KINDS = ("hello", "status")
ACKED_KINDS = ("hello", "telemetry", "events", "status")
"""Kinds acknowledged end to end (state messages are not kept in an outbox: each replaces the last)."""
"""Kinds whose ids go to ``processed_messages``. State messages (heartbeats, retained state, the
last will) are not remembered: applying one twice is harmless and they come every heartbeat."""
# Statements built once, with expanding IN parameters (building an IN of 1000 literals per batch costs).
_KNOWN = select(Device.id).where(col(Device.id).in_(bindparam("ids", expanding=True)),
                                 col(Device.mqtt_password_hash) != "")
_PROCESSED = {kind: select(table.device_id, table.msg_id).where(col(table.msg_id).in_(bindparam("ids", expanding=True)))
              for kind, table in (("telemetry", TelemetryRecord), ("events", DeviceEvent),
                                  ("other", ProcessedMessage))}
_KEYS = select(Device.id, Device.message_key).where(col(Device.id).in_(bindparam("ids", expanding=True)),
                                                   col(Device.mqtt_password_hash) != "")
_SEEN = update(Device).where(col(Device.id) == bindparam("device")).values(last_seen=bindparam("seen"), online=True)


DecodeWork = Future[list[Decoded | Rejected]] | list[Decoded | Rejected]
"""A batch handed to a decode process (its future), or one decoded in the calling thread."""


@dataclass
class BatchResult:
    stored: int = 0
    duplicates: int = 0
    rejected: dict[str, int] = field(default_factory=dict)
    acked: dict[str, list[str]] = field(default_factory=dict)
    """device id -> ids of its messages stored by this batch or before (duplicates), for the acks."""

    def reject(self, reason: str) -> None:
        self.rejected[reason] = self.rejected.get(reason, 0) + 1

    def merge(self, other: BatchResult) -> None:
        self.stored += other.stored
        self.duplicates += other.duplicates
        for reason, n in other.rejected.items():
            self.rejected[reason] = self.rejected.get(reason, 0) + n
        for device_id, ids in other.acked.items():
            self.acked.setdefault(device_id, []).extend(ids)

    def ack(self, item: Decoded) -> None:
        if item.kind in ACKED_KINDS:
            self.acked.setdefault(item.device_id, []).append(item.msg_id)


def merge_acked(batches: list[dict[str, list[str]]]) -> dict[str, list[str]]:
    """The acknowledgements of several committed batches as one: each device once, its ids in order."""
    if len(batches) == 1:
        return batches[0]
    merged: dict[str, list[str]] = {}
    for acked in batches:
        for device_id, ids in acked.items():
            merged.setdefault(device_id, []).extend(ids)
    return merged


def store_batch(session: Session, items: list[Decoded], result: BatchResult) -> None:
    """Apply decoded messages in arrival order, each at most once; the caller commits.

    Only devices that sent hello/state/status in this batch are loaded as objects; for the
    others ``last_seen`` is one bulk update.
    """
    accepted = _from_enrolled_devices(session, items, result)
    control_ids = {i.device_id for i in accepted if i.kind in _CONTROL_KINDS}
    loaded = {d.id: d for d in session.exec(select(Device).where(col(Device.id).in_(control_ids)))} \
        if control_ids else {}
    seen = _already_processed(session, accepted)
    # the targets the batch's status reports and heartbeats name, in one query; each deployment rolled up once
    reports = deployments.report_batch(session, [(i.device_id, i.message) for i in accepted
                                                 if isinstance(i.message, (StatusReport, State))
                                                 and (i.device_id, i.msg_id) not in seen])
    rows: dict[str, list[Any]] = {"telemetry": [], "events": []}
    last_seen: dict[str, float] = {}
    for item in accepted:
        key = (item.device_id, item.msg_id)
        if key in seen:
            result.duplicates += 1
            result.ack(item)
            continue
        seen.add(key)
        device = loaded.get(item.device_id)
        if item.row is not None:
            rows[item.kind].append(item.row)
        elif isinstance(item.message, UploadRequest):
            captures.record_request(session, device_id=item.device_id, request=item.message, now=item.received_at)
        elif device is not None:
            _apply_control(session, item, device, reports)
        if device is None:
            last_seen[item.device_id] = item.received_at
        elif not (isinstance(item.message, State) and item.message.status == DeviceStatus.OFFLINE):
            devices.mark_seen(device, now=item.received_at)
        result.stored += 1
        result.ack(item)
    deployments.finish_batch(session, reports)
    if rows["telemetry"]:
        _insert_windows(session.connection(), rows["telemetry"])
    if rows["events"]:
        connection = session.connection()
        connection.execute(_insert_once(connection.dialect.name, DeviceEvent), rows["events"])
    if last_seen:
        fleet_history.record_heard(session, seen=last_seen)
        session.connection().execute(_SEEN, [{"device": d, "seen": t} for d, t in last_seen.items()])


def _insert_windows(connection: Connection, rows: list[Any]) -> None:
    """Telemetry rows (:func:`~decoding.telemetry_row` tuples) straight to the driver's ``executemany``:
    through SQLAlchemy's per-row parameter processing a row cost about as much again as SQLite's own
    insert, on the thread that holds the controller's GIL. Same conflict rule as :func:`_insert_once`."""
    dialect = connection.dialect
    if dialect.name in ("sqlite", "postgresql"):
        connection.exec_driver_sql(_windows_sql(dialect.paramstyle), rows)
    else:   # a database this release does not test: SQLAlchemy's insert, from dicts
        connection.execute(_insert_once(dialect.name, TelemetryRecord),
                           [{c: json.loads(v) if c in JSON_COLUMNS else v for c, v in zip(TELEMETRY_COLUMNS, row,
                                                                                         strict=True)}
                            for row in rows])


@functools.cache
def _windows_sql(paramstyle: str) -> str:
    mark = "?" if paramstyle == "qmark" else "%s"
    return (f"INSERT INTO {TelemetryRecord.__tablename__} ({', '.join(TELEMETRY_COLUMNS)}) "
            f"VALUES ({', '.join([mark] * len(TELEMETRY_COLUMNS))}) ON CONFLICT (device_id, msg_id) DO NOTHING")


@functools.cache
def _insert_once(dialect: str, table: type[TelemetryRecord] | type[DeviceEvent]) -> Insert:
    """A multi-row insert that skips a row whose ``(device_id, msg_id)`` is stored already: another
    controller storing the same message at the same moment (a redelivery while the first copy was
    being stored) must neither double it nor fail the whole batch."""
    unique = ["device_id", "msg_id"]
    if dialect == "sqlite":
        return sqlite_insert(table).on_conflict_do_nothing(index_elements=unique)
    if dialect == "postgresql":
        return postgresql_insert(table).on_conflict_do_nothing(index_elements=unique)
    return insert(table)   # other databases: the batch fails on the unique key and is stored one by one


def _from_enrolled_devices(session: Session, items: list[Decoded], result: BatchResult) -> list[Decoded]:
    known = set(session.exec(_KNOWN, params={"ids": list({i.device_id for i in items})}))
    accepted = []
    for item in items:
        if item.device_id in known:
            accepted.append(item)
        else:
            result.reject(Reason.UNKNOWN_DEVICE)
            log.warning("message from unknown or decommissioned device %s rejected", item.device_id)
    return accepted


def _apply_control(session: Session, item: Decoded, device: Device, reports: deployments.ReportBatch) -> None:
    """hello, state and status: through the services, which keep devices and deployments right (the
    deployments ``reports`` names are rolled up when the batch ends)."""
    message = item.message
    if item.kind in _REMEMBERED_KINDS:
        session.add(ProcessedMessage(msg_id=item.msg_id, device_id=item.device_id, kind=item.kind,
                                     received_at=item.received_at))
    if isinstance(message, Hello):
        devices.apply_hello(device, message, now=item.received_at)
        deployments.resend_unacknowledged(session, device_id=item.device_id, now=item.received_at)
    elif isinstance(message, State):
        devices.apply_state(device, message, now=item.received_at)
        deployments.apply_heartbeat(session, device_id=item.device_id, state=message, now=item.received_at,
                                    batch=reports)
    elif isinstance(message, StatusReport):
        devices.mark_seen(device, now=item.received_at)
        deployments.apply_status(session, device_id=item.device_id, report=message, now=item.received_at,
                                 batch=reports)
    session.add(device)


def _already_processed(session: Session, items: list[Decoded]) -> set[tuple[str, str]]:
    """``(device_id, msg_id)`` pairs of these items that were stored before."""
    ids: dict[str, list[str]] = {"telemetry": [], "events": [], "other": []}
    for item in items:
        if item.kind in ("telemetry", "events"):
            ids[item.kind].append(item.msg_id)
        elif item.kind in _REMEMBERED_KINDS:
            ids["other"].append(item.msg_id)
    seen: set[tuple[str, str]] = set()
    for kind, query in _PROCESSED.items():
        if ids[kind]:
            seen.update((device, msg_id) for device, msg_id in session.exec(query, params={"ids": ids[kind]}))
    return seen


def device_keys(session: Session, raws: list[Raw], *, prefix: str, accept_keyless: bool = False) -> DeviceKeys:
    """The message keys of the enrolled devices whose topics ``raws`` are on (one query a batch,
    so a key registered or re-enrolled a moment ago counts at once)."""
    ids = set()
    for raw in raws:
        try:
            ids.add(parse_device_topic(raw.topic, prefix)[0])
        except MessageError:
            continue   # rejected when decoded
    keys, keyless = {}, set()
    for device_id, key in session.exec(_KEYS, params={"ids": list(ids)}) if ids else ():
        if key:
            keys[device_id] = decode_public_key(key)
        else:
            keyless.add(device_id)
    return DeviceKeys(keys, frozenset(keyless), accept_keyless)


class Ingestor:
    """Raw queue -> collector thread (batches, decodes here or in processes) -> storer thread."""

    def __init__(self, *, engine: Engine, prefix: str, metrics: ControllerMetrics,
                 clock: Callable[[], float] = time.time, batch_max: int = 1000, queue_max: int = 100_000,
                 decode_workers: int = 0, accept_keyless: bool = False, ack_gap_s: float = 0.02,
                 ack_linger_s: float = 1.0,
                 on_stored: Callable[[list[Decoded]], None] | None = None,
                 on_acked: Callable[[dict[str, list[str]]], None] | None = None) -> None:
        self.engine = engine
        self.accept_keyless = accept_keyless
        self.prefix = prefix
        self.metrics = metrics
        self.clock = clock
        self.batch_max = batch_max
        self.decode_workers = decode_workers
        self.ack_gap_s = ack_gap_s
        self.ack_linger_s = ack_linger_s
        self.on_stored = on_stored
        """Called on the storer thread with the messages of every batch once they are stored."""
        self.on_acked = on_acked
        """Called after the commit with ``device id -> msg ids`` to acknowledge: on the acknowledging
        thread (batches merged), or in the caller of :meth:`process`."""
        self._queue: queue.Queue[Raw | None] = queue.Queue(maxsize=queue_max)
        self._decoded: queue.Queue[tuple[list[Raw], DeviceKeys, DecodeWork] | None] = queue.Queue(maxsize=4)
        self._acks: queue.Queue[dict[str, list[str]] | None] = queue.Queue()
        self._pool: ProcessPoolExecutor | None = None
        self._threads: list[threading.Thread] = []

    def submit(self, topic: str, payload: bytes) -> None:
        """Called on the MQTT network thread; blocks when the queue is full (back-pressure)."""
        self._queue.put(Raw(topic, payload, self.clock()))

    def start(self) -> None:
        if self._threads:
            return
        if self.decode_workers > 0:
            self._start_pool()
        self._threads = [threading.Thread(target=self._collect, name="edgefleet-ingest-collect", daemon=True),
                         threading.Thread(target=self._store_loop, name="edgefleet-ingest-store", daemon=True),
                         threading.Thread(target=self._ack_loop, name="edgefleet-ingest-ack", daemon=True)]
        for t in self._threads:
            t.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Store what was received, then stop."""
        if not self._threads:
            return
        self._queue.put(None)
        for t in self._threads[:2]:
            t.join(timeout)
        self._acks.put(None)     # after the storer: every committed batch is acknowledged first
        self._threads[2].join(timeout)
        self._threads = []
        if self._pool is not None:
            self._pool.shutdown(cancel_futures=True)
            self._pool = None

    def flush(self) -> None:
        """Block until everything submitted so far is stored and acknowledged (tests, shutdown)."""
        self._queue.join()
        self._acks.join()

    def process(self, raws: list[Raw]) -> BatchResult:
        """Decode, store and acknowledge ``raws`` synchronously in the calling thread; never raises."""
        return self._store(decode_many(raws, self.prefix, self._keys(raws)))

    def _keys(self, raws: list[Raw]) -> DeviceKeys:
        with Session(self.engine) as session:
            return device_keys(session, raws, prefix=self.prefix, accept_keyless=self.accept_keyless)

    def _collect(self) -> None:
        while True:
            batch = [self._queue.get()]
            while len(batch) < self.batch_max and batch[-1] is not None:
                try:
                    batch.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            stop = batch[-1] is None
            raws = [r for r in batch if r is not None]
            if raws:
                try:
                    keys = self._keys(raws)
                    work: DecodeWork = self._decode(raws, keys)
                except SQLAlchemyError as exc:   # the database is away: the storer would fail the same way
                    log.error("database unavailable (%s): %d messages not stored and not acknowledged; their "
                              "devices send them again", getattr(exc, "orig", None) or exc.__class__.__name__,
                              len(raws))
                    keys = DeviceKeys({})
                    work = [Rejected(Reason.STORE_ERROR, r.topic[:200], len(r.payload), "database unavailable")
                            for r in raws]
                self._decoded.put((raws, keys, work))
            if stop:
                self._queue.task_done()
                self._decoded.put(None)
                return

    def _decode(self, raws: list[Raw], keys: DeviceKeys) -> DecodeWork:
        """Hand the batch to a decode process, or decode it here (overlapping the storer's SQLite
        work, which releases the GIL)."""
        if self._pool is not None:
            try:
                return self._pool.submit(decode_many, raws, self.prefix, keys)
            except BrokenProcessPool:
                self._restart_pool()
        return decode_many(raws, self.prefix, keys)

    def _restart_pool(self) -> None:
        log.error("a decode worker process died; starting a new pool")
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
        self._start_pool()

    def _start_pool(self) -> None:
        """The decode processes, started now (not at the first batch), so a backlog waiting at the
        broker when the controller starts does not wait for them to start and import the protocol."""
        self._pool = ProcessPoolExecutor(self.decode_workers, mp_context=multiprocessing.get_context("spawn"))
        for _ in range(self.decode_workers):
            self._pool.submit(warm_up)

    def _store_loop(self) -> None:
        while True:
            entry = self._decoded.get()
            if entry is None:
                return
            raws, keys, work = entry
            try:
                if isinstance(work, Future):
                    try:
                        work = work.result()
                    except BrokenProcessPool:   # the worker died mid-batch: decode it here instead
                        work = decode_many(raws, self.prefix, keys)
                self._store(work, ack_later=True)
            except Exception:  # a bug: count, log, carry on with the next batch
                log.exception("ingest of a batch of %d messages failed", len(raws))
                self.metrics.mqtt_rejected.labels(Reason.INGEST_ERROR).inc(len(raws))
            finally:
                for _ in raws:
                    self._queue.task_done()
                # received and not yet stored: the raw queue and the batches taken from it, decoding or waiting
                self.metrics.ingest_queue_depth.set(self._queue.unfinished_tasks)

    def _store(self, decoded: list[Decoded | Rejected], *, ack_later: bool = False) -> BatchResult:
        """Store one batch; acknowledge it now, or (``ack_later``, the storer thread) on the ack thread."""
        result = BatchResult()
        items = []
        for d in decoded:
            if isinstance(d, Rejected):
                result.reject(d.code)
                if d.code != Reason.STORE_ERROR:   # the database was away: logged once for the batch
                    log.warning("rejected MQTT message on %s (%d bytes): %s", d.topic, d.size, d.text)
            else:
                items.append(d)
        started = time.perf_counter()
        try:
            if items:   # a batch of rejected messages only has nothing to store
                with session_scope(self.engine) as session:
                    store_batch(session, items, result)
        except SQLAlchemyError as exc:
            log.warning("batch of %d messages failed (%s); storing one by one", len(items), exc.__class__.__name__)
            result = BatchResult(rejected=result.rejected)
            for item in items:
                self._store_one(item, result)
        self.metrics.ingest_batch_seconds.observe(time.perf_counter() - started)
        self._count(items, result)
        if self.on_acked is not None and result.acked:
            if ack_later:
                self._acks.put(result.acked)
            else:
                self._publish_acks(result.acked)
        if self.on_stored is not None and items:
            try:
                self.on_stored(items)
            except Exception:  # a listener's bug must not stop ingest
                log.exception("ingest listener failed")
        return result

    def _ack_loop(self) -> None:
        """Acknowledge what the storer committed: everything waiting, merged by device, in one call."""
        while True:
            pending = [self._acks.get()]
            deadline = time.monotonic() + self.ack_linger_s
            while pending[-1] is not None:
                try:
                    pending.append(self._acks.get_nowait())
                    continue
                except queue.Empty:
                    pass
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                try:
                    pending.append(self._acks.get(timeout=min(remaining, self.ack_gap_s)))
                except queue.Empty:   # no batch within the gap: not a backlog, acknowledge now
                    break
            batches = [p for p in pending if p is not None]
            try:
                if batches:
                    self._publish_acks(merge_acked(batches))
            finally:
                for _ in pending:
                    self._acks.task_done()
            if pending[-1] is None:
                return

    def _publish_acks(self, acked: dict[str, list[str]]) -> None:
        if self.on_acked is None:
            return
        try:
            self.on_acked(acked)
        except Exception:  # unacknowledged messages come again and are de-duplicated
            log.exception("publishing delivery acknowledgements failed")

    def _store_one(self, item: Decoded, result: BatchResult) -> None:
        one = BatchResult()   # counted (and acknowledged) only once committed
        try:
            with session_scope(self.engine) as session:
                store_batch(session, [item], one)
        except IntegrityError:
            result.duplicates += 1
            result.ack(item)
            return
        except SQLAlchemyError:
            log.exception("could not store %s message %s from %s", item.kind, item.msg_id, item.device_id)
            result.reject(Reason.STORE_ERROR)
            return
        result.merge(one)

    def _count(self, items: list[Decoded], result: BatchResult) -> None:
        for reason, n in result.rejected.items():
            self.metrics.mqtt_rejected.labels(reason).inc(n)
        if result.duplicates:
            self.metrics.mqtt_duplicates.labels("any").inc(result.duplicates)
        kinds: dict[str, int] = {}
        for item in items:
            kinds[item.kind] = kinds.get(item.kind, 0) + 1
        for kind, n in kinds.items():
            self.metrics.mqtt_messages.labels(kind).inc(n)
