"""Ingest under load: two controllers storing the same messages at once store each once and fail no
batch (SQLite and PostgreSQL); acknowledgements of several committed batches are merged by device;
the libsodium verifier refuses what it cannot check."""

from __future__ import annotations

import json
import logging
import threading

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy import func
from sqlmodel import Session, select

from edgefleet.cloud.metrics import ControllerMetrics
from edgefleet.cloud.mqtt import ingest
from edgefleet.cloud.mqtt.decoding import Raw
from edgefleet.cloud.mqtt.ingest import Ingestor, merge_acked
from edgefleet.cloud.services import devices
from edgefleet.cloud.store.engine import create_schema, make_engine, session_scope
from edgefleet.cloud.store.tables import TelemetryRecord
from edgefleet.protocol import device_signatures
from edgefleet.protocol.errors import MessageError
from edgefleet.protocol.keys import public_key_pem
from edgefleet.protocol.messages import Histogram, TelemetryWindow, encode
from edgefleet.protocol.topics import telemetry
from edgefleet.protocol.vocabulary import Reason

from testkit import postgres_database

PREFIX = "edgefleet/v1"


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request, tmp_path):
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'controller.db'}"
    else:
        with postgres_database() as url:
            yield url


def _enroll(url: str, n_devices: int) -> dict[str, Ed25519PrivateKey]:
    engine = make_engine(url)
    create_schema(engine)
    keys = {f"d{i:03d}": Ed25519PrivateKey.generate() for i in range(n_devices)}
    with session_scope(engine) as session:
        for device_id, key in keys.items():
            _, token = devices.create_enrollment_token(session, actor="test", now=1.0, device_id=device_id)
            devices.enroll(session, token=token, device_id=device_id, now=1.0, require_key=True,
                           public_key_pem=public_key_pem(key.public_key()).decode())
    engine.dispose()
    return keys


def _windows(keys: dict[str, Ed25519PrivateKey], per_device: int, first_seq: int = 0) -> list[Raw]:
    raws = []
    for seq in range(first_seq, first_seq + per_device):
        for device_id, key in keys.items():
            window = TelemetryWindow(device_id=device_id, window_seq=seq, window_start=seq, window_end=seq + 1,
                                     latency_ms=Histogram(bounds=[1.0], counts=[1, 0]))
            topic = telemetry(device_id, PREFIX)
            raws.append(Raw(topic, device_signatures.seal(key, topic, encode(window)), 2.0))
    return raws


def _ingestor(url: str, **kwargs) -> Ingestor:
    return Ingestor(engine=make_engine(url), prefix=PREFIX, metrics=ControllerMetrics(), **kwargs)


def _rows(url: str) -> tuple[int, int]:
    """(rows, distinct (device_id, msg_id)) of the telemetry table."""
    engine = make_engine(url)
    with Session(engine) as session:
        rows = session.exec(select(func.count()).select_from(TelemetryRecord)).one()
        distinct = len(set(session.exec(select(TelemetryRecord.device_id, TelemetryRecord.msg_id))))
    engine.dispose()
    return rows, distinct


def test_two_controllers_store_a_redelivered_backlog_once(database_url, monkeypatch, caplog):
    keys = _enroll(database_url, 20)
    raws = _windows(keys, 10)
    first, second = _ingestor(database_url), _ingestor(database_url)
    # The race, made certain: controller 1 commits the windows between controller 2's duplicate
    # lookup (which found none of them) and its insert.
    assert first.process(raws[:150]).stored == 150
    monkeypatch.setattr(ingest, "_already_processed", lambda session, items: set())
    with caplog.at_level(logging.WARNING, logger=ingest.__name__):
        result = second.process(raws)
    assert "one by one" not in caplog.text                 # the batch did not fail
    assert result.rejected == {} and result.stored == len(raws)
    assert sum(len(ids) for ids in result.acked.values()) == len(raws)   # all acknowledged, by the second too
    assert _rows(database_url) == (len(raws), len(raws))
    monkeypatch.undo()

    # And for real: both controllers get the same backlog at once (threaded ingest, small batches).
    more = _windows(keys, 5, first_seq=10)
    acked: list[dict[str, list[str]]] = []
    lock = threading.Lock()

    def on_acked(batch: dict[str, list[str]]) -> None:
        with lock:
            acked.append(batch)

    pair = [_ingestor(database_url, batch_max=25, on_acked=on_acked) for _ in range(2)]
    for ingestor in pair:
        ingestor.start()
    try:
        for raw in more:
            for ingestor in pair:
                ingestor.submit(raw.topic, raw.payload)
        for ingestor in pair:
            ingestor.flush()
    finally:
        for ingestor in pair:
            ingestor.stop()
    assert _rows(database_url) == (len(raws) + len(more),) * 2
    ids = [i for batch in acked for device_ids in batch.values() for i in device_ids]
    assert len(ids) == 2 * len(more) and len(set(ids)) == len(more)   # each acknowledged by both controllers


