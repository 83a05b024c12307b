"""Broker identity managed by the controller (``broker_admin = "dynsec"``), against private Mosquitto
instances with the real dynamic-security plugin: the controller makes its own exact role at start
and a client and role per device at enrollment; a device publishes and receives only on its own
topics (another device's topics and orders are dropped or refused by the broker itself, so neither
that device nor the controller ever sees them); a rotated or re-enrolled password, a wrong client id
and a decommissioned device no longer connect; with the broker away, an enrollment fails whole and
a decommission is finished by the reconciler once the broker is back."""

from __future__ import annotations

import secrets
import shutil
import subprocess

import pytest
from dynseckit import ADMIN_USER, Client, DynsecMosquitto, missing_parts

from edgefleet.cloud.mqtt.dynsec import CONTROLLER_ROLE, DynsecClient, controller_acls, device_acls, device_role
from edgefleet.protocol.messages import Hello, encode
from edgefleet.protocol.topics import DEVICE_KINDS, cmd, device_topic, hello, state

from controllerkit import controller_settings as base_settings
from controllerkit import enroll, running_controller
from testkit import missing_part, wait_until

pytestmark = pytest.mark.integration

CONTROLLER_USER = "edgefleet-controller"


@pytest.fixture
def dynsec(tmp_path):
    """A private Mosquitto with the plugin. Missing parts: skip locally, FAIL under CI=true."""
    missing = missing_parts()
    if missing:
        missing_part(missing)
    broker = DynsecMosquitto(tmp_path / "mosquitto").start()
    yield broker
    broker.stop()


@pytest.fixture
def controller_password() -> str:
    return secrets.token_urlsafe(12)


@pytest.fixture
def managed(tmp_path, dynsec, topic_prefix, release_key, controller_password):
    """The real controller (MQTT bridge, ingest, reconciler) as the plugin's admin."""
    settings = base_settings(tmp_path, broker_url=dynsec.url(CONTROLLER_USER, controller_password),
                             prefix=topic_prefix, release_pub=release_key.public_path, broker_admin="dynsec",
                             broker_admin_url=dynsec.admin_url)
    with running_controller(settings) as (client, controller):
        yield client, controller


@pytest.fixture
def observer(dynsec, topic_prefix):
    """The admin user (``mosquitto_ctrl dynsec init`` lets it read every topic): sees whatever the
    broker routes under the test's prefix."""
    watcher = Client(dynsec, username=ADMIN_USER, password=dynsec.admin_password, client_id="observer")
    assert watcher.subscribe(f"{topic_prefix}/#")
    yield watcher
    watcher.close()


def device(dynsec, creds: dict, *, password: str | None = None, client_id: str | None = None) -> Client:
    """A device's connection as its agent makes it (client id = device id)."""
    return Client(dynsec, username=creds["mqtt_username"], password=password or creds["mqtt_password"],
                  client_id=client_id or creds["device_id"])


def signed_hello(creds: dict, topic: str, prefix: str, *, about: str | None = None) -> bytes:
    message = Hello(device_id=about or creds["device_id"], agent_version="9.9.9", arch="forged" if about else "x86_64",
                    os="linux", runtimes=["onnx"])
    return creds["key"].seal(topic, encode(message))


def test_the_controller_makes_its_own_role_of_exactly_what_it_does(managed, dynsec, topic_prefix, observer,
                                                                  controller_password):
    client, controller = managed
    admin = DynsecClient(url=dynsec.admin_url)
    role, who = admin.call([{"command": "getRole", "rolename": CONTROLLER_ROLE},
                            {"command": "getClient", "username": CONTROLLER_USER}])
    held = {(a["acltype"], a["topic"], a["allow"]) for a in role["data"]["role"]["acls"]}
    assert held == {(a.acltype, a.topic, True) for a in controller_acls(topic_prefix)}
    assert [r["rolename"] for r in who["data"]["client"]["roles"]] == [CONTROLLER_ROLE]

    # with the controller's credentials: orders go out, a device's hello does not
    ctl = Client(dynsec, username=CONTROLLER_USER, password=controller_password, client_id="ctl-probe")
    assert ctl.accepted
    assert not ctl.subscribe(f"{topic_prefix}/devices/+/cmd")
    ctl.publish(hello("victim", topic_prefix), b"{}")
    ctl.publish(cmd("victim", topic_prefix), b"order")
    wait_until(lambda: observer.received(cmd("victim", topic_prefix)), "the controller's order routed")
    assert observer.received(hello("victim", topic_prefix)) == []
    ctl.close()


