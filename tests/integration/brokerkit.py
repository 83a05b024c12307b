"""Clustered and foreign MQTT brokers for integration tests: a three-node NATS cluster with JetStream
and MQTT (extra ``nats-server`` processes on free loopback ports, started and stopped here), and
RabbitMQ's ``rabbitmq_mqtt`` plugin on the machine's RabbitMQ (enabled here when it is not, with
its MQTT listener on 127.0.0.1:1884 because Mosquitto has 1883), with one RabbitMQ user per MQTT
client and topic permissions confining it (the recipe of docs/operations.md §8).

A part that is missing (no ``nats-server``, RabbitMQ not running) skips the test locally and FAILS
it under ``CI=true``, like the Mosquitto fixture."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import time
import tomllib
import uuid
from pathlib import Path

import paho.mqtt.client as mqtt
from fleetkit import AGENT_SETTINGS
from paho.mqtt.enums import CallbackAPIVersion

from edgefleet.cloud.cli.client import ControllerClient
from edgefleet.protocol.topics import CONTROLLER_KINDS, DEVICE_KINDS, device_topic

from testkit import free_port, missing_part, port_open

NATS_BIN = shutil.which("nats-server") or "/usr/sbin/nats-server"
RABBITMQCTL = shutil.which("rabbitmqctl") or "/usr/sbin/rabbitmqctl"
RABBITMQ_PLUGINS = shutil.which("rabbitmq-plugins") or "/usr/sbin/rabbitmq-plugins"
RABBITMQ_AMQP = ("127.0.0.1", 5672)
RABBITMQ_MQTT = ("127.0.0.1", 1884)
"""Where the MQTT plugin listens: ``mqtt.listeners.tcp.local = 127.0.0.1:1884`` in
/etc/rabbitmq/rabbitmq.conf (read at the node's start); :func:`rabbitmq_mqtt` sets the same at run
time when it enables the plugin on a running node."""



def mqtt_round_trip(host: str, port: int, *, timeout: float = 5.0, username: str | None = None,
                    password: str | None = None) -> bool:
    """Connect, subscribe QoS 1, publish QoS 1 to that subscription and receive it back."""
    got: list[bytes] = []
    topic = f"probe-{uuid.uuid4().hex[:8]}/ping"
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"probe-{uuid.uuid4().hex[:8]}")
    if username:
        client.username_pw_set(username, password)
    client.on_message = lambda c, u, m: got.append(m.payload)
    try:
        client.connect(host, port, keepalive=10)
    except OSError:
        return False
    client.loop_start()
    try:
        end = time.monotonic() + timeout
        while not client.is_connected() and time.monotonic() < end:
            time.sleep(0.05)
        if not client.is_connected():
            return False
        client.subscribe(topic, qos=1)
        time.sleep(0.2)
        client.publish(topic, b"ping", qos=1)
        while not got and time.monotonic() < end:
            time.sleep(0.05)
        return got == [b"ping"]
    finally:
        client.disconnect()
        client.loop_stop()


# --------------------------------------------------------------------------- NATS


class NatsCluster:
    """``nodes`` nats-server processes routed into one cluster, each with JetStream (its own store)
    and an MQTT listener; MQTT in NATS needs JetStream and a ``server_name`` per node."""

    def __init__(self, workdir: Path, nodes: int = 3) -> None:
        self.workdir = workdir
        self.names = [f"n{i + 1}" for i in range(nodes)]
        self.client_ports = [free_port() for _ in self.names]
        self.route_ports = [free_port() for _ in self.names]
        self.mqtt_ports = [free_port() for _ in self.names]
        self.procs: list[subprocess.Popen[bytes]] = []

    def mqtt_url(self, node: int) -> str:
        return f"mqtt://127.0.0.1:{self.mqtt_ports[node]}"

    def config(self, node: int) -> str:
        routes = ", ".join(f"nats-route://127.0.0.1:{p}" for p in self.route_ports)
        store = self.workdir / f"jetstream-{self.names[node]}"
        return (f"server_name: {self.names[node]}\n"
                f"listen: 127.0.0.1:{self.client_ports[node]}\n"
                f"jetstream {{ store_dir: \"{store}\" }}\n"
                f"cluster {{ name: edgefleet-test, listen: 127.0.0.1:{self.route_ports[node]}, routes: [{routes}] }}\n"
                f"mqtt {{ listen: 127.0.0.1:{self.mqtt_ports[node]} }}\n")

    def start(self, timeout: float = 90.0) -> NatsCluster:
        if not Path(NATS_BIN).exists():
            missing_part("nats-server not found (apt-get install nats-server)")
        self.workdir.mkdir(parents=True, exist_ok=True)
        for node, name in enumerate(self.names):
            conf = self.workdir / f"{name}.conf"
            conf.write_text(self.config(node))
            with open(self.workdir / f"{name}.log", "ab") as log:   # the child keeps its own descriptor
                self.procs.append(subprocess.Popen([NATS_BIN, "-c", str(conf)], stdout=log, stderr=log))
        end = time.monotonic() + timeout
        for node in range(len(self.names)):   # JetStream (and so MQTT) works once the cluster has a meta leader
            while not mqtt_round_trip("127.0.0.1", self.mqtt_ports[node]):
                dead = [n for n, p in zip(self.names, self.procs, strict=True) if p.poll() is not None]
                if dead or time.monotonic() > end:
                    self.stop()
                    raise AssertionError(f"NATS cluster not serving MQTT on node {self.names[node]} "
                                         f"(exited: {dead}); logs in {self.workdir}:\n{self.log(node)[-3000:]}")
                time.sleep(0.5)
        return self

    def log(self, node: int) -> str:
        path = self.workdir / f"{self.names[node]}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def stop(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.terminate()
        for proc in self.procs:
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
        self.procs = []


# --------------------------------------------------------------------------- RabbitMQ


def _ctl(*args: str, tool: str = RABBITMQCTL) -> str:
    done = subprocess.run([tool, *args], capture_output=True, text=True, timeout=120)
    if done.returncode != 0:
        raise AssertionError(f"{Path(tool).name} {' '.join(args[:2])} failed ({done.returncode}): "
                             f"{(done.stderr or done.stdout)[-2000:]}")
    return done.stdout


def rabbitmq_mqtt(timeout: float = 60.0) -> tuple[str, int]:
    """RabbitMQ's MQTT listener, enabled first if it is not: ``(host, port)``."""
    if port_open(*RABBITMQ_MQTT, 0.5):
        return RABBITMQ_MQTT
    if not Path(RABBITMQCTL).exists():
        missing_part("rabbitmqctl not found (apt-get install rabbitmq-server)")
    if not port_open(*RABBITMQ_AMQP, 0.5):
        missing_part(f"RabbitMQ is not running (nothing on {RABBITMQ_AMQP[0]}:{RABBITMQ_AMQP[1]}); start it: "
                "service rabbitmq-server start")
    host, port = RABBITMQ_MQTT
    # The plugin's listener must not take 1883 (Mosquitto's): set it before the plugin starts. The
    # same line in /etc/rabbitmq/rabbitmq.conf keeps it so at the node's next start.
    _ctl("eval", f'application:load(rabbitmq_mqtt), application:set_env(rabbitmq_mqtt, tcp_listeners, '
                 f'[{{"{host}", {port}}}]).')
    _ctl("enable", "rabbitmq_mqtt", tool=RABBITMQ_PLUGINS)
    end = time.monotonic() + timeout
    while not port_open(host, port, 0.5):
        if time.monotonic() > end:
            raise AssertionError(f"rabbitmq_mqtt enabled but nothing listens on {host}:{port}: "
                                 f"{_ctl('status')[-2000:]}")
        time.sleep(0.5)
    return RABBITMQ_MQTT


def amqp_pattern(mqtt_topic: str) -> str:
    """The regular expression of RabbitMQ topic permissions for one MQTT topic (levels joined with
    ``.`` as AMQP routing keys; ``+`` one level)."""
    return r"\.".join("[^.]+" if level == "+" else re.escape(level) for level in mqtt_topic.split("/"))


class RabbitUsers:
    """RabbitMQ users made for one test (deleted at the end)."""

    def __init__(self) -> None:
        self.made: list[str] = []

    def add(self, username: str, password: str, *, publish: list[str], subscribe: list[str]) -> None:
        """A user who may publish only on ``publish`` and subscribe only to ``subscribe`` (MQTT topic
        filters); its MQTT session queues are ``mqtt-subscription-<client id>qos0/1`` (client id =
        username here)."""
        _ctl("add_user", username, password)
        self.made.append(username)
        queues = rf"^mqtt-subscription-{re.escape(username)}qos[01]$"
        _ctl("set_permissions", "-p", "/", username, queues, rf"^amq\.topic$|{queues}", rf"^amq\.topic$|{queues}")
        _ctl("set_topic_permissions", "-p", "/", username, "amq.topic",
             "^(" + "|".join(amqp_pattern(t) for t in publish) + ")$",
             "^(" + "|".join(amqp_pattern(t) for t in subscribe) + ")$")

    def remove_all(self) -> None:
        for username in self.made:
            subprocess.run([RABBITMQCTL, "delete_user", username], capture_output=True, timeout=60)
        self.made = []


# --------------------------------------------------------------------------- devices


def enroll_agent(api: ControllerClient, url: str, base: Path, device_id: str, broker_url: str | None,
                 rabbit: RabbitUsers | None, prefix: str) -> Path:
    """``edgefleet-agent enroll`` as on the device; on RabbitMQ the operator then makes its broker user."""
    token = api.post("/api/v1/enrollment-tokens", {"device_id": device_id})["token"]
    state_dir = base / "devices" / device_id
    extra = ["--broker-url", broker_url] if broker_url else []
    settings = [a for s in AGENT_SETTINGS for a in ("--set", s)]
    done = subprocess.run([sys.executable, "-m", "edgefleet.agent.daemon", "enroll", "--controller", url, "--token",
                           token, "--state-dir", str(state_dir), *extra, *settings],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    if rabbit is not None:
        config = tomllib.loads((state_dir / "agent.toml").read_text())
        rabbit.add(config["username"], config["password"],
                   publish=[device_topic(device_id, kind, prefix) for kind in DEVICE_KINDS],
                   subscribe=[device_topic(device_id, kind, prefix) for kind in CONTROLLER_KINDS])
    return state_dir
