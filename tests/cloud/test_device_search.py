"""The device list's query (cloud/services/device_search.py) on 10 000 devices, on SQLite and PostgreSQL:
every filter, sort and page is checked against the same selection made in Python over the seeded rows
(results, never time), the drift level of the span (older verdicts and unjudged windows), the facets, the
bulk tag change and its audit entry, and the refusals of a bad filter."""

from __future__ import annotations

import math
from dataclasses import dataclass

import pytest
from sqlalchemy import insert
from sqlmodel import Session, select

from edgefleet.cloud.services import audit
from edgefleet.cloud.services.device_search import (
    NONE,
    DeviceQuery,
    DeviceSort,
    bulk_tags,
    facets,
    matching_ids,
    search,
)
from edgefleet.cloud.store.engine import create_schema, make_engine
from edgefleet.cloud.store.tables import Device, TelemetryRecord
from edgefleet.protocol.errors import InvalidRequestError, NotFoundError

N = 10_000
NOW = 1_800_000_000.0
SPAN = 3600.0
SINCE = NOW - SPAN
RANK = {None: 0, "ok": 1, "warn": 2, "alarm": 3}
DRIFT_OF = {0: ("alarm", 0.4), 1: ("warn", 0.15), 3: ("alarm", 0.3), 4: ("ok", 0.02)}
"""``i % 100`` -> the drift level and PSI of the span (see :func:`windows`)."""


@dataclass
class Spec:
    id: str
    tags: list[str]
    online: bool
    bundle: tuple[str, str] | None
    state: str | None
    last_seen: float | None
    drift: str | None
    """The level of the span, as the overview counts it."""
    psi: float | None


def fleet() -> list[Spec]:
    specs = []
    for i in range(N):
        tags = [t for t, every in (("lab", 10), ("eu", 3), ("cam_1", 7)) if i % every == 0]
        bundle = (None if i % 50 == 49 else ("birds", "2.0") if i % 5 == 0
                  else ("animals", "1.3.0" if i % 4 == 0 else "1.2.0"))
        state = None if i % 50 == 49 else "failed" if i % 7 == 0 else "downloading" if i % 11 == 0 else "committed"
        drift, psi = DRIFT_OF.get(i % 100, (None, None))
        specs.append(Spec(f"dev-{i:05d}", tags, i % 2 == 0, bundle, state, None if i % 97 == 5 else NOW - i, drift,
                          psi))
    return specs


def windows(spec: Spec, i: int) -> list[TelemetryRecord]:
    """Telemetry behind ``spec.drift``: 2: only an old alarm (out of the span: no level); 3: an alarm, then a
    newer window too small to judge; 4: an alarm, then a newer ok."""
    def w(seq: int, end: float, level: str | None, psi: float | None) -> TelemetryRecord:
        return TelemetryRecord(msg_id=f"m{seq}", device_id=spec.id, window_seq=seq, window_start=end - 60,
                               window_end=end, drift_level=level, drift_psi=psi, received_at=end)
    kind = i % 100
    if kind in (0, 1):
        return [w(1, NOW - 900, "ok", 0.01), w(2, NOW - 60, spec.drift, spec.psi)]
    if kind == 2:
        return [w(1, NOW - 2 * SPAN, "alarm", 0.5)]
    if kind == 3:
        return [w(1, NOW - 600, "alarm", 0.3), w(2, NOW - 60, "insufficient", None), w(3, NOW - 30, None, None)]
    if kind == 4:
        return [w(1, NOW - 1200, "alarm", 0.5), w(2, NOW - 100, "ok", 0.02)]
    return []


BACKENDS = ["sqlite", pytest.param("postgresql", marks=[pytest.mark.postgres, pytest.mark.integration])]


