"""System endpoints, tokens and roles, error format."""

from __future__ import annotations

from fastapi.testclient import TestClient

from edgefleet.cloud.app import create_app
from edgefleet.cloud.settings import ControllerSettings

from cloudkit import FakeTransport


def test_healthz_and_metrics_need_no_token(client):
    r = client.get("/healthz", headers={"Authorization": ""})
    assert r.status_code == 200 and r.json()["database"] == "ok" and r.json()["mqtt"] == "connected"
    r = client.get("/metrics", headers={"Authorization": ""})
    assert r.status_code == 200 and "edgefleet_mqtt_rejected_total" in r.text


def test_openapi_docs_are_served(client):
    assert client.get("/docs").status_code == 200
    paths = client.get("/openapi.json").json()["paths"]
    assert "/api/v1/bundles/{digest}/download" in paths and "/api/v1/deployments" in paths


def test_missing_and_bad_tokens_are_401_with_error_body(client):
    r = client.get("/api/v1/devices", headers={"Authorization": ""})
    assert r.status_code == 401
    assert r.json()["error"]["code"] == "unauthenticated" and r.headers["www-authenticate"] == "Bearer"
    r = client.get("/api/v1/devices", headers={"Authorization": "Bearer eft_nope"})
    assert r.status_code == 401


def test_token_roles(client):
    r = client.post("/api/v1/tokens", json={"name": "ci", "role": "viewer"})
    assert r.status_code == 201
    viewer = {"Authorization": f"Bearer {r.json()['token']}"}
    assert client.get("/api/v1/devices", headers=viewer).status_code == 200
    r = client.post("/api/v1/models", json={"name": "m"}, headers=viewer)
    assert r.status_code == 403 and r.json()["error"]["code"] == "forbidden"
    assert client.get("/api/v1/tokens", headers=viewer).status_code == 403
    token_id = next(t["id"] for t in client.get("/api/v1/tokens").json() if t["name"] == "ci")
    assert client.delete(f"/api/v1/tokens/{token_id}").json()["revoked_at"] is not None
    assert client.get("/api/v1/devices", headers=viewer).status_code == 401


def test_token_create_rejects_bad_role_and_extra_fields(client):
    assert client.post("/api/v1/tokens", json={"name": "x", "role": "device"}).status_code == 422
    r = client.post("/api/v1/tokens", json={"name": "x", "role": "viewer", "bogus": 1})
    assert r.status_code == 422 and r.json()["error"]["code"] == "invalid_request"
    r = client.post("/api/v1/tokens", content=b"{not json", headers={"Content-Type": "application/json"})
    assert r.status_code == 422


def test_unknown_route_is_404_json(client):
    r = client.get("/api/v1/nothing-here")
    assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"


def test_first_start_creates_an_admin_token_once_and_never_logs_it(tmp_path, capsys, caplog):
    settings = ControllerSettings(data_dir=tmp_path, broker_url="mqtt://127.0.0.1:1")
    app = create_app(settings, transport_factory=lambda url, cb: FakeTransport(), reconcile_in_background=False)
    token = app.state.controller.initial_admin_token
    assert token
    with TestClient(app) as c:
        assert c.get("/api/v1/tokens", headers={"Authorization": f"Bearer {token}"}).status_code == 200
    again = create_app(settings, transport_factory=lambda url, cb: FakeTransport(), reconcile_in_background=False)
    assert again.state.controller.initial_admin_token is None
    captured = capsys.readouterr()
    assert token not in captured.out + captured.err + caplog.text


def test_info_lists_keys_and_broker(client, controller):
    body = client.get("/api/v1/info").json()
    assert body["controller_key_id"] == controller.controller_key_id
    assert body["broker_url"] == "mqtt://127.0.0.1:1" and len(body["release_key_ids"]) == 1


def test_audit_log_records_state_changes(client):
    client.post("/api/v1/models", json={"name": "audited"})
    entries = client.get("/api/v1/audit", params={"action": "model."}).json()
    assert entries[0]["action"] == "model.create" and entries[0]["actor"] == "admin:admin"


def test_oversized_json_bodies_are_refused_before_parsing(client):
    big = b'{"token": "' + b"x" * (2 * 1024 * 1024) + b'"}'
    r = client.post("/api/v1/enroll", content=big, headers={"Content-Type": "application/json", "Authorization": ""})
    assert r.status_code == 413
    r = client.post("/api/v1/models", content=big, headers={"Content-Type": "application/json"})
    assert r.status_code == 413


def test_every_state_changing_call_is_audited(client, fleet, make_bundle, upload):
    client.post("/api/v1/models", json={"name": "aud"})
    client.post("/api/v1/models/aud/versions", json={"version": "1"})
    client.put("/api/v1/models/aud/versions/1/artifact", content=b"model-bytes")
    built = make_bundle(name="audited")
    upload(built)
    fleet.add("ad1")
    client.patch("/api/v1/devices/ad1", json={"add_tags": ["x"], "hardware_class": "hw"})
    dep_id = client.post("/api/v1/deployments", json={"bundle": built.digest, "device_ids": ["ad1"]}).json()["id"]
    client.post(f"/api/v1/deployments/{dep_id}/cancel")
    token_id = client.post("/api/v1/tokens", json={"name": "t", "role": "viewer"}).json()["id"]
    client.delete(f"/api/v1/tokens/{token_id}")
    client.post("/api/v1/devices/ad1/decommission")
    actions = {e["action"] for e in client.get("/api/v1/audit", params={"limit": 1000}).json()}
    assert actions >= {"model.create", "model_version.create", "model_version.artifact", "bundle.upload",
                       "enrollment_token.create", "device.enroll", "device.tags", "device.hardware_class",
                       "deployment.create", "deployment.cancel", "token.create", "token.revoke",
                       "device.decommission"}
    entry = client.get("/api/v1/audit", params={"action": "deployment.cancel"}).json()[0]
    assert entry["actor"] == "admin:admin" and entry["target"] == f"deployment:{dep_id}" and entry["at"] > 0
