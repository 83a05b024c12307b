"""The rollout policy: how a bundle reaches a fleet, as one typed model (docs/rollouts.md).

A policy names the devices (:class:`Selector`), the stages they go through in order (a canary by
tag, count or percent of the remaining devices; the last stage takes the rest), how fast orders go
out (:class:`Pace`), when (maintenance :class:`Window`), when to stop (:class:`AbortCriteria`,
judged on the devices executed so far), per-failure retries, what to do on abort, and the gates each
stage must pass before the next begins. It comes as TOML for the CLI and JSON for the API; both
are validated here, strictly: an unknown key or a wrong value is refused with its location.
"""

from __future__ import annotations

import tomllib
from collections.abc import Sequence
from datetime import datetime
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import croniter
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from edgefleet.protocol.errors import ConfigError, first_problem
from edgefleet.protocol.messages import DeviceId, HealthCheck

Tag = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.:=-]+$")]
DeviceName = Annotated[str, Field(pattern=r"^[A-Za-z0-9_.-]{1,64}$")]
DAY_S = 86_400.0


class StageKind(StrEnum):
    TAG = "tag"
    """The remaining devices that carry ``tag``."""
    COUNT = "count"
    """``count`` of the remaining devices."""
    PERCENT = "percent"
    """``percent`` of the remaining devices (rounded up, at least one)."""
    DEVICES = "devices"
    """The remaining devices among ``devices`` (e.g. the cohort of a drift incident). Left out: the
    drifted devices of the rollout's incidents, filled in when it is created (:func:`fill_devices`)."""
    REST = "rest"
    """Every remaining device: the last stage."""


class OnSuccess(StrEnum):
    CONTINUE = "continue"
    PAUSE = "pause"
    """Wait for a person to promote the rollout to the next stage."""


class FailureKind(StrEnum):
    FAILED = "failed"
    TIMED_OUT = "timed_out"
    ROLLED_BACK = "rolled_back"
    REJECTED = "rejected"
    """The device refused the order or the bundle (verification, target)."""


class AbortAction(StrEnum):
    PAUSE = "pause"
    ABORT = "abort"


class OnAbort(StrEnum):
    ROLLBACK = "rollback"
    """Every device that took the new bundle gets a signed order for the bundle it ran before."""
    LEAVE = "leave"


class Baseline(StrEnum):
    """What the canary is compared with."""

    CONTROL = "control"
    """Devices of the selector still on their old bundle, in the same time window. The last stage
    leaves none: there only the install gate judges."""
    BEFORE = "before"
    """The stage's own devices on their old bundle, in the ``before_s`` before their order."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Selector(_Strict):
    """Which devices a rollout is for. A device matches when it has every tag in ``tags`` (no tags:
    any device), is one of ``device_ids`` when those are given, and is not excluded."""

    tags: list[Tag] = Field(default=[], max_length=16)
    device_ids: list[DeviceName] = Field(default=[], max_length=10_000)
    exclude_tags: list[Tag] = Field(default=[], max_length=16)
    exclude_device_ids: list[DeviceName] = Field(default=[], max_length=10_000)
    dynamic: bool = False
    """Devices that come to match while the rollout runs join it (in its current stage)."""

    def matches(self, device_id: str, tags: list[str]) -> bool:
        if self.device_ids and device_id not in self.device_ids:
            return False
        if device_id in self.exclude_device_ids or set(tags) & set(self.exclude_tags):
            return False
        return set(self.tags) <= set(tags)

    def describe(self) -> str:
        parts = [f"tags {' + '.join(self.tags)}" if self.tags else "",
                 f"devices {', '.join(self.device_ids[:3])}{' ...' if len(self.device_ids) > 3 else ''}"
                 if self.device_ids else "",
                 f"not {', '.join(self.exclude_tags + self.exclude_device_ids)}"
                 if self.exclude_tags or self.exclude_device_ids else "",
                 "dynamic" if self.dynamic else ""]
        return "; ".join(p for p in parts if p) or "all devices"


class Stage(_Strict):
    name: str = Field(min_length=1, max_length=64)
    select: StageKind
    tag: Tag | None = None
    count: int | None = Field(default=None, ge=1, le=1_000_000)
    percent: float | None = Field(default=None, gt=0, le=100)
    devices: list[DeviceId] | None = Field(default=None, min_length=1, max_length=10_000)
    """For ``select = "devices"``; left out: the devices of the rollout's drift incidents."""
    soak_s: float = Field(default=0.0, ge=0, le=30 * DAY_S)
    """After every device of the stage is final, wait this long (telemetry arrives) before judging."""
    max_soak_s: float | None = Field(default=None, ge=0, le=30 * DAY_S)
    """While the gates are still inconclusive when the soak ends, go on collecting telemetry until this
    long after the stage executed (a decision ends it early); left out: pause for a person at once."""
    not_before: datetime | None = None
    """The stage starts no earlier than this (an aware time: give its offset or Z)."""
    on_success: OnSuccess = OnSuccess.CONTINUE
    gates: Gates | None = None
    """This stage's gates instead of the policy's (e.g. a canary judged on recovery, the rest on installs)."""

    @model_validator(mode="after")
    def _parameter_of_its_kind(self) -> Stage:
        wanted = {StageKind.TAG: "tag", StageKind.COUNT: "count", StageKind.PERCENT: "percent",
                  StageKind.DEVICES: "devices"}.get(self.select)
        given = [k for k in ("tag", "count", "percent", "devices") if getattr(self, k) is not None]
        left_out = self.select == StageKind.DEVICES and self.devices is None   # the incidents' (fill_devices)
        if given != ([wanted] if wanted and not left_out else []):
            need = f"'{wanted}'" if wanted else "none of tag, count, percent, devices"
            raise ValueError(f"a '{self.select}' stage takes {need} (got {', '.join(given) or 'none'})")
        if self.not_before is not None and self.not_before.tzinfo is None:
            raise ValueError("not_before needs a time zone (e.g. 2026-12-24T06:00:00Z)")
        if self.max_soak_s is not None and self.max_soak_s < self.soak_s:
            raise ValueError(f"max_soak_s ({self.max_soak_s:g}) is shorter than soak_s ({self.soak_s:g})")
        return self

    def evidence_until(self, soak_until: float) -> float:
        """How long an inconclusive stage waits for evidence, given when its soak ends."""
        return soak_until if self.max_soak_s is None else soak_until - self.soak_s + self.max_soak_s