def test_a_device_speaks_and_listens_only_on_its_own_topics(managed, dynsec, topic_prefix, observer):
    client, controller = managed
    a, b = enroll(client, "cam-a"), enroll(client, "cam-b")
    admin = DynsecClient(url=dynsec.admin_url)
    role, who = admin.call([{"command": "getRole", "rolename": device_role("cam-a")},
                            {"command": "getClient", "username": "cam-a"}])
    assert {(x["acltype"], x["topic"]) for x in role["data"]["role"]["acls"]} == \
        {acl.key for acl in device_acls("cam-a", topic_prefix)}
    assert who["data"]["client"]["clientid"] == "cam-a"

    dev_a, dev_b = device(dynsec, a), device(dynsec, b)
    assert dev_a.accepted and dev_b.accepted
    assert dev_a.subscribe(cmd("cam-a", topic_prefix)) and dev_a.subscribe(state("cam-a", topic_prefix))
    assert dev_b.subscribe(cmd("cam-b", topic_prefix))
    for other in (cmd("cam-b", topic_prefix), hello("cam-b", topic_prefix), f"{topic_prefix}/devices/+/cmd",
                  f"{topic_prefix}/devices/+/hello", f"{topic_prefix}/#", "#"):
        assert not dev_a.subscribe(other), other

    # cam-a tries every topic of cam-b, and its own orders topic: the broker drops all of it
    for kind in DEVICE_KINDS:
        topic = device_topic("cam-b", kind, topic_prefix)
        dev_a.publish(topic, signed_hello(a, topic, topic_prefix, about="cam-b"))
    dev_a.publish(cmd("cam-b", topic_prefix), b"forged order for cam-b")
    dev_a.publish(cmd("cam-a", topic_prefix), b"forged order for itself")
    # and mosquitto_pub with cam-a's credentials (its client id is bound: it must use it), as cam-b
    forged_topic = hello("cam-b", topic_prefix)
    sent = subprocess.run([shutil.which("mosquitto_pub") or "mosquitto_pub", "-h", "127.0.0.1", "-p", str(dynsec.port),
                           "-u", "cam-a", "-P", a["mqtt_password"], "-i", "cam-a-2", "-q", "1", "-t", forged_topic,
                           "-s"], input=signed_hello(a, forged_topic, topic_prefix, about="cam-b"),
                          capture_output=True, timeout=30)
    assert sent.returncode != 0, "a second client id for cam-a must be refused"
    # then speaks on its own topic, and the controller sends it an order
    own = hello("cam-a", topic_prefix)
    dev_a.publish(own, signed_hello(a, own, topic_prefix))
    controller.publish(cmd("cam-a", topic_prefix), b"order from the controller")

    wait_until(lambda: client.get("/api/v1/devices/cam-a").json()["arch"] == "x86_64", "cam-a's hello stored")
    wait_until(lambda: dev_a.received(cmd("cam-a", topic_prefix)), "the controller's order delivered to cam-a")
    wait_until(lambda: observer.received(own), "cam-a's hello routed")
    assert dev_a.received(cmd("cam-a", topic_prefix)) == [b"order from the controller"]
    assert observer.received(cmd("cam-a", topic_prefix)) == [b"order from the controller"]
    assert [t for t, _ in observer.messages if "/cam-b/" in t] == []
    assert dev_b.received(cmd("cam-b", topic_prefix)) == []
    # mosquitto_pub as cam-a, with its bound client id: cam-b's hello is dropped, its own goes through
    for topic, about in ((hello("cam-b", topic_prefix), "cam-b"), (own, None)):
        sent = subprocess.run([shutil.which("mosquitto_pub") or "mosquitto_pub", "-h", "127.0.0.1", "-p",
                               str(dynsec.port), "-u", "cam-a", "-P", a["mqtt_password"], "-i", "cam-a", "-q", "1",
                               "-t", topic, "-s"], input=signed_hello(a, topic, topic_prefix, about=about),
                              capture_output=True, timeout=30)
        assert sent.returncode == 0, sent.stderr
    wait_until(lambda: len(observer.received(own)) >= 2, "cam-a's second hello routed")
    assert [t for t, _ in observer.messages if "/cam-b/" in t] == []
    victim = client.get("/api/v1/devices/cam-b").json()
    assert victim["online"] is False and victim["arch"] is None
    dev_a.close()
    dev_b.close()


