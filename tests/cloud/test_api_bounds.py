"""Every numeric parameter of the REST API is bounded: out-of-range, overflowing, non-finite or
malformed numbers in the path or the query get a 4xx, never a 500 (walked over the OpenAPI schema,
so a route added later is covered too)."""

from __future__ import annotations

import re

import pytest
from fastapi.testclient import TestClient

HOSTILE = ["9" * 40, "-" + "9" * 40, "1e400", "nan", "-1", "0x10", ""]


@pytest.fixture
def calls(app):
    """(method, path template, parameter, where, type) for every numeric parameter of every route."""
    schema = app.openapi()
    found = []
    for path, methods in schema["paths"].items():
        for method, op in methods.items():
            if method not in ("get", "delete", "head"):
                continue
            for p in op.get("parameters", []):
                kinds = {s.get("type") for s in [p.get("schema", {}), *p.get("schema", {}).get("anyOf", [])]}
                if kinds & {"integer", "number"}:
                    found.append((method, path, p["name"], p["in"], kinds))
    assert len(found) >= 20   # the walk finds the API's numeric parameters
    return found


def test_no_numeric_parameter_makes_a_server_error(app, calls):
    with TestClient(app, raise_server_exceptions=False) as client:
        client.headers["Authorization"] = "Bearer eft_test-admin-token"
        failures = []
        for method, path, name, where, _ in calls:
            for value in HOSTILE:
                url = re.sub(r"\{[^}]+\}", lambda m, v=value, n=name: v if m.group(0) == f"{{{n}}}" else "x", path)
                params = {name: value} if where == "query" else None
                if where == "path" and value == "":
                    continue
                r = client.request(method.upper(), url, params=params)
                if r.status_code >= 500:
                    failures.append(f"{method.upper()} {url} {name}={value!r}: {r.status_code} {r.text[:120]}")
        assert failures == []


def test_an_id_past_64_bits_is_a_clear_422(client):
    r = client.get("/api/v1/retraining-jobs/" + "9" * 40)
    assert r.status_code == 422
    assert "less than or equal to 9223372036854775807" in r.text
