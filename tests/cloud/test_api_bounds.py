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


# ---------------------------------------------------------------- strings, body values, headers

def _bounded(schema: dict) -> list[str]:
    """What is unbounded in one parameter's schema (``anyOf`` members included)."""
    missing = []
    for s in [schema, *schema.get("anyOf", [])]:
        kind = s.get("type")
        if kind == "string" and "maxLength" not in s and "enum" not in s and "const" not in s:
            missing.append("string without maxLength")
        if kind in ("integer", "number") and not ({"maximum", "exclusiveMaximum"} & s.keys()
                                                   and {"minimum", "exclusiveMinimum"} & s.keys()):
            missing.append(f"{kind} without minimum and maximum")
        if kind == "array":
            if "maxItems" not in s:
                missing.append("array without maxItems")
            missing += [f"items: {m}" for m in _bounded(s.get("items", {}))]
    return missing


def test_every_path_and_query_parameter_declares_its_bounds(app):
    """A route added later with a bare ``str`` or ``int`` parameter fails here: use the aliases of
    ``edgefleet.cloud.api.params`` (or ``Query(max_length=...)``, ``Query(ge=..., le=...)``)."""
    schema = app.openapi()
    unbounded, count = [], 0
    for path, methods in schema["paths"].items():
        for method, op in methods.items():
            for p in op.get("parameters", []):
                count += 1
                unbounded += [f"{method.upper()} {path} {p['in']}:{p['name']}: {m}" for m in _bounded(p["schema"])]
    assert count >= 100
    assert unbounded == []


def _strings(app) -> list[tuple[str, str, str, str, int]]:
    """(method, path, name, where, maxLength) of every string parameter in the path or query."""
    found = []
    for path, methods in app.openapi()["paths"].items():
        for method, op in methods.items():
            for p in op.get("parameters", []):
                for s in [p["schema"], *p["schema"].get("anyOf", [])]:
                    if s.get("type") == "string" and "maxLength" in s:
                        found.append((method, path, p["name"], p["in"], s["maxLength"]))
    return found


def test_a_string_past_its_bound_is_a_clear_422(app):
    strings = _strings(app)
    assert len(strings) >= 60
    with TestClient(app, raise_server_exceptions=False) as client:
        client.headers["Authorization"] = "Bearer eft_test-admin-token"
        wrong = []
        for method, path, name, where, limit in strings:
            value = "a" * (limit + 1)
            url = re.sub(r"\{[^}]+\}", lambda m, v=value, n=name: v if m.group(0) == f"{{{n}}}" else "x", path)
            r = client.request(method.upper(), url, params={name: value} if where == "query" else None)
            if method == "head":   # no body to say where
                if r.status_code != 422:
                    wrong.append(f"HEAD {path} {name}: {r.status_code}")
                continue
            error = r.json().get("error") or {}
            if r.status_code != 422 or error.get("where") != f"{where}.{name}" or \
                    f"at most {limit} characters" not in error.get("message", ""):
                wrong.append(f"{method.upper()} {path} {name}: {r.status_code} {r.text[:100]}")
        assert wrong == []


def _json_operations(app) -> list[tuple[str, str]]:
    return [(method, path) for path, methods in app.openapi()["paths"].items() for method, op in methods.items()
            if "application/json" in op.get("requestBody", {}).get("content", {})]


HOSTILE_BODIES = [
    (b'{"note": 1, "x": 99999999999999999999}', "body.x", "outside the signed 64-bit range"),
    (b'{"a": [1, -9223372036854775809]}', "body.a.1", "outside the signed 64-bit range"),
    (b'{"a": {"b": NaN}}', "body.a.b", "NaN is not a JSON number"),
    (b'[Infinity]', "body.0", "Infinity is not a JSON number"),
    (b'{"ttl_s": 1e400}', "body.ttl_s", "is not finite"),
    (b'{"a": ' + b'[' * 40 + b']' * 40 + b'}', "body.a.0.0", "nested more than 32 levels deep"),
    (b'[' * 5000 + b']' * 5000, "body", "nested more than 32 levels deep"),
    ('{"token": "abc"}'.encode("utf-16"), "body", "not UTF-8"),
    (b'{"n": ' + b'7' * 5000 + b'}', "body.n", "(5000 digits)"),
]


