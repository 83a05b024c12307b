"""Device identity at the message level: the controller stores only what verifies with the key of
the device the topic names (docs/security.md "Message signatures"), on any broker."""

from __future__ import annotations

import base64

import pytest

from edgefleet.cloud.store.tables import Device
from edgefleet.protocol.device_signatures import seal
from edgefleet.protocol.keys import generate_private_key, public_key_pem
from edgefleet.protocol.messages import Hello, Histogram, State, StatusReport, TelemetryWindow, encode
from edgefleet.protocol.topics import device_topic


def _rejected(controller, reason: str) -> float:
    return controller.metrics.registry.get_sample_value("edgefleet_mqtt_rejected_total", {"reason": reason}) or 0.0


def _device(client, device_id: str) -> dict:
    return client.get(f"/api/v1/devices/{device_id}").json()


def _hello(device_id: str, arch: str = "x86_64") -> Hello:
    return Hello(device_id=device_id, agent_version="0.2.0", arch=arch, os="linux", runtimes=["onnx"])


def test_one_device_cannot_speak_for_another(client, fleet, controller):
    """mallory, enrolled, publishes on the offline victim's topics with its own key: hello, state,
    telemetry and a status report for a deployment. Nothing is stored."""
    fleet.enroll("victim")
    fleet.enroll("mallory")
    before = _rejected(controller, "bad_signature")
    forged = [("hello", _hello("victim", arch="forged-arch")),
              ("state", State(device_id="victim", status="online")),
              ("telemetry", TelemetryWindow(device_id="victim", window_seq=1, window_start=0, window_end=1,
                                            requests=5, latency_ms=Histogram(bounds=[1.0], counts=[5, 0]))),
              ("status", StatusReport(device_id="victim", deployment_id="dep-x", sequence=1, state="committed",
                                      final=True, outcome="committed"))]
    for kind, message in forged:
        topic = device_topic("victim", kind)
        result = fleet.send_raw(topic, fleet.sealed(topic, encode(message), signer="mallory"))
        assert result.stored == 0 and result.rejected == {"bad_signature": 1}, kind
    assert _rejected(controller, "bad_signature") == before + len(forged)
    victim = _device(client, "victim")
    assert victim["online"] is False and not victim["arch"]
    assert client.get("/api/v1/telemetry/windows", params={"device_id": "victim"}).json() == []


def test_an_altered_payload_or_another_topic_does_not_verify(client, fleet, controller):
    fleet.add("d1")
    topic = device_topic("d1", "hello")
    sealed = fleet.sealed(topic, encode(_hello("d1", arch="aarch64")))
    altered = sealed.replace(b"aarch64", b"riscv64")
    assert fleet.send_raw(topic, altered).rejected == {"bad_signature": 1}
    # the same signed bytes under another kind of the same device (a hello replayed as state)
    assert fleet.send_raw(device_topic("d1", "state"), sealed).rejected == {"bad_signature": 1}
    assert _device(client, "d1")["arch"] == "x86_64"
    assert fleet.send_raw(topic, sealed).stored == 1
    assert _device(client, "d1")["arch"] == "aarch64"


def test_unsigned_and_badly_encoded_signatures_are_refused(client, fleet):
    fleet.add("d2")
    topic = device_topic("d2", "hello")
    body = encode(_hello("d2", arch="armv7"))
    assert fleet.send_raw(topic, body).rejected == {"unsigned": 1}
    not_base64 = body[:-1] + b',"device_sig":"' + b"!" * 88 + b'"}'
    assert fleet.send_raw(topic, not_base64).rejected == {"bad_signature": 1}
    assert _device(client, "d2")["arch"] == "x86_64"


