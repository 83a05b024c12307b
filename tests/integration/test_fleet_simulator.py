"""The fleet simulator at CI size against a real controller (``edgefleet serve`` in its own process) on
the real Mosquitto and on the embedded broker: 200 simulated devices, each its own MQTT connection,
credentials and message key, enroll over REST, say hello, send telemetry (stored exactly once), take a
deployment to all of them (real HTTP Range downloads; a quarter verify each bundle completely, the rest
hash it), and come back online after a reconnect storm."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable

import numpy as np
import pytest
from fleetkit import ControllerProcess

from edgefleet.cloud.simulate.credentials import FleetCredentials, enroll_fleet, load_state, save_state
from edgefleet.cloud.simulate.fleet import Fleet, device_ids
from edgefleet.cloud.simulate.knobs import Knobs
from edgefleet.cloud.simulate.run import http_client, knobs_from
from edgefleet.protocol.bundle import build_bundle, parse_recipe
from edgefleet.protocol.errors import ConfigError

from controllerkit import ADMIN
from testkit import run_coroutine

pytestmark = pytest.mark.integration

N = 200
AUTH = {"Authorization": f"Bearer {ADMIN}"}


async def until(check: Callable[[], Awaitable[object]], what: str, timeout: float = 120.0) -> object:
    deadline = time.monotonic() + timeout
    while True:
        value = await check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")
        await asyncio.sleep(0.25)


@pytest.fixture(params=["mosquitto", "embedded"])
def controller(request, tmp_path, topic_prefix, release_key):
    broker_url = request.getfixturevalue("mqtt_broker").url if request.param == "mosquitto" else None
    proc = ControllerProcess(tmp_path, admin_token=ADMIN, broker_url=broker_url, prefix=topic_prefix,
                             release_pub=release_key.public_path, reconcile_interval_s=0.5)
    proc.start()
    yield proc
    proc.stop()


def test_two_hundred_devices_enroll_report_update_and_survive_a_storm(controller, tmp_path, release_key, tiny_onnx):
    recipe = parse_recipe({"bundle": {"name": "simmed", "version": "1.0.0", "build": 3, "runtime": "onnx"}})
    built = build_bundle(recipe, tiny_onnx, samples=np.zeros((8, 4), np.float32), release_key=release_key.private)
    prefix = f"s{uuid.uuid4().hex[:8]}"
    knobs = Knobs(devices=N, device_prefix=prefix, heartbeat_s=30, telemetry_s=2, verify_fraction=0.25,
                  chunk_bytes=max(1024, len(built.data) // 3), drift_fraction=0.2, connect_rate=400,
                  download_concurrency=16, seed=7)
    state = tmp_path / "sim-state.json"

    async def scenario() -> None:
        async with http_client(controller.url, connections=32) as http:
            assert (await http.post("/api/v1/bundles", content=built.data, headers=AUTH)).status_code == 201
            creds = FleetCredentials(controller_url=controller.url)
            assert await enroll_fleet(http, creds, device_ids(knobs), token=ADMIN, tags=[prefix], concurrency=16,
                                      state_path=state) == N
            assert len({d.username for d in creds.devices.values()}) == N        # credentials of its own each
            assert len({d.key_hex for d in creds.devices.values()}) == N
            again = load_state(state, controller.url)                         # a second run enrolls nothing
            assert await enroll_fleet(http, again, device_ids(knobs), token=ADMIN, tags=[prefix],
                                      concurrency=16) == 0

            async def listed(**params: object) -> list[dict]:
                r = await http.get("/api/v1/devices", params={"tag": prefix, "limit": 10_000, **params}, headers=AUTH)
                return r.json()

            fleet = Fleet(knobs, again, http=http)
            try:
                await fleet.start()
                await until(lambda: _true(fleet.online == N), "every simulated connection up")
                await until(lambda: _len_is(listed(online=True), N), "200 devices online at the controller")
                devices = await listed()
                assert {d["arch"] for d in devices} == {"x86_64"}                # hello ingested

                await until(lambda: _true(all(n.device.window_seq >= 2 for n in fleet.nodes.values())),
                            "two windows from every device")
                fleet.telemetry_paused = True
                await asyncio.sleep(0.5)                                          # the last publishes leave
                sent = fleet.windows_sent
                assert fleet.counts["unsent_telemetry"] == 0

                async def stored() -> bool:
                    r = await http.get("/api/v1/telemetry/summary", params={"group_by": "tag", "key": prefix},
                                       headers=AUTH)
                    return r.json().get(prefix, {}).get("windows") == sent
                await until(stored, f"the controller storing each of the {sent} windows once")

                fleet.mark()
                dep = (await http.post("/api/v1/deployments", json={"bundle": built.digest, "tag": prefix},
                                       headers=AUTH)).json()

                async def finished() -> bool:
                    body = (await http.get(f"/api/v1/deployments/{dep['id']}", headers=AUTH)).json()
                    return body["status"] == "succeeded"
                await until(finished, "every target committed", timeout=240)
                snap = fleet.snapshot()
                assert snap["rollout"]["finals"] == N and snap["rollout"]["outcomes"] == {"committed": N}
                assert snap["counts"]["verified"] >= 1 and snap["counts"]["hashed"] >= 1
                assert snap["counts"]["range_requests"] >= 2 * N                  # several ranges per bundle
                assert {d["installed"]["digest"] for d in await listed()} == {built.digest}

                await fleet.storm(down_s=1.0)
                assert fleet.counts["disconnects"] >= N
                await until(lambda: _true(fleet.online == N), "every connection back after the storm")
                await until(lambda: _len_is(listed(online=True), N), "200 devices online again at the controller")
                assert fleet.counts["connects"] >= 2 * N
            finally:
                await fleet.stop()
                save_state(state, again)
        assert load_state(state, controller.url).devices[f"{prefix}-00000"].sequence >= 1

    run_coroutine(scenario())


async def _true(value: bool) -> bool:
    return value


async def _len_is(items: Awaitable[list[dict]], n: int) -> bool:
    return len(await items) == n


def test_a_bad_knob_is_a_config_error_naming_it():
    with pytest.raises(ConfigError) as info:
        knobs_from({"devices": 0})
    assert info.value.where == "--devices" and "greater than or equal to 1" in str(info.value)
    with pytest.raises(ConfigError) as info:
        knobs_from({"download_mode": "sometimes"})
    assert info.value.where == "--download-mode"
