"""Drift incidents over stored telemetry, on SQLite and on PostgreSQL (every service test runs on both):
windows played into the real ingest path, the incident pass run with explicit times; the REST API, the
CLI, webhooks, the audit log, idempotent re-runs, a second controller on the same database, and on
PostgreSQL the cursor's row lock (a second controller skips the pass another one holds)."""

from __future__ import annotations

import json

import pytest
from sqlmodel import Session, SQLModel, select

from edgefleet.cloud.cli import incidents as cli_incidents
from edgefleet.cloud.controller import Controller
from edgefleet.cloud.services import audit
from edgefleet.cloud.services.incidents import service as incidents
from edgefleet.cloud.store.engine import make_engine
from edgefleet.cloud.store.tables import IncidentCohort, IncidentCursor, TelemetryRecord
from edgefleet.protocol.messages import InstalledBundle

from cloudkit import FakeTransport, cli_runner

STEP = 60.0
ADMIN_ACTOR = "admin:admin"


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=[pytest.mark.postgres, pytest.mark.integration])])
def settings(request, settings):
    """The controller's settings on each database; on PostgreSQL, in an empty schema (the database is the module's)."""
    if request.param == "sqlite":
        return settings
    url = request.getfixturevalue("pg_url")
    engine = make_engine(url)
    SQLModel.metadata.drop_all(engine)
    engine.dispose()
    return settings.model_copy(update={"database_url": url})


@pytest.fixture
def bundle(make_bundle, upload) -> InstalledBundle:
    built = make_bundle(name="drifty", version="2.0.0", build=7)
    upload(built)
    return InstalledBundle(name="drifty", version="2.0.0", build=7, digest=built.digest, runtime="onnx")


@pytest.fixture
def play(fleet, clock, bundle):
    """``play({"d1": "AAO", ...})``: one window per letter and minute for each device (A alarm, W warn,
    O ok, F an alarm with too few samples), all devices in the same minute, then the clock moves on."""
    seqs: dict[str, int] = {}

    def play(streams: dict[str, str]) -> None:
        for i in range(max(len(s) for s in streams.values())):
            for device, stream in streams.items():
                if i < len(stream):
                    letter = stream[i]
                    seqs[device] = seqs.get(device, 0) + 1
                    fleet.telemetry(device, seqs[device], bundle=bundle, psi=0.5 if letter in "AF" else 0.02,
                                    level={"A": "alarm", "F": "alarm", "W": "warn", "O": "ok"}[letter],
                                    requests=20 if letter == "F" else 200)
            clock.advance(STEP)
    return play


@pytest.fixture
def hooks(client, controller):
    """A webhook subscribed to both incident events; ``hooks()`` sends the due deliveries and returns
    every ``(event, data)`` sent so far."""
    r = client.post("/api/v1/webhooks", json={"url": "https://hooks.example.com/e",
                                              "events": ["incident.opened", "incident.closed"]})
    assert r.status_code == 201, r.text
    sent: list[tuple[str, dict]] = []

    def post(url, body, headers, timeout_s):
        doc = json.loads(body)
        sent.append((doc["event"], doc["data"]))
        return 200

    controller.webhook_post = post

    def deliver() -> list[tuple[str, dict]]:
        controller.deliver_webhooks()
        return sent
    return deliver


