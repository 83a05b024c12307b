"""The upload routes stream their bodies (``async``), but every database call they make runs in the
thread pool (cloud/api/transfer.py): a write that waits for SQLite's lock on the event loop blocked
the commit of the request holding it, until the wait ran out ("database is locked")."""

from __future__ import annotations

import io

import numpy as np
import pytest

from edgefleet.cloud.services import datasets, model_recipes, registry

from cloudkit import on_event_loop

OCTETS = {"Content-Type": "application/octet-stream"}


@pytest.fixture
def spy(monkeypatch):
    """``spy(module, name)``: record, per call of ``module.name``, whether it ran on the event loop."""
    seen: dict[str, list[bool]] = {}

    def install(module, name: str) -> None:
        real = getattr(module, name)

        def recording(*args, **kwargs):
            seen.setdefault(name, []).append(on_event_loop())
            return real(*args, **kwargs)

        monkeypatch.setattr(module, name, recording)

    install.seen = seen
    return install


def test_uploads_of_bundles_models_datasets_and_recipes_write_off_the_event_loop(client, spy, make_bundle,
                                                                                 onnx_model):
    for module, name in ((registry, "register_bundle"), (registry, "get_model_version"),
                         (registry, "attach_artifact"), (registry, "get_model"), (datasets, "store_dataset"),
                         (model_recipes, "set_recipe")):
        spy(module, name)
    assert client.post("/api/v1/bundles", content=make_bundle().data, headers=OCTETS).status_code == 201
    assert client.post("/api/v1/models", json={"name": "m"}).status_code == 201
    assert client.post("/api/v1/models/m/versions", json={"version": "1.0.0"}).status_code == 201
    r = client.put("/api/v1/models/m/versions/1.0.0/artifact", content=onnx_model, headers=OCTETS)
    assert r.status_code == 200, r.text
    buf = io.BytesIO()
    np.savez(buf, x=np.zeros((8, 4), np.float32))
    assert client.put("/api/v1/models/m/dataset", content=buf.getvalue(), headers=OCTETS).status_code == 200
    r = client.put("/api/v1/models/m/recipe", content=b'[training]\nentry_point = "pkg.mod:fn"\n',
                   headers={"Content-Type": "application/toml"})
    assert r.status_code in (200, 400), r.text   # stored or refused, the call ran either way
    assert set(spy.seen) == {"register_bundle", "get_model_version", "attach_artifact", "get_model", "store_dataset",
                             "set_recipe"}
    assert not any(on_loop for calls in spy.seen.values() for on_loop in calls), spy.seen
