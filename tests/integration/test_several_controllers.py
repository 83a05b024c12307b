"""Two ``edgefleet serve`` processes on one PostgreSQL database and one Mosquitto (docs/operations.md,
"Several controllers"): REST answered by either, device messages split between them through an MQTT 5
shared subscription and each stored once, the background loops run by one of them at a time under a
lease. The one running the reconciler is killed with SIGKILL in the middle of a staged rollout: the
other takes the lease over when it expires and finishes the rollout, with no device skipped and none
ordered twice (the simulated devices count every order copy and every refused order)."""

from __future__ import annotations

import asyncio
import re
import time
import urllib.request
import uuid
from collections.abc import Awaitable, Callable

import numpy as np
import pytest
from fleetkit import ControllerProcess
from proxykit import Balancer
from sqlalchemy import create_engine, text

from edgefleet.cloud.simulate.credentials import FleetCredentials, enroll_fleet
from edgefleet.cloud.simulate.fleet import Fleet, device_ids
from edgefleet.cloud.simulate.knobs import Knobs
from edgefleet.cloud.simulate.run import http_client
from edgefleet.protocol.bundle import build_bundle, parse_recipe

from controllerkit import ADMIN
from testkit import postgres_database, run_coroutine

pytestmark = [pytest.mark.integration, pytest.mark.postgres]

N = 100
AUTH = {"Authorization": f"Bearer {ADMIN}"}
LEASE_TTL_S = 3.0
NO_FIELD_GATES = {"runtime": {"enabled": False}, "behaviour": {"enabled": False},
                  "accuracy": {"enabled": False}}
POLICY = {"stages": [{"name": "canary", "select": "count", "count": 4, "soak_s": 2},
                     {"name": "half", "select": "percent", "percent": 50, "soak_s": 3},
                     {"name": "rest", "select": "rest"}],
          "gates": NO_FIELD_GATES}


@pytest.fixture
def database():
    with postgres_database() as url:
        yield url


@pytest.fixture
def controllers(tmp_path, mqtt_broker, topic_prefix, release_key, database):
    """Two controllers sharing a data dir (keys, bundles) and a database, each its own MQTT client id, behind
    one load balancer: its address is the public URL in the orders, so a device downloads from whichever
    controller is alive."""
    shared = tmp_path / "shared-data"
    balancer = Balancer()
    procs = []
    for name in ("c1", "c2"):
        base = tmp_path / name
        base.mkdir()
        procs.append(ControllerProcess(base, admin_token=ADMIN, broker_url=mqtt_broker.url, prefix=topic_prefix,
                                       release_pub=release_key.public_path, data_dir=shared, database_url=database,
                                       mqtt_client_id=f"edgefleet-{name}-{uuid.uuid4().hex[:6]}",
                                       shared_subscription_group="controllers", lease_ttl_s=LEASE_TTL_S,
                                       reconcile_interval_s=0.5, heartbeat_timeout_s=120,
                                       public_url=balancer.url))
    balancer.upstreams = [proc.port for proc in procs]
    procs[0].start()   # the first one creates the controller key in the shared data dir
    procs[1].start()
    yield procs
    for proc in procs:
        proc.stop()
    balancer.close()


def stored_windows(proc: ControllerProcess) -> float:
    """What this controller's own ingest decoded of telemetry (its /metrics, one process each)."""
    with urllib.request.urlopen(f"{proc.url}/metrics", timeout=5) as r:
        body = r.read().decode()
    found = re.search(r'^edgefleet_mqtt_messages_total\{kind="telemetry"\} (\S+)$', body, re.MULTILINE)
    return float(found.group(1)) if found else 0.0


def lease_holder(database: str, name: str) -> tuple[str, int]:
    engine = create_engine(database)
    try:
        with engine.connect() as conn:
            row = conn.execute(text("SELECT holder, generation FROM leases WHERE name = :n AND expires_at > :now"),
                               {"n": name, "now": time.time()}).first()
    finally:
        engine.dispose()
    return (row[0], row[1]) if row else ("", 0)


async def until(check: Callable[[], Awaitable[object]], what: str, timeout: float = 120.0) -> object:
    deadline = time.monotonic() + timeout
    while not (value := await check()):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")
        await asyncio.sleep(0.25)
    return value


