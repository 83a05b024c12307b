"""TLS client certificates signed by the controller (setting ``device_certificates``): a real agent
enrolls, gets a certificate whose common name is its device id, and connects to a Mosquitto that
requires certificates and takes the identity as the user name. A client without a certificate is
refused by the broker; a device that uses its own certificate to publish under another device's
topics (``mosquitto_pub`` as the attacker) gets nothing stored."""

from __future__ import annotations

import os
import secrets
import shutil
import socket
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.x509.oid import NameOID
from fleetkit import AGENT_SETTINGS, Agents, cli_json

from edgefleet.cloud.server import BackgroundServer
from edgefleet.cloud.services.device_ca import DeviceCA
from edgefleet.cloud.settings import ControllerSettings
from edgefleet.protocol.device_signatures import seal
from edgefleet.protocol.keys import generate_private_key, load_private_key, save_public_key
from edgefleet.protocol.messages import Hello, encode
from edgefleet.protocol.topics import device_topic

from agentkit.tls import make_ca_and_server
from testkit import free_port, wait_until

pytestmark = pytest.mark.integration


@pytest.fixture
def tls_fleet(tmp_path, monkeypatch, mqtt_broker, topic_prefix):
    release = generate_private_key()
    save_public_key(release.public_key(), tmp_path / "release.pub")
    data_dir = tmp_path / "controller"
    device_ca = DeviceCA.load_or_create(data_dir / "ca")          # the controller's own CA, as it will load it
    server_ca, server_cert, server_key = make_ca_and_server(tmp_path / "tls")
    cafile = tmp_path / "tls" / "cafile.pem"
    cafile.write_text(server_ca.read_text() + device_ca.certificate_pem)
    cafile.chmod(0o644)
    plain, tls = free_port(), free_port()
    conf = tmp_path / "mosquitto.conf"
    conf.write_text(f"per_listener_settings false\nallow_anonymous true\n"
                    f"listener {plain} 127.0.0.1\n"
                    f"listener {tls} 127.0.0.1\ncafile {cafile}\ncertfile {server_cert}\nkeyfile {server_key}\n"
                    "require_certificate true\nuse_identity_as_username true\n"
                    # as root, mosquitto drops to its own user, which cannot read the test's directory
                    + ("user root\n" if os.geteuid() == 0 else ""))
    mosquitto = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    broker = subprocess.Popen([mosquitto, "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_until(lambda: _listening(tls) and _listening(plain), "mosquitto listening", timeout=10)
    admin = "efa_test_" + secrets.token_urlsafe(12)
    settings = ControllerSettings(data_dir=data_dir, listen_port=free_port(), broker_url=f"mqtt://127.0.0.1:{plain}",
                                  device_broker_url=f"mqtts://127.0.0.1:{tls}", topic_prefix=topic_prefix,
                                  release_key_paths=[tmp_path / "release.pub"], admin_token=admin,
                                  device_certificates=True, reconcile_interval_s=0.5)
    server = BackgroundServer(settings).start()
    monkeypatch.setenv("EDGEFLEET_URL", server.url)
    monkeypatch.setenv("EDGEFLEET_TOKEN", admin)
    monkeypatch.setenv("EDGEFLEET_CLI_CONFIG", str(tmp_path / "no-cli.toml"))
    agents = Agents(tmp_path)
    yield server, agents, tls, server_ca
    agents.stop()
    server.stop()
    broker.terminate()
    broker.wait(10)


def _listening(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), 0.2).close()
        return True
    except OSError:
        return False


def _enroll(capsys, server, agents, device_id: str, server_ca) -> dict:
    token = cli_json(capsys, "devices", "enroll", "--device-id", device_id)["token"]
    state_dir = agents.base / "devices" / device_id
    settings = [a for s in (*AGENT_SETTINGS, f"ca_file={server_ca}") for a in ("--set", s)]
    done = subprocess.run([sys.executable, "-m", "edgefleet.agent.daemon", "enroll", "--controller", server.url,
                           "--token", token, "--state-dir", str(state_dir), *settings],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return tomllib.loads((state_dir / "agent.toml").read_text()) | {"state_dir": state_dir}


def test_devices_connect_with_the_certificate_the_controller_signed(capsys, tls_fleet, topic_prefix):
    server, agents, tls_port, server_ca = tls_fleet
    cam = _enroll(capsys, server, agents, "cam-a", server_ca)
    _enroll(capsys, server, agents, "cam-b", server_ca)             # enrolled, never started
    cert = x509.load_pem_x509_certificate(Path(cam["tls_cert"]).read_bytes())
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "cam-a"
    assert cam["broker_url"] == f"mqtts://127.0.0.1:{tls_port}"
    agents.run(cam["state_dir"])
    wait_until(lambda: cli_json(capsys, "devices", "show", "cam-a")["device"]["online"], "cam-a online over TLS",
               timeout=60)

    pub = shutil.which("mosquitto_pub") or "mosquitto_pub"
    base = [pub, "-h", "127.0.0.1", "-p", str(tls_port), "--cafile", str(server_ca), "-q", "1"]
    # no client certificate: the broker refuses the connection
    refused = subprocess.run([*base, "-t", "x", "-m", "y"], capture_output=True, text=True, timeout=30)
    assert refused.returncode != 0
    # cam-a's own certificate and key, a hello for cam-b signed with cam-a's message key
    topic = device_topic("cam-b", "hello", topic_prefix)
    forged = seal(load_private_key(cam["device_key"]), topic, encode(Hello(
        device_id="cam-b", agent_version="6.6.6", arch="forged", os="linux", runtimes=["onnx"])))
    sent = subprocess.run([*base, "--cert", cam["tls_cert"], "--key", cam["tls_key"], "-t", topic, "-s"],
                          input=forged, capture_output=True, timeout=30)
    assert sent.returncode == 0, sent.stderr
    registry = server.controller.metrics.registry
    wait_until(lambda: registry.get_sample_value("edgefleet_mqtt_rejected_total", {"reason": "bad_signature"}),
               "the forged hello rejected")
    victim = cli_json(capsys, "devices", "show", "cam-b")["device"]
    assert victim["online"] is False and victim["arch"] != "forged"
