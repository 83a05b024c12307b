"""The UI's staged rollouts: the list, a rollout's stage timeline with every gate's verdict and
chart (the canary against its limit, per telemetry window), its devices, the create form with the live
count of matching and compatible devices (``/ui/rollouts/count``, polled by ``static/deploy.js``) and its
confirmation step (the stages with their devices, the policy, the devices skipped), and the people's
actions, each behind a confirmation step. Pages read and act through the rollout service,
like the REST API (``cloud/api/routes/rollouts.py``), and every action advances the rollouts at once."""

from __future__ import annotations

import json
import logging
import math
import statistics
import tomllib
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Annotated, Any
from urllib.parse import quote

from fastapi import APIRouter, Form, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from markupsafe import Markup
from pydantic import ValidationError
from sqlmodel import Session

from edgefleet.cloud.deps import ControllerDep, SessionDep
from edgefleet.cloud.services import devices, registry
from edgefleet.cloud.services.auth import PermissionDeniedError, Principal
from edgefleet.cloud.services.rollouts import service as rollouts
from edgefleet.cloud.services.rollouts.gates import COMPARED, WindowSample
from edgefleet.cloud.services.rollouts.policy import (
    DEFAULT_TEMPLATE,
    TEMPLATES,
    Gates,
    OnSuccess,
    RolloutPolicy,
    Selector,
    Stage,
    StageKind,
    parse_policy,
)
from edgefleet.cloud.services.rollouts.states import ROLLOUT_TRANSITIONS, RolloutEvent
from edgefleet.cloud.store.tables import Bundle, Rollout, RolloutDevice, RolloutStage
from edgefleet.cloud.ui import charts
from edgefleet.cloud.ui.csrf import CsrfField
from edgefleet.cloud.ui.filters import STATE_CSS, duration, number
from edgefleet.cloud.ui.render import SECURITY_HEADERS, base_path, forbidden, not_found, render
from edgefleet.cloud.ui.session import posted_by, signed_in, to_login
from edgefleet.cloud.vocabulary import DeviceState, Role, RolloutState
from edgefleet.protocol.errors import ConfigError, ConflictError, EdgeFleetError, NotFoundError, first_problem

log = logging.getLogger(__name__)

router = APIRouter(include_in_schema=False)

CUSTOM = "custom"
"""The template choice that takes the policy pasted into the form."""
COUNTED_AS = "all-at-once"
"""The template the live count plans a pasted policy with (its stages are counted on the confirmation step)."""
SHOWN_DEVICES = 100
"""The confirmation step names at most this many devices that get orders (and says how many more)."""
DEVICE_ORDER: list[str] = [DeviceState.SUCCEEDED, DeviceState.IN_PROGRESS, DeviceState.QUEUED, DeviceState.REVERTING,
                           DeviceState.REVERTED, DeviceState.SKIPPED, DeviceState.ROLLED_BACK, DeviceState.TIMED_OUT,
                           DeviceState.REJECTED, DeviceState.FAILED, DeviceState.REVERT_FAILED]
"""Order of device states in progress bars: done, on the way, waiting, then the bad exits."""
GATE_ORDER = ["install", "error_rate", "latency_p95", "drift_psi", "predictions", "accuracy", "recovery"]
DEFAULT_WINDOW_S = 60.0


# --------------------------------------------------------------------------- the people's actions

@dataclass(frozen=True)
class Action:
    """One thing a person may do to a rollout, and what the confirmation step says about it."""

    event: RolloutEvent
    run: Callable[..., Rollout]
    label: str
    explains: str
    danger: bool = False
    needs_issuer: bool = False
    needs_role: bool = False
    """Its rule looks at the signed-in person's role too (approval: approver or admin)."""


