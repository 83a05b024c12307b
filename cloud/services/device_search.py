"""Finding devices at fleet scale: a filter spec (:class:`DeviceQuery`, a pure frozen dataclass) becomes one
SQL query -- filters, sort and page all run in the database, so a list of 10 000 devices costs one page of
rows, not the fleet. Also the choices the filters offer (:func:`facets`), every id a filter matches (the
bulk actions' "all matching") and a tag change on many devices at once with one audit entry (:func:`bulk_tags`).

Drift level is the level of each device's newest *judged* window (ok, warn or alarm) that ended in the drift
span (``since``) -- what the overview counts -- found by a correlated subquery on the
``(device_id, window_end)`` index, so its cost grows with the devices on the page (or matched), never with
the telemetry history. Tags (a JSON list) match through the database's JSON table function
(SQLite ``json_each``, PostgreSQL ``json_array_elements_text``); the installed bundle through JSON paths.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from sqlalchemy import ColumnElement, Select, and_, case, exists, func, literal, null, select, true
from sqlalchemy.orm import aliased
from sqlmodel import Session, col

from edgefleet.cloud.services import audit
from edgefleet.cloud.store.tables import Device, TelemetryRecord
from edgefleet.protocol.errors import InvalidRequestError, NotFoundError
from edgefleet.protocol.vocabulary import JUDGED_DRIFT_LEVELS, DriftLevel, UpdateState

NONE = "none"
"""The filter value for "no update state reported" and "no judged drift window in the span"."""
MAX_TEXT = 200
BULK_AUDIT_IDS = 200
"""A bulk action's audit entry lists at most this many device ids (and always the count)."""


class DeviceSort(StrEnum):
    ID = "id"
    LAST_SEEN = "last_seen"
    UPDATE_STATE = "update_state"
    BUNDLE = "bundle"
    DRIFT = "drift"


DRIFT_CHOICES = (DriftLevel.ALARM, DriftLevel.WARN, DriftLevel.OK, NONE)
STATE_CHOICES = (*(s.value for s in UpdateState), NONE)
DRIFT_RANK = {DriftLevel.OK: 1, DriftLevel.WARN: 2, DriftLevel.ALARM: 3}
"""Sorting by drift: no verdict (0) < ok < warn < alarm."""


@dataclass(frozen=True)
class DeviceQuery:
    """Which devices, in which order. Empty strings and ``None`` mean "any"."""

    text: str = ""
    """A substring of the device id (case-insensitive)."""
    tag: str = ""
    bundle: str = ""
    """An installed bundle's name, or ``name@version``."""
    update_state: str = ""
    """An :class:`UpdateState` value or :data:`NONE`."""
    drift: str = ""
    """``ok``, ``warn``, ``alarm`` or :data:`NONE` (no judged window in the span)."""
    online: bool | None = None
    sort: DeviceSort = DeviceSort.ID
    descending: bool = False

    def __post_init__(self) -> None:
        for name in ("text", "tag", "bundle"):
            if len(getattr(self, name)) > MAX_TEXT:
                raise InvalidRequestError(f"{name} is longer than {MAX_TEXT} characters", where=name,
                                          hint="shorten it")
        if self.update_state and self.update_state not in STATE_CHOICES:
            raise InvalidRequestError(f"{self.update_state[:40]!r} is not an update state", where="update_state",
                                      hint=f"use one of {', '.join(STATE_CHOICES)}")
        if self.drift and self.drift not in DRIFT_CHOICES:
            raise InvalidRequestError(f"{self.drift[:40]!r} is not a drift level", where="drift",
                                      hint=f"use one of {', '.join(DRIFT_CHOICES)}")
        if self.sort not in set(DeviceSort):
            raise InvalidRequestError(f"{str(self.sort)[:40]!r} is not a sort key", where="sort",
                                      hint=f"use one of {', '.join(DeviceSort)}")

    @property
    def bundle_name(self) -> str:
        return self.bundle.rpartition("@")[0] if "@" in self.bundle else self.bundle

    @property
    def bundle_version(self) -> str:
        return self.bundle.rpartition("@")[2] if "@" in self.bundle else ""

    def needs_drift(self) -> bool:
        return bool(self.drift) or self.sort == DeviceSort.DRIFT

    def only_tag(self) -> bool:
        """True when the only filter is a tag (then "all matching" is exactly "every device tagged ...")."""
        return bool(self.tag) and not (self.text or self.bundle or self.update_state or self.drift
                                       or self.online is not None)


@dataclass(frozen=True)
class DeviceRow:
    device: Device
    drift_level: str | None
    drift_psi: float | None