def test_k_alarm_windows_open_one_incident_visible_over_rest_then_the_cooldown_closes_it(
        fleet, play, controller, client, clock, bundle, hooks):
    fleet.add("cam-1")
    play({"cam-1": "OOAA"})
    assert controller.process_incidents().opened == []
    assert client.get("/api/v1/incidents").json() == []
    play({"cam-1": "A"})
    report = controller.process_incidents()
    [incident_id] = report.opened
    assert report.windows == 1
    [listed] = client.get("/api/v1/incidents", params={"state": "open"}).json()
    assert (listed["id"], listed["cohort_kind"], listed["cohort_key"], listed["windows"]) == \
        (incident_id, "device", "cam-1", 3)
    assert (listed["bundle_digest"], listed["bundle_name"], listed["bundle_version"]) == \
        (bundle.digest, "drifty", "2.0.0")
    assert listed["opened_at"] - listed["first_alarm_at"] == 2 * STEP and listed["devices"] == ["cam-1"]
    [(event, data)] = hooks()
    assert event == "incident.opened" and data["incident_id"] == incident_id and data["cohort_key"] == "cam-1"

    play({"cam-1": "AOOO"})
    controller.process_incidents()
    shown = client.get(f"/api/v1/incidents/{incident_id}").json()
    assert shown["state"] == "open" and shown["windows"] == 4
    assert shown["rule"] == {"windows": 3, "min_samples": 100, "cooldown_s": 600.0, "min_devices": 1}
    levels = [w["drift_level"] for w in shown["evidence"]]
    assert levels == ["ok", "ok", "alarm", "alarm", "alarm", "alarm", "ok", "ok", "ok"]
    assert {w["drift_samples"] for w in shown["evidence"]} == {200}

    clock.advance(600 - 4 * STEP)   # exactly a cooldown after the last alarm window
    assert controller.process_incidents().closed == [incident_id]
    closed = client.get(f"/api/v1/incidents/{incident_id}").json()
    assert closed["state"] == "closed" and closed["closed_at"] == closed["last_alarm_at"] + 600
    assert closed["reason"] == "no alarm window for 600 s"
    assert [e for e, _ in hooks()] == ["incident.opened", "incident.closed"]
    assert client.get("/api/v1/incidents", params={"state": "open"}).json() == []
    with controller.session() as session:   # nothing left to remember about the cohort
        assert session.exec(select(IncidentCohort)).all() == []


def test_under_sampled_windows_are_skipped_and_a_warn_breaks_the_run(fleet, play, controller, client):
    fleet.add("cam-1")
    fleet.add("cam-2")
    play({"cam-1": "AAFFA", "cam-2": "AAWAA"})
    assert controller.process_incidents().opened != []
    [incident] = client.get("/api/v1/incidents").json()
    assert incident["cohort_key"] == "cam-1"


def test_a_tag_cohort_needs_min_devices_at_alarm_and_the_device_filter_finds_its_incidents(
        fleet, play, controller, client):
    for device in ("cam-1", "cam-2", "cam-3"):
        fleet.enroll(device, tags=["site-a", "fw-2"])
        fleet.hello(device)
    play({"cam-1": "AAA", "cam-2": "OOO", "cam-3": "OOO"})
    controller.process_incidents()
    assert {i["cohort_kind"] for i in client.get("/api/v1/incidents").json()} == {"device"}
    play({"cam-1": "A", "cam-2": "AAA"})
    controller.process_incidents()
    found = client.get("/api/v1/incidents").json()
    assert sorted((i["cohort_kind"], i["cohort_key"]) for i in found) == \
        [("device", "cam-1"), ("device", "cam-2"), ("tag", "fw-2"), ("tag", "site-a")]
    tag = next(i for i in found if i["cohort_key"] == "site-a")
    assert tag["devices"] == ["cam-1", "cam-2"]
    assert {i["cohort_key"] for i in client.get("/api/v1/incidents", params={"device_id": "cam-2"}).json()} == \
        {"cam-2", "fw-2", "site-a"}
    assert client.get("/api/v1/incidents", params={"device_id": "cam-3"}).json() == []
    evidence = client.get(f"/api/v1/incidents/{tag['id']}").json()["evidence"]
    assert {w["device_id"] for w in evidence} == {"cam-1", "cam-2"}


def test_only_the_configured_tags_form_cohorts(settings, clock, transport, fleet, play, client, tmp_path):
    fleet.enroll("cam-1", tags=["site-a", "fw-2"])
    fleet.enroll("cam-2", tags=["site-a", "fw-2"])
    play({"cam-1": "AAA", "cam-2": "AAA"})
    only = Controller(settings.model_copy(update={"incident_tags": ["site-a"]}), clock=clock,
                      transport_factory=lambda url, on_message: FakeTransport(), reconcile_in_background=False)
    try:
        only.process_incidents()
        with only.session() as session:
            keys = sorted((i.cohort_kind, i.cohort_key) for i in incidents.list_incidents(session))
    finally:
        only.stop()
    assert keys == [("device", "cam-1"), ("device", "cam-2"), ("tag", "site-a")]