def test_two_controllers_share_the_work_and_one_finishes_the_rollout_the_other_was_running(
        controllers, database, release_key, tiny_onnx):
    c1, c2 = controllers
    recipe = parse_recipe({"bundle": {"name": "shared", "version": "1.0.0", "build": 2, "runtime": "onnx"}})
    built = build_bundle(recipe, tiny_onnx, samples=np.zeros((8, 4), np.float32), release_key=release_key.private)
    prefix = f"m{uuid.uuid4().hex[:8]}"
    knobs = Knobs(devices=N, device_prefix=prefix, heartbeat_s=5, telemetry_s=1, verify_fraction=0.25,
                  chunk_bytes=max(1024, len(built.data) // 2), connect_rate=200, download_concurrency=8, seed=11)

    async def scenario() -> None:
        async with http_client(c1.url, connections=16) as h1, http_client(c2.url, connections=16) as h2:
            assert (await h1.post("/api/v1/bundles", content=built.data, headers=AUTH)).status_code == 201
            creds = FleetCredentials(controller_url=c1.url)
            assert await enroll_fleet(h2, creds, device_ids(knobs), token=ADMIN, tags=[prefix],
                                      concurrency=8) == N   # enrolled through the other controller

            async def listed(http, **params: object) -> list[dict]:
                r = await http.get("/api/v1/devices", params={"tag": prefix, "limit": 1000, **params}, headers=AUTH)
                return r.json()

            fleet = Fleet(knobs, creds, http=h1)
            try:
                await fleet.start()
                for http in (h1, h2):   # either controller knows every device and that it is online
                    await until(lambda http=http: _len_is(listed(http, online=True), N), "every device online")

                await until(lambda: _true(all(n.device.window_seq >= 3 for n in fleet.nodes.values())),
                            "three windows from every device")
                fleet.telemetry_paused = True
                await asyncio.sleep(1.0)
                sent = fleet.windows_sent

                async def stored_once() -> bool:
                    r = await h2.get("/api/v1/telemetry/summary", params={"group_by": "tag", "key": prefix},
                                     headers=AUTH)
                    return r.json().get(prefix, {}).get("windows") == sent
                await until(stored_once, f"the {sent} windows stored exactly once between the two")
                split = [stored_windows(c1), stored_windows(c2)]
                assert all(share > 0 for share in split), f"ingest not shared: {split}"   # both took a share
                assert sum(split) == sent   # a shared subscription hands each window to one of them

                fleet.mark()
                r = await h2.post("/api/v1/rollouts", json={"bundle": built.digest, "selector": {"tags": [prefix]},
                                                            "policy": POLICY}, headers=AUTH)
                assert r.status_code == 201, r.text
                rollout_id = r.json()["id"]

                async def stage_state(index: int) -> str:
                    body = (await h1.get(f"/api/v1/rollouts/{rollout_id}", headers=AUTH)).json()
                    return body["stages"][index]["state"]

                await until(lambda: _eq(stage_state(0), "passed"), "the canary stage passing")
                holder, generation = lease_holder(database, "reconciler")
                victim, survivor = (c1, c2) if holder.split(":")[1] == str(c1.proc.pid) else (c2, c1)
                assert holder.split(":")[1] == str(victim.proc.pid)
                victim.kill()   # SIGKILL in the middle of the rollout: no release of its leases

                async def final() -> dict | None:
                    body = (await (h1 if survivor is c1 else h2).get(f"/api/v1/rollouts/{rollout_id}",
                                                                      headers=AUTH)).json()
                    return body if body["state"] in ("succeeded", "aborted", "cancelled", "paused") else None
                done = await until(final, "the surviving controller finishing the rollout", timeout=180)
                assert done["state"] == "succeeded", (done["reason"], done["stages"])
                assert [s["state"] for s in done["stages"]] == ["passed", "passed", "passed"]
                new_holder, new_generation = lease_holder(database, "reconciler")
                assert new_holder.split(":")[1] == str(survivor.proc.pid) and new_generation > generation

                snap = fleet.snapshot()
                assert snap["rollout"]["orders"] == N                  # every device ordered ...
                assert fleet.counts["order_copies"] == 0               # ... once: no copy of an order
                assert fleet.counts["orders_refused"] == 0             # ... and no second order for the same
                assert snap["rollout"]["outcomes"] == {"committed": N}
                assert {d.sequence for d in creds.devices.values()} == {1}
                survivor_http = h1 if survivor is c1 else h2
                assert {d["installed"]["digest"] for d in await listed(survivor_http)} == {built.digest}
            finally:
                await fleet.stop()

    run_coroutine(scenario())


async def _true(value: bool) -> bool:
    return value


async def _eq(value: Awaitable[object], expected: object) -> bool:
    return await value == expected


async def _len_is(items: Awaitable[list[dict]], n: int) -> bool:
    return len(await items) == n
