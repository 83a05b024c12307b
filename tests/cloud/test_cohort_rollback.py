"""Rolling a cohort back through the REST API: the devices of a deployment or of a tag, each to the
bundle it ran before (as ``POST /devices/{id}/rollback`` chooses it), one deployment per bundle, and
the devices that cannot be rolled back listed with the reason."""

from __future__ import annotations

import pytest

from edgefleet.protocol.messages import InstalledBundle

from cloudkit import Fleet


@pytest.fixture
def bundles(make_bundle, upload):
    made = [make_bundle(name="detector", version=f"{n}.0.0", build=n) for n in (1, 2, 3)]
    for built in made:
        upload(built)
    return made


def deploy_and_commit(client, fleet: Fleet, built, device_ids: list[str], *, tag: str | None = None) -> str:
    body = {"bundle": built.digest, **({"tag": tag} if tag else {"device_ids": device_ids})}
    dep = client.post("/api/v1/deployments", json=body).json()
    for target in dep["targets"]:
        fleet.status(target["device_id"], dep["id"], target["sequence"], "committed", final=True, outcome="committed")
        fleet.state(target["device_id"], installed=InstalledBundle(
            name="detector", version=built.manifest.version, build=built.manifest.build, digest=built.digest,
            runtime="onnx"))
    return dep["id"]


def test_a_deployments_devices_go_back_each_to_its_own_previous_bundle(client, fleet: Fleet, bundles):
    v1, v2, v3 = bundles
    for device_id in ("a", "b", "c", "fresh"):
        fleet.enroll(device_id, tags=["lab"])
        fleet.hello(device_id)
    deploy_and_commit(client, fleet, v1, ["a", "b"])
    deploy_and_commit(client, fleet, v2, ["c"])
    deploy_and_commit(client, fleet, v2, ["a"])           # a: v1 -> v2; b stays on v1; c: v2
    dep = deploy_and_commit(client, fleet, v3, [], tag="lab")   # every device -> v3 ("fresh" from nothing)
    entries_before = len(client.get("/api/v1/audit").json())

    r = client.post(f"/api/v1/deployments/{dep}/rollback", params={"dry_run": True})
    assert r.status_code == 200, r.text
    plan = r.json()
    assert plan["dry_run"] is True and plan["matching"] == 4 and plan["devices"] == 3
    assert {g["bundle"]: g["device_ids"] for g in plan["groups"]} == {v2.digest: ["a", "c"], v1.digest: ["b"]}
    assert all(g["deployment"] is None for g in plan["groups"])
    assert plan["skipped"] == [{"device_id": "fresh", "reason": "never committed another bundle to roll back to"}]
    assert len(client.get("/api/v1/audit").json()) == entries_before             # a dry run stores nothing

    r = client.post(f"/api/v1/deployments/{dep}/rollback")
    assert r.status_code == 201, r.text
    done = r.json()
    made = {g["bundle"]: g["deployment"] for g in done["groups"]}
    for digest, devices in ((v2.digest, ["a", "c"]), (v1.digest, ["b"])):
        shown = client.get(f"/api/v1/deployments/{made[digest]}").json()
        assert shown["bundle_digest"] == digest and [t["device_id"] for t in shown["targets"]] == devices
        assert f"roll back deployment {dep}" in shown["note"]
    assert client.get(f"/api/v1/deployments/{dep}").json()["targets"][0]["outcome"] == "committed"
    (entry,) = client.get("/api/v1/audit", params={"action": "cohort.rollback"}).json()
    assert entry["target"] == f"deployment:{dep}" and entry["actor"].startswith("admin")
    assert entry["details"]["skipped"][0]["device_id"] == "fresh"
    assert sorted(g["deployment"] for g in entry["details"]["groups"]) == sorted(made.values())


def test_a_tag_cohort_and_the_refusals(client, fleet: Fleet, bundles):
    v1, v2, _ = bundles
    for device_id in ("t1", "t2"):
        fleet.enroll(device_id, tags=["site"])
        fleet.hello(device_id)
    r = client.post("/api/v1/devices/rollback", json={"tag": "site"})
    assert r.status_code == 409 and "no device of tag site can be rolled back" in r.text
    assert "t1: runs no bundle" in r.json()["error"]["hint"]
    deploy_and_commit(client, fleet, v1, ["t1", "t2"])
    deploy_and_commit(client, fleet, v2, ["t1"])
    client.post("/api/v1/devices/t2/decommission")
    r = client.post("/api/v1/devices/rollback", json={"tag": "site"})
    assert r.status_code == 201, r.text
    assert [(g["bundle"], g["device_ids"]) for g in r.json()["groups"]] == [(v1.digest, ["t1"])]
    assert r.json()["skipped"] == [{"device_id": "t2", "reason": "never committed another bundle to roll back to"}]
    assert client.get("/api/v1/audit", params={"action": "cohort.rollback"}).json()[0]["target"] == "tag:site"

    assert client.post("/api/v1/devices/rollback", json={"tag": "nobody"}).status_code == 404
    assert client.post("/api/v1/devices/rollback", json={"tag": ""}).status_code == 422
    assert client.post("/api/v1/devices/rollback", json={"tag": "site", "extra": 1}).status_code == 422
    assert client.post("/api/v1/deployments/dep-nope/rollback").status_code == 404


def test_a_viewer_may_not_roll_back(client, fleet: Fleet, bundles):
    fleet.enroll("v1", tags=["x"])
    viewer = client.post("/api/v1/tokens", json={"name": "look", "role": "viewer"}).json()["token"]
    r = client.post("/api/v1/devices/rollback", json={"tag": "x"}, headers={"Authorization": f"Bearer {viewer}"})
    assert r.status_code == 403
    assert client.get("/api/v1/audit", params={"action": "cohort.rollback"}).json() == []
