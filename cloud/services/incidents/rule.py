"""The drift-incident rule, pure: one cohort's state and one telemetry window in, the new state and
what happened (an incident opened or closed) out. No database, no clock: times are the windows' own
(``window_end``, Unix seconds), or the ``now`` a caller passes to :func:`tick`. docs/incidents.md.

A cohort is one bundle on one device, or on the devices with one tag. For each of its devices the
state keeps the device's *run*: its consecutive alarm windows. Per window:

* a window *counts* when its level is a verdict (ok, warn or alarm) with at least ``min_samples``
  samples behind it; any other window is skipped: it neither counts nor breaks a run;
* a counting alarm window extends its device's run; a counting ok or warn window ends it;
* a window no newer than the latest of its device's run (a duplicate, or one that arrives out of
  order) changes nothing;
* a device whose run saw no window for ``cooldown_s`` leaves it (a silence that long breaks "consecutive").

The cohort opens an incident when at least ``min_devices`` devices are in runs of at least ``windows``
(K) alarm windows -- for a device cohort, ``min_devices`` is 1: K consecutive alarm windows. While it is
open, every alarm window extends it as long as ``min_devices`` devices are at alarm in their latest
window. Devices count together only when their runs' latest windows are less than ``cooldown_s`` apart
from the window at hand (a device replaying an old outbox does not join the live ones). It closes when
none has extended it for ``cooldown_s``: then ``closed_at`` is the last alarm window's end +
``cooldown_s``, whether a later window or the periodic :func:`tick` noticed. A person may close it
earlier (:func:`close`): the runs start over, so only K new alarm windows open a new one.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from pydantic import BaseModel, ConfigDict, Field

from edgefleet.cloud.services.transitions import advance
from edgefleet.cloud.vocabulary import INCIDENT_TRANSITIONS, CohortKind, IncidentEvent, IncidentState
from edgefleet.protocol.vocabulary import JUDGED_DRIFT_LEVELS, DriftLevel


class IncidentRule(BaseModel):
    """The rule's settings for one kind of cohort (ControllerSettings ``incident_*``)."""

    model_config = ConfigDict(frozen=True)

    windows: int = Field(default=3, ge=1)
    """K: consecutive alarm windows that open an incident."""
    min_samples: int = Field(default=100, ge=0)
    cooldown_s: float = Field(default=600.0, gt=0)
    min_devices: int = Field(default=1, ge=1)
    """Devices that must be at alarm together (1 for a device cohort)."""


@dataclass(frozen=True)
class Window:
    """What the rule reads of one telemetry window."""

    device_id: str
    end: float
    level: str | None
    samples: int
    psi: float | None = None


def counts(window: Window, rule: IncidentRule) -> bool:
    """Whether the window is a drift verdict with enough samples behind it (else it is skipped)."""
    return window.level in JUDGED_DRIFT_LEVELS and window.samples >= rule.min_samples


class Run(BaseModel):
    """A device's consecutive alarm windows."""

    length: int
    first_end: float
    last_end: float
    peak_psi: float | None = None


class OpenIncident(BaseModel):
    id: str
    opened_at: float
    first_alarm_at: float
    last_alarm_at: float
    last_window_end: float
    windows: int
    peak_psi: float | None = None
    devices: list[str]


class CohortState(BaseModel):
    kind: CohortKind
    key: str
    """The device id or the tag."""
    bundle_digest: str
    runs: dict[str, Run] = {}
    """The devices in a run (at alarm in their latest counting window)."""
    incident: OpenIncident | None = None

    @property
    def cohort_id(self) -> str:
        return cohort_id(self.kind, self.bundle_digest, self.key)

    @property
    def empty(self) -> bool:
        """Nothing to remember: no device in a run, no open incident."""
        return not self.runs and self.incident is None


def cohort_id(kind: CohortKind, bundle_digest: str, key: str) -> str:
    return f"{kind}:{bundle_digest}:{key}"


def incident_id(state: CohortState, opened_at: float) -> str:
    """Derived from the cohort and the opening window, so every controller names it the same."""
    return "inc-" + hashlib.sha256(f"{state.cohort_id}|{opened_at!r}".encode()).hexdigest()[:12]


