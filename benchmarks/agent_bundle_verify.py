"""Bundle verification: throughput against plain sha256 of the same bytes, and peak memory.

    .venv/bin/python benchmarks/agent_bundle_verify.py [--mb 16] [--runs 9] [--stream-mb 200] [--stream-runs 3]

In memory (``--mb``; what the controller's registry runs on an upload), medians of ``--runs``:
* ``verify_bundle`` with the order's digest: bundle sha256 + archive checks + Ed25519 + every file's
  sha256, i.e. two hashing passes (the whole-bundle one on a second core);
* the same without the digest (one pass).

Streaming from disk (``--stream-mb``; what a device runs), the bundle written to a file first (so read
from the page cache), medians of ``--stream-runs``:
* throughput of plain sha256 of the file (1 MiB reads, timed right before each run) against
  ``verify_bundle_file`` as the agent's verifying step runs it (files decoded into a staging directory;
  the download already checked the digest), with the order's digest as well (everything a holder of the
  file must check), and as a slot is loaded (digest checked, files kept in memory for the runtime);
* peak memory: each run in a fresh child process, its peak RSS (``VmHWM`` of /proc/self/status), next
  to a baseline child that imports the same modules and computes the plain sha256; at the full size and
  at a quarter of it, so a figure that grows with the bundle shows. For comparison: the whole-bundle way
  (``read_bytes`` + ``verify_bundle``) and the slot load followed by opening the ONNX Runtime session.

The model is a real ONNX MatMul with random weights (building the bundle runs it; verifying does not
load it) plus a sparse weights file that deflates, so inflating is streamed too.
"""

from __future__ import annotations

import argparse
import hashlib
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from agent_common import signed_bundle  # noqa: E402

from edgefleet.protocol.bundle import (  # noqa: E402
    build_bundle,
    bundle_digest,
    parse_recipe,
    verify_bundle,
    verify_bundle_file,
)
from edgefleet.protocol.keys import TrustedKeys, generate_private_key, save_public_key  # noqa: E402

BUDGET_MIB = 32
"""Streaming verification may add at most this much to the baseline child's peak RSS, at any size."""
CHUNK = 1024 * 1024

CHILD = r"""
import hashlib, sys
from pathlib import Path
from edgefleet.protocol.bundle import verify_bundle, verify_bundle_file
from edgefleet.protocol.keys import TrustedKeys, load_public_key
mode, path, digest, pub, staging = sys.argv[1:]
trusted = TrustedKeys.of([load_public_key(pub)], role="release")
if mode == "sha256":
    h = hashlib.sha256()
    with open(path, "rb", buffering=0) as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    assert h.hexdigest() == digest
elif mode == "agent":
    verify_bundle_file(path, trusted=trusted, out_dir=staging)
elif mode == "digest":
    verify_bundle_file(path, trusted=trusted, expected_digest=digest, out_dir=staging)
elif mode == "whole":
    verify_bundle(Path(path).read_bytes(), trusted=trusted, expected_digest=digest)
elif mode == "load":
    from edgefleet.protocol.runtimes import open_session
    bundle = verify_bundle_file(path, trusted=trusted, expected_digest=digest)
    session = open_session(bundle.manifest.runtime, bundle.model)
    del bundle   # what stays: the session serving the model
# peak RSS of this process since it started (exec), and RSS now
status = {l.split(":")[0]: l.split()[1] for l in open("/proc/self/status") if l.startswith(("VmHWM", "VmRSS"))}
print(status["VmHWM"], status["VmRSS"])
"""
CHILD_MODES = {"agent": "agent verifying step (streamed, staging dir)",
               "digest": "verify_bundle_file with the digest (streamed)",
               "whole": "whole bundle in memory (read_bytes + verify_bundle)",
               "load": "slot load + ONNX Runtime session"}


