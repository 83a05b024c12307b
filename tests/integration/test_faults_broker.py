"""The broker restarted during a staged rollout (issue 12 item 9), once with its persistence store and
once without it (a broker that lost its disk comes back empty: no sessions, no subscriptions, no queued
messages), with real processes: a Mosquitto of the test's own (config and store in a tmp dir), a real
``edgefleet serve`` that lives through both restarts, three real agents with live inference traffic.

What must hold, counted in the controller's database against what the devices sent: the rollout
finishes; every device got its order once (one target, one order sequence, one attempt); every status
report each agent sent is processed (their message ids are deterministic: recomputed from the agents'
logs of their state transitions); every telemetry window each agent produced is stored, exactly once.
(The broker restarted during telemetry alone, with the controller away: test_delivery_end_to_end.py.)"""

from __future__ import annotations

import re
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from faultkit import Devices, Mosquitto
from fleetkit import ControllerProcess
from sqlalchemy import create_engine, text

from edgefleet.agent.updater import report_id
from edgefleet.cloud.cli.client import ControllerClient
from edgefleet.protocol.bundle import build_bundle, parse_recipe

from controllerkit import ADMIN
from onnx_models import mlp_onnx
from testkit import wait_until

pytestmark = pytest.mark.integration

DEVICES = ("bk-1", "bk-2", "bk-3")
AGENT = {"inference_listen": "127.0.0.1:0", "telemetry_interval_s": 0.3, "heartbeat_interval_s": 2,
         "health_check_inferences": 0, "ack_timeout_s": 1.0, "ack_retry_cap_s": 2.0, "reconnect_min_s": 0.2,
         "reconnect_max_s": 1.0, "retry_base_s": 0.2, "retry_cap_s": 1.0}
POLICY = {"device_timeout_s": 120,
          "stages": [{"name": "canary", "select": "count", "count": 1, "soak_s": 1},
                     {"name": "half", "select": "percent", "percent": 50, "soak_s": 1},
                     {"name": "rest", "select": "rest"}],
          # judged on installs only: the field gates need minutes of telemetry (test_rollouts_agents.py)
          "gates": {"runtime": {"enabled": False}, "behaviour": {"enabled": False}, "accuracy": {"enabled": False}}}
MOVE = re.compile(r"update (\w+) -> (\w+) on \w+ device=(\S+) deployment=(\S+) attempt=(\d+)")
FINISHED = re.compile(r"update finished: (\w+) outcome=\S+ reason=\S+ device=(\S+) deployment=(\S+)")


def _bundle(release_key, version: str, build: int) -> bytes:
    recipe = parse_recipe({"bundle": {"name": "broker-faults", "version": version, "build": build,
                                      "runtime": "onnx"}})
    return build_bundle(recipe, mlp_onnx(seed=build), samples=np.zeros((8, 4), np.float32),
                        release_key=release_key.private).data


def sent_reports(log: str) -> set[str]:
    """The message ids of every status report the agent sent, from its log of state transitions: one per
    non-final move (its new state and attempt), one final report per finished update."""
    ids: set[tuple[str, str, str, int, bool]] = set()
    attempts: dict[str, int] = {}
    for line in log.splitlines():
        if m := MOVE.search(line):
            _, new, device, deployment, attempt = m.groups()
            attempts[deployment] = int(attempt)
            if new not in ("committed", "failed", "rolled_back", "cancelled"):
                ids.add((device, deployment, new, int(attempt), False))
        elif m := FINISHED.search(line):
            state, device, deployment = m.groups()
            ids.add((device, deployment, state, attempts.get(deployment, 0), True))
    return ids


def _check_device(db, device_id: str, deployment_id: str, log: str, produced: int) -> None:
    """What the controller's database holds of one device against what the device sent."""
    def q(sql: str, **params: object) -> list:
        with db.connect() as conn:   # a connection per query: each sees what is committed by then
            return list(conn.execute(text(sql), {"d": device_id, **params}))

    # the order: one target, one order sequence, never sent again as a retry
    targets = q("SELECT sequence, state, history FROM deployment_targets WHERE deployment_id = :dep "
                "AND device_id = :d", dep=deployment_id)
    assert len(targets) == 1 and targets[0][1] == "committed", targets
    assert '"sent again (retry)"' not in targets[0][2], targets[0][2]
    # every status report it sent (both deployments), processed
    sequences = dict(q("SELECT deployment_id, sequence FROM deployment_targets WHERE device_id = :d"))
    sent = {report_id(d, dep, sequences[dep], s, a, f) for d, dep, s, a, f in sent_reports(log)}
    processed = {r[0] for r in q("SELECT msg_id FROM processed_messages WHERE device_id = :d AND kind = 'status'")}
    assert len(sent) >= 12 and sent <= processed, f"{device_id}: lost reports {sent - processed}"

    # every window, once (the agent goes on sending windows: those after ``produced`` may be there too)
    def windows() -> list[int]:
        return [r[0] for r in q("SELECT window_seq FROM telemetry_windows WHERE device_id = :d ORDER BY window_seq")]
    try:
        seqs = wait_until(lambda: w if len(set(w := windows())) >= produced else None,
                          what=f"{device_id}'s {produced} windows stored", timeout=60)
    except AssertionError:
        raise AssertionError(f"{device_id}: lost {sorted(set(range(produced)) - set(windows()))}") from None
    assert seqs == list(range(len(seqs))), f"{device_id}: windows doubled or lost: {seqs}"


