"""The controller's MQTT bridge against real brokers: the real Mosquitto (127.0.0.1:1883) and
the embedded broker the controller starts itself. Each test uses its own topic prefix."""

from __future__ import annotations

import numpy as np
import pytest

from edgefleet.protocol.bundle import build_bundle, parse_recipe
from edgefleet.protocol.keys import TrustedKeys
from edgefleet.protocol.messages import Event, Hello, Histogram, State, StatusReport, TelemetryWindow
from edgefleet.protocol.orders import verify_order

from controllerkit import SimDevice, controller_settings, enroll, running_controller, wait_until

pytestmark = pytest.mark.integration


@pytest.fixture(params=["mosquitto", "embedded"])
def controller(request, tmp_path, topic_prefix, release_key):
    broker_url = request.getfixturevalue("mqtt_broker").url if request.param == "mosquitto" else None
    settings = controller_settings(tmp_path, broker_url=broker_url, prefix=topic_prefix,
                                   release_pub=release_key.public_path)
    with running_controller(settings) as (client, ctl):
        yield client, ctl


@pytest.fixture
def device(controller, topic_prefix):
    client, ctl = controller
    creds = enroll(client, "sim-1")
    assert creds["broker_url"] == ctl.device_broker_url and creds["topic_prefix"] == topic_prefix
    sim = SimDevice(creds["broker_url"], "sim-1", topic_prefix, key=creds["key"])
    yield sim
    sim.close()


def _window(device_id: str, seq: int, **kw) -> TelemetryWindow:
    return TelemetryWindow(device_id=device_id, window_seq=seq, window_start=0.0, window_end=float(seq),
                           requests=4, latency_ms=Histogram(bounds=[1.0, 2.0], counts=[3, 1, 0]), **kw)


def test_hello_state_telemetry_events_are_ingested_once(controller, device):
    client, ctl = controller
    device.publish(Hello(device_id="sim-1", agent_version="0.1.0", arch="x86_64", os="linux", runtimes=["onnx"]),
                   "hello")
    device.publish(State(device_id="sim-1", status="online", update_state="idle"), "state")
    window = _window("sim-1", 1)
    device.publish(window, "telemetry")
    device.publish(window, "telemetry")          # duplicate delivery
    device.publish(Event(device_id="sim-1", kind="boot", text="hi"), "events")
    wait_until(lambda: client.get("/api/v1/devices/sim-1/events").json(), what="event stored")
    ctl.ingestor.flush()
    d = client.get("/api/v1/devices/sim-1").json()
    assert d["online"] and d["arch"] == "x86_64" and d["update_state"] == "idle"
    windows = client.get("/api/v1/telemetry/windows", params={"device_id": "sim-1"}).json()
    assert [w["msg_id"] for w in windows] == [window.msg_id]
    metrics = client.get("/metrics").text
    assert 'edgefleet_mqtt_duplicates_total{kind="any"} 1.0' in metrics


def test_bad_messages_are_rejected_counted_and_not_stored(controller, device, topic_prefix):
    client, ctl = controller
    base = f"{topic_prefix}/devices/sim-1"

    def signed(kind: str, body: bytes) -> None:   # sim-1 is who it says it is; what it says is bad
        device.publish_raw(f"{base}/{kind}", device.payload(f"{base}/{kind}", body))
    signed("telemetry", b"{garbage}")
    device.publish_raw(f"{base}/telemetry", b"{" + b" " * 400_000 + b"}")
    signed("telemetry", _window("other", 1).model_dump_json().encode())
    device.publish_raw(f"{topic_prefix}/devices/ghost/telemetry", _window("ghost", 1).model_dump_json().encode())
    signed("state", b"{\x00\x01}")
    device.publish_raw(f"{base}/telemetry", _window("sim-1", 3).model_dump_json().encode())   # not signed

    def rejected() -> dict:
        reg = ctl.metrics.registry
        return {r: reg.get_sample_value("edgefleet_mqtt_rejected_total", {"reason": r}) for r in
                ("malformed_message", "payload_too_large", "device_mismatch", "unknown_device", "unsigned")}
    wait_until(lambda: rejected() == {"malformed_message": 2.0, "payload_too_large": 1.0, "device_mismatch": 1.0,
                                      "unknown_device": 1.0, "unsigned": 1.0},
               what=f"rejections counted ({rejected()})")
    assert client.get("/api/v1/telemetry/windows").json() == []
    assert client.get("/api/v1/devices/ghost").status_code == 404
    assert client.get("/healthz").json()["mqtt"] == "connected"   # nothing crashed
    device.publish(_window("sim-1", 2), "telemetry")
    wait_until(lambda: client.get("/api/v1/telemetry/windows").json(), what="good message after bad ones")


def test_last_will_marks_the_device_offline(controller, topic_prefix):
    client, ctl = controller
    creds = enroll(client, "willy")
    sim = SimDevice(creds["broker_url"], "willy", topic_prefix, key=creds["key"])
    sim.publish(State(device_id="willy", status="online"), "state")
    wait_until(lambda: client.get("/api/v1/devices/willy").json()["online"], what="online")
    sim.vanish()
    wait_until(lambda: not client.get("/api/v1/devices/willy").json()["online"], timeout=30, what="offline by will")


