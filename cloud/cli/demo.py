"""``edgefleet demo``: the whole loop on one machine, with real parts and nothing to set up.

1. keys: a release key (signs bundles); the controller makes its own order-signing key
2. the controller (SQLite in a fresh data dir, embedded MQTT broker) in a background thread
3. a classifier trained on scikit-learn's bundled handwritten digits (nothing downloaded)
4. compressed for ONNX Runtime (static int8) and exported + quantized for LiteRT, each gated
5. signed bundles built from the compressed models and uploaded
6. real ``edgefleet-agent`` processes enrolled with one-time tokens, half ONNX, half LiteRT
7. one deployment per runtime tag (one signed order per device); every device ends committed
8. held-out digits sent to every device; on some, the inputs are shifted (a washed-out camera)
9. the devices' own drift scores come back through MQTT: drift where inputs shifted, not elsewhere
10. version 2 goes out in stages (canary, half, rest) judged by its gates: first a build with a
    calibration bug, stopped at the canary and rolled back, then the good one to every device
11. the loop closes (demo_loop): labels come back, the drifted devices open an incident and upload
    labelled samples, a job retrains, compresses and bundles the model, signed by a delegated key,
    and a rollout back to health proves it on the drifted devices before the rest get it
"""

from __future__ import annotations

import hashlib
import json
import logging
import secrets
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.table import Table
from rich.text import Text

from edgefleet.cloud.cli.client import ControllerClient
from edgefleet.cloud.cli.demo_loop import CAPTURE, MODEL, SITE_TAG, FieldDevice, loop_recipe, register_model, run_loop
from edgefleet.cloud.cli.demo_rollouts import Traffic, predicts_one_class, run_rollouts
from edgefleet.cloud.cli.deployments import follow_deployment
from edgefleet.cloud.cli.output import num, print_table
from edgefleet.cloud.ports import free_port, port_is_free
from edgefleet.cloud.server import BackgroundServer
from edgefleet.cloud.settings import ControllerSettings
from edgefleet.cloud.vocabulary import DeploymentStatus
from edgefleet.compression import CompressionConfig, GateConfig, Mode, compress
from edgefleet.compression.samples import load_digits_split, train_mlp
from edgefleet.protocol import keys as keylib
from edgefleet.protocol.bundle import build_bundle, parse_recipe
from edgefleet.protocol.delegation import make_delegation, sign_delegations
from edgefleet.protocol.errors import EdgeFleetError, TransportError
from edgefleet.protocol.files import atomic_write
from edgefleet.protocol.manifest import Lineage
from edgefleet.protocol.messages import DelegationsDocument
from edgefleet.protocol.vocabulary import JUDGED_DRIFT_LEVELS, DriftLevel, Runtime

console = Console()

LABELS = [str(i) for i in range(10)]
TELEMETRY_INTERVAL_S = 1.0
SAMPLES_PER_DEVICE = 600
BATCH = 10
TRAFFIC_SECONDS = 3 * TELEMETRY_INTERVAL_S
"""Traffic is spread over a few telemetry windows, so the summary shows several per device."""
HELD_OUT = 0.4
"""Of the 1797 digits, held out from training: act 3 serves two disjoint halves of them (before and after
the retraining), each big enough that windows of it look like the reference, not like a few repeats."""
HARDWARE_CLASS = "demo-pc"
"""Every demo device's; the bundles target it and the delegation covers only it."""
DELEGATION = "retrain"


def shift_inputs(x: np.ndarray) -> np.ndarray:
    """A washed-out camera: contrast halved, brightness up."""
    return np.clip(0.5 * x + 0.45, 0.0, 1.0).astype(np.float32)


