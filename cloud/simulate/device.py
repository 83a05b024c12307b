"""One simulated device as a pure model: its update state machine as a table, and the messages it
publishes (sealed with its own key, docs/protocol.md §3.1). No I/O: :mod:`.fleet` moves the bytes.

The update path is the agent's, shortened to what a controller can see::

    idle/installed/failed --order--> downloading --downloaded--> verifying --verified--> installed
                                      downloading/verifying --failed--> failed

``installed`` is reported as ``committed`` (the simulated model serves at once).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from enum import StrEnum

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edgefleet.cloud.simulate import telemetry
from edgefleet.protocol import topics
from edgefleet.protocol.device_signatures import seal
from edgefleet.protocol.errors import EdgeFleetError
from edgefleet.protocol.messages import (
    Hello,
    InstalledBundle,
    Message,
    State,
    StatusReport,
    TelemetryWindow,
    encode,
)
from edgefleet.protocol.vocabulary import DeviceStatus, Outcome, Runtime, UpdateState

AGENT_VERSION = "0.1.0"


class SimulationError(EdgeFleetError):
    """The simulator was asked for something its model does not allow (a bug in the caller or the run)."""


class Phase(StrEnum):
    IDLE = "idle"
    DOWNLOADING = "downloading"
    VERIFYING = "verifying"
    INSTALLED = "installed"
    FAILED = "failed"


class Step(StrEnum):
    ORDER = "order"
    DOWNLOADED = "downloaded"
    VERIFIED = "verified"
    FAILED = "failed"


TRANSITIONS: dict[tuple[Phase, Step], Phase] = {
    (Phase.IDLE, Step.ORDER): Phase.DOWNLOADING,
    (Phase.INSTALLED, Step.ORDER): Phase.DOWNLOADING,
    (Phase.FAILED, Step.ORDER): Phase.DOWNLOADING,
    (Phase.DOWNLOADING, Step.DOWNLOADED): Phase.VERIFYING,
    (Phase.DOWNLOADING, Step.FAILED): Phase.FAILED,
    (Phase.VERIFYING, Step.VERIFIED): Phase.INSTALLED,
    (Phase.VERIFYING, Step.FAILED): Phase.FAILED,
}
"""(phase, step) -> next phase; anything else is refused."""

WIRE_STATE: dict[Phase, UpdateState] = {
    Phase.IDLE: UpdateState.IDLE, Phase.DOWNLOADING: UpdateState.DOWNLOADING, Phase.VERIFYING: UpdateState.VERIFYING,
    Phase.INSTALLED: UpdateState.COMMITTED, Phase.FAILED: UpdateState.FAILED,
}
FINAL = {Phase.INSTALLED: Outcome.COMMITTED, Phase.FAILED: Outcome.FAILED}


def next_phase(phase: Phase, step: Step) -> Phase:
    try:
        return TRANSITIONS[(phase, step)]
    except KeyError:
        raise SimulationError(f"no transition from {phase} on {step}", where="simulate.device",
                              hint="a device handles one order at a time") from None


def report_id(device_id: str, deployment_id: str, sequence: int, state: str, attempt: int, final: bool) -> str:
    """The deterministic status report id of docs/protocol.md §5 (what the agent sends)."""
    key = f"{device_id}\0{deployment_id}\0{sequence}\0{state}\0{attempt}\0{final}"
    return hashlib.sha256(key.encode()).hexdigest()[:32]


@dataclass
class SimDevice:
    """What one device knows and says. ``now`` is always passed in (the fleet's clock)."""

    device_id: str
    key: Ed25519PrivateKey
    prefix: str
    profile: telemetry.Profile
    started_at: float
    tags: list[str] = field(default_factory=list)
    phase: Phase = Phase.IDLE
    deployment_id: str | None = None
    sequence: int = 0
    """The sequence of the last order accepted (orders must come with a higher one)."""
    outcome: Outcome | None = None
    installed: InstalledBundle | None = None
    window_seq: int = 0
    window_start: float | None = None
    accepted_order: bytes | None = None
    """The signed body of the last accepted order: a byte-identical copy is answered with the last report."""
    last_report: StatusReport | None = None

    def step(self, step: Step) -> Phase:
        self.phase = next_phase(self.phase, step)
        return self.phase

    def seal(self, kind: str, message: Message) -> tuple[str, bytes]:
        topic = topics.device_topic(self.device_id, kind, self.prefix)
        return topic, seal(self.key, topic, encode(message))

    def hello(self, now: float) -> Hello:
        return Hello(device_id=self.device_id, sent_at=now, agent_version=AGENT_VERSION, arch="x86_64",
                     os="Linux 6.1.0 (simulated)", runtimes=[Runtime.ONNX], installed=self.installed,
                     free_disk_bytes=8 << 30, tags=self.tags)

    def state(self, now: float, *, heartbeat_s: float, online: bool = True) -> State:
        return State(device_id=self.device_id, sent_at=now,
                     status=DeviceStatus.ONLINE if online else DeviceStatus.OFFLINE,
                     update_state=WIRE_STATE[self.phase], deployment_id=self.deployment_id,
                     sequence=self.sequence or None, outcome=self.outcome, installed=self.installed,
                     uptime_s=max(0.0, now - self.started_at), heartbeat_interval_s=heartbeat_s)

    def report(self, now: float, *, reason: str | None = None, detail: str | None = None,
               bytes_done: int | None = None, bytes_total: int | None = None,
               digest: str | None = None) -> StatusReport:
        """The status report of the current phase (final for ``installed`` and ``failed``)."""
        if self.deployment_id is None:
            raise SimulationError("a status report needs an order", where="simulate.device.report")
        state = WIRE_STATE[self.phase]
        outcome = FINAL.get(self.phase)
        final = outcome is not None
        if final:
            self.outcome = outcome
        msg = StatusReport(msg_id=report_id(self.device_id, self.deployment_id, self.sequence, state, 0, final),
                           device_id=self.device_id, sent_at=now, deployment_id=self.deployment_id,
                           sequence=self.sequence, state=state, final=final, outcome=outcome, reason=reason,
                           detail=detail, bytes_done=bytes_done, bytes_total=bytes_total, bundle_digest=digest)
        self.last_report = msg
        return msg

    def refusal(self, now: float, *, deployment_id: str, sequence: int, reason: str, detail: str) -> StatusReport:
        """The final report of an order the device refused (its state does not change)."""
        return StatusReport(msg_id=report_id(self.device_id, deployment_id, sequence, UpdateState.IDLE, 0, True),
                            device_id=self.device_id, sent_at=now, deployment_id=deployment_id, sequence=sequence,
                            state=WIRE_STATE[self.phase], final=True, outcome=Outcome.REFUSED, reason=reason,
                            detail=detail[:2000])

    def window(self, rng: np.random.Generator, now: float) -> TelemetryWindow:
        start = self.window_start if self.window_start is not None else now
        msg = telemetry.window(rng, self.profile, device_id=self.device_id, seq=self.window_seq, start=start,
                               end=now, bundle=self.installed)
        self.window_seq += 1
        self.window_start = now
        return msg
