"""PostgreSQL restarted under a running controller (issue 12 item 9): a PostgreSQL of the test's own
(``initdb`` into a tmp dir, ``pg_ctl`` on a free port; the machine's shared one is never touched), a real
``edgefleet serve`` on it, a real agent with live inference traffic on the real Mosquitto.

The database goes away (``pg_ctl stop -m fast``) for a few seconds while the device keeps producing
telemetry windows, and comes back on the same port. Without being restarted, the controller answers
REST again, and every window is stored exactly once: windows that came during the outage stayed in the
agent's outbox (the controller acknowledges only what it has stored), were sent again and stored
after. A deployment made after the outage installs."""

from __future__ import annotations

import time

import numpy as np
import pytest
from faultkit import Devices, PrivatePostgres
from fleetkit import ControllerProcess
from sqlalchemy import create_engine, text

from edgefleet.cloud.cli.client import ApiError, ControllerClient
from edgefleet.protocol.bundle import build_bundle, parse_recipe

from controllerkit import ADMIN
from onnx_models import mlp_onnx
from testkit import wait_until

pytestmark = pytest.mark.integration

DEVICE = "pg-dev-1"
AGENT = {"inference_listen": "127.0.0.1:0", "telemetry_interval_s": 0.3, "heartbeat_interval_s": 2,
         "health_check_inferences": 0, "ack_timeout_s": 1.0, "ack_retry_cap_s": 2.0}


def _bundle(release_key, version: str, build: int) -> bytes:
    recipe = parse_recipe({"bundle": {"name": "pg-faults", "version": version, "build": build, "runtime": "onnx"}})
    return build_bundle(recipe, mlp_onnx(seed=build), samples=np.zeros((8, 4), np.float32),
                        release_key=release_key.private).data


def _stored_windows(db, device_id: str) -> list[int]:
    with db.connect() as conn:
        return [r[0] for r in conn.execute(text("SELECT window_seq FROM telemetry_windows WHERE device_id = :d "
                                                "ORDER BY window_seq"), {"d": device_id})]


def test_postgres_restarted_under_the_controller_loses_nothing(tmp_path, mqtt_broker, topic_prefix, release_key):
    pg = PrivatePostgres().init()
    pg.start()
    controller = ControllerProcess(tmp_path, admin_token=ADMIN, broker_url=mqtt_broker.url, prefix=topic_prefix,
                                   release_pub=release_key.public_path, reconcile_interval_s=0.5,
                                   database_url=pg.url)
    devices = Devices(tmp_path, token=ADMIN)
    db = create_engine(pg.url, pool_pre_ping=True)
    try:
        controller.start()
        devices.enroll(controller.url, DEVICE, tags=("pg",), settings=AGENT)
        devices.run(DEVICE)
        api = ControllerClient(controller.url, ADMIN)

        def predict() -> dict:
            return devices.local(DEVICE, "/v1/predict", {"inputs": {"x": np.zeros((2, 4)).tolist()}})

        def deploy(data: bytes) -> dict:
            up = api.request("POST", "/api/v1/bundles", content=data)
            dep = api.post("/api/v1/deployments", {"bundle": up["digest"], "device_ids": [DEVICE]})
            return wait_until(lambda: (d := api.get(f"/api/v1/deployments/{dep['id']}"))["status"]
                              in ("succeeded", "failed") and d, what="the deployment to end", timeout=90)

        wait_until(lambda: api.get(f"/api/v1/devices/{DEVICE}")["online"], what="the device online")
        assert deploy(_bundle(release_key, "1.0.0", 1))["status"] == "succeeded"
        predict()
        wait_until(lambda: _stored_windows(db, DEVICE), what="a first window stored")

        pg.stop("fast")                                                   # the database goes away
        with pytest.raises(ApiError) as refused:                          # refused, not hanging
            api.get("/api/v1/devices")
        assert (refused.value.status, refused.value.code, refused.value.where) == (503, "transport_failed",
                                                                                   "database"), refused.value
        before = devices.stats(DEVICE)["telemetry_windows"]
        end = time.monotonic() + 4
        while time.monotonic() < end:                                     # the device goes on working
            predict()
            time.sleep(0.1)
        during = devices.stats(DEVICE)["telemetry_windows"]
        assert during >= before + 5
        assert devices.stats(DEVICE)["outbox_pending"] >= 5               # kept: nothing acknowledged them
        pg.start()                                                         # back, same port; controller not restarted

        wait_until(lambda: _answers(api), what="the controller answering REST again", timeout=60)
        wait_until(lambda: devices.stats(DEVICE)["outbox_pending"] == 0, what="the outbox drained", timeout=60)
        total = devices.stats(DEVICE)["telemetry_windows"]
        seqs = _stored_windows(db, DEVICE)
        assert seqs == list(range(total)), f"lost {sorted(set(range(total)) - set(seqs))} / doubled"
        assert deploy(_bundle(release_key, "2.0.0", 2))["status"] == "succeeded"   # and it keeps working
        assert predict()["bundle"]["version"] == "2.0.0"
        assert controller.proc is not None and controller.proc.poll() is None      # never restarted
        api.close()
    finally:
        devices.stop()
        controller.stop()
        db.dispose()
        pg.remove()


def _answers(api: ControllerClient) -> bool:
    try:
        api.get("/api/v1/devices")
        return True
    except Exception:   # noqa: BLE001 (still failing over)
        return False