def test_deployment_orders_reach_the_device_and_status_closes_it(controller, device, release_key, tiny_onnx):
    client, ctl = controller
    device.publish(Hello(device_id="sim-1", agent_version="0.1.0", arch="x86_64", os="linux", runtimes=["onnx"]),
                   "hello")
    wait_until(lambda: client.get("/api/v1/devices/sim-1").json()["arch"], what="hello stored")
    recipe = parse_recipe({"bundle": {"name": "tiny", "version": "1.0.0", "build": 1, "runtime": "onnx"}})
    built = build_bundle(recipe, tiny_onnx, samples=np.zeros((8, 4), np.float32), release_key=release_key.private)
    assert client.post("/api/v1/bundles", content=built.data).status_code == 201
    dep = client.post("/api/v1/deployments", json={"bundle": built.digest, "device_ids": ["sim-1"]}).json()
    order_msg = wait_until(lambda: device.orders and device.orders[0], what="order on the cmd topic")
    trusted = TrustedKeys.of([ctl.controller_key.public_key()], role="controller")
    order = verify_order(order_msg.order, trusted=trusted, device_id="sim-1", last_sequence=0, now=ctl.now())
    assert order.deployment_id == dep["id"] and order.bundle_digest == built.digest
    device.publish(StatusReport(device_id="sim-1", deployment_id=dep["id"], sequence=order.sequence,
                                state="committed", final=True, outcome="committed"), "status")
    wait_until(lambda: client.get(f"/api/v1/deployments/{dep['id']}").json()["status"] == "succeeded",
               what="deployment succeeded")


def test_messages_published_while_the_controller_is_down_are_not_lost(tmp_path, private_mosquitto, topic_prefix,
                                                                      release_key):
    """Persistent session: QoS 1 telemetry sent while the controller is stopped arrives after restart."""
    settings = controller_settings(tmp_path, broker_url=private_mosquitto.broker.url, prefix=topic_prefix,
                                   release_pub=release_key.public_path)
    with running_controller(settings) as (client, ctl):
        creds = enroll(client, "dur")
    sim = SimDevice(private_mosquitto.broker.url, "dur", topic_prefix, key=creds["key"])
    try:
        windows = [_window("dur", i) for i in range(20)]
        for w in windows:
            sim.publish(w, "telemetry")
        with running_controller(settings) as (client, ctl):
            wait_until(lambda: len(client.get("/api/v1/telemetry/windows", params={"limit": 100}).json()) == 20,
                       what="all 20 windows after restart")
    finally:
        sim.close()


def test_two_replicas_split_ingest_with_a_shared_subscription(tmp_path, mqtt_broker, topic_prefix, release_key):
    """MQTT 5 shared subscription: each message reaches exactly one replica; both write one database."""
    db = f"sqlite:///{tmp_path / 'shared.db'}"
    first = controller_settings(tmp_path / "a", broker_url=mqtt_broker.url, prefix=topic_prefix,
                                release_pub=release_key.public_path, database_url=db,
                                shared_subscription_group="ctl", mqtt_client_id=f"a-{topic_prefix[:17]}")
    second = first.model_copy(update={"data_dir": tmp_path / "b", "mqtt_client_id": f"b-{topic_prefix[:17]}"})
    with running_controller(first) as (client, ctl_a), running_controller(second) as (_, ctl_b):
        creds = enroll(client, "shared-1")
        sim = SimDevice(creds["broker_url"], "shared-1", topic_prefix, key=creds["key"])
        try:
            for i in range(40):
                sim.publish(_window("shared-1", i), "telemetry")
            wait_until(lambda: len(client.get("/api/v1/telemetry/windows", params={"limit": 100}).json()) == 40,
                       what="40 windows stored once")
        finally:
            sim.close()
        counts = [c.metrics.registry.get_sample_value("edgefleet_mqtt_messages_total", {"kind": "telemetry"}) or 0
                  for c in (ctl_a, ctl_b)]
        assert sum(counts) == 40 and all(counts), counts


def test_broker_outage_holds_orders_and_the_bridge_reconnects(tmp_path, private_mosquitto, topic_prefix,
                                                              release_key, tiny_onnx):
    settings = controller_settings(tmp_path, broker_url=private_mosquitto.broker.url, prefix=topic_prefix,
                                   release_pub=release_key.public_path)
    recipe = parse_recipe({"bundle": {"name": "tiny", "version": "1.0.0", "build": 1, "runtime": "onnx"}})
    built = build_bundle(recipe, tiny_onnx, samples=np.zeros((8, 4), np.float32), release_key=release_key.private)
    with running_controller(settings) as (client, ctl):
        creds = enroll(client, "out-1")
        sim = SimDevice(private_mosquitto.broker.url, "out-1", topic_prefix, key=creds["key"])
        sim.publish(Hello(device_id="out-1", agent_version="0.1.0", arch="x86_64", os="linux", runtimes=["onnx"]),
                    "hello")
        wait_until(lambda: client.get("/api/v1/devices/out-1").json()["arch"], what="hello stored")
        assert client.post("/api/v1/bundles", content=built.data).status_code == 201
        private_mosquitto.stop()
        wait_until(lambda: client.get("/healthz").json()["mqtt"] == "disconnected", what="bridge notices")
        dep = client.post("/api/v1/deployments", json={"bundle": built.digest, "device_ids": ["out-1"]}).json()
        assert dep["targets"][0]["state"] == "pending"          # held, not lost
        private_mosquitto.start()
        wait_until(lambda: client.get("/healthz").json()["mqtt"] == "connected", timeout=40, what="reconnect")
        order = wait_until(lambda: sim.orders and sim.orders[-1], timeout=40, what="held order delivered")
        assert order.order.signed.deployment_id == dep["id"]
        sim.close()