ACTIONS: dict[str, Action] = {a.event.value: a for a in (
    Action(RolloutEvent.APPROVE, rollouts.approve_rollout, "Approve",
           "Let it start on the protected devices. The approver must be someone other than its creator, "
           "with the approver (or admin) role.", needs_role=True),
    Action(RolloutEvent.PAUSE, rollouts.pause_rollout, "Pause", "No further orders go out until it is resumed; "
           "devices with an order keep going."),
    Action(RolloutEvent.RESUME, rollouts.resume_rollout, "Resume", "Carry on where it paused."),
    Action(RolloutEvent.PROMOTE, rollouts.promote_rollout, "Promote",
           "Take the stage it paused in as passed (your verdict, kept in the audit log) and start the next."),
    Action(RolloutEvent.ABORT, rollouts.abort_rollout, "Abort",
           "Stop, send signed cancel orders to devices still installing and, as the policy says, roll every "
           "device that took the bundle back to the one it ran before.", danger=True, needs_issuer=True),
    Action(RolloutEvent.CANCEL, rollouts.cancel_rollout, "Cancel",
           "Stop giving out orders. Devices that took the bundle keep it (abort rolls them back).",
           danger=True, needs_issuer=True),
)}


def available_actions(state: str) -> list[Action]:
    """The actions the rollout state table allows in ``state``."""
    return [a for a in ACTIONS.values() if (state, a.event) in ROLLOUT_TRANSITIONS]


# --------------------------------------------------------------------------- pure view helpers

def device_slices(counts: dict[str, int]) -> list[charts.Slice]:
    keys = sorted(counts, key=lambda k: DEVICE_ORDER.index(k) if k in DEVICE_ORDER else len(DEVICE_ORDER))
    return [charts.Slice(k.replace("_", " "), counts[k], STATE_CSS.get(k, "st-idle")) for k in keys]


def stage_kind(spec: Stage) -> str:
    """Which devices a stage takes, in words."""
    if spec.select == StageKind.TAG:
        return f"the remaining devices tagged {spec.tag}"
    if spec.select == StageKind.COUNT:
        return f"{spec.count} device{'s' if spec.count != 1 else ''}"
    if spec.select == StageKind.PERCENT:
        return f"{spec.percent:g}% of the remaining devices"
    if spec.select == StageKind.DEVICES:
        listed = spec.devices or []
        return (f"the devices {', '.join(listed[:3])}{f' and {len(listed) - 3} more' if len(listed) > 3 else ''}"
                if listed else "the drifted devices of its incidents")
    return "every remaining device"


def stage_terms(spec: Stage) -> list[str]:
    """A stage's soak, start time and what happens when it passes, in words."""
    terms = [f"soak {duration(spec.soak_s)}"] if spec.soak_s else []
    if spec.not_before is not None:
        terms.append(f"not before {spec.not_before.isoformat()}")
    if spec.on_success == OnSuccess.PAUSE:
        terms.append("a person promotes it")
    return terms


def describe_stages(policy: RolloutPolicy) -> str:
    return " → ".join(f"{s.name} ({', '.join([stage_kind(s), *stage_terms(s)])})" for s in policy.stages)


def split_words(text: str) -> list[str]:
    """Tags or device ids typed into the form, separated by commas or white space."""
    return [w for w in text.replace(",", " ").split() if w]


def parse_selector(*, tags: str, device_ids: str, exclude_tags: str, exclude_device_ids: str,
                   dynamic: bool) -> Selector:
    try:
        return Selector(tags=split_words(tags), device_ids=split_words(device_ids),
                        exclude_tags=split_words(exclude_tags), exclude_device_ids=split_words(exclude_device_ids),
                        dynamic=dynamic)
    except ValidationError as exc:
        loc, problem = first_problem(exc)
        raise ConfigError(problem, where=f"selector: {loc}" if loc else "selector") from None


def parse_policy_text(text: str) -> RolloutPolicy:
    """A policy pasted into the form: JSON (it starts with ``{``) or TOML, the keys of docs/rollouts.md."""
    text = text.strip()
    if not text:
        raise ConfigError("paste a policy (JSON or TOML) or choose a template", where="policy")
    data: Any
    if text.startswith("{"):
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"not valid JSON: {exc.msg} (line {exc.lineno}, column {exc.colno})",
                              where="policy") from None
    else:
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"not valid TOML: {exc}", where="policy") from None
    if not isinstance(data, dict):
        raise ConfigError("a policy is an object of keys (stages, pace, gates, ...)", where="policy")
    return parse_policy(data, where="policy")


