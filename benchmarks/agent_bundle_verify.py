"""Bundle verification: throughput against plain sha256 of the same bytes, and peak memory.

    .venv/bin/python benchmarks/agent_bundle_verify.py [--mb 16] [--runs 9] [--stream-mb 200] [--stream-runs 3]

In memory (``--mb``; what the controller's registry runs on an upload), medians of ``--runs``:
* ``verify_bundle`` with the order's digest: bundle sha256 + archive checks + Ed25519 + every file's
  sha256, i.e. two hashing passes (the whole-bundle one on a second core);
* the same without the digest (one pass).

Streaming from disk (``--stream-mb`` and a quarter of it; what a device runs), the bundle written to a
file first (so read from the page cache), medians of ``--stream-runs``:
* throughput of plain sha256 of the file (1 MiB reads, timed right before each run) against
  ``verify_bundle_file`` as the agent runs it after a download: its verifying step (every file hashed
  and dropped, ``keep_files=False``; the download checked the digest as it wrote the file) and the slot
  load at activation and boot (against the fingerprint recorded by the verifying step, files kept in
  memory for the runtime); for reference, reading the file into memory (what a load needs at least), the
  old slot load with the whole-file digest (a slot staged without a fingerprint), and the same with the
  files decoded into a staging directory (the verifying step before); and staging the file into a slot
  (a hard link, or copy + fsync where links fail), as a multiple of the sha256 time;
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
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from agent_common import signed_bundle  # noqa: E402

from edgefleet.agent.slots import Slots  # noqa: E402
from edgefleet.protocol.bundle import (  # noqa: E402
    build_bundle,
    bundle_digest,
    parse_recipe,
    verify_bundle,
    verify_bundle_file,
)
from edgefleet.protocol.files import atomic_write  # noqa: E402
from edgefleet.protocol.keys import TrustedKeys, generate_private_key, save_public_key  # noqa: E402

BUDGET_MIB = 32
"""Streaming verification may add at most this much to the baseline child's peak RSS, at any size."""
CHUNK = 1024 * 1024

