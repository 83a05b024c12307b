"""Downloads that scale: the offloaded bundle download paths against a static file server, in one run.

* ``nginx static``: nginx serving the same file as a plain static file (the baseline);
* ``nginx X-Accel``: a device's signed URL through nginx, the controller checks the token and answers
  ``X-Accel-Redirect``, nginx sends the file (``download_offload = "nginx"``, docs/nginx-edgefleet.conf);
* ``controller built-in``: the controller sending the bytes itself (the embedded default), for reference;
* ``S3 via redirect``: the signed URL to a controller with ``bundle_store = "s3"``, its 307 followed to a
  presigned URL of moto's S3 server (the S3-compatible server that installs here), against
* ``S3 direct``: a presigned URL of the same object fetched without the controller.

Every server is its own process; one client downloads from each in turn, ``--repeats`` times, reading into
one 1 MiB buffer. Prints MB/s medians and the ratios (target: offloaded >= 0.95x its baseline).

    python benchmarks/download_offload.py [--size-mb 128] [--repeats 7]
"""

from __future__ import annotations

import argparse
import hashlib
import http.client
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np

from edgefleet.cloud.ports import free_port
from edgefleet.cloud.services.auth import download_token
from edgefleet.protocol import keys
from edgefleet.protocol.bundle import build_bundle, parse_recipe

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "integration"))
from download import tiny_model, wait_port  # noqa: E402  (benchmarks/download.py)

from offloadkit import Nginx, s3_client, s3_settings  # noqa: E402  (the test's nginx and S3 helpers)

ADMIN = "eft_benchmark-admin"
BUCKET = "edgefleet-bench"
BUFFER = bytearray(1024 * 1024)


def get(url: str, *, follow: bool = False) -> int:
    """GET ``url`` (following one redirect with ``follow``); the bytes of the body, read and dropped."""
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=120)
    try:
        conn.request("GET", f"{parts.path}?{parts.query}" if parts.query else parts.path)
        response = conn.getresponse()
        if follow and response.status in (302, 307):
            response.read()
            return get(response.headers["location"])
        if response.status != 200:
            raise RuntimeError(f"GET {url}: HTTP {response.status} {response.read()[:300]!r}")
        view, total = memoryview(BUFFER), 0
        while n := response.readinto(view):
            total += n
        return total
    finally:
        conn.close()


def head_ms(url: str, *, method: str = "HEAD", status: int = 200) -> float:
    """Milliseconds for a ``HEAD`` of ``url`` on a new connection (what a download costs before its
    first byte); with ``method="GET", status=307`` the time of a redirect's answer."""
    parts = urlsplit(url)
    started = time.perf_counter()
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=60)
    try:
        conn.request(method, f"{parts.path}?{parts.query}" if parts.query else parts.path)
        response = conn.getresponse()
        response.read()
        if response.status != status:
            raise RuntimeError(f"{method} {url}: HTTP {response.status}")
    finally:
        conn.close()
    return (time.perf_counter() - started) * 1000


def controller(workdir: Path, name: str, key_path: Path, release_pub: Path,
               **settings: str) -> tuple[str, Path, subprocess.Popen]:
    port = free_port()
    env = os.environ | {"EDGEFLEET_DATA_DIR": str(workdir / name), "EDGEFLEET_ADMIN_TOKEN": ADMIN,
                        "EDGEFLEET_RELEASE_KEY_PATHS": f'["{release_pub}"]', "EDGEFLEET_LISTEN_PORT": str(port),
                        "EDGEFLEET_CONTROLLER_KEY_PATH": str(key_path)}
    env |= {f"EDGEFLEET_{k.upper()}": v for k, v in settings.items()}
    proc = subprocess.Popen([sys.executable, "-m", "uvicorn", "--factory", "edgefleet.cloud.app:create_app",
                             "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning"],
                            env=env, stderr=subprocess.DEVNULL)
    wait_port(port, proc)
    return f"http://127.0.0.1:{port}", workdir / name / "bundles", proc


