"""A simulated fleet run: every device's connection, schedule and orders on one asyncio loop.

Per device: connect (persistent session, its own client id and credentials, the offline state as its
last will), subscribe to its ``cmd`` topic, publish ``hello`` and its retained ``state``; then a
heartbeat every ``heartbeat_s`` and a telemetry window every ``telemetry_s`` (phases spread at random so
the load is even). An order is verified with the controller keys from enrollment
(``protocol/orders.py::verify_order``), its bundle fetched over HTTP in ``Range`` requests bounded by the
signed size, checked (sha256 and size; fully with ``protocol/bundle.py::verify_bundle`` in ``verify``
mode) and reported step by step. Churn drops single connections (without DISCONNECT, so the will fires)
and brings them back; a storm drops them all at once.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import random
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from edgefleet.cloud.simulate import telemetry
from edgefleet.cloud.simulate.credentials import FleetCredentials
from edgefleet.cloud.simulate.device import Phase, SimDevice, Step
from edgefleet.cloud.simulate.knobs import DownloadMode, Knobs
from edgefleet.cloud.simulate.mqtt import Housekeeper, LoopClient
from edgefleet.protocol import topics
from edgefleet.protocol.brokers import parse_broker_url
from edgefleet.protocol.bundle import verify_bundle
from edgefleet.protocol.errors import (
    ConfigError,
    DigestMismatchError,
    EdgeFleetError,
    MessageError,
    SizeLimitError,
    TransportError,
    VerificationError,
)
from edgefleet.protocol.messages import InstalledBundle, Message, OrderMessage, decode
from edgefleet.protocol.orders import order_bytes, verify_order
from edgefleet.protocol.vocabulary import OrderAction, Reason, Runtime

if TYPE_CHECKING:
    import httpx2 as httpx

log = logging.getLogger(__name__)


def device_ids(knobs: Knobs) -> list[str]:
    return [f"{knobs.device_prefix}-{i:05d}" for i in range(knobs.devices)]


@dataclass
class Node:
    """One device and its connection."""

    device: SimDevice
    client: LoopClient
    verifies: bool
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    wanted: bool = True
    """Whether the device should be connected (False while churned away or in a storm)."""
    connects: int = 0


@dataclass
class Timeline:
    """When the orders of the current rollout arrived and ended (``mark`` starts a new one)."""

    since: float = 0.0
    orders: int = 0
    first_order: float | None = None
    last_order: float | None = None
    finals: int = 0
    last_final: float | None = None
    outcomes: Counter[str] = field(default_factory=Counter)


class Fleet:
    def __init__(self, knobs: Knobs, creds: FleetCredentials, *, http: httpx.AsyncClient,
                 broker_url: str | None = None, clock: Callable[[], float] = time.time) -> None:
        url = broker_url or creds.broker_url
        if not url:
            raise ConfigError("no broker URL: the controller announced none", where="simulate --broker-url",
                              hint="pass --broker-url mqtt://host:port")
        self.knobs, self.creds, self.http, self.clock = knobs, creds, http, clock
        self.address = parse_broker_url(url)
        self.rng = random.Random(knobs.seed)
        self.np_rng = np.random.default_rng(knobs.seed)
        self.controller_keys = creds.controller_keys()
        self.release_keys = creds.release_keys()
        self.nodes: dict[str, Node] = {}
        self.counts: Counter[str] = Counter()
        self.errors: Counter[str] = Counter()
        self.timeline = Timeline()
        self.download_gate = asyncio.Semaphore(knobs.download_concurrency)
        self.connect_gate = asyncio.Lock()
        self._tasks: set[asyncio.Task[Any]] = set()
        self.started = clock()
        self.telemetry_paused = False
        """While set, no device sends a window (a test counts what the controller stored meanwhile)."""

    # ------------------------------------------------------------------ build and connect
    def _node(self, device_id: str) -> Node:
        loop = asyncio.get_running_loop()
        cred = self.creds.devices[device_id]
        shift = self.knobs.drift_magnitude if self.rng.random() < self.knobs.drift_fraction else 0.0
        profile = telemetry.Profile(rate_per_s=self.rng.uniform(0.5, 3.0), latency_mu=self.rng.uniform(0.3, 1.6),
                                    shift=shift)
        device = SimDevice(device_id=device_id, key=cred.private_key(), prefix=self.creds.topic_prefix,
                           profile=profile, started_at=self.clock(), tags=[self.knobs.device_prefix],
                           sequence=cred.sequence)
        will = device.seal("state", device.state(self.clock(), heartbeat_s=self.knobs.heartbeat_s, online=False))
        holder: list[Node] = []
        client = LoopClient(loop, client_id=device_id, username=cred.username, password=cred.password, will=will,
                            on_connected=lambda: self._connected(holder[0]), on_lost=lambda: self._lost(holder[0]),
                            on_message=lambda payload: self._cmd(holder[0], payload))
        verifies = self.knobs.download_mode == DownloadMode.VERIFY and self.rng.random() < self.knobs.verify_fraction
        node = Node(device=device, client=client, verifies=verifies)
        holder.append(node)
        return node

    async def start(self, count: int | None = None) -> None:
        """Connect devices until ``count`` (default: all of the knobs) run, at ``connect_rate``."""
        ids = [d for d in device_ids(self.knobs)[:count or self.knobs.devices] if d not in self.nodes]
        missing = [d for d in ids if d not in self.creds.devices]
        if missing:
            raise ConfigError(f"{len(missing)} devices are not enrolled (first: {missing[0]})", where="simulate",
                              hint="enroll them first (credentials.enroll_fleet)")
        if not self._tasks:
            self._spawn(Housekeeper(lambda: [n.client for n in self.nodes.values() if n.client.connected]).run())
        new = []
        for device_id in ids:
            node = self._node(device_id)
            self.nodes[device_id] = node
            new.append(node)
        await self._connect_all(new)
        for node in new:
            self._spawn(self._life(node))

    async def _connect_all(self, nodes: list[Node]) -> None:
        step = max(1, int(self.knobs.connect_rate / 20))
        for i in range(0, len(nodes), step):
            t0 = time.monotonic()
            for node in nodes[i:i + step]:
                self._open(node)
            await asyncio.sleep(max(0.0, step / self.knobs.connect_rate - (time.monotonic() - t0)))

    def _open(self, node: Node) -> None:
        node.wanted = True
        try:
            if node.connects == 0:
                node.client.connect(self.address.host, self.address.port, self.knobs.keepalive_s)
            else:
                node.client.reconnect()
            node.connects += 1
        except OSError as exc:
            self.errors[f"connect: {exc.strerror or exc}"] += 1
            self._spawn(self._retry(node, 1))

    async def _retry(self, node: Node, attempt: int) -> None:
        await asyncio.sleep(min(30.0, 0.5 * 2 ** attempt) * self.rng.uniform(0.5, 1.5))
        if node.wanted and not node.client.connected:
            self.counts["reconnect_attempts"] += 1
            self._open(node)

    def _connected(self, node: Node) -> None:
        self.counts["connects"] += 1
        d = node.device
        node.client.subscribe(topics.cmd(d.device_id, d.prefix))
        now = self.clock()
        self._publish(node, "hello", d.hello(now))
        self._publish(node, "state", d.state(now, heartbeat_s=self.knobs.heartbeat_s), retain=True)

    def _lost(self, node: Node) -> None:
        self.counts["disconnects"] += 1
        if node.wanted:   # not ours: the broker went away or cut us; come back with backoff
            self._spawn(self._retry(node, 1))

    def _publish(self, node: Node, kind: str, message: Message, *, retain: bool = False) -> None:
        topic, payload = node.device.seal(kind, message)
        if node.client.publish(topic, payload, retain=retain):
            self.counts[f"sent_{kind}"] += 1
        else:
            self.counts[f"unsent_{kind}"] += 1

    # ------------------------------------------------------------------ schedules
    async def _life(self, node: Node) -> None:
        k, now = self.knobs, self.clock()
        next_hb = now + self.rng.uniform(0, k.heartbeat_s)
        next_tm = now + self.rng.uniform(0, k.telemetry_s)
        node.device.window_start = now
        churn_rate = k.churn_per_min / 60.0
        next_churn = now + self.rng.expovariate(churn_rate) if churn_rate else float("inf")
        while True:
            wake = min(next_hb, next_tm, next_churn)
            await asyncio.sleep(max(0.0, wake - self.clock()))
            now = self.clock()
            if not node.client.connected:   # an agent keeps its windows in the outbox: the next one spans the gap
                next_hb, next_tm = max(next_hb, now + 1.0), max(next_tm, now + 1.0)
            if now >= next_hb and node.client.connected:
                self._publish(node, "state", node.device.state(now, heartbeat_s=k.heartbeat_s), retain=True)
                next_hb = now + k.heartbeat_s
            if now >= next_tm and node.client.connected and not self.telemetry_paused:
                self._publish(node, "telemetry", node.device.window(self.np_rng, now))
                next_tm = now + k.telemetry_s
            if now >= next_churn:
                next_churn = now + self.rng.expovariate(churn_rate)
                self.counts["churned"] += 1
                self._spawn(self._bounce(node, k.reconnect_after_s))

    async def _bounce(self, node: Node, down_s: float) -> None:
        node.wanted = False
        node.client.drop()
        await asyncio.sleep(down_s * self.rng.uniform(0.5, 1.5))
        async with self.connect_gate:
            self._open(node)

    async def storm(self, down_s: float | None = None) -> None:
        """Drop every connection at once; after ``down_s`` bring them all back at ``connect_rate``."""
        self.counts["storms"] += 1
        nodes = list(self.nodes.values())
        for node in nodes:
            node.wanted = False
            node.client.drop()
        await asyncio.sleep(self.knobs.reconnect_after_s if down_s is None else down_s)
        async with self.connect_gate:
            await self._connect_all(nodes)

    # ------------------------------------------------------------------ orders
    def _cmd(self, node: Node, payload: bytes) -> None:
        try:
            msg = decode("cmd", payload)
        except MessageError as exc:
            self.errors[f"cmd: {exc.code}"] += 1
            return
        if not isinstance(msg, OrderMessage):
            self.counts[f"cmd_{msg.type}"] += 1
            return
        self._spawn(self._order(node, msg))

    async def _order(self, node: Node, msg: OrderMessage) -> None:
        d = node.device
        async with node.lock:
            body = order_bytes(msg.order.signed)
            if body == d.accepted_order:     # a copy of the order accepted last: repeat its latest report
                self.counts["order_copies"] += 1
                if d.last_report is not None:
                    self._publish(node, "status", d.last_report)
                return
            now = self.clock()
            try:
                order = verify_order(msg.order, trusted=self.controller_keys, device_id=d.device_id,
                                     last_sequence=d.sequence, now=now)
            except VerificationError as exc:
                self.counts["orders_refused"] += 1
                signed = msg.order.signed
                self._publish(node, "status", d.refusal(now, deployment_id=signed.deployment_id,
                                                        sequence=signed.sequence, reason=exc.code, detail=str(exc)))
                return
            self._count_order(now)
            d.sequence, d.deployment_id, d.accepted_order, d.outcome = order.sequence, order.deployment_id, body, None
            self.creds.devices[d.device_id].sequence = order.sequence
            if order.action == OrderAction.CANCEL:   # nothing runs between orders here: nothing to stop
                self.counts["cancels"] += 1
                return
            await self._install(node, order)
            self._publish(node, "state", d.state(self.clock(), heartbeat_s=self.knobs.heartbeat_s), retain=True)

    def _count_order(self, now: float) -> None:
        t = self.timeline
        t.orders += 1
        t.first_order = now if t.first_order is None else t.first_order
        t.last_order = now

    async def _install(self, node: Node, order: Any) -> None:
        d, k = node.device, self.knobs
        d.step(Step.ORDER)
        self._publish(node, "status", d.report(self.clock(), bytes_done=0, bytes_total=order.bundle_size,
                                               digest=order.bundle_digest))
        reason: str | None = None
        detail = ""
        manifest = None
        try:
            await asyncio.sleep(k.latency_s)
            data = await self._download(order.bundle_url, order.bundle_size, order.bundle_digest)
            d.step(Step.DOWNLOADED)
            self._publish(node, "status", d.report(self.clock(), bytes_done=len(data), bytes_total=order.bundle_size,
                                                   digest=order.bundle_digest))
            await asyncio.sleep(k.latency_s)
            if node.verifies:
                manifest = verify_bundle(data, trusted=self.release_keys, expected_digest=order.bundle_digest,
                                         expected_size=order.bundle_size).manifest
                self.counts["verified"] += 1
            else:
                self.counts["hashed"] += 1
            if self.rng.random() < k.install_failure_rate:
                reason, detail = Reason.LOAD_FAILED, "simulated install failure"
        except EdgeFleetError as exc:
            reason, detail = exc.code, str(exc)
        if reason is None:
            d.step(Step.VERIFIED)
            d.installed = InstalledBundle(
                name=manifest.name if manifest else order.bundle_name or "unknown",
                version=manifest.version if manifest else order.bundle_version or "0.0.0",
                build=manifest.build if manifest else 0, digest=order.bundle_digest,
                runtime=manifest.runtime if manifest else Runtime.ONNX, slot="B" if d.installed else "A")
        else:
            d.step(Step.FAILED)
            self.errors[f"install: {reason}"] += 1
        final = d.report(self.clock(), reason=reason, detail=detail or None, digest=order.bundle_digest)
        self._publish(node, "status", final)
        t = self.timeline
        t.finals += 1
        t.last_final = self.clock()
        t.outcomes[str(final.outcome)] += 1

    async def _download(self, url: str, size: int, digest: str) -> bytes:
        """The bundle in ``Range`` requests of ``chunk_bytes``, never past the signed size."""
        sha, parts, done = hashlib.sha256(), [], 0
        async with self.download_gate:
            while done < size or size == 0:
                resp = await self._range(url, done, min(size, done + self.knobs.chunk_bytes) - 1)
                chunk = resp.content if resp.status_code == 206 else resp.content[done:]
                if done + len(chunk) > size:
                    raise SizeLimitError(f"the download is longer than the signed {size} bytes",
                                         where="order.bundle_size")
                sha.update(chunk)
                parts.append(chunk)
                done += len(chunk)
                self.counts["range_requests"] += 1
                if not chunk or size == 0:
                    break
        if done != size or sha.hexdigest() != digest:
            raise DigestMismatchError(f"downloaded {done} bytes with sha256 {sha.hexdigest()[:12]}, the order signed "
                                      f"{size} bytes {digest[:12]}", where="order.bundle_digest")
        self.counts["downloads"] += 1
        self.counts["download_bytes"] += done
        return b"".join(parts)

    async def _range(self, url: str, first: int, last: int) -> Any:
        """One ``Range`` request, tried again from the same byte after a lost connection or a 5xx."""
        for attempt in range(self.knobs.download_retries + 1):
            if attempt:
                self.counts["download_resumes"] += 1
                await asyncio.sleep(0.5 * attempt)
            try:
                resp = await self.http.get(url, headers={"Range": f"bytes={first}-{last}"})
            except Exception as exc:   # httpx2's transport errors, translated here (the boundary)
                problem = TransportError(f"download failed: {exc!s:.200}", where=url.split("?")[0])
                continue
            if resp.status_code in (200, 206):
                return resp
            problem = TransportError(f"download answered {resp.status_code}", where=url.split("?")[0],
                                     code=Reason.TRANSPORT_FAILED)
            if resp.status_code < 500:
                break   # refused (an expired link, a bad token): trying again changes nothing
        raise problem

    # ------------------------------------------------------------------ reporting and shutdown
    def mark(self) -> None:
        """Start a new rollout timeline (the report's ``rollout`` block counts from here)."""
        self.timeline = Timeline(since=self.clock())

    @property
    def windows_sent(self) -> int:
        return self.counts["sent_telemetry"]

    @property
    def online(self) -> int:
        return sum(1 for n in self.nodes.values() if n.client.connected)

    def snapshot(self) -> dict[str, Any]:
        phases = Counter(str(n.device.phase) for n in self.nodes.values())
        t = self.timeline
        span = (t.last_order - t.since) if t.last_order is not None else None
        return {
            "devices": len(self.nodes), "online": self.online, "uptime_s": round(self.clock() - self.started, 1),
            "phases": dict(phases), "counts": dict(self.counts), "errors": dict(self.errors.most_common(10)),
            "rollout": {"orders": t.orders, "finals": t.finals, "outcomes": dict(t.outcomes),
                        "last_order_after_s": round(span, 3) if span is not None else None,
                        "last_final_after_s": round(t.last_final - t.since, 3) if t.last_final is not None else None,
                        "orders_per_s": round(t.orders / span, 1) if span else None},
        }

    def finals(self, deployment_ids: set[str] | None = None) -> int:
        return sum(1 for n in self.nodes.values() if n.device.outcome is not None
                   and n.device.phase in (Phase.INSTALLED, Phase.FAILED)
                   and (deployment_ids is None or n.device.deployment_id in deployment_ids))

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            exc = task.exception()
            self.errors[f"task: {type(exc).__name__}: {exc!s:.80}"] += 1
            log.warning("simulator task failed: %s", exc, exc_info=exc)

    async def stop(self, *, clean: bool = True) -> None:
        """Stop every schedule; ``clean``: publish each device's offline state and DISCONNECT."""
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for node in self.nodes.values():
            node.wanted = False
            if node.client.connected and clean:
                self._publish(node, "state", node.device.state(self.clock(), heartbeat_s=self.knobs.heartbeat_s,
                                                               online=False), retain=True)
        await asyncio.sleep(0.5 if clean else 0)   # let the loop write what was queued
        for node in self.nodes.values():
            if clean:
                node.client.close()
            else:
                node.client.drop()
        await asyncio.sleep(0.2)