class Exponential(_Strict):
    base_per_minute: float = Field(gt=0, le=100_000)
    factor: float = Field(gt=1, le=10)
    raise_after: int = Field(ge=1, le=100_000)
    """The rate is multiplied by ``factor`` after every ``raise_after`` successful devices."""


class Pace(_Strict):
    max_per_minute: float | None = Field(default=None, gt=0, le=100_000)
    exponential: Exponential | None = None

    @model_validator(mode="after")
    def _one_pace(self) -> Pace:
        if self.max_per_minute is not None and self.exponential is not None:
            raise ValueError("give max_per_minute or exponential, not both")
        return self


class AbortCriteria(_Strict):
    """Judged continuously on the devices executed so far in the whole rollout (AWS IoT Jobs
    semantics): with at least ``min_executed`` of them final, a failure share of ``threshold_percent``
    or more acts."""

    failure_kinds: frozenset[FailureKind] = frozenset(FailureKind)
    threshold_percent: float = Field(default=20.0, gt=0, le=100)
    min_executed: int = Field(default=5, ge=1)
    action: AbortAction = AbortAction.ABORT


class Retry(_Strict):
    attempts: int = Field(default=0, ge=0, le=10)
    """Orders sent again after this kind of failure (0: none)."""
    backoff_s: float = Field(default=60.0, ge=0, le=DAY_S)
    """Wait before the first retry; doubled for each further one."""


class Window(_Strict):
    """Devices get orders only inside a window: from each time the cron expression fires, for
    ``duration_s``, in ``timezone``."""

    cron: str = Field(min_length=9, max_length=128)
    duration_s: float = Field(gt=0, le=7 * DAY_S)
    timezone: str = "UTC"

    @field_validator("cron")
    @classmethod
    def _cron(cls, value: str) -> str:
        if not croniter.is_valid(value):
            raise ValueError(f"{value!r} is not a cron expression (minute hour day month weekday)")
        return value

    @field_validator("timezone")
    @classmethod
    def _zone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown time zone {value!r} (e.g. UTC, Europe/Berlin)") from None
        return value


class InstallGate(_Strict):
    """Of the stage's devices, at most this share may fail to install (with a minimum sample)."""

    enabled: bool = True
    max_failure_percent: float = Field(default=0.0, ge=0, le=100)
    min_executed: int = Field(default=1, ge=1)


class RuntimeGate(_Strict):
    """Canary against control: per telemetry window and device, the error rate may be at most
    ``error_rate_ratio`` x the control's + ``error_rate_margin``; the p95 latency at most
    ``latency_ratio`` x the control's + ``latency_margin_ms``."""

    enabled: bool = True
    error_rate_ratio: float = Field(default=2.0, ge=1)
    error_rate_margin: float = Field(default=0.01, ge=0, le=1)
    latency_ratio: float = Field(default=1.5, ge=1)
    latency_margin_ms: float = Field(default=1.0, ge=0)