def test_a_rerun_and_a_second_controller_on_the_same_database_change_nothing(
        fleet, play, controller, settings, clock, hooks):
    fleet.add("cam-1")
    play({"cam-1": "AAAA"})
    [incident_id] = controller.process_incidents().opened
    again = controller.process_incidents()
    assert (again.windows, again.opened, again.closed) == (0, [], [])
    other = second_controller(settings, clock)
    try:
        second = other.process_incidents()
    finally:
        other.stop()
    assert (second.windows, second.opened) == (0, [])
    with controller.session() as session:
        assert session.get(IncidentCursor, incidents.CURSOR).last_id == 4
        assert [i.id for i in incidents.list_incidents(session)] == [incident_id]
    assert [e for e, _ in hooks()] == ["incident.opened"]


def test_an_operator_closes_it_with_a_reason_audited_announced_and_k_new_windows_reopen(
        fleet, play, controller, client, hooks):
    fleet.add("cam-1")
    play({"cam-1": "AAA"})
    [incident_id] = controller.process_incidents().opened
    r = client.post(f"/api/v1/incidents/{incident_id}/close", json={"reason": "lens cleaned"})
    assert r.status_code == 200, r.text
    closed = r.json()
    assert closed["state"] == "closed" and closed["reason"] == f"closed by {ADMIN_ACTOR}: lens cleaned"
    again = client.post(f"/api/v1/incidents/{incident_id}/close", json={"reason": "twice"})
    assert again.status_code == 409 and again.json()["error"]["code"] == "conflict"
    with controller.session() as session:
        [entry] = audit.list_entries(session, action="incident.close")
    assert entry.target == f"incident:{incident_id}" and entry.details["reason"] == "lens cleaned"
    assert [e for e, _ in hooks()] == ["incident.opened", "incident.closed"]
    play({"cam-1": "AA"})
    assert controller.process_incidents().opened == []
    play({"cam-1": "A"})
    [reopened] = controller.process_incidents().opened
    assert reopened != incident_id


@pytest.mark.parametrize("body", [{}, {"reason": ""}, {"reason": "x", "extra": 1}])
def test_a_close_without_a_reason_is_refused(fleet, play, controller, client, body):
    fleet.add("cam-1")
    play({"cam-1": "AAA"})
    [incident_id] = controller.process_incidents().opened
    assert client.post(f"/api/v1/incidents/{incident_id}/close", json=body).status_code == 422
    assert client.get(f"/api/v1/incidents/{incident_id}").json()["state"] == "open"


def test_viewers_read_operators_close_and_unknown_ids_are_404(fleet, play, controller, client):
    fleet.add("cam-1")
    play({"cam-1": "AAA"})
    [incident_id] = controller.process_incidents().opened
    viewer = {"Authorization": "Bearer " + client.post("/api/v1/tokens", json={"name": "v", "role": "viewer"})
              .json()["token"]}
    assert client.get("/api/v1/incidents", headers=viewer).status_code == 200
    r = client.post(f"/api/v1/incidents/{incident_id}/close", json={"reason": "x"}, headers=viewer)
    assert r.status_code == 403
    missing = client.get("/api/v1/incidents/inc-000000000000")
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "not_found"
    assert client.get("/api/v1/incidents", params={"state": "stuck"}).status_code == 422


def test_a_window_that_arrives_behind_a_young_gap_in_the_ids_waits_for_it(fleet, play, controller, clock, bundle):
    fleet.add("cam-1")
    play({"cam-1": "AA"})
    fleet.telemetry("cam-1", 3, bundle=bundle, psi=0.5, level="alarm", requests=200)
    with controller.session() as session:   # as if window 2 were still being committed
        session.delete(session.get(TelemetryRecord, 2))
    young = controller.process_incidents()
    assert (young.windows, young.opened) == (1, [])
    clock.advance(incidents.SETTLE_S)
    assert controller.process_incidents().windows == 1   # the gap is old: it will not fill any more


