"""Staged rollouts through the API with a fake clock and transport: devices are simulated at the
message level (status reports and telemetry windows into the real ingest path), the reconciler
runs when the test says so. The real-agent scenarios are in tests/integration/test_rollouts_agents.py."""

from __future__ import annotations

import json

import pytest

from edgefleet.protocol.messages import decode

from simfleet import Sim

QUICK = {"stages": [{"name": "canary", "select": "count", "count": 1, "soak_s": 300},
                    {"name": "half", "select": "percent", "percent": 50, "soak_s": 300},
                    {"name": "rest", "select": "rest"}]}


@pytest.fixture
def bundles(make_bundle, upload):
    old, new = make_bundle(name="det", version="1.0.0", build=1), make_bundle(name="det", version="1.1.0", build=2)
    upload(old)
    upload(new)
    return old, new


@pytest.fixture
def sim(fleet, transport, clock, bundles):
    return Sim(fleet, transport, clock, *bundles)


def create(client, bundle, policy=QUICK, **selector):
    r = client.post("/api/v1/rollouts", json={"bundle": bundle.digest, "selector": {"tags": ["site"], **selector},
                                              "policy": policy})
    assert r.status_code == 201, r.text
    return r.json()


def test_a_good_bundle_goes_through_every_stage(client, controller, sim, bundles):
    _, new = bundles
    ro = create(client, new)
    assert ro["state"] == "running" and [s["state"] for s in ro["stages"]][0] == "running"
    assert ro["devices"] == {"in_progress": 1, "queued": 9}
    done = sim.run(controller, client, ro["id"], ticks=150)
    assert done["state"] == "succeeded", (done["reason"], done["stages"])
    assert [s["state"] for s in done["stages"]] == ["passed", "passed", "passed"]
    assert [s["devices"] for s in done["stages"]] == [{"succeeded": 1}, {"succeeded": 5}, {"succeeded": 4}]
    verdicts = {v["gate"]: v["verdict"] for v in done["stages"][0]["verdicts"]}
    assert verdicts == {"install": "pass", "error_rate": "pass", "latency_p95": "pass", "drift_psi": "pass",
                        "predictions": "pass", "accuracy": "pass"}
    assert all(sim.running[d] is new for d in sim.ids)
    dep = client.get(f"/api/v1/deployments/{done['deployment_id']}").json()
    assert dep["status"] == "succeeded" and len(dep["targets"]) == 10


@pytest.mark.parametrize(("behaviour", "gate"), [({"errors": 0.3}, "error_rate"), ({"latency": 6.0}, "latency_p95")])
def test_a_bundle_bad_in_the_field_fails_at_the_canary_and_is_rolled_back(client, controller, sim, bundles,
                                                                           behaviour, gate):
    old, new = bundles
    sim.behaviour.update(behaviour)
    ro = create(client, new)
    done = sim.run(controller, client, ro["id"], ticks=40)
    assert done["state"] == "aborted", done["reason"]
    assert f"stage canary failed its gates ({gate}" in done["reason"]
    verdicts = {v["gate"]: v["verdict"] for v in done["stages"][0]["verdicts"]}
    assert verdicts[gate] == "fail"
    canary = [r for r in done["device_rows"] if r["stage_index"] == 0]
    assert len(canary) == 1 and canary[0]["state"] in ("reverting", "reverted")
    assert all(r["state"] == "skipped" for r in done["device_rows"] if r["stage_index"] != 0)
    # the canary got a signed order for the bundle it ran before, the others never got the new one
    assert sim.running[canary[0]["device_id"]] is old
    assert all(sim.running[d] is old for d in sim.ids)
    (rollback,) = done["rollback"]
    back = client.get(f"/api/v1/deployments/{rollback}").json()
    assert back["bundle_digest"] == old.digest and [t["device_id"] for t in back["targets"]] == [canary[0]["device_id"]]
    controller.reconcile(sim.clock())
    assert client.get(f"/api/v1/rollouts/{ro['id']}").json()["device_rows"][0]["state"] in ("reverted", "skipped")


