"""A viewer's token is refused (403) by every state-changing REST route that needs an operator or an
admin, and the refused request changes nothing (no row of any table, no file of the controller's
stores, no message to the devices): the API holds the role limits whatever the UI shows or hides
(issue 13, "role limits").

The routes are a table (method, path, body); a new mutating route must join it, or the exemption list
with the reason a viewer may call it: ``test_the_table_covers_every_mutating_route`` fails otherwise.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from fastapi.routing import APIRoute
from fastapi.testclient import TestClient
from sqlalchemy import select
from sqlmodel import SQLModel

from edgefleet.cloud import api as rest
from edgefleet.cloud.app import create_app
from edgefleet.cloud.controller import Controller
from edgefleet.cloud.deps import AdminDep, OperatorDep
from edgefleet.cloud.settings import ControllerSettings
from edgefleet.protocol.messages import InstalledBundle

from cloudkit import ADMIN, FakeClock, FakeTransport, Fleet

MUTATING = {"POST", "PATCH", "PUT", "DELETE"}
DEVICE = "vr-1"
OCTET = object()
"""A body sent as raw bytes (an upload), not JSON."""


@dataclass
class World:
    client: TestClient
    controller: Controller
    transport: FakeTransport
    viewer: str
    ids: dict[str, str]
    data_dir: Path


@pytest.fixture(scope="module")
def world(tmp_path_factory, release_pub, make_bundle) -> Iterator[World]:
    """One controller for the module: a device that ran bundle 1.0.0 and then 2.0.0 (so it has one to roll
    back to), a deployment in progress, an enrollment token, a user, an admin-made token, a webhook, a
    rollout waiting; and a viewer's token."""
    clock = FakeClock()
    data_dir = tmp_path_factory.mktemp("viewer-refusals") / "controller"
    settings = ControllerSettings(data_dir=data_dir, broker_url="mqtt://127.0.0.1:1",
                                  release_key_paths=[release_pub], admin_token=ADMIN,
                                  public_url="http://controller.test", heartbeat_timeout_s=60,
                                  deployment_timeout_s=600)
    transport = FakeTransport()
    app = create_app(settings, clock=clock, transport_factory=lambda url, on_message: transport,
                     reconcile_in_background=False)
    with TestClient(app) as client:
        client.headers["Authorization"] = f"Bearer {ADMIN}"
        fleet = Fleet(client, app.state.controller, clock)
        fleet.add(DEVICE)
        client.patch(f"/api/v1/devices/{DEVICE}", json={"tags": ["lab"]}).raise_for_status()
        old, new = make_bundle(name="vr", version="1.0.0", build=1), make_bundle(name="vr", version="2.0.0", build=2)
        for built in (old, new):
            r = client.post("/api/v1/bundles", content=built.data, headers={"Content-Type": "application/octet-stream"})
            assert r.status_code == 201, r.text
        for built, version, build in ((old, "1.0.0", 1), (new, "2.0.0", 2)):
            dep = client.post("/api/v1/deployments", json={"bundle": built.digest, "device_ids": [DEVICE]}).json()
            (ordered,) = dep["targets"]
            fleet.status(DEVICE, dep["id"], ordered["sequence"], "committed", final=True, outcome="committed")
            assert client.get(f"/api/v1/deployments/{dep['id']}").json()["status"] == "succeeded"
            fleet.state(DEVICE, installed=InstalledBundle(name="vr", version=version, build=build,
                                                          digest=built.digest, runtime="onnx"))
        def made(path: str, body: dict) -> dict:
            r = client.post(path, json=body)
            assert r.status_code == 201, r.text
            return r.json()

        open_dep = made("/api/v1/deployments", {"bundle": old.digest, "device_ids": [DEVICE]})
        enrollment = made("/api/v1/enrollment-tokens", {"device_id": "vr-2"})
        made("/api/v1/users", {"name": "ursula", "role": "operator"})
        shared = made("/api/v1/tokens", {"name": "ci", "role": "operator"})
        hook = made("/api/v1/webhooks", {"url": "https://hooks.example.com/ef"})
        rollout = made("/api/v1/rollouts", {"bundle": new.digest, "selector": {"tags": ["lab"]}})
        viewer = made("/api/v1/tokens", {"name": "watcher", "role": "viewer"})["token"]
        # its first use writes its last-used time: done here, before any snapshot
        assert client.get("/api/v1/devices", headers={"Authorization": f"Bearer {viewer}"}).status_code == 200
        yield World(client=client, controller=app.state.controller, transport=transport, viewer=viewer,
                    data_dir=data_dir, ids={
            "device_id": DEVICE, "bundle": new.digest, "old_bundle": old.digest, "digest": old.digest,
            "deployment_id": open_dep["id"], "token_id": str(shared["id"]),
            "enrollment_token_id": str(enrollment["id"]),
            "user": "ursula", "name": "vr", "version": "1.0.0", "webhook_id": str(hook["id"]),
            "rollout_id": rollout["id"], "experiment_id": "exp-none", "incident_id": "inc-none", "dataset_id": "1",
            "key_id": "0123456789abcdef"})