def choose_policy(template: str, text: str) -> RolloutPolicy:
    """The named template's policy, or with ``custom`` the pasted one (never both, as in the API)."""
    if template == CUSTOM:
        return parse_policy_text(text)
    if template not in TEMPLATES:
        raise ConfigError(f"no policy template {template!r} (there are: {', '.join(TEMPLATES)})", where="template")
    if text.strip():
        raise ConfigError(f"a policy is pasted but the template {template!r} is chosen",
                          where="template", hint=f"choose '{CUSTOM}' to use the pasted policy, or clear it")
    return TEMPLATES[template][1]


def window_length(samples: Sequence[WindowSample]) -> float:
    """The telemetry window length: the median step between one device's consecutive windows."""
    by_device: dict[str, list[float]] = {}
    for s in samples:
        by_device.setdefault(s.device_id, []).append(s.window_end)
    steps = [b - a for ends in by_device.values() for a, b in zip(sorted(ends), sorted(ends)[1:], strict=False)
             if b > a]
    return statistics.median(steps) if steps else DEFAULT_WINDOW_S


Points = list[tuple[float, float | None]]


def per_window(samples: Sequence[WindowSample], metric: Callable[[WindowSample], float | None], *, ratio: float,
               margin: float) -> tuple[Points, Points]:
    """Per telemetry window (windows of all devices that end in the same window length): the canary's
    mean and the limit, ``ratio`` x the control's mean + ``margin``; ``None`` where an arm has no window."""
    width = window_length(samples)
    canary: dict[float, list[float]] = {}
    control: dict[float, list[float]] = {}
    for s in samples:
        value = metric(s)
        if value is None or not math.isfinite(value):
            continue
        slot = math.ceil(s.window_end / width) * width
        (canary if s.canary else control).setdefault(slot, []).append(value)
    slots = sorted(set(canary) | set(control))

    def mean(values: list[float] | None) -> float | None:
        return sum(values) / len(values) if values else None

    limits = [mean(control.get(t)) for t in slots]
    return ([(t, mean(canary.get(t))) for t in slots],
            [(t, None if c is None else ratio * c + margin) for t, c in zip(slots, limits, strict=True)])


def prediction_counts(samples: Sequence[WindowSample], *, canary: bool) -> dict[str, int]:
    total: Counter[str] = Counter()
    for s in samples:
        if s.canary == canary:
            total.update({k: int(v) for k, v in s.predictions.items()})
    return dict(total)


def label_order(labels: Sequence[str], known: Sequence[str]) -> list[str]:
    """The bundle's own label order first, then the rest (numbers by value)."""
    rest = sorted(set(labels) - set(known), key=lambda k: (0, int(k), "") if k.isdigit() else (1, 0, k))
    return [k for k in known if k in set(labels)] + rest


def evidence_text(gate: str, evidence: dict[str, Any]) -> str:
    """What a gate's verdict rests on, in one line."""
    if gate == "install":
        text = f"{evidence.get('executed', 0)} executed, {evidence.get('failed', 0)} failed"
        if "failed_percent" in evidence:
            text += f" ({evidence['failed_percent']:g}%)"
        return text + f"; at most {evidence.get('limit_percent', 0):g}% may fail"
    if gate == "predictions":
        text = (f"{evidence.get('canary_predictions', 0)} canary and {evidence.get('control_predictions', 0)} "
                f"control predictions")
        if "js" in evidence:
            text += f"; Jensen-Shannon {evidence['js']:.3f}"
        return text + f" (limit {evidence.get('limit', 0):g})"
    parts = [f"{evidence.get('canary_windows', 0)} canary and {evidence.get('control_windows', 0)} control windows"]
    if isinstance(evidence.get("canary_mean"), int | float) and isinstance(evidence.get("control_mean"), int | float):
        ratio, margin = evidence.get("ratio", 1.0), evidence.get("margin", 0.0)
        parts.append(f"canary mean {number(evidence['canary_mean'], 4)}, limit {ratio:g} × control "
                     f"{number(evidence['control_mean'], 4)} + {margin:g} = "
                     f"{number(ratio * evidence['control_mean'] + margin, 4)}")
    if isinstance(evidence.get("lower"), int | float) and isinstance(evidence.get("upper"), int | float):
        level = 100 * (1 - float(evidence.get("alpha", 0.05)))
        parts.append(f"canary − limit within [{number(evidence['lower'], 4)}, {number(evidence['upper'], 4)}] "
                     f"({level:g}% confidence), p = {evidence.get('p_value', 1.0):.3g}")
    return "; ".join(parts)