@pytest.fixture(scope="module", params=BACKENDS)
def db(request, tmp_path_factory):
    """The 10 000 devices, seeded once per backend (the bulk test, last in this file, changes some tags)."""
    url = (f"sqlite:///{tmp_path_factory.mktemp('search') / 'search.db'}" if request.param == "sqlite"
           else request.getfixturevalue("pg_url"))
    engine = make_engine(url)
    create_schema(engine)
    specs = fleet()
    with Session(engine) as session:
        session.execute(insert(Device), [   # a bulk insert (the ORM would take seconds for 10 000 rows)
            {"id": s.id, "tags": s.tags, "online": s.online, "update_state": s.state, "last_seen": s.last_seen,
             "installed": {"name": s.bundle[0], "version": s.bundle[1], "digest": "d" * 64, "build": 1,
                           "runtime": "onnx"} if s.bundle else None,
             "enrolled_at": NOW - 86400, "mqtt_password_hash": "", "message_key": "", "runtimes": [],
             "last_sequence": 0, "enrolled_by": "", "broker_disable_pending": False} for s in specs])
        session.add_all(r for i, s in enumerate(specs) for r in windows(s, i))
        session.commit()
    yield engine, specs
    engine.dispose()


def expected(specs: list[Spec], q: DeviceQuery) -> list[str]:
    def keep(s: Spec) -> bool:
        return ((not q.text or q.text.lower() in s.id.lower()) and (not q.tag or q.tag in s.tags)
                and (not q.bundle_name or (s.bundle is not None and s.bundle[0] == q.bundle_name))
                and (not q.bundle_version or (s.bundle is not None and s.bundle[1] == q.bundle_version))
                and (not q.update_state or s.state == (None if q.update_state == NONE else q.update_state))
                and (q.online is None or s.online == q.online)
                and (not q.drift or s.drift == (None if q.drift == NONE else q.drift)))

    chosen = [s for s in specs if keep(s)]
    sign = -1 if q.descending else 1
    if q.sort == DeviceSort.ID:
        return sorted((s.id for s in chosen), reverse=q.descending)
    if q.sort == DeviceSort.LAST_SEEN:
        return [s.id for s in sorted(chosen, key=lambda s: (s.last_seen is None, sign * (s.last_seen or 0), s.id))]
    if q.sort == DeviceSort.UPDATE_STATE:
        by_state = sorted(chosen, key=lambda s: s.id)
        by_state.sort(key=lambda s: s.state or "", reverse=q.descending)
        return [s.id for s in sorted(by_state, key=lambda s: s.state is None)]
    if q.sort == DeviceSort.DRIFT:
        return [s.id for s in sorted(chosen, key=lambda s: (sign * RANK[s.drift], sign * (s.psi or 0.0), s.id))]
    raise AssertionError(q.sort)


QUERIES = [
    DeviceQuery(),
    DeviceQuery(text="DEV-0012"),                        # case-insensitive substring
    DeviceQuery(text="_"),                               # LIKE wildcards are literal: no id has "_"
    DeviceQuery(tag="lab", online=True),
    DeviceQuery(tag="cam_1", sort=DeviceSort.LAST_SEEN, descending=True),
    DeviceQuery(tag="la"),                               # a tag matches whole, never a part
    DeviceQuery(bundle="animals@1.3.0", update_state="failed"),
    DeviceQuery(bundle="birds", sort=DeviceSort.UPDATE_STATE, descending=True),
    DeviceQuery(update_state=NONE, sort=DeviceSort.LAST_SEEN),
    DeviceQuery(drift="alarm"),
    DeviceQuery(drift=NONE, tag="eu", online=False),
    DeviceQuery(sort=DeviceSort.DRIFT, descending=True),
    DeviceQuery(online=False, sort=DeviceSort.UPDATE_STATE),
]


def test_filters_sorts_and_pages_match_python_on_10k_devices(db):
    engine, specs = db
    with Session(engine) as session:
        for q in QUERIES:
            want = expected(specs, q)
            first = search(session, q, since=SINCE, offset=0, limit=50)
            assert first.total == len(want), q
            assert [r.device.id for r in first.rows] == want[:50], q
            if len(want) > 100:
                last_offset = (math.ceil(len(want) / 50) - 1) * 50
                last = search(session, q, since=SINCE, offset=last_offset, limit=50)
                assert [r.device.id for r in last.rows] == want[last_offset:], q
            assert matching_ids(session, q, since=SINCE) == want, q
        assert search(session, DeviceQuery(), since=SINCE).total == N
        assert search(session, DeviceQuery(tag="eu"), since=SINCE).total == len(range(0, N, 3))


