"""The ingest path: every kind stored, duplicates ignored, bad input rejected + counted, nothing stored."""

from __future__ import annotations

import json
import os
import signal

import pytest
from sqlmodel import select

from edgefleet.cloud.mqtt.decoding import Raw
from edgefleet.cloud.mqtt.ingest import Ingestor
from edgefleet.cloud.store.tables import TelemetryRecord
from edgefleet.protocol.messages import Event, Histogram, TelemetryWindow, encode


def _rejected(controller, reason: str) -> float:
    return controller.metrics.registry.get_sample_value("edgefleet_mqtt_rejected_total", {"reason": reason}) or 0.0


def _windows(client, **params) -> list[dict]:
    return client.get("/api/v1/telemetry/windows", params=params).json()


def test_telemetry_is_stored_once_per_msg_id(client, fleet, controller):
    fleet.add("t1")
    window = fleet.telemetry("t1", 1)
    fleet.send(window, "telemetry")       # redelivery (QoS 1 retry, outbox replay)
    rows = _windows(client, device_id="t1")
    assert len(rows) == 1 and rows[0]["msg_id"] == window.msg_id and rows[0]["drift_level"] == "ok"
    dup = controller.metrics.registry.get_sample_value("edgefleet_mqtt_duplicates_total", {"kind": "any"})
    assert dup == 1


def test_duplicates_inside_one_batch(client, fleet, controller, clock):
    fleet.add("t2")
    window = fleet.telemetry("t2", 1)
    topic = "edgefleet/v1/devices/t2/telemetry"
    payload = fleet.sealed(topic, encode(window))
    result = controller.ingestor.process([Raw(topic, payload, clock()) for _ in range(3)])
    assert result.stored == 0 and result.duplicates == 3
    assert len(_windows(client, device_id="t2")) == 1


def test_one_device_cannot_shadow_another_devices_message_ids(client, fleet):
    fleet.add("victim")
    fleet.add("mallory")
    window = fleet.telemetry("victim", 1)
    forged = window.model_copy(update={"device_id": "mallory"})  # same msg_id, on mallory's own topic
    fleet.send(forged, "telemetry")
    fleet.send(window, "telemetry")
    assert [w["msg_id"] for w in _windows(client, device_id="victim")] == [window.msg_id]
    assert [w["msg_id"] for w in _windows(client, device_id="mallory")] == [window.msg_id]


def test_events_stored_and_deduplicated(client, fleet):
    fleet.add("e1")
    event = Event(device_id="e1", kind="install", text="installed", level="info", data={"slot": "b"})
    fleet.send(event, "events")
    fleet.send(event, "events")
    events = client.get("/api/v1/devices/e1/events").json()
    assert len(events) == 1 and events[0]["data"] == {"slot": "b"}


def test_replayed_hello_does_not_roll_state_back(client, fleet, clock):
    fleet.enroll("h1")
    old = fleet.hello("h1", agent_version="0.1.0")
    fleet.hello("h1", agent_version="0.2.0")
    fleet.send(old, "hello")
    assert client.get("/api/v1/devices/h1").json()["agent_version"] == "0.2.0"


@pytest.mark.parametrize("topic, payload, reason", [
    ("edgefleet/v1/devices/m1/telemetry", b"{not json}", "malformed_message"),
    ("edgefleet/v1/devices/m1/telemetry", b"{\"a\": [1, 2]]}", "malformed_message"),
    ("edgefleet/v1/devices/m1/telemetry", b"[1, 2]", "unsigned"),   # no signature can be appended to it
    ("edgefleet/v1/devices/m1/telemetry", json.dumps({"schema_version": 99, "device_id": "m1"}).encode(),
     "unsupported_schema"),
    ("edgefleet/v1/devices/m1/telemetry", json.dumps({"schema_version": 1, "type": "telemetry",
                                                      "device_id": "m1"}).encode(), "malformed_message"),
    ("edgefleet/v1/devices/m1/telemetry", b"{" + b" " * 300_000 + b"}", "payload_too_large"),
    ("edgefleet/v1/devices/m1/hello", b"{\xff\xfe}", "malformed_message"),
    ("edgefleet/v1/devices/m1/hello", b"\xff\xfe", "unsigned"),
    ("edgefleet/v1/devices/m1/cmd", b"{}", "bad_topic"),
    ("edgefleet/v1/devices/m1/extra/telemetry", b"{}", "bad_topic"),
    ("other/prefix/devices/m1/telemetry", b"{}", "bad_topic"),
    ("edgefleet/v1/devices/bad id/telemetry", b"{}", "bad_topic"),
])
def test_malformed_messages_are_rejected_counted_and_not_stored(client, fleet, controller, topic, payload, reason):
    """Signed by the enrolled device where the payload can carry a signature: bad content from a
    device that is who it says it is is still refused."""
    fleet.add("m1")
    before = _rejected(controller, reason)
    sealable = payload.startswith(b"{") and payload.endswith(b"}") and payload != b"{}" and "/m1/" in topic
    result = fleet.send_raw(topic, fleet.sealed(topic, payload, signer="m1") if sealable else payload)
    assert result.stored == 0 and result.rejected == {reason: 1}
    assert _rejected(controller, reason) == before + 1
    assert _windows(client) == []


