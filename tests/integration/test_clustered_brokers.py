"""The controller and the agent, unchanged, on every broker they are meant for: Mosquitto, the
embedded broker, RabbitMQ's MQTT plugin (one RabbitMQ user per client, topic permissions confining
each to its own topics) and a three-node NATS cluster with JetStream through its MQTT interface,
with the controller on one node and each device on another.

On each: enrollment, hello and heartbeat, telemetry stored, an order -> download -> install ->
final status, and a device killed without a goodbye shows offline through its last will while
keeping its real update state and bundle (the will was built when it connected, before the update).
Then what each broker lacks, measured on the broker itself, and the precise errors the controller
gives for what cannot work there."""

from __future__ import annotations

import json
import secrets
import tomllib
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from brokerkit import NatsCluster, RabbitUsers, enroll_agent, rabbitmq_mqtt
from fleetkit import Agents
from paho.mqtt.enums import CallbackAPIVersion

from edgefleet.cloud.cli.client import ApiError, ControllerClient
from edgefleet.cloud.server import BackgroundServer
from edgefleet.cloud.settings import ControllerSettings
from edgefleet.cloud.vocabulary import BrokerKind
from edgefleet.protocol.errors import ConfigError
from edgefleet.protocol.topics import CONTROLLER_KINDS, DEVICE_KINDS

from agentkit.bundles import make_bundle
from testkit import free_port, wait_until

pytestmark = pytest.mark.integration

ADMIN = "eft_" + secrets.token_urlsafe(16)
DEVICES = ("cam-1", "cam-2")


@dataclass
class BrokerSetup:
    """How the controller and each device reach one broker."""

    name: str
    kind: BrokerKind | None
    controller_url: str | None
    """``None``: the controller starts the embedded broker."""
    device_urls: list[str | None]
    """Per device (``None``: the URL the controller announces at enrollment)."""
    rabbit: RabbitUsers | None = None
    nodes: list[str] = field(default_factory=list)


@pytest.fixture(params=["mosquitto", "embedded", "rabbitmq", "nats-cluster"])
def broker(request, tmp_path, topic_prefix) -> Iterator[BrokerSetup]:
    name = request.param
    if name == "mosquitto":
        url = request.getfixturevalue("mqtt_broker").url
        yield BrokerSetup(name, BrokerKind.MOSQUITTO, url, [None, None])
    elif name == "embedded":
        yield BrokerSetup(name, None, None, [None, None])
    elif name == "rabbitmq":
        host, port = rabbitmq_mqtt()
        users = RabbitUsers()
        user, password = f"efctl-{uuid.uuid4().hex[:8]}", secrets.token_urlsafe(12)
        users.add(user, password, publish=[f"{topic_prefix}/devices/+/{kind}" for kind in CONTROLLER_KINDS],
                  subscribe=[f"{topic_prefix}/devices/+/{kind}" for kind in DEVICE_KINDS])
        try:
            yield BrokerSetup(name, BrokerKind.RABBITMQ, f"mqtt://{user}:{password}@{host}:{port}", [None, None],
                              rabbit=users)
        finally:
            users.remove_all()
    else:
        cluster = NatsCluster(tmp_path / "nats").start()
        try:   # the controller on node 1, the devices on nodes 2 and 3
            yield BrokerSetup(name, BrokerKind.NATS, cluster.mqtt_url(0), [cluster.mqtt_url(1), cluster.mqtt_url(2)],
                              nodes=cluster.names)
        finally:
            cluster.stop()


@pytest.fixture
def controller(broker, tmp_path, topic_prefix, release_key) -> Iterator[BackgroundServer]:
    client_id = broker.controller_url.split("//")[1].split(":")[0] if broker.rabbit else f"ctl-{uuid.uuid4().hex[:8]}"
    settings = ControllerSettings(data_dir=tmp_path / "controller", listen_port=free_port(),
                                  broker_url=broker.controller_url, broker_kind=broker.kind, topic_prefix=topic_prefix,
                                  release_key_paths=[release_key.public_path], admin_token=ADMIN,
                                  mqtt_client_id=client_id, reconcile_interval_s=0.5, heartbeat_timeout_s=30,
                                  deployment_timeout_s=120)
    server = BackgroundServer(settings).start()
    wait_until(lambda: server.controller.transport.connected, "the controller's MQTT bridge connected")
    yield server
    server.stop()