@dataclass(frozen=True)
class DevicePage:
    rows: list[DeviceRow]
    total: int
    """Devices matching the filters (all pages)."""
    offset: int
    limit: int


@dataclass(frozen=True)
class Facets:
    """What the filters can choose from (distinct values over the whole fleet)."""

    tags: list[str] = field(default_factory=list)
    bundles: list[tuple[str, str]] = field(default_factory=list)
    """``(name, version)`` of every installed bundle."""


# --------------------------------------------------------------------------- SQL pieces

def _tag_values(session: Session) -> Any:
    """A table function over ``devices.tags`` with one ``value`` column (one row per tag)."""
    name = session.get_bind().dialect.name
    fn = func.json_array_elements_text if name == "postgresql" else func.json_each
    return fn(col(Device.tags)).table_valued("value")


def _like_escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def _installed(key: str) -> Any:
    """``installed ->> key`` (a JSON path, as text)."""
    return col(Device.installed)[key].as_string()


def _newest_judged_window(since: float) -> Any:
    """The id of the device's newest judged window that ended at ``since`` or later (a correlated scalar)."""
    t = aliased(TelemetryRecord)
    return (select(col(t.id))
            .where(col(t.device_id) == Device.id, col(t.window_end) >= since,
                   col(t.drift_level).in_(JUDGED_DRIFT_LEVELS))
            .order_by(col(t.window_end).desc(), col(t.id).desc()).limit(1)
            .correlate(Device).scalar_subquery())


def _filtered(session: Session, query: DeviceQuery, *, since: float, ids_only: bool = False
              ) -> tuple[Select[Any], Any]:
    """``SELECT devices, drift level, drift PSI`` with every filter of ``query`` applied (no order, no page);
    and the drift window alias (its columns are NULL without a verdict). ``ids_only``: the device id, not the row."""
    window = aliased(TelemetryRecord, name="drift_window")
    stmt: Select[Any]
    head: Any = col(Device.id) if ids_only else Device
    if query.needs_drift():
        stmt = select(head, col(window.drift_level), col(window.drift_psi)).select_from(Device) \
            .outerjoin(window, col(window.id) == _newest_judged_window(since))
    else:   # the page's drift is looked up for its rows alone (search)
        stmt = select(head, null(), null())
    conditions: list[ColumnElement[bool]] = []
    if query.text:
        conditions.append(col(Device.id).ilike(f"%{_like_escape(query.text)}%", escape="\\"))
    if query.tag:
        values = _tag_values(session)
        conditions.append(exists(select(literal(1)).select_from(values).where(values.c.value == query.tag)))
    if query.bundle_name:
        conditions.append(_installed("name") == query.bundle_name)
    if query.bundle_version:
        conditions.append(_installed("version") == query.bundle_version)
    if query.update_state == NONE:
        conditions.append(col(Device.update_state).is_(None))
    elif query.update_state:
        conditions.append(col(Device.update_state) == query.update_state)
    if query.online is not None:
        conditions.append(col(Device.online) == query.online)
    if query.drift == NONE:
        conditions.append(col(window.id).is_(None))
    elif query.drift:
        conditions.append(col(window.drift_level) == query.drift)
    if conditions:
        stmt = stmt.where(and_(*conditions))
    return stmt, window


def _ordered(stmt: Select[Any], query: DeviceQuery, window: Any) -> Select[Any]:
    def direction(expr: Any) -> Any:
        return expr.desc() if query.descending else expr.asc()

    device_id = col(Device.id)
    if query.sort == DeviceSort.ID:
        return stmt.order_by(direction(device_id))
    if query.sort == DeviceSort.LAST_SEEN:
        seen = col(Device.last_seen)
        return stmt.order_by(seen.is_(None), direction(seen), device_id)
    if query.sort == DeviceSort.UPDATE_STATE:
        state = col(Device.update_state)
        return stmt.order_by(state.is_(None), direction(state), device_id)
    if query.sort == DeviceSort.BUNDLE:
        name, version = _installed("name"), _installed("version")
        return stmt.order_by(name.is_(None), direction(name), direction(version), device_id)
    rank = case({level: value for level, value in DRIFT_RANK.items()}, value=window.drift_level, else_=0)
    return stmt.order_by(direction(rank), direction(func.coalesce(window.drift_psi, 0.0)), device_id)


# --------------------------------------------------------------------------- queries

