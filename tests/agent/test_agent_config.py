from __future__ import annotations

from pathlib import Path

import pytest

from edgefleet.agent.config import load_config
from edgefleet.protocol.errors import ConfigError


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "agent.toml"
    p.write_text(text)
    return p


BASE = 'device_id = "cam-7"\nstate_dir = "state"\n'


def test_defaults_and_relative_paths(tmp_path):
    cfg = load_config(write(tmp_path, BASE + 'release_keys = ["keys/r.pub"]\n'), environ={})
    assert cfg.state_dir == tmp_path / "state"
    assert cfg.release_keys == [tmp_path / "keys" / "r.pub"]
    assert (cfg.broker.host, cfg.broker.port, cfg.broker.tls) == ("127.0.0.1", 1883, False)
    assert cfg.listen == ("127.0.0.1", 8470)


def test_environment_overrides_file(tmp_path):
    env = {"EDGEFLEET_AGENT_BROKER_URL": "mqtts://broker.example:8884", "EDGEFLEET_AGENT_TAGS": "line-1, eu",
           "EDGEFLEET_AGENT_TELEMETRY_INTERVAL_S": "5", "EDGEFLEET_AGENT_INFERENCE_LISTEN": "off",
           "OTHER": "x"}
    cfg = load_config(write(tmp_path, BASE), environ=env)
    assert (cfg.broker.host, cfg.broker.port, cfg.broker.tls) == ("broker.example", 8884, True)
    assert cfg.tags == ["line-1", "eu"] and cfg.telemetry_interval_s == 5.0 and cfg.listen is None


def test_environment_alone_is_enough(tmp_path):
    cfg = load_config(None, environ={"EDGEFLEET_AGENT_DEVICE_ID": "d", "EDGEFLEET_AGENT_STATE_DIR": str(tmp_path)})
    assert cfg.device_id == "d"


@pytest.mark.parametrize("text,env,where,words", [
    ('state_dir = "s"\n', {}, "device_id", "required"),
    (BASE + "telemetry_interval_s = 0\n", {}, "telemetry_interval_s", "greater than 0"),
    (BASE + 'broker_url = "http://x"\n', {}, "broker_url", "mqtt://"),
    (BASE + "bogus = 1\n", {}, "bogus", "unknown"),
    (BASE + 'inference_listen = "nope"\n', {}, "inference_listen", "host:port"),
    ('device_id = "bad id!"\nstate_dir = "s"\n', {}, "device_id", "invalid device id"),
    (BASE, {"EDGEFLEET_AGENT_HEARTBEAT_INTERVAL_S": "often"}, "EDGEFLEET_AGENT_HEARTBEAT_INTERVAL_S", "number"),
    (BASE, {"EDGEFLEET_AGENT_NOPE": "1"}, "EDGEFLEET_AGENT_NOPE", "unknown"),
])
def test_bad_config_names_the_key_and_source(tmp_path, text, env, where, words):
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_config(path, environ=env)
    msg = str(info.value)
    assert where in msg and words in msg and "\n" not in msg
    if not where.startswith("EDGEFLEET"):
        assert str(path) in msg


def test_unreadable_or_invalid_file(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "missing.toml", environ={})
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(write(tmp_path, "device_id = \n"), environ={})
