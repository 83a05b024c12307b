"""Ground truth from the field with real agents on a real broker (Mosquitto and the embedded one):
the application labels predictions through the agent's local ``/v1/feedback``; the labels ride in
the telemetry windows through the outbox, the controller reports accuracy per device, and an agent
restart loses and duplicates none of the labels it had accepted."""

from __future__ import annotations

import signal
import subprocess
import sys

import numpy as np
import pytest
from fleetkit import feedback, predict
from test_rollouts_agents import DEVICES, fleet, models  # noqa: F401  (the shared fleet fixtures)

from edgefleet.cloud.cli.client import ControllerClient
from edgefleet.compression.samples import load_digits_split

from testkit import wait_until

pytestmark = pytest.mark.integration


def by_device(fleet) -> dict:  # noqa: F811
    with ControllerClient(fleet.controller.url, fleet.controller.env["EDGEFLEET_ADMIN_TOKEN"]) as api:
        summary: dict = api.get("/api/v1/telemetry/summary", group_by="device")
    return summary


def accuracy_at_controller(fleet, device_id: str) -> dict:  # noqa: F811
    return by_device(fleet).get(device_id, {}).get("feedback", {})


def restart(fleet, device: str) -> None:  # noqa: F811
    """SIGTERM the device's agent (its open window goes to the outbox) and start it again."""
    state_dir, i = fleet.agents.dirs[device], DEVICES.index(device)
    proc = fleet.agents.procs[i]
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=30)
    (state_dir / "inference.addr").unlink()
    log = open(state_dir / "agent.log", "ab")   # noqa: SIM115  (the child keeps its descriptor)
    fleet.agents.procs[i] = subprocess.Popen(
        [sys.executable, "-m", "edgefleet.agent.daemon", "--config", str(state_dir / "agent.toml")],
        stdout=log, stderr=subprocess.STDOUT)
    log.close()
    wait_until(lambda: (state_dir / "inference.addr").exists(), "the agent serving again", timeout=60)


def test_labels_from_the_application_arrive_as_accuracy_and_survive_a_restart(fleet):  # noqa: F811
    fleet.start_devices("site")
    fleet.install_everywhere("v1")
    data = load_digits_split()
    device = DEVICES[0]
    state_dir = fleet.agents.dirs[device]
    rng = np.random.default_rng(5)
    totals = {"labelled": 0, "correct": 0}

    def label_some(requests: int = 6) -> None:
        for _ in range(requests):
            idx = rng.choice(len(data.x_test), 10, replace=False)
            answer = predict(state_dir, data.x_test[idx])
            truth = data.y_test[idx].tolist()
            got = feedback(state_dir, answer["prediction_id"], truth)
            predicted = np.asarray(answer["outputs"][next(iter(answer["outputs"]))]).argmax(axis=1)
            assert got == {"labelled": 10, "correct": int((predicted == np.asarray(truth)).sum())}
            totals["labelled"] += got["labelled"]
            totals["correct"] += got["correct"]

    # 1: the controller is down (with the embedded broker, the broker too) while labels come in, and the
    # agent restarts before it is back: the labels wait in the outbox (or the broker's session for it)
    fleet.controller.kill()
    label_some()
    restart(fleet, device)
    fleet.controller.start()
    wait_until(lambda: accuracy_at_controller(fleet, device).get("labelled") == 60, "60 labels at the controller",
               timeout=90)
    # 2: more labels with everything up
    label_some()
    wait_until(lambda: accuracy_at_controller(fleet, device).get("labelled") == 120, "120 labels at the controller",
               timeout=60)
    # nothing arrives twice: windows that come later leave the count as it is
    windows = by_device(fleet)[device]["windows"]
    wait_until(lambda: by_device(fleet)[device]["windows"] >= windows + 4, "four more windows", timeout=60)
    summary = accuracy_at_controller(fleet, device)
    assert summary["labelled"] == totals["labelled"] == 120 and summary["correct"] == totals["correct"]
    assert summary["accuracy"] == pytest.approx(totals["correct"] / 120) and summary["accuracy"] > 0.8
    cells = summary["confusion"]
    assert sum(c for row in cells.values() for c in row.values()) == 120
    assert sum(row.get(true, 0) for true, row in cells.items()) == totals["correct"]
    others = by_device(fleet)
    assert all(others[d]["feedback"]["labelled"] == 0 for d in DEVICES[1:] if d in others)
