"""Bundle download: the controller's endpoint (uvicorn, token check, Range-capable FileResponse)
against a plain static file server (Python's ``http.server``) serving the same file.

Both servers run as separate processes; one client downloads the file repeatedly from each,
alternating, reading 1 MiB at a time. Prints MB/s medians and the ratio (target >= 0.7x).

    python benchmarks/download.py [--size-mb 64] [--repeats 5]
"""

from __future__ import annotations

import argparse
import http.client
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from onnx import TensorProto, helper, numpy_helper

from edgefleet.cloud.ports import free_port
from edgefleet.protocol import keys
from edgefleet.protocol.bundle import build_bundle, parse_recipe

ADMIN = "eft_benchmark-admin"


def wait_port(port: int, proc: subprocess.Popen, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError("server exited during startup")
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError("server did not start")


def tiny_model() -> bytes:
    w = numpy_helper.from_array(np.ones((4, 2), np.float32), "W")
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "W"], ["y"])], "tiny",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 2])], initializer=[w])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    return model.SerializeToString()


def download(port: int, path: str, headers: dict[str, str]) -> tuple[int, float]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    started = time.perf_counter()
    conn.request("GET", path, headers=headers)
    response = conn.getresponse()
    if response.status != 200:
        raise RuntimeError(f"GET {path}: HTTP {response.status}")
    total = 0
    while chunk := response.read(1024 * 1024):
        total += len(chunk)
    elapsed = time.perf_counter() - started
    conn.close()
    return total, elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size-mb", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="edgefleet-download-"))
    procs: list[subprocess.Popen] = []
    try:
        release = keys.generate_private_key()
        pub = keys.save_public_key(release.public_key(), workdir / "release.pub")
        recipe = parse_recipe({"bundle": {"name": "big", "version": "1.0.0", "build": 1, "runtime": "onnx"}})
        built = build_bundle(recipe, tiny_model(), samples=np.ones((4, 4), np.float32), release_key=release,
                             extra_files={"blob.bin": os.urandom(args.size_mb * 1024 * 1024)})
        ctl_port, static_port = free_port(), free_port()
        env = os.environ | {"EDGEFLEET_DATA_DIR": str(workdir / "controller"), "EDGEFLEET_ADMIN_TOKEN": ADMIN,
                            "EDGEFLEET_RELEASE_KEY_PATHS": f'["{pub}"]', "EDGEFLEET_LISTEN_PORT": str(ctl_port)}
        procs.append(subprocess.Popen(
            [sys.executable, "-m", "uvicorn", "--factory", "edgefleet.cloud.app:create_app", "--host", "127.0.0.1",
             "--port", str(ctl_port), "--log-level", "warning"], env=env, stderr=subprocess.DEVNULL))
        wait_port(ctl_port, procs[-1])
        conn = http.client.HTTPConnection("127.0.0.1", ctl_port, timeout=120)
        conn.request("POST", "/api/v1/bundles", body=built.data, headers={"Authorization": f"Bearer {ADMIN}"})
        response = conn.getresponse()
        if response.status != 201:
            raise RuntimeError(f"upload failed: HTTP {response.status} {response.read()[:300]!r}")
        static_dir = workdir / "static"
        static_dir.mkdir()
        (static_dir / built.digest).write_bytes(built.data)
        procs.append(subprocess.Popen([sys.executable, "-m", "http.server", str(static_port), "--bind", "127.0.0.1",
                                       "--directory", str(static_dir)],
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        wait_port(static_port, procs[-1])
        targets = {
            "controller /download": (ctl_port, f"/api/v1/bundles/{built.digest}/download",
                                     {"Authorization": f"Bearer {ADMIN}"}),
            "static http.server": (static_port, f"/{built.digest}", {}),
        }
        rates: dict[str, list[float]] = {name: [] for name in targets}
        for run in range(args.repeats):
            for name, (port, path, headers) in targets.items():
                size, elapsed = download(port, path, headers)
                if size != len(built.data):
                    raise RuntimeError(f"{name}: got {size} bytes, expected {len(built.data)}")
                rates[name].append(size / elapsed / 1e6)
                print(f"run {run + 1}: {name:22s} {rates[name][-1]:8.1f} MB/s", flush=True)
        medians = {name: statistics.median(v) for name, v in rates.items()}
        print(f"\nbundle of {len(built.data) / 1e6:.1f} MB, medians of {args.repeats} downloads:")
        for name, value in medians.items():
            print(f"  {name:22s} {value:8.1f} MB/s")
        ratio = medians["controller /download"] / medians["static http.server"]
        print(f"ratio controller / static server: {ratio:.2f}x (target >= 0.7x)")
    finally:
        for proc in procs:
            proc.terminate()
            proc.wait(10)
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
