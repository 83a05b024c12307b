"""Bundle verification throughput vs plain sha256 over the same bytes (>= 10 MB bundle).

Reports two figures:
* ``verify_bundle`` with the order's digest: what any holder of the bytes must do (bundle
  sha256 + archive checks + Ed25519 + every file's sha256), i.e. two hashing passes;
* the agent's ``verifying`` step: the download already hashed the bytes while streaming
  (and only renamed them into place once the digest matched), so the step re-checks size,
  archive, signature and per-file hashes: one pass.

    .venv/bin/python benchmarks/agent_bundle_verify.py [--mb 16] [--runs 9]
"""

from __future__ import annotations

import argparse
import hashlib
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from agent_common import signed_bundle  # noqa: E402

from edgefleet.protocol.bundle import bundle_digest, verify_bundle  # noqa: E402
from edgefleet.protocol.keys import TrustedKeys, generate_private_key  # noqa: E402


def big_model(mb: int) -> bytes:
    from onnx import TensorProto, helper, numpy_helper
    n = int(mb * 1024 * 1024 / 4 / 512)
    w = np.random.default_rng(0).normal(size=(512, n)).astype(np.float32)  # random: does not deflate
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "big",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 512])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", n])],
                              [numpy_helper.from_array(w, "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    return model.SerializeToString()


def median_s(fn, runs: int) -> float:
    out = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return statistics.median(out)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--mb", type=int, default=16)
    p.add_argument("--runs", type=int, default=9)
    args = p.parse_args()
    key = generate_private_key()
    trusted = TrustedKeys.of([key.public_key()], role="release")
    data = signed_bundle(big_model(args.mb), 512, key)
    digest = bundle_digest(data)
    mb = len(data) / 1e6
    t_sha = median_s(lambda: hashlib.sha256(data).hexdigest(), args.runs)
    t_full = median_s(lambda: verify_bundle(data, trusted=trusted, expected_digest=digest,
                                            expected_size=len(data)), args.runs)
    t_agent = median_s(lambda: verify_bundle(data, trusted=trusted, expected_size=len(data)), args.runs)
    print(f"bundle {mb:.1f} MB, medians of {args.runs} runs")
    print(f"  plain sha256                 {mb / t_sha:8.0f} MB/s")
    print(f"  verify_bundle (with digest)  {mb / t_full:8.0f} MB/s   ratio {t_sha / t_full:.2f}x of sha256")
    print(f"  agent verifying step         {mb / t_agent:8.0f} MB/s   ratio {t_sha / t_agent:.2f}x of sha256")
    print("target: >= 0.5x the throughput of plain sha256")


if __name__ == "__main__":
    main()