@pytest.mark.parametrize(("body", "where", "why"), HOSTILE_BODIES, ids=[w + ":" + y for _, w, y in HOSTILE_BODIES])
def test_json_bodies_out_of_bounds_are_a_clear_422_on_every_operation(app, body, where, why):
    """Whatever the schema of the body (those of the wire contract bound no integer): checked before
    any route parses it, so nothing out of range reaches a 64-bit column, a loop or a gate threshold."""
    operations = _json_operations(app)
    assert len(operations) >= 25
    with TestClient(app, raise_server_exceptions=False) as client:
        client.headers["Authorization"] = "Bearer eft_test-admin-token"
        wrong = []
        for method, path in operations:
            url = re.sub(r"\{[^}]+\}", "x", path)
            r = client.request(method.upper(), url, content=body, headers={"Content-Type": "application/json"})
            error = r.json().get("error", {}) if r.status_code == 422 else {}
            if error.get("where", "").split(".")[:3] != where.split(".")[:3] or why not in error.get("message", ""):
                wrong.append(f"{method.upper()} {path}: {r.status_code} {r.text[:120]}")
        assert wrong == []


def test_a_policy_threshold_past_64_bits_never_reaches_the_rollout(client, controller):
    stages = [{"name": "all", "kind": "percent", "percent": 100, "gates": {"install": {"min_executed": 2**70}}}]
    r = client.post("/api/v1/rollouts", json={"bundle": "ab" * 8, "policy": {"stages": stages}})
    assert r.status_code == 422
    assert r.json()["error"]["where"] == "body.policy.stages.0.gates.install.min_executed"
    assert client.get("/api/v1/rollouts").json() == []


def test_bodies_within_bounds_pass_through_unchanged(client):
    r = client.post("/api/v1/enrollment-tokens", json={"ttl_s": 120.5, "tags": ["site-a"]})
    assert r.status_code == 201 and r.json()["tags"] == ["site-a"]
    assert r.json()["expires_at"] - r.json()["created_at"] == pytest.approx(120.5)
    big = client.post("/api/v1/models", json={"name": "m", "description": "x" * 1500})
    assert big.status_code == 201
    syntax = client.post("/api/v1/models", content=b'{"name": ', headers={"Content-Type": "application/json"})
    assert syntax.status_code == 422 and syntax.json()["error"]["code"] == "invalid_request"


HOSTILE_HEADERS = {
    "Authorization": ["Bearer " + "x" * 8000, "Bearer", "Basic !!!", "bearer eft_\u00e9", "Bearer " + "\u00ff" * 10],
    "Content-Length": ["9" * 40, "-1", "abc"],
    "Content-Type": ["application/json; charset=" + "x" * 500, "multipart/form-data; boundary=", "\u00e9/\u00e9"],
    "Range": ["bytes=" + "9" * 40 + "-", "bytes=5-1", "bytes=-0", "lines=1-2", "bytes=" + ",".join(["0-1"] * 500)],
    "Content-Range": ["bytes 0-" + "9" * 40 + "/" + "9" * 40, "bytes x-y/z", "bytes 5-1/10"],
    "Cookie": ["edgefleet_ui=" + "x" * 4000, "edgefleet_ui=\u00e9; edgefleet_login="],
    "Origin": ["null", "http://" + "x" * 2000],
    "Upload-Offset": ["9" * 40],
}
HEADER_TARGETS = [("GET", "/api/v1/devices"), ("GET", "/api/v1/bundles/" + "ab" * 32 + "/download"),
                  ("POST", "/api/v1/enroll"), ("PUT", "/api/v1/uploads/up-x?token=x"), ("POST", "/api/v1/bundles"),
                  ("POST", "/api/v1/device/message-key"), ("GET", "/ui/devices"), ("POST", "/ui/login"),
                  ("POST", "/ui/logout"), ("GET", "/healthz")]


def test_hostile_headers_never_make_a_server_error(app):
    with TestClient(app):   # the controller started
        failures = []
        for i, (name, value) in enumerate((n, v) for n, values in HOSTILE_HEADERS.items() for v in values):
            # an address per value: fewer 401s each than the lockout after failed authentications allows
            client = TestClient(app, raise_server_exceptions=False, client=(f"192.0.2.{i}", 50000))
            for method, url in HEADER_TARGETS:
                r = client.request(method, url, content=b"{}", headers={name: value.encode("latin-1")})
                if r.status_code >= 500 or r.status_code == 429:
                    failures.append(f"{method} {url} {name}={value[:40]!r}: {r.status_code} {r.text[:100]}")
        assert failures == []
