"""The demo's third act: the loop closes (docs/loop.md).

The fleet runs digits-mlp-onnx 2.0.1, whose recipe opts in to sample capture, and the application
sends the true digit back for every prediction (``POST /v1/feedback``). The camera of the two
``site-b`` devices washes out: their own drift verdicts go to alarm, the controller opens a drift
incident for the cohort, the devices upload labelled samples of what they served. A retraining job
fine-tunes the model on the reference data plus those samples, compresses it with the recipe's gate
and bundles it, signed by a *delegated* key that may sign only ``digits-mlp-*`` bundles for the demo's
hardware class (the release key signs nothing here). The new bundle goes out as a rollout back to
health: the drifted devices first, judged against themselves before the update (drift back below
warn, accuracy better), then the rest. Accuracy is counted on samples no model was trained on: the
held-out digits are split in two, the first half is served (and captured, and learnt from) before
the heal, the second half after it.
"""

from __future__ import annotations

import contextlib
import io
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgefleet.cloud.cli.client import ControllerClient
from edgefleet.cloud.cli.demo_rollouts import DEMO_LATENCY_MARGIN_MS, Background, Post, Say, follow_rollout
from edgefleet.cloud.cli.output import print_table
from edgefleet.cloud.vocabulary import IncidentState, RetrainState, RolloutState
from edgefleet.compression.samples import DigitsData
from edgefleet.protocol.errors import TransportError
from edgefleet.protocol.vocabulary import JUDGED_DRIFT_LEVELS

MODEL = "digits-mlp"
SITE_TAG = "site-b"
CAPTURE: dict[str, Any] = {"enabled": True, "max_samples": 600, "min_samples_to_upload": 100,
                           "upload_interval_s": 2, "drift_weight": 4.0}
"""The ``[capture]`` table of the bundles the fleet runs from act 2 on (a privacy decision: opt-in)."""
COMPRESSION: dict[str, Any] = {"mode": "static_int8", "per_channel": True, "latency_runs": 20,
                               "gate": {"max_accuracy_drop": 1.0}}
TRAINING: dict[str, Any] = {"entry_point": "edgefleet.compression.samples:retrain_digits", "timeout_s": 120,
                            "memory_mb": 2048, "auto": False}
LABELLED_SAMPLES = 150
"""Labelled samples the drifted devices must have uploaded (captured while at alarm) before retraining."""
RATE = 12.0
"""Requests of 10 per second and device: about 120 samples a telemetry window."""
AFTER_SAMPLES = 400
"""Answers of the new bundle on each drifted device the summary waits for."""
HEAL_POLICY: dict[str, Any] = {
    "stages": [
        # no device list: the incidents' drifted devices (docs/rollouts.md §4)
        {"name": "drifted", "select": "devices", "soak_s": 6, "max_soak_s": 40,
         "gates": {"baseline": "before", "before_s": 300, "behaviour": {"enabled": False},
                   "accuracy": {"margin": 0.0}, "recovery": {"enabled": True, "windows": 3},
                   "runtime": {"latency_margin_ms": DEMO_LATENCY_MARGIN_MS}, "statistics": {"min_windows": 4}}},
        {"name": "rest", "select": "rest",
         "gates": {"runtime": {"enabled": False}, "behaviour": {"enabled": False}, "accuracy": {"enabled": False}}}],
    "device_timeout_s": 120,
}
"""The ``heal`` template with a demo's soak: seconds, not minutes (production: 20 windows a side)."""
Shift = Callable[[np.ndarray], np.ndarray]


def loop_recipe(bundle: dict[str, Any]) -> dict[str, Any]:
    """The model's recipe on the controller: the fleet's bundle tables (no model file: the job packs
    the trained one) plus how to compress and how to retrain it."""
    tables = {k: v for k, v in bundle.items() if k != "bundle"}
    return {"bundle": {k: v for k, v in bundle["bundle"].items() if k != "model"}, **tables,
            "compression": COMPRESSION, "training": TRAINING}


def register_model(client: ControllerClient, *, version: str, model: bytes, data: DigitsData,
                   recipe: dict[str, Any]) -> None:
    """The fleet's model in the registry: the version, its file, the training split as its reference
    dataset and the recipe (so a drift incident names the model, and a job can retrain it)."""
    octets = {"Content-Type": "application/octet-stream"}
    client.post("/api/v1/models", {"name": MODEL, "description": "8x8 handwritten digits MLP"})
    client.post(f"/api/v1/models/{MODEL}/versions", {"version": version})
    client.request("PUT", f"/api/v1/models/{MODEL}/versions/{version}/artifact", content=model, headers=octets)
    buf = io.BytesIO()
    np.savez(buf, x=data.x_train, y=data.y_train)
    client.request("PUT", f"/api/v1/models/{MODEL}/dataset", content=buf.getvalue(), headers=octets)
    client.request("PUT", f"/api/v1/models/{MODEL}/recipe", json=recipe)