def predict(state_dir: Path, rows: list[list[float]]) -> dict:
    """One request to the device's local inference endpoint (the tiny model's input is ``x``)."""
    addr = wait_until(lambda: (state_dir / "inference.addr").exists() and (state_dir / "inference.addr").read_text(),
                      "inference address")
    req = urllib.request.Request(f"http://{addr.strip()}/v1/predict", data=json.dumps({"inputs": {"x": rows}}).encode(),
                                 headers={"Content-Type": "application/json"}, method="POST")
    with urllib.request.urlopen(req, timeout=30) as resp:
        return json.loads(resp.read())


def test_the_fleet_works_on_this_broker(broker, controller, tmp_path, topic_prefix, release_key, tiny_onnx):
    api = ControllerClient(controller.url, ADMIN)
    agents = Agents(tmp_path)
    try:
        dirs = {d: enroll_agent(api, controller.url, tmp_path, d, url, broker.rabbit, topic_prefix)
                for d, url in zip(DEVICES, broker.device_urls, strict=True)}
        urls = {d: tomllib.loads((p / "agent.toml").read_text())["broker_url"] for d, p in dirs.items()}
        if broker.nodes:
            assert len(set(urls.values()) | {broker.controller_url}) == 3, urls   # three nodes, one each
        procs = {d: agents.run(p) for d, p in dirs.items()}

        def shown(device_id: str) -> dict:
            return api.get(f"/api/v1/devices/{device_id}")

        for device_id in DEVICES:   # hello (facts) and heartbeat (online) through the broker
            wait_until(lambda d=device_id: shown(d)["online"] and shown(d)["agent_version"], f"{device_id} online",
                       timeout=60)

        data = make_bundle(tiny_onnx, release_key.private, name="tiny", version="1.0.0")
        digest = api.request("POST", "/api/v1/bundles", content=data,
                             headers={"Content-Type": "application/octet-stream"})["digest"]
        dep = api.post("/api/v1/deployments", {"bundle": digest, "device_ids": list(DEVICES)})
        final = wait_until(lambda: (d := api.get(f"/api/v1/deployments/{dep['id']}"))["status"] != "active" and d,
                           "the deployment finished", timeout=120)
        assert final["status"] == "succeeded", final
        assert sorted((t["device_id"], t["outcome"]) for t in final["targets"]) == \
            [(d, "committed") for d in DEVICES]

        for device_id, state_dir in dirs.items():   # telemetry windows of the new bundle reach the store
            assert predict(state_dir, [[0.1, 0.2, 0.3, 0.4]] * 5)["bundle"]["digest"] == digest
            wait_until(lambda d=device_id: any(w["requests"] > 0 and w["bundle_digest"] == digest
                                               for w in api.get(f"/api/v1/devices/{d}/telemetry")),
                       f"{device_id}'s telemetry stored", timeout=60)
            wait_until(lambda d=device_id: shown(d)["update_state"] == "committed", f"{device_id} heartbeat")

        procs["cam-1"].kill()   # no DISCONNECT: the broker publishes the will the agent set at connect
        procs["cam-1"].wait(10)
        gone = wait_until(lambda: not (s := shown("cam-1"))["online"] and s, "cam-1 offline by its will", timeout=90)
        assert gone["update_state"] == "committed" and gone["installed"]["digest"] == digest, gone
        assert shown("cam-2")["online"] is True
    finally:
        agents.stop()
        api.close()


# --------------------------------------------------------------------------- what each broker lacks


