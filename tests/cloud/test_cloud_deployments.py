"""Deployments: targeting and compatibility, signed orders, progress from status reports,
cancel, timeouts, superseding, orders held while the broker is away."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from edgefleet.cloud.app import create_app
from edgefleet.cloud.settings import ControllerSettings
from edgefleet.protocol.errors import ReplayError
from edgefleet.protocol.keys import TrustedKeys
from edgefleet.protocol.messages import InstalledBundle, State, decode
from edgefleet.protocol.orders import verify_order

from cloudkit import FakeTransport, Fleet


@pytest.fixture
def bundle(make_bundle, upload):
    built = make_bundle(name="detector", version="1.2.0", build=3)
    upload(built)
    return built


def _orders(transport, device_id: str):
    return [decode("cmd", p) for t, p in transport.published if t == f"edgefleet/v1/devices/{device_id}/cmd"]


def test_deploy_to_devices_publishes_verifiable_signed_orders(client, fleet, bundle, transport, controller, clock):
    fleet.add("d1")
    fleet.add("d2")
    r = client.post("/api/v1/deployments", json={"bundle": bundle.digest, "device_ids": ["d1", "d2"]})
    assert r.status_code == 201, r.text
    dep = r.json()
    assert dep["status"] == "active" and dep["progress"] == {"sent": 2}
    trusted = TrustedKeys.of([controller.controller_key.public_key()], role="controller")
    for device in ("d1", "d2"):
        (message,) = _orders(transport, device)
        order = verify_order(message.order, trusted=trusted, device_id=device, last_sequence=0, now=clock())
        assert order.bundle_digest == bundle.digest and order.bundle_size == len(bundle.data)
        assert order.deployment_id == dep["id"] and order.action == "install" and order.sequence == 1
        assert order.bundle_url.startswith(f"http://controller.test/api/v1/bundles/{bundle.digest}/download?token=")
        with pytest.raises(ReplayError):
            verify_order(message.order, trusted=trusted, device_id=device, last_sequence=1, now=clock())
    # the URL in the order works without any other credential
    path = order.bundle_url.removeprefix("http://controller.test")
    assert client.get(path, headers={"Authorization": ""}).content == bundle.data


def test_sequences_increase_per_device(client, fleet, bundle, transport):
    fleet.add("s1")
    for _ in range(3):
        client.post("/api/v1/deployments", json={"bundle": bundle.digest, "device_ids": ["s1"]})
    assert [m.order.signed.sequence for m in _orders(transport, "s1")] == [1, 2, 3]
    assert client.get("/api/v1/devices/s1").json()["last_sequence"] == 3


def test_tag_and_all_skip_incompatible_devices(client, fleet, make_bundle, upload, transport):
    tflite_only = make_bundle(name="armonly", archs=["aarch64"])
    upload(tflite_only)
    fleet.add("arm", arch="aarch64")
    fleet.add("x86", arch="x86_64")
    fleet.enroll("silent")      # never said hello: facts unknown
    for dev in ("arm", "x86", "silent"):
        client.patch(f"/api/v1/devices/{dev}", json={"add_tags": ["site-a"]})
    dep = client.post("/api/v1/deployments", json={"bundle": tflite_only.digest, "tag": "site-a"}).json()
    assert [t["device_id"] for t in dep["targets"]] == ["arm"]
    assert {s["device_id"] for s in dep["skipped"]} == {"x86", "silent"}
    dep = client.post("/api/v1/deployments", json={"bundle": tflite_only.digest, "all": True}).json()
    assert [t["device_id"] for t in dep["targets"]] == ["arm"]
    assert len(_orders(transport, "x86")) == 0


def test_tag_skips_devices_already_running_the_bundle(client, fleet, bundle):
    fleet.add("has")
    fleet.add("lacks")
    installed = InstalledBundle(name="detector", version="1.2.0", build=3, digest=bundle.digest, runtime="onnx")
    fleet.state("has", "online", installed=installed)
    dep = client.post("/api/v1/deployments", json={"bundle": bundle.digest, "all": True}).json()
    assert [t["device_id"] for t in dep["targets"]] == ["lacks"]
    assert dep["skipped"] == [{"device_id": "has", "reason": "already runs this bundle"}]
    explicit = client.post("/api/v1/deployments", json={"bundle": bundle.digest, "device_ids": ["has"]})
    assert explicit.status_code == 201          # named explicitly: re-install on request


def test_explicit_incompatible_device_is_refused(client, fleet, make_bundle, upload):
    needs_tflite = make_bundle(name="lite", runtime="onnx", hardware_classes=["jetson"])
    upload(needs_tflite)
    fleet.add("plain")
    r = client.post("/api/v1/deployments", json={"bundle": needs_tflite.digest, "device_ids": ["plain"]})
    assert r.status_code == 422 and r.json()["error"]["code"] == "target_mismatch"
    assert client.get("/api/v1/deployments").json() == []


def test_bad_deployment_requests(client, fleet, bundle):
    fleet.add("b1")
    post = lambda body: client.post("/api/v1/deployments", json=body)  # noqa: E731
    assert post({"bundle": bundle.digest}).status_code == 400                       # no target
    assert post({"bundle": bundle.digest, "tag": "x", "all": True}).status_code == 400
    assert post({"bundle": bundle.digest, "device_ids": ["nope"]}).status_code == 404
    assert post({"bundle": "f" * 64, "device_ids": ["b1"]}).status_code == 404
    assert post({"bundle": "not-hex!", "device_ids": ["b1"]}).status_code == 422
    assert post({"bundle": bundle.digest, "tag": "empty"}).status_code == 409       # nobody matches
    assert post({"bundle": bundle.digest, "device_ids": ["../../x"]}).status_code == 422
    assert client.post("/api/v1/deployments", content=b"x" * 10,
                       headers={"Content-Type": "application/json"}).status_code == 422


def test_status_reports_drive_targets_to_final_states(client, fleet, bundle, controller):
    fleet.add("ok")
    fleet.add("bad")
    dep = client.post("/api/v1/deployments", json={"bundle": bundle.digest, "device_ids": ["ok", "bad"]}).json()
    dep_id = dep["id"]
    fleet.status("ok", dep_id, 1, "downloading")
    fleet.status("bad", dep_id, 1, "verifying")
    shown = client.get(f"/api/v1/deployments/{dep_id}").json()
    assert shown["progress"] == {"downloading": 1, "verifying": 1}
    fleet.status("ok", dep_id, 1, "committed", final=True, outcome="committed")
    fleet.status("bad", dep_id, 1, "rolled_back", final=True, outcome="rolled_back", reason="health_check_failed")
    shown = client.get(f"/api/v1/deployments/{dep_id}").json()
    assert shown["status"] == "partial" and shown["finished_at"] is not None
    targets = {t["device_id"]: t for t in shown["targets"]}
    assert targets["ok"]["outcome"] == "committed" and targets["bad"]["reason"] == "health_check_failed"
    assert [h["state"] for h in targets["ok"]["history"]] == ["pending", "sent", "downloading", "committed"]
    # a late or repeated report changes nothing
    fleet.status("bad", dep_id, 1, "committed", final=True, outcome="committed")
    assert client.get(f"/api/v1/deployments/{dep_id}").json()["status"] == "partial"


def test_all_committed_is_success(client, fleet, bundle):
    fleet.add("c1")
    dep_id = client.post("/api/v1/deployments", json={"bundle": bundle.digest, "device_ids": ["c1"]}).json()["id"]
    fleet.status("c1", dep_id, 1, "committed", final=True, outcome="committed")
    assert client.get(f"/api/v1/deployments/{dep_id}").json()["status"] == "succeeded"
    assert client.get("/api/v1/deployments", params={"status": "succeeded"}).json()[0]["id"] == dep_id
    assert client.get("/api/v1/devices/c1/deployments").json()[0]["outcome"] == "committed"


def test_stale_sequence_report_is_ignored(client, fleet, bundle):
    fleet.add("st")
    first = client.post("/api/v1/deployments", json={"bundle": bundle.digest, "device_ids": ["st"]}).json()["id"]
    fleet.status("st", first, 0, "downloading")
    shown = client.get(f"/api/v1/deployments/{first}").json()
    assert shown["targets"][0]["state"] == "downloading"   # sequence 0 = unknown, accepted
    fleet.status("st", "dep-unknown", 1, "committed", final=True, outcome="committed")  # unknown deployment: ignored


def test_refusal_of_a_duplicate_order_does_not_end_the_target(client, fleet, bundle):
    fleet.add("dup")
    dep_id = client.post("/api/v1/deployments", json={"bundle": bundle.digest, "device_ids": ["dup"]}).json()["id"]
    fleet.status("dup", dep_id, 1, "downloading")
    fleet.status("dup", dep_id, 1, "downloading", final=True, outcome="refused", reason="replayed_order")
    target = client.get(f"/api/v1/deployments/{dep_id}").json()["targets"][0]
    assert not target["final"] and target["history"][-1]["ignored"] is True
    fleet.status("dup", dep_id, 1, "committed", final=True, outcome="committed")
    assert client.get(f"/api/v1/deployments/{dep_id}").json()["status"] == "succeeded"


def test_a_real_refusal_ends_the_target(client, fleet, bundle):
    fleet.add("ref")
    dep_id = client.post("/api/v1/deployments", json={"bundle": bundle.digest, "device_ids": ["ref"]}).json()["id"]
    fleet.status("ref", dep_id, 1, "idle", final=True, outcome="refused", reason="busy")
    shown = client.get(f"/api/v1/deployments/{dep_id}").json()
    assert shown["status"] == "failed" and shown["targets"][0]["outcome"] == "refused"


def test_cancel_sends_signed_cancel_orders(client, fleet, bundle, transport, controller, clock):
    fleet.add("x1")
    fleet.add("x2")
    dep_id = client.post("/api/v1/deployments", json={"bundle": bundle.digest, "device_ids": ["x1", "x2"]}).json()["id"]
    fleet.status("x1", dep_id, 1, "committed", final=True, outcome="committed")
    r = client.post(f"/api/v1/deployments/{dep_id}/cancel")
    assert r.status_code == 200
    body = r.json()
    assert body["status"] == "cancelled"
    targets = {t["device_id"]: t for t in body["targets"]}
    assert targets["x1"]["outcome"] == "committed" and targets["x2"]["outcome"] == "cancelled"
    cancel = _orders(transport, "x2")[-1].order
    trusted = TrustedKeys.of([controller.controller_key.public_key()], role="controller")
    order = verify_order(cancel, trusted=trusted, device_id="x2", last_sequence=1, now=clock())
    assert order.action == "cancel" and order.sequence == 2
    assert len(_orders(transport, "x1")) == 1
    assert client.post(f"/api/v1/deployments/{dep_id}/cancel").status_code == 409
    assert client.post("/api/v1/deployments/dep-nope/cancel").status_code == 404


def test_silent_device_times_out(client, fleet, bundle, controller, clock):
    fleet.add("quiet")
    fleet.add("talker")
    dep_id = client.post("/api/v1/deployments", json={"bundle": bundle.digest, "device_ids": ["quiet", "talker"],
                                                      "timeout_s": 100}).json()["id"]
    clock.advance(60)
    fleet.status("talker", dep_id, 1, "downloading")
    clock.advance(50)
    report = controller.reconcile()
    assert report.timed_out == [(dep_id, "quiet")]
    assert controller.reconcile().timed_out == []
    clock.advance(60)
    assert controller.reconcile().timed_out == [(dep_id, "talker")]
    shown = client.get(f"/api/v1/deployments/{dep_id}").json()
    assert shown["status"] == "failed"
    assert {t["reason"] for t in shown["targets"]} == {"deployment_timeout"}


def test_new_deployment_supersedes_an_open_target(client, fleet, make_bundle, upload, bundle):
    newer = make_bundle(name="detector", version="1.3.0", build=4)
    upload(newer)
    fleet.add("sp")
    old = client.post("/api/v1/deployments", json={"bundle": bundle.digest, "device_ids": ["sp"]}).json()["id"]
    new = client.post("/api/v1/deployments", json={"bundle": newer.digest, "device_ids": ["sp"]}).json()
    old_shown = client.get(f"/api/v1/deployments/{old}").json()
    assert old_shown["targets"][0]["reason"] == "superseded" and old_shown["status"] == "cancelled"
    assert new["targets"][0]["sequence"] == 2


def test_orders_wait_for_the_broker_and_survive_restart(client, fleet, bundle, transport, controller, clock):
    fleet.add("w1")
    transport.connected = False
    dep = client.post("/api/v1/deployments", json={"bundle": bundle.digest, "device_ids": ["w1"],
                                                   "timeout_s": 86400}).json()
    assert dep["targets"][0]["state"] == "pending" and transport.published == []
    clock.advance(controller.settings.order_lifetime_s + 10)   # the stored order expired meanwhile
    transport.connected = True
    assert controller.reconcile().orders_published == 1
    (message,) = _orders(transport, "w1")
    assert message.order.signed.sequence == 2 and message.order.signed.expires_at > clock()
    assert controller.reconcile().orders_published == 0


def test_orders_are_sent_again_when_the_device_says_hello(client, fleet, bundle, transport, controller):
    fleet.add("away")
    dep_id = client.post("/api/v1/deployments", json={"bundle": bundle.digest, "device_ids": ["away"]}).json()["id"]
    assert len(_orders(transport, "away")) == 1
    fleet.hello("away")                          # reconnected: it may have missed the order
    assert controller.reconcile().orders_published == 1
    first, again = _orders(transport, "away")
    assert first.order == again.order            # the same signed order, not a new sequence
    fleet.status("away", dep_id, 1, "downloading")
    fleet.hello("away")
    assert controller.reconcile().orders_published == 0   # acknowledged orders are not re-sent


def test_timed_out_target_never_gets_its_unsent_order(client, fleet, bundle, transport, controller, clock):
    fleet.add("late")
    transport.connected = False
    client.post("/api/v1/deployments", json={"bundle": bundle.digest, "device_ids": ["late"], "timeout_s": 10})
    clock.advance(11)
    transport.connected = True
    report = controller.reconcile()
    assert len(report.timed_out) == 1 and report.orders_published == 0 and transport.published == []


def test_bundle_in_use_cannot_be_deleted(client, fleet, bundle):
    fleet.add("u1")
    client.post("/api/v1/deployments", json={"bundle": bundle.digest, "device_ids": ["u1"]})
    assert client.delete(f"/api/v1/bundles/{bundle.digest}").status_code == 409


def test_a_restarted_controller_sends_what_the_old_one_could_not(settings, clock, fleet, bundle, client, transport):
    fleet.add("rs")
    transport.connected = False
    dep_id = client.post("/api/v1/deployments", json={"bundle": bundle.digest, "device_ids": ["rs"]}).json()["id"]
    fresh = FakeTransport()
    restarted = create_app(settings, clock=clock, transport_factory=lambda url, cb: fresh,
                           reconcile_in_background=False)
    with TestClient(restarted):
        assert restarted.state.controller.reconcile().orders_published == 1
    (topic, payload), = fresh.published
    assert topic == "edgefleet/v1/devices/rs/cmd" and decode("cmd", payload).order.signed.deployment_id == dep_id


def test_the_health_window_is_signed_into_each_order(client, fleet, bundle, transport, controller, clock):
    fleet.add("h1")
    r = client.post("/api/v1/deployments", json={"bundle": bundle.digest, "device_ids": ["h1"],
                                                 "health_check": {"inferences": 0, "timeout_s": 5}})
    assert r.status_code == 201, r.text
    trusted = TrustedKeys.of([controller.controller_key.public_key()], role="controller")
    (message,) = _orders(transport, "h1")
    order = verify_order(message.order, trusted=trusted, device_id="h1", last_sequence=0, now=clock())
    assert (order.health_check.inferences, order.health_check.timeout_s) == (0, 5)


@pytest.mark.parametrize("health", [{"inferences": -1, "timeout_s": 5}, {"inferences": 1, "timeout_s": 10**6},
                                    {"inferences": 1, "timeout_s": 5, "extra": 1}, {"inferences": 1}])
def test_a_bad_health_window_is_refused_and_nothing_is_sent(client, fleet, bundle, transport, health):
    fleet.add("h2")
    r = client.post("/api/v1/deployments", json={"bundle": bundle.digest, "device_ids": ["h2"], "health_check": health})
    assert r.status_code == 422 and r.json()["error"]["where"].startswith("body.health_check")
    assert _orders(transport, "h2") == [] and client.get("/api/v1/deployments").json() == []


def test_without_a_health_window_orders_carry_none(client, fleet, bundle, transport):
    fleet.add("h3")
    client.post("/api/v1/deployments", json={"bundle": bundle.digest, "device_ids": ["h3"]})
    (message,) = _orders(transport, "h3")
    assert message.order.signed.health_check is None
    assert b"health_check" not in transport.published[-1][1]


def test_a_progress_report_says_what_the_device_is_doing(client, fleet, bundle):
    fleet.add("h4")
    dep = client.post("/api/v1/deployments", json={"bundle": bundle.digest, "device_ids": ["h4"]}).json()
    waiting = "health check: the bundle's smoke test, then up to 10 live inferences within 60 s; commits when they pass"
    fleet.status("h4", dep["id"], 1, "health_check", detail=waiting)
    (target,) = client.get(f"/api/v1/deployments/{dep['id']}").json()["targets"]
    assert (target["state"], target["detail"], target["final"]) == ("health_check", waiting, False)
    fleet.status("h4", dep["id"], 1, "committed", final=True, outcome="committed", detail="tiny 1.0.0 serving")
    (target,) = client.get(f"/api/v1/deployments/{dep['id']}").json()["targets"]
    assert (target["outcome"], target["detail"]) == ("committed", "tiny 1.0.0 serving")


def test_the_download_link_lives_as_long_as_configured(tmp_path, release_pub, make_bundle, clock):
    """download_token_lifetime_s bounds the signed link in an order, below the order's own lifetime."""
    settings = ControllerSettings(data_dir=tmp_path / "c", broker_url="mqtt://127.0.0.1:1",
                                  release_key_paths=[release_pub], admin_token="eft_t",
                                  public_url="http://controller.test", order_lifetime_s=3600,
                                  download_token_lifetime_s=60)
    transport = FakeTransport()
    app = create_app(settings, clock=clock, transport_factory=lambda url, cb: transport, reconcile_in_background=False)
    with TestClient(app) as client:
        client.headers["Authorization"] = "Bearer eft_t"
        built = make_bundle(name="linked")
        client.post("/api/v1/bundles", content=built.data)
        fleet = Fleet(client, app.state.controller, clock)
        fleet.add("l1")
        client.post("/api/v1/deployments", json={"bundle": built.digest, "device_ids": ["l1"]})
        (message,) = _orders(transport, "l1")
        order = message.order.signed
        assert order.expires_at == int(clock()) + 3600
        path = order.bundle_url.removeprefix("http://controller.test")
        assert client.get(path, headers={"Authorization": ""}).status_code == 200
        clock.advance(61)
        refused = client.get(path, headers={"Authorization": ""})
        assert refused.status_code == 401 and refused.json()["error"]["message"] == "download token expired"


