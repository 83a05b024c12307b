"""A real ``edgefleet-agent`` process (``python -m edgefleet.agent.daemon``)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path


def toml_value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(toml_value(x) for x in v) + "]"
    return json.dumps(str(v))


class AgentProcess:
    def __init__(self, workdir: Path, config: dict, env: dict[str, str] | None = None) -> None:
        self.workdir = workdir
        self.config = dict(config)
        self.state_dir = Path(self.config["state_dir"])
        self.config_path = workdir / "agent.toml"
        self.env = env or {}
        self.proc: subprocess.Popen | None = None
        self.runs = 0

    def write_config(self) -> None:
        self.config_path.write_text("".join(f"{k} = {toml_value(v)}\n" for k, v in self.config.items()))

    @property
    def log_path(self) -> Path:
        return self.workdir / f"agent-{self.runs}.log"

    def start(self, **overrides) -> AgentProcess:
        self.config.update(overrides)
        self.config = {k: v for k, v in self.config.items() if v is not None}
        self.write_config()
        (self.state_dir / "inference.addr").unlink(missing_ok=True)
        self.runs += 1
        env = {k: v for k, v in os.environ.items() if not k.startswith("EDGEFLEET_AGENT_")}
        env.update(self.env)
        with open(self.log_path, "wb") as log:  # the child keeps its own descriptor
            self.proc = subprocess.Popen([sys.executable, "-m", "edgefleet.agent.daemon", "--config",
                                          str(self.config_path), "--log-level", "DEBUG"],
                                         stdout=log, stderr=subprocess.STDOUT, env=env)
        return self

    def wait_ready(self, timeout: float = 60.0) -> str:
        addr = self.state_dir / "inference.addr"
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if addr.exists():
                self.base = f"http://{addr.read_text().strip()}"
                return self.base
            if self.proc.poll() is not None:
                raise AssertionError(f"agent exited with {self.proc.returncode}:\n{self.log()}")
            time.sleep(0.05)
        raise AssertionError(f"agent not ready:\n{self.log()}")

    def wait_file(self, name: str, timeout: float = 30.0) -> None:
        path = self.state_dir / name
        end = time.monotonic() + timeout
        while not path.exists():
            if self.proc.poll() is not None:
                raise AssertionError(f"agent exited with {self.proc.returncode}:\n{self.log()}")
            if time.monotonic() > end:
                raise AssertionError(f"{name} did not appear:\n{self.log()}")
            time.sleep(0.05)

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-6000:]
        except FileNotFoundError:
            return ""

    def request(self, method: str, path: str, body: bytes | None = None,
                content_type: str = "application/json", accept: str | None = None):
        req = urllib.request.Request(self.base + path, data=body, method=method)
        if body is not None:
            req.add_header("Content-Type", content_type)
        if accept:
            req.add_header("Accept", accept)
        try:
            with urllib.request.urlopen(req, timeout=30) as resp:
                return resp.status, dict(resp.headers), resp.read()
        except urllib.error.HTTPError as exc:
            return exc.code, dict(exc.headers), exc.read()

    def predict(self, inputs: dict) -> tuple[int, dict]:
        status, _, body = self.request("POST", "/v1/predict", json.dumps({"inputs": inputs}).encode())
        return status, json.loads(body)

    def get(self, path: str) -> tuple[int, dict]:
        status, _, body = self.request("GET", path)
        return status, json.loads(body)

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def terminate(self, timeout: float = 20.0) -> int:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                return self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()
                raise AssertionError(f"agent did not stop on SIGTERM:\n{self.log()}") from None
        return self.proc.returncode if self.proc else 0
