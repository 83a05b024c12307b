"""A device installs ``edgefleet[agent,tflite]`` and nothing of the controller's stack.

As the README shows it: a wheel is built from the checkout, and a fresh virtual environment
installs it with only those extras, pinned by constraints.txt (pip's cache makes this quick after
the project's own install). Checks what landed, that both runtimes are usable from there, that the
daemon starts (a bad config is one clear line), and that the ``edgefleet`` command, which every
install puts on the path, says which extra it needs instead of crashing.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tomllib
import venv
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
CONTROLLER_STACK = {"fastapi", "sqlmodel", "sqlalchemy", "onnx", "uvicorn", "scikit-learn", "litert-quantizer",
                    "typer", "jinja2", "psycopg", "iotcore"}


@pytest.fixture(scope="module")
def device_env(tmp_path_factory) -> Path:
    dist = tmp_path_factory.mktemp("dist")
    source = tmp_path_factory.mktemp("source") / "edgefleet"  # setuptools builds in the tree: not in ours
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(".*", "build", "*.egg-info", "__pycache__", "tests",
                                                                 "benchmarks", "docs"))
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(dist), str(source)],
                           capture_output=True, text=True, timeout=600)
    assert built.returncode == 0, built.stderr[-3000:]
    (wheel,) = dist.glob("edgefleet-*.whl")
    env = tmp_path_factory.mktemp("device-venv")
    venv.EnvBuilder(with_pip=True).create(env)
    done = subprocess.run([str(env / "bin" / "python"), "-m", "pip", "install", "-q", "-c",
                           str(ROOT / "constraints.txt"), f"{wheel}[agent,tflite]"],
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    return env


def test_device_install_holds_no_controller_packages(device_env):
    listed = subprocess.run([str(device_env / "bin" / "python"), "-m", "pip", "list", "--format=freeze"],
                            capture_output=True, text=True, check=True).stdout
    installed = {line.split("==")[0].lower() for line in listed.splitlines()}
    assert "onnxruntime" in installed and "paho-mqtt" in installed and "ai-edge-litert" in installed
    assert installed & CONTROLLER_STACK == set()


def test_agent_runs_from_the_device_install(device_env, tmp_path):
    python = str(device_env / "bin" / "python")
    probe = subprocess.run([python, "-c", "import sys, edgefleet.agent.daemon, edgefleet.agent.enroll\n"
                            "from edgefleet.protocol.runtimes import available_runtimes\n"
                            "print(','.join(available_runtimes()))"],
                           capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert probe.returncode == 0, probe.stderr
    assert probe.stdout.strip() == "onnx,tflite"
    (tmp_path / "agent.toml").write_text('device_id = "dev 1"\nstate_dir = "state"\n')
    bad = subprocess.run([str(device_env / "bin" / "edgefleet-agent"), "--config", str(tmp_path / "agent.toml")],
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2
    assert "device_id" in bad.stderr and "Traceback" not in bad.stderr
    assert len(bad.stderr.strip().splitlines()) == 1



def test_the_cli_on_a_device_names_the_extra_it_needs(device_env):
    done = subprocess.run([str(device_env / "bin" / "edgefleet"), "devices", "list"], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 2
    assert "edgefleet[cloud]" in done.stderr and "edgefleet-agent" in done.stderr
    assert "Traceback" not in done.stderr and len(done.stderr.strip().splitlines()) == 1


def test_the_agent_says_its_version(device_env):
    done = subprocess.run([str(device_env / "bin" / "edgefleet-agent"), "--version"], capture_output=True, text=True,
                          timeout=60)
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    assert done.returncode == 0 and done.stdout.strip() == f"edgefleet-agent {version}"