def test_acknowledgements_of_batches_committed_meanwhile_are_merged_by_device(tmp_path):
    url = f"sqlite:///{tmp_path / 'controller.db'}"
    keys = _enroll(url, 3)
    raws = _windows(keys, 8)          # 24 windows, batches of 4: each batch holds several devices
    calls: list[dict[str, list[str]]] = []
    release = threading.Event()

    def on_acked(batch: dict[str, list[str]]) -> None:
        calls.append(batch)
        if len(calls) == 1:
            release.wait(30)          # a slow publish: the storer goes on committing meanwhile

    ingestor = _ingestor(url, batch_max=4, on_acked=on_acked)
    ingestor.start()
    try:
        for raw in raws:
            ingestor.submit(raw.topic, raw.payload)
        ingestor._queue.join()        # every batch committed while the first acknowledgement is held
        release.set()
        ingestor.flush()
    finally:
        ingestor.stop()
    # 6 batches, 2 calls at most: whatever the first took (one batch, or those within the 20 ms gap),
    # then everything committed while it was held, at once, each device once.
    assert 1 <= len(calls) <= 2 and sorted(calls[-1]) == sorted(keys)
    sent = [i for call in calls for ids in call.values() for i in ids]
    assert len(sent) == len(set(sent)) == len(raws)
    for device_id in keys:            # per device, in the order stored
        ids = [i for call in calls for i in call.get(device_id, [])]
        with Session(make_engine(url)) as session:
            stored = list(session.exec(select(TelemetryRecord.msg_id).where(TelemetryRecord.device_id == device_id)
                                       .order_by(TelemetryRecord.window_seq)))
        assert ids == stored


def test_merge_acked_keeps_each_devices_order():
    assert merge_acked([{"a": ["1", "2"], "b": ["3"]}, {"b": ["4"], "a": ["5"]}]) == {"a": ["1", "2", "5"],
                                                                                      "b": ["3", "4"]}


def test_an_idle_ingest_acknowledges_at_once(tmp_path):
    """No linger without a backlog: one message, one acknowledgement, before the linger could end."""
    url = f"sqlite:///{tmp_path / 'controller.db'}"
    keys = _enroll(url, 1)
    acked = threading.Event()
    ingestor = _ingestor(url, on_acked=lambda batch: acked.set(), ack_linger_s=3600)
    ingestor.start()
    try:
        raw = _windows(keys, 1)[0]
        ingestor.submit(raw.topic, raw.payload)
        assert acked.wait(600)        # with a linger of an hour: only the gap (20 ms) was waited
    finally:
        ingestor.stop()


def test_a_window_fills_every_column_of_its_table_and_reads_back_as_sent(tmp_path):
    """Telemetry rows go to the driver as tuples in decoding.TELEMETRY_COLUMNS order: the list names
    every column of the table (a column added later cannot be left out silently) and a stored window
    reads back through the ORM with its JSON columns intact."""
    from edgefleet.cloud.mqtt.decoding import TELEMETRY_COLUMNS

    assert sorted(TELEMETRY_COLUMNS) == sorted(c.name for c in TelemetryRecord.__table__.columns if c.name != "id")
    url = f"sqlite:///{tmp_path / 'controller.db'}"
    keys = _enroll(url, 1)
    ((device_id, key),) = keys.items()
    window = TelemetryWindow(device_id=device_id, window_seq=7, window_start=1.0, window_end=2.0, requests=3,
                             latency_ms=Histogram(bounds=[1.0, 5.0], counts=[2, 1, 0]), predictions={"7": 3})
    topic = telemetry(device_id, PREFIX)
    assert _ingestor(url).process([Raw(topic, device_signatures.seal(key, topic, encode(window)), 2.0)]).stored == 1
    with Session(make_engine(url)) as session:
        row = session.exec(select(TelemetryRecord)).one()
    assert (row.msg_id, row.window_seq, row.requests, row.latency_bounds, row.latency_counts, row.predictions,
            row.confusion, row.received_at) == (window.msg_id, 7, 3, [1.0, 5.0], [2, 1, 0], {"7": 3}, {}, 2.0)


