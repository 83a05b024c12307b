"""How many simulated devices one or several controllers and one Mosquitto hold on this machine.

Starts a private Mosquitto and ``--controllers`` N ``edgefleet serve`` processes (SQLite for one, or
``--database-url``: a URL, or ``postgres`` for a database of its own on 127.0.0.1:5432, dropped after;
several controllers need PostgreSQL) sharing one data dir, each its own ``mqtt_client_id``, one
``shared_subscription_group``, behind a round-robin TCP balancer that is their ``public_url`` (every
REST request and every download of the benchmark goes through it). It ramps simulated devices
(cloud/simulate: real MQTT connections, own credentials and keys) through ``--steps`` with heartbeats
every ``--heartbeat-s`` and telemetry every ``--telemetry-s``. At each step, after ``--hold-s``: the
CPU (share of one core, from /proc over the hold) and RSS of every controller with its decode worker
children, per process and summed, per 1 000 devices; each controller's ingest queue depth; the p50/p99
latency of ``GET /api/v1/devices?limit=50`` and ``GET /api/v1/telemetry/summary`` through the balancer,
against the same requests on the idle controllers before the ramp (the baseline of this run). Then one
deployment of one bundle to every device: time to the last order received, to the last final report
stored, orders/s. With ``--kill-during-rollout`` the controller holding the ``reconciler`` lease is
killed with SIGKILL after the first final reports: the time until a survivor holds the lease (its
generation bumped) and until the rollout ends; every device must be ordered once (the simulator's
``order_copies`` and ``orders_refused`` stay 0). The load average is printed with every figure.

    .venv/bin/python benchmarks/fleet.py --steps 1000,2000 --hold-s 60
    .venv/bin/python benchmarks/fleet.py --steps 1000,2000 --controllers 2 --database-url postgres \\
        --kill-during-rollout
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from fleet_cluster import Balancer, cpu_s, holder_pid, lease, load_average, postgres_database, rss_mb
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


def tiny_model() -> bytes:
    w = numpy_helper.from_array(np.ones((4, 2), np.float32), "W")
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "W"], ["y"])], "tiny",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 2])], initializer=[w])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    return bytes(model.SerializeToString())


@dataclass
class Controller:
    name: str
    proc: subprocess.Popen[bytes]
    url: str
    log: Path
    killed: bool = False

    @property
    def pid(self) -> int:
        return self.proc.pid

    def cpu(self) -> float:
        return 0.0 if self.killed else cpu_s(self.pid, children=True)

    def rss(self) -> float:
        return 0.0 if self.killed else rss_mb(self.pid, children=True)


def start_mosquitto(work: Path) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    conf = work / "mosquitto.conf"
    conf.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\nmax_connections -1\n"
                    "max_queued_messages 100000\n" + ("user root\n" if os.geteuid() == 0 else ""))
    binary = shutil.which("mosquitto") or "mosquitto"
    proc = subprocess.Popen([binary, "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(0.5)
    return proc, port


def start_controller(work: Path, name: str, broker_port: int, args: argparse.Namespace, prefix: str,
                     public_url: str) -> Controller:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("EDGEFLEET_")} | {
        "EDGEFLEET_LISTEN_PORT": str(port), "EDGEFLEET_DATA_DIR": str(work / "controller"),
        "EDGEFLEET_ADMIN_TOKEN": ADMIN, "EDGEFLEET_BROKER_URL": f"mqtt://127.0.0.1:{broker_port}",
        "EDGEFLEET_RELEASE_KEY_PATHS": f'["{work / "release.pub"}"]', "EDGEFLEET_TOPIC_PREFIX": prefix,
        "EDGEFLEET_AUTH_FAILURE_LIMIT": "0", "EDGEFLEET_PUBLIC_URL": public_url,
        "EDGEFLEET_MQTT_CLIENT_ID": f"edgefleet-{name}-{uuid.uuid4().hex[:6]}",
        "EDGEFLEET_LEASE_TTL_S": str(args.lease_ttl_s)}
    if args.controllers > 1:
        env["EDGEFLEET_SHARED_SUBSCRIPTION_GROUP"] = "bench"
    if args.database_url:
        env["EDGEFLEET_DATABASE_URL"] = args.database_url
    log_path = work / f"{name}.log"
    with open(log_path, "wb") as log:   # the child keeps its own descriptor
        proc = subprocess.Popen([sys.executable, "-m", "edgefleet.cloud.cli", "serve"], env=env, stdout=log,
                                stderr=subprocess.STDOUT)
    ctl = Controller(name, proc, f"http://127.0.0.1:{port}", log_path)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"controller {name} exited with {proc.returncode}:\n{log_path.read_text()[-3000:]}")
        with contextlib.suppress(OSError), urllib.request.urlopen(f"{ctl.url}/healthz", timeout=2) as r:
            if r.status == 200:
                return ctl
        time.sleep(0.2)
    raise SystemExit(f"controller {name} not healthy after 120 s (log: {log_path})")


async def latencies(http: Any, path: str, n: int) -> list[float]:
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        r = await http.get(path, headers=AUTH, timeout=600)
        r.raise_for_status()
        out.append((time.perf_counter() - t0) * 1000)
        await asyncio.sleep(0.05)
    return out


def p(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100)[int(q) - 1] if len(values) > 1 else values[0]


async def queue_depth(http: Any, ctl: Controller) -> str:
    """``edgefleet_ingest_queue_depth`` of this controller (its own address, not the balancer's)."""
    try:
        text = (await http.get(f"{ctl.url}/metrics", timeout=30)).text
    except Exception as exc:  # a controller that died answers nothing
        return f"? ({type(exc).__name__})"
    return next((line.split()[-1] for line in text.splitlines() if line.startswith("edgefleet_ingest_queue_depth")),
                "?")


PATHS = ("/api/v1/devices?limit=50", "/api/v1/telemetry/summary")


async def run(args: argparse.Namespace, url: str, ctls: list[Controller]) -> None:
    steps = [int(s) for s in args.steps.split(",")]
    prefix = f"b{uuid.uuid4().hex[:6]}"
    knobs = Knobs(devices=steps[-1], device_prefix=prefix, heartbeat_s=args.heartbeat_s, telemetry_s=args.telemetry_s,
                  download_mode=DownloadMode(args.download_mode), connect_rate=args.connect_rate,
                  drift_fraction=0.1, enroll_concurrency=32, download_concurrency=128)
    label = f"{len(ctls)} controller(s) on {'PostgreSQL' if args.database_url else 'SQLite'}"

    def cpus() -> dict[str, float]:
        return {c.name: c.cpu() for c in ctls}

    async with http_client(url, connections=128) as http:
        for path in PATHS:   # warm up: the first requests of a fresh process are not the baseline
            await latencies(http, path, 5 * len(ctls))
        base = {path: await latencies(http, path, args.probes) for path in PATHS}
        c0, w0 = cpus(), time.monotonic()
        await asyncio.sleep(min(args.hold_s, 10))
        wall = time.monotonic() - w0
        idle_cpu = {c.name: (c.cpu() - c0[c.name]) / wall for c in ctls}
        idle_rss = {c.name: c.rss() for c in ctls}
        print(f"{label}, idle: CPU " + ", ".join(f"{k} {v * 100:.1f}%" for k, v in idle_cpu.items())
              + " of a core, RSS " + ", ".join(f"{k} {v:.0f} MB" for k, v in idle_rss.items())
              + "; p99 / p50 " + ", ".join(f"{p_} {p(base[p_], 99):.1f} / {p(base[p_], 50):.1f} ms" for p_ in PATHS)
              + f" [load {load_average()}]", flush=True)
        creds = FleetCredentials(controller_url=url)
        t0 = time.monotonic()
        await enroll_fleet(http, creds, device_ids(knobs), token=ADMIN, tags=[prefix],
                           concurrency=knobs.enroll_concurrency)
        print(f"enrolled {len(creds.devices)} devices in {time.monotonic() - t0:.0f} s "
              f"({len(creds.devices) / (time.monotonic() - t0):.0f}/s) [load {load_average()}]", flush=True)
        fleet = Fleet(knobs, creds, http=http)
        rows = []
        try:
            for n in steps:
                await fleet.start(n)
                while fleet.online < n:
                    await asyncio.sleep(0.5)
                await asyncio.sleep(min(args.hold_s, 10))   # the connect burst settles
                c0, s0, w0 = cpus(), cpu_s(os.getpid()), time.monotonic()
                await asyncio.sleep(args.hold_s)
                wall = time.monotonic() - w0
                cpu = {c.name: (c.cpu() - c0[c.name]) / wall for c in ctls}
                sim_cpu = (cpu_s(os.getpid()) - s0) / wall
                load = load_average()
                lat = {path: await latencies(http, path, args.probes) for path in PATHS}
                rss = {c.name: c.rss() for c in ctls}
                seen = len((await http.get("/api/v1/devices", params={"online": "true", "limit": 10_000},
                                           headers=AUTH, timeout=600)).json())
                depth = {c.name: await queue_depth(http, c) for c in ctls}
                tc, ti, tr, tir = sum(cpu.values()), sum(idle_cpu.values()), sum(rss.values()), sum(idle_rss.values())
                rows.append((n, fleet.online, seen, tc, ti, tr, tir, lat, load, cpu, rss))
                print(f"{n:>6} devices [load {load}]: online {fleet.online} (the controllers list {seen} online, "
                      f"ingest queues {depth}), controllers CPU with decode workers {tc * 100:.0f}% of a core "
                      f"({(tc - ti) * 100 * 1000 / n:.1f}%/1000 over idle; "
                      + ", ".join(f"{k} {v * 100:.0f}%" for k, v in cpu.items())
                      + f"), RSS {tr:.0f} MB ({(tr - tir) * 1000 / n:.0f} MB/1000 over idle; "
                      + ", ".join(f"{k} {v:.0f} MB" for k, v in rss.items())
                      + f"), simulator CPU {sim_cpu * 100:.0f}%, "
                      + ", ".join(f"{path} p99 {p(v, 99):.0f} ms ({p(v, 99) / p(base[path], 99):.1f}x idle), "
                                  f"p50 {p(v, 50):.0f} ms ({p(v, 50) / p(base[path], 50):.1f}x idle)"
                                  for path, v in lat.items()), flush=True)
            fleet.telemetry_paused = args.pause_telemetry
            if not args.no_rollout:
                await rollout(http, fleet, args, len(fleet.nodes), ctls)
        finally:
            await fleet.stop(clean=False)
    print(f"\n{label}; idle p99 / p50 baseline: "
          + ", ".join(f"{p_} {p(base[p_], 99):.1f} / {p(base[p_], 50):.1f} ms" for p_ in PATHS))
    print("| devices | online (simulator / controllers) | load | controllers CPU (% core) | per 1000 over idle | "
          "per process | RSS MB | per 1000 over idle | " + " | ".join(f"p99 {p_} ms (x idle)" for p_ in PATHS) + " |")
    for n, online, seen, tc, ti, tr, tir, lat, load, cpu, rss in rows:
        print(f"| {n} | {online} / {seen} | {load} | {tc * 100:.0f} | {(tc - ti) * 100 * 1000 / n:.1f} | "
              + " ".join(f"{k} {cpu[k] * 100:.0f}% {rss[k]:.0f} MB" for k in cpu)
              + f" | {tr:.0f} | {(tr - tir) * 1000 / n:.0f} | "
              + " | ".join(f"{p(lat[p_], 99):.0f} ({p(lat[p_], 99) / p(base[p_], 99):.1f}x)" for p_ in PATHS) + " |")


async def rollout(http: Any, fleet: Fleet, args: argparse.Namespace, n: int, ctls: list[Controller]) -> None:
    key = keys.load_private_key(Path(args.work) / "release.key")
    recipe = parse_recipe({"bundle": {"name": "bench", "version": "1.0.0", "build": 1, "runtime": "onnx"}})
    built = build_bundle(recipe, tiny_model(), samples=np.zeros((8, 4), np.float32), release_key=key)
    (await http.post("/api/v1/bundles", content=built.data, headers=AUTH)).raise_for_status()
    fleet.mark()
    cpu0 = {c.name: c.cpu() for c in ctls}
    t0 = time.monotonic()
    r = await http.post("/api/v1/deployments", json={"bundle": built.digest, "tag": fleet.knobs.device_prefix},
                        headers=AUTH, timeout=600)
    r.raise_for_status()
    dep = r.json()
    body = dep
    created = time.monotonic() - t0
    victim: Controller | None = None
    killed_at = took_over = None
    generation0, new_holder = 0, ""
    while time.monotonic() - t0 < args.rollout_timeout_s:
        if args.kill_during_rollout and victim is None and fleet.timeline.finals > 0:
            holder, generation0, _ = await asyncio.to_thread(lease, args.database_url, "reconciler")
            victim = next((c for c in ctls if c.pid == holder_pid(holder)), None)
            if victim is None:
                raise SystemExit(f"the reconciler lease is held by {holder!r}, none of this run's controllers")
            os.kill(victim.pid, signal.SIGKILL)
            victim.proc.wait(30)
            victim.killed = True
            killed_at = time.monotonic() - t0
            print(f"SIGKILL of {victim.name} (pid {victim.pid}, holder of the reconciler lease, generation "
                  f"{generation0}) at {killed_at:.1f} s, {fleet.timeline.finals} final reports sent "
                  f"[load {load_average()}]", flush=True)
        if victim is not None and took_over is None:
            holder, generation, _ = await asyncio.to_thread(lease, args.database_url, "reconciler")
            if generation > generation0 and holder_pid(holder) not in (None, victim.pid):
                took_over, new_holder = time.monotonic() - t0, holder
                survivor = next(c.name for c in ctls if c.pid == holder_pid(holder))
                print(f"{survivor} took the reconciler lease over (generation {generation}) "
                      f"{took_over - (killed_at or 0):.1f} s after the kill [load {load_average()}]", flush=True)
        try:
            resp = await http.get(f"/api/v1/deployments/{dep['id']}", headers=AUTH, timeout=600)
        except Exception as exc:  # a connection to the controller just killed
            print(f"GET /api/v1/deployments/{dep['id']}: {type(exc).__name__}: {exc}", flush=True)
            await asyncio.sleep(0.5)
            continue
        if resp.status_code != 200:
            print(f"GET /api/v1/deployments/{dep['id']}: {resp.status_code} {resp.text[:300]}", flush=True)
        elif (body := resp.json())["status"] != "active" and (not args.kill_during_rollout or took_over):
            break
        await asyncio.sleep(0.5)
    done = time.monotonic() - t0
    cpu = {c.name: c.cpu() - cpu0[c.name] for c in ctls if not c.killed}
    snap = fleet.snapshot()["rollout"]
    print(f"\nrollout of one bundle ({len(built.data)} bytes) to {n} devices [load {load_average()}]: deployment "
          f"created in {created:.1f} s; last order at {snap['last_order_after_s']} s ({snap['orders_per_s']} "
          f"orders/s), last final report sent at {snap['last_final_after_s']} s, deployment {body['status']} at "
          f"{done:.1f} s ({body.get('progress')}); outcomes {snap['outcomes']}; orders received {snap['orders']}, "
          f"order copies {fleet.counts['order_copies']}, orders refused {fleet.counts['orders_refused']}; "
          "controller CPU seconds during the rollout (surviving): "
          + ", ".join(f"{k} {v:.0f}" for k, v in cpu.items()), flush=True)
    if victim is not None:
        print(f"takeover: killed at {killed_at:.1f} s, lease taken by {new_holder or 'nobody'} "
              + (f"{took_over - killed_at:.1f} s later" if took_over and killed_at else "(not within the timeout)")
              + f", rollout ended {done - (killed_at or 0):.1f} s after the kill (lease_ttl_s {args.lease_ttl_s})")
    from_heartbeats = {c.name: c.log.read_text(errors="replace").count("final report missing") for c in ctls}
    print("targets ended from a heartbeat because their final report never arrived (controller logs): "
          + ", ".join(f"{k} {v}" for k, v in from_heartbeats.items()), flush=True)
    ok = snap["orders"] == n and fleet.counts["order_copies"] == 0 and fleet.counts["orders_refused"] == 0
    print("every device ordered once" if ok else "NOT every device ordered exactly once", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", default="1000,2000,5000,10000")
    parser.add_argument("--hold-s", type=float, default=60.0)
    parser.add_argument("--heartbeat-s", type=float, default=30.0)
    parser.add_argument("--telemetry-s", type=float, default=60.0)
    parser.add_argument("--connect-rate", type=float, default=300.0)
    parser.add_argument("--probes", type=int, default=40, help="requests per endpoint per step")
    parser.add_argument("--download-mode", default="hash", choices=["hash", "verify"])
    parser.add_argument("--controllers", type=int, default=1, help="edgefleet serve processes (>1: PostgreSQL)")
    parser.add_argument("--database-url", default=None,
                        help="postgresql+psycopg://... or 'postgres' for a database of its own on 127.0.0.1:5432")
    parser.add_argument("--lease-ttl-s", type=float, default=10.0)
    parser.add_argument("--kill-during-rollout", action="store_true",
                        help="SIGKILL the reconciler lease holder after the first final reports (>1 controller)")
    parser.add_argument("--rollout-timeout-s", type=float, default=900.0)
    parser.add_argument("--pause-telemetry", action="store_true", help="no telemetry during the rollout")
    parser.add_argument("--no-rollout", action="store_true", help="only the ramp")
    args = parser.parse_args()
    if args.controllers < 1:
        parser.error(f"--controllers {args.controllers}: give 1 or more")
    if args.controllers > 1 and not args.database_url:
        parser.error("--controllers > 1 needs PostgreSQL: add --database-url postgres (or a URL)")
    if args.kill_during_rollout and (args.controllers < 2 or args.no_rollout):
        parser.error("--kill-during-rollout needs --controllers 2 or more and a rollout (no --no-rollout)")
    if args.database_url and not args.database_url.startswith("postgres"):
        parser.error(f"--database-url {args.database_url!r}: give a postgresql+psycopg:// URL or 'postgres'")
    with tempfile.TemporaryDirectory(prefix="edgefleet-fleet-") as work, contextlib.ExitStack() as stack:
        args.work = work
        if args.database_url == "postgres":
            args.database_url = stack.enter_context(postgres_database())
        key = keys.generate_private_key()
        keys.save_public_key(key.public_key(), Path(work) / "release.pub")
        keys.save_private_key(key, Path(work) / "release.key")
        mosq, port = start_mosquitto(Path(work))
        balancer = Balancer()
        prefix = f"bench{uuid.uuid4().hex[:6]}/edgefleet/v1"
        ctls: list[Controller] = []
        try:
            for i in range(args.controllers):   # one at a time: the first creates the controller key
                ctls.append(start_controller(Path(work), f"c{i + 1}", port, args, prefix, balancer.url))
                balancer.upstreams = [int(c.url.rsplit(":", 1)[1]) for c in ctls]
            asyncio.run(run(args, balancer.url, ctls))
        except BaseException:
            for c in ctls:
                print(f"{c.name} log, last lines:\n" + c.log.read_text(errors="replace")[-3000:])
            raise
        finally:
            for c in ctls:
                if c.proc.poll() is None:
                    c.proc.terminate()
            mosq.terminate()
            for c in ctls:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    c.proc.wait(30)
            mosq.wait(30)
            balancer.close()


if __name__ == "__main__":
    main()
