"""Broker identity (services/broker_identity.py, mqtt/dynsec.py) with a recording fake in place of
the dynamic-security plugin: what enrollment, decommission, rotation and the reconciler ask of the
broker, and what stays when the broker does not answer (an enrollment fails whole, a decommission is
finished later); the exact roles; the plugin's answers read right; and the embedded broker refused
beyond loopback unless insecure_broker says so (settings, Controller and ``edgefleet serve``)."""

from __future__ import annotations

import json
import os
from contextlib import contextmanager

import pytest
from sqlmodel import select

from edgefleet.cloud.cli import devices as cli_devices
from edgefleet.cloud.controller import Controller
from edgefleet.cloud.mqtt.broker import check_listen_address, is_loopback
from edgefleet.cloud.mqtt.dynsec import (
    PUBLISH_RECEIVE,
    PUBLISH_SEND,
    SUBSCRIBE_LITERAL,
    Acl,
    DynsecClient,
    DynsecCommandError,
    DynsecIdentity,
    check,
    controller_acls,
    device_acls,
    role_changes,
)
from edgefleet.cloud.services import auth
from edgefleet.cloud.settings import ControllerSettings
from edgefleet.cloud.store.tables import AuditEntry, Device
from edgefleet.protocol.errors import ConfigError, TransportError

from cloudkit import cli_runner
from testkit import DeviceKey, free_port

PEM = DeviceKey().pem
P = "edgefleet/v1"


