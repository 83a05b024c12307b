"""The one broker-URL parser (agent and controller)."""

import pytest

from edgefleet.protocol.brokers import BrokerAddress, parse_broker_url
from edgefleet.protocol.errors import ConfigError


@pytest.mark.parametrize(("url", "expected"), [
    ("mqtt://broker", BrokerAddress("broker", 1883)),
    ("mqtts://broker", BrokerAddress("broker", 8883, tls=True)),
    ("tcp://10.0.0.1:1884", BrokerAddress("10.0.0.1", 1884)),
    ("ssl://b:8884", BrokerAddress("b", 8884, tls=True)),
    ("mqtt://ctl%40x:p%3Aw@b:1", BrokerAddress("b", 1, username="ctl@x", password="p:w")),
])
def test_parses(url, expected):
    assert parse_broker_url(url) == expected


def test_public_url_drops_credentials():
    assert parse_broker_url("mqtts://u:secret@b:9").public_url == "mqtts://b:9"
    assert parse_broker_url("mqtt://[::1]:1883").public_url == "mqtt://[::1]:1883"


@pytest.mark.parametrize(("url", "problem"), [
    ("http://b", "must start with mqtt://"),
    ("mqtt://", "has no host"),
    ("mqtt://b:99999", "bad port"),
    ("mqtt://b:port", "bad port"),
])
def test_refuses_with_the_key_named(url, problem):
    with pytest.raises(ConfigError, match=problem) as info:
        parse_broker_url(url, where="agent.toml: broker_url")
    assert info.value.where == "agent.toml: broker_url"