LEFT_COHORT = ("no control windows to draw (no device of the rollout was on the old bundle then); the dashed "
               "line is the limit the gate judged against")


def runtime_chart(gate: str, samples: Sequence[WindowSample], evidence: dict[str, Any], gates: Gates, *,
                  stage: str) -> tuple[Markup, str]:
    """The canary per window against its limit per window (ratio x control + margin), and a note.
    Without control windows (see :data:`LEFT_COHORT`) the limit the gate judged against is a line."""
    compared = COMPARED[gate]
    ratio, margin = compared.limit(gates)
    ratio, margin = float(evidence.get("ratio", ratio)), float(evidence.get("margin", margin))
    canary, limit = per_window(samples, compared.value, ratio=ratio, margin=margin)
    series = [charts.Series("canary", canary, "s2")]
    thresholds, note = [], ""
    control_mean = evidence.get("control_mean")
    if any(v is not None for _, v in limit):
        series.append(charts.Series(f"limit: {ratio:g} × control + {margin:g}", limit, "lim"))
    elif isinstance(control_mean, int | float):
        judged = ratio * control_mean + margin
        thresholds.append(charts.Threshold(judged, f"limit {ratio:g} × control + {margin:g} = "
                                                   f"{charts.format_number(judged)}", "alarm"))
        note = LEFT_COHORT
    chart = charts.line_chart(series, kind=f"gate-{gate}", unit=compared.unit.strip(), thresholds=thresholds,
                              height=200, title=f"{compared.label} of stage {stage}: the canary against its limit, "
                                                "per telemetry window",
                              empty_text="no telemetry windows yet")
    return chart, note


def predictions_chart(samples: Sequence[WindowSample], evidence: dict[str, Any], known_labels: Sequence[str], *,
                      stage: str) -> tuple[Markup, str]:
    """The canary's and the control's prediction distributions side by side, and a note."""
    canary, control = prediction_counts(samples, canary=True), prediction_counts(samples, canary=False)
    labels = label_order([*canary, *control], known_labels)
    chart = charts.grouped_bar_chart(
        labels, [charts.Group("canary", [canary.get(k, 0) for k in labels], "s2"),
                 charts.Group("control", [control.get(k, 0) for k in labels], "s1")],
        kind="gate-predictions", title=f"predictions of stage {stage}: canary and control distributions",
        height=200)
    judged = evidence.get("control_predictions")
    note = "" if control or not judged else (f"no control windows to draw (the gate compared with {judged} control "
                                             "predictions)")
    return chart, note


def enabled_gates(gates: Gates) -> list[str]:
    return [g for g, on in (("install", gates.install.enabled), ("error_rate", gates.runtime.enabled),
                            ("latency_p95", gates.runtime.enabled), ("drift_psi", gates.behaviour.enabled),
                            ("predictions", gates.behaviour.enabled), ("accuracy", gates.accuracy.enabled),
                            ("recovery", gates.recovery.enabled)) if on]


# --------------------------------------------------------------------------- reading

def _bundle_labels(bundle: Bundle | None) -> list[str]:
    labels = (bundle.manifest or {}).get("labels") if bundle else None
    return [str(x) for x in labels] if isinstance(labels, list) else []


