"""Simulated devices for the controller tests (rollouts, experiments): they obey their orders and send
telemetry windows at the message level, into the real ingest path, on whatever bundle they run."""

from __future__ import annotations

import numpy as np

from edgefleet.protocol.messages import (
    DriftScores,
    Hello,
    Histogram,
    InstalledBundle,
    StatusReport,
    TelemetryWindow,
    decode,
)

from cloudkit import Fleet

LATENCY_BOUNDS = [0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 50.0]


class Sim:
    """A fleet of simulated devices that obey their orders: each new install order commits (or
    fails as told) and every device sends a telemetry window per tick, on whatever it runs."""

    def __init__(self, fleet: Fleet, transport, clock, old, new, n: int = 10, tags=("site",)) -> None:
        self.fleet, self.transport, self.clock, self.old, self.new = fleet, transport, clock, old, new
        self.ids = [f"d{i:02d}" for i in range(n)]
        self.running = {d: old for d in self.ids}
        self.seen = 0
        self.seq = {d: 0 for d in self.ids}
        self.rng = np.random.default_rng(7)
        self.behaviour = {"errors": 0.0, "latency": 2.0, "fail_install": False, "heals": True}
        self.drifted: set[str] = set()
        """Devices whose inputs drifted: at alarm on the old bundle, and on the new one unless it heals."""
        for d in self.ids:
            fleet.enroll(d, tags=list(tags))
            self.hello(d)

    def installed(self, built) -> InstalledBundle:
        m = built.manifest
        return InstalledBundle(name=m.name, version=m.version, build=m.build, digest=built.digest, runtime="onnx")

    def hello(self, device_id: str) -> None:
        self.fleet.send(Hello(device_id=device_id, agent_version="0.1.0", arch="x86_64", os="linux",
                              runtimes=["onnx"], installed=self.installed(self.running[device_id]),
                              sent_at=self.clock()), "hello")

    def obey(self) -> list[str]:
        """Answer every order published since the last call; returns the devices that got one."""
        answered = []
        for _topic, payload in self.transport.published[self.seen:]:
            message = decode("cmd", payload)
            order, device = message.order.signed, message.device_id
            if order.action != "install":
                continue
            built = self.new if order.bundle_digest == self.new.digest else self.old
            fail = built is self.new and self.behaviour["fail_install"]
            report = StatusReport(device_id=device, deployment_id=order.deployment_id, sequence=order.sequence,
                                  state="failed" if fail else "committed", final=True,
                                  outcome="failed" if fail else "committed", sent_at=self.clock())
            if not fail:
                self.running[device] = built
            self.fleet.send(report, "status")
            answered.append(device)
        self.seen = len(self.transport.published)
        return answered

    def windows(self) -> None:
        for d in self.ids:
            on_new = self.running[d] is self.new
            errors_share = self.behaviour["errors"] if on_new else 0.0
            latency = self.behaviour["latency"] if on_new else 2.0
            requests = 50
            values = self.rng.lognormal(np.log(latency), 0.2, size=requests)
            counts = np.histogram(values, bins=[0.0, *LATENCY_BOUNDS, np.inf])[0].tolist()
            self.seq[d] += 1
            self.fleet.send(TelemetryWindow(
                device_id=d, window_seq=self.seq[d], window_start=self.clock() - 10, window_end=self.clock(),
                bundle=self.installed(self.running[d]), requests=requests, batches=requests, samples=requests,
                errors=int(self.rng.binomial(requests, errors_share)),
                latency_ms=Histogram(bounds=LATENCY_BOUNDS, counts=counts),
                predictions={str(k): int(v) for k, v in enumerate(self.rng.multinomial(requests, [0.5, 0.3, 0.2]))},
                drift=self.drift(d, on_new, requests),
                sent_at=self.clock()), "telemetry")

    def drift(self, device_id: str, on_new: bool, samples: int) -> DriftScores:
        if device_id in self.drifted and not (on_new and self.behaviour["heals"]):
            return DriftScores(psi=float(self.rng.uniform(0.3, 0.5)), js=0.2, samples=samples, level="alarm")
        return DriftScores(psi=float(self.rng.uniform(0.01, 0.05)), js=0.01, samples=samples, level="ok")

    def states(self) -> None:
        """Every device reports its state: online, and the bundle it runs."""
        for d in self.ids:
            self.fleet.state(d, installed=self.installed(self.running[d]))

    def tick(self, controller, *, step_s: float = 10.0) -> None:
        """One round: the reconciler runs, devices obey their orders, report their state and send a
        window, time passes."""
        controller.reconcile(self.clock())
        self.obey()
        self.states()
        self.windows()
        self.clock.advance(step_s)

    def run(self, controller, client, rollout_id: str, *, ticks: int, step_s: float = 10.0) -> dict:
        for _ in range(ticks):
            controller.reconcile(self.clock())
            self.obey()
            self.windows()
            self.clock.advance(step_s)
            state = client.get(f"/api/v1/rollouts/{rollout_id}").json()
            if state["state"] not in ("running",):
                break
        controller.reconcile(self.clock())
        self.obey()
        return client.get(f"/api/v1/rollouts/{rollout_id}").json()
