"""Drift incidents against per-window alerting: how soon an incident opens after the first alarm
window, how many false incidents long A/A runs open, and how many alerts one incident replaces.

Every window is scored by the real drift code (protocol/drift.py: a reference profile of 2000
samples, 4 features, live windows of 40 to 300 samples, the default thresholds) and judged by the
incident rule (cloud/services/incidents/rule.py) with the controller's default settings: K = 3
windows, at least 100 samples, a 600 s cooldown, tag cohorts of 10 devices needing 2 at alarm.
Per-window alerting, the baseline (Evidently, NannyML), raises one alert per window at alarm with
at least 100 samples.

* A/A, i.i.d.: live windows drawn from the reference's own distribution.
* A/A, clustered: each sample has a context offset (sd 0.2, say the light of one afternoon); the
  reference mixes over contexts, a live window has one. No drift, yet single windows alarm.
* Drift: a shift of every feature by ``--shift`` reference sds from window 20 on, for 40 windows (0.4 sd
  alarms in about 15% of the windows with enough samples, 0.5 in 57%, 0.6 in 86%, 0.75 in 99%).

Then the controller's pass (services/incidents/service.py) on SQLite: windows judged per second.

    python benchmarks/incidents.py [--devices 200] [--windows 200] [--interval 60] [--shift 0.4 0.5 0.6 0.75]
"""

from __future__ import annotations

import argparse
import logging
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgefleet.cloud.controller import Controller
from edgefleet.cloud.services.incidents.rule import CohortState, IncidentRule, Opened, Window, counts, observe
from edgefleet.cloud.settings import ControllerSettings
from edgefleet.cloud.store.tables import Device, TelemetryRecord
from edgefleet.cloud.vocabulary import CohortKind
from edgefleet.protocol import drift
from edgefleet.protocol.vocabulary import DriftLevel

FEATURES, REFERENCE = 4, 2000
TAG_SIZE = 10
ONSET, DRIFTING = 20, 40
DIGEST = "be" * 32
DEVICE_RULE = IncidentRule()
TAG_RULE = IncidentRule(min_devices=2)


@dataclass
class Source:
    """Samples of one process: ``context_sd`` > 0 gives each window one shared context offset."""

    rng: np.random.Generator
    context_sd: float = 0.0

    def draw(self, n: int, *, shift: float = 0.0, context: float | None = None) -> np.ndarray:
        offset = self.rng.normal(size=(n, 1)) * self.context_sd if context is None else context
        return (offset + shift + self.rng.normal(size=(n, FEATURES))).astype(np.float32)


def streams(source: Source, *, devices: int, windows: int, interval: float, shift: float = 0.0,
            onset: int | None = None) -> list[list[Window]]:
    """Per device, ``windows`` windows scored against a profile of the source (shifted from ``onset`` on)."""
    profile = drift.build_profile(source.draw(REFERENCE), input_name="x")
    binner = drift.FeatureBinner(profile)
    out = []
    for d in range(devices):
        stream = []
        for i in range(windows):
            n = int(source.rng.integers(40, 301))
            drifting = onset is not None and onset <= i < onset + DRIFTING
            x = source.draw(n, shift=shift if drifting else 0.0, context=source.rng.normal() * source.context_sd)
            s = drift.score(profile, binner.trim(binner.counts(x)))
            stream.append(Window(device_id=f"d{d:04d}", end=i * interval, level=s.level, samples=s.samples, psi=s.psi))
        out.append(stream)
    return out


def alerts(stream: list[Window]) -> int:
    """What per-window alerting raises: one alert per window at alarm with enough samples."""
    return sum(w.level == DriftLevel.ALARM and counts(w, DEVICE_RULE) for w in stream)


def device_incidents(stream: list[Window]) -> list[Opened]:
    state = CohortState(kind=CohortKind.DEVICE, key=stream[0].device_id, bundle_digest=DIGEST)
    opened = []
    for w in stream:
        state, events = observe(state, w, DEVICE_RULE)
        opened += [e for e in events if isinstance(e, Opened)]
    return opened


def tag_incidents(all_streams: list[list[Window]]) -> tuple[int, int]:
    """Tag cohorts of :data:`TAG_SIZE` devices, windows merged in time order: (cohorts, incidents)."""
    tags = [all_streams[i:i + TAG_SIZE] for i in range(0, len(all_streams), TAG_SIZE)]
    opened = 0
    for t, members in enumerate(tags):
        state = CohortState(kind=CohortKind.TAG, key=f"tag-{t}", bundle_digest=DIGEST)
        for w in sorted((w for s in members for w in s), key=lambda w: (w.end, w.device_id)):
            state, events = observe(state, w, TAG_RULE)
            opened += sum(isinstance(e, Opened) for e in events)
    return len(tags), opened


