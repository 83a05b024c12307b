"""A/B experiments: the pure parts (arm assignment, the results from windows) on their own, then
through the API and the CLI with a fake clock and transport and simulated devices (simfleet.Sim:
arm A is the bundle the devices start on, arm B the one whose behaviour the test sets)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from edgefleet.cloud.cli import experiments as cli_experiments
from edgefleet.cloud.cli import main as cli
from edgefleet.cloud.services import webhooks
from edgefleet.cloud.services.experiment_results import Verdict, compare_arms, verdict
from edgefleet.cloud.services.experiments import assign_arms
from edgefleet.cloud.services.rollouts.gates import WindowSample
from edgefleet.cloud.services.rollouts.sequential import SequentialResult
from edgefleet.cloud.vocabulary import Arm
from edgefleet.protocol.messages import decode

from cloudkit import CliClient
from simfleet import Sim

# ------------------------------------------------------------------------------------ pure parts

IDS = [f"d{i:03d}" for i in range(40)]


def test_arms_come_from_a_stable_shuffle_with_the_split_share_on_b():
    arms = assign_arms("ex-1", IDS, split_percent=25)
    assert arms == assign_arms("ex-1", list(reversed(IDS)), split_percent=25)   # the order given does not matter
    assert sum(a == Arm.B for a in arms.values()) == 10 and len(arms) == 40
    assert arms != assign_arms("ex-2", IDS, split_percent=25)                   # another experiment, other arms
    first_ten = {d for d, a in arms.items() if a == Arm.B}
    assert first_ten != set(IDS[:10])                                             # not the ids that sort first


def test_a_cohort_cap_takes_the_first_devices_of_the_shuffle_and_each_arm_keeps_one():
    capped = assign_arms("ex-1", IDS, split_percent=50, cohort_size=6)
    assert len(capped) == 6 and sum(a == Arm.B for a in capped.values()) == 3
    assert set(capped) == set(list(assign_arms("ex-1", IDS, split_percent=50, cohort_size=7))[:6])
    assert sorted(assign_arms("ex-1", IDS[:3], split_percent=1).values()) == [Arm.A, Arm.A, Arm.B]
    assert sorted(assign_arms("ex-1", IDS[:3], split_percent=99).values()) == [Arm.A, Arm.B, Arm.B]
    assert assign_arms("ex-1", IDS[:1], split_percent=50) == {}


def windows(values_a, values_b, *, metric="p95_ms", predictions_a=None, predictions_b=None):
    """Samples alternating between the arms, one device per arm and window."""
    samples = []
    for i, (a, b) in enumerate(zip(values_a, values_b, strict=True)):
        for arm_b, value, preds in ((False, a, predictions_a), (True, b, predictions_b)):
            fields = {"p95_ms": None, "psi": None, "requests": 100, "errors": 0}
            if metric == "errors":
                fields["errors"] = value
            else:
                fields[metric] = value
            samples.append(WindowSample(device_id=f"{'b' if arm_b else 'a'}{i % 5}", canary=arm_b, window_end=float(i),
                                        predictions=dict(preds or {}), **fields))
    return samples


def by_metric(results):
    return {m.metric: m for m in results.metrics}


@pytest.mark.parametrize(("factor", "expected"), [(3.0, Verdict.B_WORSE), (1 / 3, Verdict.B_BETTER),
                                                  (1.0, Verdict.NO_DIFFERENCE_YET)])
def test_the_results_of_a_metric(factor, expected):
    rng = np.random.default_rng(3)
    a = rng.lognormal(np.log(4.0), 0.2, 60)
    b = rng.lognormal(np.log(4.0 * factor), 0.2, 60)
    latency = by_metric(compare_arms(windows(a, b), alpha=0.05, min_windows=20))["latency_p95"]
    assert latency.verdict == expected
    assert (latency.windows_a, latency.windows_b) == (60, 60)
    assert math.isclose(latency.mean_a, a.mean()) and math.isclose(latency.mean_b, b.mean())
    assert math.isclose(latency.difference, b.mean() - a.mean())
    assert latency.lower < latency.difference < latency.upper
    if expected == Verdict.B_WORSE:
        assert latency.lower > 0 and latency.p_value <= 0.05
    elif expected == Verdict.B_BETTER:
        assert latency.upper < 0 and latency.p_value <= 0.05
    else:
        assert latency.lower < 0 < latency.upper and latency.p_value > 0.05


def test_too_few_windows_give_no_verdict_and_windows_without_the_metric_do_not_count():
    samples = windows([4.0] * 19, [12.0] * 19)
    results = by_metric(compare_arms(samples, alpha=0.05, min_windows=20))
    latency = results["latency_p95"]
    assert latency.verdict == Verdict.TOO_FEW_WINDOWS and latency.p_value == 1.0
    assert latency.lower is None and latency.upper is None and latency.difference == 8.0
    assert results["drift_psi"].windows_a == 0 and results["drift_psi"].mean_a is None   # no PSI in these windows
    assert results["error_rate"].windows_a == 19   # every window has requests
    quiet = [WindowSample("a0", False, 1.0, requests=0, errors=0, p95_ms=None, psi=None)]
    assert by_metric(compare_arms(quiet, alpha=0.05, min_windows=20))["error_rate"].windows_a == 0


def test_error_rates_are_compared_per_window():
    rng = np.random.default_rng(5)
    errors = by_metric(compare_arms(windows(rng.binomial(100, 0.01, 50), rng.binomial(100, 0.2, 50), metric="errors"),
                                    alpha=0.05, min_windows=20))["error_rate"]
    assert errors.verdict == Verdict.B_WORSE and errors.mean_b > 0.15 > 0.05 > errors.mean_a


@pytest.mark.parametrize(("lower", "upper", "looks", "expected"), [
    (-math.inf, math.inf, 0, Verdict.TOO_FEW_WINDOWS), (0.1, 0.5, 3, Verdict.B_WORSE),
    (-0.5, -0.1, 3, Verdict.B_BETTER), (-0.1, 0.1, 3, Verdict.NO_DIFFERENCE_YET), (0.3, 0.2, 3, Verdict.INCONSISTENT)])
def test_the_verdict_reads_the_confidence_sequence(lower, upper, looks, expected):
    assert verdict(SequentialResult(30, 30, (lower + upper) / 2, lower, upper, 0.5, looks)) == expected


def test_the_prediction_distributions_are_compared_by_jensen_shannon():
    same = compare_arms(windows([1.0] * 5, [1.0] * 5, predictions_a={"cat": 60, "dog": 40},
                                predictions_b={"cat": 30, "dog": 20}), alpha=0.05, min_windows=20).predictions
    assert (same.predictions_a, same.predictions_b) == (500, 250) and same.js is not None and same.js < 1e-3
    apart = compare_arms(windows([1.0] * 5, [1.0] * 5, predictions_a={"cat": 10}, predictions_b={"dog": 10}),
                         alpha=0.05, min_windows=20).predictions
    assert apart.js is not None and apart.js > 0.9
    assert compare_arms(windows([1.0], [1.0], predictions_a={"cat": 1}), alpha=0.05,
                        min_windows=20).predictions.js is None


# ------------------------------------------------------------------------------------ through the API

@pytest.fixture
def bundles(make_bundle, upload):
    a, b = make_bundle(name="det", version="1.0.0", build=1), make_bundle(name="det", version="1.1.0", build=2)
    upload(a)
    upload(b)
    return a, b


@pytest.fixture
def sim(fleet, transport, clock, bundles):
    return Sim(fleet, transport, clock, *bundles)


@pytest.fixture
def received(controller):
    """Every webhook request body, after ``controller.deliver_webhooks()`` (one webhook subscribed to all)."""
    sent: list[dict] = []

    def receiver(url, body, headers, timeout_s):
        sent.append(json.loads(body))
        return 200

    controller.webhook_post = receiver
    with controller.session() as session:
        webhooks.create_webhook(session, url="https://hooks.example.com/x", events=["*"], actor="admin:test",
                                now=controller.now())
    return sent


def create(client, a, b, **extra):
    body = {"bundle_a": a.digest, "bundle_b": b.digest, "selector": {"tags": ["site"]}, "duration_s": 3600} | extra
    r = client.post("/api/v1/experiments", json=body)
    assert r.status_code == 201, r.text
    return r.json()


def orders(sim, action="install"):
    """(device, deployment, bundle digest) of the orders published since the simulator last obeyed."""
    found = []
    for _topic, payload in sim.transport.published[sim.seen:]:
        order = decode("cmd", payload).order.signed
        if order.action == action:
            found.append((order.device_id, order.deployment_id, order.bundle_digest))
    return sorted(found)


def arms_of(ex):
    return {arm: sorted(r["device_id"] for r in ex["device_rows"] if r["arm"] == arm) for arm in ("a", "b")}


def test_the_cohort_is_split_and_only_devices_off_their_arms_bundle_get_an_order(client, controller, sim, bundles):
    a, b = bundles
    ex = create(client, a, b)
    assert ex["state"] == "running" and ex["split_percent"] == 50 and ex["name"] == "det 1.0.0 vs det 1.1.0"
    assert ex["devices"] == {"a": {"running": 5}, "b": {"ordered": 5}} and ex["skipped"] == 0
    arms = arms_of(ex)
    assert orders(sim) == [(d, ex["deployment_b_id"], b.digest) for d in arms["b"]]   # arm A already runs A
    dep = client.get(f"/api/v1/deployments/{ex['deployment_b_id']}").json()
    assert dep["target"] == f"experiment {ex['id']} arm B" and dep["bundle_digest"] == b.digest
    sim.obey()
    controller.reconcile(sim.clock())
    ex = client.get(f"/api/v1/experiments/{ex['id']}").json()
    assert ex["devices"] == {"a": {"running": 5}, "b": {"running": 5}}
    assert all(sim.running[d] is b for d in arms["b"]) and all(sim.running[d] is a for d in arms["a"])
    # every target is final, yet the arm deployment stays active: its status follows the experiment
    assert client.get(f"/api/v1/deployments/{ex['deployment_b_id']}").json()["status"] == "active"
    for _ in range(3):
        controller.reconcile(sim.clock())
    assert orders(sim) == []   # advancing again orders nothing again


def test_a_cohort_cap_and_split_and_devices_that_cannot_take_part(client, controller, fleet, sim, bundles):
    a, b = bundles
    sim.running["d03"] = b          # already on B
    sim.hello("d03")
    fleet.enroll("odd", tags=["site"])
    fleet.hello("odd", runtimes=("tflite",))
    ex = create(client, a, b, cohort_size=6, split_percent=34)
    rows = {r["device_id"]: r for r in ex["device_rows"]}
    assert rows["odd"]["arm"] is None and rows["odd"]["state"] == "skipped"
    assert rows["odd"]["reason"].startswith("cannot run bundle A: ")
    assert ex["skipped"] == 1 and len(rows) == 7                          # 6 take part, 4 are left for later
    arms = arms_of(ex)
    assert (len(arms["a"]), len(arms["b"])) == (4, 2)                     # 34% of 6, rounded
    digest = {"a": a.digest, "b": b.digest}
    wanted = sorted((d, ex[f"deployment_{arm}_id"], digest[arm]) for arm, ids in arms.items() for d in ids
                    if sim.running[d].digest != digest[arm])
    assert orders(sim) == wanted
    assert all((rows[d]["state"] == "ordered") == (sim.running[d].digest != digest[r["arm"]])
               for d, r in rows.items() if r["arm"])
    # the same devices cannot be in two running experiments at once
    again = client.post("/api/v1/experiments", json={"bundle_a": a.digest, "bundle_b": b.digest,
                                                     "selector": {"device_ids": arms["a"] + arms["b"]}})
    assert again.status_code == 409 and again.json()["error"]["where"] == "selector"
    assert "0 of 6 matching device(s) can take part" in again.json()["error"]["message"]


def test_a_b_three_times_slower_is_b_worse_and_windows_on_the_other_bundle_do_not_count(client, controller, sim,
                                                                                          bundles):
    a, b = bundles
    sim.behaviour["latency"] = 6.0          # on B; A runs at 2.0
    sim.windows()                           # before the experiment: do not count
    sim.clock.advance(10)
    ex = create(client, a, b)
    sim.windows()                           # arm B still on A: its windows do not count, arm A's do
    for _ in range(12):
        sim.tick(controller)
    shown = client.get(f"/api/v1/experiments/{ex['id']}").json()
    results = {m["metric"]: m for m in shown["results"]["metrics"]}
    latency = results["latency_p95"]
    assert (latency["windows_a"], latency["windows_b"]) == (5 * 13, 5 * 12)
    assert latency["verdict"] == "b_worse" and latency["lower"] > 0 and latency["p_value"] <= 0.05
    assert latency["mean_b"] > 1.5 * latency["mean_a"]   # p95 from coarse histogram buckets
    assert latency["difference"] == pytest.approx(latency["mean_b"] - latency["mean_a"])
    assert results["error_rate"]["verdict"] == "no_difference_yet"          # neither arm errs
    assert shown["results"]["alpha"] == 0.05 and shown["results"]["predictions"]["js"] < 0.05


def test_an_a_a_like_experiment_shows_no_difference(client, controller, sim, bundles):
    ex = create(client, *bundles)           # B behaves as A does
    for _ in range(20):
        sim.tick(controller)
    results = client.get(f"/api/v1/experiments/{ex['id']}").json()["results"]
    assert {m["metric"]: m["verdict"] for m in results["metrics"]} == {
        "error_rate": "no_difference_yet", "latency_p95": "no_difference_yet", "drift_psi": "no_difference_yet"}
    for m in results["metrics"]:
        assert m["windows_a"] >= 95 and m["windows_b"] >= 95 and m["p_value"] > 0.05
        assert m["lower"] <= 0 <= m["upper"]
    assert results["predictions"]["js"] < 0.01


def test_it_finishes_after_its_duration_and_the_results_stop_there(client, controller, sim, bundles, received):
    a, b = bundles
    ex = create(client, a, b, duration_s=120)
    for _ in range(11):
        sim.tick(controller)                # 110 s
    assert client.get(f"/api/v1/experiments/{ex['id']}").json()["state"] == "running"
    sim.tick(controller)
    controller.reconcile(sim.clock())       # 130 s: over
    done = client.get(f"/api/v1/experiments/{ex['id']}").json()
    assert done["state"] == "finished" and done["reason"] == "its duration is over"
    assert done["finished_at"] == sim.clock()
    counted = {m["metric"]: m["windows_a"] for m in done["results"]["metrics"]}
    sim.clock.advance(1)
    for _ in range(3):
        sim.tick(controller)
    later = client.get(f"/api/v1/experiments/{ex['id']}").json()
    assert {m["metric"]: m["windows_a"] for m in later["results"]["metrics"]} == counted   # frozen at the end
    assert later["state"] == "finished"
    for arm in ("a", "b"):
        dep = client.get(f"/api/v1/deployments/{done[f'deployment_{arm}_id']}").json()
        assert dep["status"] == "succeeded" and dep["finished_at"] == done["finished_at"]
    [entry] = client.get("/api/v1/audit", params={"action": "experiment.finished"}).json()
    assert entry["actor"] == "system" and entry["target"] == f"experiment:{ex['id']}"
    assert set(entry["details"]["verdicts"]) == {"error_rate", "latency_p95", "drift_psi"}
    controller.deliver_webhooks(sim.clock())
    [finished] = [m for m in received if m["event"] == "experiment.finished"]
    assert finished["data"]["experiment_id"] == ex["id"] and finished["data"]["bundle_b_digest"] == b.digest
    assert finished["data"]["verdicts"] == {m["metric"]: m["verdict"] for m in done["results"]["metrics"]}
    # a finished experiment can still be promoted (here: A wins; the B devices go back to A)
    promoted = client.post(f"/api/v1/experiments/{ex['id']}/promote", json={"arm": "a", "template": "all-at-once"})
    assert promoted.status_code == 200 and promoted.json()["state"] == "promoted"
    assert promoted.json()["finished_at"] == done["finished_at"]
    rollout = client.get(f"/api/v1/rollouts/{promoted.json()['rollout_id']}").json()
    assert rollout["bundle_digest"] == a.digest and rollout["devices"] == {"in_progress": 5, "skipped": 5}


def test_an_order_still_out_at_the_end_is_cancelled(client, controller, sim, bundles):
    ex = create(client, *bundles, duration_s=60)
    sim.clock.advance(60)                   # the B devices never answered
    controller.reconcile(sim.clock())
    done = client.get(f"/api/v1/experiments/{ex['id']}").json()
    assert done["state"] == "finished" and done["devices"]["b"] == {"cancelled": 5}
    assert {r["reason"] for r in done["device_rows"] if r["arm"] == "b"} == {"the experiment ended before it installed"}
    assert sorted(d for d, *_ in orders(sim, "cancel")) == arms_of(done)["b"]


def test_promoting_b_rolls_it_out_to_the_rest(client, controller, sim, bundles, received):
    a, b = bundles
    ex = create(client, a, b, cohort_size=4)
    for _ in range(3):
        sim.tick(controller)
    on_b = arms_of(client.get(f"/api/v1/experiments/{ex['id']}").json())["b"]
    assert len(on_b) == 2 and all(sim.running[d] is b for d in on_b)
    r = client.post(f"/api/v1/experiments/{ex['id']}/promote",
                    json={"arm": "b", "template": "all-at-once", "reason": "faster"})
    assert r.status_code == 200, r.text
    promoted = r.json()
    assert promoted["state"] == "promoted" and promoted["promoted_arm"] == "b"
    assert promoted["reason"] == "arm B promoted by admin:admin: faster"
    rollout = client.get(f"/api/v1/rollouts/{promoted['rollout_id']}").json()
    assert rollout["bundle_digest"] == b.digest and rollout["selector"]["tags"] == ["site"]
    skipped = {row["device_id"]: row["reason"] for row in rollout["device_rows"] if row["state"] == "skipped"}
    assert skipped == {d: "already runs this bundle" for d in on_b}
    assert rollout["devices"] == {"in_progress": 8, "skipped": 2}
    assert rollout["note"] == f"winner of experiment {ex['id']} (det 1.0.0 vs det 1.1.0)"
    sim.obey()
    controller.reconcile(sim.clock())
    assert all(sim.running[d] is b for d in sim.ids)
    assert client.get(f"/api/v1/rollouts/{promoted['rollout_id']}").json()["state"] == "succeeded"
    [entry] = client.get("/api/v1/audit", params={"action": "experiment.promote"}).json()
    assert entry["actor"] == "admin:admin" and entry["details"] == {
        "state": "promoted", "arm": "b", "rollout": promoted["rollout_id"], "reason": "faster"}
    controller.deliver_webhooks(sim.clock())
    [event] = [m for m in received if m["event"] == "experiment.promoted"]
    assert event["data"]["experiment_id"] == ex["id"] and event["data"]["rollout_id"] == promoted["rollout_id"]
    assert (event["data"]["arm"], event["data"]["bundle_digest"]) == ("b", b.digest)
    conflict = client.post(f"/api/v1/experiments/{ex['id']}/promote", json={"arm": "b"})
    assert conflict.status_code == 409 and "is promoted: cannot promote" in conflict.json()["error"]["message"]


def test_stop_leaves_devices_on_what_they_run(client, controller, sim, bundles, received):
    a, b = bundles
    ex = create(client, a, b)
    sim.tick(controller)
    r = client.post(f"/api/v1/experiments/{ex['id']}/stop", json={"reason": "wrong cohort"})
    assert r.status_code == 200, r.text
    stopped = r.json()
    assert stopped["state"] == "stopped" and stopped["reason"] == "stopped by admin:admin: wrong cohort"
    assert stopped["devices"] == {"a": {"running": 5}, "b": {"running": 5}} and orders(sim, "cancel") == []
    assert all(sim.running[d] is b for d in arms_of(stopped)["b"])
    assert client.get(f"/api/v1/deployments/{ex['deployment_b_id']}").json()["status"] == "cancelled"
    for action, body in (("stop", {}), ("promote", {"arm": "b"})):
        again = client.post(f"/api/v1/experiments/{ex['id']}/{action}", json=body)
        assert again.status_code == 409 and again.json()["error"]["where"] == "state"
    [entry] = client.get("/api/v1/audit", params={"action": "experiment.stop"}).json()
    assert entry["details"] == {"state": "stopped", "reason": "wrong cohort"}
    controller.deliver_webhooks(sim.clock())
    assert [(m["event"], m["data"]["reason"]) for m in received if m["event"].startswith("experiment.")] == [
        ("experiment.stopped", "stopped by admin:admin: wrong cohort")]


def test_stop_cancels_the_orders_still_out(client, controller, sim, bundles, transport):
    a, b = bundles
    transport.connected = False             # the broker is away: the B orders wait, unsent
    ex = create(client, a, b)
    assert orders(sim) == []
    stopped = client.post(f"/api/v1/experiments/{ex['id']}/stop").json()
    assert stopped["devices"]["b"] == {"cancelled": 5}
    assert {r["reason"] for r in stopped["device_rows"] if r["arm"] == "b"} == {
        "the experiment was stopped before it installed"}
    transport.connected = True
    controller.reconcile(sim.clock())
    assert orders(sim) == [] and sorted(d for d, *_ in orders(sim, "cancel")) == arms_of(stopped)["b"]
    sim.obey()
    assert all(sim.running[d] is a for d in sim.ids)


def test_creating_is_audited(client, sim, bundles):
    ex = create(client, *bundles, name="faster-det")
    [entry] = client.get("/api/v1/audit", params={"action": "experiment.create"}).json()
    assert entry["target"] == f"experiment:{ex['id']}" and entry["actor"] == "admin:admin"
    assert entry["details"]["devices"] == {"a": 5, "b": 5} and entry["details"]["bundle_b"] == bundles[1].digest
    assert client.get("/api/v1/experiments").json()[0]["name"] == "faster-det"


@pytest.mark.parametrize(("body", "where"), [
    ({"split_percent": 0}, "body.split_percent"),
    ({"split_percent": 100}, "body.split_percent"),
    ({"duration_s": 0}, "body.duration_s"),
    ({"alpha": 0.7}, "body.alpha"),
    ({"min_windows": 1}, "body.min_windows"),
    ({"cohort_size": 1}, "body.cohort_size"),
    ({"selector": {"tags": ["no spaces"]}}, "body.selector.tags.0"),
    ({"bogus": 1}, "body.bogus"),
    ({"bundle_b": "not-hex"}, "body.bundle_b"),
    ({"same": True}, "body"),
])
def test_bad_input_is_refused_with_its_location_and_nothing_is_created(client, sim, bundles, body, where):
    a, b = bundles
    full = {"bundle_a": a.digest, "bundle_b": a.digest if body.pop("same", False) else b.digest} | body
    r = client.post("/api/v1/experiments", json=full)
    assert r.status_code == 422 and r.json()["error"]["where"] == where, r.json()
    assert client.get("/api/v1/experiments").json() == [] and orders(sim) == []


@pytest.mark.parametrize(("body", "where"), [({"arm": "c"}, "body.arm"), ({"arm": "b", "template": "nope"}, "body"),
                                             ({"arm": "b", "policy": {"stages": []}}, "body.policy.stages")])
def test_a_bad_promotion_is_refused_and_changes_nothing(client, sim, bundles, body, where):
    ex = create(client, *bundles)
    r = client.post(f"/api/v1/experiments/{ex['id']}/promote", json=body)
    assert r.status_code == 422 and r.json()["error"]["where"] == where, r.json()
    assert client.get(f"/api/v1/experiments/{ex['id']}").json()["state"] == "running"
    assert client.get("/api/v1/rollouts").json() == []


def test_unknown_experiments_and_bundles_are_not_found(client, sim, bundles):
    assert client.get("/api/v1/experiments/ex-nope").status_code == 404
    assert client.post("/api/v1/experiments/ex-nope/stop").status_code == 404
    r = client.post("/api/v1/experiments", json={"bundle_a": bundles[0].digest, "bundle_b": "ab" * 32})
    assert r.status_code == 404 and r.json()["error"]["where"] == "digest"


def test_viewers_read_and_operators_act(client, sim, bundles):
    tokens = {role: client.post("/api/v1/tokens", json={"name": role, "role": role}).json()["token"]
              for role in ("viewer", "operator")}
    as_viewer = {"Authorization": f"Bearer {tokens['viewer']}"}
    as_operator = {"Authorization": f"Bearer {tokens['operator']}"}
    body = {"bundle_a": bundles[0].digest, "bundle_b": bundles[1].digest}
    assert client.post("/api/v1/experiments", json=body, headers=as_viewer).status_code == 403
    created = client.post("/api/v1/experiments", json=body, headers=as_operator)
    assert created.status_code == 201 and created.json()["created_by"] == "operator:operator"
    ex_id = created.json()["id"]
    assert client.get("/api/v1/experiments", headers=as_viewer).status_code == 200
    assert client.get(f"/api/v1/experiments/{ex_id}", headers=as_viewer).json()["id"] == ex_id
    for action, extra in (("stop", {}), ("promote", {"arm": "b"})):
        assert client.post(f"/api/v1/experiments/{ex_id}/{action}", json=extra, headers=as_viewer).status_code == 403
    assert client.post(f"/api/v1/experiments/{ex_id}/stop", headers=as_operator).json()["state"] == "stopped"
    assert client.get("/api/v1/experiments", headers={"Authorization": ""}).status_code == 401


# ------------------------------------------------------------------------------------ the CLI

@pytest.fixture
def run(client, capsys, monkeypatch):
    monkeypatch.setattr(cli_experiments, "client_from_env", lambda url, token: CliClient(client))

    def run(*args: str, rc: int = 0) -> str:
        capsys.readouterr()
        assert cli(list(args)) == rc, capsys.readouterr()
        out = capsys.readouterr()
        return out.out + out.err
    return run


@pytest.mark.parametrize(("text", "seconds"), [("3600", 3600), ("90s", 90), ("30m", 1800), ("1h", 3600),
                                               ("2d", 172800), ("1h30m", 5400), ("1.5h", 5400)])
def test_durations(text, seconds):
    assert cli_experiments.parse_duration(text) == seconds


def test_the_cli_creates_shows_lists_and_promotes(run, controller, sim, bundles):
    sim.behaviour["latency"] = 6.0
    ex = json.loads(run("experiment", "create", "det:1.0.0", "det:1.1.0", "--tag", "site", "--split", "40",
                        "--duration", "30m", "--name", "slow-b", "--json"))
    assert (ex["bundle_a_digest"], ex["bundle_b_digest"]) == (bundles[0].digest, bundles[1].digest)
    assert ex["duration_s"] == 1800 and ex["split_percent"] == 40 and ex["devices"]["b"] == {"ordered": 4}
    for _ in range(12):
        sim.tick(controller)
    shown = run("experiment", "show", ex["id"])
    for needle in ("slow-b", "A (control)", "det 1.1.0+2", "95% CI", "B - A", "latency_p95", "B worse",
                   "no difference yet", "Jensen-Shannon"):
        assert needle in shown, shown
    assert ex["id"] in run("experiment", "list")
    out = run("experiment", "promote", ex["id"], "--arm", "B", "--template", "all-at-once")
    assert "promoted" in out and "edgefleet rollout show ro-" in out
    [listed] = json.loads(run("experiment", "list", "--json"))
    assert listed["state"] == "promoted" and listed["rollout_id"].startswith("ro-")


def test_the_cli_names_the_option_at_fault_and_stops(run, sim, bundles):
    out = run("experiment", "create", "det:1.0.0", "det:1.1.0", "--split", "100", rc=1)
    assert "error: --split:" in out and "less than 100" in out
    assert "Invalid value for '--duration'" in run("experiment", "create", "det:1.0.0", "det:1.1.0", "--duration",
                                                    "soon", rc=2)
    ex = json.loads(run("experiment", "create", "det:1.0.0", "det:1.1.0", "--json"))
    assert "stopped by admin:admin: enough" in run("experiment", "stop", ex["id"], "--reason", "enough")
    assert "cannot stop" in run("experiment", "stop", ex["id"], rc=1)
