"""The CLI as a new user meets it: usage errors are one usage line and a non-zero exit (never a
traceback) in every command group, --version answers, help texts keep their brackets, and starting
the CLI loads none of the heavy libraries."""

from __future__ import annotations

import subprocess
import sys

import pytest

from edgefleet.cloud.cli import main as cli

GROUPS = ["keys", "bundle", "models", "devices", "deployments", "rollout", "experiment", "webhook", "captures",
          "incidents", "users", "tokens", "db"]
COMMANDS = ["compress", "sample-models", "deploy", "telemetry", "status", "serve", "demo", "retrain", "simulate"]
"""``retrain MODEL`` is a command (its ``status`` and ``list`` take the place of a model name)."""
HEAVY = ("onnx", "onnxruntime", "ai_edge_litert", "tflite_runtime", "sklearn", "sqlalchemy", "sqlmodel",
         "fastapi", "uvicorn", "numpy", "httpx2", "edgefleet.compression.api", "edgefleet.compression.config",
         "edgefleet.protocol.bundle")


def run(capsys, *args: str) -> tuple[int, str, str]:
    capsys.readouterr()
    rc = cli(list(args))
    out = capsys.readouterr()
    return rc, out.out, out.err


def assert_usage_error(rc: int, out: str, err: str, needle: str) -> None:
    text = out + err
    assert rc == 2, text
    assert "Traceback" not in text
    assert sum(line.startswith("Usage: edgefleet") for line in text.splitlines()) == 1, text
    assert needle in text


@pytest.mark.parametrize("group", GROUPS)
def test_unknown_subcommand(capsys, group):
    assert_usage_error(*run(capsys, group, "bogus"), needle="No such command 'bogus'")


@pytest.mark.parametrize("group", GROUPS)
def test_bare_group_shows_its_commands(capsys, group):
    rc, out, err = run(capsys, group)
    assert_usage_error(rc, out, err, needle="Commands:")


@pytest.mark.parametrize(("args", "needle"), [
    (["keys", "generate"], "Missing argument 'NAME'"),
    (["bundle", "build"], "Missing argument 'RECIPE'"),
    (["models", "show"], "Missing argument 'NAME'"),
    (["devices", "show"], "Missing argument 'DEVICE_ID'"),
    (["deployments", "cancel"], "Missing argument 'DEPLOYMENT_ID'"),
    (["deploy"], "Missing argument 'BUNDLE'"),
    (["compress"], "Missing argument 'MODEL'"),
    (["sample-models"], "Missing argument 'DIRECTORY'"),
    (["captures", "download"], "Missing argument 'DATASET_ID'"),
    (["incidents", "show"], "Missing argument 'INCIDENT_ID'"),
    (["retrain", "start"], "Missing argument 'MODEL'"),
    (["retrain", "status"], "Missing argument 'JOB_ID'"),
    (["users", "create", "alice"], "Missing option '--role'"),
    (["tokens", "revoke"], "Missing argument 'TOKEN_ID'"),
])
def test_missing_argument(capsys, args, needle):
    assert_usage_error(*run(capsys, *args), needle=needle)


@pytest.mark.parametrize(("args", "needle"), [
    (["deployments", "list", "--status", "bogus"], "Invalid value for '--status'"),
    (["deployments", "list", "--limit", "many"], "Invalid value for '--limit'"),
    (["telemetry", "--by", "nope"], "Invalid value for '--by'"),
    (["models", "compress", "m", "1", "--variant", "v", "--runtime", "cuda"], "Invalid value for '--runtime'"),
    (["compress", "m.onnx", "-o", "x", "--mode", "int3"], "Invalid value for '--mode'"),
    (["serve", "--port", "http"], "Invalid value for '--port'"),
    (["demo", "--devices", "99"], "Invalid value for '--devices'"),
    (["keys", "show"], "Missing argument 'PATH'"),
    (["status", "--wait", "-1"], "Invalid value for '--wait'"),
    (["devices", "list", "--no-such-option"], "No such option: --no-such-option"),
])
def test_bad_option_value(capsys, args, needle):
    assert_usage_error(*run(capsys, *args), needle=needle)


def test_unknown_top_level_command(capsys):
    assert_usage_error(*run(capsys, "deployz"), needle="No such command 'deployz'")


def test_version(capsys):
    rc, out, _ = run(capsys, "--version")
    assert rc == 0 and out.startswith("edgefleet ") and out.split()[1][0].isdigit()


def test_help_keeps_brackets_and_names_arguments_conventionally(capsys):
    rc, out, _ = run(capsys, "bundle", "build", "--help")
    assert rc == 0
    assert "[compression] table" in out
    assert "Usage: edgefleet bundle build [OPTIONS] RECIPE\n" in out
    assert "<bool>" not in out


def test_shell_completion_is_offered(capsys):
    rc, out, _ = run(capsys, "--help")
    assert rc == 0 and "--install-completion" in out and "--show-completion" in out


def test_importing_the_cli_loads_no_heavy_library():
    probe = ("import sys, edgefleet.cloud.cli.app; "
             f"print(','.join(m for m in {HEAVY!r} if m in sys.modules))")
    loaded = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout.strip()
    assert loaded == ""


def test_every_command_is_covered_here(capsys):
    rc, out, _ = run(capsys, "--help")
    listed = {line.split()[0] for line in out.split("Commands:", 1)[1].splitlines() if line.strip()}
    assert listed == set(GROUPS) | set(COMMANDS) | {"telemetry"}
