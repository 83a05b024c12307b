"""Bundle size and the smoke vectors' share of it, format 1 (JSON inline, the baseline, written by
the tests' old-format writer) against format 2 (.npy files, generated wide inputs), for the demo's
digits MLP and a wide-input ([N, 3, 224, 224]) classifier of about the same size. No network.

    .venv/bin/python benchmarks/bundle_size.py
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "protocol"))

from bundlekit import to_format_1, wide_model  # noqa: E402  (test helpers: the old-format writer)

from edgefleet.cloud.cli.demo import recipe  # noqa: E402
from edgefleet.compression.samples import load_digits_split, train_mlp  # noqa: E402
from edgefleet.protocol import keys  # noqa: E402
from edgefleet.protocol.bundle import build_bundle, parse_recipe, read_manifest  # noqa: E402
from edgefleet.protocol.canonical import canonical_json  # noqa: E402


def smoke_bytes(data: bytes) -> int:
    """Bytes the smoke vectors take in a bundle: inline JSON (format 1) or their files' members (format 2)."""
    m = read_manifest(data)
    if m.format_version == 1:
        return len(canonical_json(m.model_dump(mode="json")["smoke_test"]))
    return sum(512 + -(-f.stored_size // 512) * 512 for f in m.files if f.path.startswith("smoke/")) + \
        len(canonical_json(m.model_dump(mode="json")["smoke_test"]))


def profile_bytes(data: bytes) -> int:
    m = read_manifest(data)
    if m.profile_files is None:  # inline: format 1, or format 2 when that is smaller
        return len(canonical_json(m.model_dump(mode="json")["reference_profile"]))
    return sum(512 + -(-f.stored_size // 512) * 512 for f in m.files if f.path.startswith("profile/")) + \
        len(canonical_json(m.model_dump(mode="json")["profile_files"]))


def main() -> None:
    key = keys.generate_private_key()
    trusted = keys.TrustedKeys.of([key.public_key()], role="release")
    digits = load_digits_split()
    rng = np.random.default_rng(0)
    images = rng.normal(0, 1, (64, 3, 224, 224)).astype(np.float32)
    cases = {"digits MLP (demo)": (train_mlp(digits), digits.x_train[:600], "onnx"),
             "wide input [N,3,224,224]": (wide_model(), images, "onnx")}
    print(f"{'model':<26} {'model KB':>9} {'format':>6} {'bundle KB':>10} {'smoke KB':>9} {'smoke %':>8} "
          f"{'profile KB':>11} profile")
    for name, (model, samples, runtime) in cases.items():
        r = recipe(runtime, "1.0.0", 1)
        r["bundle"]["name"] = "bench"
        built = build_bundle(parse_recipe(r), model, samples=samples, release_key=key)
        for fmt, data in ((1, to_format_1(built.data, key, trusted)), (2, built.data)):
            s = smoke_bytes(data)
            print(f"{name:<26} {len(model) / 1024:>9.1f} {fmt:>6} {len(data) / 1024:>10.1f} {s / 1024:>9.1f} "
                  f"{100 * s / len(data):>7.2f}% {profile_bytes(data) / 1024:>11.1f} "
                  f"{'inline' if read_manifest(data).profile_files is None else 'files'}")


if __name__ == "__main__":
    main()
