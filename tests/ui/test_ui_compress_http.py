"""Compression from the model page over plain HTTP: an operator queues a job (confirmed, CSRF-checked)
through the same service call as ``POST /api/v1/models/{name}/versions/{version}/compress`` (its audit
entry), the page shows it pending, then succeeded with the registered variant and its report; a job the
stored recipe's gate refuses shows ``failed`` with its error and report; a viewer sees no form and is
refused, and bad or unconfirmed posts store no job and say why."""

from __future__ import annotations

import time

import pytest
from fastapi.testclient import TestClient

from edgefleet.cloud.app import create_app
from edgefleet.cloud.services import audit, auth, compression_jobs, model_recipes, registry
from edgefleet.cloud.settings import ControllerSettings
from edgefleet.compression.samples import load_digits_split, train_mlp

from .test_ui_http import ADMIN, NoTransport, login

REFUSING = {"mode": "static_int8", "pruning": {"kind": "unstructured", "sparsity": 0.95},
            "gate": {"max_accuracy_drop": 0.0}, "fallback": {"enabled": False}, "latency_runs": 2}
"""A recipe whose result the accuracy gate refuses."""


@pytest.fixture(scope="module")
def mlp() -> bytes:
    return train_mlp(load_digits_split(), hidden=(16,))


@pytest.fixture
def app(tmp_path, mlp):
    settings = ControllerSettings(data_dir=tmp_path / "controller", broker_url="mqtt://127.0.0.1:1", admin_token=ADMIN)
    app = create_app(settings, transport_factory=lambda url, on_message: NoTransport(), reconcile_in_background=False)
    controller = app.state.controller
    with controller.session() as session:
        now = time.time()
        registry.create_model(session, name="digits", actor="admin:test", now=now)
        registry.create_model_version(session, model_name="digits", version="1.0.0", actor="admin:test", now=now)
        registry.attach_artifact(session, model_name="digits", version="1.0.0", incoming=controller.artifacts.put(mlp),
                                 store=controller.artifacts, actor="admin:test", now=now)
    return app


@pytest.fixture
def client(app):
    with TestClient(app, follow_redirects=False) as c:
        yield c


def token(app, role: str) -> str:
    with app.state.controller.session() as session:
        return auth.create_token(session, name=role, role=role, actor="admin:test", now=time.time())[1]


def jobs(app) -> list:
    with app.state.controller.session() as session:
        return compression_jobs.list_jobs(session, model_name="digits")


FORM = {"version": "1.0.0", "variant": "1.0.0-int8", "mode": "dynamic_int8", "runtime": "onnx", "data": "digits",
        "confirm": "yes"}


def test_an_operator_compresses_a_version_and_sees_the_variant_with_its_report(app, client):
    login(client, token=token(app, "operator"))
    page = client.get("/ui/models/digits").text
    assert 'id="compress-form"' in page and "No compression job yet" in page
    assert '<option value="recipe"' not in page                     # no stored recipe: modes only
    r = client.post("/ui/models/digits/compress", data=FORM)
    (job,) = jobs(app)
    assert r.status_code == 303 and r.headers["location"] == f"/ui/models/digits#job-{job.id}"
    assert job.state == "pending" and job.config["mode"] == "dynamic_int8"
    with app.state.controller.session() as session:
        (entry,) = audit.list_entries(session, action="compression_job.create")
        assert entry.actor.startswith("operator:") and entry.target == f"compression_job:{job.id}"
    page = client.get("/ui/models/digits").text
    assert f'id="job-{job.id}" data-state="pending"' in page
    assert app.state.controller.run_pending_jobs() == [job.id]
    page = client.get("/ui/models/digits").text
    assert f'id="job-{job.id}" data-state="succeeded"' in page
    assert '<a href="#v-1.0.0-int8">1.0.0-int8</a> registered' in page
    variant = page.split('id="v-1.0.0-int8"', 1)[1]
    assert "Compression report" in variant.split("</section>", 1)[0]
    assert client.post("/ui/models/digits/compress", data=FORM).status_code == 409   # the variant exists
    assert len(jobs(app)) == 1


def test_a_job_the_recipe_gate_refuses_shows_failed_with_its_error_and_report(app, client):
    with app.state.controller.session() as session:
        model_recipes.set_recipe(session, model_name="digits", document={"compression": REFUSING},
                                 actor="admin:test", now=time.time())
    login(client)
    assert '<option value="recipe" selected' in client.get("/ui/models/digits").text
    assert client.post("/ui/models/digits/compress", data=FORM | {"variant": "1.0.0-bad", "mode": "recipe"}
                       ).status_code == 303
    (job,) = jobs(app)
    assert job.config["pruning"]["sparsity"] == 0.95                # the recipe's table, not the defaults
    app.state.controller.run_pending_jobs()
    page = client.get("/ui/models/digits").text
    assert f'id="job-{job.id}" data-state="failed"' in page and "accuracy gate failed" in page
    assert f'id="job-report-{job.id}"' in page
    assert 'id="v-1.0.0-bad"' not in page                            # nothing registered


BAD_POSTS = [
    ({"confirm": ""}, 400, "confirm"),
    ({"variant": "../x"}, 400, "variant"),
    ({"mode": "int3"}, 400, "mode"),
    ({"mode": "recipe"}, 409, "mode"),                                 # no stored recipe
    ({"runtime": "coreml"}, 400, "runtime"),
    ({"version": "9.9.9"}, 400, "version"),
]


def test_bad_posts_store_no_job_and_say_why(app, client):
    login(client)
    for change, status, where in BAD_POSTS:
        r = client.post("/ui/models/digits/compress", data=FORM | change)
        assert r.status_code == status and f'data-where="{where}"' in r.text, (change, r.status_code)
        assert "No job was queued" in r.text
    assert jobs(app) == []


def test_a_viewer_sees_no_form_and_is_refused_and_a_post_needs_the_csrf_token(app, client):
    login(client, token=token(app, "viewer"))
    page = client.get("/ui/models/digits")
    assert page.status_code == 200 and 'id="compress-form"' not in page.text
    assert client.post("/ui/models/digits/compress", data=FORM).status_code == 403
    login(client)
    del client.headers["X-CSRF-Token"]
    r = client.post("/ui/models/digits/compress", data=FORM)
    assert r.status_code == 403 and "CSRF" in r.text
    assert jobs(app) == []
