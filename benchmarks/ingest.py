"""Telemetry ingest: the controller's MQTT bridge + ingest worker (every message decoded,
validated and persisted in SQLite) against a bare paho subscriber, on the same Mosquitto.

A private Mosquitto (free port; unlimited queue, inflight window 1000) carries N QoS 1
telemetry windows spread over many device ids, published by ONE client in a separate process
(as a fleet simulator drives many devices from one loop). Two measurements per consumer:

* sustained -- the consumer is connected while the fleet publishes as fast as it can; rate =
  N / (first publish .. last message received or stored). This is the issue's figure.
* capacity  -- the backlog is queued at the broker first (persistent session), then the
  consumer connects and drains it; shows the consumer's own ceiling.

Next to each rate, the consumer's CPU time per message during the run (its process, and the
controller's decode processes): on a machine shared with other jobs a rate says how much CPU the
consumer got, the CPU per message what it needs, so the CPU ratio is the steadier figure.

Every window is signed by its device's own key, as agents do, and the controller verifies each
one (docs/security.md "Message signatures") and, once a batch is committed, publishes one signed
delivery acknowledgement per device of the batch (docs/protocol.md "Delivery acknowledgements"), as
``edgefleet serve`` does. Two more consumers price those: the same without acknowledgements, and
the same windows unsigned (``accept_unsigned_devices``). Runs alternate between the consumers;
medians and the ratios to the bare subscriber are printed.

``--database postgresql`` stores into a fresh database on the PostgreSQL at 127.0.0.1:5432 (trust
auth, database ``test`` to connect first) instead of a SQLite file.

    python benchmarks/ingest.py [--messages 20000] [--devices 2000] [--repeats 3] [--database sqlite|postgresql]
"""

from __future__ import annotations

import argparse
import hashlib
import multiprocessing
import os
import shutil
import socket
import statistics
import subprocess
import tempfile
import threading
import time
import uuid
from pathlib import Path

import numpy as np
import paho.mqtt.client as mqtt
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from paho.mqtt.enums import CallbackAPIVersion
from sqlalchemy import func
from sqlmodel import Session, select

from edgefleet.cloud.metrics import ControllerMetrics
from edgefleet.cloud.mqtt.bridge import MqttBridge
from edgefleet.cloud.mqtt.ingest import Ingestor
from edgefleet.cloud.ports import free_port
from edgefleet.cloud.services import devices
from edgefleet.cloud.settings import ControllerSettings
from edgefleet.cloud.store.engine import create_schema, make_engine, session_scope
from edgefleet.cloud.store.tables import TelemetryRecord
from edgefleet.protocol.acks import ack_messages
from edgefleet.protocol.device_signatures import seal
from edgefleet.protocol.keys import generate_private_key, public_key_pem
from edgefleet.protocol.messages import DriftScores, Histogram, InstalledBundle, TelemetryWindow, encode
from edgefleet.protocol.topics import controller_subscriptions, telemetry


