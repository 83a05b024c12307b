"""A broker without MQTT 5 (RabbitMQ 3.10, NATS 2.9) refusing an agent configured for it: the log line
says which setting to change."""

from __future__ import annotations

import logging

import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.reasoncodes import ReasonCode

from edgefleet.agent.config import AgentConfig
from edgefleet.agent.mqtt import MqttLink


@pytest.mark.parametrize("protocol,hinted", [("5", True), ("3.1.1", False)])
def test_a_refused_mqtt5_connection_names_the_setting(tmp_path, caplog, protocol, hinted):
    link = MqttLink(AgentConfig(device_id="cam-1", state_dir=tmp_path, mqtt_protocol=protocol))
    refused = ReasonCode(PacketTypes.CONNACK, "Unsupported protocol version")
    with caplog.at_level(logging.WARNING, logger="edgefleet.agent.mqtt"):
        link._connected(link.client, None, None, refused, None)
    assert link.connected is False
    (line,) = [r.getMessage() for r in caplog.records]
    assert "Unsupported protocol version" in line
    assert ('set mqtt_protocol = "3.1.1"' in line) is hinted
