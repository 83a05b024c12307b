"""Wall time of `edgefleet demo`, start to summary (target: under 2 minutes on 2 cores).

The baseline, measured in the same run, is a bare interpreter start that imports the same
stack (so the ratio shows what the demo itself costs beyond loading Python and its libraries).
Usage: python benchmarks/demo_walltime.py [--runs N]
"""

from __future__ import annotations

import argparse
import statistics
import sys

from timing import timed

IMPORTS = ("import edgefleet.cloud.app, edgefleet.compression.api, onnxruntime, sklearn, "
           "ai_edge_litert.interpreter")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=1)
    args = parser.parse_args()
    demo = [timed([sys.executable, "-m", "edgefleet.cloud.cli", "demo"]) for _ in range(args.runs)]
    base = [timed([sys.executable, "-c", IMPORTS]) for _ in range(max(3, args.runs))]
    d, b = statistics.median(demo), statistics.median(base)
    print(f"edgefleet demo wall time: median {d:.1f} s over {len(demo)} run(s) "
          f"({'within' if d < 120 else 'OVER'} the 120 s target)")
    print(f"baseline (interpreter + imports): median {b:.2f} s; demo / baseline = {d / b:.0f}x")


if __name__ == "__main__":
    main()