def _summary(rollout: Rollout, rows: list[RolloutDevice], bundle: Bundle | None) -> dict[str, Any]:
    policy = rollouts.policy_of(rollout)
    counts = dict(Counter(r.state for r in rows))
    finished = sum(r.state not in (DeviceState.QUEUED, DeviceState.IN_PROGRESS, DeviceState.REVERTING) for r in rows)
    stage = policy.stages[min(rollout.stage_index, len(policy.stages) - 1)]
    return {"rollout": rollout, "bundle": bundle, "policy": policy, "stage": stage, "n_stages": len(policy.stages),
            "target": Selector.model_validate(rollout.selector).describe(), "counts": counts, "total": len(rows),
            "finished": finished,
            "bar": charts.stacked_bar(device_slices(counts), kind="rollout-devices",
                                      title=f"{len(rows)} devices: " + ", ".join(
                                          f"{v} {k.replace('_', ' ')}" for k, v in counts.items()))}


def _stage_view(session: Session, rollout: Rollout, stage: RolloutStage, rows: list[RolloutDevice],
                policy: RolloutPolicy, bundle: Bundle | None) -> dict[str, Any]:
    spec = policy.stages[stage.index]
    mine = [r for r in rows if r.stage_index == stage.index]
    counts = dict(Counter(r.state for r in mine))
    verdicts = {str(v.get("gate")): v for v in stage.verdicts}
    judged_by = policy.gates_of(stage.index)
    names = [*enabled_gates(judged_by), *[g for g in verdicts if g not in GATE_ORDER]]
    samples: list[WindowSample] = []
    if stage.started_at is not None:
        samples = rollouts.stage_samples(session, rollout_id=rollout.id, stage_index=stage.index)
    gates = []
    for name in names:
        verdict = verdicts.get(name, {})
        evidence = verdict.get("evidence") or {}
        chart, title, note = None, "", ""
        if stage.started_at is not None and name in COMPARED:
            chart, note = runtime_chart(name, samples, evidence, judged_by, stage=stage.name)
            title = COMPARED[name].label + (f" ({COMPARED[name].unit.strip()})" if COMPARED[name].unit else "")
        elif stage.started_at is not None and name == "predictions":
            chart, note = predictions_chart(samples, evidence, _bundle_labels(bundle), stage=stage.name)
            title = "predictions per class"
        gates.append({"gate": name, "verdict": verdict.get("verdict"), "summary": verdict.get("summary", ""),
                      "evidence": evidence_text(name, evidence) if evidence else "", "chart": chart,
                      "title": title, "note": note})
    return {"stage": stage, "kind": stage_kind(spec), "terms": stage_terms(spec), "counts": counts,
            "total": len(mine), "current": stage.index == rollout.stage_index, "gates": gates, "windows": len(samples),
            "bar": charts.stacked_bar(device_slices(counts), kind="stage-devices",
                                      title=f"stage {stage.name}: {len(mine)} devices")}


def _render_detail(request: Request, session: Session, controller: ControllerDep, user: Principal, rollout: Rollout,
                   problem: EdgeFleetError | None = None, status_code: int = 200) -> Response:
    rows = rollouts.devices_of(session, rollout_id=rollout.id)
    bundle = registry.bundles_by_id(session, ids={rollout.bundle_id}).get(rollout.bundle_id)
    summary = _summary(rollout, rows, bundle)
    policy: RolloutPolicy = summary["policy"]
    stages = [_stage_view(session, rollout, s, rows, policy, bundle)
              for s in rollouts.stages_of(session, rollout_id=rollout.id)]
    previous = registry.bundles_by_digest(session, digests={r.previous_digest for r in rows if r.previous_digest})
    stage_names = {s["stage"].index: s["stage"].name for s in stages}
    return render(request, "rollout.html", status_code=status_code, user=user, now=controller.now(),
                  refresh=5 if rollout.finished_at is None and problem is None else None, row=summary,
                  rollout=rollout, bundle=bundle, policy=policy, stages=stages, devices=rows, previous=previous,
                  stage_names=stage_names, problem=problem,
                  actions=available_actions(rollout.state) if user.refusal(Role.OPERATOR) is None else [],
                  policy_json=json.dumps(rollout.policy, indent=2, sort_keys=True))


# --------------------------------------------------------------------------- pages