@dataclass
class FieldDevice:
    """One device as the application sees it: where its local API listens, and what it answered."""

    device_id: str
    addr_file: Path
    shifted: bool
    answered: dict[str, int] = field(default_factory=dict)
    correct: dict[str, int] = field(default_factory=dict)

    def accuracy(self, version: str) -> float | None:
        n = self.answered.get(version, 0)
        return self.correct.get(version, 0) / n if n else None


class LabelledTraffic(Background):
    """The application: held-out digits to every device (washed out on the shifted ones), and the true
    digit back for every answer. ``pool`` picks the half of the held-out digits served now."""

    def __init__(self, devices: list[FieldDevice], x: np.ndarray, y: np.ndarray, shift: Shift, post: Post,
                 batch: int = 10) -> None:
        super().__init__("demo-labelled-traffic")
        self.devices, self.x, self.y, self.shift, self.post, self.batch = devices, x, y, shift, post, batch
        half = len(x) // 2
        self.pools = (np.arange(half), np.arange(half, len(x)))
        self.pool = 0
        self.rng = np.random.default_rng(3)
        self._lock = threading.Lock()

    def _run(self) -> None:
        while not self._stop.is_set():
            started = time.monotonic()
            for dev in self.devices:
                idx = self.rng.choice(self.pools[self.pool], self.batch)
                x = self.shift(self.x[idx]) if dev.shifted else self.x[idx]
                with contextlib.suppress(OSError, KeyError):   # swapping bundles: the next request goes through
                    addr = dev.addr_file.read_text().strip()
                    reply = self.post(f"http://{addr}/v1/predict", {"inputs": {"input": x.tolist()}})
                    predicted = np.asarray(next(iter(reply["outputs"].values()))).argmax(axis=1)
                    self.post(f"http://{addr}/v1/feedback", {"prediction_id": reply["prediction_id"],
                                                            "labels": self.y[idx].tolist()})
                    version = reply["bundle"]["version"]
                    with self._lock:
                        dev.answered[version] = dev.answered.get(version, 0) + len(idx)
                        dev.correct[version] = dev.correct.get(version, 0) + int((predicted == self.y[idx]).sum())
            self._stop.wait(max(0.0, 1 / RATE - (time.monotonic() - started)))


def run_loop(client: ControllerClient, *, devices: list[FieldDevice], data: DigitsData,
             shift: Shift, post: Post, labels: dict[str, str], old_version: str,
             signer: str, say: Say, wait_s: float = 120.0) -> bool:
    """Act 3; returns whether the loop closed: an incident opened on the drifted devices, the job
    succeeded, the rollout back to health succeeded and accuracy rose on every drifted device."""
    drifted = sorted(d.device_id for d in devices if d.shifted)
    say(f"the camera of {' and '.join(drifted)} ({SITE_TAG}) washes out; the application sends the true "
        "digit back for every answer (POST /v1/feedback)")
    with LabelledTraffic(devices, data.x_test, data.y_test, shift, post) as traffic:
        incident = _wait(lambda: _incident(client), "a drift incident of tag " + SITE_TAG, wait_s)
        say(f"incident {incident['id']} opened: tag {SITE_TAG} on {incident['bundle_name']} "
            f"{incident['bundle_version']}, {' and '.join(incident['devices'])} at alarm for "
            f"{incident['windows']} windows in a row, {incident['opened_at'] - incident['first_alarm_at']:.0f} s "
            "after the first alarm window")
        captured = _wait(lambda: _captured(client, incident), f"{LABELLED_SAMPLES} labelled samples", wait_s)
        say(f"{captured['labelled']} labelled samples captured while at alarm came up in {captured['datasets']} "
            "uploads (device-scoped, resumable)")
        job = client.post(f"/api/v1/models/{MODEL}/retrain", {"incident_id": incident["id"],
                                                             "note": "demo: washed-out camera"})
        say(f"retraining job {job['id']} for {incident['id']} (as `edgefleet retrain {MODEL} "
            f"--incident {incident['id']}`)")
        job = _wait(lambda: _finished(client, job["id"]), f"retraining job {job['id']}", wait_s)
        if job["state"] != RetrainState.SUCCEEDED:
            raise TransportError(f"retraining job {job['id']} failed: {job['error_message']}", where="demo")
        bundle = client.get(f"/api/v1/bundles/{job['bundle_digest']}")
        labels[bundle["digest"]] = f"{bundle['name']} {bundle['version']}"
        _say_job(say, job, bundle, signer)
        traffic.pool = 1   # from now on, digits no model learnt from
        rollout = client.post("/api/v1/rollouts", {"bundle": bundle["digest"], "incidents": [incident["id"]],
                                                   "policy": HEAL_POLICY, "note": f"demo: back to health after "
                                                                                  f"{incident['id']}"})
        done = follow_rollout(client, rollout, say, labels, wait_s)
        healed = done["state"] == RolloutState.SUCCEEDED
        if healed:
            _wait(lambda: all(d.answered.get(bundle["version"], 0) >= AFTER_SAMPLES for d in devices if d.shifted),
                  "answers of the new bundle", wait_s)
    drifted_stage = done["stages"][0]
    print_table(f"gates of the {drifted_stage['name']} stage of {labels[bundle['digest']]}",
                ["gate", "verdict", "evidence"], [(v["gate"], v["verdict"], v["summary"])
                                                   for v in drifted_stage["verdicts"]])
    return healed and _summarize(client, devices, old_version, bundle["version"], say)


