"""The embedded broker keeps its port across ``edgefleet serve`` restarts (issue 12 item 8): a real
agent enrolled before the restart finds the broker again, with nothing configured but the data
directory. A restart that finds the port taken stops at once with what, where and what to do."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import tomllib

import pytest
from brokerkit import enroll_agent
from fleetkit import Agents, ControllerProcess

from edgefleet.cloud.cli.client import ControllerClient
from edgefleet.cloud.mqtt.broker import PORT_FILE
from edgefleet.protocol.brokers import parse_broker_url

from testkit import wait_until

pytestmark = pytest.mark.integration

ADMIN = "eft_port-test-admin"


def test_a_device_enrolled_before_a_restart_reconnects(tmp_path, topic_prefix, release_key):
    controller = ControllerProcess(tmp_path, admin_token=ADMIN, broker_url=None, prefix=topic_prefix,
                                   release_pub=release_key.public_path, heartbeat_timeout_s=30)
    controller.env.pop("EDGEFLEET_EMBEDDED_BROKER_PORT")   # the default: port 0, chosen by the controller
    agents = Agents(tmp_path)
    api = ControllerClient(controller.url, ADMIN)
    try:
        controller.start()
        state_dir = enroll_agent(api, controller.url, tmp_path, "cam-1", None, None, topic_prefix)
        kept = (tmp_path / "controller" / PORT_FILE).read_text()
        announced = parse_broker_url(tomllib.loads((state_dir / "agent.toml").read_text())["broker_url"])
        assert announced.port == int(kept)
        agents.run(state_dir)
        wait_until(lambda: api.get("/api/v1/devices/cam-1")["online"], "cam-1 online", timeout=60)

        controller.stop()
        restarted = time.time()
        controller.start()
        seen = wait_until(lambda: (d := api.get("/api/v1/devices/cam-1"))["online"]
                          and (d["last_seen"] or 0) > restarted and d, "cam-1 back after the restart", timeout=60)
        assert seen["agent_version"]
        assert (tmp_path / "controller" / PORT_FILE).read_text() == kept
        assert controller.log().count(f"embedded MQTT broker listening on mqtt://127.0.0.1:{kept.strip()}") == 2
    finally:
        agents.stop()
        api.close()
        controller.stop()


def test_a_restart_with_the_port_taken_says_what_where_and_what_to_do(tmp_path):
    data_dir = tmp_path / "controller"
    env = {k: v for k, v in os.environ.items() if not k.startswith("EDGEFLEET_")}
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        data_dir.mkdir()
        (data_dir / PORT_FILE).write_text(f"{port}\n")
        done = subprocess.run([sys.executable, "-m", "edgefleet.cloud.cli", "serve", "--port", "0", "--data-dir",
                               str(data_dir)], capture_output=True, text=True, timeout=60, env=env)
    assert done.returncode == 2, done.stderr
    message = " ".join(done.stderr.split())
    assert f"{data_dir / PORT_FILE}: port {port} of the embedded MQTT broker" in message
    assert "taken by another process" in message and f"ss -ltnp 'sport = :{port}'" in message
    assert "Traceback" not in done.stderr
    assert not (data_dir / "controller.db").exists()   # refused before anything was made