def test_drift_is_the_newest_judged_window_of_the_span(db):
    engine, specs = db
    with Session(engine) as session:
        page = search(session, DeviceQuery(text="dev-000"), since=SINCE, limit=10)     # drift looked up per row
        levels = {r.device.id: (r.drift_level, r.drift_psi) for r in page.rows}
        assert levels["dev-00000"] == ("alarm", 0.4)
        assert levels["dev-00001"] == ("warn", 0.15)
        assert levels["dev-00002"] == (None, None)            # its alarm is older than the span
        assert levels["dev-00003"] == ("alarm", 0.3)          # newer unjudged windows do not hide it
        assert levels["dev-00004"] == ("ok", 0.02)            # a newer ok replaces the alarm
        by_drift = search(session, DeviceQuery(sort=DeviceSort.DRIFT, descending=True), since=SINCE, limit=3)
        assert [(r.device.id, r.drift_level) for r in by_drift.rows] == [
            ("dev-00000", "alarm"), ("dev-00100", "alarm"), ("dev-00200", "alarm")]
        assert search(session, DeviceQuery(drift="alarm"), since=NOW + 1).total == 0


def test_facets_list_every_tag_and_installed_bundle(db):
    engine, _ = db
    with Session(engine) as session:
        found = facets(session)
    assert found.tags == ["cam_1", "eu", "lab"]
    assert found.bundles == [("animals", "1.2.0"), ("animals", "1.3.0"), ("birds", "2.0")]


def test_bulk_tags_change_only_what_differs_with_one_audit_entry(db):
    engine, specs = db
    with Session(engine) as session:
        ids = matching_ids(session, DeviceQuery(tag="lab", online=False), since=SINCE)
        assert ids == []                                      # lab devices are every 10th: all online
        ids = matching_ids(session, DeviceQuery(tag="cam_1", online=False), since=SINCE)
        result = bulk_tags(session, device_ids=ids, actor="user:op", now=NOW, add=["night"], remove=["eu"],
                           selection={"tag": "cam_1", "online": "no"})
        session.commit()
        assert result.selected == len(ids) and sorted(result.changed) == sorted(ids)
        tagged = session.exec(select(Device).where(Device.id == ids[0])).one()
        assert "night" in tagged.tags and "eu" not in tagged.tags and "cam_1" in tagged.tags
        assert search(session, DeviceQuery(tag="night"), since=SINCE).total == len(ids)
        again = bulk_tags(session, device_ids=ids[:3], actor="user:op", now=NOW + 1, add=["night"])
        assert again.changed == []                             # already tagged: nothing to change
        session.commit()
        entries = audit.list_entries(session, action="devices.bulk_tags")
        assert [e.details["changed"] for e in entries] == [0, len(ids)]
        assert entries[1].details["added"] == ["night"] and entries[1].details["removed"] == ["eu"]
        assert entries[1].details["selection"] == {"tag": "cam_1", "online": "no"}
        assert entries[1].details["devices"] == sorted(ids)[:200] and entries[1].actor == "user:op"
        with pytest.raises(NotFoundError) as unknown:
            bulk_tags(session, device_ids=[ids[0], "ghost"], actor="user:op", now=NOW, add=["x"])
        assert unknown.value.where == "id" and "ghost" in unknown.value.message
        with pytest.raises(InvalidRequestError) as empty:
            bulk_tags(session, device_ids=ids, actor="user:op", now=NOW)
        assert empty.value.where == "tags"


@pytest.mark.parametrize(("kwargs", "where"), [({"update_state": "broken"}, "update_state"),
                                               ({"drift": "insufficient"}, "drift"),
                                               ({"sort": "colour"}, "sort"), ({"text": "x" * 201}, "text")])
def test_a_bad_filter_is_refused_with_where(kwargs, where):
    with pytest.raises(InvalidRequestError) as refused:
        DeviceQuery(**kwargs)
    assert refused.value.where == where and refused.value.hint