def test_re_enrollment_replaces_the_key_and_decommission_silences_the_device(client, fleet):
    fleet.add("d3")
    old_key = fleet.keys["d3"].key
    token = client.post("/api/v1/enrollment-tokens", json={"device_id": "d3"}).json()["token"]
    new_key = generate_private_key()
    r = client.post("/api/v1/enroll", json={"token": token, "device_id": "d3",
                                            "device_public_key_pem": public_key_pem(new_key.public_key()).decode()},
                    headers={"Authorization": ""})
    assert r.status_code == 201, r.text
    topic = device_topic("d3", "hello")
    assert fleet.send_raw(topic, seal(old_key, topic, encode(_hello("d3", "old")))).rejected == {"bad_signature": 1}
    assert fleet.send_raw(topic, seal(new_key, topic, encode(_hello("d3", "new")))).stored == 1
    assert client.post("/api/v1/devices/d3/decommission").status_code == 200
    assert fleet.send_raw(topic, seal(new_key, topic, encode(_hello("d3", "after")))).rejected == \
        {"unknown_device": 1}
    assert _device(client, "d3")["arch"] == "new"


def test_enrollment_without_a_message_key_is_refused_and_consumes_nothing(client):
    token = client.post("/api/v1/enrollment-tokens", json={"device_id": "old-agent"}).json()["token"]
    r = client.post("/api/v1/enroll", json={"token": token, "device_id": "old-agent"}, headers={"Authorization": ""})
    assert r.status_code == 400 and "device_public_key_pem" in r.text
    assert client.get("/api/v1/devices/old-agent").status_code == 404
    r = client.post("/api/v1/enroll", json={"token": token, "device_id": "old-agent", "device_public_key_pem": "x"},
                    headers={"Authorization": ""})
    assert r.status_code == 400 and "device_public_key_pem" in r.text
    pem = public_key_pem(generate_private_key().public_key()).decode()
    r = client.post("/api/v1/enroll", json={"token": token, "device_id": "old-agent", "device_public_key_pem": pem},
                    headers={"Authorization": ""})
    assert r.status_code == 201, r.text   # the token was not used up by the refusals


@pytest.fixture
def legacy(settings):
    """A controller migrating from before message signatures (accept_unsigned_devices)."""
    settings.accept_unsigned_devices = True
    return settings


def _basic(user: str, password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


def test_a_device_enrolled_before_signatures_registers_its_key_once(legacy, client, fleet, controller):
    token = client.post("/api/v1/enrollment-tokens", json={"device_id": "legacy"}).json()["token"]
    creds = client.post("/api/v1/enroll", json={"token": token, "device_id": "legacy"},
                        headers={"Authorization": ""}).json()
    topic = device_topic("legacy", "hello")
    assert fleet.send_raw(topic, encode(_hello("legacy", "unsigned-ok"))).stored == 1   # migration mode
    key = generate_private_key()
    pem = public_key_pem(key.public_key()).decode()
    url = "/api/v1/device/message-key"
    assert client.post(url, json={"public_key_pem": pem}, headers=_basic("legacy", "wrong")).status_code == 401
    r = client.post(url, json={"public_key_pem": pem}, headers=_basic("legacy", creds["mqtt_password"]))
    assert r.status_code == 200, r.text
    assert client.post(url, json={"public_key_pem": pem},
                       headers=_basic("legacy", creds["mqtt_password"])).status_code == 200   # idempotent
    other = public_key_pem(generate_private_key().public_key()).decode()
    r = client.post(url, json={"public_key_pem": other}, headers=_basic("legacy", creds["mqtt_password"]))
    assert r.status_code == 409 and "re-enroll" in r.text
    # from now on only signed messages count, whatever the migration setting says
    assert fleet.send_raw(topic, encode(_hello("legacy", "unsigned-now"))).rejected == {"unsigned": 1}
    assert fleet.send_raw(topic, seal(key, topic, encode(_hello("legacy", "signed")))).stored == 1
    assert _device(client, "legacy")["arch"] == "signed"
    audit = [e["action"] for e in client.get("/api/v1/audit").json()]
    assert "device.message_key" in audit


def test_without_the_migration_setting_a_keyless_device_is_not_heard(client, fleet, controller):
    """A device row without a key (enrolled by an older controller) is refused, not trusted."""
    fleet.add("k1")
    with controller.session() as session:
        device = session.get(Device, "k1")
        device.message_key = ""
        session.add(device)
        session.commit()
    topic = device_topic("k1", "hello")
    result = fleet.send_raw(topic, encode(_hello("k1", "unsigned")))
    assert result.rejected == {"unsigned": 1}