@pytest.mark.parametrize(("latency", "verdict", "state"), [(6.0, "fail", "aborted"), (2.0, "pass", "succeeded")])
def test_baseline_before_compares_devices_with_themselves_before_the_update(client, controller, sim, bundles, latency,
                                                                             verdict, state):
    """One stage to every device leaves no control cohort; with ``baseline = "before"`` the gates
    compare each device's windows on the new bundle with its own windows before the order."""
    sim.behaviour["latency"] = latency
    for _ in range(8):   # history on the old bundle
        sim.windows()
        sim.clock.advance(10)
    policy = {"stages": [{"name": "all", "select": "rest", "soak_s": 200}],
              "gates": {"baseline": "before", "before_s": 600}}
    ro = create(client, bundles[1], policy=policy)
    done = sim.run(controller, client, ro["id"], ticks=40)
    assert done["state"] == state, done["reason"]
    latency_gate = next(v for v in done["stages"][0]["verdicts"] if v["gate"] == "latency_p95")
    assert latency_gate["verdict"] == verdict, latency_gate
    assert latency_gate["evidence"]["control_windows"] >= 8 * 10 - 10   # the same devices, before


def test_a_rollout_to_protected_devices_waits_for_someone_else_to_approve(client, controller, fleet, transport,
                                                                          clock, bundles):
    old, new = bundles
    sim = Sim(fleet, transport, clock, old, new, n=3, tags=("site", "production"))
    ro = create(client, new)
    assert ro["state"] == "waiting_approval" and ro["protected_tags"] == ["production"]
    controller.reconcile(clock())
    assert sim.obey() == []                        # nothing goes out before approval
    refused = client.post(f"/api/v1/rollouts/{ro['id']}/approve")
    assert refused.status_code == 403 and "other than its creator" in refused.json()["error"]["message"]
    operator = client.post("/api/v1/tokens", json={"name": "second", "role": "operator"}).json()["token"]
    refused = client.post(f"/api/v1/rollouts/{ro['id']}/approve", headers={"Authorization": f"Bearer {operator}"})
    assert refused.status_code == 403 and "needs the approver role" in refused.json()["error"]["message"]
    other = client.post("/api/v1/tokens", json={"name": "second", "role": "approver"}).json()["token"]
    approved = client.post(f"/api/v1/rollouts/{ro['id']}/approve", headers={"Authorization": f"Bearer {other}"})
    assert approved.status_code == 200 and approved.json()["state"] == "running"
    assert approved.json()["approved_by"] == "approver:second" and len(sim.obey()) == 1


def test_pace_limits_orders_per_minute(client, controller, sim, bundles):
    _, new = bundles
    policy = {"stages": [{"name": "all", "select": "rest"}], "pace": {"max_per_minute": 2},
              "gates": {"runtime": {"enabled": False}, "behaviour": {"enabled": False}}}
    ro = create(client, new, policy=policy)
    assert ro["devices"] == {"in_progress": 1, "queued": 9} and len(sim.obey()) == 1   # one at once
    counts = []
    for _ in range(4):
        sim.clock.advance(30)
        controller.reconcile(sim.clock())
        counts.append(len(sim.obey()))
    assert counts == [1, 1, 1, 1]   # then two a minute


