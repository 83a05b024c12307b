"""Device identity at the message level, with real agents, a real controller and a real broker
(Mosquitto without ACLs, and the embedded broker, which has no authentication at all).

An enrolled device holds its broker credentials and its own message key; it publishes hello,
state, telemetry and a status report under another device's topics (``mosquitto_pub`` as the
attacker). The broker lets it; the controller stores none of it. An agent enrolled before message
signatures registers its key at start and is heard from then on; a re-enrolled one drops what its old
key signed.
"""

from __future__ import annotations

import secrets
import shutil
import signal
import subprocess
import tomllib

import pytest
from fleetkit import Agents
from sqlmodel import Session

from edgefleet.agent.outbox import OUTBOX_FILE, Outbox
from edgefleet.cloud.cli.client import ControllerClient
from edgefleet.cloud.server import BackgroundServer
from edgefleet.cloud.settings import ControllerSettings
from edgefleet.cloud.store.tables import Device
from edgefleet.protocol.brokers import parse_broker_url
from edgefleet.protocol.device_signatures import seal
from edgefleet.protocol.keys import generate_private_key, load_private_key, save_public_key
from edgefleet.protocol.messages import Hello, Histogram, State, StatusReport, TelemetryWindow, encode
from edgefleet.protocol.topics import device_topic

from testkit import free_port, wait_until

pytestmark = pytest.mark.integration


@pytest.fixture(params=["mosquitto", "embedded"])
def fleet(request, tmp_path, topic_prefix, monkeypatch):
    broker_url = request.getfixturevalue("mqtt_broker").url if request.param == "mosquitto" else None
    release = generate_private_key()
    save_public_key(release.public_key(), tmp_path / "release.pub")
    admin = "efa_test_" + secrets.token_urlsafe(12)
    settings = ControllerSettings(data_dir=tmp_path / "controller", listen_port=free_port(), broker_url=broker_url,
                                  topic_prefix=topic_prefix, release_key_paths=[tmp_path / "release.pub"],
                                  admin_token=admin, reconcile_interval_s=0.5, heartbeat_timeout_s=30)
    server = BackgroundServer(settings).start()
    monkeypatch.setenv("EDGEFLEET_URL", server.url)   # for the CLI the agents are enrolled with
    monkeypatch.setenv("EDGEFLEET_TOKEN", admin)
    monkeypatch.setenv("EDGEFLEET_CLI_CONFIG", str(tmp_path / "no-cli.toml"))
    agents = Agents(tmp_path)
    yield server, agents, ControllerClient(server.url, admin)
    agents.stop()
    server.stop()


def _rejected(server, reason: str) -> float:
    registry = server.controller.metrics.registry
    return registry.get_sample_value("edgefleet_mqtt_rejected_total", {"reason": reason}) or 0.0


def test_an_enrolled_device_cannot_speak_for_another(fleet, capsys, topic_prefix):
    server, agents, api = fleet
    agents.enroll(capsys, server.url, "victim")                    # enrolled, never started: offline
    mallory_dir = agents.start(capsys, server.url, "mallory")
    wait_until(lambda: api.get("/api/v1/devices/mallory")["online"], "mallory online", timeout=60)
    config = tomllib.loads((mallory_dir / "agent.toml").read_text())
    key = load_private_key(config["device_key"])                   # everything mallory has
    broker = parse_broker_url(config["broker_url"])
    forged = [("hello", Hello(device_id="victim", agent_version="9.9.9", arch="forged-arch", os="linux",
                              runtimes=["onnx"])),
              ("state", State(device_id="victim", status="online", update_state="idle")),
              ("telemetry", TelemetryWindow(device_id="victim", window_seq=1, window_start=0, window_end=1,
                                            requests=5, latency_ms=Histogram(bounds=[1.0], counts=[5, 0]))),
              ("status", StatusReport(device_id="victim", deployment_id="dep-forged", sequence=1, state="committed",
                                      final=True, outcome="committed"))]
    before = _rejected(server, "bad_signature")
    # the attacker is mosquitto_pub with mallory's broker credentials, under another client id
    pub = [shutil.which("mosquitto_pub") or "mosquitto_pub", "-h", broker.host, "-p", str(broker.port), "-q", "1",
           "-i", f"mallory-2-{secrets.token_hex(3)}"]
    if config.get("username"):
        pub += ["-u", config["username"], "-P", config["password"]]
    for kind, message in forged:
        topic = device_topic("victim", kind, topic_prefix)
        sent = subprocess.run([*pub, "-t", topic, "-s"], input=seal(key, topic, encode(message)),
                              capture_output=True, timeout=30)
        assert sent.returncode == 0, sent.stderr
    wait_until(lambda: _rejected(server, "bad_signature") >= before + len(forged), "forgeries rejected")
    victim = api.get("/api/v1/devices/victim")
    assert victim["online"] is False and victim["arch"] != "forged-arch" and victim["agent_version"] != "9.9.9"
    assert api.get("/api/v1/telemetry/windows", device_id="victim") == []
    assert api.get("/api/v1/devices/mallory")["online"] is True       # mallory's own messages still count


