"""`edgefleet serve` in the foreground, as an operator starts it: it says where it listens and that
Ctrl-C stops it, prints the first admin token exactly once (never in the log), the token works, and
SIGINT ends it cleanly. A second start prints no token."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import urllib.request

import pytest

from testkit import free_port, wait_until

pytestmark = pytest.mark.integration


def start(tmp_path, port: int) -> subprocess.Popen[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("EDGEFLEET_")}
    return subprocess.Popen([sys.executable, "-m", "edgefleet.cloud.cli", "serve", "--port", str(port), "--data-dir",
                             str(tmp_path / "controller")], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=env)


def stop(proc: subprocess.Popen[str]) -> tuple[str, str]:
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode in (0, -signal.SIGINT, 130), err[-2000:]
    return out, err


def healthy(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as r:
            return r.status == 200
    except OSError:
        return False


def test_serve_prints_the_first_admin_token_once_and_never_logs_it(tmp_path):
    port = free_port()
    proc = start(tmp_path, port)
    try:
        wait_until(lambda: healthy(port), "the controller answering", timeout=60)
        first = proc.stdout.readline() + proc.stdout.readline()   # already there, not held in a buffer
        req = urllib.request.Request(f"http://127.0.0.1:{port}/api/v1/info")
    finally:
        out, err = stop(proc)
    out = first + out
    assert f"EdgeFleet controller on http://127.0.0.1:{port}" in first and "Ctrl-C stops it" in first
    (token,) = re.findall(r"admin API token \(shown once, store it\): (eft_\S+)", first)
    assert (out + err).count(token) == 1
    assert "created the first admin API token" in err and "Traceback" not in err

    proc = start(tmp_path, port)
    try:
        wait_until(lambda: healthy(port), "the controller answering again", timeout=60)
        req.add_header("Authorization", f"Bearer {token}")
        with urllib.request.urlopen(req, timeout=5) as r:
            assert r.status == 200
    finally:
        out, err = stop(proc)
    assert "admin API token" not in out and token not in out + err
