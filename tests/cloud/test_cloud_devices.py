"""Enrollment, device facts from hello/state, tags, online/offline."""

from __future__ import annotations

from fastapi.testclient import TestClient
from sqlmodel import select

from edgefleet.cloud.app import create_app
from edgefleet.cloud.services import auth
from edgefleet.cloud.store.tables import Device, ProcessedMessage
from edgefleet.protocol.keys import key_id, load_public_key_pem

from cloudkit import Fleet
from testkit import DeviceKey

PEM = DeviceKey().pem


def test_enrollment_hands_out_credentials_once(client, controller, release_key):
    r = client.post("/api/v1/enrollment-tokens", json={"tags": ["lab"]})
    assert r.status_code == 201
    token = r.json()["token"]
    r = client.post("/api/v1/enroll", json={"token": token, "device_id": "cam-1", "device_public_key_pem": PEM},
                    headers={"Authorization": ""})
    assert r.status_code == 201
    creds = r.json()
    assert creds["device_id"] == "cam-1" and creds["mqtt_username"] == "cam-1"
    assert creds["broker_url"] == "mqtt://127.0.0.1:1" and creds["topic_prefix"] == "edgefleet/v1"
    assert key_id(load_public_key_pem(creds["controller_public_key_pem"].encode())) == controller.controller_key_id
    assert [key_id(load_public_key_pem(p.encode())) for p in creds["release_public_keys_pem"]] == \
        [key_id(release_key.public_key())]
    again = client.post("/api/v1/enroll", json={"token": token, "device_id": "cam-2", "device_public_key_pem": PEM},
                        headers={"Authorization": ""})
    assert again.status_code == 401
    device = client.get("/api/v1/devices/cam-1").json()
    assert device["tags"] == ["lab"] and device["online"] is False
    with controller.session() as s:
        stored = s.get(Device, "cam-1")
        assert auth.check_mosquitto_password(creds["mqtt_password"], stored.mqtt_password_hash)
    assert "cam-1:$7$101$" in client.get("/api/v1/broker/passwd").text


def test_enrollment_rejects_bad_tokens_and_ids(client, clock):
    anon = {"Authorization": ""}
    assert client.post("/api/v1/enroll", json={"token": "efe_unknown-token", "device_public_key_pem": PEM},
                       headers=anon).status_code == 401
    assert client.post("/api/v1/enroll", json={}, headers=anon).status_code == 422
    token = client.post("/api/v1/enrollment-tokens", json={"ttl_s": 10}).json()["token"]
    r = client.post("/api/v1/enroll", json={"token": token, "device_id": "bad/id", "device_public_key_pem": PEM},
                    headers=anon)
    assert r.status_code == 422
    clock.advance(11)
    assert client.post("/api/v1/enroll", json={"token": token, "device_id": "late", "device_public_key_pem": PEM},
                       headers=anon).status_code == 401
    assert client.post("/api/v1/enrollment-tokens", json={"device_id": "../x"}).status_code == 422
    assert client.post("/api/v1/enrollment-tokens", json={"ttl_s": -1}).status_code == 422


def test_pinned_token_and_re_enrollment(client, fleet):
    first = fleet.enroll("pinned")
    other = client.post("/api/v1/enrollment-tokens", json={}).json()["token"]
    r = client.post("/api/v1/enroll", json={"token": other, "device_id": "pinned", "device_public_key_pem": PEM},
                    headers={"Authorization": ""})
    assert r.status_code == 409   # an unpinned token cannot take over an existing id
    second = fleet.enroll("pinned")  # fleet.enroll pins the token to the id: credentials rotate
    assert second["api_token"] != first["api_token"]
    old = {"Authorization": f"Bearer {first['api_token']}"}
    assert client.get(f"/api/v1/bundles/{'0' * 64}/download", headers=old).status_code == 401


