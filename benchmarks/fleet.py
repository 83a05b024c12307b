"""How many simulated devices one controller and one Mosquitto hold on this machine.

Starts a private Mosquitto and one ``edgefleet serve`` process (SQLite, or ``--database-url`` for
PostgreSQL), then ramps simulated devices (cloud/simulate: real MQTT connections, own credentials and
keys) through ``--steps`` with heartbeats every ``--heartbeat-s`` and telemetry every ``--telemetry-s``.
At each step, after ``--hold-s``: the controller's CPU (share of one core, from /proc over the hold) and
RSS, per 1 000 devices, and the p50/p99 latency of ``GET /api/v1/devices?limit=50`` and
``GET /api/v1/telemetry/summary`` under that load, against the same requests on the idle controller
before the ramp (the baseline of this run). Then one deployment of one bundle to every device: time to
the last order received, to the last final report stored, orders/s.

    .venv/bin/python benchmarks/fleet.py --steps 1000,2000 --hold-s 60
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np
from onnx import TensorProto, helper, numpy_helper

from edgefleet.cloud.ports import free_port
from edgefleet.cloud.simulate.credentials import FleetCredentials, enroll_fleet
from edgefleet.cloud.simulate.fleet import Fleet, device_ids
from edgefleet.cloud.simulate.knobs import DownloadMode, Knobs
from edgefleet.cloud.simulate.run import http_client
from edgefleet.protocol import keys
from edgefleet.protocol.bundle import build_bundle, parse_recipe

ADMIN = "eft_bench-admin"
AUTH = {"Authorization": f"Bearer {ADMIN}"}
TICK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")


def tiny_model() -> bytes:
    w = numpy_helper.from_array(np.ones((4, 2), np.float32), "W")
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "W"], ["y"])], "tiny",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 2])], initializer=[w])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    return bytes(model.SerializeToString())


def family(pid: int) -> list[int]:
    """The process and its descendants (the controller's decode worker is a child process)."""
    out, todo = [], [pid]
    while todo:
        p_ = todo.pop()
        out.append(p_)
        for task in Path(f"/proc/{p_}/task").iterdir():
            todo += [int(c) for c in (task / "children").read_text().split()]
    return out


def cpu_s(pid: int, *, children: bool = False) -> float:
    """User + system CPU seconds of a process, with its descendants if asked (Linux /proc; no psutil)."""
    total = 0.0
    for p_ in family(pid) if children else [pid]:
        fields = Path(f"/proc/{p_}/stat").read_text().rsplit(")", 1)[1].split()
        total += (int(fields[11]) + int(fields[12])) / TICK
    return total


def rss_mb(pid: int) -> float:
    return int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * PAGE / 1e6


def start_mosquitto(work: Path) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    conf = work / "mosquitto.conf"
    conf.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\nmax_connections -1\n"
                    "max_queued_messages 100000\n" + ("user root\n" if os.geteuid() == 0 else ""))
    binary = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    proc = subprocess.Popen([binary, "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(0.5)
    return proc, port


def start_controller(work: Path, broker_port: int, database_url: str | None) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    key = keys.generate_private_key()
    keys.save_public_key(key.public_key(), work / "release.pub")
    keys.save_private_key(key, work / "release.key")
    env = {k: v for k, v in os.environ.items() if not k.startswith("EDGEFLEET_")} | {
        "EDGEFLEET_LISTEN_PORT": str(port), "EDGEFLEET_DATA_DIR": str(work / "controller"),
        "EDGEFLEET_ADMIN_TOKEN": ADMIN, "EDGEFLEET_BROKER_URL": f"mqtt://127.0.0.1:{broker_port}",
        "EDGEFLEET_RELEASE_KEY_PATHS": f'["{work / "release.pub"}"]',
        "EDGEFLEET_TOPIC_PREFIX": f"bench{uuid.uuid4().hex[:6]}/edgefleet/v1",
        "EDGEFLEET_AUTH_FAILURE_LIMIT": "0"}
    if database_url:
        env["EDGEFLEET_DATABASE_URL"] = database_url
    log = open(work / "controller.log", "wb")   # noqa: SIM115  (the child keeps it)
    proc = subprocess.Popen([sys.executable, "-m", "edgefleet.cloud.cli", "serve"], env=env, stdout=log,
                            stderr=subprocess.STDOUT)
    return proc, f"http://127.0.0.1:{port}"


async def latencies(http: Any, path: str, n: int) -> list[float]:
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        r = await http.get(path, headers=AUTH)
        r.raise_for_status()
        out.append((time.perf_counter() - t0) * 1000)
        await asyncio.sleep(0.05)
    return out


def p(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100)[int(q) - 1] if len(values) > 1 else values[0]


PATHS = ("/api/v1/devices?limit=50", "/api/v1/telemetry/summary")


async def run(args: argparse.Namespace, url: str, pid: int) -> None:
    steps = [int(s) for s in args.steps.split(",")]
    prefix = f"b{uuid.uuid4().hex[:6]}"
    knobs = Knobs(devices=steps[-1], device_prefix=prefix, heartbeat_s=args.heartbeat_s, telemetry_s=args.telemetry_s,
                  download_mode=DownloadMode(args.download_mode), connect_rate=args.connect_rate,
                  drift_fraction=0.1, enroll_concurrency=32, download_concurrency=128)
    async with http_client(url, connections=128) as http:
        for _ in range(600):
            try:
                if (await http.get("/healthz")).status_code == 200:
                    break
            except Exception:  # not listening yet
                pass
            await asyncio.sleep(0.1)
        for path in PATHS:   # warm up: the first requests of a fresh process are not the baseline
            await latencies(http, path, 5)
        base = {path: await latencies(http, path, args.probes) for path in PATHS}
        c0, w0 = cpu_s(pid, children=True), time.monotonic()
        await asyncio.sleep(min(args.hold_s, 10))
        idle_cpu, idle_rss = (cpu_s(pid, children=True) - c0) / (time.monotonic() - w0), rss_mb(pid)
        print(f"idle controller: CPU {idle_cpu * 100:.1f}% of a core, RSS {idle_rss:.0f} MB", flush=True)
        creds = FleetCredentials(controller_url=url)
        t0 = time.monotonic()
        await enroll_fleet(http, creds, device_ids(knobs), token=ADMIN, tags=[prefix],
                           concurrency=knobs.enroll_concurrency)
        print(f"enrolled {len(creds.devices)} devices in {time.monotonic() - t0:.0f} s "
              f"({len(creds.devices) / (time.monotonic() - t0):.0f}/s)", flush=True)
        fleet = Fleet(knobs, creds, http=http)
        rows = []
        try:
            for n in steps:
                await fleet.start(n)
                while fleet.online < n:
                    await asyncio.sleep(0.5)
                await asyncio.sleep(min(args.hold_s, 10))   # the connect burst settles
                c0, s0, w0 = cpu_s(pid, children=True), cpu_s(os.getpid()), time.monotonic()
                await asyncio.sleep(args.hold_s)
                cpu = (cpu_s(pid, children=True) - c0) / (time.monotonic() - w0)
                sim_cpu = (cpu_s(os.getpid()) - s0) / (time.monotonic() - w0)
                lat = {path: await latencies(http, path, args.probes) for path in PATHS}
                rss = rss_mb(pid)
                seen = len((await http.get("/api/v1/devices", params={"online": "true", "limit": 10_000},
                                           headers=AUTH, timeout=600)).json())
                depth = next((line.split()[-1] for line in (await http.get("/metrics")).text.splitlines()
                              if line.startswith("edgefleet_ingest_queue_depth")), "?")
                rows.append((n, fleet.online, cpu, rss, lat))
                print(f"{n:>6} devices: online {fleet.online} (the controller lists {seen} online, ingest queue "
                      f"{depth}), controller CPU (with its decode worker) {cpu * 100:.0f}% of a core "
                      f"({(cpu - idle_cpu) * 100 * 1000 / n:.1f}%/1000 over idle), RSS {rss:.0f} MB "
                      f"({(rss - idle_rss) * 1000 / n:.0f} MB/1000 over idle), simulator CPU {sim_cpu * 100:.0f}%, "
                      + ", ".join(f"{path} p99 {p(v, 99):.0f} ms ({p(v, 99) / p(base[path], 99):.1f}x idle)"
                                  for path, v in lat.items()), flush=True)
            fleet.telemetry_paused = args.pause_telemetry
            if not args.no_rollout:
                await rollout(http, fleet, args, len(fleet.nodes))
        finally:
            await fleet.stop(clean=False)
    print("\n| devices | online | controller CPU (% core) | per 1000 over idle | RSS MB | per 1000 over idle | "
          + " | ".join(f"p99 {p_} ms (x idle)" for p_ in PATHS) + " |")
    for n, online, cpu, rss, lat in rows:
        print(f"| {n} | {online} | {cpu * 100:.0f} | {(cpu - idle_cpu) * 100 * 1000 / n:.1f} | {rss:.0f} | "
              f"{(rss - idle_rss) * 1000 / n:.0f} | "
              + " | ".join(f"{p(lat[p_], 99):.0f} ({p(lat[p_], 99) / p(base[p_], 99):.1f}x)" for p_ in PATHS) + " |")
    print("idle p99 baseline: " + ", ".join(f"{p_} {p(base[p_], 99):.1f} ms" for p_ in PATHS))


async def rollout(http: Any, fleet: Fleet, args: argparse.Namespace, n: int) -> None:
    key = keys.load_private_key(Path(args.work) / "release.key")
    recipe = parse_recipe({"bundle": {"name": "bench", "version": "1.0.0", "build": 1, "runtime": "onnx"}})
    built = build_bundle(recipe, tiny_model(), samples=np.zeros((8, 4), np.float32), release_key=key)
    (await http.post("/api/v1/bundles", content=built.data, headers=AUTH)).raise_for_status()
    fleet.mark()
    t0 = time.monotonic()
    r = await http.post("/api/v1/deployments", json={"bundle": built.digest, "tag": fleet.knobs.device_prefix},
                        headers=AUTH, timeout=600)
    r.raise_for_status()
    dep = r.json()
    body = dep
    created = time.monotonic() - t0
    while time.monotonic() - t0 < args.rollout_timeout_s:
        resp = await http.get(f"/api/v1/deployments/{dep['id']}", headers=AUTH, timeout=600)
        if resp.status_code != 200:
            print(f"GET /api/v1/deployments/{dep['id']}: {resp.status_code} {resp.text[:300]}", flush=True)
        elif (body := resp.json())["status"] != "active":
            break
        await asyncio.sleep(2)
    done = time.monotonic() - t0
    snap = fleet.snapshot()["rollout"]
    print(f"\nrollout of one bundle ({len(built.data)} bytes) to {n} devices: deployment created in {created:.1f} s; "
          f"last order at {snap['last_order_after_s']} s ({snap['orders_per_s']} orders/s), last final report sent "
          f"at {snap['last_final_after_s']} s, deployment {body['status']} at {done:.1f} s "
          f"({body.get('progress')}); outcomes {snap['outcomes']}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", default="1000,2000,5000,10000")
    parser.add_argument("--hold-s", type=float, default=60.0)
    parser.add_argument("--heartbeat-s", type=float, default=30.0)
    parser.add_argument("--telemetry-s", type=float, default=60.0)
    parser.add_argument("--connect-rate", type=float, default=300.0)
    parser.add_argument("--probes", type=int, default=40, help="requests per endpoint per step")
    parser.add_argument("--download-mode", default="hash", choices=["hash", "verify"])
    parser.add_argument("--database-url", default=None, help="e.g. postgresql+psycopg://127.0.0.1:5432/test")
    parser.add_argument("--rollout-timeout-s", type=float, default=900.0)
    parser.add_argument("--pause-telemetry", action="store_true", help="no telemetry during the rollout")
    parser.add_argument("--no-rollout", action="store_true", help="only the ramp")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="edgefleet-fleet-") as work:
        args.work = work
        mosq, port = start_mosquitto(Path(work))
        ctl, url = start_controller(Path(work), port, args.database_url)
        try:
            asyncio.run(run(args, url, ctl.pid))
        except BaseException:
            print("controller log, last lines:\n" + (Path(work) / "controller.log").read_text(errors="replace")[-3000:])
            raise
        finally:
            ctl.terminate()
            mosq.terminate()
            ctl.wait(30)
            mosq.wait(30)


if __name__ == "__main__":
    main()