def recipe(runtime: Runtime, version: str, build: int) -> dict[str, Any]:
    """The same recipe as firmware-bundles/digits-mlp.toml, per runtime."""
    return {"bundle": {"name": f"digits-mlp-{runtime}", "version": version, "build": build, "runtime": runtime,
                       "description": "8x8 handwritten digit classifier (scikit-learn digits)", "labels": LABELS},
            "target": {"min_agent_version": "0.1.0", "hardware_classes": [HARDWARE_CLASS]},
            "preprocessing": {"input": "8x8 grey image, row-major, scaled to [0, 1] (pixel / 16)"},
            "smoke_test": {"vectors": 4, "atol": 1e-3, "rtol": 1e-2},
            "profile": {"bins": 10},
            "drift": {"psi_warn": 0.1, "psi_alarm": 0.25, "min_samples": 100}}


@dataclass
class DemoDevice:
    device_id: str
    runtime: Runtime
    shifted: bool
    state_dir: Path
    process: subprocess.Popen[bytes] | None = None
    correct: int = 0
    answered: int = 0
    versions: set[str] = field(default_factory=set)


class Demo:
    def __init__(self, *, devices: int, data_dir: Path, port: int = 0, broker_url: str | None = None) -> None:
        self.base = data_dir
        self.broker_url = broker_url
        self.n_devices = devices
        self.port = port if port and port_is_free(port) else free_port()
        self.wanted_port = port
        self._server: BackgroundServer | None = None
        self._client: ControllerClient | None = None
        self.devices: list[DemoDevice] = []
        self.labels: dict[str, str] = {}
        """Bundle digest → "name version", for the narration."""
        self.started = time.monotonic()

    @property
    def server(self) -> BackgroundServer:
        if self._server is None:
            raise RuntimeError("the demo's controller is not started yet")
        return self._server

    @property
    def client(self) -> ControllerClient:
        if self._client is None:
            raise RuntimeError("the demo's controller is not started yet")
        return self._client

    # ----------------------------------------------------------------------------- steps

    def step(self, text: str) -> None:
        """One line of narration; a long one wraps under its own text, not under the time."""
        line = Table.grid(padding=(0, 1))
        line.add_column(no_wrap=True)
        line.add_column()
        line.add_row(f"[dim]{time.monotonic() - self.started:5.1f}s[/] [bold cyan]▸[/]", Text(text))
        console.print(line)

    def start_controller(self) -> None:
        key = keylib.generate_private_key()
        self.release_key = key
        keylib.save_private_key(key, self.base / "keys" / "release.key")
        pub = keylib.save_public_key(key.public_key(), self.base / "keys" / "release.pub")
        self.delegated_key = keylib.generate_private_key()   # the controller's: it signs retrained bundles
        delegated = keylib.save_private_key(self.delegated_key, self.base / "keys" / f"{DELEGATION}.key")
        self.admin_token = "efa_demo_" + secrets.token_urlsafe(18)
        settings = ControllerSettings(data_dir=self.base / "controller", listen_port=self.port,
                                      broker_url=self.broker_url,
                                      release_key_paths=[pub], admin_token=self.admin_token,
                                      heartbeat_timeout_s=30.0, reconcile_interval_s=1.0,
                                      deployment_timeout_s=120.0, delegated_signing_key_path=delegated,
                                      incident_tags=[SITE_TAG], incident_cooldown_s=5.0, incident_min_samples=50)
        self._server = BackgroundServer(settings).start()
        self._client = ControllerClient(self._server.url, self.admin_token)
        info = self.client.get("/api/v1/info")
        taken = f"; port {self.wanted_port} was taken" if self.wanted_port and self.port != self.wanted_port else ""
        self.step(f"controller up at {self.server.url} (SQLite in {settings.data_dir}, "
                  f"broker {info.get('broker_url') or 'embedded'}{taken})")

    def train_and_compress(self) -> dict[Runtime, tuple[bytes, dict[str, Any]]]:
        t = time.monotonic()
        self.data = data = load_digits_split(test_size=HELD_OUT)
        self.fp32 = fp32 = train_mlp(data)
        self.fp32_digest = hashlib.sha256(fp32).hexdigest()
        self.step(f"trained an MLP on {len(data.x_train)} digits ({len(fp32) / 1024:.0f} KiB fp32 ONNX) "
                  f"in {time.monotonic() - t:.1f}s")
        out: dict[Runtime, tuple[bytes, dict[str, Any]]] = {}
        gate = GateConfig(max_accuracy_drop=1.0)
        for runtime, mode in ((Runtime.ONNX, Mode.STATIC_INT8), (Runtime.TFLITE, Mode.DYNAMIC_INT8)):
            t = time.monotonic()
            result = compress(fp32, runtime, CompressionConfig(mode=mode, gate=gate, latency_runs=20),
                              calibration=data.x_train[:256], eval_x=data.x_test, eval_y=data.y_test)
            report = result.report.manifest_dict()
            out[runtime] = (result.model, report)
            self.step(f"{runtime}: {mode.value} {_size_line(report)} in {time.monotonic() - t:.1f}s")
        return out

    def build_and_push(self, models: dict[Runtime, tuple[bytes, dict[str, Any]]]) -> dict[Runtime, dict[str, Any]]:
        pushed = {}
        for runtime, (model, report) in models.items():
            r = parse_recipe(recipe(runtime, "1.0.0", 1), where=f"demo recipe ({runtime})")
            built = build_bundle(r, model, samples=self.data.x_train[:600], release_key=self.release_key,
                                 compression_report=report,
                                 lineage=Lineage(parent_digest=self.fp32_digest, source="demo: sklearn digits MLP"))
            path = self.base / "bundles" / f"{r.bundle.name}-{r.bundle.version}.efb"
            atomic_write(path, built.data)
            pushed[runtime] = self.client.upload_bundle(path)
            self.step(f"signed bundle {r.bundle.name} {r.bundle.version} ({len(built.data) / 1024:.0f} KiB, "
                      f"sha256 {built.digest[:12]}) uploaded")
        return pushed

    def start_agents(self) -> None:
        shifted_ids = {self.n_devices - 2, self.n_devices - 1}  # one ONNX, one LiteRT device
        for i in range(self.n_devices):
            runtime = Runtime.ONNX if i % 2 == 0 else Runtime.TFLITE
            dev = DemoDevice(device_id=f"edge-{i + 1:02d}", runtime=runtime, shifted=i in shifted_ids,
                             state_dir=self.base / "devices" / f"edge-{i + 1:02d}")
            tags = [runtime, "demo", *([SITE_TAG] if dev.shifted else [])]
            token = self.client.post("/api/v1/enrollment-tokens", {"device_id": dev.device_id, "tags": tags})["token"]
            config = self.enroll(dev, token)
            with open(dev.state_dir / "agent.log", "ab") as logfile:  # the child keeps its own descriptor
                dev.process = subprocess.Popen([sys.executable, "-m", "edgefleet.agent.daemon", "--config",
                                                str(config), "--log-level", "INFO"], stdout=logfile,
                                               stderr=subprocess.STDOUT)
            self.devices.append(dev)
        def all_online() -> bool:
            fleet = self.client.get("/api/v1/devices")
            return len(fleet) == self.n_devices and all(d["online"] for d in fleet)

        self.wait_for(all_online, what="every agent online", timeout_s=60)
        self.step(f"{self.n_devices} agents enrolled and online "
                  f"({sum(d.runtime == Runtime.ONNX for d in self.devices)} ONNX Runtime, "
                  f"{sum(d.runtime == Runtime.TFLITE for d in self.devices)} LiteRT)")

    def enroll(self, dev: DemoDevice, token: str) -> Path:
        """Run ``edgefleet-agent enroll`` as a device would (the controller never imports the agent)."""
        settings = {"inference_listen": "127.0.0.1:0", "telemetry_interval_s": TELEMETRY_INTERVAL_S,
                    "heartbeat_interval_s": 5.0, "health_check_inferences": 0, "hardware_class": HARDWARE_CLASS,
                    "upload_retry_s": 1.0}
        cmd = [sys.executable, "-m", "edgefleet.agent.daemon", "enroll", "--controller", self.server.url,
               "--token", token, "--state-dir", str(dev.state_dir)]
        for key, value in settings.items():
            cmd += ["--set", f"{key}={value}"]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
        if done.returncode != 0:
            raise TransportError(f"enrolling {dev.device_id} failed: {done.stderr.strip()}", where="demo")
        return dev.state_dir / "agent.toml"

    def deploy(self, pushed: dict[Runtime, dict[str, Any]]) -> None:
        for runtime, bundle in pushed.items():
            dep = self.client.post("/api/v1/deployments", {"bundle": bundle["digest"], "tag": runtime,
                                                          "note": f"demo rollout to the {runtime} devices"})
            dep = follow_deployment(self.client, dep["id"], quiet=True, timeout_s=120)
            outcomes = {t["device_id"]: t["outcome"] for t in dep["targets"]}
            self.step(f"deployment {dep['id']} of {bundle['name']} → {dep['status']}: "
                      + ", ".join(f"{k} {v}" for k, v in sorted(outcomes.items())))
            if dep["status"] != DeploymentStatus.SUCCEEDED:
                raise TransportError(f"deployment {dep['id']} ended {dep['status']}", where="demo",
                                     hint=f"see the agent logs under {self.base / 'devices'}")

    def drive_traffic(self) -> None:
        x, y = self.data.x_test, self.data.y_test

        def run(dev: DemoDevice, seed: int) -> None:
            addr = (dev.state_dir / "inference.addr").read_text().strip()
            order = np.random.default_rng(seed).permutation(len(x))
            order = np.resize(order, SAMPLES_PER_DEVICE)
            pause = TRAFFIC_SECONDS / (SAMPLES_PER_DEVICE / BATCH)
            for start in range(0, len(order), BATCH):
                time.sleep(pause)
                idx = order[start:start + BATCH]
                batch = shift_inputs(x[idx]) if dev.shifted else x[idx]
                reply = _post(f"http://{addr}/v1/predict", {"inputs": {"input": batch.tolist()}})
                probs = np.asarray(next(iter(reply["outputs"].values())))
                dev.correct += int((probs.argmax(axis=1) == y[idx]).sum())
                dev.answered += len(idx)
                dev.versions.add(reply["bundle"]["version"])

        threads = [threading.Thread(target=run, args=(d, i)) for i, d in enumerate(self.devices)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        self.step(f"sent {SAMPLES_PER_DEVICE} held-out digits to each device "
                  f"({SAMPLES_PER_DEVICE // BATCH} requests of {BATCH}) over its local HTTP endpoint; "
                  f"inputs shifted on {', '.join(d.device_id for d in self.devices if d.shifted)}")

    def roll_out_version_2(self, pushed: dict[Runtime, dict[str, Any]]) -> bool:
        """Two staged rollouts of version 2 (ONNX, full precision) to every device (demo_rollouts). The
        good build opts in to sample capture and is version 2.0.1 of the registry's model (act 3)."""
        good, bad = self.fp32, predicts_one_class(self.fp32)
        good_recipe = recipe(Runtime.ONNX, "2.0.1", 3) | {"capture": CAPTURE}
        register_model(self.client, version="2.0.1", model=good, data=self.data, recipe=loop_recipe(good_recipe))
        built = {}
        for key, model, doc in (("bad", bad, recipe(Runtime.ONNX, "2.0.0", 2)), ("good", good, good_recipe)):
            r = parse_recipe(doc, where=f"demo recipe (version {doc['bundle']['version']})")
            bundle = build_bundle(r, model, samples=self.data.x_train[:600], release_key=self.release_key,
                                  lineage=Lineage(parent_digest=self.fp32_digest, source="demo: sklearn digits MLP"))
            path = self.base / "bundles" / f"{r.bundle.name}-{r.bundle.version}.efb"
            atomic_write(path, bundle.data)
            link = {"model": MODEL, "model_version": r.bundle.version} if key == "good" else {}
            built[key] = self.client.upload_bundle(path, **link)
        self.labels = labels = {b["digest"]: f"{b['name']} {b['version']}" for b in [*pushed.values(), *built.values()]}
        console.print()
        self.step("version 2 (full precision) in stages: canary → half → rest, each judged by its gates "
                  "against the devices still on version 1")
        addresses = [d.state_dir / "inference.addr" for d in self.devices]
        with Traffic(addresses, self.data.x_test, _post):
            return run_rollouts(self.client, bad=built["bad"], good=built["good"], labels=labels, say=self.step)

    def delegate(self) -> str:
        """The release key (offline in production) delegates ``digits-mlp-*`` bundles for the demo's
        hardware class, for 30 days, to the controller's key; returns how the narration names it."""
        expires = int(time.time() + 30 * 86400)
        doc = DelegationsDocument(version=1, expires_at=expires, delegations=[make_delegation(
            name=DELEGATION, public_key=self.delegated_key.public_key(), name_patterns=[f"{MODEL}-*"],
            hardware_classes=[HARDWARE_CLASS], expires_at=expires)])
        self.client.post("/api/v1/delegations", sign_delegations(doc, [self.release_key]).model_dump(mode="json"))
        kid = keylib.key_id(self.delegated_key.public_key())
        return (f"the delegated key {DELEGATION!r} ({kid[:12]}: {MODEL}-* bundles, hardware class "
                f"{HARDWARE_CLASS}, 30 days)")

    def close_the_loop(self) -> bool:
        """Act 3 (demo_loop): from the drift alarm back to a healthy fleet."""
        signer = self.delegate()
        console.print()
        field_devices = [FieldDevice(d.device_id, d.state_dir / "inference.addr", d.shifted) for d in self.devices]
        return run_loop(self.client, devices=field_devices, data=self.data, shift=shift_inputs, post=_post,
                        labels=self.labels, old_version="2.0.1", signer=signer, say=self.step)

    def collect(self) -> dict[str, dict[str, Any]]:
        def arrived() -> bool:
            summary = self.client.get("/api/v1/telemetry/summary", group_by="device")
            return all(summary.get(d.device_id, {}).get("samples", 0) >= d.answered for d in self.devices)

        self.wait_for(arrived, what="telemetry from every device", timeout_s=60)
        summary: dict[str, dict[str, Any]] = self.client.get("/api/v1/telemetry/summary", group_by="device")
        return summary

    def summarize(self, summary: dict[str, dict[str, Any]]) -> bool:
        rows, ok = [], True
        for d in self.devices:
            s = summary[d.device_id]
            levels = s["drift"]["levels"]
            detected = bool(levels.get(DriftLevel.ALARM) or levels.get(DriftLevel.WARN))
            ok &= detected == d.shifted
            rows.append((d.device_id, d.runtime, "shifted" if d.shifted else "clean",
                         f"{100 * d.correct / max(d.answered, 1):.1f}%",
                         num(s["latency_ms"]["p50"], 2), num(s["latency_ms"]["p95"], 2),
                         f"{s['drift']['psi_max']:.2f}" if s["drift"]["psi_max"] is not None else "-",
                         _verdict(levels)))
        console.print()
        print_table("fleet after the rollout",
                    ["device", "runtime", "inputs", "accuracy", "p50 ms", "p95 ms", "max PSI", "drift"], rows)
        served = sorted({v for d in self.devices for v in d.versions})
        console.print("drift: the device's worst verdict, and in how many of its telemetry windows it was given")
        console.print(f"every prediction came back stamped with bundle version {', '.join(served)}")
        verdict = "[green]drift detected exactly on the shifted devices[/]" if ok else \
            "[red]drift detection did not match the shifted devices[/]"
        console.print(verdict)
        return ok

    # ----------------------------------------------------------------------------- plumbing

    def wait_for(self, cond: Callable[[], bool], *, what: str, timeout_s: float, poll_s: float = 0.25) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if cond():
                return
            self._check_agents()
            time.sleep(poll_s)
        raise TransportError(f"timed out waiting for {what}", where="demo",
                             hint=f"see the agent logs under {self.base / 'devices'}")

    def _check_agents(self) -> None:
        for d in self.devices:
            if d.process is not None and d.process.poll() is not None:
                raise TransportError(f"agent {d.device_id} exited with {d.process.returncode}", where="demo",
                                     hint=f"see {d.state_dir / 'agent.log'}")

    def stop(self) -> None:
        for d in self.devices:
            if d.process is not None and d.process.poll() is None:
                d.process.send_signal(signal.SIGTERM)
        for d in self.devices:
            if d.process is not None:
                try:
                    d.process.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    d.process.kill()
                    d.process.wait()
        if self._client is not None:
            self._client.close()
        if self._server is not None:
            self._server.stop()


def _post(url: str, body: dict[str, Any]) -> dict[str, Any]:
    req = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST",
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as resp:
        reply: dict[str, Any] = json.loads(resp.read())
    return reply


def _verdict(levels: dict[str, int]) -> str:
    """The worst drift verdict over the windows that had enough samples, e.g. ``alarm 3/3``."""
    judged = sum(v for k, v in levels.items() if k != DriftLevel.INSUFFICIENT)
    worst = next((k for k in reversed(JUDGED_DRIFT_LEVELS) if levels.get(k)), None)
    return f"{worst} {levels[worst]}/{judged}" if worst else "-"


def _size_line(report: dict[str, Any]) -> str:
    size, acc = report["size"], report.get("accuracy")
    line = (f"{size['original_bytes'] / 1024:.0f} → {size['compressed_bytes'] / 1024:.0f} KiB "
            f"({size['ratio']:.1f}× smaller)")
    if acc:
        line += f", accuracy {100 * acc['original']:.1f}% → {100 * acc['compressed']:.1f}%"
    return line


def run_demo(*, devices: int = 4, keep_running: bool = False, data_dir: str | None = None, port: int = 0,
             broker_url: str | None = None) -> int:
    started = time.monotonic()
    base = Path(data_dir) if data_dir else Path(tempfile.mkdtemp(prefix="edgefleet-demo-"))
    base.mkdir(parents=True, exist_ok=True)
    console.rule("[bold]EdgeFleet demo")
    logging.getLogger("edgefleet").setLevel(logging.ERROR)  # the demo narrates; agent logs go to files
    demo = Demo(devices=devices, data_dir=base, port=port, broker_url=broker_url)
    try:
        demo.start_controller()
        models = demo.train_and_compress()
        pushed = demo.build_and_push(models)
        demo.start_agents()
        demo.deploy(pushed)
        demo.drive_traffic()
        ok = demo.summarize(demo.collect())
        ok = demo.roll_out_version_2(pushed) and ok
        if ok:   # act 3 starts from a fleet on the good version 2
            ok = demo.close_the_loop()
        console.print(f"demo finished in {time.monotonic() - started:.0f}s; state kept in {base}")
        console.print(f"web UI: {demo.server.url}/  (sign in with the admin token {demo.admin_token})",
                      highlight=False, soft_wrap=True)
        if keep_running:
            console.print("everything keeps running; press Ctrl-C to stop")
            signal.signal(signal.SIGTERM, signal.default_int_handler)  # stop as cleanly on SIGTERM
            try:
                while True:
                    demo._check_agents()
                    time.sleep(1)
            except KeyboardInterrupt:
                pass
        return 0 if ok else 1
    except EdgeFleetError as exc:
        console.print(f"[red]demo failed:[/] {exc}", highlight=False)
        return 1
    finally:
        demo.stop()