def search(session: Session, query: DeviceQuery, *, since: float, offset: int = 0, limit: int = 50) -> DevicePage:
    """One page of the devices ``query`` matches, in its order, with the total count (an ``offset`` past the
    end gives the last page); each row carries the device's drift level and PSI of the span (newest judged
    window ending at ``since`` or later)."""
    narrow, window = _filtered(session, query, since=since, ids_only=True)   # sorts ids and keys, not rows
    total = session.scalar(select(func.count()).select_from(narrow.subquery())) or 0
    if offset >= total > 0:   # past the end (the fleet shrank, or a hand-made link): the last page
        offset = (total - 1) // limit * limit
    page = session.execute(_ordered(narrow, query, window).offset(offset).limit(limit)).all()
    by_id = {d.id: d for d in session.scalars(select(Device).where(col(Device.id).in_([p[0] for p in page])))}
    rows = [DeviceRow(by_id[device_id], level, psi) for device_id, level, psi in page if device_id in by_id]
    if rows and not query.needs_drift():
        drift = latest_in_span(session, [r.device.id for r in rows], since=since)
        rows = [DeviceRow(r.device, *drift.get(r.device.id, (None, None))) for r in rows]
    return DevicePage(rows=rows, total=total, offset=offset, limit=limit)


def latest_in_span(session: Session, device_ids: Sequence[str], *, since: float
                   ) -> dict[str, tuple[str | None, float | None]]:
    """``device id -> (drift level, PSI)`` of each device's newest judged window ending at ``since`` or later."""
    window = aliased(TelemetryRecord)
    stmt = (select(col(Device.id), col(window.drift_level), col(window.drift_psi)).select_from(Device)
            .join(window, col(window.id) == _newest_judged_window(since))
            .where(col(Device.id).in_(list(device_ids))))
    return {device_id: (level, psi) for device_id, level, psi in session.execute(stmt)}


def matching_ids(session: Session, query: DeviceQuery, *, since: float) -> list[str]:
    """Every device id ``query`` matches, in its order (the bulk actions' "all matching")."""
    stmt, window = _filtered(session, query, since=since, ids_only=True)
    return [str(device_id) for device_id in session.scalars(_ordered(stmt, query, window))]


def existing_ids(session: Session, device_ids: Sequence[str]) -> list[str]:
    """``device_ids`` in the given order, once each; :class:`NotFoundError` names the first unknown one."""
    wanted = list(dict.fromkeys(device_ids))
    known: set[str] = set()
    for start in range(0, len(wanted), 500):
        chunk = wanted[start:start + 500]
        known.update(session.scalars(select(col(Device.id)).where(col(Device.id).in_(chunk))))
    for device_id in wanted:
        if device_id not in known:
            raise NotFoundError(f"no device {device_id[:64]!r}", where="id",
                                hint="reload the device list: it may have been removed")
    return wanted


def facets(session: Session) -> Facets:
    values = _tag_values(session)
    tags = session.scalars(select(values.c.value).select_from(Device).join(values, true()).distinct()).all()
    name, version = _installed("name"), _installed("version")
    bundles = session.execute(select(name, version).where(name.is_not(None)).distinct())
    return Facets(tags=sorted(str(t) for t in tags),
                  bundles=sorted((str(n), str(v or "")) for n, v in bundles))


# --------------------------------------------------------------------------- bulk change

@dataclass(frozen=True)
class BulkResult:
    selected: int
    changed: list[str]


def bulk_tags(session: Session, *, device_ids: Sequence[str], actor: str, now: float, add: Sequence[str] = (),
              remove: Sequence[str] = (), selection: dict[str, Any] | None = None) -> BulkResult:
    """Add and/or remove tags on many devices; one audit entry (``devices.bulk_tags``) names the tags, the
    selection it was made with, how many devices it changed and (up to :data:`BULK_AUDIT_IDS`) which."""
    if not add and not remove:
        raise InvalidRequestError("no tag given", where="tags", hint="type the tag to add or remove")
    ids = existing_ids(session, device_ids)
    changed: list[str] = []
    for start in range(0, len(ids), 500):
        for device in session.scalars(select(Device).where(col(Device.id).in_(ids[start:start + 500]))):
            new = sorted((set(device.tags) | set(add)) - set(remove))
            if new != sorted(device.tags):
                device.tags = new
                session.add(device)
                changed.append(device.id)
    changed.sort()
    audit.record(session, actor=actor, action="devices.bulk_tags", target=f"devices:{len(ids)}", now=now,
                 details={"added": list(add), "removed": list(remove), "selected": len(ids),
                          "changed": len(changed), "devices": changed[:BULK_AUDIT_IDS],
                          **({"selection": selection} if selection else {})})
    return BulkResult(selected=len(ids), changed=changed)