def test_device_id_in_payload_must_match_topic(client, fleet, controller):
    fleet.add("a1")
    fleet.add("b1")
    window = fleet.telemetry("a1", 1)
    topic = "edgefleet/v1/devices/b1/telemetry"   # b1 signs a1's window: its own topic, someone else's payload
    result = fleet.send_raw(topic, fleet.sealed(topic, encode(window.model_copy(update={"msg_id": "x1"}))))
    assert result.rejected == {"device_mismatch": 1}
    assert len(_windows(client)) == 1


def test_unknown_device_is_rejected(client, fleet, controller):
    window = TelemetryWindow(device_id="ghost", window_seq=0, window_start=0, window_end=1,
                             latency_ms=Histogram(bounds=[1.0], counts=[0, 0]))
    result = fleet.send_raw("edgefleet/v1/devices/ghost/telemetry", encode(window))
    assert result.rejected == {"unknown_device": 1}
    assert client.get("/api/v1/devices/ghost").status_code == 404


def test_a_bad_message_does_not_spoil_its_batch(client, fleet, controller, clock):
    fleet.add("g1")
    good = fleet.telemetry("g1", 1).model_copy(update={"msg_id": "good-2", "window_seq": 2})
    topic = "edgefleet/v1/devices/g1/telemetry"
    raws = [Raw(topic, fleet.sealed(topic, b"{garbage}"), clock()), Raw(topic, b"garbage", clock()),
            Raw(topic, fleet.sealed(topic, encode(good)), clock())]
    result = controller.ingestor.process(raws)
    assert result.stored == 1 and result.rejected == {"malformed_message": 1, "unsigned": 1}
    assert {w["window_seq"] for w in _windows(client, device_id="g1")} == {1, 2}


def test_unknown_fields_are_kept_in_the_stored_payload(client, fleet, controller, clock):
    fleet.add("u1")
    window = fleet.telemetry("u1", 1)
    body = json.loads(encode(window))
    body.update(msg_id="newer", window_seq=2, future_field={"x": 1})
    topic = "edgefleet/v1/devices/u1/telemetry"
    fleet.send_raw(topic, fleet.sealed(topic, json.dumps(body).encode()))
    with controller.session() as s:
        row = s.exec(select(TelemetryRecord).where(TelemetryRecord.msg_id == "newer")).one()
        assert json.loads(row.raw)["future_field"] == {"x": 1}


@pytest.mark.parametrize("decode_workers", [0, 1])
def test_threaded_ingest_with_and_without_decode_processes(client, fleet, controller, clock, decode_workers):
    fleet.add("w1")
    ingestor = Ingestor(engine=controller.engine, prefix="edgefleet/v1", metrics=controller.metrics, clock=clock,
                        batch_max=7, decode_workers=decode_workers)
    ingestor.start()
    try:
        windows = [TelemetryWindow(device_id="w1", window_seq=i, window_start=0, window_end=i,
                                   latency_ms=Histogram(bounds=[1.0], counts=[1, 0])) for i in range(30)]
        topic = "edgefleet/v1/devices/w1/telemetry"
        for w in windows:
            ingestor.submit(topic, fleet.sealed(topic, encode(w)))
        ingestor.submit(topic, fleet.sealed(topic, b"{junk}"))
        ingestor.submit(topic, encode(windows[0].model_copy(update={"msg_id": "unsigned-1"})))
        ingestor.flush()
    finally:
        ingestor.stop()
    assert len(_windows(client, device_id="w1", limit=100)) == 30
    assert (_rejected(controller, "malformed_message"), _rejected(controller, "unsigned")) == (1, 1)


def test_ingest_survives_a_killed_decode_worker(client, fleet, controller, clock):
    fleet.add("k1")
    ingestor = Ingestor(engine=controller.engine, prefix="edgefleet/v1", metrics=controller.metrics, clock=clock,
                        decode_workers=1)
    ingestor.start()

    def send(seqs) -> None:
        for i in seqs:
            window = TelemetryWindow(device_id="k1", window_seq=i, window_start=0, window_end=i,
                                     latency_ms=Histogram(bounds=[1.0], counts=[1, 0]))
            topic = "edgefleet/v1/devices/k1/telemetry"
            ingestor.submit(topic, fleet.sealed(topic, encode(window)))
        ingestor.flush()
    try:
        send(range(10))
        for process in list(ingestor._pool._processes.values()):   # fault injection: the worker dies
            os.kill(process.pid, signal.SIGKILL)
            process.join(10)
        send(range(10, 20))
        send(range(20, 30))
    finally:
        ingestor.stop()
    assert len(_windows(client, device_id="k1", limit=100)) == 30
