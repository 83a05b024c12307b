"""Every benchmark script still starts: its imports resolve (the kits it borrows from tests/ included)
and it answers ``--help``. Benchmarks do not run in CI, so without this a moved helper breaks one
silently until someone measures (benchmarks/download_offload.py did, when testkit.py moved)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
SCRIPTS = sorted(p for p in BENCHMARKS.glob("*.py") if "argparse.ArgumentParser" in p.read_text())


def test_the_benchmarks_with_options_are_found():
    assert len(SCRIPTS) >= 15, [p.name for p in SCRIPTS]


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_a_benchmark_starts_and_explains_its_options(script, tmp_path):
    done = subprocess.run([sys.executable, str(script), "--help"], capture_output=True, text=True, timeout=120,
                          cwd=tmp_path)   # not the checkout: imports must not depend on the working directory
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.startswith("usage:"), done.stdout[:500]
