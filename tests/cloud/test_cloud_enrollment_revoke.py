"""Revoking an unused enrollment token through the REST API (the service the UI calls too)."""

from __future__ import annotations

from testkit import DeviceKey


def test_a_revoked_token_no_longer_enrolls_and_a_used_one_is_not_revoked(client, fleet):
    created = client.post("/api/v1/enrollment-tokens", json={"device_id": "late", "tags": []}).json()
    r = client.delete(f"/api/v1/enrollment-tokens/{created['id']}")
    assert r.status_code == 200, r.text
    assert r.json()["expires_at"] <= created["expires_at"]
    r = client.post("/api/v1/enroll", json={"token": created["token"], "device_id": "late",
                                            "device_public_key_pem": DeviceKey().pem}, headers={"Authorization": ""})
    assert r.status_code == 401 and "unknown, used or expired" in r.text
    audit = client.get("/api/v1/audit", params={"action": "enrollment_token.revoke"}).json()
    assert [e["target"] for e in audit] == [f"enrollment_token:{created['id']}"]
    assert client.delete(f"/api/v1/enrollment-tokens/{created['id']}").status_code == 200   # again: no-op
    assert len(client.get("/api/v1/audit", params={"action": "enrollment_token.revoke"}).json()) == 1
    fleet.enroll("d1")
    used = client.get("/api/v1/enrollment-tokens", params={"include_used": True}).json()
    used_id = next(t["id"] for t in used if t["used_at"] is not None)
    r = client.delete(f"/api/v1/enrollment-tokens/{used_id}")
    assert r.status_code == 409 and "already used by d1" in r.text
    assert client.delete("/api/v1/enrollment-tokens/99999").status_code == 404