CHILD = r"""
import hashlib, sys
from pathlib import Path
from edgefleet.protocol.bundle import verify_bundle, verify_bundle_file
from edgefleet.protocol.keys import TrustedKeys, load_public_key
mode, path, digest, fingerprint, pub, staging = sys.argv[1:]
trusted = TrustedKeys.of([load_public_key(pub)], role="release")
if mode == "sha256":
    h = hashlib.sha256()
    with open(path, "rb", buffering=0) as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    assert h.hexdigest() == digest
elif mode == "agent":
    verify_bundle_file(path, trusted=trusted, keep_files=False)
elif mode == "digest":
    verify_bundle_file(path, trusted=trusted, expected_digest=digest, out_dir=staging)
elif mode == "whole":
    verify_bundle(Path(path).read_bytes(), trusted=trusted, expected_digest=digest)
elif mode == "load":
    from edgefleet.protocol.runtimes import open_session
    bundle = verify_bundle_file(path, trusted=trusted, expected_fingerprint=fingerprint)
    session = open_session(bundle.manifest.runtime, bundle.model)
    del bundle   # what stays: the session serving the model
# peak RSS of this process since it started (exec), and RSS now
status = {l.split(":")[0]: l.split()[1] for l in open("/proc/self/status") if l.startswith(("VmHWM", "VmRSS"))}
print(status["VmHWM"], status["VmRSS"])
"""
CHILD_MODES = {"agent": "agent verifying step (streamed, check only)",
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


def timed(fn: Callable[[], object], before: Callable[[], object] = lambda: None) -> tuple[float, float]:
    """Wall-clock and CPU seconds (user + system, all threads of this process) of one call."""
    before()
    t0, c0 = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - t0, time.process_time() - c0


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb", buffering=0) as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
    return h.hexdigest()


def rss_mib(mode: str, bundle: Bundle, pub: Path, staging: Path) -> tuple[float, float]:
    """The child's own peak RSS (VmHWM, reset by exec: ``ru_maxrss`` of a child forked from this big
    process would count the parent's pages it started with) and its RSS at the end."""
    shutil.rmtree(staging, ignore_errors=True)
    done = subprocess.run([sys.executable, "-c", CHILD, mode, str(bundle.path), bundle.digest, bundle.fingerprint,
                           str(pub), str(staging)], capture_output=True, text=True, check=True)
    peak, now = done.stdout.split()[-2:]
    return int(peak) / 1024, int(now) / 1024   # kB


def peak_rss_mib(mode: str, bundle: Bundle, pub: Path, staging: Path) -> float:
    return rss_mib(mode, bundle, pub, staging)[0]


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


@dataclass(frozen=True)
class Bundle:
    path: Path
    digest: str
    fingerprint: str
    size: int


def read_into_memory(path: Path) -> None:
    with open(path, "rb", buffering=0) as f:
        f.read()


def stage_copy(path: Path, slots: Path) -> None:
    """What staging costs where the file system cannot link: a copy, fsynced."""
    with open(path, "rb") as src:
        atomic_write(slots / "copy" / "bundle", iter(lambda: src.read(CHUNK), b""))


def throughput(bundle: Bundle, runs: int, trusted: TrustedKeys, tmp: Path) -> float:
    """Print the ratios against plain sha256 for one bundle; return that of the verifying step."""
    path, staging, slots = bundle.path, tmp / "staging", Slots(tmp / "slots")

    def clear() -> None:
        shutil.rmtree(staging, ignore_errors=True)

    file_sha256(path)  # warm the page cache
    modes: dict[str, Callable[[], object]] = {
        "agent verifying step (check only)":
            lambda: verify_bundle_file(path, trusted=trusted, expected_size=bundle.size, keep_files=False),
        "slot load (fingerprint, files in memory)":
            lambda: verify_bundle_file(path, trusted=trusted, expected_size=bundle.size,
                                       expected_fingerprint=bundle.fingerprint),
        "  ref: read the file into memory": lambda: read_into_memory(path),
        "  before: slot load (whole-file digest)":
            lambda: verify_bundle_file(path, trusted=trusted, expected_digest=bundle.digest),
        "  before: verifying step (staging dir)":
            lambda: verify_bundle_file(path, trusted=trusted, expected_size=bundle.size, out_dir=staging),
        "staging into a slot (hard link)": lambda: slots.install("a", path, bundle.digest, bundle.fingerprint),
        "  where links fail: copy + fsync": lambda: stage_copy(path, tmp / "slots"),
    }
    # Interleaved: each run times plain sha256 right before every mode, so a machine whose load changes
    # between runs skews the ratio less; medians of the per-run ratios. The CPU-time ratio (the work
    # done, whatever share of the cores the process got) is the steadier one on a loaded machine.
    sha_s: list[float] = []
    ratio: dict[str, list[float]] = {what: [] for what in modes}
    cpu: dict[str, list[float]] = {what: [] for what in modes}
    for _ in range(runs):
        for what, fn in modes.items():
            sha_wall, sha_cpu = timed(lambda: file_sha256(path))
            wall, used = timed(fn, clear)
            ratio[what].append(sha_wall / wall)
            cpu[what].append(sha_cpu / max(used, 1e-6))
            sha_s.append(sha_wall)
    clear()
    size = bundle.size / 1e6
    print(f"streaming from disk: bundle {size:.1f} MB (page cache), medians of {runs} interleaved runs "
          f"(load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores)")
    print(f"  plain sha256 of the file                   {size / statistics.median(sha_s):6.0f} MB/s   "
          "wall-clock ratio, CPU-time ratio")
    ratios = {what: statistics.median(r) for what, r in ratio.items()}
    for what, r in ratios.items():
        c = statistics.median(cpu[what])
        if what.startswith(("staging", "  where")):
            print(f"  {what:<42} {1 / r:8.3f}x the time of sha256")
        else:
            print(f"  {what:<42} {r * size / statistics.median(sha_s):6.0f} MB/s   {r:.2f}x, {c:.2f}x of sha256")
    verify, load = ratios["agent verifying step (check only)"], ratios["slot load (fingerprint, files in memory)"]
    after = 1 / (1 / verify + 1 / load)
    print(f"  {'after a download: verifying + slot load':<42} {'':6}        {after:.2f}x of one sha256 pass "
          "(two reads of the file)")
    return verify


def streaming(mb: int, runs: int, key, trusted: TrustedKeys, tmp: Path) -> None:
    pub = save_public_key(key.public_key(), tmp / "release.pub")
    sizes = {}
    for label, size_mb in (("quarter", max(1, mb // 4)), ("full", mb)):
        path = tmp / f"{label}.bundle"
        data = streaming_bundle(size_mb, key)
        path.write_bytes(data)
        sizes[label] = Bundle(path, bundle_digest(data), verify_bundle(data, trusted=trusted).fingerprint or "",
                              len(data))
        del data
    verifying = {label: throughput(sizes[label], runs, trusted, tmp) for label in ("quarter", "full")}
    staging = tmp / "staging"

    print("peak RSS of a child process (VmHWM), MiB:                 "
          + "   ".join(f"{sizes[k].size / 1e6:6.1f} MB bundle" for k in ("quarter", "full")))
    base = {k: peak_rss_mib("sha256", sizes[k], pub, staging) for k in sizes}
    print(f"  {'baseline (same imports, plain sha256)':<52}" + "".join(f"{base[k]:12.1f}     " for k in
                                                                          ("quarter", "full")))
    extra: dict[str, dict[str, float]] = {}
    for mode, what in CHILD_MODES.items():
        extra[mode] = {k: peak_rss_mib(mode, sizes[k], pub, staging) - base[k] for k in sizes}
        print(f"  {what:<52}" + "".join(f"{extra[mode][k]:+12.1f}     " for k in ("quarter", "full")))
    shutil.rmtree(staging, ignore_errors=True)
    model_mib = sizes["full"].size * 0.9 / 2**20
    serving = rss_mib("load", sizes["full"], pub, staging)[1] - base["full"]
    print(f"  slot load + session: peak {extra['load']['full'] / model_mib:.1f}x the model's {model_mib:.0f} MiB, "
          f"then {serving / model_mib:.1f}x while it serves (RSS minus the baseline)")
    within = all(extra[m][k] <= BUDGET_MIB for m in ("agent", "digest") for k in sizes)
    print(f"budget: streaming verification <= baseline + {BUDGET_MIB} MiB at both sizes: "
          f"{'PASS' if within else 'FAIL'}")
    low = min(verifying.values())
    print(f"target: the agent's verifying step >= 0.5x the throughput of plain sha256 at both sizes: "
          f"{'PASS' if low >= 0.5 else 'FAIL'} ({', '.join(f'{v:.2f}x' for v in verifying.values())})")


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
