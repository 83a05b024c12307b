"""Cohort rollback from the UI over plain HTTP (the fleet of :mod:`ui_fleet`): the deployment page's link,
the confirmation step (how many devices go back to which bundle, which are skipped and why), the
rollback itself (one deployment per bundle, the audit entry), and the refusals: a viewer, a post
without the CSRF token or not confirmed, an unknown cohort -- each changes nothing."""

from __future__ import annotations

import time

from edgefleet.cloud.services import deployments
from edgefleet.protocol.messages import State, StatusReport

from . import test_ui_actions_http as actions
from .test_ui_actions_http import entries, n_deployments, token_of, without_csrf
from .test_ui_http import login
from .ui_fleet import ingest, installed

fleet = actions.fleet   # app and client: tests/ui/conftest.py
"""The action tests' fixtures: the app with a stand-in transport, its test client, the seeded fleet."""


def commit_all(app, device_ids: list[str], built) -> str:
    """One deployment of ``built`` to the devices, each reporting the commit and its new state."""
    controller, now = app.state.controller, time.time()
    with controller.session() as session:
        dep = deployments.create_deployment(session, bundle_digest=built.digest, issuer=controller.issuer,
                                            actor="admin:test", now=now, timeout_s=600, device_ids=device_ids)
        dep_id = dep.id
        sequences = {t.device_id: t.sequence for t in deployments.targets_of(session, deployment_id=dep_id)}
    for device_id in device_ids:
        ingest(controller, device_id, "status", StatusReport(
            device_id=device_id, deployment_id=dep_id, sequence=sequences[device_id], bundle_digest=built.digest,
            state="committed", final=True, outcome="committed", sent_at=now), now)
        ingest(controller, device_id, "state", State(device_id=device_id, status="online", update_state="committed",
                                                     installed=installed(built), sent_at=now), now)
    return dep_id


def test_roll_back_a_cohort_from_the_ui_and_every_refusal_changes_nothing(app, client, fleet):
    # before anything was committed twice: nothing to roll back; the refusals
    login(client)
    r = client.get("/ui/rollback")
    assert r.status_code == 200 and 'id="cohort-pick"' in r.text and 'id="cohort-form"' not in r.text
    r = client.get("/ui/rollback", params={"tag": "site-b"})                        # nothing committed yet
    assert r.status_code == 200 and "No device of tag site-b can be rolled back" in r.text
    assert 'id="cohort-form"' not in r.text and "gate-01</a>: never committed another bundle" in r.text
    r = client.post("/ui/rollback", data={"tag": "site-b", "confirm": "yes"})
    assert r.status_code == 409 and "no device of tag site-b can be rolled back" in r.text
    assert client.get("/ui/rollback", params={"tag": "nobody"}).status_code == 404
    assert client.get("/ui/rollback", params={"deployment": "dep-nope"}).status_code == 404
    r = client.get("/ui/rollback", params={"tag": "site-b", "deployment": fleet.deployment_id})
    assert r.status_code == 400 and "exactly one of a deployment or a tag" in r.text
    assert entries(app, "cohort.rollback") == []

    login(client, token=token_of(app, "viewer"))
    assert 'id="cohort-rollback"' not in client.get(f"/ui/deployments/{fleet.deployment_id}").text
    assert client.get("/ui/rollback", params={"tag": "site-b"}).status_code == 403
    before = n_deployments(app)
    r = client.post("/ui/rollback", data={"tag": "site-b", "confirm": "yes"})
    assert r.status_code == 403 and "viewer) may not do this" in r.text
    assert n_deployments(app) == before

    # cam-02 committed 1.2.0 then 1.3.0; cam-03 only 1.3.0: roll the 1.3.0 deployment back from its page
    old, new = fleet.bundles["1.2.0"], fleet.bundles["1.3.0"]
    commit_all(app, ["cam-02"], old)
    dep = commit_all(app, ["cam-02", "cam-03"], new)      # cam-03 never committed another bundle
    login(client, token=token_of(app, "operator"))
    page = client.get(f"/ui/deployments/{dep}").text
    assert f'href="/ui/rollback?deployment={dep}"' in page and 'id="cohort-rollback"' in page

    r = client.get("/ui/rollback", params={"deployment": dep})
    assert r.status_code == 200 and f"Roll back 1 device of deployment {dep}?" in r.text
    assert f'data-bundle="{old.digest}" data-devices="1"' in r.text
    assert "cam-03</a>: never committed another bundle to roll back to" in r.text
    assert 'id="cohort-confirm"' in r.text and "Roll back 1 device</button>" in r.text

    before = (n_deployments(app), len(entries(app, "")))
    r = client.post("/ui/rollback", data={"deployment": dep})                      # not confirmed
    assert r.status_code == 400 and "not confirmed" in r.text
    without_csrf(client)
    r = client.post("/ui/rollback", data={"deployment": dep, "confirm": "yes"})
    assert r.status_code == 403 and "CSRF" in r.text
    assert (n_deployments(app), len(entries(app, ""))) == before

    login(client, token=token_of(app, "operator", "again"))
    r = client.post("/ui/rollback", data={"deployment": dep, "confirm": "yes"})
    assert r.status_code == 303 and r.headers["location"].startswith("/ui/deployments/dep-")
    back = r.headers["location"].rsplit("/", 1)[1]
    with app.state.controller.session() as session:
        made = deployments.get_deployment(session, deployment_id=back)
        assert made.bundle_digest == old.digest and made.selector == {"device_ids": ["cam-02"]}
    (entry,) = entries(app, "cohort.rollback")
    assert entry.target == f"deployment:{dep}" and entry.actor.startswith("operator:")
    assert entry.details["skipped"] == [{"device_id": "cam-03", "reason": "never committed another bundle to "
                                                                          "roll back to"}]