@router.get("/ui/rollouts", response_class=HTMLResponse)
def rollout_list(request: Request, session: SessionDep, controller: ControllerDep,
                 state: str | None = None) -> Response:
    user = signed_in(request, session)
    if user is None:
        return to_login(request)
    wanted = RolloutState(state) if state in set(RolloutState) else None
    items = rollouts.list_rollouts(session, state=wanted, limit=100)
    bundles = registry.bundles_by_id(session, ids={r.bundle_id for r in items})
    rows = [_summary(r, rollouts.devices_of(session, rollout_id=r.id), bundles.get(r.bundle_id)) for r in items]
    return render(request, "rollouts.html", user=user, now=controller.now(), refresh=5, rows=rows,
                  state=wanted.value if wanted else "", states=list(RolloutState),
                  may_create=user.refusal(Role.OPERATOR) is None)


@dataclass
class CreateForm:
    """What was typed into the create form (shown again, as typed, when it is refused, and carried
    through the confirmation step)."""

    bundle: str = ""
    tags: str = ""
    device_ids: str = ""
    exclude_tags: str = ""
    exclude_device_ids: str = ""
    dynamic: bool = False
    template: str = DEFAULT_TEMPLATE
    policy: str = ""
    note: str = ""

    def problem_field(self, problem: EdgeFleetError | None) -> str:
        """The form field a problem is about (``selector: tags.0`` -> ``tags``), for highlighting it."""
        where = (problem.where or "") if problem else ""
        head, _, rest = where.partition(":")
        if head == "selector":
            return rest.strip().split(".")[0]
        return {"digest": "bundle"}.get(head, head)

    def selector(self) -> Selector:
        return parse_selector(tags=self.tags, device_ids=self.device_ids, exclude_tags=self.exclude_tags,
                              exclude_device_ids=self.exclude_device_ids, dynamic=self.dynamic)


def plan_of(session: Session, controller: ControllerDep, form: CreateForm
            ) -> tuple[Selector, RolloutPolicy, rollouts.RolloutPlan]:
    """The selector, the policy and what the rollout would do (nothing stored); refusals as raised."""
    if not form.bundle:
        raise ConfigError("choose the bundle to roll out", where="bundle")
    selector = form.selector()
    chosen = choose_policy(form.template, form.policy)
    found = rollouts.plan_rollout(session, bundle_digest=form.bundle, selector=selector, policy=chosen,
                                  protected_tags=controller.settings.protected_tags)
    return selector, chosen, found


def rollout_count(session: Session, controller: ControllerDep, form: CreateForm) -> dict[str, object]:
    """The live count: matching and compatible devices and, for a template, the devices per stage; or
    the problem with the form as it stands. A pasted policy is judged at the confirmation step."""
    counted = form if form.template in TEMPLATES else replace(form, template=COUNTED_AS, policy="")
    try:
        _, _, found = plan_of(session, controller, counted)
    except EdgeFleetError as exc:
        return {"matching": 0, "compatible": 0, "problem": exc.message, "where": exc.where or "", "stages": []}
    stages = [{"name": s.name, "devices": s.devices, "exact": s.exact} for s in found.stages] \
        if counted is form else []
    return {"matching": found.matching, "compatible": len(found.chosen), "problem": "", "where": "",
            "skipped": found.skipped[:20], "stages": stages, "protected_tags": found.protected_tags}


def _render_form(request: Request, session: Session, controller: ControllerDep, user: Principal, form: CreateForm,
                 problem: EdgeFleetError | None = None, status_code: int = 200) -> Response:
    fleet = devices.list_devices(session)
    return render(request, "rollout_new.html", status_code=status_code, user=user, now=controller.now(), form=form,
                  problem=problem, field=form.problem_field(problem), bundles=registry.list_bundles(session),
                  templates={name: {"summary": summary, "stages": describe_stages(policy)}
                             for name, (summary, policy) in TEMPLATES.items()},
                  custom=CUSTOM, known_tags=sorted({t for d in fleet for t in d.tags}), n_devices=len(fleet),
                  protected_tags=controller.settings.protected_tags)


@router.get("/ui/rollouts/new", response_class=HTMLResponse)
def new_rollout(request: Request, session: SessionDep, controller: ControllerDep, bundle: str = "") -> Response:
    user = signed_in(request, session)
    if user is None:
        return to_login(request)
    refusal = user.refusal(Role.OPERATOR)
    if refusal is not None:
        return forbidden(request, user, refusal)
    return _render_form(request, session, controller, user, CreateForm(bundle=bundle))