def aa(name: str, source: Source, args: argparse.Namespace) -> None:
    runs = streams(source, devices=args.devices, windows=args.windows, interval=args.interval)
    windows = sum(len(s) for s in runs)
    per_window = [alerts(s) for s in runs]
    incidents = [len(device_incidents(s)) for s in runs]
    cohorts, tag_opened = tag_incidents(runs)
    hours = args.windows * args.interval / 3600
    print(f"\nA/A, {name}: {args.devices} devices x {args.windows} windows ({hours:.1f} h each at {args.interval:g} s),"
          f" {windows} windows")
    print(f"  windows at alarm (per-window alerts)   {sum(per_window):6d}  ({100 * sum(per_window) / windows:.2f}% of "
          f"windows; {sum(a > 0 for a in per_window)} of {args.devices} devices alerted at least once)")
    hit = sum(i > 0 for i in incidents)
    print(f"  false incidents, device cohorts        {sum(incidents):6d}  ({100 * hit / len(runs):.2f}% of cohorts)")
    print(f"  false incidents, tag cohorts           {tag_opened:6d}  (of {cohorts} tags of {TAG_SIZE})")
    ratio = f"{sum(per_window) / sum(incidents):.0f} : 1" if sum(incidents) else \
        f"{sum(per_window)} : 0 (no incident)"
    print(f"  alerts : incidents                     {ratio}")


def drifting(source: Source, shift: float, args: argparse.Namespace) -> None:
    runs = streams(source, devices=args.devices, windows=ONSET + DRIFTING + 20, interval=args.interval,
                   shift=shift, onset=ONSET)
    from_first, from_onset, missed, per_window, opened_total = [], [], 0, 0, 0
    for s in runs:
        opened = [o for o in device_incidents(s) if o.incident.opened_at >= ONSET * args.interval]
        per_window += alerts(s[ONSET:])
        opened_total += len(opened)
        first_alarm = next((w.end for w in s[ONSET:] if w.level == DriftLevel.ALARM and counts(w, DEVICE_RULE)), None)
        if not opened or first_alarm is None:
            missed += 1
            continue
        from_first.append((opened[0].incident.opened_at - first_alarm) / args.interval)
        from_onset.append((opened[0].incident.opened_at - (ONSET - 1) * args.interval) / args.interval)
    print(f"\ndrift: every feature shifted by {shift:g} sd for {DRIFTING} windows, {args.devices} devices")
    if from_first:
        for label, values in (("the first alarm window", from_first), ("the drift onset", from_onset)):
            med, p95 = statistics.median(values), float(np.percentile(values, 95))
            print(f"  incident after {label:<22} median {med:4.1f} windows ({med * args.interval:5.0f} s), "
                  f"p95 {p95:4.1f} windows ({p95 * args.interval:5.0f} s)")
    print(f"  devices with an incident               {args.devices - missed} of {args.devices}")
    print(f"  per-window alerts : incidents          {per_window} : {opened_total}"
          + (f" = {per_window / opened_total:.1f} : 1" if opened_total else ""))


def service_pass(args: argparse.Namespace) -> None:
    """The controller's pass over stored windows on SQLite (one controller, no broker)."""
    devices, per_device = 500, 40
    with tempfile.TemporaryDirectory() as tmp:
        settings = ControllerSettings(data_dir=Path(tmp), broker_url="mqtt://127.0.0.1:1")
        controller = Controller(settings, transport_factory=lambda url, on_message: _NoTransport(),
                                reconcile_in_background=False)
        rng = np.random.default_rng(5)
        with controller.session() as session:
            session.add_all(Device(id=f"d{d:04d}", tags=[f"tag-{d // TAG_SIZE}", "fleet"], enrolled_at=0.0)
                            for d in range(devices))
            session.add_all(TelemetryRecord(
                msg_id=f"{d}-{i}", device_id=f"d{d:04d}", bundle_digest=DIGEST, window_seq=i, window_start=i * 60.0,
                window_end=i * 60.0 + 60, received_at=i * 60.0 + 60, drift_samples=200, drift_psi=0.3,
                drift_level=DriftLevel.ALARM if rng.random() < 0.3 else DriftLevel.OK)
                for i in range(per_device) for d in range(devices))
        started = time.perf_counter()
        report = controller.process_incidents(now=per_device * 60.0 + 61)
        elapsed = time.perf_counter() - started
        controller.stop()
    print(f"\ncontroller pass on SQLite: {report.windows} windows of {devices} devices (each in its device, its tag "
          f"and an all-fleet tag cohort; 30% at alarm) in {elapsed:.2f} s = {report.windows / elapsed:,.0f} windows/s;"
          f" {len(report.opened)} incidents opened")


class _NoTransport:
    connected = True

    def start(self) -> None: ...
    def stop(self) -> None: ...

    def publish(self, topic: str, payload: bytes) -> bool:
        return True


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--devices", type=int, default=200)
    parser.add_argument("--windows", type=int, default=200, help="windows per device in the A/A runs")
    parser.add_argument("--interval", type=float, default=60.0, help="telemetry window, s (the agent's default)")
    parser.add_argument("--shift", type=float, nargs="+", default=[0.4, 0.5, 0.6, 0.75], help="drift, in reference sds")
    parser.add_argument("--seed", type=int, default=2026)
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)   # the controller logs every incident it opens
    rng = np.random.default_rng(args.seed)
    print(f"rule: K = {DEVICE_RULE.windows} windows, >= {DEVICE_RULE.min_samples} samples, cooldown "
          f"{DEVICE_RULE.cooldown_s:g} s; tags of {TAG_SIZE} devices need {TAG_RULE.min_devices} at alarm")
    aa("i.i.d.", Source(rng), args)
    aa("clustered (context sd 0.2)", Source(rng, context_sd=0.2), args)
    for shift in args.shift:
        drifting(Source(rng), shift, args)
    service_pass(args)


if __name__ == "__main__":
    main()