# (method, route path, body): the route's parameters are filled with the world's ids (``target``); the
# bodies are ones an operator or admin could send, so it is the role that is refused, not the request.
REFUSED: list[tuple[str, str, Any]] = [
    # deployments (the console's deploy, cancel, retry, roll back)
    ("POST", "/api/v1/deployments", {"bundle": "{bundle}", "device_ids": ["{device_id}"]}),
    ("POST", "/api/v1/deployments/{deployment_id}/cancel", None),
    ("POST", "/api/v1/deployments/{deployment_id}/retry", None),
    ("POST", "/api/v1/devices/{device_id}/rollback", None),
    ("POST", "/api/v1/deployments/{deployment_id}/rollback", None),
    ("POST", "/api/v1/devices/rollback", {"tag": "lab"}),
    # devices (tags, decommission, enrollment tokens)
    ("PATCH", "/api/v1/devices/{device_id}", {"tags": ["viewer-was-here"]}),
    ("POST", "/api/v1/devices/{device_id}/decommission", None),
    ("POST", "/api/v1/devices/{device_id}/broker-password", None),
    ("POST", "/api/v1/enrollment-tokens", {"device_id": "vr-3", "tags": ["lab"]}),
    ("DELETE", "/api/v1/enrollment-tokens/{token_id}", None),
    # bundles and models
    ("POST", "/api/v1/bundles", OCTET),
    ("DELETE", "/api/v1/bundles/{digest}", None),
    ("POST", "/api/v1/models", {"name": "viewer-model"}),
    ("POST", "/api/v1/models/{name}/versions", {"version": "9.0.0"}),
    ("POST", "/api/v1/models/{name}/versions/{version}/bundles", {}),
    ("PUT", "/api/v1/models/{name}/versions/{version}/artifact", OCTET),
    ("PUT", "/api/v1/models/{name}/dataset", OCTET),
    ("POST", "/api/v1/models/{name}/versions/{version}/compress", {}),
    ("PUT", "/api/v1/models/{name}/recipe", OCTET),
    ("POST", "/api/v1/models/{name}/retrain", {}),
    ("DELETE", "/api/v1/captures/{dataset_id}", None),
    # rollouts and experiments
    ("POST", "/api/v1/rollouts", {"bundle": "{bundle}", "selector": {"tags": ["lab"]}}),
    ("POST", "/api/v1/rollouts/{rollout_id}/approve", {"reason": "looks fine"}),
    ("POST", "/api/v1/rollouts/{rollout_id}/pause", {"reason": "x"}),
    ("POST", "/api/v1/rollouts/{rollout_id}/resume", None),
    ("POST", "/api/v1/rollouts/{rollout_id}/promote", None),
    ("POST", "/api/v1/rollouts/{rollout_id}/abort", {"reason": "x"}),
    ("POST", "/api/v1/rollouts/{rollout_id}/cancel", None),
    ("POST", "/api/v1/experiments", {"bundle": "{bundle}", "control": "{old_bundle}", "tag": "lab"}),
    ("POST", "/api/v1/experiments/{experiment_id}/stop", None),
    ("POST", "/api/v1/experiments/{experiment_id}/promote", {"arm": "candidate"}),
    ("POST", "/api/v1/incidents/{incident_id}/close", {"reason": "x"}),
    # people and tokens (admin)
    ("POST", "/api/v1/users", {"name": "vic", "role": "admin", "password": "a-long-enough-password-1"}),
    ("PATCH", "/api/v1/users/{name}", {"role": "admin"}),
    ("PATCH", "/api/v1/users/{name}", {"disabled": True}),
    ("POST", "/api/v1/users/{name}/password", {"password": "a-long-enough-password-2"}),
    ("POST", "/api/v1/tokens", {"name": "mine", "role": "admin"}),
    ("DELETE", "/api/v1/tokens/{token_id}", None),
    # webhooks and keys (admin)
    ("POST", "/api/v1/webhooks", {"url": "https://hooks.example.com/viewer"}),
    ("DELETE", "/api/v1/webhooks/{webhook_id}", None),
    ("POST", "/api/v1/webhooks/{webhook_id}/ping", None),
    ("POST", "/api/v1/release-keys", {"pem": "-----BEGIN PUBLIC KEY-----"}),
    ("DELETE", "/api/v1/release-keys/{key_id}", None),
    ("POST", "/api/v1/delegations", {}),
    ("POST", "/api/v1/trust/roots", {}),
    ("POST", "/api/v1/trust/controller-key/next", None),
]