class Traffic(threading.Thread):
    """Live inference requests to every device until stopped (what produces telemetry windows)."""

    def __init__(self, devices: Devices) -> None:
        super().__init__(daemon=True)
        self.devices, self.done, self.sent = devices, threading.Event(), 0

    def run(self) -> None:
        batch = {"inputs": {"x": np.random.default_rng(0).normal(size=(3, 4)).astype(np.float32).tolist()}}
        while not self.done.is_set():
            for device_id in DEVICES:
                try:
                    self.devices.local(device_id, "/v1/predict", batch)
                    self.sent += 1
                except OSError:
                    pass   # swapping bundles
            self.done.wait(0.05)


def test_broker_restarts_during_a_staged_rollout_lose_and_double_nothing(tmp_path, release_key, topic_prefix):
    broker = Mosquitto(tmp_path / "mosquitto").start()
    controller = ControllerProcess(tmp_path, admin_token=ADMIN, broker_url=broker.url, prefix=topic_prefix,
                                   release_pub=release_key.public_path, reconcile_interval_s=0.3,
                                   heartbeat_timeout_s=30)
    devices = Devices(tmp_path, token=ADMIN)
    traffic = Traffic(devices)
    try:
        controller.start()
        api = ControllerClient(controller.url, ADMIN)
        with ThreadPoolExecutor(len(DEVICES)) as pool:   # enrolled side by side (each a process)
            list(pool.map(lambda d: devices.enroll(controller.url, d, tags=("bk",), settings=AGENT), DEVICES))
        for device_id in DEVICES:
            devices.run(device_id, wait=False)
        for device_id in DEVICES:
            devices.wait_ready(device_id)
        wait_until(lambda: len(api.get("/api/v1/devices", tag="bk", online=True)) == len(DEVICES),
                   what="every agent online", timeout=60)
        v1 = api.request("POST", "/api/v1/bundles", content=_bundle(release_key, "1.0.0", 1))["digest"]
        first = api.post("/api/v1/deployments", {"bundle": v1, "tag": "bk"})
        wait_until(lambda: api.get(f"/api/v1/deployments/{first['id']}")["status"] == "succeeded",
                   what="v1 everywhere", timeout=90)
        traffic.start()

        v2 = api.request("POST", "/api/v1/bundles", content=_bundle(release_key, "2.0.0", 2))["digest"]
        ro = api.post("/api/v1/rollouts", {"bundle": v2, "selector": {"tags": ["bk"]}, "policy": POLICY})

        def rollout() -> dict:
            return api.get(f"/api/v1/rollouts/{ro['id']}")

        # 1. with its store, while the canary's order is out
        wait_until(lambda: any(r["ordered_at"] for r in rollout()["device_rows"]), what="the canary ordered")
        broker.restart(keep_store=True)
        # 2. empty, while the second stage runs
        wait_until(lambda: (r := rollout())["stage_index"] >= 1 or r["state"] != "running",
                   what="the second stage", timeout=90)
        broker.restart(keep_store=False)
        done = wait_until(lambda: (r := rollout())["state"] not in ("running", "waiting_approval") and r,
                          what="the rollout to end", timeout=150)
        traffic.done.set()
        traffic.join(10)
        rows = [(r["device_id"], r["stage_index"], r["state"], r["attempts"], r["reason"]) for r in done["device_rows"]]
        assert done["state"] == "succeeded", (done["reason"], rows)
        assert broker.restarts == 2 and traffic.sent > 50

        stats = {d: devices.stats(d) for d in DEVICES}   # windows 0..n-1 were produced by now
        db = create_engine(f"sqlite:///{tmp_path / 'controller' / 'controller.db'}")
        for device_id in DEVICES:
            (row,) = [r for r in done["device_rows"] if r["device_id"] == device_id]
            assert (row["state"], row["attempts"]) == ("succeeded", 1), row
            _check_device(db, device_id, done["deployment_id"], devices.log(device_id),
                          stats[device_id]["telemetry_windows"])
            assert stats[device_id]["acks_refused"] == 0
        db.dispose()
        api.close()
    finally:
        traffic.done.set()
        devices.stop()
        controller.stop()
        broker.stop()