def test_rotation_re_enrollment_and_decommission_cut_off_the_old_credentials(managed, dynsec):
    client, controller = managed
    creds = enroll(client, "cam-r")
    first = device(dynsec, creds)
    assert first.accepted
    assert device(dynsec, creds, client_id="not-cam-r").refused.is_set()     # the client id is bound

    r = client.post("/api/v1/devices/cam-r/broker-password")
    assert r.status_code == 200, r.text
    rotated = r.json()
    assert rotated["broker_updated"] is True and rotated["mqtt_password"] != creds["mqtt_password"]
    assert first.disconnected.wait(10)                                      # the old session is dropped
    assert device(dynsec, creds).refused.is_set()                           # the old password is refused
    second = device(dynsec, creds, password=rotated["mqtt_password"])
    assert second.accepted

    again = enroll(client, "cam-r")                                         # re-enrollment rotates too
    assert second.disconnected.wait(10)
    assert device(dynsec, creds, password=rotated["mqtt_password"]).refused.is_set()
    third = device(dynsec, again)
    assert third.accepted

    r = client.post("/api/v1/devices/cam-r/decommission")
    assert r.status_code == 200 and r.json()["broker_disable_pending"] is False
    assert third.disconnected.wait(10)
    assert device(dynsec, again).refused.is_set()
    assert controller.transport.connected                                    # the controller itself stays


def test_with_the_broker_away_enrollment_fails_whole_and_decommission_finishes_later(managed, dynsec):
    client, controller = managed
    creds = enroll(client, "cam-d")
    token = client.post("/api/v1/enrollment-tokens", json={"device_id": "cam-n"}).json()["token"]
    key = creds["key"]
    dynsec.stop()

    r = client.post("/api/v1/enroll", json={"token": token, "device_id": "cam-n", "device_public_key_pem": key.pem},
                    headers={"Authorization": ""})
    assert r.status_code == 503, r.text
    error = r.json()["error"]
    assert "cam-n" in error["message"] and "cannot reach the broker" in error["message"]
    assert "enrollment token is still valid" in error["hint"] and "enroll again" in error["hint"]
    assert client.get("/api/v1/devices/cam-n").status_code == 404

    r = client.post("/api/v1/devices/cam-d/decommission")
    assert r.status_code == 200 and r.json()["decommissioned"] is True
    assert r.json()["broker_disable_pending"] is True
    audit = client.get("/api/v1/audit", params={"target": "device:cam-d"}).json()
    assert "device.broker_disable_pending" in [e["action"] for e in audit]

    dynsec.start()
    wait_until(lambda: client.get("/api/v1/devices/cam-d").json()["broker_disable_pending"] is False,
               "the reconciler disabling cam-d on the broker")
    assert device(dynsec, creds).refused.is_set()

    r = client.post("/api/v1/enroll", json={"token": token, "device_id": "cam-n", "device_public_key_pem": key.pem},
                    headers={"Authorization": ""})
    assert r.status_code == 201, r.text                                     # the same token, unused before
    assert device(dynsec, r.json()).accepted