def start_mosquitto(workdir: Path) -> tuple[subprocess.Popen, int]:
    port = free_port()
    conf = workdir / "mosquitto.conf"
    conf.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n"
                    "max_queued_messages 0\nmax_inflight_messages 1000\n")
    proc = subprocess.Popen([shutil.which("mosquitto") or "/usr/sbin/mosquitto", "-c", str(conf)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return proc, port
        except OSError:
            time.sleep(0.05)
    raise RuntimeError("mosquitto did not start")


def device_key(device_id: str) -> Ed25519PrivateKey:
    """The device's message key, the same in the publishing process and the controller's enrollment."""
    return Ed25519PrivateKey.from_private_bytes(hashlib.sha256(f"bench-{device_id}".encode()).digest())


def payloads(prefix: str, n: int, n_devices: int, signed: bool = True) -> list[tuple[str, bytes]]:
    """Realistic windows of the digits demo: 64 features x 10 bins, 12 latency buckets."""
    rng = np.random.default_rng(0)
    bundle = InstalledBundle(name="digits", version="1.0.0", build=1, digest="ab" * 32, runtime="onnx", slot="a")
    features = rng.integers(0, 50, size=(64, 10)).tolist()
    out = []
    for i in range(n):
        device_id = f"dev-{i % n_devices:05d}"
        window = TelemetryWindow(
            device_id=device_id, window_seq=i // n_devices, window_start=1000.0 + i, window_end=1060.0 + i,
            bundle=bundle, requests=100, batches=100, samples=100, errors=0,
            latency_ms=Histogram(bounds=[0.1, 0.2, 0.5, 1, 2, 5, 10, 20, 50, 100, 200],
                                 counts=rng.integers(0, 20, size=12).tolist()),
            features=features, predictions={str(k): 10 for k in range(10)},
            drift=DriftScores(psi=0.01, js=0.005, ks=0.02, per_feature_psi=[0.01] * 64, level="ok", samples=100))
        topic = telemetry(device_id, prefix)
        out.append((topic, seal(device_key(device_id), topic, encode(window)) if signed else encode(window)))
    return out


def _publish_process(port: int, prefix: str, n: int, n_devices: int, signed: bool, ready, go, result) -> None:
    messages = payloads(prefix, n, n_devices, signed)
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"pub-{uuid.uuid4().hex[:8]}")
    client.max_inflight_messages_set(1000)
    client.max_queued_messages_set(0)
    client.connect("127.0.0.1", port)
    client.loop_start()
    ready.set()
    go.wait()
    started = time.time()
    infos = [client.publish(topic, payload, qos=1) for topic, payload in messages]
    for info in infos:
        info.wait_for_publish(120)
    result.put((started, time.time()))
    client.disconnect()
    client.loop_stop()


class Fleet:
    """The publishing fleet in its own process, so it does not share the GIL with a consumer."""

    def __init__(self, port: int, prefix: str, n: int, n_devices: int, signed: bool) -> None:
        ctx = multiprocessing.get_context("spawn")
        self.ready, self.go, self.result = ctx.Event(), ctx.Event(), ctx.Queue()
        self.proc = ctx.Process(target=_publish_process, args=(port, prefix, n, n_devices, signed, self.ready,
                                                               self.go, self.result))
        self.proc.start()
        if not self.ready.wait(120):
            raise RuntimeError("publisher did not start")

    def start(self) -> None:
        self.go.set()

    def finish(self) -> tuple[float, float]:
        started, ended = self.result.get(timeout=300)
        self.proc.join(30)
        return started, ended


_TICK = os.sysconf("SC_CLK_TCK")


def process_cpu(pids: list[int]) -> float:
    """CPU seconds (user + system) of this process and of the processes ``pids`` (Linux)."""
    own = os.times()
    total = own.user + own.system
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / _TICK
    return total


class BareSubscriber:
    """The baseline: one paho client that only counts what it receives."""

    signed = True
    cpu_at_finish = 0.0

    def cpu(self) -> float:
        return process_cpu([])

    def __init__(self, port: int, prefix: str, client_id: str, expected: int, **_) -> None:
        self.port, self.expected = port, expected
        self.count = 0
        self.finished_at = 0.0
        self.done = threading.Event()
        self.subscribed = threading.Event()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=False)
        self.client.on_connect = lambda c, u, f, rc, p: c.subscribe(controller_subscriptions(prefix)[2], qos=1)
        self.client.on_subscribe = lambda *a: self.subscribed.set()
        self.client.on_message = self._on_message

    def _on_message(self, client, userdata, message) -> None:
        self.count += 1
        if self.count >= self.expected:
            self.finished_at = time.time()
            self.done.set()

    def connect(self) -> None:
        self.client.connect("127.0.0.1", self.port)
        self.client.loop_start()
        self.subscribed.wait(10)

    def disconnect(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()

    def wait(self) -> float:
        if not self.done.wait(300):
            raise RuntimeError(f"bare subscriber got {self.count}/{self.expected}")
        self.cpu_at_finish = self.cpu()
        self.disconnect()
        return self.finished_at


class PostgresDatabases:
    """Fresh databases on the local PostgreSQL, dropped at the end."""

    def __init__(self) -> None:
        import psycopg
        self.conn = psycopg.connect(host="127.0.0.1", port=5432, dbname="test", user="postgres", autocommit=True)
        self.names: list[str] = []

    def new(self) -> str:
        name = f"edgefleet_bench_{uuid.uuid4().hex[:12]}"
        self.conn.execute(f'CREATE DATABASE "{name}"')
        self.names.append(name)
        return f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}"

    def close(self) -> None:
        for name in self.names:
            self.conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        self.conn.close()


DATABASES: dict[str, PostgresDatabases] = {}


def database_url(kind: str, workdir: Path, client_id: str) -> str:
    if kind == "sqlite":
        return f"sqlite:///{workdir / f'{client_id}.db'}"
    if kind not in DATABASES:
        DATABASES[kind] = PostgresDatabases()
    return DATABASES[kind].new()


