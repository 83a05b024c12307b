"""Retrying a deployment's failed devices and rolling a device back to the bundle it ran before,
through the REST API (the services the UI calls too)."""

from __future__ import annotations

import pytest

from edgefleet.protocol.messages import InstalledBundle

from cloudkit import Fleet


@pytest.fixture
def bundles(make_bundle, upload):
    old, new = make_bundle(name="detector", version="1.0.0", build=1), make_bundle(name="detector", version="2.0.0",
                                                                                    build=2)
    upload(old)
    upload(new)
    return old, new


def installed(built, version: str, build: int) -> InstalledBundle:
    return InstalledBundle(name="detector", version=version, build=build, digest=built.digest, runtime="onnx")


def test_retry_orders_the_failed_devices_again_and_only_them(client, fleet: Fleet, bundles):
    _, new = bundles
    for d in ("ok", "bad", "refused"):
        fleet.add(d)
    dep = client.post("/api/v1/deployments", json={"bundle": new.digest, "device_ids": ["ok", "bad", "refused"]}
                      ).json()
    assert client.post(f"/api/v1/deployments/{dep['id']}/retry").status_code == 409     # nothing failed yet
    fleet.status("ok", dep["id"], 1, "committed", final=True, outcome="committed")
    fleet.status("bad", dep["id"], 1, "rolled_back", final=True, outcome="rolled_back", reason="health_check_failed")
    fleet.status("refused", dep["id"], 1, "idle", final=True, outcome="refused", reason="busy")
    assert client.get(f"/api/v1/deployments/{dep['id']}").json()["status"] == "partial"
    r = client.post(f"/api/v1/deployments/{dep['id']}/retry")
    assert r.status_code == 200, r.text
    shown = r.json()
    targets = {t["device_id"]: t for t in shown["targets"]}
    assert shown["status"] == "active" and shown["finished_at"] is None
    assert targets["ok"]["outcome"] == "committed" and targets["ok"]["sequence"] == 1
    assert {d: (targets[d]["final"], targets[d]["sequence"]) for d in ("bad", "refused")} == {
        "bad": (False, 2), "refused": (False, 2)}
    fleet.status("bad", dep["id"], 2, "committed", final=True, outcome="committed")
    fleet.status("refused", dep["id"], 2, "committed", final=True, outcome="committed")
    assert client.get(f"/api/v1/deployments/{dep['id']}").json()["status"] == "succeeded"
    audit = client.get("/api/v1/audit", params={"action": "deployment.retry"}).json()
    assert audit[0]["details"]["devices"] == ["bad", "refused"]


def test_a_cancelled_or_unknown_deployment_is_not_retried(client, fleet: Fleet, bundles):
    fleet.add("c1")
    dep = client.post("/api/v1/deployments", json={"bundle": bundles[1].digest, "device_ids": ["c1"]}).json()
    client.post(f"/api/v1/deployments/{dep['id']}/cancel")
    r = client.post(f"/api/v1/deployments/{dep['id']}/retry")
    assert r.status_code == 409 and "cancelled" in r.text
    assert client.post("/api/v1/deployments/dep-nope/retry").status_code == 404


def test_rollback_deploys_the_bundle_the_device_ran_before(client, fleet: Fleet, bundles):
    old, new = bundles
    fleet.add("r1")
    r = client.post("/api/v1/devices/r1/rollback")
    assert r.status_code == 409 and "never committed another bundle" in r.text
    first = client.post("/api/v1/deployments", json={"bundle": old.digest, "device_ids": ["r1"]}).json()
    fleet.status("r1", first["id"], 1, "committed", final=True, outcome="committed")
    fleet.state("r1", installed=installed(old, "1.0.0", 1))
    assert client.post("/api/v1/devices/r1/rollback").status_code == 409          # runs the only one it had
    second = client.post("/api/v1/deployments", json={"bundle": new.digest, "device_ids": ["r1"]}).json()
    fleet.status("r1", second["id"], 2, "committed", final=True, outcome="committed")
    fleet.state("r1", installed=installed(new, "2.0.0", 2))
    r = client.post("/api/v1/devices/r1/rollback")
    assert r.status_code == 201, r.text
    back = r.json()
    assert back["bundle_digest"] == old.digest and [t["device_id"] for t in back["targets"]] == ["r1"]
    assert "roll back r1" in back["note"]
    audit = client.get("/api/v1/audit", params={"action": "device.rollback"}).json()
    assert audit[0]["details"] == {"bundle": old.digest, "deployment": back["id"]}
    assert client.post("/api/v1/devices/ghost/rollback").status_code == 404
