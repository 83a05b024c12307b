"""Rollouts back to health from drift incidents (docs/rollouts.md §4): incidents opened by the real
pass over simulated telemetry, a rollout that names them takes their drifted devices first and, with
no selector, the rest of the cohort on the failing bundles (not the whole fleet); the refusals; the
incident's page lists the rollouts that name it; ``edgefleet rollout create --incident``.

The fleet: d00-d05 run det 1.0.0, d06 det 0.9.0, d07 cls 1.0.0 (another model); every one is tagged ``site``."""

from __future__ import annotations

import json

import pytest

from edgefleet.cloud.cli import deployments as cli_deployments
from edgefleet.cloud.cli import incidents as cli_incidents
from edgefleet.cloud.cli import rollouts as cli_rollouts
from edgefleet.cloud.services.rollouts.policy import heal_policy

from cloudkit import cli_runner
from simfleet import Sim

ON_OLD = [f"d0{i}" for i in range(6)]
ON_OLDER, ON_OTHER = "d06", "d07"


@pytest.fixture
def settings(settings):
    """The simulated windows carry 50 samples: let them count for incidents."""
    return settings.model_copy(update={"incident_min_samples": 20})


@pytest.fixture
def bundles(make_bundle, upload):
    built = {"old": make_bundle(name="det", version="1.0.0", build=2),
             "new": make_bundle(name="det", version="1.1.0", build=3),
             "older": make_bundle(name="det", version="0.9.0", build=1),
             "other": make_bundle(name="cls", version="1.0.0", build=1)}
    for b in built.values():
        upload(b)
    return built


@pytest.fixture
def sim(fleet, transport, clock, bundles):
    sim = Sim(fleet, transport, clock, bundles["old"], bundles["new"], n=8)
    for device, bundle in ((ON_OLDER, "older"), (ON_OTHER, "other")):
        sim.running[device] = bundles[bundle]
        sim.hello(device)
    return sim


def drift(sim: Sim, controller, *devices: str, windows: int = 6) -> dict[str, str]:
    """``devices`` at alarm for ``windows`` windows: ``{device: id}`` of the device incidents that opened."""
    sim.drifted = set(devices)
    for _ in range(windows):
        sim.windows()
        sim.clock.advance(60)
    opened = controller.process_incidents().opened
    assert opened, "no incident opened"
    shown = {i["id"]: i for i in sim.fleet.client.get("/api/v1/incidents").json()}
    found = {shown[i]["cohort_key"]: i for i in opened if shown[i]["cohort_kind"] == "device"}
    assert sorted(found) == sorted(devices), [shown[i] for i in opened]
    return found


def create(client, bundle, status: int = 201, **body) -> dict:
    r = client.post("/api/v1/rollouts", json={"bundle": bundle.digest, **body})
    assert r.status_code == status, r.text
    return r.json()


def stage_devices(ro: dict) -> list[list[str]]:
    return [[r["device_id"] for r in ro["device_rows"] if r["stage_index"] == s["index"]] for s in ro["stages"]]


def test_one_incident_heals_its_device_first_then_the_rest_of_the_cohort_on_the_failing_bundle(
        client, controller, sim, bundles):
    inc = drift(sim, controller, "d03")["d03"]
    ro = create(client, bundles["new"], incidents=[inc])
    assert ro["incidents"] == [inc] and ro["note"] == f"back to health after {inc}"
    # the heal template: the drifted devices judged against themselves before, on recovery
    assert [s["name"] for s in ro["stages"]] == ["drifted", "rest"]
    canary = ro["policy"]["stages"][0]
    assert canary["select"] == "devices" and canary["devices"] == ["d03"]
    assert canary["gates"]["baseline"] == "before" and canary["gates"]["recovery"]["enabled"]
    # no selector given: the devices on the failing bundle, not d06 (another version) nor d07 (another model)
    assert ro["selector"]["device_ids"] == ON_OLD
    assert sorted(r["device_id"] for r in ro["device_rows"]) == ON_OLD
    assert [r["device_id"] for r in ro["device_rows"] if r["state"] == "in_progress"] == ["d03"]
    shown = client.get(f"/api/v1/rollouts/{ro['id']}").json()
    assert shown["incidents"] == [inc]
    assert client.get("/api/v1/rollouts").json()[0]["incidents"] == [inc]
    [entry] = client.get("/api/v1/audit", params={"action": "rollout.create"}).json()
    assert entry["details"]["incidents"] == [inc]


def test_two_incidents_on_two_bundles_make_one_canary_of_both_and_the_rest_of_both_cohorts(
        client, controller, sim, bundles):
    found = drift(sim, controller, "d02", ON_OLDER)
    ids = [found["d02"], found[ON_OLDER]]
    ro = create(client, bundles["new"], incidents=ids, note="det 1.1.0 retrained on site data")
    assert ro["incidents"] == ids and ro["note"] == "det 1.1.0 retrained on site data"
    assert ro["policy"]["stages"][0]["devices"] == ["d02", ON_OLDER]
    drifted, rest = stage_devices(ro)
    assert drifted == ["d02", ON_OLDER]
    assert sorted(r["device_id"] for r in ro["device_rows"]) == sorted([*ON_OLD, ON_OLDER])   # not d07
    assert rest == []   # the rest waits for the canary
    assert ON_OTHER not in ro["selector"]["device_ids"]