@router.get("/ui/rollouts/count")
def count_rollout(request: Request, session: SessionDep, controller: ControllerDep, bundle: str = "",
                  tags: str = "", device_ids: str = "", exclude_tags: str = "", exclude_device_ids: str = "",
                  template: str = DEFAULT_TEMPLATE) -> Response:
    """How many devices the selector matches and how many of them would get an order (operators only)."""
    user = signed_in(request, session)
    if user is None or user.refusal(Role.OPERATOR) is not None:
        return JSONResponse({"problem": "sign in as an operator"}, status_code=403, headers=SECURITY_HEADERS)
    form = CreateForm(bundle=bundle[:64].strip(), tags=tags[:20_000], device_ids=device_ids[:20_000],
                      exclude_tags=exclude_tags[:20_000], exclude_device_ids=exclude_device_ids[:20_000],
                      template=template[:64])
    return JSONResponse(rollout_count(session, controller, form), headers=SECURITY_HEADERS)


Text = Annotated[str, Form(max_length=20_000)]
Name = Annotated[str, Form(max_length=64)]
Flag = Annotated[str, Form(max_length=8)]
PolicyText = Annotated[str, Form(max_length=100_000)]
Note = Annotated[str, Form(max_length=2000)]


def _typed(bundle: str, tags: str, device_ids: str, exclude_tags: str, exclude_device_ids: str, dynamic: str,
           template: str, policy: str, note: str) -> CreateForm:
    return CreateForm(bundle=bundle.strip(), tags=tags, device_ids=device_ids, exclude_tags=exclude_tags,
                      exclude_device_ids=exclude_device_ids, dynamic=bool(dynamic), template=template, policy=policy,
                      note=note.strip())


@router.post("/ui/rollouts/confirm", response_class=HTMLResponse)
def confirm_rollout(request: Request, controller: ControllerDep, bundle: Name = "", tags: Text = "",
                    device_ids: Text = "", exclude_tags: Text = "", exclude_device_ids: Text = "", dynamic: Flag = "",
                    template: Name = DEFAULT_TEMPLATE, policy: PolicyText = "", note: Note = "", edit: Flag = "",
                    csrf_token: CsrfField = "") -> Response:
    """The confirmation step: the stages with their devices, the policy, the devices that get orders
    and those skipped; nothing is stored. ``edit=yes`` goes back to the form as typed."""
    user = posted_by(request, controller, csrf_token, "rollout create")
    if isinstance(user, Response):
        return user
    form = _typed(bundle, tags, device_ids, exclude_tags, exclude_device_ids, dynamic, template, policy, note)
    with controller.session() as session:
        if edit == "yes":
            return _render_form(request, session, controller, user, form)
        try:
            selector, chosen, found = plan_of(session, controller, form)
            if not found.matching:
                raise ConflictError("no device matches the selector", where="selector", hint=selector.describe())
            if not found.chosen:
                first = found.skipped[0]
                raise ConflictError(f"none of the {found.matching} matching devices can get the bundle "
                                    f"({first['device_id']}: {first['reason']})", where="selector",
                                    hint="change the selector, or choose another bundle")
        except EdgeFleetError as exc:
            return _render_form(request, session, controller, user, form, problem=exc,
                                status_code=409 if isinstance(exc, ConflictError) else 400)
        stages = [{"spec": spec, "kind": stage_kind(spec), "terms": stage_terms(spec), "plan": planned,
                   "gates": enabled_gates(chosen.gates_of(i))}
                  for i, (spec, planned) in enumerate(zip(chosen.stages, found.stages, strict=True))]
        return render(request, "rollout_confirm.html", user=user, now=controller.now(), form=form, plan=found,
                      bundle=registry.get_bundle(session, digest=form.bundle), target=selector.describe(),
                      policy=chosen, stages=stages, shown=SHOWN_DEVICES, custom=CUSTOM)


