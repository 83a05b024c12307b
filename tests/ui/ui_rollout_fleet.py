"""A fleet with staged rollouts in three telling states, for the rollout pages. Stored through the
controller's own services; devices answer their orders and send telemetry at the message level
(the real ingest path), at chosen past times, and the rollouts advance at those times. The server
they run in does not reconcile in the background, so nothing moves unless a test acts.

* ``passed``: the canary passed every gate; the last stage runs (its devices have their orders).
* ``aborted``: the canary's error rate failed its gate; the rollout aborted and rolls the canary back.
* ``soaking``: the canary soaks for three hours; its gates judge it against the devices still waiting.
* spare devices (``s-01`` ..) for tests that create rollouts, and two protected ones (``p-01``, ``p-02``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from edgefleet.cloud.controller import Controller
from edgefleet.cloud.services import deployments
from edgefleet.cloud.services.rollouts import service as rollouts
from edgefleet.cloud.services.rollouts.policy import Selector, parse_policy
from edgefleet.protocol.bundle import BuiltBundle
from edgefleet.protocol.messages import DriftScores, Histogram, StatusReport, TelemetryWindow

from .ui_fleet import LABELS, LATENCY_BOUNDS, build_release, enroll, hello, ingest, installed, register_release

WINDOW_S = 60.0
WINDOWS = 12
LONG = 7 * 86400.0
"""Device timeout of the seeded rollouts: nothing times out while the tests run."""


@dataclass
class Cohort:
    tag: str
    devices: list[str]
    start: float
    """When the rollout was created (seconds before the seed's ``now``)."""
    policy: dict
    canary_errors: float = 0.005
    canary_latency: float = 2.5


GATES = {"statistics": {"min_windows": 8}}
"""Judge after eight windows per arm, whatever the default (the seed sends twelve)."""
COHORTS = {
    "passed": Cohort("line-a", [f"a-{i:02d}" for i in range(8)], 1500, {
        "stages": [{"name": "canary", "select": "count", "count": 1, "soak_s": 300},
                   {"name": "rest", "select": "rest"}],
        "device_timeout_s": LONG, "gates": GATES}),
    "aborted": Cohort("line-b", [f"b-{i:02d}" for i in range(6)], 1400, {
        "stages": [{"name": "canary", "select": "count", "count": 1, "soak_s": 300},
                   {"name": "half", "select": "percent", "percent": 50, "soak_s": 300},
                   {"name": "rest", "select": "rest"}],
        "device_timeout_s": LONG, "gates": GATES}, canary_errors=0.3),
    "soaking": Cohort("line-c", [f"c-{i:02d}" for i in range(8)], 700, {
        "stages": [{"name": "canary", "select": "count", "count": 1, "soak_s": 10800},
                   {"name": "rest", "select": "rest"}],
        "device_timeout_s": LONG, "gates": GATES}, canary_latency=3.2),
}
SPARE = [f"s-{i:02d}" for i in range(1, 7)]
PROTECTED = ["p-01", "p-02"]


@dataclass
class RolloutFleet:
    bundles: dict[str, BuiltBundle] = field(default_factory=dict)
    rollouts: dict[str, str] = field(default_factory=dict)
    """Scenario name -> rollout id."""
    canary: dict[str, str] = field(default_factory=dict)
    """Scenario name -> the device its first stage took."""


def _window(device_id: str, seq: int, end: float, bundle: BuiltBundle, *, errors: float, latency: float,
            rng: np.random.Generator) -> TelemetryWindow:
    requests = int(rng.integers(90, 130))
    values = rng.lognormal(np.log(latency), 0.25, size=requests)
    counts = np.bincount(np.searchsorted(LATENCY_BOUNDS, values), minlength=len(LATENCY_BOUNDS) + 1)
    preds = rng.multinomial(requests, [0.5, 0.3, 0.2])
    return TelemetryWindow(
        device_id=device_id, window_seq=seq, window_start=end - WINDOW_S, window_end=end, sent_at=end,
        bundle=installed(bundle), requests=requests, batches=requests, samples=requests,
        errors=int(rng.binomial(requests, errors)), latency_ms=Histogram(bounds=LATENCY_BOUNDS, counts=counts.tolist()),
        predictions={label: int(c) for label, c in zip(LABELS, preds, strict=True)},
        drift=DriftScores(psi=round(float(rng.uniform(0.01, 0.05)), 4), js=0.01, samples=requests))


def _advance(controller: Controller, rollout_id: str, now: float) -> None:
    """One reconciler pass over this rollout alone (the others keep their own clocks)."""
    with controller.session() as session:
        rollouts.advance_one(session, rollouts.get_rollout(session, rollout_id=rollout_id), now=now,
                             issuer=controller.issuer)


def _answer(controller: Controller, rollout_id: str, now: float) -> list[str]:
    """Every open install order of the rollout commits; returns the devices that answered."""
    with controller.session() as session:
        rollout = rollouts.get_rollout(session, rollout_id=rollout_id)
        open_targets = [t for t in deployments.targets_of(session, deployment_id=rollout.deployment_id) if not t.final]
        digest = rollout.bundle_digest
    for t in open_targets:
        ingest(controller, t.device_id, "status", StatusReport(
            device_id=t.device_id, deployment_id=t.deployment_id, sequence=t.sequence, bundle_digest=digest,
            state="committed", final=True, outcome="committed", sent_at=now), now)
    return [t.device_id for t in open_targets]


def _run(controller: Controller, fleet: RolloutFleet, name: str, cohort: Cohort, *, now: float,
         rng: np.random.Generator) -> None:
    old, new = fleet.bundles["1.2.0"], fleet.bundles["1.3.0"]
    t0 = now - cohort.start
    with controller.session() as session:
        rollout = rollouts.create_rollout(session, bundle_digest=new.digest, selector=Selector(tags=[cohort.tag]),
                                          policy=parse_policy(cohort.policy), protected_tags=["production"],
                                          actor="operator:seed", now=t0, note=f"seeded: {name}")
        fleet.rollouts[name] = rollout.id
    _advance(controller, fleet.rollouts[name], t0)                                   # the canary gets its order
    (canary,) = _answer(controller, fleet.rollouts[name], t0 + 20)
    fleet.canary[name] = canary
    _advance(controller, fleet.rollouts[name], t0 + 30)                              # executed: the soak begins
    for seq in range(1, WINDOWS + 1):
        end = t0 + 30 + seq * WINDOW_S
        for device_id in cohort.devices:
            on_new = device_id == canary
            ingest(controller, device_id, "telemetry", _window(
                device_id, seq, end, new if on_new else old, errors=cohort.canary_errors if on_new else 0.005,
                latency=cohort.canary_latency if on_new else 2.5, rng=rng), end)
    _advance(controller, fleet.rollouts[name], t0 + 40 + WINDOWS * WINDOW_S)         # the gates judge


def seed_rollouts(controller: Controller, *, now: float) -> RolloutFleet:
    release = build_release()
    fleet = RolloutFleet(bundles=release.bundles)
    register_release(controller, release, now=now - 7200)
    old = release.bundles["1.2.0"]
    groups = {c.tag: c.devices for c in COHORTS.values()} | {"spare": SPARE}
    for tag, ids in groups.items():
        for device_id in ids:
            enroll(controller, device_id, [tag], now=now - 7200)
            hello(controller, device_id, [tag], old, now=now - 3600)
    for device_id in PROTECTED:
        enroll(controller, device_id, ["production"], now=now - 7200)
        hello(controller, device_id, ["production", "spare-protected"], old, now=now - 3600)
    rng = np.random.default_rng(11)
    for name, cohort in COHORTS.items():
        _run(controller, fleet, name, cohort, now=now, rng=rng)
    controller.publish_pending()
    return fleet