def test_a_lost_final_report_is_closed_by_the_heartbeat_that_repeats_it(client, fleet, bundle, clock):
    """The controller died after the broker handed it the final report and before it stored it:
    the device's next heartbeat carries the outcome of its last order and ends the target."""
    fleet.add("hb")
    dep = client.post("/api/v1/deployments", json={"bundle": bundle.digest, "device_ids": ["hb"]}).json()
    fleet.status("hb", dep["id"], 1, "activating")
    stale = State(device_id="hb", status="online", update_state="committed", deployment_id=dep["id"], sequence=0,
                  outcome="committed", sent_at=clock())
    fleet.send(stale, "state")   # an older order of that deployment: not this target's
    fleet.state("hb", update_state="activating", deployment_id=dep["id"], sequence=1)   # not final yet
    fleet.state("hb", update_state="committed", deployment_id=dep["id"], sequence=1, outcome="committed",
                heartbeat_interval_s=30)   # at once: the final report is just behind it
    assert client.get(f"/api/v1/deployments/{dep['id']}").json()["targets"][0]["state"] == "activating"
    clock.advance(31)
    fleet.state("hb", update_state="committed", deployment_id=dep["id"], sequence=1, outcome="committed",
                heartbeat_interval_s=30)   # a heartbeat later, still no report: it was lost
    (target,) = client.get(f"/api/v1/deployments/{dep['id']}").json()["targets"]
    assert (target["state"], target["outcome"]) == ("committed", "committed")
    assert "heartbeat" in target["detail"]
    assert client.get(f"/api/v1/deployments/{dep['id']}").json()["status"] == "succeeded"
    fleet.state("hb", update_state="committed", deployment_id=dep["id"], sequence=1, outcome="committed")
    assert len(client.get(f"/api/v1/deployments/{dep['id']}").json()["targets"][0]["history"]) == \
        len(target["history"])   # a closed target is left alone: no history entry per heartbeat