def second_controller(settings, clock) -> Controller:
    return Controller(settings.model_copy(update={"data_dir": settings.data_dir.parent / "other"}), clock=clock,
                      transport_factory=lambda url, on_message: FakeTransport(), reconcile_in_background=False)


@pytest.mark.postgres
@pytest.mark.integration
@pytest.mark.parametrize("settings", ["postgresql"], indirect=True)
def test_on_postgres_a_controller_skips_the_pass_while_another_holds_the_cursor(fleet, play, controller, settings,
                                                                                clock, hooks):
    """(SQLite has no row locks: it serialises writers, and a second pass on a stale snapshot fails and retries.)"""
    assert controller.engine.dialect.name == "postgresql"
    fleet.add("cam-1")
    controller.process_incidents()   # the cursor row exists
    play({"cam-1": "AAA"})
    other = second_controller(settings, clock)
    try:
        with Session(controller.engine) as holder:
            holder.exec(select(IncidentCursor).with_for_update()).one()
            held = other.process_incidents()
            holder.rollback()
        assert (held.skipped_pass, held.windows, held.opened) == (True, 0, [])
        freed = other.process_incidents()
    finally:
        other.stop()
    assert (freed.skipped_pass, freed.windows, len(freed.opened)) == (False, 3, 1)
    assert controller.process_incidents().windows == 0
    assert [e for e, _ in hooks()] == ["incident.opened"]


# ------------------------------------------------------------------------------------ the CLI

@pytest.fixture
def run(client, capsys, monkeypatch):
    return cli_runner(capsys, monkeypatch, client, cli_incidents)


def test_the_cli_lists_shows_and_closes(fleet, play, controller, run):
    fleet.add("cam-1")
    play({"cam-1": "OAAA"})
    [incident_id] = controller.process_incidents().opened
    listed = run("incidents", "list", "--state", "open")
    assert incident_id in listed and "cam-1" in listed and "drifty" in listed and "2.0.0" in listed
    assert [i["id"] for i in json.loads(run("incidents", "list", "--json"))] == [incident_id]
    shown = run("incidents", "show", incident_id)
    assert "3 windows in a row at alarm with >= 100 samples" in shown and "latest 4 of 4 drift windows" in shown
    assert json.loads(run("incidents", "show", incident_id, "--json"))["evidence"][0]["drift_level"] == "ok"
    assert "no incident 'inc-nope'" in run("incidents", "show", "inc-nope", rc=1)
    closed = run("incidents", "close", incident_id, "--reason", "known cause")
    assert "closed (closed by" in closed and "known cause" in closed
    assert run("incidents", "list", "--state", "open").count(incident_id) == 0
    assert "Usage:" in run("incidents", "close", incident_id, rc=2)   # a reason is required



def test_an_incident_on_a_bundle_of_a_registry_model_asks_for_its_retraining(fleet, controller, client, clock,
                                                                             make_bundle, monkeypatch):
    """The loop's hand-over (docs/loop.md): the incident names the model, and the retraining service
    decides from the model's recipe (``auto``) whether a job is queued (tests/cloud/test_retraining.py)."""
    from edgefleet.cloud.services import retraining

    asked = []
    monkeypatch.setattr(retraining, "retrain_on_incident", lambda session, **kw: asked.append(kw))
    assert client.post("/api/v1/models", json={"name": "drifty"}).status_code == 201
    assert client.post("/api/v1/models/drifty/versions", json={"version": "2.0.0"}).status_code == 201
    built = make_bundle(name="drifty", version="2.0.0", build=8)
    r = client.post("/api/v1/bundles", params={"model": "drifty", "model_version": "2.0.0"}, content=built.data,
                    headers={"Content-Type": "application/octet-stream"})
    assert r.status_code == 201, r.text
    bundle = InstalledBundle(name="drifty", version="2.0.0", build=8, digest=built.digest, runtime="onnx")
    fleet.add("cam-9")
    for seq in range(1, 4):
        fleet.telemetry("cam-9", seq, bundle=bundle, psi=0.5, level="alarm", requests=200)
        clock.advance(STEP)
    [incident_id] = controller.process_incidents().opened
    assert asked == [{"incident_id": incident_id, "model_name": "drifty", "now": clock()}]
