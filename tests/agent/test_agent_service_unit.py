"""The systemd unit shipped in docs/edgefleet-agent.service: the config enrollment writes, no restart
loop on a bad config (exit code 2, checked against the daemon), a private state directory, MemoryMax
sized for the largest bundle allowed, the sandbox ``systemd-analyze security`` rates, and its score."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path, PurePosixPath

import pytest

from edgefleet.agent import daemon
from edgefleet.agent.config import AgentConfig
from edgefleet.agent.enroll import enroll_device
from edgefleet.protocol.keys import generate_private_key, public_key_pem

from testkit import missing_part

UNIT = Path(__file__).resolve().parents[2] / "docs" / "edgefleet-agent.service"
MAX_EXPOSURE = 1.5
"""`systemd-analyze security --offline=yes` rated the unit 1.2 ("OK") with systemd 252; a little room
for other versions, which rate more settings."""
AGENT_MIB = 192
"""The agent itself: ~120 MiB resident with ONNX Runtime and a small model loaded, with room for its
buffers and threads."""
MODEL_FACTOR = 6
"""Resident memory per byte of the largest model while a new one activates: the old one serving (~2.4x
its size in ONNX Runtime) plus loading the new one (~3.6x at its peak; benchmarks/agent_bundle_verify.py)."""


def unit() -> dict[str, dict[str, list[str]]]:
    """section -> key -> values (a key may repeat), comments dropped."""
    out: dict[str, dict[str, list[str]]] = {}
    section = None
    for raw in UNIT.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = out.setdefault(line.strip("[]"), {})
            continue
        key, _, value = line.partition("=")
        assert section is not None, f"{line!r} outside a section"
        section.setdefault(key.strip(), []).append(value.strip())
    return out


def service(key: str) -> str:
    (value,) = unit()["Service"][key]
    return value


def size_bytes(value: str) -> int:
    """systemd's sizes: K, M, G, T are powers of 1024."""
    number, suffix = re.fullmatch(r"(\d+)([KMGT]?)", value).groups()
    return int(number) * 1024 ** " KMGT".index(suffix or " ")


