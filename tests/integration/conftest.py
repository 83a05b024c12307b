"""Shared fixtures for integration tests: the real Mosquitto, unique topic prefixes, key pairs,
a tiny ONNX model and an HTTP file server with Range support and fault injection."""

from __future__ import annotations

import os
import subprocess
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest

from edgefleet.protocol.keys import generate_private_key, save_private_key, save_public_key

from testkit import MOSQUITTO_BIN, free_port, missing_part, port_open

MOSQUITTO_HOST = "127.0.0.1"
MOSQUITTO_PORT = 1883


@dataclass(frozen=True)
class Broker:
    host: str
    port: int

    @property
    def url(self) -> str:
        return f"mqtt://{self.host}:{self.port}"



@pytest.fixture(scope="session")
def mqtt_broker() -> Broker:
    """The real Mosquitto on 127.0.0.1:1883. Missing: skip locally, FAIL under CI=true."""
    if not port_open(MOSQUITTO_HOST, MOSQUITTO_PORT):
        message = (f"Mosquitto is not listening on {MOSQUITTO_HOST}:{MOSQUITTO_PORT} "
                   "(start it: mosquitto -d -c /etc/mosquitto/mosquitto.conf)")
        missing_part(message)
    return Broker(MOSQUITTO_HOST, MOSQUITTO_PORT)


class PrivateMosquitto:
    """A Mosquitto of our own on a free port, which a test may stop and start."""

    def __init__(self, workdir: Path, *, tls: tuple[Path, Path, Path] | None = None) -> None:
        self.port = free_port()
        self.conf = workdir / "mosquitto.conf"
        tls_conf = f"cafile {tls[0]}\ncertfile {tls[1]}\nkeyfile {tls[2]}\n" if tls else ""
        self.conf.write_text(f"listener {self.port} 127.0.0.1\n{tls_conf}allow_anonymous true\npersistence true\n"
                             f"persistence_location {workdir}/\nmax_queued_messages 100000\n"
                             # as root, mosquitto drops to its own user, which cannot write here
                             + ("user root\n" if os.geteuid() == 0 else ""))
        self.proc: subprocess.Popen | None = None
        self.log_path = workdir / "mosquitto.log"

    @property
    def broker(self) -> Broker:
        return Broker("127.0.0.1", self.port)

    def start(self) -> None:
        with open(self.log_path, "ab") as log:  # the child keeps its own descriptor
            self.proc = subprocess.Popen([MOSQUITTO_BIN, "-c", str(self.conf)], stdout=log, stderr=log)
        # (a TLS listener accepts TCP connections too, so the port check below works for both)
        end = time.monotonic() + 10
        while not port_open("127.0.0.1", self.port, 0.2):
            if self.proc.poll() is not None or time.monotonic() > end:
                raise RuntimeError("private mosquitto did not start")
            time.sleep(0.05)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)
        self.proc = None


@pytest.fixture
def private_mosquitto(tmp_path: Path, mqtt_broker: Broker):
    """A Mosquitto of this test's own (stop/start it freely)."""
    broker = start_private_mosquitto(tmp_path)
    yield broker
    broker.stop()


@pytest.fixture
def private_mosquitto_tls(tmp_path: Path, mqtt_broker: Broker):
    """A private Mosquitto with a TLS listener; yields ``(broker, ca_file)``."""
    from agentkit.tls import make_ca_and_server
    ca, cert, key = make_ca_and_server(tmp_path / "tls")
    broker = start_private_mosquitto(tmp_path, tls=(ca, cert, key))
    yield broker, ca
    broker.stop()


def start_private_mosquitto(tmp_path: Path, tls: tuple[Path, Path, Path] | None = None) -> PrivateMosquitto:
    if not Path(MOSQUITTO_BIN).exists():
        message = "mosquitto binary not found (apt-get install mosquitto)"
        missing_part(message)
    workdir = tmp_path / "mosquitto"
    workdir.mkdir(exist_ok=True)
    broker = PrivateMosquitto(workdir, tls=tls)
    broker.start()
    return broker


@pytest.fixture
def topic_prefix() -> str:
    """A topic prefix no other test uses."""
    return f"test-{uuid.uuid4().hex[:12]}/edgefleet/v1"


@dataclass(frozen=True)
class KeyPair:
    private: object
    public_path: Path
    private_path: Path


def _key_pair(directory: Path, name: str) -> KeyPair:
    key = generate_private_key()
    directory.mkdir(parents=True, exist_ok=True)
    return KeyPair(key, save_public_key(key.public_key(), directory / f"{name}.pub"),
                   save_private_key(key, directory / f"{name}.key"))


@pytest.fixture
def release_key(tmp_path: Path) -> KeyPair:
    return _key_pair(tmp_path / "keys", "release")


@pytest.fixture
def controller_key(tmp_path: Path) -> KeyPair:
    return _key_pair(tmp_path / "keys", "controller")


@pytest.fixture
def make_key_pair(tmp_path: Path):
    return lambda name: _key_pair(tmp_path / "keys", name)


@pytest.fixture(scope="session")
def tiny_onnx() -> bytes:
    """A 4-in, 3-class MLP with a softmax output, built with onnx.helper."""
    from onnx_models import mlp_onnx
    return mlp_onnx()


@pytest.fixture
def file_server():
    """HTTP file server with Range support; ``.faults`` injects cuts, endless bodies, errors."""
    from agentkit.fileserver import FileServer
    server = FileServer().start()
    yield server
    server.stop()


@pytest.fixture
def agent_harness(tmp_path, mqtt_broker, topic_prefix, release_key, controller_key, file_server, tiny_onnx):
    """A device under test (real ``edgefleet-agent`` process against the real Mosquitto);
    start it with ``.start(**config_overrides)``."""
    from agentkit.harness import Harness
    harness = Harness(tmp_path, mqtt_broker, topic_prefix, release_key, controller_key, file_server, tiny_onnx)
    yield harness
    harness.close()