def _incident(client: ControllerClient) -> dict[str, Any] | None:
    for incident in client.get("/api/v1/incidents", state=IncidentState.OPEN):
        if incident["cohort_kind"] == "tag" and incident["cohort_key"] == SITE_TAG:
            found: dict[str, Any] = incident
            return found
    return None


def _captured(client: ControllerClient, incident: dict[str, Any]) -> dict[str, int] | None:
    rows = client.get("/api/v1/captures", model=MODEL, device_id=incident["devices"], since=incident["first_alarm_at"])
    rows = [r for r in rows if r["bundle_digest"] == incident["bundle_digest"]]
    labelled = sum(r["labelled"] for r in rows)
    return {"labelled": labelled, "datasets": len(rows)} if labelled >= LABELLED_SAMPLES else None


def _finished(client: ControllerClient, job_id: int) -> dict[str, Any] | None:
    job: dict[str, Any] = client.get(f"/api/v1/retraining-jobs/{job_id}")
    return job if job["state"] in (RetrainState.SUCCEEDED, RetrainState.FAILED) else None


def _say_job(say: Say, job: dict[str, Any], bundle: dict[str, Any], signer: str) -> None:
    timings = ", ".join(f"{phase} {seconds:.2f} s" for phase, seconds in job["timings"].items())
    say(f"  {MODEL}@{job['result_version']} trained on {job['datasets']['reference']['samples']} reference + "
        f"{job['datasets']['captured']['labelled']} captured labelled samples, compressed to "
        f"{job['compressed_version']}, bundled as {bundle['name']} {bundle['version']}: {timings}")
    size = job["report"].get("size") or {}
    if size:
        say(f"  {job['compressed_version']}: {size['original_bytes'] / 1024:.0f} → "
            f"{size['compressed_bytes'] / 1024:.0f} KiB, the recipe's gate passed")
    say(f"  signed by {signer}; the release key signed none of it")


def _summarize(client: ControllerClient, devices: list[FieldDevice], old: str, new: str, say: Say) -> bool:
    running = {d["id"]: (d.get("installed") or {}).get("version", "-") for d in client.get("/api/v1/devices")}
    rows, rose = [], True
    for d in devices:
        before, after = d.accuracy(old), d.accuracy(new)
        if d.shifted:
            rose &= before is not None and after is not None and after > before
        judged = [w["drift_level"] for w in client.get(f"/api/v1/devices/{d.device_id}/telemetry", limit=5)
                  if w["drift_level"] in JUDGED_DRIFT_LEVELS]
        rows.append((d.device_id, "shifted" if d.shifted else "clean", _pct(before), _pct(after),
                     running.get(d.device_id, "-"), judged[-1] if judged else "-"))
    print_table("accuracy on held-out digits, before and after", ["device", "inputs", f"on {old}", f"on {new}",
                                                                 "runs", "drift now"], rows)
    shifted = [d for d in devices if d.shifted]
    say(f"accuracy on the shifted devices: {_pct(_pooled(shifted, old))} on {old} → "
        f"{_pct(_pooled(shifted, new))} on {new}")
    return rose


def _pooled(devices: list[FieldDevice], version: str) -> float | None:
    n = sum(d.answered.get(version, 0) for d in devices)
    return sum(d.correct.get(version, 0) for d in devices) / n if n else None


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"


def _wait(probe: Callable[[], Any], what: str, wait_s: float, poll_s: float = 0.25) -> Any:
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        found = probe()
        if found:
            return found
        time.sleep(poll_s)
    raise TransportError(f"timed out waiting for {what}", where="demo",
                         hint="see the agent logs under the demo's devices/ folder")
