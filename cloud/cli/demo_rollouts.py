"""The demo's second act: version 2 of the model goes out in stages (canary, half, rest), judged
by what it does on the devices.

First a build with a calibration bug: it installs and answers fine, and predicts "0" for nearly
everything. The canary's prediction gate fails against the devices still on version 1, the
rollout aborts, and the canary gets a signed order for the bundle it ran before. Then the good
build goes through all three stages, each judged by its gates, while every device serves traffic.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Self

import numpy as np
import onnx
from onnx import numpy_helper

from edgefleet.cloud.cli.client import ControllerClient
from edgefleet.cloud.cli.output import print_table
from edgefleet.cloud.vocabulary import DeviceState, RolloutState, StageState
from edgefleet.protocol.errors import TransportError

DEMO_LATENCY_MARGIN_MS = 5.0
POLICY: dict[str, Any] = {
    "stages": [{"name": "canary", "select": "count", "count": 1, "soak_s": 10, "max_soak_s": 40},
               {"name": "half", "select": "percent", "percent": 50, "soak_s": 10, "max_soak_s": 40},
               {"name": "rest", "select": "rest"}],
    "device_timeout_s": 120,
    # a demo's few seconds of telemetry: 4 windows per arm before a verdict (production: 20 or more)
    # (and PSI from one second of inputs is noisy: a wider drift margin; five processes share a
    # laptop's cores, so one busy second moves a p95 by milliseconds: a wider latency margin)
    "gates": {"statistics": {"min_windows": 4}, "runtime": {"latency_margin_ms": DEMO_LATENCY_MARGIN_MS},
              "behaviour": {"min_samples": 150, "drift_psi_margin": 0.2}},
}
FINAL = (RolloutState.SUCCEEDED, RolloutState.ABORTED, RolloutState.CANCELLED, RolloutState.PAUSED)
"""Where the demo stops following a rollout (paused: a person would have to act)."""
Say = Callable[[str], None]
Post = Callable[[str, dict[str, Any]], dict[str, Any]]


def predicts_one_class(model: bytes, label: int = 0, boost: float = 50.0) -> bytes:
    """The same network with the output bias of ``label`` raised: it installs, passes its smoke
    test's shape checks and answers every request, and predicts ``label`` for nearly everything
    (the kind of calibration or label-mapping bug an install check cannot see)."""
    proto = onnx.load_from_string(model)
    bias = max((i for i in proto.graph.initializer if i.name.endswith(".bias")), key=lambda i: i.name)
    values = numpy_helper.to_array(bias).copy()
    values[label] += boost
    bias.CopyFrom(numpy_helper.from_array(values, bias.name))
    data: bytes = proto.SerializeToString()
    return data


class Background:
    """A daemon thread running :meth:`_run` for as long as the ``with`` block (``_stop`` says when to end)."""

    def __init__(self, name: str) -> None:
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(30)

    def _run(self) -> None:
        raise NotImplementedError


class Traffic(Background):
    """Clean held-out digits to every device, round robin, until stopped (the gates need telemetry)."""

    def __init__(self, addresses: list[Path], x: np.ndarray, post: Post, batch: int = 10) -> None:
        super().__init__("demo-traffic")
        self.addresses, self.x, self.post, self.batch = addresses, x, post, batch
        self.rng = np.random.default_rng(1)

    def _run(self) -> None:
        while not self._stop.is_set():
            for path in self.addresses:
                idx = self.rng.choice(len(self.x), self.batch, replace=False)
                with contextlib.suppress(OSError):   # swapping bundles right now: the next request goes through
                    self.post(f"http://{path.read_text().strip()}/v1/predict",
                              {"inputs": {"input": self.x[idx].tolist()}})
            self._stop.wait(0.05)


def run_rollouts(client: ControllerClient, *, bad: dict[str, Any], good: dict[str, Any], labels: dict[str, str],
                 say: Say, wait_s: float = 180.0) -> bool:
    """Roll ``bad`` out (aborted at the canary, rolled back), then ``good`` (three stages). Returns
    whether both ended as they should."""
    aborted = follow_rollout(client, client.post("/api/v1/rollouts", {
        "bundle": bad["digest"], "selector": {"tags": ["demo"]}, "policy": POLICY,
        "note": "demo: version 2 with a calibration bug"}), say, labels, wait_s)
    canary = [r for r in aborted["device_rows"] if r["stage_index"] == 0]
    if aborted["state"] == RolloutState.ABORTED and canary:
        _wait_reverted(client, aborted["id"], wait_s)
        say(f"{canary[0]['device_id']} rolled back to {labels.get(canary[0]['previous_digest'] or '', '?')}; "
            f"{sum(r['ordered_at'] is None for r in aborted['device_rows'])} other devices never received it")
    done = follow_rollout(client, client.post("/api/v1/rollouts", {
        "bundle": good["digest"], "selector": {"tags": ["demo"]}, "policy": POLICY,
        "note": "demo: version 2"}), say, labels, wait_s)
    canary_stage = done["stages"][0]
    print_table(f"gates of the canary stage of {labels[good['digest']]}", ["gate", "verdict", "evidence"],
                [(v["gate"], v["verdict"], v["summary"]) for v in canary_stage["verdicts"]])
    return bool(aborted["state"] == RolloutState.ABORTED and done["state"] == RolloutState.SUCCEEDED)


def follow_rollout(client: ControllerClient, ro: dict[str, Any], say: Say, labels: dict[str, str],
                   wait_s: float) -> dict[str, Any]:
    say(f"rollout {ro['id']} of {labels[ro['bundle_digest']]} to {ro['target']}: "
        + " → ".join(s["name"] for s in ro["stages"]))
    told: set[str] = set()
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        for s in ro["stages"]:
            if s["state"] in (StageState.PASSED, StageState.FAILED) and s["name"] not in told:
                told.add(s["name"])
                gates = ", ".join(f"{v['gate']} {_verdict(v)}" for v in s["verdicts"])
                devices = ", ".join(r["device_id"] for r in ro["device_rows"] if r["stage_index"] == s["index"])
                say(f"  stage {s['name']} ({devices}) {s['state']}: {gates}")
        if ro["state"] in FINAL:
            say(f"  → {ro['state']}" + (f": {ro['reason']}" if ro["reason"] else ""))
            return ro
        time.sleep(0.5)
        ro = client.get(f"/api/v1/rollouts/{ro['id']}")
    raise TransportError(f"rollout {ro['id']} did not end in {wait_s:.0f}s (it is {ro['state']})", where="demo",
                         hint="see `edgefleet rollout show` and the agent logs")


def _verdict(v: dict[str, Any]) -> str:
    """A gate's verdict as narrated: a pass that judged nothing says so."""
    return "not judged" if v["verdict"] == "pass" and v["summary"].startswith("not judged") else str(v["verdict"])


def _wait_reverted(client: ControllerClient, rollout_id: str, wait_s: float) -> None:
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        rows = client.get(f"/api/v1/rollouts/{rollout_id}")["device_rows"]
        if all(r["state"] != DeviceState.REVERTING for r in rows):
            return
        time.sleep(0.5)
    raise TransportError(f"the canary of rollout {rollout_id} did not roll back in {wait_s:.0f}s", where="demo")