def test_an_agent_enrolled_before_signatures_registers_its_key_and_is_heard(fleet, capsys):
    server, agents, api = fleet
    state_dir = agents.enroll(capsys, server.url, "veteran")
    # turn it into a device of the previous release: no key on either side
    with Session(server.controller.engine) as session:
        device = session.get(Device, "veteran")
        device.message_key = ""
        session.add(device)
        session.commit()
    for name in ("device.key", "device.key.registered"):
        (state_dir / "keys" / name).unlink()
    config = state_dir / "agent.toml"
    config.write_text("".join(line for line in config.read_text().splitlines(keepends=True)
                              if not line.startswith("device_key")))
    agents.run(state_dir)
    device = wait_until(lambda: (d := api.get("/api/v1/devices/veteran"))["online"] and d["arch"] and d,
                        "the upgraded agent heard", timeout=60)
    assert device["agent_version"]
    assert (state_dir / "keys" / "device.key").exists() and (state_dir / "keys" / "device.key.registered").exists()
    assert "device.message_key" in [e["action"] for e in api.get("/api/v1/audit", target="device:veteran")]


def test_a_re_enrolled_device_drops_what_its_old_key_signed(fleet, capsys, topic_prefix):
    """Messages still queued when a device is re-enrolled were signed with the key the enrollment
    replaces: the controller would refuse them for ever, so the enrollment drops them (the counters stay)."""
    server, agents, api = fleet
    state_dir = agents.enroll(capsys, server.url, "cam")
    first = agents.run(state_dir)
    wait_until(lambda: api.get("/api/v1/devices/cam")["online"], "cam online", timeout=60)
    first.send_signal(signal.SIGTERM)
    assert first.wait(15) == 0
    old_key = load_private_key(tomllib.loads((state_dir / "agent.toml").read_text())["device_key"])
    outbox = Outbox(state_dir / OUTBOX_FILE)
    topic = device_topic("cam", "telemetry", topic_prefix)
    window = TelemetryWindow(device_id="cam", window_seq=999, window_start=0, window_end=1, requests=5,
                             latency_ms=Histogram(bounds=[1.0], counts=[5, 0]))
    assert outbox.enqueue(topic, seal(old_key, topic, encode(window)), msg_id=window.msg_id)
    counters = outbox.counter("window_seq")
    outbox.close()

    agents.enroll(capsys, server.url, "cam")                      # the same state directory, a new key
    outbox = Outbox(state_dir / OUTBOX_FILE)
    try:
        assert len(outbox) == 0 and outbox.counter("window_seq") == counters
    finally:
        outbox.close()
    new_key = tomllib.loads((state_dir / "agent.toml").read_text())["device_key"]
    assert load_private_key(new_key).public_key() != old_key.public_key()
    before = _rejected(server, "bad_signature")
    agents.run(state_dir)
    wait_until(lambda: api.get("/api/v1/devices/cam")["online"], "cam online with its new key", timeout=60)
    assert _rejected(server, "bad_signature") == before
    assert [w for w in api.get("/api/v1/telemetry/windows", device_id="cam") if w["window_seq"] == 999] == []
