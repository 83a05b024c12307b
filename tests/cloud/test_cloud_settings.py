"""Settings sources (arguments > environment > TOML file) and derived values."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from edgefleet.cloud.settings import ControllerSettings


def test_environment_and_toml_file(tmp_path, monkeypatch):
    config = tmp_path / "controller.toml"
    config.write_text('database_url = "sqlite:///from-file.db"\nlisten_port = 9000\nheartbeat_timeout_s = 42\n')
    monkeypatch.setenv("EDGEFLEET_CONFIG_FILE", str(config))
    monkeypatch.setenv("EDGEFLEET_LISTEN_PORT", "9100")
    monkeypatch.setenv("EDGEFLEET_RELEASE_KEY_PATHS", '["/keys/a.pub", "/keys/b.pub"]')
    settings = ControllerSettings(heartbeat_timeout_s=7)
    assert settings.database_url == "sqlite:///from-file.db"      # file
    assert settings.listen_port == 9100                           # environment beats file
    assert settings.heartbeat_timeout_s == 7                      # arguments beat both
    assert [p.name for p in settings.release_key_paths] == ["a.pub", "b.pub"]


def test_defaults_are_derived_from_the_data_dir(tmp_path):
    settings = ControllerSettings(data_dir=tmp_path, listen_host="0.0.0.0", listen_port=8181)
    assert settings.resolved_database_url == f"sqlite:///{tmp_path / 'controller.db'}"
    assert settings.resolved_public_url == "http://127.0.0.1:8181"
    assert settings.resolved_controller_key_path == tmp_path / "keys" / "controller.key"
    other = ControllerSettings(data_dir=tmp_path / "other")
    assert settings.resolved_mqtt_client_id == ControllerSettings(data_dir=tmp_path).resolved_mqtt_client_id
    assert settings.resolved_mqtt_client_id != other.resolved_mqtt_client_id


@pytest.mark.parametrize("field, value", [("listen_port", 70000), ("heartbeat_timeout_s", 0),
                                          ("ingest_batch_max", -1)])
def test_bad_values_are_refused(field, value):
    with pytest.raises(ValidationError):
        ControllerSettings(**{field: value})
