"""Drift incidents over stored state: the pass that judges every stored telemetry window once by the
rule (:mod:`.rule`) and closes the incidents that cooled down, and reading and closing them.

:func:`process` is idempotent and safe with several controllers: it reads ``telemetry_windows`` after a
cursor (by id) whose row it locks (``FOR UPDATE SKIP LOCKED``: a second controller skips the pass
while another one runs it), and moves the cursor in the same transaction as the states and incidents
the windows changed, so a window is judged exactly once and a crash judges it again from scratch. Ids
are handed out when a row is inserted but become visible when its transaction commits: a gap in the
ids, which a transaction still in flight may fill, stops the cursor until :data:`SETTLE_S` after the
window behind the gap arrived (rolled-back inserts leave gaps for ever). Webhooks (``incident.opened``,
``incident.closed``) are stored in the same transactions, so they exist exactly when the change commits.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import cast

from sqlalchemy import func
from sqlalchemy import select as select_columns
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import QueryableAttribute, defer
from sqlmodel import Session, col, or_, select

from edgefleet.cloud.services import audit, registry, retraining, webhooks
from edgefleet.cloud.services.incidents.rule import (
    Closed,
    CohortState,
    Event,
    IncidentRule,
    Opened,
    OpenIncident,
    Window,
    close,
    cohort_id,
    counts,
    observe,
    tick,
)
from edgefleet.cloud.services.transitions import advance
from edgefleet.cloud.store.engine import OpenSession
from edgefleet.cloud.store.tables import Device, Incident, IncidentCohort, IncidentCursor, TelemetryRecord
from edgefleet.cloud.vocabulary import INCIDENT_TRANSITIONS, CohortKind, IncidentEvent, IncidentState, WebhookEvent
from edgefleet.protocol.errors import NotFoundError
from edgefleet.protocol.vocabulary import DriftLevel

log = logging.getLogger(__name__)

CURSOR = "telemetry"
BATCH = 1000
"""Windows one transaction judges (a pass takes as many as are waiting)."""
SETTLE_S = 10.0
"""How long a gap in the telemetry ids may hold the cursor (see the module's doc)."""
_RAW = cast("QueryableAttribute[str]", TelemetryRecord.raw)
"""The verbatim-message column, left on disk (as services/telemetry.py does)."""


@dataclass(frozen=True)
class Stored:
    """What the pass reads of a stored telemetry window (its columns, not the ORM row: a pass reads many)."""

    id: int
    device_id: str
    bundle_digest: str | None
    bundle_name: str | None
    bundle_version: str | None
    received_at: float
    window: Window


@dataclass(frozen=True)
class Rules:
    """The rule for each kind of cohort, and which tags form cohorts (``None``: every tag)."""

    device: IncidentRule
    tag: IncidentRule
    tags: frozenset[str] | None = None

    def of(self, kind: str) -> IncidentRule:
        return self.device if kind == CohortKind.DEVICE else self.tag

    def cohorts(self, row: Stored, tags: Iterable[str]) -> list[tuple[CohortKind, str]]:
        """The cohorts a window of ``row``'s device belongs to: its device, and each of its tags that forms one."""
        wanted = [t for t in tags if self.tags is None or t in self.tags]
        return [(CohortKind.DEVICE, row.device_id), *((CohortKind.TAG, t) for t in sorted(set(wanted)))]


@dataclass
class PassReport:
    windows: int = 0
    """Telemetry windows read (judged or skipped)."""
    opened: list[str] = field(default_factory=list)
    closed: list[str] = field(default_factory=list)
    skipped_pass: bool = False
    """Another controller holds the cursor: it runs this pass."""


# ------------------------------------------------------------------------------------ the pass

def process(open_session: OpenSession, *, rules: Rules, now: float, batch: int = BATCH) -> PassReport:
    """Judge every telemetry window stored since the last pass, then close what cooled down by ``now``."""
    report = PassReport()
    while True:
        with open_session() as session:
            cursor = _lock_cursor(session, now=now)
            if cursor is None:
                report.skipped_pass = True
                return report
            rows = _next_windows(session, after=cursor.last_id, now=now, limit=batch)
            if rows:
                _judge(session, rows, rules=rules, now=now, report=report)
                cursor.last_id, cursor.updated_at = rows[-1].id, now
                session.add(cursor)
                report.windows += len(rows)
            if len(rows) < batch:
                _tick_all(session, rules=rules, now=now, report=report)
                return report


def _lock_cursor(session: Session, *, now: float) -> IncidentCursor | None:
    """The cursor row, locked for this transaction; ``None`` while another controller holds it."""
    query = select(IncidentCursor).where(IncidentCursor.name == CURSOR).with_for_update(skip_locked=True)
    cursor = session.exec(query).first()
    if cursor is not None:
        return cursor
    if session.exec(select(IncidentCursor.name).where(IncidentCursor.name == CURSOR)).first() is not None:
        return None   # it exists, and it is locked
    try:
        with session.begin_nested():
            session.add(IncidentCursor(name=CURSOR, last_id=0, updated_at=now))
    except IntegrityError:
        return None   # another controller created it just now
    return session.exec(query).first()


def _next_windows(session: Session, *, after: int, now: float, limit: int) -> list[Stored]:
    """The next stored windows by id, up to a young gap in the ids (see the module's doc)."""
    t = TelemetryRecord
    query = select_columns(col(t.id), col(t.device_id), col(t.bundle_digest), col(t.bundle_name),
                           col(t.bundle_version), col(t.received_at), col(t.window_end), col(t.drift_level),
                           col(t.drift_samples), col(t.drift_psi)) \
        .where(col(t.id) > after).order_by(col(t.id)).limit(limit)
    rows = [Stored(id=cast(int, i), device_id=d, bundle_digest=b, bundle_name=n, bundle_version=v, received_at=r,
                   window=Window(device_id=d, end=end, level=level, samples=samples or 0, psi=psi))
            for i, d, b, n, v, r, end, level, samples, psi in session.connection().execute(query)]
    previous = after
    for index, row in enumerate(rows):
        if row.id != previous + 1 and row.received_at > now - SETTLE_S:
            return rows[:index]
        previous = row.id
    return rows


def _judge(session: Session, rows: list[Stored], *, rules: Rules, now: float, report: PassReport) -> None:
    """Apply the windows, in id order, to the states of their cohorts; store what changed."""
    floor = IncidentRule(min_samples=min(rules.device.min_samples, rules.tag.min_samples))
    judged = [r for r in rows if r.bundle_digest and counts(r.window, floor)]
    if not judged:
        return
    tags = {d: t for d, t in session.exec(select(Device.id, Device.tags).where(
        col(Device.id).in_({r.device_id for r in judged})))}
    keyed = [(r, [(kind, key, cohort_id(kind, r.bundle_digest or "", key))
                  for kind, key in rules.cohorts(r, tags.get(r.device_id, []))]) for r in judged]
    stored = {c.id: c for c in session.exec(select(IncidentCohort).where(
        col(IncidentCohort.id).in_({cid for _, cohorts in keyed for _, _, cid in cohorts})).with_for_update())}
    states: dict[str, CohortState] = {cid: CohortState.model_validate(c.state) for cid, c in stored.items()}
    rows_of = _open_rows(session, {c.incident_id for c in stored.values() if c.incident_id})
    touched: set[str] = set()
    for row, cohorts in keyed:
        window = row.window
        for kind, key, cid in cohorts:
            state = states.get(cid)
            if state is None:
                if window.level != DriftLevel.ALARM:
                    continue   # no run, no incident: a window below alarm changes nothing
                state = CohortState(kind=kind, key=key, bundle_digest=row.bundle_digest or "")
            new, events = observe(state, window, rules.of(kind))
            if new is state:
                continue
            states[cid] = new
            touched.add(cid)
            _apply(session, new, events, rows_of, row=row, now=now, report=report)
    for cid in touched:
        _store_state(session, stored.get(cid), states[cid], rows_of, now=now)


def _tick_all(session: Session, *, rules: Rules, now: float, report: PassReport) -> None:
    """Cohorts with an open incident, or silent for a cooldown: close what cooled down, forget what lapsed."""
    quiet = now - min(rules.device.cooldown_s, rules.tag.cooldown_s)
    cohorts = list(session.exec(select(IncidentCohort).where(or_(
        col(IncidentCohort.incident_id).is_not(None), col(IncidentCohort.updated_at) <= quiet)).with_for_update()))
    rows_of = _open_rows(session, {c.incident_id for c in cohorts if c.incident_id})
    for stored in cohorts:
        state = CohortState.model_validate(stored.state)
        new, events = tick(state, now, rules.of(state.kind))
        if new == state:
            continue
        _apply(session, new, events, rows_of, row=None, now=now, report=report)
        _store_state(session, stored, new, rows_of, now=now)


def _open_rows(session: Session, ids: set[str]) -> dict[str, Incident]:
    """The incident rows a batch changes, held here: the session only keeps unchanged rows weakly."""
    return {i.id: i for i in session.exec(select(Incident).where(col(Incident.id).in_(ids)))} if ids else {}


def _store_state(session: Session, stored: IncidentCohort | None, state: CohortState,
                 rows_of: dict[str, Incident], *, now: float) -> None:
    """Store the cohort's state (delete it when there is nothing to remember), and its open incident's progress."""
    if state.incident is not None:
        _sync(rows_of.get(state.incident.id), state.incident, now=now)
    if state.empty:
        if stored is not None:
            session.delete(stored)
        return
    row = stored or IncidentCohort(id=state.cohort_id, updated_at=now)
    row.state = state.model_dump(mode="json")
    row.incident_id = state.incident.id if state.incident else None
    row.updated_at = now
    session.add(row)


def _apply(session: Session, state: CohortState, events: list[Event], rows_of: dict[str, Incident], *,
           row: Stored | None, now: float, report: PassReport) -> None:
    """Store the incidents the rule opened and closed (:func:`_store_state` then stores the open one's progress)."""
    for event in events:
        if isinstance(event, Opened):
            if event.incident.id in rows_of or session.get(Incident, event.incident.id) is not None:
                continue   # the same opening, stored before (ids derive from cohort and window)
            incident = rows_of[event.incident.id] = _new_incident(session, state, event.incident, row=row, now=now)
            report.opened.append(incident.id)
            _announce(session, incident, WebhookEvent.INCIDENT_OPENED, now)
            if incident.model_name:   # a model whose recipe says auto = true is retrained (docs/retraining.md)
                retraining.retrain_on_incident(session, incident_id=incident.id, model_name=incident.model_name,
                                               now=now)
            log.warning("incident %s opened: %s %s on bundle %s, %d alarm windows (psi up to %s)", incident.id,
                        state.kind, state.key, state.bundle_digest[:12], incident.windows, incident.peak_psi)
        elif isinstance(event, Closed):
            closed = _closed(session, rows_of.get(event.incident.id), event, now=now)
            if closed is not None:
                report.closed.append(closed.id)


def _new_incident(session: Session, state: CohortState, facts: OpenIncident, *, row: Stored | None,
                  now: float) -> Incident:
    bundle = registry.bundles_by_digest(session, digests={state.bundle_digest}).get(state.bundle_digest)
    model = registry.model_name_of_version(session, version_id=bundle.model_version_id) if bundle else None
    incident = Incident(
        id=facts.id, cohort_kind=state.kind, cohort_key=state.key, bundle_digest=state.bundle_digest,
        bundle_name=bundle.name if bundle else row.bundle_name if row else None,
        bundle_version=bundle.version if bundle else row.bundle_version if row else None,
        state=IncidentState.OPEN, opened_at=facts.opened_at, first_alarm_at=facts.first_alarm_at,
        last_alarm_at=facts.last_alarm_at, last_window_end=facts.last_window_end, updated_at=now)
    incident.model_name = model or incident.bundle_name
    _sync(incident, facts, now=now)
    session.add(incident)
    session.flush()
    return incident


def _sync(incident: Incident | None, facts: OpenIncident, *, now: float) -> None:
    if incident is None or incident.state != IncidentState.OPEN:
        return
    incident.windows, incident.peak_psi, incident.devices = facts.windows, facts.peak_psi, list(facts.devices)
    incident.last_alarm_at, incident.last_window_end, incident.updated_at = \
        facts.last_alarm_at, facts.last_window_end, now


def _closed(session: Session, incident: Incident | None, event: Closed, *, now: float) -> Incident | None:
    if incident is None or incident.state != IncidentState.OPEN:
        return None
    _sync(incident, event.incident, now=now)
    incident.state = advance(INCIDENT_TRANSITIONS, incident.state, IncidentEvent.COOL_DOWN,
                             what=f"incident {incident.id}")
    incident.closed_at, incident.reason, incident.updated_at = event.closed_at, event.reason, now
    session.add(incident)
    _announce(session, incident, WebhookEvent.INCIDENT_CLOSED, now)
    log.info("incident %s closed: %s", incident.id, event.reason)
    return incident


def _announce(session: Session, incident: Incident, event: WebhookEvent, now: float) -> None:
    """Tell the webhooks (docs/webhooks.md), in this transaction: sent exactly when it commits."""
    webhooks.emit(session, event=event, now=now, payload=payload(incident))


def payload(incident: Incident) -> dict[str, object]:
    """The incident as webhooks and the API show it."""
    return {"incident_id": incident.id, "state": incident.state, "cohort_kind": incident.cohort_kind,
            "cohort_key": incident.cohort_key, "bundle_digest": incident.bundle_digest,
            "bundle_name": incident.bundle_name, "bundle_version": incident.bundle_version,
            "model_name": incident.model_name, "opened_at": incident.opened_at,
            "first_alarm_at": incident.first_alarm_at, "last_alarm_at": incident.last_alarm_at,
            "closed_at": incident.closed_at, "windows": incident.windows, "peak_psi": incident.peak_psi,
            "devices": incident.devices, "reason": incident.reason}


# ------------------------------------------------------------------------------------ people and pages

def close_incident(session: Session, *, incident_id: str, actor: str, reason: str, now: float) -> Incident:
    """A person closes an open incident (the cohort's runs start over); audited, announced."""
    incident = get_incident(session, incident_id=incident_id)
    cid = cohort_id(CohortKind(incident.cohort_kind), incident.bundle_digest, incident.cohort_key)
    stored = session.exec(select(IncidentCohort).where(IncidentCohort.id == cid).with_for_update()).first()
    session.refresh(incident, with_for_update=True)
    incident.state = advance(INCIDENT_TRANSITIONS, incident.state, IncidentEvent.CLOSE, what=f"incident {incident.id}")
    why = f"closed by {actor}: {reason}" if reason else f"closed by {actor}"
    incident.closed_at, incident.reason, incident.updated_at = now, why, now
    if stored is not None and stored.incident_id == incident.id:
        state, _ = close(CohortState.model_validate(stored.state), at=now, reason=why)
        _store_state(session, stored, state, {}, now=now)
    session.add(incident)
    audit.record(session, actor=actor, action="incident.close", target=f"incident:{incident.id}",
                 details={"reason": reason, "cohort": cid}, now=now)
    _announce(session, incident, WebhookEvent.INCIDENT_CLOSED, now)
    log.info("incident %s %s", incident.id, why)
    return incident


def get_incident(session: Session, *, incident_id: str) -> Incident:
    incident = session.get(Incident, incident_id)
    if incident is None:
        raise NotFoundError(f"no incident {incident_id!r}", where="incident_id",
                            hint="list them with `edgefleet incidents list`")
    return incident


SCAN_LIMIT = 5000
"""Incidents a device filter looks through (newest first): the devices are a JSON list."""


def list_incidents(session: Session, *, state: IncidentState | None = None, device_id: str | None = None,
                   bundle: str | None = None, limit: int = 100) -> list[Incident]:
    """Newest first; ``device_id``: incidents that involve the device; ``bundle``: a digest or its prefix."""
    query = select(Incident).order_by(col(Incident.opened_at).desc(), col(Incident.id))
    if state is not None:
        query = query.where(Incident.state == state)
    if bundle:
        query = query.where(col(Incident.bundle_digest).startswith(bundle))
    if device_id is None:
        return list(session.exec(query.limit(limit)))
    found = [i for i in session.exec(query.limit(SCAN_LIMIT))
             if device_id in i.devices or (i.cohort_kind == CohortKind.DEVICE and i.cohort_key == device_id)]
    return found[:limit]


def count_open(session: Session) -> int:
    return session.exec(select(func.count()).select_from(Incident).where(Incident.state == IncidentState.OPEN)).one()


def evidence(session: Session, incident: Incident, *, lead_s: float, limit: int = 1000) -> list[TelemetryRecord]:
    """The drift series behind an incident, oldest first: its devices' windows on its bundle, from
    ``lead_s`` before the first alarm window to the close (or to now, while it is open)."""
    devices = [incident.cohort_key] if incident.cohort_kind == CohortKind.DEVICE else incident.devices
    query = select(TelemetryRecord).options(defer(_RAW)).where(
        col(TelemetryRecord.device_id).in_(devices), TelemetryRecord.bundle_digest == incident.bundle_digest,
        col(TelemetryRecord.window_end) >= incident.first_alarm_at - lead_s)
    if incident.closed_at is not None:
        query = query.where(col(TelemetryRecord.window_end) <= max(incident.closed_at, incident.last_window_end))
    rows = list(session.exec(query.order_by(col(TelemetryRecord.window_end).desc()).limit(limit)))
    return rows[::-1]