class _Controller(BaseHTTPRequestHandler):
    """Answers POST /api/v1/enroll the way a controller does (only what enrollment reads)."""

    def do_POST(self) -> None:  # noqa: N802 (http.server's name)
        self.rfile.read(int(self.headers["Content-Length"]))
        pem = public_key_pem(generate_private_key().public_key()).decode()
        body = json.dumps({"device_id": "cam-1", "mqtt_username": "cam-1", "mqtt_password": "secret",
                           "api_token": "t", "broker_url": "mqtt://127.0.0.1:1", "topic_prefix": "edgefleet/v1",
                           "controller_url": "http://127.0.0.1:1", "controller_public_key_pem": pem,
                           "release_public_keys_pem": [pem]}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


def test_the_unit_runs_the_config_enrollment_writes(tmp_path):
    args = service("ExecStart").split()
    config = PurePosixPath(args[args.index("--config") + 1])
    state_dir = PurePosixPath("/var/lib") / service("StateDirectory")
    server = HTTPServer(("127.0.0.1", 0), _Controller)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        written = enroll_device(controller_url=f"http://127.0.0.1:{server.server_port}", token="one-time-token",
                                state_dir=tmp_path / "state")
    finally:
        server.shutdown()
    # what `edgefleet-agent enroll --state-dir /var/lib/edgefleet` writes is what the unit reads
    assert config == state_dir / written.relative_to((tmp_path / "state").resolve()).as_posix()


@pytest.mark.parametrize(("config", "env"), [
    (None, {}),                                                                         # no file
    ('device_id = "cam 1"\nstate_dir = "s"\n', {}),                                     # a bad value
    ('device_id = "cam-1"\nstate_dir = "s"\ntelemetry_interval_s = -1\n', {}),
    ('device_id = "cam-1\n', {}),                                                       # not TOML
    ('device_id = "cam-1"\nstate_dir = "s"\ncolour = "blue"\n', {}),                    # an unknown key
    ('device_id = "cam-1"\nstate_dir = "s"\n', {"EDGEFLEET_AGENT_HEARTBEAT_INTERVAL_S": "often"}),
    ('device_id = "cam-1"\nstate_dir = "s"\nrelease_keys = ["missing.pub"]\n', {}),    # a key file missing
])
def test_a_bad_config_exits_2_which_the_unit_does_not_restart(tmp_path, monkeypatch, capsys, config, env):
    assert service("RestartPreventExitStatus").split() == ["2"]
    assert service("Restart") == "on-failure"
    monkeypatch.setattr(daemon.Agent, "run", lambda self: pytest.fail("the agent started on a bad config"))
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    path = tmp_path / "agent.toml"
    if config is not None:
        path.write_text(config)
    assert daemon.main(["--config", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("edgefleet-agent: ") and len(err.strip().splitlines()) == 1, err


def test_the_state_directory_is_private():
    assert service("StateDirectory") == "edgefleet"
    assert service("StateDirectoryMode") == "0700"
    assert service("UMask") == "0077"
    assert (service("User"), service("Group")) == ("edgefleet", "edgefleet")


def test_memory_max_covers_loading_a_model_as_large_as_the_largest_bundle():
    largest = AgentConfig.model_fields["max_bundle_bytes"].default
    assert size_bytes(service("MemoryMax")) >= AGENT_MIB * 2**20 + MODEL_FACTOR * largest


@pytest.mark.parametrize(("key", "value"), [
    ("NoNewPrivileges", "yes"), ("CapabilityBoundingSet", ""), ("AmbientCapabilities", ""),
    ("ProtectSystem", "strict"), ("ProtectHome", "yes"), ("PrivateTmp", "yes"), ("PrivateDevices", "yes"),
    ("PrivateUsers", "yes"), ("ProtectKernelTunables", "yes"), ("ProtectKernelModules", "yes"),
    ("ProtectKernelLogs", "yes"), ("ProtectControlGroups", "yes"), ("ProtectClock", "yes"),
    ("ProtectHostname", "yes"), ("ProtectProc", "invisible"), ("ProcSubset", "pid"),
    ("RestrictAddressFamilies", "AF_INET AF_INET6 AF_UNIX"), ("RestrictNamespaces", "yes"),
    ("RestrictRealtime", "yes"), ("RestrictSUIDSGID", "yes"), ("LockPersonality", "yes"),
    ("MemoryDenyWriteExecute", "yes"), ("SystemCallArchitectures", "native"),
])
def test_the_sandbox_is_set(key, value):
    assert service(key) == value


def test_system_calls_are_filtered_to_what_a_service_needs():
    assert unit()["Service"]["SystemCallFilter"] == ["@system-service", "~@privileged @resources"]
    assert service("SystemCallErrorNumber") == "EPERM"


def test_only_the_conventional_absolute_paths_appear():
    paths = re.findall(r"(?<![\w.])/[\w./-]+", "\n".join(
        line for line in UNIT.read_text().splitlines() if not line.lstrip().startswith("#")))
    assert paths and all(p.startswith(("/usr/bin/", "/etc/", "/var/lib/")) for p in paths), paths


def test_systemd_analyze_rates_the_unit_ok(tmp_path):
    tool = shutil.which("systemd-analyze")
    if tool is None:
        missing_part("systemd-analyze is not installed (apt-get install systemd)")
    copy = tmp_path / UNIT.name   # the offline analysis names the unit after the file
    copy.write_text(UNIT.read_text())
    done = subprocess.run([tool, "security", "--offline=yes", str(copy)], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    score = float(re.search(rf"Overall exposure level for {UNIT.name}: ([\d.]+)", done.stdout).group(1))
    assert score <= MAX_EXPOSURE, done.stdout[-3000:]
