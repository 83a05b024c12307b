"""Timing whole commands for the start-up benchmarks (wall clock, output discarded)."""

from __future__ import annotations

import subprocess
import time


def timed(cmd: list[str]) -> float:
    started = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - started
