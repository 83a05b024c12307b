"""Issue 12 item 8 and the broker checks, as pure functions: the embedded broker's port is chosen once
and kept in the data directory (a damaged file or a taken port is a precise error); an offline state
(the last will, built at connect) changes only ``online``; what RabbitMQ and NATS cannot carry is
refused by setting name."""

from __future__ import annotations

import socket

import pytest

from edgefleet.cloud.mqtt.broker import PORT_FILE, embedded_broker_port
from edgefleet.cloud.services import broker_kinds, devices
from edgefleet.cloud.store.tables import Device
from edgefleet.cloud.vocabulary import BrokerKind
from edgefleet.protocol.errors import ConfigError, InvalidRequestError
from edgefleet.protocol.messages import InstalledBundle, State
from edgefleet.protocol.vocabulary import DeviceStatus, UpdateState

HOST = "127.0.0.1"


def test_the_port_is_chosen_once_and_kept(tmp_path):
    first = embedded_broker_port(tmp_path, host=HOST)
    assert (tmp_path / PORT_FILE).read_text() == f"{first}\n"
    assert embedded_broker_port(tmp_path, host=HOST) == first
    assert embedded_broker_port(tmp_path, host=HOST) == first


def test_a_configured_port_wins_and_leaves_the_file_alone(tmp_path):
    kept = embedded_broker_port(tmp_path, host=HOST)
    with socket.socket() as s:
        s.bind((HOST, 0))
        configured = s.getsockname()[1]
    assert embedded_broker_port(tmp_path, host=HOST, configured=configured) == configured
    assert (tmp_path / PORT_FILE).read_text() == f"{kept}\n"


@pytest.mark.parametrize("content", ["", "abc", "0", "70000", "-5", "12 34"])
def test_a_damaged_port_file_is_refused_and_left_as_it_is(tmp_path, content):
    (tmp_path / PORT_FILE).write_text(content)
    with pytest.raises(ConfigError) as err:
        embedded_broker_port(tmp_path, host=HOST)
    assert err.value.where == str(tmp_path / PORT_FILE) and "not a port number" in err.value.message
    assert "agent.toml" in err.value.hint
    assert (tmp_path / PORT_FILE).read_text() == content


@pytest.mark.parametrize("configured", [False, True])
def test_a_taken_port_says_which_where_and_what_to_do(tmp_path, configured):
    with socket.socket() as holder:
        holder.bind((HOST, 0))
        holder.listen()
        port = holder.getsockname()[1]
        if not configured:
            (tmp_path / PORT_FILE).write_text(f"{port}\n")
        with pytest.raises(ConfigError) as err:
            embedded_broker_port(tmp_path, host=HOST, configured=port if configured else 0)
    assert f"port {port} of the embedded MQTT broker" in err.value.message and "taken" in err.value.message
    assert err.value.where == ("embedded_broker_port" if configured else str(tmp_path / PORT_FILE))
    assert f"ss -ltnp 'sport = :{port}'" in err.value.hint and "embedded_broker_port" in err.value.hint
    assert (tmp_path / PORT_FILE).exists() is not configured


BUNDLE = InstalledBundle(name="m", version="2.0.0", build=2, digest="a" * 64, runtime="onnx")
OLD = InstalledBundle(name="m", version="1.0.0", build=1, digest="b" * 64, runtime="onnx")


def test_the_last_will_keeps_the_last_known_update_state_and_bundle():
    device = Device(id="cam-1", enrolled_at=0.0)
    devices.apply_state(device, State(device_id="cam-1", status=DeviceStatus.ONLINE,
                                      update_state=UpdateState.COMMITTED, installed=BUNDLE,
                                      heartbeat_interval_s=5.0), now=100.0)
    assert (device.online, device.update_state, device.last_seen) == (True, "committed", 100.0)
    # the will, built when the agent connected (before the update): idle, the old bundle
    devices.apply_state(device, State(device_id="cam-1", status=DeviceStatus.OFFLINE, update_state=UpdateState.IDLE,
                                      installed=OLD, heartbeat_interval_s=30.0), now=200.0)
    assert device.online is False
    assert device.update_state == "committed" and device.installed["digest"] == "a" * 64
    assert device.heartbeat_interval_s == 5.0
    assert device.last_seen == 100.0   # a will is not a sign of life


def test_a_heartbeat_after_the_will_brings_the_device_back():
    device = Device(id="cam-1", enrolled_at=0.0, online=False, update_state="committed")
    devices.apply_state(device, State(device_id="cam-1", status=DeviceStatus.ONLINE,
                                      update_state=UpdateState.DOWNLOADING), now=300.0)
    assert (device.online, device.update_state, device.last_seen) == (True, "downloading", 300.0)


@pytest.mark.parametrize("kind", [BrokerKind.RABBITMQ, BrokerKind.NATS])
def test_rabbitmq_and_nats_refuse_what_they_cannot_carry(kind):
    with pytest.raises(ConfigError) as err:
        broker_kinds.check_settings(kind, embedded=False, topic_prefix="edgefleet/v1", shared_group="ctl")
    assert err.value.where == "shared_subscription_group" and "MQTT 5 shared subscriptions" in err.value.message
    with pytest.raises(ConfigError) as err:
        broker_kinds.check_settings(kind, embedded=False, topic_prefix="fleet.eu/v1", shared_group=None)
    assert err.value.where == "topic_prefix" and "'.'" in err.value.message
    with pytest.raises(InvalidRequestError) as refused:
        broker_kinds.check_device_id(kind, "cam.1", embedded=False)
    assert refused.value.where == "device_id" and "cam.1" in refused.value.message
    broker_kinds.check_settings(kind, embedded=False, topic_prefix="edgefleet/v1", shared_group=None)
    broker_kinds.check_device_id(kind, "cam-1_a", embedded=False)


@pytest.mark.parametrize("kind", [None, BrokerKind.MOSQUITTO, BrokerKind.EMQX, BrokerKind.HIVEMQ, BrokerKind.VERNEMQ])
def test_brokers_with_everything_accept_dots_and_shared_subscriptions(kind):
    broker_kinds.check_settings(kind, embedded=False, topic_prefix="fleet.eu/v1", shared_group="ctl")
    broker_kinds.check_device_id(kind, "cam.1", embedded=False)


def test_the_embedded_broker_has_no_shared_subscriptions_but_carries_dots():
    with pytest.raises(ConfigError, match="the embedded broker"):
        broker_kinds.check_settings(None, embedded=True, topic_prefix="edgefleet/v1", shared_group="ctl")
    broker_kinds.check_settings(None, embedded=True, topic_prefix="fleet.eu/v1", shared_group=None)
    broker_kinds.check_device_id(None, "cam.1", embedded=True)
