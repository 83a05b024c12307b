"""Real parts for the download-offload tests and benchmark: a private nginx running the documented site
config (docs/nginx-edgefleet.conf), moto's S3 server, and a controller in front of either."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

from edgefleet.cloud.ports import free_port

from testkit import port_open

DOCS = Path(__file__).resolve().parents[2] / "docs"
SITE_TEMPLATE = DOCS / "nginx-edgefleet.conf"
NGINX_BIN = shutil.which("nginx") or "/usr/sbin/nginx"
S3_ACCESS = {"s3_access_key_id": "edgefleet-test", "s3_secret_access_key": "edgefleet-test-secret"}



def site_config(*, listen: str, controller: str, bundle_dir: Path, static_dir: Path | None = None) -> str:
    """The documented site config with its placeholders filled in; with ``static_dir``, a second server on
    ``listen``'s port + 1 that serves that directory as plain static files (the benchmark's baseline)."""
    text = (SITE_TEMPLATE.read_text().replace("__LISTEN__", listen).replace("__CONTROLLER__", controller)
            .replace("__BUNDLE_DIR__", str(bundle_dir)))
    assert "__" not in "".join(line for line in text.splitlines() if not line.lstrip().startswith("#"))
    if static_dir is not None:
        host, port = listen.rsplit(":", 1)
        text += (f"\nserver {{\n    listen {host}:{int(port) + 1};\n    location / {{\n        root {static_dir};\n"
                 "        sendfile on;\n        tcp_nopush on;\n    }\n}\n")
    return text


class Nginx:
    """nginx started by the test: its whole prefix (config, pid, logs, temp files) in ``workdir``, in the
    foreground (``daemon off``), stopped by :meth:`stop`."""

    def __init__(self, workdir: Path, *, controller: str, bundle_dir: Path, static_dir: Path | None = None,
                 port: int | None = None) -> None:
        self.workdir = workdir
        self.port = port or free_port()
        workdir.mkdir(parents=True, exist_ok=True)
        (workdir / "logs").mkdir(exist_ok=True)
        site = site_config(listen=f"127.0.0.1:{self.port}", controller=controller, bundle_dir=bundle_dir,
                           static_dir=static_dir)
        temp = "".join(f"    {kind}_temp_path {workdir}/{kind}_temp;\n"
                       for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
        # as root, nginx's workers would drop to nobody, who cannot read a test's private directories
        user = "user root;\n" if os.geteuid() == 0 else ""
        self.conf = workdir / "nginx.conf"
        self.conf.write_text(f"{user}daemon off;\nworker_processes 1;\npid {workdir}/nginx.pid;\n"
                             f"error_log {workdir}/logs/error.log warn;\nevents {{ worker_connections 256; }}\n"
                             f"http {{\n    access_log {workdir}/logs/access.log;\n{temp}{site}\n}}\n")
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> Nginx:
        args = [NGINX_BIN, "-p", f"{self.workdir}/", "-c", str(self.conf)]
        check = subprocess.run([*args, "-t"], capture_output=True, text=True)
        if check.returncode != 0:
            raise AssertionError(f"nginx refuses the config:\n{check.stderr}")
        with open(self.workdir / "logs" / "stderr.log", "ab") as log:
            self.proc = subprocess.Popen(args, stdout=log, stderr=log)
        end = time.monotonic() + 10
        while not port_open("127.0.0.1", self.port, 0.2):
            if self.proc.poll() is not None or time.monotonic() > end:
                raise AssertionError(f"nginx did not start:\n{self.log()}")
            time.sleep(0.05)
        return self

    def log(self) -> str:
        return "".join(p.read_text(errors="replace") for p in sorted((self.workdir / "logs").glob("*.log")))

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)
        self.proc = None


def s3_settings(endpoint: str, bucket: str) -> dict[str, object]:
    """The controller settings of an S3 bundle store on moto's server at ``endpoint``."""
    return {"bundle_store": "s3", "s3_bucket": bucket, "s3_endpoint_url": endpoint, "s3_addressing_style": "path",
            **S3_ACCESS}


def s3_client(endpoint: str):
    import boto3
    from botocore.config import Config
    return boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                        aws_access_key_id=S3_ACCESS["s3_access_key_id"],
                        aws_secret_access_key=S3_ACCESS["s3_secret_access_key"],
                        config=Config(signature_version="s3v4", s3={"addressing_style": "path"}))