class RecordingBroker:
    """Stands in for :class:`DynsecIdentity`: records each call, or fails all of them like a broker
    that is away."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, ...]] = []
        self.failing = False

    def _do(self, *call: str) -> None:
        if self.failing:
            raise TransportError("cannot reach the broker at mqtt://broker.test:1883 as the dynamic-security admin: "
                                 "connection refused", where="broker_admin_url", hint="is the broker up?")
        self.calls.append(call)

    def provision_device(self, device_id: str, password: str) -> None:
        self._do("provision", device_id, password)

    def disable_device(self, device_id: str) -> None:
        self._do("disable", device_id)

    def ensure_controller(self, *, username: str, password: str | None, shared_group: str | None = None) -> None:
        self._do("controller", username)


@pytest.fixture
def broker(controller) -> RecordingBroker:
    fake = RecordingBroker()
    controller.broker_identity = fake
    return fake


def token_for(client, device_id: str) -> str:
    return client.post("/api/v1/enrollment-tokens", json={"device_id": device_id}).json()["token"]


def enroll(client, token: str, device_id: str):
    return client.post("/api/v1/enroll", json={"token": token, "device_id": device_id, "device_public_key_pem": PEM},
                       headers={"Authorization": ""})


def stored(controller, device_id: str) -> Device | None:
    with controller.session() as s:
        return s.get(Device, device_id)


def actions(controller, target: str) -> list[str]:
    with controller.session() as s:
        return [e.action for e in s.exec(select(AuditEntry).where(AuditEntry.target == target))]


# ---------------------------------------------------------------- enrollment, decommission, rotation

def test_enrollment_gives_the_broker_the_devices_credentials(client, broker):
    creds = enroll(client, token_for(client, "cam-1"), "cam-1").json()
    assert broker.calls == [("provision", "cam-1", creds["mqtt_password"])]


def test_an_enrollment_the_broker_does_not_take_leaves_nothing_and_keeps_the_token(client, controller, broker):
    token = token_for(client, "cam-1")
    broker.failing = True
    r = enroll(client, token, "cam-1")
    assert r.status_code == 503
    error = r.json()["error"]
    assert error["code"] == "transport_failed" and "cam-1" in error["message"]
    assert "cannot reach the broker" in error["message"]
    assert "enrollment token is still valid" in error["hint"] and "enroll again" in error["hint"]
    assert stored(controller, "cam-1") is None and actions(controller, "device:cam-1") == []

    broker.failing = False
    assert enroll(client, token, "cam-1").status_code == 201


def test_a_failed_re_enrollment_keeps_the_old_credentials(client, controller, broker):
    first = enroll(client, token_for(client, "cam-1"), "cam-1").json()
    token = token_for(client, "cam-1")
    broker.failing = True
    assert enroll(client, token, "cam-1").status_code == 503
    assert auth.check_mosquitto_password(first["mqtt_password"], stored(controller, "cam-1").mqtt_password_hash)


def test_decommission_disables_the_broker_client(client, controller, broker):
    enroll(client, token_for(client, "cam-1"), "cam-1")
    r = client.post("/api/v1/devices/cam-1/decommission")
    assert r.status_code == 200 and r.json()["decommissioned"] and not r.json()["broker_disable_pending"]
    assert broker.calls[-1] == ("disable", "cam-1")


def test_a_decommission_the_broker_misses_is_marked_and_finished_by_the_reconciler(client, controller, broker):
    enroll(client, token_for(client, "cam-1"), "cam-1")
    broker.failing = True
    r = client.post("/api/v1/devices/cam-1/decommission")
    assert r.status_code == 200
    assert r.json()["decommissioned"] is True and r.json()["broker_disable_pending"] is True
    assert "device.broker_disable_pending" in actions(controller, "device:cam-1")
    assert stored(controller, "cam-1").message_key == ""        # the controller stops listening at once

    assert controller.sync_broker_identity() == []              # still away: still marked
    assert stored(controller, "cam-1").broker_disable_pending is True

    broker.failing = False
    controller.reconcile()
    assert ("disable", "cam-1") in broker.calls
    assert stored(controller, "cam-1").broker_disable_pending is False
    assert "device.broker_disabled" in actions(controller, "device:cam-1")
    assert controller.sync_broker_identity() == []              # nothing left to do


def test_re_enrolling_a_device_whose_disable_is_pending_clears_the_mark(client, controller, broker):
    enroll(client, token_for(client, "cam-1"), "cam-1")
    broker.failing = True
    client.post("/api/v1/devices/cam-1/decommission")
    broker.failing = False
    assert enroll(client, token_for(client, "cam-1"), "cam-1").status_code == 201
    assert stored(controller, "cam-1").broker_disable_pending is False


def test_rotation_gives_a_new_password_once_and_the_broker_takes_it(client, controller, broker):
    first = enroll(client, token_for(client, "cam-1"), "cam-1").json()
    r = client.post("/api/v1/devices/cam-1/broker-password")
    assert r.status_code == 200, r.text
    rotated = r.json()
    assert rotated["device_id"] == rotated["mqtt_username"] == "cam-1" and rotated["broker_updated"] is True
    assert rotated["mqtt_password"] != first["mqtt_password"]
    assert broker.calls[-1] == ("provision", "cam-1", rotated["mqtt_password"])
    hashed = stored(controller, "cam-1").mqtt_password_hash
    assert auth.check_mosquitto_password(rotated["mqtt_password"], hashed)
    assert not auth.check_mosquitto_password(first["mqtt_password"], hashed)
    assert "device.broker_password" in actions(controller, "device:cam-1")


def test_a_rotation_the_broker_does_not_take_changes_nothing(client, controller, broker):
    first = enroll(client, token_for(client, "cam-1"), "cam-1").json()
    broker.failing = True
    r = client.post("/api/v1/devices/cam-1/broker-password")
    assert r.status_code == 503 and "the old password still works" in r.json()["error"]["hint"]
    assert auth.check_mosquitto_password(first["mqtt_password"], stored(controller, "cam-1").mqtt_password_hash)
    assert "device.broker_password" not in actions(controller, "device:cam-1")


def test_rotation_is_refused_for_unknown_and_decommissioned_devices_and_to_non_admins(client, broker):
    assert client.post("/api/v1/devices/nobody/broker-password").status_code == 404
    enroll(client, token_for(client, "cam-1"), "cam-1")
    operator = client.post("/api/v1/tokens", json={"name": "op", "role": "operator"}).json()["token"]
    r = client.post("/api/v1/devices/cam-1/broker-password", headers={"Authorization": f"Bearer {operator}"})
    assert r.status_code == 403
    client.post("/api/v1/devices/cam-1/decommission")
    r = client.post("/api/v1/devices/cam-1/broker-password")
    assert r.status_code == 409 and "re-enroll" in r.json()["error"]["hint"]
    assert [c[0] for c in broker.calls] == ["provision", "disable"]


def test_without_a_managed_broker_rotation_changes_the_exported_password_file(client, controller):
    assert controller.broker_identity is None
    enroll(client, token_for(client, "cam-1"), "cam-1")
    before = client.get("/api/v1/broker/passwd").text
    rotated = client.post("/api/v1/devices/cam-1/broker-password").json()
    assert rotated["broker_updated"] is False
    after = client.get("/api/v1/broker/passwd").text
    (line,) = after.splitlines()
    assert after != before and auth.check_mosquitto_password(rotated["mqtt_password"], line.split(":", 1)[1])


def test_the_cli_rotates_and_shows_the_password_once(client, capsys, monkeypatch, broker):
    enroll(client, token_for(client, "cam-1"), "cam-1")
    run = cli_runner(capsys, monkeypatch, client, cli_devices)
    out = run("devices", "rotate-broker-password", "cam-1")
    password = broker.calls[-1][2]
    assert f"new MQTT password of cam-1 (shown once): {password}" in out and "agent.toml" in out
    as_json = json.loads(run("devices", "rotate-broker-password", "cam-1", "--json"))
    assert as_json["mqtt_password"] == broker.calls[-1][2] != password
    assert "no device 'nobody'" in run("devices", "rotate-broker-password", "nobody", rc=1)


# ---------------------------------------------------------------- roles and the plugin's answers

def test_a_device_role_is_its_own_topics_literally_and_nothing_else():
    acls = device_acls("cam-1", P)
    assert {(a.acltype, a.topic) for a in acls} == {
        *((PUBLISH_SEND, f"{P}/devices/cam-1/{k}") for k in ("hello", "state", "telemetry", "events", "status")),
        (SUBSCRIBE_LITERAL, f"{P}/devices/cam-1/cmd"), (PUBLISH_RECEIVE, f"{P}/devices/cam-1/cmd"),
        (SUBSCRIBE_LITERAL, f"{P}/devices/cam-1/ack"), (PUBLISH_RECEIVE, f"{P}/devices/cam-1/ack"),
        (SUBSCRIBE_LITERAL, f"{P}/devices/cam-1/state"), (PUBLISH_RECEIVE, f"{P}/devices/cam-1/state")}
    assert all(a.allow and "+" not in a.topic and "#" not in a.topic for a in acls)


def test_the_controller_role_is_what_the_bridge_does():
    acls = {(a.acltype, a.topic) for a in controller_acls(P)}
    kinds = ("hello", "state", "telemetry", "events", "status")
    assert acls == {*((SUBSCRIBE_LITERAL, f"{P}/devices/+/{k}") for k in kinds),
                    *((PUBLISH_RECEIVE, f"{P}/devices/+/{k}") for k in kinds),
                    (PUBLISH_SEND, f"{P}/devices/+/cmd"), (PUBLISH_SEND, f"{P}/devices/+/ack")}
    shared = {a.topic for a in controller_acls(P, "ctl") if a.acltype == SUBSCRIBE_LITERAL}
    assert shared == {f"$share/ctl/{P}/devices/+/{k}" for k in kinds}   # checked as the whole string


def test_role_changes_make_a_role_hold_exactly_what_is_wanted():
    wanted = [Acl(PUBLISH_SEND, "a/b"), Acl(SUBSCRIBE_LITERAL, "a/c")]
    assert role_changes("r", wanted, {"command": "getRole", "error": "Role not found"}) == [
        {"command": "createRole", "rolename": "r", "acls": [a.as_json() for a in wanted]}]
    held = {"data": {"role": {"rolename": "r", "acls": [
        {"acltype": PUBLISH_SEND, "topic": "a/b", "priority": 0, "allow": True},
        {"acltype": SUBSCRIBE_LITERAL, "topic": "a/c", "priority": 0, "allow": False},   # denied: fix it
        {"acltype": PUBLISH_SEND, "topic": "#", "priority": 0, "allow": True}]}}}         # extra: remove it
    assert role_changes("r", wanted, held) == [
        {"command": "removeRoleACL", "rolename": "r", "acltype": SUBSCRIBE_LITERAL, "topic": "a/c"},
        {"command": "removeRoleACL", "rolename": "r", "acltype": PUBLISH_SEND, "topic": "#"},
        {"command": "addRoleACL", "rolename": "r"} | Acl(SUBSCRIBE_LITERAL, "a/c").as_json()]
    exact = {"data": {"role": {"acls": [a.as_json() for a in wanted]}}}
    assert role_changes("r", wanted, exact) == []
    with pytest.raises(DynsecCommandError, match="refused getRole 'r': Internal error"):
        role_changes("r", wanted, {"error": "Internal error"})


def test_an_error_answer_names_the_command_and_the_brokers_text():
    with pytest.raises(DynsecCommandError) as caught:
        check({"command": "createClient", "username": "cam-1"}, {"command": "createClient", "error": "Client exists"})
    assert isinstance(caught.value, TransportError)
    assert caught.value.command == "createClient" and caught.value.broker_error == "Client exists"
    assert str(caught.value) == "broker_admin_url: the dynamic-security plugin refused createClient 'cam-1': " \
                                "Client exists"
    assert check({"command": "getClient"}, {"data": {}}) == {"data": {}}


def test_the_admin_client_needs_credentials_and_says_when_the_broker_is_away():
    with pytest.raises(ConfigError, match="needs a user name and password") as caught:
        DynsecClient(url="mqtt://127.0.0.1:1883")
    assert caught.value.where == "broker_admin_url"
    client = DynsecClient(url=f"mqtt://admin:pw@127.0.0.1:{free_port()}", timeout_s=2)
    with pytest.raises(TransportError, match="cannot reach the broker at mqtt://127.0.0.1:") as caught:
        client.run([{"command": "getClient", "username": "x"}])
    assert "pw" not in str(caught.value)                           # no password in the error


@pytest.mark.parametrize(("values", "where"), [
    ({"broker_url": None}, "broker_admin"),
    ({"broker_url": "mqtt://127.0.0.1:1883"}, "broker_url"),
    ({"broker_url": "mqtt://ctl:pw@127.0.0.1:1883", "broker_admin_url": "mqtt://127.0.0.1:1883"}, "broker_admin_url"),
])
def test_a_managed_broker_needs_mosquitto_and_named_users(tmp_path, values, where):
    settings = ControllerSettings(data_dir=tmp_path / "ctl", broker_admin="dynsec", **values)
    with pytest.raises(ConfigError) as caught:
        Controller(settings)
    assert caught.value.where == where and not (tmp_path / "ctl").exists()


class ScriptedPlugin:
    """Stands in for :class:`DynsecClient`: answers ``get*`` commands from ``held`` and records the
    commands each batch sends."""

    where = "broker_admin_url"

    def __init__(self, held: dict[str, dict]) -> None:
        self.held = held
        self.sent: list[dict] = []

    @contextmanager
    def session(self):
        yield self

    def _answer(self, command: dict) -> dict:
        if command["command"] == "getDefaultACLAccess":
            return {"data": {"acls": [{"acltype": PUBLISH_SEND, "allow": True}]}}
        key = command.get("username") or command.get("rolename")
        if command["command"] in ("getClient", "getRole"):
            found = self.held.get(key)
            kind = "client" if command["command"] == "getClient" else "role"
            return {"data": {kind: found}} if found else {"error": f"{kind.title()} not found"}
        self.sent.append(command)
        return {}

    def run(self, commands):
        return [self._answer(c) for c in commands]

    call = run


def test_provisioning_a_new_device_creates_its_role_and_bound_client():
    plugin = ScriptedPlugin({})
    DynsecIdentity(plugin, prefix=P).provision_device("cam-1", "pw1")
    assert plugin.sent == [
        {"command": "createRole", "rolename": "edgefleet-device-cam-1", "acls": [a.as_json() for a in
                                                                                device_acls("cam-1", P)]},
        {"command": "createClient", "username": "cam-1", "password": "pw1", "clientid": "cam-1",
         "roles": [{"rolename": "edgefleet-device-cam-1"}]}]


def test_provisioning_an_existing_client_makes_it_exactly_the_devices_again():
    role = {"rolename": "edgefleet-device-cam-1", "acls": [a.as_json() for a in device_acls("cam-1", P)]}
    client = {"username": "cam-1", "clientid": "other", "disabled": True, "roles": [{"rolename": "admin"}],
              "groups": [{"groupname": "everyone"}]}
    plugin = ScriptedPlugin({"cam-1": client, "edgefleet-device-cam-1": role})
    DynsecIdentity(plugin, prefix=P).provision_device("cam-1", "pw2")
    assert plugin.sent == [
        {"command": "setClientPassword", "username": "cam-1", "password": "pw2"},
        {"command": "setClientId", "username": "cam-1", "clientid": "cam-1"},
        {"command": "removeClientRole", "username": "cam-1", "rolename": "admin"},
        {"command": "addClientRole", "username": "cam-1", "rolename": "edgefleet-device-cam-1"},
        {"command": "removeGroupClient", "groupname": "everyone", "username": "cam-1"},
        {"command": "enableClient", "username": "cam-1"}]


def test_the_controllers_role_is_added_to_an_existing_user_without_touching_its_password(caplog):
    plugin = ScriptedPlugin({"ctl": {"username": "ctl", "roles": [{"rolename": "admin"}]}})
    DynsecIdentity(plugin, prefix=P).ensure_controller(username="ctl", password="pw")
    assert plugin.sent[0]["command"] == "createRole" and plugin.sent[0]["rolename"] == "edgefleet-controller"
    assert plugin.sent[1:] == [{"command": "addClientRole", "username": "ctl", "rolename": "edgefleet-controller"}]
    assert "default ACL access allows publishClientSend to every client" in caplog.text

    fresh = ScriptedPlugin({})
    DynsecIdentity(fresh, prefix=P).ensure_controller(username="ctl", password="pw")
    assert fresh.sent[-1] == {"command": "createClient", "username": "ctl", "password": "pw",
                              "roles": [{"rolename": "edgefleet-controller"}]}
    with pytest.raises(ConfigError, match="gives no password"):
        DynsecIdentity(ScriptedPlugin({}), prefix=P).ensure_controller(username="ctl", password=None)


def test_disabling_a_device_the_plugin_does_not_know_is_no_error():
    plugin = ScriptedPlugin({})
    plugin.run = lambda commands: [{"error": "Client not found"}]
    DynsecIdentity(plugin, prefix=P).disable_device("old-cam")
    plugin.run = lambda commands: [{"error": "Internal error"}]
    with pytest.raises(DynsecCommandError, match="refused disableClient 'old-cam': Internal error"):
        DynsecIdentity(plugin, prefix=P).disable_device("old-cam")


# ---------------------------------------------------------------- the embedded broker beyond loopback

@pytest.mark.parametrize(("host", "loopback"), [
    ("127.0.0.1", True), ("127.0.0.2", True), ("::1", True), ("[::1]", True), ("localhost", True),
    ("0.0.0.0", False), ("::", False), ("", False), ("192.168.1.5", False), ("broker.example", False),
])
def test_only_loopback_addresses_count_as_this_machine(host, loopback):
    assert is_loopback(host) is loopback


def test_the_embedded_broker_beyond_loopback_is_refused_unless_insecure_says_so():
    with pytest.raises(ConfigError) as caught:
        check_listen_address("0.0.0.0", insecure=False)
    error = caught.value
    assert error.where == "embedded_broker_host" and "checks no credentials" in error.message
    assert "dynamic-security" in error.hint and "--insecure-broker" in error.hint
    check_listen_address("0.0.0.0", insecure=True)
    check_listen_address("127.0.0.1", insecure=False)


def test_the_controller_refuses_before_it_makes_anything(tmp_path):
    settings = ControllerSettings(data_dir=tmp_path / "ctl", embedded_broker_host="0.0.0.0")
    with pytest.raises(ConfigError, match="checks no credentials"):
        Controller(settings)
    assert not (tmp_path / "ctl").exists()
    # a broker URL means no embedded broker: nothing to refuse
    Controller(ControllerSettings(data_dir=tmp_path / "ctl", embedded_broker_host="0.0.0.0",
                                  broker_url="mqtt://127.0.0.1:1")).engine.dispose()


def test_edgefleet_serve_says_why_it_refuses_and_what_to_do(tmp_path, capsys, monkeypatch):
    from edgefleet.cloud.cli import main as cli

    for name in [k for k in os.environ if k.startswith("EDGEFLEET_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("EDGEFLEET_EMBEDDED_BROKER_HOST", "0.0.0.0")
    capsys.readouterr()
    rc = cli(["serve", "--data-dir", str(tmp_path / "ctl"), "--port", str(free_port())])
    out = capsys.readouterr()
    assert rc == 2, out
    (line,) = [x for x in out.err.splitlines() if x.strip()]
    assert line.startswith("error: embedded_broker_host: the embedded MQTT broker would listen on '0.0.0.0'")
    assert "--insecure-broker" in line and "Traceback" not in out.err
    assert not (tmp_path / "ctl").exists()