def test_hello_and_state_update_facts_and_online(client, fleet, clock, controller):
    fleet.enroll("edge-1")
    fleet.hello("edge-1", runtimes=("onnx", "tflite"), arch="aarch64", hardware_class="rpi4")
    d = client.get("/api/v1/devices/edge-1").json()
    assert d["online"] and d["arch"] == "aarch64" and d["runtimes"] == ["onnx", "tflite"]
    assert d["hardware_class"] == "rpi4" and d["last_seen"] == clock()
    fleet.state("edge-1", "offline")
    assert client.get("/api/v1/devices/edge-1").json()["online"] is False
    clock.advance(5)
    fleet.state("edge-1", "online", heartbeat_interval_s=10)
    assert client.get("/api/v1/devices", params={"online": True}).json()[0]["id"] == "edge-1"
    clock.advance(59)
    controller.reconcile()
    assert client.get("/api/v1/devices/edge-1").json()["online"] is True
    clock.advance(2)
    report = controller.reconcile()
    assert report.went_offline == ["edge-1"]
    assert client.get("/api/v1/devices/edge-1").json()["online"] is False
    assert controller.reconcile().went_offline == []   # a second pass changes nothing


def test_tags_and_hardware_class(client, fleet):
    fleet.enroll("t1", tags=["a"])
    r = client.patch("/api/v1/devices/t1", json={"add_tags": ["b", "c"], "remove_tags": ["a"]})
    assert r.json()["tags"] == ["b", "c"]
    assert client.patch("/api/v1/devices/t1", json={"tags": ["x"], "hardware_class": "jetson"}).json() \
        == client.get("/api/v1/devices/t1").json()
    assert client.get("/api/v1/devices", params={"tag": "x"}).json()[0]["hardware_class"] == "jetson"
    assert client.patch("/api/v1/devices/t1", json={"tags": ["bad tag!"]}).status_code == 422
    assert client.patch("/api/v1/devices/nope", json={"tags": []}).status_code == 404
    assert client.get("/api/v1/audit", params={"action": "device.tags"}).json()[0]["target"] == "device:t1"


def test_device_list_pages(client, fleet):
    for i in range(5):
        fleet.enroll(f"p{i}", tags=["odd"] if i % 2 else [])
    ids = lambda **params: [d["id"] for d in client.get("/api/v1/devices", params=params).json()]  # noqa: E731
    assert ids(limit=2) == ["p0", "p1"] and ids(offset=2, limit=2) == ["p2", "p3"]
    assert ids(tag="odd", offset=1) == ["p3"]
    assert client.get("/api/v1/devices", params={"limit": 0}).status_code == 422


def test_decommission_revokes_and_stops_ingest(client, fleet):
    creds = fleet.add("old")
    assert client.post("/api/v1/devices/old/decommission").json()["decommissioned"] is True
    headers = {"Authorization": f"Bearer {creds['api_token']}"}
    assert client.get(f"/api/v1/bundles/{'0' * 64}/download", headers=headers).status_code == 401
    fleet.telemetry("old", 1)
    assert client.get("/api/v1/telemetry/windows", params={"device_id": "old"}).json() == []


def test_device_broker_url_overrides_what_devices_are_told(settings, clock, transport):
    app = create_app(settings.model_copy(update={"device_broker_url": "mqtts://broker.example:8883"}), clock=clock,
                     transport_factory=lambda url, cb: transport, reconcile_in_background=False)
    with TestClient(app) as client:
        client.headers["Authorization"] = f"Bearer {settings.admin_token}"
        creds = Fleet(client, app.state.controller, clock).enroll("far")
    assert creds["broker_url"] == "mqtts://broker.example:8883"


def test_heartbeats_are_not_remembered_but_hello_and_status_are(client, fleet, controller):
    fleet.add("hb")
    for _ in range(3):
        fleet.state("hb", "online")
    with controller.session() as s:
        kinds = sorted(p.kind for p in s.exec(select(ProcessedMessage)))
    assert kinds == ["hello"]
