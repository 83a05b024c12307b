"""Start-up time of the `edgefleet` CLI: `edgefleet --help` against `python -c pass`, measured in
the same run, interleaved, as medians (and against `import typer`, the floor any typer CLI pays).

Before the CLI imported heavy libraries only in the commands that need them, `--help` loaded onnx
and LiteRT (about 1.2 s). Usage: python benchmarks/cli_startup.py [--runs N]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
from pathlib import Path

from timing import timed


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=15)
    args = parser.parse_args()
    cli = shutil.which("edgefleet", path=str(Path(sys.executable).parent)) or "edgefleet"
    commands = {"edgefleet --help": [cli, "--help"],
                "python -c pass": [sys.executable, "-c", "pass"],
                "python -c 'import typer'": [sys.executable, "-c", "import typer"]}
    times: dict[str, list[float]] = {name: [] for name in commands}
    for _ in range(args.runs):
        for name, cmd in commands.items():
            times[name].append(timed(cmd))
    medians = {name: statistics.median(values) for name, values in times.items()}
    base = medians["python -c pass"]
    for name, m in medians.items():
        print(f"{name:28s} median {m * 1000:7.1f} ms  ({m / base:5.1f}x python -c pass)")
    typer_floor = medians["python -c 'import typer'"]
    print(f"edgefleet --help / import typer = {medians['edgefleet --help'] / typer_floor:.2f}x")

if __name__ == "__main__":
    main()
