"""The cost of device message signatures, per message, against the work the message costs anyway.

On the device: encoding a realistic telemetry window (the baseline) and sealing it (Ed25519 over
the topic and the payload). On the controller: the strict decode of the same window (the
baseline) and the signature check that precedes it. Each loop runs for ``--seconds``; medians of
``--repeats`` runs are printed with the ratios. The end-to-end effect on ingest throughput is in
benchmarks/ingest.py (signed vs unsigned consumers on one broker).

    python benchmarks/message_signatures.py [--seconds 1] [--repeats 5]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import numpy as np

from edgefleet.protocol import device_signatures
from edgefleet.protocol.device_signatures import raw_public_key, seal
from edgefleet.protocol.keys import generate_private_key
from edgefleet.protocol.messages import DriftScores, Histogram, InstalledBundle, TelemetryWindow, decode, encode

TOPIC = "edgefleet/v1/devices/dev-00001/telemetry"


def window() -> TelemetryWindow:
    rng = np.random.default_rng(0)
    return TelemetryWindow(
        device_id="dev-00001", window_seq=1, window_start=1000.0, window_end=1060.0,
        bundle=InstalledBundle(name="digits", version="1.0.0", build=1, digest="ab" * 32, runtime="onnx", slot="a"),
        requests=100, batches=100, samples=100, errors=0,
        latency_ms=Histogram(bounds=[0.1, 0.2, 0.5, 1, 2, 5, 10, 20, 50, 100, 200],
                             counts=rng.integers(0, 20, size=12).tolist()),
        features=rng.integers(0, 50, size=(64, 10)).tolist(), predictions={str(k): 10 for k in range(10)},
        drift=DriftScores(psi=0.01, js=0.005, ks=0.02, per_feature_psi=[0.01] * 64, level="ok", samples=100))


def per_call_us(fn: Callable[[], object], seconds: float) -> float:
    calls, started = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - started) < seconds:
        for _ in range(50):
            fn()
        calls += 50
    return elapsed / calls * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=1.0)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    key = generate_private_key()
    public = raw_public_key(key.public_key())
    msg = window()
    body = encode(msg)
    sealed = seal(key, TOPIC, body)
    device_signatures.verify(public, TOPIC, sealed)   # it must verify, or the figures mean nothing
    loops = {"encode (device baseline)": lambda: encode(msg),
             "seal (device)": lambda: seal(key, TOPIC, body),
             "decode (controller baseline)": lambda: decode("telemetry", sealed),
             "verify (controller)": lambda: device_signatures.verify(public, TOPIC, sealed)}
    runs: dict[str, list[float]] = {name: [] for name in loops}
    for _ in range(args.repeats):
        for name, fn in loops.items():
            runs[name].append(per_call_us(fn, args.seconds))
    med = {name: statistics.median(v) for name, v in runs.items()}
    print(f"telemetry window of {len(body)} bytes (+{len(sealed) - len(body)} bytes of signature), "
          f"medians of {args.repeats} runs of {args.seconds:g} s:")
    for name, us in med.items():
        print(f"  {name:30s} {us:8.1f} us/message")
    print(f"  device:     seal / encode  {med['seal (device)'] / med['encode (device baseline)']:.2f}x")
    print(f"  controller: verify / decode {med['verify (controller)'] / med['decode (controller baseline)']:.2f}x")


if __name__ == "__main__":
    main()