def _connect(url: str, *, v5: bool = False) -> tuple[mqtt.Client, dict]:
    from edgefleet.protocol.brokers import parse_broker_url

    address = parse_broker_url(url)
    seen: dict = {}
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"lack-{uuid.uuid4().hex[:8]}",
                         protocol=mqtt.MQTTv5 if v5 else mqtt.MQTTv311)
    if address.username:
        client.username_pw_set(address.username, address.password)
    client.on_connect = lambda c, u, f, rc, p: seen.setdefault("connack", rc)
    client.on_disconnect = lambda c, u, f, rc, p: seen.setdefault("disconnect", rc)
    client.on_message = lambda c, u, m: seen.setdefault("messages", []).append(m.topic)
    client.connect(address.host, address.port, keepalive=10)
    client.loop_start()
    wait_until(lambda: "connack" in seen or "disconnect" in seen, "an answer to CONNECT", timeout=10)
    return client, seen


@pytest.mark.parametrize("name", ["rabbitmq", "nats-cluster"])
def test_what_rabbitmq_and_nats_lack_and_the_controller_refuses(name, tmp_path, topic_prefix, release_key):
    if name == "rabbitmq":
        host, port = rabbitmq_mqtt()
        url, kind, cluster = f"mqtt://guest:guest@{host}:{port}", BrokerKind.RABBITMQ, None
    else:
        cluster = NatsCluster(tmp_path / "nats").start()
        url, kind = cluster.mqtt_url(0), BrokerKind.NATS
    try:
        client, seen = _connect(url, v5=True)   # no MQTT 5 (so no shared subscriptions)
        assert "connack" not in seen or seen["connack"].is_failure, seen
        client.loop_stop()
        client, seen = _connect(url)
        assert not seen["connack"].is_failure
        client.subscribe(f"{topic_prefix}/#", qos=1)
        wait_until(lambda: client.publish(f"{topic_prefix}/devices/cam.1/hello", b"{}", qos=1).rc != 0
                   or "disconnect" in seen or "messages" in seen, "the dotted topic delivered or refused")
        if kind == BrokerKind.NATS:   # refused: NATS closes the connection
            assert "disconnect" in seen and "messages" not in seen, seen
        else:                          # carried under another topic: the '.' became a level separator
            assert seen["messages"][0] == f"{topic_prefix}/devices/cam/1/hello", seen
        client.loop_stop()
    finally:
        if cluster is not None:
            cluster.stop()

    base = {"data_dir": tmp_path / "controller", "broker_url": url, "broker_kind": kind, "topic_prefix": topic_prefix,
            "release_key_paths": [release_key.public_path], "admin_token": ADMIN}
    from edgefleet.cloud.controller import Controller

    with pytest.raises(ConfigError) as shared:
        Controller(ControllerSettings(**base, shared_subscription_group="ctl"), reconcile_in_background=False)
    assert shared.value.where == "shared_subscription_group" and "MQTT 5 shared subscriptions" in shared.value.message
    with pytest.raises(ConfigError) as dotted:
        Controller(ControllerSettings(**base | {"topic_prefix": "fleet.eu/v1"}), reconcile_in_background=False)
    assert dotted.value.where == "topic_prefix" and "'.'" in dotted.value.message
    assert not (tmp_path / "controller").exists()   # refused before anything was made

    server = BackgroundServer(ControllerSettings(**base, listen_port=free_port())).start()
    api = ControllerClient(server.url, ADMIN)
    try:
        with pytest.raises(ApiError) as refused:
            api.post("/api/v1/enrollment-tokens", {"device_id": "cam.1"})
        assert refused.value.status == 400 and refused.value.where == "device_id"
        assert "'.'" in refused.value.message and "letters, digits" in (refused.value.hint or "")
        assert api.get("/api/v1/enrollment-tokens") == []
        assert api.post("/api/v1/enrollment-tokens", {"device_id": "cam-1"})["token"]
    finally:
        api.close()
        server.stop()