@dataclass(frozen=True)
class Opened:
    incident: OpenIncident


@dataclass(frozen=True)
class Closed:
    incident: OpenIncident
    closed_at: float
    reason: str


Event = Opened | Closed


def observe(state: CohortState, window: Window, rule: IncidentRule) -> tuple[CohortState, list[Event]]:
    """The cohort after ``window`` (one of its devices' windows), and the incidents it opened or closed."""
    run = state.runs.get(window.device_id)
    if not counts(window, rule) or (run is not None and window.end <= run.last_end):
        return state, []
    state = _copy(state)
    events = _cool_down(state, window.end, rule)
    alarm = window.level == DriftLevel.ALARM
    run = state.runs.pop(window.device_id, None)
    if alarm:
        state.runs[window.device_id] = Run(length=1, first_end=window.end, last_end=window.end,
                                           peak_psi=window.psi) if run is None else \
            Run(length=run.length + 1, first_end=run.first_end, last_end=window.end,
                peak_psi=_max(run.peak_psi, window.psi))
    incident = state.incident
    together = {d: r for d, r in state.runs.items() if abs(window.end - r.last_end) < rule.cooldown_s}
    if incident is not None:
        incident.last_window_end = max(incident.last_window_end, window.end)
        if alarm and len(together) >= rule.min_devices:
            advance(INCIDENT_TRANSITIONS, IncidentState.OPEN, IncidentEvent.EXTEND, what=f"incident {incident.id}")
            incident.windows += 1
            incident.last_alarm_at = max(incident.last_alarm_at, window.end)
            incident.peak_psi = _max(incident.peak_psi, window.psi)
            incident.devices = sorted({*incident.devices, window.device_id})
    elif sum(r.length >= rule.windows for r in together.values()) >= rule.min_devices:
        ripe = [r for r in together.values() if r.length >= rule.windows]
        state.incident = OpenIncident(
            id=incident_id(state, window.end), opened_at=window.end, first_alarm_at=min(r.first_end for r in ripe),
            last_alarm_at=window.end, last_window_end=window.end, windows=sum(r.length for r in together.values()),
            peak_psi=max((r.peak_psi for r in together.values() if r.peak_psi is not None), default=None),
            devices=sorted(together))
        events.append(Opened(state.incident.model_copy()))
    return state, events


def tick(state: CohortState, now: float, rule: IncidentRule) -> tuple[CohortState, list[Event]]:
    """The cohort at ``now`` with no new window: runs gone silent lapse, an incident that cooled down closes."""
    state = _copy(state)
    return state, _cool_down(state, now, rule)


def close(state: CohortState, *, at: float, reason: str) -> tuple[CohortState, list[Event]]:
    """A person closes the open incident at ``at``; the runs start over."""
    incident = state.incident
    if incident is None:
        return state, []
    advance(INCIDENT_TRANSITIONS, IncidentState.OPEN, IncidentEvent.CLOSE, what=f"incident {incident.id}")
    return state.model_copy(update={"incident": None, "runs": {}}), [Closed(incident, closed_at=at, reason=reason)]


def _cool_down(state: CohortState, t: float, rule: IncidentRule) -> list[Event]:
    """In place: drop the runs silent since ``t - cooldown_s``; close the incident if it cooled down by ``t``."""
    for device_id in [d for d, r in state.runs.items() if t - r.last_end >= rule.cooldown_s]:
        del state.runs[device_id]
    incident = state.incident
    if incident is None or t - incident.last_alarm_at < rule.cooldown_s:
        return []
    advance(INCIDENT_TRANSITIONS, IncidentState.OPEN, IncidentEvent.COOL_DOWN, what=f"incident {incident.id}")
    state.incident = None
    return [Closed(incident, closed_at=incident.last_alarm_at + rule.cooldown_s,
                   reason=f"no alarm window for {rule.cooldown_s:g} s")]


def _copy(state: CohortState) -> CohortState:
    """A copy to change: runs are replaced, never changed, so a new dict of them does; the incident is changed."""
    return state.model_copy(update={"runs": dict(state.runs),
                                    "incident": state.incident.model_copy() if state.incident else None})


def _max(a: float | None, b: float | None) -> float | None:
    return b if a is None else a if b is None else max(a, b)