EXEMPT: dict[tuple[str, str], str] = {
    ("POST", "/api/v1/enroll"): "a device's token exchange: takes the one-time enrollment token, no API token",
    ("POST", "/api/v1/device/message-key"): "a device registers its own message key with its device token",
    ("PUT", "/api/v1/uploads/{upload_id}"): "a device's capture upload, with the upload's own token",
    ("POST", "/api/v1/me/tokens"): "anyone makes personal tokens of their own, up to their own role",
    ("DELETE", "/api/v1/me/tokens/{token_id}"): "anyone revokes their own personal tokens",
}
"""Mutating routes a viewer may call (or that take no person's token at all), and why."""


def mutating_routes() -> dict[tuple[str, str], APIRoute]:
    """Every POST/PATCH/PUT/DELETE route of the REST API's routers (as ``api.install`` mounts them)."""
    found: dict[tuple[str, str], APIRoute] = {}
    for module in rest.RESOURCES + (rest.models, rest.bundles, rest.uploads):
        for router in (getattr(module, "api", None), getattr(module, "uploads", None)):
            for route in router.routes if router is not None else ():
                if isinstance(route, APIRoute):
                    for method in route.methods & MUTATING:
                        found[(method, route.path)] = route
    return found


def dependency_calls(dependant) -> Iterator[Any]:
    for sub in dependant.dependencies:
        yield sub.call
        yield from dependency_calls(sub)


def needs_operator_or_admin(route: APIRoute) -> bool:
    checks = {OperatorDep.__metadata__[0].dependency, AdminDep.__metadata__[0].dependency}
    return bool(checks & set(dependency_calls(route.dependant)))


def test_the_table_covers_every_mutating_route(world):
    """Each mutating route is in the table or exempt (never both), no operator/admin route is exempt, and the
    walk of the routers sees every mutating route the app serves (its OpenAPI paths)."""
    routes = mutating_routes()
    table = {(method, path) for method, path, _ in REFUSED}
    assert table <= set(routes), f"not a route: {sorted(table - set(routes))}"
    assert not table & set(EXEMPT), "a route is both refused and exempt"
    missing = set(routes) - table - set(EXEMPT)
    assert not missing, f"mutating routes in neither the table nor the exemptions: {sorted(missing)}"
    assert not {key for key in EXEMPT if needs_operator_or_admin(routes[key])}, "an operator/admin route is exempt"
    assert len([key for key, route in routes.items() if needs_operator_or_admin(route)]) >= 40
    served = {(method.upper(), path) for path, item in world.client.get("/openapi.json").json()["paths"].items()
              for method in item if method.upper() in MUTATING}
    assert served == set(routes), served ^ set(routes)


def snapshot(world: World) -> tuple[dict[str, list[tuple]], list[str]]:
    """Every row of every table, and every file under the controller's data directory but the database's."""
    with world.controller.engine.connect() as connection:
        rows = {table.name: sorted(tuple(map(repr, row)) for row in connection.execute(select(table)))
                for table in SQLModel.metadata.sorted_tables}
    files = sorted(str(p.relative_to(world.data_dir)) for p in world.data_dir.rglob("*")
                   if p.is_file() and ".db" not in p.name)
    return rows, files


OVERRIDES = {"/api/v1/enrollment-tokens/": {"token_id": "enrollment_token_id"}, "/api/v1/users/": {"name": "user"}}
"""Routes whose parameter name means another id than elsewhere (an enrollment token's, a user's name)."""


def target(path: str, ids: dict[str, str]) -> str:
    for prefix, renamed in OVERRIDES.items():
        if path.startswith(prefix):
            ids = ids | {param: ids[key] for param, key in renamed.items()}
    return path.format(**ids)


def _fill(value: Any, ids: dict[str, str]) -> Any:
    if isinstance(value, str):
        return value.format(**ids)
    if isinstance(value, list):
        return [_fill(v, ids) for v in value]
    if isinstance(value, dict):
        return {k: _fill(v, ids) for k, v in value.items()}
    return value


@pytest.mark.parametrize(("method", "path", "body"), REFUSED, ids=[f"{m} {p}" for m, p, _ in REFUSED])
def test_a_viewer_is_refused_and_nothing_changes(world, make_bundle, method, path, body):
    before, published = snapshot(world), list(world.transport.published)
    audit_before = world.client.get("/api/v1/audit", params={"limit": 1000}).json()
    kwargs: dict[str, Any] = {"headers": {"Authorization": f"Bearer {world.viewer}"}}
    if body is OCTET:
        kwargs["content"] = make_bundle(name="vr", version="3.0.0", build=3).data
        kwargs["headers"]["Content-Type"] = "application/octet-stream"
    elif body is not None:
        kwargs["json"] = _fill(body, world.ids)
    r = world.client.request(method, target(path, world.ids), **kwargs)
    assert r.status_code == 403, r.text
    error = r.json()["error"]
    assert error["code"] == "forbidden" and "role" in (error["hint"] or error["message"]), error
    assert snapshot(world) == before, "a refused request changed the controller's state"
    assert world.client.get("/api/v1/audit", params={"limit": 1000}).json() == audit_before
    assert world.transport.published == published, "a refused request sent something to the devices"
