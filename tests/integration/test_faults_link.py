"""A device behind a slow, lossy link completes its update by resuming (issue 12 item 9), with real
processes: the agent runs inside a network namespace created by the test (``ip netns exec``), joined to
this one by a veth pair whose two ends are shaped with ``tc`` (netem delay and loss where the kernel
has it, an HTB rate limit where it does not); the controller (``edgefleet serve``) and a Mosquitto of the
test's own stay outside. Between the device and the controller's HTTP port sits a relay that drops
every connection after 512 KiB (a flow lost on the way), so a bundle of a few MB can only arrive in
pieces: the agent resumes each time with a ``Range`` request from where its part file ends, the bundle
verifies and installs, and the new model serves."""

from __future__ import annotations

import re

import numpy as np
import pytest
from faultkit import Devices, DroppingRelay, LinkNamespace, Mosquitto
from fleetkit import ControllerProcess

from edgefleet.cloud.cli.client import ControllerClient
from edgefleet.protocol.bundle import build_bundle, parse_recipe

from controllerkit import ADMIN
from onnx_models import mlp_onnx
from testkit import free_port, wait_until

pytestmark = pytest.mark.integration

DEVICE = "link-dev-1"
DROP_AFTER = 512 * 1024


def test_an_update_over_a_lossy_slow_link_completes_by_resuming(tmp_path, release_key, topic_prefix):
    ns = LinkNamespace()
    ns.create()
    relay = broker = controller = None
    devices = Devices(tmp_path, token=ADMIN)
    try:
        shaping = ns.shape(loss_percent=5, delay_ms=100, rate_kbit=16_000)
        broker = Mosquitto(tmp_path / "mosquitto", extra_hosts=(ns.host_ip,)).start()
        api_port = free_port()
        relay = DroppingRelay((ns.host_ip, free_port()), ("127.0.0.1", api_port), drop_after=DROP_AFTER).start()
        controller = ControllerProcess(tmp_path, admin_token=ADMIN, broker_url=broker.url, prefix=topic_prefix,
                                       release_pub=release_key.public_path, reconcile_interval_s=0.5,
                                       listen_port=api_port, public_url=relay.url,
                                       device_broker_url=broker.url_on(ns.host_ip))
        controller.port, controller.url = api_port, f"http://127.0.0.1:{api_port}"
        controller.start()
        inside = tuple(ns.exec_prefix)
        devices.enroll(relay.url, DEVICE, settings={
            "inference_listen": f"{ns.device_ip}:0", "telemetry_interval_s": 1, "heartbeat_interval_s": 2,
            "health_check_inferences": 0, "download_attempts": 40, "download_timeout_s": 10, "retry_base_s": 0.2,
            "retry_cap_s": 1.0, "reconnect_min_s": 0.2, "reconnect_max_s": 1.0}, prefix=inside)
        devices.run(DEVICE, prefix=inside)
        api = ControllerClient(controller.url, ADMIN)
        wait_until(lambda: api.get(f"/api/v1/devices/{DEVICE}")["online"], what="the device online", timeout=60)

        recipe = parse_recipe({"bundle": {"name": "far-away", "version": "2.0.0", "build": 2, "runtime": "onnx"}})
        data = build_bundle(recipe, mlp_onnx(n_hidden=70_000), samples=np.zeros((8, 4), np.float32),
                            release_key=release_key.private).data
        assert len(data) > 3 * DROP_AFTER
        digest = api.request("POST", "/api/v1/bundles", content=data)["digest"]
        dep = api.post("/api/v1/deployments", {"bundle": digest, "device_ids": [DEVICE]})
        final = wait_until(lambda: (d := api.get(f"/api/v1/deployments/{dep['id']}"))["status"]
                           in ("succeeded", "failed") and d, what="the update to end", timeout=150)
        assert final["status"] == "succeeded", (final, shaping, devices.log(DEVICE)[-3000:])

        gets = [r for r in relay.requests if r["line"].startswith("GET ") and digest[:12] in r["line"]
                and "download" in r["line"]]
        offsets = [int(m.group(1)) for r in gets if r["range"] and (m := re.fullmatch(r"bytes=(\d+)-", r["range"]))]
        assert relay.drops >= 3 and len(gets) >= 4, (relay.drops, gets)
        assert gets[0]["range"] is None and offsets == sorted(offsets) and offsets[0] >= DROP_AFTER // 2, gets
        assert len(offsets) == len(gets) - 1          # every later request resumed where the part file ended
        assert "download failed" in devices.log(DEVICE) and "retry" in devices.log(DEVICE)
        served = devices.local(DEVICE, "/v1/predict", {"inputs": {"x": np.zeros((1, 4)).tolist()}})
        assert served["bundle"]["version"] == "2.0.0" and served["bundle"]["digest"] == digest
        api.close()
    finally:
        devices.stop()
        if controller is not None:
            controller.stop()
        if relay is not None:
            relay.stop()
        if broker is not None:
            broker.stop()
        ns.delete()
