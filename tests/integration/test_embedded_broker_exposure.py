"""`edgefleet serve` with the embedded broker (which checks no credentials) on a non-loopback address:
refused with why and what to do, unless ``--insecure-broker`` is given -- then it runs, and says at
start that the broker is open to anyone who reaches it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import urllib.request

import pytest

from testkit import free_port, wait_until

pytestmark = pytest.mark.integration


def serve(tmp_path, port: int, *flags: str) -> subprocess.Popen[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("EDGEFLEET_")}
    env["EDGEFLEET_EMBEDDED_BROKER_HOST"] = "0.0.0.0"
    return subprocess.Popen([sys.executable, "-m", "edgefleet.cloud.cli", "serve", "--port", str(port),
                             "--data-dir", str(tmp_path / "controller"), *flags],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def healthy(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as r:
            return r.status == 200
    except OSError:
        return False


def test_serve_refuses_an_exposed_embedded_broker_and_says_why(tmp_path):
    proc = serve(tmp_path, free_port())
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 2, err
    assert "embedded_broker_host: the embedded MQTT broker would listen on '0.0.0.0'" in err
    assert "checks no credentials" in err and "dynamic-security" in err and "--insecure-broker" in err
    assert "Traceback" not in err and not (tmp_path / "controller").exists()


def test_with_insecure_broker_it_runs_and_warns_at_start(tmp_path):
    port = free_port()
    proc = serve(tmp_path, port, "--insecure-broker")
    try:
        wait_until(lambda: healthy(port) or proc.poll() is not None, "the controller answering", timeout=60)
        assert proc.poll() is None
    finally:
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=30)
    assert "the embedded MQTT broker listens on 0.0.0.0:" in err and "without authentication" in err
    assert "Traceback" not in err