def big_model(mb: float) -> bytes:
    from onnx import TensorProto, helper, numpy_helper
    n = max(1, int(mb * 1024 * 1024 / 4 / 512))
    w = np.random.default_rng(0).normal(size=(512, n)).astype(np.float32)  # random: does not deflate
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "big",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 512])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", n])],
                              [numpy_helper.from_array(w, "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    return model.SerializeToString()


def streaming_bundle(mb: int, key) -> bytes:
    """~``mb`` MB: 90 % model, 10 % (before deflating) sparse weights (one value in 20 set)."""
    rng = np.random.default_rng(2)
    sparse = np.zeros(int(mb * 0.1 * 1024 * 1024 / 4), np.float32)
    sparse[::20] = rng.normal(size=len(sparse[::20]))
    recipe = parse_recipe({"bundle": {"name": "bench", "version": "1.0.0", "build": 1, "runtime": "onnx"}})
    x = rng.normal(size=(8, 512)).astype(np.float32)
    return build_bundle(recipe, big_model(mb * 0.9), samples=x, release_key=key,
                        extra_files={"weights/sparse.bin": sparse.tobytes()}).data


def median_s(fn: Callable[[], object], runs: int, before: Callable[[], object] = lambda: None) -> float:
    out = []
    for _ in range(runs):
        before()
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return statistics.median(out)


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb", buffering=0) as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
    return h.hexdigest()


def rss_mib(mode: str, path: Path, digest: str, pub: Path, staging: Path) -> tuple[float, float]:
    """The child's own peak RSS (VmHWM, reset by exec: ``ru_maxrss`` of a child forked from this big
    process would count the parent's pages it started with) and its RSS at the end."""
    shutil.rmtree(staging, ignore_errors=True)
    done = subprocess.run([sys.executable, "-c", CHILD, mode, str(path), digest, str(pub), str(staging)],
                          capture_output=True, text=True, check=True)
    peak, now = done.stdout.split()[-2:]
    return int(peak) / 1024, int(now) / 1024   # kB


def peak_rss_mib(mode: str, path: Path, digest: str, pub: Path, staging: Path) -> float:
    return rss_mib(mode, path, digest, pub, staging)[0]


def in_memory(mb: int, runs: int, key, trusted: TrustedKeys) -> None:
    data = signed_bundle(big_model(mb), 512, key)
    digest = bundle_digest(data)
    size = len(data) / 1e6
    t_sha = median_s(lambda: hashlib.sha256(data).hexdigest(), runs)
    t_full = median_s(lambda: verify_bundle(data, trusted=trusted, expected_digest=digest,
                                            expected_size=len(data)), runs)
    t_one = median_s(lambda: verify_bundle(data, trusted=trusted, expected_size=len(data)), runs)
    print(f"in memory: bundle {size:.1f} MB, medians of {runs} runs")
    print(f"  plain sha256                       {size / t_sha:6.0f} MB/s")
    print(f"  verify_bundle (with digest)        {size / t_full:6.0f} MB/s   {t_sha / t_full:.2f}x of sha256")
    print(f"  verify_bundle (without digest)     {size / t_one:6.0f} MB/s   {t_sha / t_one:.2f}x of sha256")


def streaming(mb: int, runs: int, key, trusted: TrustedKeys, tmp: Path) -> None:
    pub = save_public_key(key.public_key(), tmp / "release.pub")
    sizes = {}
    for label, size_mb in (("full", mb), ("quarter", max(1, mb // 4))):
        path = tmp / f"{label}.bundle"
        data = streaming_bundle(size_mb, key)
        path.write_bytes(data)
        sizes[label] = (path, bundle_digest(data), len(data))
        del data
    path, digest, nbytes = sizes["full"]
    staging = tmp / "staging"

    def clear() -> None:
        shutil.rmtree(staging, ignore_errors=True)

    size = nbytes / 1e6
    file_sha256(path)  # warm the page cache
    modes: dict[str, Callable[[], object]] = {
        "agent verifying step (staging dir)":
            lambda: verify_bundle_file(path, trusted=trusted, expected_size=nbytes, out_dir=staging),
        "with the digest (staging dir)":
            lambda: verify_bundle_file(path, trusted=trusted, expected_digest=digest, out_dir=staging),
        "slot load (digest, files in memory)":
            lambda: verify_bundle_file(path, trusted=trusted, expected_digest=digest),
    }
    # Interleaved: each run times plain sha256 right before every mode, so a machine whose load changes
    # between runs skews the ratio less; medians of the per-run ratios.
    sha_s: list[float] = []
    ratio: dict[str, list[float]] = {what: [] for what in modes}
    for _ in range(runs):
        for what, fn in modes.items():
            t_sha = median_s(lambda: file_sha256(path), 1)
            ratio[what].append(t_sha / median_s(fn, 1, clear))
            sha_s.append(t_sha)
    clear()
    print(f"streaming from disk: bundle {size:.1f} MB (page cache), medians of {runs} interleaved runs")
    print(f"  plain sha256 of the file             {size / statistics.median(sha_s):6.0f} MB/s")
    ratios = [statistics.median(r) for r in ratio.values()]
    for what, r in zip(modes, ratios, strict=True):
        print(f"  {what:<36} {r * size / statistics.median(sha_s):6.0f} MB/s   {r:.2f}x of sha256")

    print("peak RSS of a child process (VmHWM), MiB:                 "
          + "   ".join(f"{sizes[k][2] / 1e6:6.1f} MB bundle" for k in ("quarter", "full")))
    base = {k: peak_rss_mib("sha256", sizes[k][0], sizes[k][1], pub, staging) for k in sizes}
    print(f"  {'baseline (same imports, plain sha256)':<52}" + "".join(f"{base[k]:12.1f}     " for k in
                                                                          ("quarter", "full")))
    extra: dict[str, dict[str, float]] = {}
    for mode, what in CHILD_MODES.items():
        extra[mode] = {k: peak_rss_mib(mode, sizes[k][0], sizes[k][1], pub, staging) - base[k] for k in sizes}
        print(f"  {what:<52}" + "".join(f"{extra[mode][k]:+12.1f}     " for k in ("quarter", "full")))
    clear()
    model_mib = nbytes * 0.9 / 2**20
    serving = rss_mib("load", path, digest, pub, staging)[1] - base["full"]
    print(f"  slot load + session: peak {extra['load']['full'] / model_mib:.1f}x the model's {model_mib:.0f} MiB, "
          f"then {serving / model_mib:.1f}x while it serves (RSS minus the baseline)")
    within = all(extra[m][k] <= BUDGET_MIB for m in ("agent", "digest") for k in sizes)
    print(f"budget: streaming verification <= baseline + {BUDGET_MIB} MiB at both sizes: "
          f"{'PASS' if within else 'FAIL'}")
    print(f"target: the agent's verifying step >= 0.5x the throughput of plain sha256: "
          f"{'PASS' if ratios[0] >= 0.5 else 'FAIL'} ({ratios[0]:.2f}x; the digest paths hash twice and need a "
          "second core for it)")


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--mb", type=int, default=16)
    p.add_argument("--runs", type=int, default=9)
    p.add_argument("--stream-mb", type=int, default=200)
    p.add_argument("--stream-runs", type=int, default=3)
    args = p.parse_args()
    key = generate_private_key()
    trusted = TrustedKeys.of([key.public_key()], role="release")
    in_memory(args.mb, args.runs, key, trusted)
    with tempfile.TemporaryDirectory() as tmp:
        streaming(args.stream_mb, args.stream_runs, key, trusted, Path(tmp))


if __name__ == "__main__":
    main()