@router.post("/ui/rollouts")
def create_rollout(request: Request, controller: ControllerDep, bundle: Name = "", tags: Text = "",
                   device_ids: Text = "", exclude_tags: Text = "", exclude_device_ids: Text = "", dynamic: Flag = "",
                   template: Name = DEFAULT_TEMPLATE, policy: PolicyText = "", note: Note = "", confirm: Flag = "",
                   csrf_token: CsrfField = "") -> Response:
    """Create a rollout (operator or admin) once confirmed on the confirmation step; a refused form
    shows why, and creates nothing."""
    user = posted_by(request, controller, csrf_token, "rollout create")
    if isinstance(user, Response):
        return user
    form = _typed(bundle, tags, device_ids, exclude_tags, exclude_device_ids, dynamic, template, policy, note)
    try:
        if confirm != "yes":
            raise ConfigError("the rollout was not confirmed", where="confirm",
                              hint="check its stages and devices on the confirmation step and press Create")
        if not form.bundle:
            raise ConfigError("choose the bundle to roll out", where="bundle")
        selector = form.selector()
        chosen = choose_policy(form.template, form.policy)
        with controller.session() as session:
            rollout = rollouts.create_rollout(session, bundle_digest=form.bundle, selector=selector, policy=chosen,
                                              protected_tags=controller.settings.protected_tags, actor=user.actor,
                                              now=controller.now(), note=form.note)
            rollout_id = rollout.id
    except EdgeFleetError as exc:
        log.info("UI rollout create by %s refused: %s", user.actor, exc)
        with controller.session() as session:
            return _render_form(request, session, controller, user, form, problem=exc,
                                status_code=409 if isinstance(exc, ConflictError) else 400)
    log.info("rollout %s created from the UI by %s", rollout_id, user.actor)
    controller.advance_rollouts()
    return RedirectResponse(f"{base_path(request)}/ui/rollouts/{quote(rollout_id)}", status_code=303)


@router.get("/ui/rollouts/{rollout_id}", response_class=HTMLResponse)
def rollout_detail(request: Request, rollout_id: str, session: SessionDep, controller: ControllerDep) -> Response:
    user = signed_in(request, session)
    if user is None:
        return to_login(request)
    try:
        rollout = rollouts.get_rollout(session, rollout_id=rollout_id)
    except NotFoundError as exc:
        return not_found(request, user, exc)
    return _render_detail(request, session, controller, user, rollout)


@router.post("/ui/rollouts/{rollout_id}/{name}")
def act_on_rollout(request: Request, rollout_id: str, name: str, controller: ControllerDep,
                   reason: Annotated[str, Form(max_length=500)] = "", csrf_token: CsrfField = "") -> Response:
    """Approve, pause, resume, promote, abort or cancel (operator or admin), then advance at once,
    as the API does. A refusal by the controller (e.g. the creator approving) is shown on the page."""
    user = posted_by(request, controller, csrf_token, f"{name[:20]} of rollout {rollout_id}")
    if isinstance(user, Response):
        return user
    action = ACTIONS.get(name)
    if action is None:
        return not_found(request, user, NotFoundError(f"no rollout action {name!r}", where="action"))
    extra: dict[str, object] = {"issuer": controller.issuer} if action.needs_issuer else {}
    if action.needs_role:
        extra["role"] = user.role
    try:
        with controller.session() as session:
            action.run(session, rollout_id=rollout_id, actor=user.actor, now=controller.now(),
                       reason=reason.strip(), **extra)
    except NotFoundError as exc:
        return not_found(request, user, exc)
    except (PermissionDeniedError, ConflictError) as exc:
        log.warning("UI %s of rollout %s by %s refused: %s", name, rollout_id, user.actor, exc)
        with controller.session() as session:
            return _render_detail(request, session, controller, user, rollouts.get_rollout(
                session, rollout_id=rollout_id), problem=exc,
                status_code=403 if isinstance(exc, PermissionDeniedError) else 409)
    log.info("rollout %s: %s from the UI by %s", rollout_id, name, user.actor)
    controller.advance_rollouts()
    return RedirectResponse(f"{base_path(request)}/ui/rollouts/{quote(rollout_id)}", status_code=303)