class BehaviourGate(_Strict):
    """What the model does: input drift (mean PSI per window) may rise at most ``drift_psi_margin``
    over the control's; the canary's prediction distribution may be at most ``prediction_js_max``
    (Jensen-Shannon distance) from the control's, judged once both have ``min_samples`` predictions."""

    enabled: bool = True
    drift_psi_margin: float = Field(default=0.1, ge=0)
    prediction_js_max: float = Field(default=0.1, gt=0, le=1)
    min_samples: int = Field(default=200, ge=1)


class AccuracyGate(_Strict):
    """Where the application gives labels back (``POST /v1/feedback`` on the device): per telemetry
    window with at least ``min_labelled_per_window`` labels, the canary's misclassification rate
    (1 - accuracy) may be at most ``error_ratio`` x the baseline's + ``margin``. A negative margin
    asks the canary to *beat* the baseline by that much; 0 with baseline ``before`` passes only a
    canary that is better than before, with confidence. Not judged without labels on both sides."""

    enabled: bool = True
    error_ratio: float = Field(default=1.0, ge=1)
    margin: float = Field(default=0.02, ge=-1, le=1)
    min_labelled_per_window: int = Field(default=10, ge=1)


class RecoveryGate(_Strict):
    """A rollout back to health (docs/loop.md): every canary device's last ``windows`` judged drift
    verdicts on the new bundle are ``ok`` (below the bundle's warn threshold). Off unless a policy
    turns it on (:func:`heal_policy` does)."""

    enabled: bool = False
    windows: int = Field(default=3, ge=1, le=1000)


class Statistics(_Strict):
    """The sequential test the runtime and drift gates use: looking after every window keeps the
    false-alarm rate at ``alpha``; each arm needs ``min_windows`` telemetry windows (summed over its
    devices) before any verdict. Below 20 the confidence sequence undercovers skewed metrics."""

    alpha: float = Field(default=0.05, gt=0, lt=0.5)
    min_windows: int = Field(default=20, ge=2, le=10_000)


class Gates(_Strict):
    baseline: Baseline = Baseline.CONTROL
    before_s: float = Field(default=3600.0, gt=0, le=30 * DAY_S)
    """How far back the BEFORE baseline reaches (from each device's order)."""
    install: InstallGate = InstallGate()
    runtime: RuntimeGate = RuntimeGate()
    behaviour: BehaviourGate = BehaviourGate()
    accuracy: AccuracyGate = AccuracyGate()
    recovery: RecoveryGate = RecoveryGate()
    statistics: Statistics = Statistics()


class RolloutPolicy(_Strict):
    stages: list[Stage] = Field(min_length=1, max_length=20)
    pace: Pace = Pace()
    abort: AbortCriteria = AbortCriteria()
    device_timeout_s: float = Field(default=1800.0, gt=0, le=7 * DAY_S)
    """A device silent this long after its order counts as timed out."""
    retries: dict[FailureKind, Retry] = {}
    windows: list[Window] = Field(default=[], max_length=16)
    on_abort: OnAbort = OnAbort.ROLLBACK
    gates: Gates = Gates()
    health_check: HealthCheck | None = None
    """The devices' health-check window for this rollout (absent: their own configuration)."""

    @model_validator(mode="after")
    def _last_stage_takes_the_rest(self) -> RolloutPolicy:
        if self.stages[-1].select != StageKind.REST:
            raise ValueError(f"the last stage ({self.stages[-1].name!r}) must select 'rest': it takes the devices "
                             "no earlier stage took")
        if any(s.select == StageKind.REST for s in self.stages[:-1]):
            raise ValueError("only the last stage may select 'rest'")
        names = [s.name for s in self.stages]
        if len(set(names)) != len(names):
            raise ValueError("stage names must be unique")
        return self

    def gates_of(self, index: int) -> Gates:
        """The gates that judge stage ``index``: its own, else the policy's."""
        return self.stages[index].gates or self.gates

    def unlisted_devices(self) -> list[int]:
        """The ``devices`` stages that list no devices (the rollout's incidents name them)."""
        return [i for i, s in enumerate(self.stages) if s.select == StageKind.DEVICES and s.devices is None]