class ControllerIngest:
    """The production path: MqttBridge -> Ingestor (signatures checked, batched writes) -> signed
    delivery acknowledgements published per device; devices enrolled."""

    signed = True
    acks = True
    database = "sqlite"

    def __init__(self, port: int, prefix: str, client_id: str, expected: int, n_devices: int, workdir: Path,
                 decode_workers: int) -> None:
        self.expected = expected
        self.acks_published = 0
        self.handled = 0            # messages through a committed batch (stored or duplicate)
        self.acked_ids = 0          # message ids in published acknowledgements
        self.finished = threading.Event()
        self.subscribed_once = False
        self.engine = make_engine(database_url(self.database, workdir, client_id))
        create_schema(self.engine)
        with session_scope(self.engine) as session:
            for i in range(n_devices):
                device_id = f"dev-{i:05d}"
                _, token = devices.create_enrollment_token(session, actor="bench", now=time.time(),
                                                           device_id=device_id)
                pem = public_key_pem(device_key(device_id).public_key()).decode() if self.signed else None
                devices.enroll(session, token=token, device_id=device_id, now=time.time(), public_key_pem=pem,
                               require_key=self.signed)
        self.controller_key = generate_private_key()
        self.prefix = prefix
        self.ingestor = Ingestor(engine=self.engine, prefix=prefix, metrics=ControllerMetrics(),
                                 decode_workers=decode_workers, accept_keyless=not self.signed,
                                 on_acked=self._acked if self.acks else None, on_stored=self._stored)
        self.ingestor.start()
        self._bridge_args = {"url": f"mqtt://127.0.0.1:{port}", "client_id": client_id,
                             "subscriptions": controller_subscriptions(prefix), "on_message": self.ingestor.submit}
        self.bridge = MqttBridge(**self._bridge_args)

    def _acked(self, acked: dict[str, list[str]]) -> None:
        """What the controller does after each committed batch (cloud/controller.py ``_acked``)."""
        for topic, payload in ack_messages(acked, key=self.controller_key, prefix=self.prefix,
                                           issued_at=int(time.time())):
            self.acks_published += self.bridge.publish(topic, payload)
        self.acked_ids += sum(len(ids) for ids in acked.values())
        if self.acked_ids >= self.expected:
            self.finished.set()

    def cpu(self) -> float:
        """This process and the decode processes (started with the ingestor, before any run)."""
        pool = self.ingestor._pool
        return process_cpu(list(pool._processes) if pool is not None and pool._processes else [])

    def _stored(self, items: list) -> None:
        self.handled += len(items)
        if not self.acks and self.handled >= self.expected:
            self.finished.set()

    def connect(self) -> None:
        self.bridge.start()
        if not self.subscribed_once:   # the first connection subscribes; later ones resume the session
            time.sleep(0.3)            # let the SUBACK arrive
            self.subscribed_once = True

    def disconnect(self) -> None:
        self.bridge.stop()
        self.bridge = MqttBridge(**self._bridge_args)

    def stored(self) -> int:
        with Session(self.engine) as session:
            return session.exec(select(func.count()).select_from(TelemetryRecord)).one()

    def wait(self) -> float:
        """When the last window is stored (and, with acknowledgements, acknowledged); then checks
        that every window is a row of the database."""
        if not self.finished.wait(300):
            raise RuntimeError(f"controller handled {self.handled}/{self.expected}, acknowledged {self.acked_ids}")
        finished = time.time()
        self.cpu_at_finish = self.cpu()
        self.bridge.stop()
        self.ingestor.stop()
        stored = self.stored()
        self.engine.dispose()
        if stored != self.expected:
            raise RuntimeError(f"controller stored {stored} rows of {self.expected} windows")
        return finished


class UnacknowledgingControllerIngest(ControllerIngest):
    """The same without delivery acknowledgements (``delivery_acks = false``)."""

    acks = False


class UnsignedControllerIngest(ControllerIngest):
    """The same, for devices without keys whose unsigned messages are accepted (no signature check)."""

    signed = False


CONSUMERS = {"bare paho subscriber": BareSubscriber, "controller ingest (stored)": ControllerIngest,
             "controller, no acks": UnacknowledgingControllerIngest, "controller, unsigned": UnsignedControllerIngest}