def test_outside_its_maintenance_window_nothing_is_ordered(client, controller, sim, bundles, clock):
    _, new = bundles
    hour = int((clock() // 3600 + 2) % 24)   # a window two hours from now (UTC), one hour long
    policy = {"stages": [{"name": "all", "select": "rest"}],
              "windows": [{"cron": f"0 {hour} * * *", "duration_s": 3600, "timezone": "UTC"}]}
    ro = create(client, new, policy=policy)
    assert ro["devices"] == {"queued": 10} and ro["reason"] == "waiting for a maintenance window"
    clock.advance(2 * 3600 - clock() % 3600 + 60)
    controller.reconcile(clock())
    assert len(sim.obey()) == 10


def test_abort_criteria_judge_the_devices_executed_so_far(client, controller, sim, bundles):
    _, new = bundles
    sim.behaviour["fail_install"] = True
    policy = {"stages": [{"name": "all", "select": "rest"}], "abort": {"threshold_percent": 50, "min_executed": 3},
              "gates": {"runtime": {"enabled": False}, "behaviour": {"enabled": False}}}
    ro = create(client, new, policy=policy)
    controller.reconcile(sim.clock())
    assert len(sim.obey()) == 10
    controller.reconcile(sim.clock())
    done = client.get(f"/api/v1/rollouts/{ro['id']}").json()
    assert done["state"] == "aborted" and done["reason"].startswith("abort criteria: 10 of 10 executed devices failed")


def test_failed_installs_are_retried_with_backoff(client, controller, sim, bundles, clock):
    _, new = bundles
    sim.behaviour["fail_install"] = True
    policy = {"stages": [{"name": "all", "select": "count", "count": 1}, {"name": "rest", "select": "rest"}],
              "retries": {"failed": {"attempts": 2, "backoff_s": 60}}, "abort": {"min_executed": 50},
              "gates": {"runtime": {"enabled": False}, "behaviour": {"enabled": False}}}
    ro = create(client, new, policy=policy)
    assert sim.obey() == [ro["device_rows"][[r["stage_index"] for r in ro["device_rows"]].index(0)]["device_id"]]
    attempts = []
    for _ in range(8):
        clock.advance(40)
        controller.reconcile(clock())
        attempts += sim.obey()
    assert len(attempts) == 2                  # after 60 s, then after 120 s more; then no more
    row = next(r for r in client.get(f"/api/v1/rollouts/{ro['id']}").json()["device_rows"] if r["stage_index"] == 0)
    assert (row["state"], row["attempts"]) == ("failed", 3)


def test_pause_resume_promote_and_their_conflicts(client, controller, sim, bundles):
    _, new = bundles
    policy = {"stages": [{"name": "canary", "select": "count", "count": 1, "on_success": "pause"},
                         {"name": "rest", "select": "rest"}],
              "gates": {"runtime": {"enabled": False}, "behaviour": {"enabled": False}}}
    ro = create(client, new, policy=policy)
    sim.obey()
    controller.reconcile(sim.clock())
    ro = client.get(f"/api/v1/rollouts/{ro['id']}").json()
    assert ro["state"] == "paused" and ro["reason"] == "stage canary passed; promote to go on"
    assert client.post(f"/api/v1/rollouts/{ro['id']}/pause").status_code == 409
    promoted = client.post(f"/api/v1/rollouts/{ro['id']}/promote").json()
    assert promoted["state"] == "running" and promoted["stage_index"] == 1
    assert len(sim.obey()) == 9
    assert client.post(f"/api/v1/rollouts/{ro['id']}/pause", json={"reason": "lunch"}).json()["reason"] == \
        "paused by admin:admin: lunch"
    resumed = client.post(f"/api/v1/rollouts/{ro['id']}/resume").json()   # the nine committed meanwhile
    assert resumed["state"] == "succeeded" and resumed["devices"] == {"succeeded": 10}


def test_advancing_twice_orders_nothing_twice(client, controller, sim, bundles):
    _, new = bundles
    ro = create(client, new, policy={"stages": [{"name": "all", "select": "rest"}]})
    for _ in range(3):
        controller.reconcile(sim.clock())
    orders = [decode("cmd", p).device_id for _, p in sim.transport.published]
    assert sorted(orders) == sorted(set(orders)) and len(orders) == 10
    assert client.get(f"/api/v1/rollouts/{ro['id']}").json()["devices"] == {"in_progress": 10}


@pytest.mark.parametrize(("policy", "where"), [
    ({"stages": [{"name": "a", "select": "count", "count": 1}]}, "body.policy"),
    ({"stages": [{"name": "a", "select": "rest", "soak": 1}]}, "body.policy.stages.0.soak"),
    ({"stages": [{"name": "a", "select": "count"}, {"name": "b", "select": "rest"}]}, "body.policy.stages.0"),
    ({"stages": [{"name": "a", "select": "rest"}], "windows": [{"cron": "61 * * * *", "duration_s": 60}]},
     "body.policy.windows.0.cron"),
    ({"stages": [{"name": "a", "select": "rest"}], "pace": {"max_per_minute": 0}}, "body.policy.pace.max_per_minute"),
])
def test_a_bad_policy_is_refused_with_its_location_and_nothing_is_created(client, sim, bundles, policy, where):
    r = client.post("/api/v1/rollouts", json={"bundle": bundles[1].digest, "policy": policy})
    assert r.status_code == 422 and r.json()["error"]["where"].startswith(where), r.json()
    assert client.get("/api/v1/rollouts").json() == [] and sim.obey() == []


def test_a_rollout_starts_from_a_named_template(client, sim, bundles):
    templates = client.get("/api/v1/rollouts/templates").json()
    assert {"canary-half-rest", "careful", "all-at-once"} <= set(templates)
    careful = templates["careful"]["policy"]
    r = client.post("/api/v1/rollouts", json={"bundle": bundles[1].digest, "selector": {"tags": ["site"]},
                                              "template": "careful"})
    assert r.status_code == 201 and r.json()["policy"] == careful
    assert [s["name"] for s in r.json()["stages"]] == [s["name"] for s in careful["stages"]]


@pytest.mark.parametrize(("body", "message"), [({"template": "nope"}, "no policy template 'nope'"),
                                               ({"template": "careful", "policy": {"stages": [{"name": "a",
                                                                                               "select": "rest"}]}},
                                                "a policy or a template, not both")])
def test_a_wrong_template_is_refused(client, sim, bundles, body, message):
    r = client.post("/api/v1/rollouts", json={"bundle": bundles[1].digest} | body)
    assert r.status_code == 422 and message in r.json()["error"]["message"], r.json()
    assert client.get("/api/v1/rollouts").json() == []


def test_webhooks_hear_of_stage_passes_gate_failures_and_the_end(client, controller, sim, bundles):
    sent: list[dict] = []

    def receiver(url, body, headers, timeout_s):
        sent.append(json.loads(body))
        return 200

    controller.webhook_post = receiver
    hook = client.post("/api/v1/webhooks", json={"url": "https://hooks.example/edgefleet",
                                                 "events": ["rollout.gate_failed", "rollout.aborted",
                                                            "rollout.stage_passed", "rollout.succeeded"]})
    assert hook.status_code == 201, hook.text
    sim.behaviour.update(latency=6.0)
    bad = create(client, bundles[1])
    assert sim.run(controller, client, bad["id"], ticks=40)["state"] == "aborted"
    controller.deliver_webhooks(sim.clock())
    events = [(m["event"], m["data"]) for m in sent]
    assert [e for e, _ in events] == ["rollout.gate_failed", "rollout.aborted"], events
    failed, aborted = events[0][1], events[1][1]
    assert failed["rollout_id"] == bad["id"] and failed["stage"] == "canary" and failed["gate"] == "latency_p95"
    assert aborted["bundle_digest"] == bundles[1].digest and len(aborted["rollback"]) == 1
    assert aborted["reason"].startswith("stage canary failed its gates")

    sim.behaviour.update(latency=2.0)
    good = create(client, bundles[1])
    assert sim.run(controller, client, good["id"], ticks=150)["state"] == "succeeded"
    controller.deliver_webhooks(sim.clock())
    later = [(m["event"], m["data"].get("stage")) for m in sent[2:]]
    assert later == [("rollout.stage_passed", "canary"), ("rollout.stage_passed", "half"),
                     ("rollout.stage_passed", "rest"), ("rollout.succeeded", None)]
    assert sent[-1]["data"]["succeeded"] == 10


@pytest.mark.parametrize(("heals", "state"), [(True, "succeeded"), (False, "aborted")])
def test_a_rollout_back_to_health_is_judged_on_the_drifted_devices_recovering(client, controller, sim, bundles,
                                                                              heals, state):
    """The heal policy (docs/loop.md): the canary is the drifted cohort, judged against itself before
    the update, and passes only when the devices' own drift verdicts fall below warn."""
    from edgefleet.cloud.services.rollouts.policy import heal_policy

    old, new = bundles
    sim.drifted = {"d03", "d07"}
    sim.behaviour["heals"] = heals
    for _ in range(6):   # history on the old bundle, at alarm on the drifted devices
        sim.windows()
        sim.clock.advance(10)
    policy = heal_policy(sorted(sim.drifted), soak_s=60, min_windows=4).model_dump(mode="json")
    ro = create(client, new, policy=policy)
    assert [r["device_id"] for r in ro["device_rows"] if r["stage_index"] == 0] == ["d03", "d07"]
    done = sim.run(controller, client, ro["id"], ticks=60)
    assert done["state"] == state, done["reason"]
    recovery = next(v for v in done["stages"][0]["verdicts"] if v["gate"] == "recovery")
    if heals:
        assert recovery["verdict"] == "pass" and recovery["evidence"]["recovered"] == ["d03", "d07"]
        assert [s["devices"] for s in done["stages"]] == [{"succeeded": 2}, {"succeeded": 8}]
        assert all(sim.running[d] is new for d in sim.ids)
    else:
        assert recovery["verdict"] == "fail" and "still at alarm" in done["reason"]
        assert all(sim.running[d] is old for d in sim.ids)   # the canary rolled back, the rest never got it


@pytest.mark.parametrize(("max_soak_s", "state"), [(None, "paused"), (400, "succeeded")])
def test_an_inconclusive_stage_collects_telemetry_up_to_its_max_soak(client, controller, sim, bundles, max_soak_s,
                                                                      state):
    """At the end of a 30 s soak the canary has 3 of the 20 windows its gates need: without
    ``max_soak_s`` the rollout pauses for a person; with it, the stage goes on collecting until the
    gates decide (the sequential test may be read after every window)."""
    policy = {"stages": [{"name": "canary", "select": "count", "count": 1, "soak_s": 30, "max_soak_s": max_soak_s},
                         {"name": "rest", "select": "rest"}],
              "gates": {"statistics": {"min_windows": 20}}}
    ro = create(client, bundles[1], policy=policy)
    done = sim.run(controller, client, ro["id"], ticks=80)
    assert done["state"] == state, done["reason"]
    if max_soak_s is None:
        assert done["reason"] == "stage canary: the gates are inconclusive after its soak; promote or abort"
        (canary,) = [r["device_id"] for r in done["device_rows"] if r["stage_index"] == 0]
        assert all(sim.running[d] is bundles[0] for d in sim.ids if d != canary)   # the rest waits
    else:
        latency = next(v for v in done["stages"][0]["verdicts"] if v["gate"] == "latency_p95")
        assert latency["verdict"] == "pass" and latency["evidence"]["canary_windows"] >= 20


def test_max_soak_shorter_than_the_soak_is_refused(client, sim, bundles):
    policy = {"stages": [{"name": "all", "select": "rest", "soak_s": 60, "max_soak_s": 30}]}
    r = client.post("/api/v1/rollouts", json={"bundle": bundles[1].digest, "selector": {"tags": ["site"]},
                                              "policy": policy})
    assert r.status_code == 422 and "max_soak_s (30) is shorter than soak_s (60)" in r.text