def test_a_database_outage_logs_once_a_batch_and_loses_nothing_the_device_sends_again(tmp_path, monkeypatch,
                                                                                       caplog):
    from sqlalchemy.exc import OperationalError

    url = f"sqlite:///{tmp_path / 'controller.db'}"
    raws = _windows(_enroll(url, 5), 1)
    acked: list[dict[str, list[str]]] = []
    ingestor = _ingestor(url, on_acked=acked.append)

    def away(batch: list[Raw]) -> None:
        raise OperationalError("SELECT", {}, Exception("connection refused"))

    monkeypatch.setattr(ingestor, "_keys", away)
    ingestor.start()
    try:
        with caplog.at_level(logging.WARNING, logger=ingest.__name__):
            for raw in raws:
                ingestor.submit(raw.topic, raw.payload)
            ingestor.flush()
        lines = [r.getMessage() for r in caplog.records]   # (another test's ingest threads may log here too)
        assert lines.count("database unavailable (connection refused): 5 messages not stored and not "
                           "acknowledged; their devices send them again") == 1, lines
        assert not [line for line in lines if line.startswith("rejected MQTT message")], lines
        assert ingestor.metrics.registry.get_sample_value("edgefleet_mqtt_rejected_total",
                                                          {"reason": Reason.STORE_ERROR}) == 5
        assert acked == [] and _rows(url) == (0, 0)
        monkeypatch.undo()             # the database is back; the devices send the same windows again
        for raw in raws:
            ingestor.submit(raw.topic, raw.payload)
        ingestor.flush()
    finally:
        ingestor.stop()
    assert _rows(url) == (5, 5) and sorted(i for batch in acked for ids in batch.values() for i in ids) == \
        sorted(json.loads(r.payload)["msg_id"] for r in raws)


def test_the_queue_depth_counts_the_batches_taken_but_not_yet_stored(tmp_path):
    """edgefleet_ingest_queue_depth is what was received and is not stored yet: with the storer held
    in its second batch of 4, the first one is counted out and the 8 others count, whether still
    queued or already taken by the collector."""
    url = f"sqlite:///{tmp_path / 'controller.db'}"
    keys = _enroll(url, 3)
    raws = _windows(keys, 4)          # 12 windows, batches of 4
    calls: list[int] = []
    held, release = threading.Event(), threading.Event()

    def on_stored(items: list) -> None:
        calls.append(len(items))
        if len(calls) == 2:           # the storer holds the second batch here, before it counts it
            held.set()
            release.wait(30)

    ingestor = _ingestor(url, batch_max=4, on_stored=on_stored)
    ingestor.start()
    try:
        for raw in raws:
            ingestor.submit(raw.topic, raw.payload)
        assert held.wait(30)
        assert ingestor.metrics.registry.get_sample_value("edgefleet_ingest_queue_depth") == 8
        release.set()
        ingestor.flush()
        assert ingestor.metrics.registry.get_sample_value("edgefleet_ingest_queue_depth") == 0
    finally:
        release.set()
        ingestor.stop()


@pytest.mark.parametrize("key", [b"", b"\x01" * 31, b"\x01" * 33])
def test_a_key_of_the_wrong_size_refuses_the_message(key):
    signer = Ed25519PrivateKey.generate()
    topic = telemetry("d1", PREFIX)
    payload = device_signatures.seal(signer, topic, b'{"a":1}')
    with pytest.raises(MessageError) as info:
        device_signatures.verify(key, topic, payload)
    assert info.value.code == Reason.BAD_SIGNATURE


def test_libsodium_verifies_what_the_agent_seals_and_nothing_altered():
    signer = Ed25519PrivateKey.generate()
    public = device_signatures.raw_public_key(signer.public_key())
    topic = telemetry("d1", PREFIX)
    for size in (1, 100, 3000):
        payload = device_signatures.seal(signer, topic, b'{"a":"' + b"x" * size + b'"}')
        device_signatures.verify(public, topic, payload)
        for altered_topic, altered in ((topic, payload.replace(b"x", b"y", 1)),
                                       (telemetry("d2", PREFIX), payload)):
            with pytest.raises(MessageError) as info:
                device_signatures.verify(public, altered_topic, altered)
            assert info.value.code == Reason.BAD_SIGNATURE


def test_a_batch_of_rejected_messages_only_does_not_touch_the_database(tmp_path, caplog):
    """Nothing to store, nothing asked of the database: with the database gone (here: a file that cannot
    be opened) such a batch is counted as rejected, with no "batch failed" warning and no store error."""
    engine = make_engine(f"sqlite:///{tmp_path / 'missing' / 'controller.db'}")
    metrics = ControllerMetrics()
    ingestor = Ingestor(engine=engine, prefix=PREFIX, metrics=metrics)
    with caplog.at_level(logging.WARNING, logger="edgefleet.cloud.mqtt.ingest"):
        result = ingestor.process([Raw(topic="not/an/edgefleet/topic", payload=b"{}", received_at=1.0)])
    assert result.stored == 0 and sum(result.rejected.values()) == 1
    assert Reason.STORE_ERROR not in result.rejected
    assert not [r for r in caplog.records if "failed" in r.getMessage()]
    engine.dispose()