def test_a_filled_heal_policy_runs_to_the_end_on_the_cohort_only(client, controller, sim, bundles):
    inc = drift(sim, controller, "d03")["d03"]
    policy = heal_policy([], soak_s=60, min_windows=4).model_dump(mode="json")
    assert policy["stages"][0]["devices"] is None
    ro = create(client, bundles["new"], incidents=[inc], policy=policy)
    assert ro["policy"]["stages"][0]["devices"] == ["d03"]
    sim.drifted = {"d03"}   # still drifting: the new bundle heals it
    done = sim.run(controller, client, ro["id"], ticks=80)
    assert done["state"] == "succeeded", (done["reason"], done["stages"])
    recovery = next(v for v in done["stages"][0]["verdicts"] if v["gate"] == "recovery")
    assert recovery["verdict"] == "pass" and recovery["evidence"]["recovered"] == ["d03"]
    assert [s["devices"] for s in done["stages"]] == [{"succeeded": 1}, {"succeeded": 5}]
    assert all(sim.running[d] is bundles["new"] for d in ON_OLD)
    assert sim.running[ON_OLDER] is bundles["older"] and sim.running[ON_OTHER] is bundles["other"]


def test_an_explicit_policy_gets_its_devices_stage_filled_and_a_given_selector_is_kept(client, controller, sim,
                                                                                        bundles):
    inc = drift(sim, controller, "d03")["d03"]
    policy = {"stages": [{"name": "cohort", "select": "devices", "soak_s": 30}, {"name": "rest", "select": "rest"}]}
    ro = create(client, bundles["new"], incidents=[inc], policy=policy, selector={"tags": ["site"]})
    assert ro["policy"]["stages"][0] == ro["policy"]["stages"][0] | {"name": "cohort", "devices": ["d03"]}
    assert ro["selector"]["tags"] == ["site"] and ro["selector"]["device_ids"] == []
    assert stage_devices(ro)[0] == ["d03"]
    assert {r["device_id"] for r in ro["device_rows"]} == {*ON_OLD, ON_OLDER, ON_OTHER}   # the whole tag


def test_refusals_name_what_is_wrong_and_create_nothing(client, controller, sim, bundles):
    inc = drift(sim, controller, "d03")["d03"]
    unknown = create(client, bundles["new"], 404, incidents=[inc, "inc-0123456789ab"])["error"]
    assert "inc-0123456789ab" in unknown["message"] and unknown["where"] == "incidents"
    same = create(client, bundles["old"], 409, incidents=[inc])["error"]
    assert same["message"] == f"{inc} is about this bundle; roll out the bundle that fixes it"
    outside = create(client, bundles["new"], 409, incidents=[inc],
                     selector={"tags": ["site"], "exclude_device_ids": ["d03"]})["error"]
    assert "d03" in outside["message"] and outside["where"] == "selector"
    no_devices = {"stages": [{"name": "drifted", "select": "devices"}, {"name": "rest", "select": "rest"}]}
    for body in ({"policy": no_devices}, {"template": "heal"}):
        refused = create(client, bundles["new"], 400, selector={"tags": ["site"]}, **body)["error"]
        assert refused["code"] == "invalid_request" and refused["where"] == "policy.stages.0.devices"
        assert "'drifted' selects devices but lists none" in refused["message"] and "incidents" in refused["hint"]
    too_many = create(client, bundles["new"], 422, incidents=[f"inc-{i:012x}" for i in range(17)])["error"]
    assert too_many["where"] == "body.incidents"
    assert client.get("/api/v1/rollouts").json() == []


def test_the_incident_lists_the_rollouts_that_name_it(client, controller, sim, bundles, capsys, monkeypatch):
    found = drift(sim, controller, "d02", "d04")
    other = create(client, bundles["new"], incidents=[found["d04"]])
    assert client.post(f"/api/v1/rollouts/{other['id']}/cancel").status_code == 200
    sim.clock.advance(1)
    ro = create(client, bundles["new"], incidents=[found["d02"], found["d04"]])
    shown = client.get(f"/api/v1/incidents/{found['d02']}").json()
    assert shown["rollouts"] == [{"id": ro["id"], "state": "running", "bundle_label": "det 1.1.0+3"}]
    assert [r["id"] for r in client.get(f"/api/v1/incidents/{found['d04']}").json()["rollouts"]] == \
        [ro["id"], other["id"]]
    run = cli_runner(capsys, monkeypatch, client, cli_incidents)
    assert f"rollouts     {ro['id']} (det 1.1.0+3, running)" in run("incidents", "show", found["d02"])


def test_cli_create_with_two_incidents_uses_the_heal_template_and_show_names_them(
        client, controller, sim, bundles, capsys, monkeypatch):
    found = drift(sim, controller, "d02", "d05")
    run = cli_runner(capsys, monkeypatch, client, cli_rollouts, cli_deployments)
    assert "heal" in run("rollout", "templates") and "drifted > rest" in run("rollout", "templates")
    ro = json.loads(run("rollout", "create", "det:1.1.0", "--incident", found["d05"], "--incident", found["d02"],
                        "--json"))
    assert ro["incidents"] == [found["d05"], found["d02"]]
    assert ro["policy"]["stages"][0]["devices"] == ["d02", "d05"] and ro["selector"]["device_ids"] == ON_OLD
    shown = run("rollout", "show", ro["id"])
    assert f"incidents  {found['d05']}, {found['d02']}" in shown
    err = run("rollout", "create", "det:1.1.0", "--incident", "inc-0123456789ab", rc=1)
    assert "no incident 'inc-0123456789ab'" in err