def fill_devices(policy: RolloutPolicy, devices: Sequence[str]) -> RolloutPolicy:
    """The policy with every ``devices`` stage that lists none taking ``devices`` (sorted; a rollout's
    drifted devices, docs/rollouts.md §4); ``policy`` itself when no stage leaves them out."""
    unlisted = policy.unlisted_devices()
    if not unlisted:
        return policy
    data = policy.model_dump(mode="json")
    for index in unlisted:
        data["stages"][index]["devices"] = sorted(devices)
    return RolloutPolicy.model_validate(data)


DEFAULT_POLICY = RolloutPolicy(stages=[
    Stage(name="canary", select=StageKind.COUNT, count=1, soak_s=300, max_soak_s=900),
    Stage(name="half", select=StageKind.PERCENT, percent=50, soak_s=300, max_soak_s=900),
    Stage(name="rest", select=StageKind.REST),
])
"""One device, then half of the rest, then everyone; five minutes of soak after each of the first two
(up to fifteen while the gates are inconclusive)."""


def heal_policy(devices: list[str], *, soak_s: float = 300.0, min_windows: int = 20,
                recovery_windows: int = 3) -> RolloutPolicy:
    """A rollout back to health (docs/loop.md): the canary is the drifted cohort ``devices`` (empty:
    left out, the devices of the rollout's drift incidents), judged against the same devices *before*
    the update — the drift verdict must fall below warn (recovery), accuracy where labels come back
    must beat the old bundle (a margin of 0: the canary's misclassification must be lower with
    confidence), errors and latency may not rise; the prediction gate is off, since a model that
    heals predicts differently on purpose. Then the rest, judged on installs."""
    canary = Gates(baseline=Baseline.BEFORE, behaviour=BehaviourGate(enabled=False),
                   accuracy=AccuracyGate(margin=0.0), recovery=RecoveryGate(enabled=True, windows=recovery_windows),
                   statistics=Statistics(min_windows=min_windows))
    return RolloutPolicy(stages=[
        Stage(name="drifted", select=StageKind.DEVICES, devices=sorted(devices) or None, soak_s=soak_s,
              max_soak_s=3 * soak_s, gates=canary),
        Stage(name="rest", select=StageKind.REST, gates=Gates(runtime=RuntimeGate(enabled=False),
                                                               behaviour=BehaviourGate(enabled=False),
                                                               accuracy=AccuracyGate(enabled=False)))])


HEAL_TEMPLATE = "heal"
"""The template of a rollout that names drift incidents and neither a policy nor a template."""

TEMPLATES: dict[str, tuple[str, RolloutPolicy]] = {
    "canary-half-rest": ("one device, half of the rest, everyone; 5 min soak (the default)", DEFAULT_POLICY),
    "careful": ("one device, 10%, 50%, everyone; 30 min soak, a person promotes each stage, 10 devices a minute",
                RolloutPolicy(stages=[
                    Stage(name="canary", select=StageKind.COUNT, count=1, soak_s=1800, max_soak_s=5400,
                          on_success=OnSuccess.PAUSE),
                    Stage(name="ten", select=StageKind.PERCENT, percent=10, soak_s=1800, max_soak_s=5400,
                          on_success=OnSuccess.PAUSE),
                    Stage(name="half", select=StageKind.PERCENT, percent=50, soak_s=1800,
                          max_soak_s=5400, on_success=OnSuccess.PAUSE),
                    Stage(name="rest", select=StageKind.REST)],
                    pace=Pace(max_per_minute=10), abort=AbortCriteria(action=AbortAction.PAUSE))),
    "all-at-once": ("every device in one stage, judged on installs only (like deploy)",
                    RolloutPolicy(stages=[Stage(name="all", select=StageKind.REST)])),
    HEAL_TEMPLATE: ("the drifted devices of the incidents first, judged against themselves before the update "
                    "(drift back below warn, accuracy better where labelled), then the rest", heal_policy([])),
}
"""Named policies to start from (the UI's create form offers them; ``edgefleet rollout create --template``)."""
DEFAULT_TEMPLATE = "canary-half-rest"


def parse_policy(data: dict[str, Any], *, where: str = "policy") -> RolloutPolicy:
    try:
        return RolloutPolicy.model_validate(data)
    except ValidationError as exc:
        loc, problem = first_problem(exc)
        raise ConfigError(problem, where=f"{where}: {loc}" if loc else where,
                          hint="see docs/rollouts.md for every policy key") from None


def load_policy(path: Path) -> RolloutPolicy:
    """A policy from a TOML file (the same keys as the JSON of the API)."""
    try:
        data = tomllib.loads(path.read_text())
    except OSError as exc:
        raise ConfigError(f"cannot read the policy: {exc.strerror}", where=str(path)) from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"not valid TOML: {exc}", where=str(path)) from None
    return parse_policy(data, where=str(path))