def upload(base: str, data: bytes) -> None:
    parts = urlsplit(base)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=120)
    conn.request("POST", "/api/v1/bundles", body=data, headers={"Authorization": f"Bearer {ADMIN}"})
    response = conn.getresponse()
    if response.status != 201:
        raise RuntimeError(f"upload to {base} failed: HTTP {response.status} {response.read()[:300]!r}")
    conn.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size-mb", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="edgefleet-offload-"))
    procs: list[subprocess.Popen] = []
    nginx: Nginx | None = None
    try:
        release, signer = keys.generate_private_key(), keys.generate_private_key()
        pub = keys.save_public_key(release.public_key(), workdir / "release.pub")
        key_path = keys.save_private_key(signer, workdir / "controller.key")
        recipe = parse_recipe({"bundle": {"name": "big", "version": "1.0.0", "build": 1, "runtime": "onnx"}})
        data = build_bundle(recipe, tiny_model(), samples=np.ones((4, 4), np.float32), release_key=release,
                            extra_files={"blob.bin": os.urandom(args.size_mb * 1024 * 1024)}).data
        digest = hashlib.sha256(data).hexdigest()
        token = download_token(signer, digest=digest, expires_at=int(time.time() + 3600))
        path = f"/api/v1/bundles/{digest}/download?token={token}"

        nginx_port = free_port()
        while not _free(nginx_port + 1):
            nginx_port = free_port()
        accel, bundle_dir, proc = controller(workdir, "accel", key_path, pub, download_offload="nginx",
                                             public_url=f"http://127.0.0.1:{nginx_port}")
        procs.append(proc)
        upload(accel, data)
        static_dir = workdir / "static"
        static_dir.mkdir()
        (static_dir / digest).write_bytes(data)
        nginx = Nginx(workdir / "nginx", port=nginx_port, controller=urlsplit(accel).netloc, bundle_dir=bundle_dir,
                      static_dir=static_dir).start()
        builtin, _, proc = controller(workdir, "builtin", key_path, pub)
        procs.append(proc)
        upload(builtin, data)

        moto_port = free_port()
        procs.append(subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(moto_port)],
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        wait_port(moto_port, procs[-1])
        moto = f"http://127.0.0.1:{moto_port}"
        s3 = s3_client(moto)
        s3.create_bucket(Bucket=BUCKET)
        store_settings = {k: str(v) for k, v in s3_settings(moto, BUCKET).items()}
        with_s3, _, proc = controller(workdir, "s3", key_path, pub, **store_settings)
        procs.append(proc)
        upload(with_s3, data)
        direct = s3.generate_presigned_url("get_object", Params={"Bucket": BUCKET, "Key": f"bundles/{digest}"},
                                           ExpiresIn=3600)

        targets: dict[str, Callable[[], int]] = {
            "nginx static": lambda: get(f"http://127.0.0.1:{nginx_port + 1}/{digest}"),
            "nginx X-Accel": lambda: get(f"http://127.0.0.1:{nginx_port}{path}"),
            "controller built-in": lambda: get(f"{builtin}{path}"),
            "S3 direct (moto)": lambda: get(direct),
            "S3 via redirect": lambda: get(f"{with_s3}{path}", follow=True),
        }
        rates: dict[str, list[float]] = {name: [] for name in targets}
        for run in range(args.repeats):
            order = list(targets.items())
            for name, fetch in order if run % 2 == 0 else order[::-1]:   # no path always goes first
                started = time.perf_counter()
                size = fetch()
                elapsed = time.perf_counter() - started
                if size != len(data):
                    raise RuntimeError(f"{name}: got {size} bytes, expected {len(data)}")
                rates[name].append(size / elapsed / 1e6)
                print(f"run {run + 1}: {name:20s} {rates[name][-1]:8.1f} MB/s", flush=True)
        medians = {name: statistics.median(v) for name, v in rates.items()}
        print(f"\nbundle of {len(data) / 1e6:.1f} MB, medians of {args.repeats} downloads "
              f"(load average {os.getloadavg()[0]:.1f}):")
        for name, value in medians.items():
            print(f"  {name:20s} {value:8.1f} MB/s")
        static = medians["nginx static"]

        def paired(name: str, baseline: str) -> str:
            """The median of the ratios within each run (the machine's load drifts less within a run)."""
            ratios = sorted(a / b for a, b in zip(rates[name], rates[baseline], strict=True))
            return (f"{statistics.median(ratios):.2f}x (medians {medians[name] / medians[baseline]:.2f}x; "
                    f"runs {ratios[0]:.2f}-{ratios[-1]:.2f}x)")

        print(f"ratio nginx X-Accel / nginx static:       {paired('nginx X-Accel', 'nginx static')}, target >= 0.95x")
        print(f"ratio S3 via redirect / S3 direct:        {paired('S3 via redirect', 'S3 direct (moto)')}, "
              "target >= 0.95x")
        print(f"ratio controller built-in / nginx static: {paired('controller built-in', 'nginx static')}")
        print(f"ratio S3 via redirect / nginx static:     {medians['S3 via redirect'] / static:.2f}x "
              "(moto, a Python test server, is the limit here, not the redirect)")

        # the fixed cost of the controller's check, which a larger bundle amortises
        heads: dict[str, list[float]] = {"static": [], "X-Accel": []}
        for _ in range(31):
            heads["static"].append(head_ms(f"http://127.0.0.1:{nginx_port + 1}/{digest}"))
            heads["X-Accel"].append(head_ms(f"http://127.0.0.1:{nginx_port}{path}"))
        added = statistics.median(heads["X-Accel"]) - statistics.median(heads["static"])
        seconds = len(data) / (static * 1e6)
        print(f"HEAD through nginx, medians of 31: static {statistics.median(heads['static']):.1f} ms, X-Accel "
              f"{statistics.median(heads['X-Accel']):.1f} ms: the controller's check adds {added:.1f} ms a download "
              f"(alone it would give {seconds / (seconds + added / 1000):.2f}x for this bundle at the static rate)")
        redirect = statistics.median(head_ms(f"{with_s3}{path}", method="GET", status=307) for _ in range(31))
        seconds = len(data) / (medians["S3 direct (moto)"] * 1e6)
        print(f"the controller's 307 to a presigned URL, median of 31: {redirect:.1f} ms a download (alone it "
              f"would give {seconds / (seconds + redirect / 1000):.2f}x for this bundle at the direct S3 rate; "
              "the rest of the gap is moto's, a Python test server, from one download to the next)")
    finally:
        if nginx is not None:
            nginx.stop()
        for proc in procs:
            proc.terminate()
            proc.wait(10)
        shutil.rmtree(workdir, ignore_errors=True)


def _free(port: int) -> bool:
    import socket
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
            return True
        except OSError:
            return False


if __name__ == "__main__":
    main()
