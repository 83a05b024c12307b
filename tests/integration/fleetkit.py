"""Helpers for whole-fleet integration tests: the ``edgefleet`` CLI in-process, a controller as a
real ``edgefleet serve`` process (which a test may kill and restart), real agent processes
enrolled through the controller, their local inference endpoint, and live traffic to them."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import threading
import urllib.request
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from edgefleet.cloud.cli import main as cli

from testkit import free_port, wait_until

AGENT_SETTINGS = ("inference_listen=127.0.0.1:0", "telemetry_interval_s=0.5", "heartbeat_interval_s=2",
                  "health_check_inferences=0")


def run_cli(capsys, *args: str) -> tuple[int, str, str]:
    capsys.readouterr()
    rc = cli(list(args))
    out = capsys.readouterr()
    return rc, out.out, out.err


def cli_json(capsys, *args: str):
    rc, out, err = run_cli(capsys, *args, "--json")
    assert rc == 0, err
    return json.loads(out)


class ControllerProcess:
    """``edgefleet serve`` in its own process, configured through EDGEFLEET_* variables like an
    operator's service unit; ``kill`` is SIGKILL (no clean shutdown), ``start`` again reuses the data."""

    def __init__(self, base: Path, *, admin_token: str, broker_url: str | None, prefix: str, release_pub: Path,
                 **settings: object) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = base / "controller.log"
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("EDGEFLEET_")} | {
            "EDGEFLEET_LISTEN_PORT": str(self.port), "EDGEFLEET_DATA_DIR": str(base / "controller"),
            "EDGEFLEET_ADMIN_TOKEN": admin_token, "EDGEFLEET_TOPIC_PREFIX": prefix,
            "EDGEFLEET_RELEASE_KEY_PATHS": json.dumps([str(release_pub)]),
            # the embedded broker keeps its port across restarts, so the agents find it again
            "EDGEFLEET_EMBEDDED_BROKER_PORT": str(free_port())}
        if broker_url:
            self.env["EDGEFLEET_BROKER_URL"] = broker_url
        self.env |= {f"EDGEFLEET_{k.upper()}": str(v) for k, v in settings.items()}
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> ControllerProcess:
        with open(self.log_path, "ab") as log:   # the child keeps its own descriptor
            self.proc = subprocess.Popen([sys.executable, "-m", "edgefleet.cloud.cli", "serve"], env=self.env,
                                         stdout=log, stderr=subprocess.STDOUT)
        wait_until(self.healthy, f"the controller answering on {self.url} (log: {self.log_path})", timeout=60)
        return self

    def healthy(self) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            raise AssertionError(f"the controller exited with {self.proc.returncode}:\n{self.log()[-3000:]}")
        try:
            with urllib.request.urlopen(f"{self.url}/healthz", timeout=2) as r:
                return r.status == 200
        except OSError:
            return False

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait(timeout=30)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()


class Agents:
    """Real ``edgefleet-agent`` processes, enrolled with the controller through the CLI."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self.procs: list[subprocess.Popen[bytes]] = []
        self.dirs: dict[str, Path] = {}

    def start(self, capsys, url: str, device_id: str, *tags: str) -> Path:
        state_dir = self.enroll(capsys, url, device_id, *tags)
        self.run(state_dir)
        return state_dir

    def enroll(self, capsys, url: str, device_id: str, *tags: str) -> Path:
        """``edgefleet-agent enroll`` for ``device_id``; returns its state directory."""
        args = [a for tag in tags for a in ("--tag", tag)]
        token = cli_json(capsys, "devices", "enroll", "--device-id", device_id, *args)["token"]
        state_dir = self.base / "devices" / device_id
        settings = [a for s in AGENT_SETTINGS for a in ("--set", s)]
        enrolled = subprocess.run([sys.executable, "-m", "edgefleet.agent.daemon", "enroll", "--controller", url,
                                   "--token", token, "--state-dir", str(state_dir), *settings],
                                  capture_output=True, text=True, timeout=60)
        assert enrolled.returncode == 0, enrolled.stderr
        self.dirs[device_id] = state_dir
        return state_dir

    def run(self, state_dir: Path) -> subprocess.Popen[bytes]:
        """Start the agent of an enrolled state directory."""
        with open(state_dir / "agent.log", "ab") as log:  # the child keeps its own descriptor
            proc = subprocess.Popen([sys.executable, "-m", "edgefleet.agent.daemon", "--config",
                                     str(state_dir / "agent.toml"), "--log-level", "DEBUG"],
                                    stdout=log, stderr=subprocess.STDOUT)
        self.procs.append(proc)
        return proc

    def stop(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()


def predict(state_dir: Path, batch: np.ndarray) -> dict:
    """One request to a device's local inference endpoint."""
    addr = wait_until(lambda: (state_dir / "inference.addr").exists() and (state_dir / "inference.addr").read_text(),
                      "inference address")
    req = urllib.request.Request(f"http://{addr.strip()}/v1/predict", method="POST",
                                 data=json.dumps({"inputs": {"input": batch.tolist()}}).encode(),
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as resp:
        return json.loads(resp.read())


def feedback(state_dir: Path, prediction_id: str, labels: list[int]) -> dict:
    """Labels for one served prediction, through the device's local ``/v1/feedback``."""
    addr = (state_dir / "inference.addr").read_text().strip()
    req = urllib.request.Request(f"http://{addr}/v1/feedback", method="POST",
                                 data=json.dumps({"prediction_id": prediction_id, "labels": labels}).encode(),
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as resp:
        return json.loads(resp.read())


class Traffic:
    """Live requests to every device, round robin, from one thread: batches drawn from ``x``. A
    request a device refuses (it is swapping bundles, or has none yet) is counted, not raised."""

    def __init__(self, dirs: Sequence[Path], x: np.ndarray, *, batch: int = 10, pause_s: float = 0.02,
                 seed: int = 0) -> None:
        self.dirs, self.x, self.batch, self.pause_s = list(dirs), x, batch, pause_s
        self.rng = random.Random(seed)
        self.sent = self.refused = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="traffic", daemon=True)

    def __enter__(self) -> Traffic:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(30)

    def _run(self) -> None:
        while not self._stop.is_set():
            for state_dir in self.dirs:
                rows = self.rng.sample(range(len(self.x)), self.batch)
                try:
                    predict(state_dir, self.x[rows])
                    self.sent += 1
                except (OSError, AssertionError):
                    self.refused += 1
            self._stop.wait(self.pause_s)
