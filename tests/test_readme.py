"""The README says what works: its engineer's tour runs as it stands, top to bottom (on free ports,
with this test run's environment), and every `edgefleet` command it shows exists with the options
it uses."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from edgefleet.cloud.cli import main as cli

from testkit import free_port

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
SHELL_BLOCKS = re.findall(r"```sh\n(.*?)```", README, re.S)


def tour() -> str:
    section = README.split("### The engineer's loop", 1)[1]
    return re.search(r"```sh\n(.*?)```", section, re.S).group(1)


def edgefleet_commands() -> list[list[str]]:
    """Each `edgefleet ...` invocation in the README's shell blocks, as words (continuations joined)."""
    found = []
    for block in SHELL_BLOCKS:
        for line in block.replace("\\\n", " ").splitlines():
            for match in re.finditer(r"(?:^|[\s(/])edgefleet ([^|)#>&]*)", line):
                found.append(shlex.split(match.group(1)))
    return found


def test_the_readme_shows_cli_commands():
    assert len(edgefleet_commands()) >= 15


@pytest.mark.parametrize("words", edgefleet_commands(), ids=lambda w: " ".join(w[:3]))
def test_each_command_and_option_in_the_readme_exists(capsys, words):
    path = [w for w in words[:2] if not w.startswith("-") and not w.startswith("$") and "/" not in w
            and ":" not in w and "." not in w]
    rc = cli([*path, "--help"])
    help_text = capsys.readouterr().out
    assert rc == 0, f"edgefleet {' '.join(path)} --help failed"
    for option in (w.split("=")[0] for w in words if w.startswith("--")):
        assert option in help_text, f"edgefleet {' '.join(path)} has no option {option}"


@pytest.mark.integration
def test_the_engineers_tour_runs_top_to_bottom(tmp_path):
    api, inference = free_port(), free_port()
    script = tour().replace(". .venv/bin/activate", f'export PATH="{Path(sys.executable).parent}:$PATH"')
    script = script.replace("127.0.0.1:8080", f"127.0.0.1:{api}").replace("8470", str(inference))
    script = script.replace("edgefleet serve --data-dir", f"edgefleet serve --port {api} --data-dir")
    env = {k: v for k, v in os.environ.items() if not k.startswith("EDGEFLEET_")} | {"TMPDIR": str(tmp_path)}
    done = subprocess.run(["bash", "-euo", "pipefail", "-c", script], cwd=ROOT, capture_output=True, text=True,
                          timeout=420, env=env)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    assert re.search(r"OK digits-mlp 1\.0\.0\+1 signed by [0-9a-f]{12}", done.stdout)
    assert re.search(r"^gate +PASS$", done.stdout, re.M) and "weights quantized     3 of 3 tensors" in done.stdout
    assert "predicted [0, 1, 2, 3, 4, 5, 6, 7, 8, 9" in done.stdout and "by digits-mlp 1.0.0" in done.stdout
    assert re.search(r"cam-01 +yes +digits-mlp 1\.0\.0\+1 +committed", done.stdout)
    assert "Traceback" not in done.stdout + done.stderr
