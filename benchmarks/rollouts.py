"""Staged rollouts at scale, and how fast a failing gate acts.

1. ``advance_rollouts`` passes over one rollout of N devices (default 10 000), on SQLite and on
   PostgreSQL (127.0.0.1:5432, when reachable): creating it, the pass that starts the canary stage
   and orders its devices, and the steady pass that finds nothing to do (what every reconcile does
   while devices install and telemetry soaks). Baselines in the same run: the bare read of the
   rows a pass must look at (the rollout's device rows), and the same number of
   orders given out by a plain deployment.
2. Gate failure to roll-back orders: a running controller (background reconciler, fake MQTT
   transport so the broker is not measured) with a canary on the new bundle; a telemetry window
   that fails the predictions gate is handed to the ingest path, and the time until the roll-back
   order is published is measured. With the reconciler woken by telemetry of rollout devices
   (the default) against the same controller relying on its interval alone.

    python benchmarks/rollouts.py [--devices 10000] [--repeats 5] [--database sqlite|postgres|both]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
from fastapi.testclient import TestClient
from onnx import TensorProto, helper, numpy_helper
from sqlmodel import select

from edgefleet.cloud.app import create_app
from edgefleet.cloud.controller import Controller
from edgefleet.cloud.mqtt.decoding import Raw
from edgefleet.cloud.services.rollouts import service as rollouts
from edgefleet.cloud.services.rollouts.policy import Selector, parse_policy
from edgefleet.cloud.settings import ControllerSettings
from edgefleet.cloud.store.tables import Device, RolloutDevice
from edgefleet.protocol import keys
from edgefleet.protocol.bundle import BuiltBundle, build_bundle, parse_recipe
from edgefleet.protocol.messages import (
    DriftScores,
    Histogram,
    InstalledBundle,
    StatusReport,
    TelemetryWindow,
    decode,
    encode,
)
from edgefleet.protocol.topics import device_topic

ADMIN = "efa_bench_" + uuid.uuid4().hex
PG = "postgresql+psycopg://{user}@127.0.0.1:5432/{name}"


class Transport:
    """Stands in for the MQTT bridge: publishes are recorded with their time."""

    connected = True

    def __init__(self) -> None:
        self.published: list[tuple[float, str, bytes]] = []
        self.event = threading.Event()

    def start(self) -> None: ...

    def stop(self) -> None: ...

    def publish(self, topic: str, payload: bytes) -> bool:
        self.published.append((time.perf_counter(), topic, payload))
        self.event.set()
        return True


def tiny_model() -> bytes:
    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.normal(size=(4, 3)).astype(np.float32), "w")
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["m"]),
                               helper.make_node("Softmax", ["m"], ["probs"], axis=1)], "tiny",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
                              [helper.make_tensor_value_info("probs", TensorProto.FLOAT, ["N", 3])], [w])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    return model.SerializeToString()


def bundles(key) -> tuple[BuiltBundle, BuiltBundle]:
    samples = np.random.default_rng(1).normal(size=(64, 4)).astype(np.float32)
    made = [build_bundle(parse_recipe({"bundle": {"name": "bench", "version": v, "build": b, "runtime": "onnx",
                                                  "labels": ["a", "b", "c"]}}), tiny_model(), samples=samples,
                         release_key=key) for v, b in (("1.0.0", 1), ("2.0.0", 2))]
    return made[0], made[1]


@contextmanager
def controller(database_url: str | None, *, background: bool, **settings: Any) -> Iterator[tuple[Controller,
                                                                                                 TestClient,
                                                                                                 Transport,
                                                                                                 tuple[BuiltBundle,
                                                                                                       BuiltBundle]]]:
    with tempfile.TemporaryDirectory(prefix="edgefleet-bench-") as tmp:
        key = keys.generate_private_key()
        pub = keys.save_public_key(key.public_key(), Path(tmp) / "release.pub")
        transport = Transport()
        values: dict[str, Any] = {"data_dir": Path(tmp) / "controller", "broker_url": "mqtt://127.0.0.1:1",
                                  "release_key_paths": [pub], "admin_token": ADMIN,
                                  "public_url": "http://controller.bench", **settings}
        if database_url:
            values["database_url"] = database_url
        app = create_app(ControllerSettings(**values), transport_factory=lambda url, on_message: transport,
                         reconcile_in_background=background)
        with TestClient(app) as client:
            client.headers["Authorization"] = f"Bearer {ADMIN}"
            built = bundles(key)
            for b in built:
                r = client.post("/api/v1/bundles", content=b.data,
                                headers={"Content-Type": "application/octet-stream"})
                assert r.status_code in (200, 201), r.text
            yield app.state.controller, client, transport, built


def add_devices(ctl: Controller, n: int, old: BuiltBundle, tag: str) -> list[str]:
    ids = [f"{tag}-{i:05d}" for i in range(n)]
    installed = {"name": old.manifest.name, "version": old.manifest.version, "build": old.manifest.build,
                 "digest": old.digest, "runtime": "onnx"}
    with ctl.session() as session:
        session.add_all(Device(id=d, mqtt_password_hash="$7$bench", tags=[tag], arch="x86_64", os="linux",
                               runtimes=["onnx"], agent_version="0.1.0", free_disk_bytes=1 << 34,
                               installed=installed, online=True, last_seen=time.time(), enrolled_at=time.time())
                        for d in ids)
    return ids


POLICY = {"stages": [{"name": "canary", "select": "percent", "percent": 1, "soak_s": 600},
                     {"name": "half", "select": "percent", "percent": 50, "soak_s": 600},
                     {"name": "rest", "select": "rest"}], "device_timeout_s": 3600}


def timed(fn: Callable[[], object]) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def bench_passes(database_url: str | None, label: str, n: int, repeats: int) -> None:
    with controller(database_url, background=False) as (ctl, client, transport, (old, new)):
        add_devices(ctl, n, old, "site")

        def create() -> str:
            with ctl.session() as session:
                return rollouts.create_rollout(session, bundle_digest=new.digest, selector=Selector(tags=["site"]),
                                               policy=parse_policy(POLICY), protected_tags=[], actor="bench",
                                               now=time.time()).id

        created: list[str] = []
        t_create = timed(lambda: created.append(create()))
        rollout_id = created[0]
        before = len(transport.published)
        t_first = timed(lambda: (rollouts.advance_rollouts(ctl.session, now=time.time(), issuer=ctl.issuer),
                                 ctl.publish_pending()))
        canary = len(transport.published) - before
        idle = [timed(lambda: rollouts.advance_rollouts(ctl.session, now=time.time(), issuer=ctl.issuer))
                for _ in range(repeats)]

        def bare_read() -> None:
            with ctl.session() as session:
                list(session.exec(select(RolloutDevice).where(RolloutDevice.rollout_id == rollout_id)))

        bare = [timed(bare_read) for _ in range(repeats)]
        other = add_devices(ctl, canary, old, "plain")
        before = len(transport.published)
        t_plain = timed(lambda: client.post("/api/v1/deployments", json={"bundle": new.digest, "device_ids": other}))
        assert len(transport.published) - before == canary
    idle_s, bare_s = statistics.median(idle), statistics.median(bare)
    print(f"{label}: rollout of {n} devices")
    print(f"  create (selector, compatibility, {n} rows)      {t_create * 1000:8.0f} ms")
    print(f"  first pass: start the canary, {canary} signed orders {t_first * 1000:8.0f} ms   "
          f"plain deployment of the same {canary} orders: {t_plain * 1000:.0f} ms "
          f"(ratio {t_first / t_plain:.2f})")
    print(f"  steady pass (nothing to do), median of {repeats}   {idle_s * 1000:8.0f} ms   "
          f"bare read of its rows: {bare_s * 1000:.0f} ms (ratio {idle_s / bare_s:.2f})")


def bench_gate_latency(wake_s: float, repeats: int, interval_s: float) -> list[float]:
    """Seconds from the failing window entering ingest to the roll-back order being published."""
    latencies = []
    for _ in range(repeats):
        with controller(None, background=True, reconcile_interval_s=interval_s,
                        rollout_wake_interval_s=wake_s) as (ctl, client, transport, (old, new)):
            ids = add_devices(ctl, 8, old, "site")
            policy = {"stages": [{"name": "canary", "select": "count", "count": 1, "soak_s": 3600},
                                 {"name": "rest", "select": "rest"}],
                      "gates": {"runtime": {"enabled": False},
                                "behaviour": {"min_samples": 50, "drift_psi_margin": 10}}}
            ro = client.post("/api/v1/rollouts", json={"bundle": new.digest, "selector": {"tags": ["site"]},
                                                       "policy": policy}).json()
            order = decode("cmd", transport.published[-1][2]).order.signed
            canary = next(r["device_id"] for r in ro["device_rows"] if r["stage_index"] == 0)
            # through the real ingest path (its decode worker warm): the canary committed, the control's windows
            ctl.ingestor.submit(device_topic(canary, "status"), encode(StatusReport(
                device_id=canary, deployment_id=order.deployment_id, sequence=order.sequence, state="committed",
                final=True, outcome="committed", sent_at=time.time())))
            for i, device_id in enumerate(ids):
                if device_id != canary:
                    window = raw_window(device_id, old, i, {"0": 40, "1": 30, "2": 30})
                    ctl.ingestor.submit(window.topic, window.payload)
            ctl.ingestor.flush()
            ctl.reconcile()   # a pass sees the canary committed and the stage soaking
            time.sleep(max(wake_s, 1.0) + 0.5)   # the loop idle again: no pass running, no gap to wait out
            transport.event.clear()
            before = len(transport.published)
            sent = time.perf_counter()
            failing = raw_window(canary, new, 100, {"0": 100})
            ctl.ingestor.submit(failing.topic, failing.payload)
            deadline = time.monotonic() + 3 * interval_s + 10
            while not any(decode("cmd", p).order.signed.bundle_digest == old.digest
                          for _, _, p in transport.published[before:]):
                transport.event.wait(0.01)
                transport.event.clear()
                if time.monotonic() > deadline:
                    raise RuntimeError("no roll-back order was published")
            published = next(t for t, _, p in transport.published[before:]
                             if decode("cmd", p).order.signed.bundle_digest == old.digest)
            latencies.append(published - sent)
    return latencies


def raw_window(device_id: str, built: BuiltBundle, seq: int, predictions: dict[str, int]) -> Raw:
    m = built.manifest
    now = time.time()
    window = TelemetryWindow(device_id=device_id, window_seq=seq, window_start=now - 1, window_end=now,
                             bundle=InstalledBundle(name=m.name, version=m.version, build=m.build, digest=built.digest,
                                                    runtime="onnx"),
                             requests=10, batches=10, samples=sum(predictions.values()),
                             latency_ms=Histogram(bounds=[1.0, 2.0], counts=[10, 0, 0]), predictions=predictions,
                             drift=DriftScores(psi=0.01, js=0.01, samples=10), sent_at=now)
    return Raw(device_topic(device_id, "telemetry"), encode(window), now)


@contextmanager
def postgres() -> Iterator[str | None]:
    try:
        import psycopg

        conn = psycopg.connect(host="127.0.0.1", port=5432, dbname="test", user="postgres", autocommit=True,
                               connect_timeout=3)
    except Exception as exc:  # noqa: BLE001 - any failure means: no PostgreSQL here
        print(f"PostgreSQL: not reachable ({exc.__class__.__name__}); skipped")
        yield None
        return
    name = f"edgefleet_bench_{uuid.uuid4().hex[:10]}"
    conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield PG.format(user="postgres", name=name)
    finally:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--devices", type=int, default=10_000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--database", choices=["sqlite", "postgres", "both"], default="both")
    args = parser.parse_args()
    if args.database in ("sqlite", "both"):
        bench_passes(None, "SQLite", args.devices, args.repeats)
    if args.database in ("postgres", "both"):
        with postgres() as url:
            if url:
                bench_passes(url, "PostgreSQL", args.devices, args.repeats)
    interval = 5.0
    woken = bench_gate_latency(1.0, args.repeats, interval)
    alone = bench_gate_latency(0.0, args.repeats, interval)
    print(f"gate failure -> roll-back order published (median of {args.repeats}; reconcile interval {interval:g} s):")
    print(f"  reconciler woken by rollout telemetry  {statistics.median(woken) * 1000:8.1f} ms")
    print(f"  interval alone                         {statistics.median(alone) * 1000:8.1f} ms   "
          f"(ratio {statistics.median(alone) / statistics.median(woken):.0f}x)")


if __name__ == "__main__":
    main()