def run_once(mode: str, consumer_cls, port: int, n: int, n_devices: int, workdir: Path,
             decode_workers: int) -> tuple[float, float, float]:
    """Returns (consumer rate, publisher rate) in messages/s and the consumer's CPU us per message."""
    prefix = f"bench-{uuid.uuid4().hex[:8]}/edgefleet/v1"
    consumer = consumer_cls(port, prefix, f"c-{uuid.uuid4().hex[:8]}", n, n_devices=n_devices, workdir=workdir,
                            decode_workers=decode_workers)
    fleet = Fleet(port, prefix, n, n_devices, consumer_cls.signed)
    consumer.connect()
    if mode == "capacity":
        consumer.disconnect()          # the broker queues everything for the persistent session
        fleet.start()
        published, pub_end = fleet.finish()
        cpu = consumer.cpu()
        started = time.time()
        consumer.connect()
        finished = consumer.wait()
    else:
        cpu = consumer.cpu()
        fleet.start()
        finished = consumer.wait()
        published, pub_end = fleet.finish()
        started = published
    return n / (finished - started), n / (pub_end - published), (consumer.cpu_at_finish - cpu) / n * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--messages", type=int, default=20000)
    parser.add_argument("--devices", type=int, default=2000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--modes", default="sustained,capacity")
    parser.add_argument("--database", choices=("sqlite", "postgresql"), default="sqlite")
    parser.add_argument("--decode-workers", type=int,
                        default=ControllerSettings.model_fields["ingest_decode_workers"].default,
                        help="controller decode processes (EDGEFLEET_INGEST_DECODE_WORKERS)")
    args = parser.parse_args()
    ControllerIngest.database = args.database

    workdir = Path(tempfile.mkdtemp(prefix="edgefleet-ingest-"))
    broker, port = start_mosquitto(workdir)
    modes = args.modes.split(",")
    rates = {(m, c): [] for m in modes for c in CONSUMERS}
    cpus = {(m, c): [] for m in modes for c in CONSUMERS}
    publish_rates = []
    try:
        for run in range(args.repeats):
            for mode in modes:
                for name, cls in CONSUMERS.items():
                    rate, pub, cpu = run_once(mode, cls, port, args.messages, args.devices, workdir,
                                              args.decode_workers)
                    rates[(mode, name)].append(rate)
                    cpus[(mode, name)].append(cpu)
                    publish_rates.append(pub)
                    print(f"run {run + 1} {mode:9s} {name:28s} {rate:8.0f} msg/s  CPU {cpu:6.1f} us/msg  "
                          f"(fleet published {pub:6.0f}/s; load average {os.getloadavg()[0]:.1f})", flush=True)
    finally:
        for databases in DATABASES.values():
            databases.close()
        broker.terminate()
        broker.wait(10)
        shutil.rmtree(workdir, ignore_errors=True)
    size = len(payloads("x", 1, 1)[0][1])
    print(f"\n{args.messages} telemetry windows of {size} bytes from {args.devices} devices, QoS 1, Mosquitto, "
          f"{args.database}, controller decode workers {args.decode_workers}, medians of {args.repeats} runs:")
    for mode in modes:
        med = {name: statistics.median(rates[(mode, name)]) for name in CONSUMERS}
        bare, ctl, no_acks, unsigned = (med["bare paho subscriber"], med["controller ingest (stored)"],
                                        med["controller, no acks"], med["controller, unsigned"])
        print(f"  {mode:9s} bare {bare:8.0f} msg/s   controller {ctl:8.0f} msg/s   ratio {ctl / bare:.2f}x   "
              f"(no acks {no_acks:8.0f} msg/s, {no_acks / bare:.2f}x; unsigned {unsigned:8.0f} msg/s, "
              f"{unsigned / bare:.2f}x)")
        cpu = {name: statistics.median(cpus[(mode, name)]) for name in CONSUMERS}
        print(f"  {mode:9s} CPU per message: bare {cpu['bare paho subscriber']:.1f} us; controller "
              + "; ".join(f"{name.removeprefix('controller').strip(' ,') or 'stored'} {cpu[name]:.1f} us "
                          f"({cpu['bare paho subscriber'] / cpu[name]:.2f}x the bare's rate per CPU second)"
                          for name in list(CONSUMERS)[1:]))
    print(f"  fleet publisher median {statistics.median(publish_rates):.0f} msg/s; target: capacity ratio >= 0.5x")


if __name__ == "__main__":
    main()
