"""Retraining jobs (services/retraining.py, docs/retraining.md): a model's recipe (validated, key named),
the real digits entry point end to end (a new version with lineage, a compressed variant, a bundle
signed by the delegated key that verifies against the controller's trust), and each way a run fails:
an exception, an entry point that cannot be imported, a command exiting non-zero, a time-out, the
memory limit, no or a bad output, a gate refusal; recovery after a restart; the incident trigger."""

from __future__ import annotations

import io
import json
import os
import re
import sys
import threading
import tomllib
import uuid
from pathlib import Path

import numpy as np
import pytest

from edgefleet.cloud.cli import models as cli_models
from edgefleet.cloud.cli import retrain as cli_retrain
from edgefleet.cloud.services import retraining, trust
from edgefleet.cloud.services.retraining import next_version
from edgefleet.cloud.services.retraining_runner import EntryPoint, TrainingFailed, run_training
from edgefleet.cloud.store.tables import CapturedDataset, CompressionJob, Incident, RetrainingJob
from edgefleet.compression.samples import load_digits_split, train_mlp
from edgefleet.protocol import keys
from edgefleet.protocol.bundle import verify_bundle
from edgefleet.protocol.delegation import make_delegation, sign_delegations
from edgefleet.protocol.messages import DelegationsDocument

from cloudkit import cli_runner

HERE = Path(__file__).resolve().parent
RECIPE = HERE.parents[1] / "firmware-bundles" / "digits-mlp.toml"
OCTETS = {"Content-Type": "application/octet-stream"}
TOML = {"Content-Type": "application/toml"}
BUNDLE_DIGEST = "ab" * 32


@pytest.fixture(scope="module")
def mlp() -> bytes:
    """A small digits MLP: the failure tests never get far enough for its size to matter."""
    return train_mlp(load_digits_split(), hidden=(32,))


@pytest.fixture(scope="module")
def full_mlp() -> bytes:
    """The digits MLP of ``edgefleet sample-models`` (512, 256), which digits-mlp.toml's compression suits."""
    return train_mlp(load_digits_split())


@pytest.fixture
def delegated_key(tmp_path):
    key = keys.generate_private_key()
    return key, keys.save_private_key(key, tmp_path / "keys" / "retrain.key")


@pytest.fixture
def settings(settings, delegated_key):
    return settings.model_copy(update={"delegated_signing_key_path": delegated_key[1]})


def delegate(client, clock, release_key, delegated_key) -> None:
    """The release key delegates ``digits-*`` bundles to the controller's delegated key."""
    expires = int(clock() + 30 * 86400)
    doc = DelegationsDocument(version=1, expires_at=expires, delegations=[make_delegation(
        name="retrain", public_key=delegated_key.public_key(), name_patterns=["digits-*"],
        hardware_classes=["*"], expires_at=expires)])
    r = client.post("/api/v1/delegations", json=sign_delegations(doc, [release_key]).model_dump(mode="json"))
    assert r.status_code == 201, r.text


@pytest.fixture
def delegated(client, clock, release_key, delegated_key):
    delegate(client, clock, release_key, delegated_key[0])


@pytest.fixture
def entries(monkeypatch):
    """The job's subprocess finds tests/cloud/training_entries.py."""
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(p for p in (str(HERE), os.environ.get("PYTHONPATH")) if p))


def recipe(**training) -> dict:
    """digits-mlp.toml as stored on the controller, with ``training`` keys replaced (and fast latency runs)."""
    doc = tomllib.loads(RECIPE.read_text())
    doc["training"] |= training
    doc["compression"]["latency_runs"] = 2
    return doc


def set_recipe(client, doc: dict, model: str = "digits") -> None:
    r = client.put(f"/api/v1/models/{model}/recipe", json=doc)
    assert r.status_code == 200, r.text


def register_digits(client, model: bytes):
    """Model ``digits``: version 1.0.0 (``model``), the digits training split as its reference dataset,
    and the recipe of firmware-bundles/digits-mlp.toml."""
    split = load_digits_split()
    assert client.post("/api/v1/models", json={"name": "digits"}).status_code == 201
    assert client.post("/api/v1/models/digits/versions", json={"version": "1.0.0"}).status_code == 201
    assert client.put("/api/v1/models/digits/versions/1.0.0/artifact", content=model, headers=OCTETS).status_code == 200
    buf = io.BytesIO()
    np.savez(buf, x=split.x_train, y=split.y_train)
    assert client.put("/api/v1/models/digits/dataset", content=buf.getvalue(), headers=OCTETS).status_code == 200
    set_recipe(client, recipe())
    return split


@pytest.fixture
def digits(client, mlp, delegated, entries):
    return register_digits(client, mlp)


@pytest.fixture
def full_digits(client, full_mlp, delegated, entries):
    return register_digits(client, full_mlp)


def add_captured(controller, clock, *, n: int = 40, labelled: int = 30, device: str = "cam-1") -> int:
    """A captured dataset of model ``digits`` as the capture service stores it (digits test samples)."""
    split = load_digits_split(seed=1)
    label = split.y_test[:n].copy()
    label[labelled:] = -1
    buf = io.BytesIO()
    np.savez(buf, **{"input:input": split.x_test[:n]}, prediction_id=np.array([f"p{i}" for i in range(n)]),
             sample_index=np.zeros(n, dtype=np.int64), at=np.linspace(clock() - 60, clock(), n),
             predicted=np.clip(label, 0, None), label=label, bundle_digest=np.array(BUNDLE_DIGEST))
    incoming = controller.captures.put(buf.getvalue())
    controller.captures.commit(incoming)
    with controller.session() as session:
        row = CapturedDataset(upload_id=uuid.uuid4().hex, device_id=device, bundle_digest=BUNDLE_DIGEST,
                              model_name="digits", t_from=clock() - 60, t_to=clock(), samples=n, labelled=labelled,
                              blob_digest=incoming.digest, size=incoming.size, stored_at=clock())
        session.add(row)
        session.flush()
        return row.id


def job(client, job_id: int) -> dict:
    r = client.get(f"/api/v1/retraining-jobs/{job_id}")
    assert r.status_code == 200, r.text
    return r.json()


def retrain_and_run(client, controller, **body) -> dict:
    r = client.post("/api/v1/models/digits/retrain", json=body)
    assert r.status_code == 202, r.text
    assert r.json()["state"] == "pending"
    assert controller.run_retraining_jobs() == [r.json()["id"]]
    return job(client, r.json()["id"])


def versions(client) -> list[str]:
    return [v["version"] for v in client.get("/api/v1/models/digits").json()["versions"]]


# ---------------------------------------------------------------- the recipe


def test_the_recipe_is_stored_as_toml_or_json_and_shown(client, mlp):
    client.post("/api/v1/models", json={"name": "digits"})
    assert client.get("/api/v1/models/digits/recipe").status_code == 404
    r = client.put("/api/v1/models/digits/recipe", content=RECIPE.read_bytes(), headers=TOML)
    assert r.status_code == 200, r.text
    stored = client.get("/api/v1/models/digits/recipe").json()
    assert stored["recipe"]["training"]["entry_point"] == "edgefleet.compression.samples:retrain_digits"
    assert stored["recipe"]["bundle"]["name"] == "digits-mlp" and stored["updated_by"]
    assert client.put("/api/v1/models/digits/recipe", json={"training": {"command": ["train.sh"]}}).status_code == 200
    assert client.get("/api/v1/models/digits/recipe").json()["recipe"] == {"training": {"command": ["train.sh"]}}
    assert client.put("/api/v1/models/nope/recipe", json={"training": {"command": ["x"]}}).status_code == 404


@pytest.mark.parametrize(("change", "where"), [
    ({"training": {"entry_point": "not a callable"}}, "training.entry_point"),
    ({"training": {"entry_point": "a.b:c", "command": ["x"]}}, "training"),
    ({"training": {}}, "training"),
    ({"training": {"command": ["x"], "timeout_s": 0}}, "training.timeout_s"),
    ({"training": {"command": ["x"], "memory_mb": "lots"}}, "training.memory_mb"),
    ({"training": {"command": ["x"], "gpu": True}}, "training.gpu"),
    ({"compression": {"mode": "int3"}}, "compression.mode"),
    ({"compression": {"gate": {"max_accuracy_drop": -1}}}, "compression.gate.max_accuracy_drop"),
    ({"bundle": {"name": "digits-mlp", "version": "one", "build": 1, "runtime": "onnx"}}, "bundle.version"),
    ({"target": {"arch": ["x86_64"]}}, "target.arch"),
])
def test_a_wrong_recipe_is_refused_naming_the_key_and_nothing_is_stored(client, change, where):
    client.post("/api/v1/models", json={"name": "digits"})
    doc = {k: v for k, v in tomllib.loads(RECIPE.read_text()).items() if k not in change} | change
    r = client.put("/api/v1/models/digits/recipe", json=doc)
    assert r.status_code == 400, r.text
    assert r.json()["error"]["code"] == "invalid_recipe" and r.json()["error"]["where"] == where, r.json()
    assert client.get("/api/v1/models/digits/recipe").status_code == 404


def test_a_recipe_that_is_not_toml_says_so(client):
    client.post("/api/v1/models", json={"name": "digits"})
    r = client.put("/api/v1/models/digits/recipe", content=b"[training\nentry_point = 1", headers=TOML)
    assert r.status_code == 400 and "not valid TOML" in r.json()["error"]["message"]
    r = client.put("/api/v1/models/digits/recipe", content=b"[1, 2]", headers={"Content-Type": "application/json"})
    assert r.status_code == 400 and r.json()["error"]["where"] == "body"


def test_retrain_is_refused_until_the_model_can_be_retrained(client, mlp, delegated, entries):
    client.post("/api/v1/models", json={"name": "digits"})
    r = client.post("/api/v1/models/digits/retrain", json={})
    assert r.status_code == 409 and r.json()["error"]["where"] == "recipe", r.json()
    set_recipe(client, {"training": {"entry_point": "training_entries:copies_parent"}})
    r = client.post("/api/v1/models/digits/retrain", json={})
    assert r.status_code == 409 and r.json()["error"]["where"] == "recipe.compression"
    set_recipe(client, recipe())
    r = client.post("/api/v1/models/digits/retrain", json={})
    assert r.status_code == 409 and "no source version" in r.json()["error"]["message"]
    client.post("/api/v1/models/digits/versions", json={"version": "1.0.0"})
    client.put("/api/v1/models/digits/versions/1.0.0/artifact", content=mlp, headers=OCTETS)
    r = client.post("/api/v1/models/digits/retrain", json={})
    assert r.status_code == 409 and r.json()["error"]["where"] == "data" and "/dataset" in r.json()["error"]["hint"]
    assert client.post("/api/v1/models/digits/retrain", json={"parent": "9.9.9"}).status_code == 404
    assert client.get("/api/v1/retraining-jobs").json() == []


# ---------------------------------------------------------------- success


def test_retraining_with_the_digits_entry_point_registers_compresses_and_bundles(client, controller, clock,
                                                                                 full_digits, delegated_key):
    captured = [add_captured(controller, clock), add_captured(controller, clock, device="cam-2")]
    done = retrain_and_run(client, controller, incident_id="inc-7", note="drift on site 3")
    assert done["state"] == "succeeded", done
    assert done["result_version"] == "1.0.1" and done["compressed_version"] == "1.0.1-static-int8"
    assert list(done["timings"]) == ["gather", "train", "register", "compress", "bundle"]
    assert done["datasets"]["captured"] == {"ids": captured, "samples": 80, "labelled": 60}
    assert done["datasets"]["reference"]["samples"] == len(full_digits.x_train)
    assert "1437 reference + 60 captured labelled samples, hidden layers (512, 256)" in done["log_tail"]
    assert done["report"]["gate"]["passed"] and done["error_code"] is None

    parent = client.get("/api/v1/models/digits/versions/1.0.0").json()
    new = client.get("/api/v1/models/digits/versions/1.0.1").json()
    assert new["kind"] == "source" and new["parent_id"] == parent["id"]
    assert new["artifact_digest"] not in (None, parent["artifact_digest"])
    assert new["lineage"] == {"parent": "1.0.0", "parent_digest": parent["artifact_digest"], "incident": "inc-7",
                              "datasets": done["datasets"], "job": done["id"],
                              "entry_point": "edgefleet.compression.samples:retrain_digits"}
    (root,) = client.get("/api/v1/models/digits").json()["lineage"]
    (retrained,) = root["children"]
    (variant,) = retrained["children"]
    assert (retrained["version"], variant["version"]) == ("1.0.1", "1.0.1-static-int8")
    assert retrained["lineage"]["incident"] == "inc-7" and variant["bundles"][0]["digest"] == done["bundle_digest"]

    data = controller.bundles.open_path(done["bundle_digest"]).read_bytes()
    with controller.session() as session:
        verified = verify_bundle(data, trusted=controller.trusted_release_keys(session),
                                 delegation=trust.delegation_check(session, now=clock()))
    manifest = verified.manifest
    assert (manifest.name, manifest.version, manifest.build) == ("digits-mlp", "1.0.1", 1)
    assert verified.delegated is not None and verified.delegated.delegation.name == "retrain"
    assert verified.signed_by == {keys.key_id(delegated_key[0].public_key())}
    assert manifest.compression["gate"]["passed"]

    again = retrain_and_run(client, controller)          # from the newest source version, the next build
    assert again["state"] == "succeeded", again
    assert (again["parent_version"], again["result_version"], again["incident_id"]) == ("1.0.1", "1.0.2", None)
    assert client.get(f"/api/v1/bundles/{again['bundle_digest']}").json()["build"] == 2
    assert [j["id"] for j in client.get("/api/v1/retraining-jobs", params={"model": "digits"}).json()] == \
        [again["id"], done["id"]]
    assert client.get("/api/v1/retraining-jobs", params={"state": "failed"}).json() == []


def test_a_job_of_an_incident_makes_its_devices_captured_inputs_a_known_regime(client, controller, clock,
                                                                              full_digits):
    """The healed devices' inputs are what the new model was trained for: those they served while at
    alarm go into the bundle's reference profile as a regime; their earlier samples and the other
    devices' samples train the model but are not the regime."""
    add_captured(controller, clock, n=40, device="cam-1")
    add_captured(controller, clock, n=30, labelled=20, device="cam-2")
    with controller.session() as session:
        session.add(Incident(id="inc-regime", cohort_kind="device", cohort_key="cam-2", bundle_digest=BUNDLE_DIGEST,
                             model_name="digits", state="open", opened_at=clock(), first_alarm_at=clock() - 30,
                             last_alarm_at=clock(), last_window_end=clock(), devices=["cam-2"], updated_at=clock()))
    done = retrain_and_run(client, controller, incident_id="inc-regime")
    assert done["state"] == "succeeded", done
    assert done["datasets"]["captured"]["samples"] == 70
    profile = _verified(controller, done["bundle_digest"]).reference_profile()
    (regime,) = profile.regimes
    assert (regime.name, regime.samples) == ("incident inc-regime", 15)   # cam-2's 30 span the last 60 s
    assert [len(p) for p in regime.probs] == [len(f.probs) for f in profile.features]

    plain = retrain_and_run(client, controller, incident_id="inc-not-stored")   # no such incident: no regime
    assert plain["state"] == "succeeded", plain
    assert _verified(controller, plain["bundle_digest"]).reference_profile().regimes == []


def _verified(controller, digest: str):
    with controller.session() as session:
        return verify_bundle(controller.bundles.open_path(digest).read_bytes(),
                             trusted=controller.trusted_release_keys(session),
                             delegation=trust.delegation_check(session, now=controller.now()))


def test_next_version_is_the_next_free_patch():
    assert next_version({"1.0.0"}, "1.0.0") == "1.0.1"
    assert next_version({"1.0.0", "1.0.1", "1.0.2"}, "1.0.0") == "1.0.3"
    assert next_version(set(), "2.1.0-rc.1") == "2.1.1"
    assert next_version({"v7", "v7-retrain.1"}, "v7") == "v7-retrain.2"


# ---------------------------------------------------------------- failures


@pytest.mark.parametrize(("training", "code", "says"), [
    ({"entry_point": "training_entries:raises"}, "training_failed",
     "training_entries:raises raised ValueError: labels of digits are inconsistent"),
    ({"entry_point": "training_entries_gone:raises"}, "entry_point_not_found",
     "cannot load the entry point training_entries_gone:raises: ModuleNotFoundError: No module named "
     "'training_entries_gone'"),
    ({"entry_point": "training_entries:missing"}, "entry_point_not_found", "has no attribute 'missing'"),
    ({"entry_point": "training_entries:not_callable"}, "entry_point_not_found", "is not callable"),
    ({"command": [sys.executable, "-c", "import sys; print('epoch 1: loss nan'); sys.exit(3)"]}, "training_failed",
     "exited with code 3: epoch 1: loss nan"),
    ({"command": ["/nonexistent/train"]}, "entry_point_not_found", "cannot run '/nonexistent/train'"),
    ({"entry_point": "training_entries:writes_nothing"}, "no_output", "ended without writing the model to output.onnx"),
    ({"entry_point": "training_entries:writes_garbage"}, "bad_output", "output.onnx is not a model onnx loads"),
    ({"entry_point": "training_entries:writes_other_inputs"}, "bad_output",
     "output.onnx has inputs [('input', [16])], the parent model [('input', [64])]"),
])
def test_a_failing_entry_point_gives_a_clear_error_and_registers_nothing(client, controller, digits, training, code,
                                                                         says):
    doc = recipe()
    doc["training"] = training
    set_recipe(client, doc)
    done = retrain_and_run(client, controller)
    assert done["state"] == "failed" and done["phase"] == "train", done
    assert done["error_code"] == code and says in done["error_message"], done
    assert done["result_version"] is None and done["bundle_digest"] is None
    assert list(done["timings"]) == ["gather", "train"]
    assert versions(client) == ["1.0.0"]
    assert client.get("/api/v1/compression-jobs").json() == []


def test_an_exception_keeps_the_traceback_in_the_log_tail(client, controller, digits):
    set_recipe(client, recipe(entry_point="training_entries:raises"))
    done = retrain_and_run(client, controller)
    assert "loading the captured samples" in done["log_tail"] and "Traceback" in done["log_tail"]


def test_a_time_out_kills_the_entry_point(client, controller, digits):
    set_recipe(client, recipe(entry_point="training_entries:sleeps", timeout_s=3))
    r = client.post("/api/v1/models/digits/retrain", json={})
    job_id = r.json()["id"]
    controller.run_retraining_jobs()
    done = job(client, job_id)
    assert done["state"] == "failed" and done["error_code"] == "timeout", done
    assert "ran past its time limit of 3 s and was killed" in done["error_message"]
    assert versions(client) == ["1.0.0"]
    work = controller.retraining.work_root / f"job-{job_id}"
    assert not work.exists()                          # the work dir (copies of device inputs) is gone
    pid = int(re.search(r"pid (\d+)", done["log_tail"]).group(1))
    assert not Path(f"/proc/{pid}").exists()            # killed and reaped


def test_the_memory_limit_stops_an_entry_point_that_allocates_past_it(client, controller, digits):
    set_recipe(client, recipe(entry_point="training_entries:hogs_memory", memory_mb=512))
    done = retrain_and_run(client, controller)
    assert done["state"] == "failed" and done["error_code"] == "memory_limit", done
    assert "ran out of memory (limit 512 MB)" in done["error_message"] and "memory_mb" in done["error_message"]
    assert versions(client) == ["1.0.0"]


def strict_gate(doc: dict) -> dict:
    """A compression the gate refuses for every digits MLP: 95 % pruning, no accuracy drop allowed."""
    doc["compression"] = {"mode": "static_int8", "pruning": {"kind": "unstructured", "sparsity": 0.95},
                          "gate": {"max_accuracy_drop": 0.0}, "fallback": {"enabled": False}, "latency_runs": 2}
    return doc


def test_a_gate_refusal_keeps_the_trained_version_and_the_report_but_builds_no_bundle(client, controller, digits):
    set_recipe(client, strict_gate(recipe()))
    done = retrain_and_run(client, controller)
    assert done["state"] == "failed" and done["phase"] == "compress", done
    assert done["error_code"] == "accuracy_gate_failed" and "no bundle was built" in done["error_message"]
    assert done["report"] is not None and not done["report"]["gate"]["passed"]
    assert done["result_version"] == "1.0.1" and done["compressed_version"] is None and done["bundle_digest"] is None
    assert versions(client) == ["1.0.0", "1.0.1"]
    compression = client.get(f"/api/v1/compression-jobs/{done['compression_job_id']}").json()
    assert compression["state"] == "failed" and compression["error_code"] == "accuracy_gate_failed"
    assert client.get("/api/v1/bundles").json() == []


def test_without_a_signing_key_nothing_is_queued(client, mlp, settings, clock, transport, tmp_path):
    from fastapi.testclient import TestClient

    from edgefleet.cloud.app import create_app

    from cloudkit import ADMIN

    bare = settings.model_copy(update={"delegated_signing_key_path": None, "data_dir": tmp_path / "bare"})
    with TestClient(create_app(bare, clock=clock, transport_factory=lambda url, on_message: transport,
                               reconcile_in_background=False)) as other:
        other.headers["Authorization"] = f"Bearer {ADMIN}"
        other.post("/api/v1/models", json={"name": "digits"})
        r = other.post("/api/v1/models/digits/retrain", json={})
        assert r.status_code == 409 and "holds no signing key" in r.json()["error"]["message"]
        assert other.get("/api/v1/retraining-jobs").json() == []


# ---------------------------------------------------------------- restarts, one at a time, incidents


def test_a_job_running_when_the_controller_stopped_fails_as_interrupted(client, controller, digits, settings, clock,
                                                                        transport):
    from fastapi.testclient import TestClient

    from edgefleet.cloud.app import create_app

    from cloudkit import ADMIN

    r = client.post("/api/v1/models/digits/retrain", json={"incident_id": "inc-1"})
    job_id = r.json()["id"]
    with controller.session() as session:        # as if a controller died while compressing
        compression = CompressionJob(model_name="digits", source_version_id=1, source_version="1.0.0",
                                     variant="1.0.1-static-int8", runtime="onnx", state="running", attempts=1,
                                     data="dataset", created_at=clock())
        session.add(compression)
        session.flush()
        row = session.get(RetrainingJob, job_id)
        row.state, row.phase, row.started_at, row.compression_job_id = "running", "compress", clock(), compression.id
        compression_id = compression.id
    restarted = create_app(settings, clock=clock, transport_factory=lambda url, on_message: transport,
                           reconcile_in_background=False)
    with TestClient(restarted) as other:
        other.headers["Authorization"] = f"Bearer {ADMIN}"
        done = job(other, job_id)
        assert done["state"] == "failed" and done["error_code"] == "interrupted", done
        assert "during the compress phase" in done["error_message"]
        compression = other.get(f"/api/v1/compression-jobs/{compression_id}").json()
        assert compression["state"] == "failed" and compression["error_code"] == "interrupted"
        assert restarted.state.controller.run_retraining_jobs() == []
        assert restarted.state.controller.run_pending_jobs() == []    # nobody re-runs its compression


def test_one_job_at_a_time_per_model(client, controller, digits):
    set_recipe(client, recipe(entry_point="training_entries:writes_nothing"))
    first = client.post("/api/v1/models/digits/retrain", json={}).json()["id"]
    second = client.post("/api/v1/models/digits/retrain", json={}).json()["id"]
    with controller.session() as session:
        session.get(RetrainingJob, first).state = "running"
    assert controller.run_retraining_jobs() == []          # the model is busy: the second waits
    assert job(client, second)["state"] == "pending"
    with controller.session() as session:
        session.get(RetrainingJob, first).state = "failed"
    assert controller.run_retraining_jobs() == [second]


def test_retrain_on_incident_creates_one_job_and_only_when_the_recipe_says_auto(client, controller, clock, digits):
    def on_incident(incident_id: str, model: str = "digits"):
        with controller.session() as session:
            made = retraining.retrain_on_incident(session, incident_id=incident_id, model_name=model, now=clock())
            return made.id if made is not None else None

    assert on_incident("inc-1") is None                    # auto = false in digits-mlp.toml
    set_recipe(client, recipe(auto=True))
    job_id = on_incident("inc-1")
    assert job_id is not None and on_incident("inc-1") is None
    queued = job(client, job_id)
    assert (queued["incident_id"], queued["state"], queued["created_by"]) == ("inc-1", "pending", "incident:inc-1")
    assert on_incident("inc-2") not in (None, job_id)
    assert on_incident("inc-3", model="unknown") is None
    client.post("/api/v1/models", json={"name": "bare"})
    set_recipe(client, recipe(auto=True), model="bare")    # auto, but no version to retrain: no job
    assert on_incident("inc-4", model="bare") is None
    assert len(client.get("/api/v1/retraining-jobs").json()) == 2


def test_a_stopping_controller_kills_the_entry_point_and_the_run_ends_interrupted(tmp_path, entries):
    request = tmp_path / "request.json"
    request.write_text("{}")
    stopping = threading.Event()
    stopping.set()
    with pytest.raises(TrainingFailed) as failed:
        run_training(EntryPoint(callable="training_entries:sleeps"), request, timeout_s=600, memory_mb=1024,
                     stopping=stopping)
    assert failed.value.code == "interrupted" and "the controller stopped" in failed.value.message


# ---------------------------------------------------------------- the CLI


@pytest.fixture
def run(client, controller, capsys, monkeypatch):
    """``edgefleet ...`` against the app; ``--wait`` runs the retraining worker where it would sleep."""
    monkeypatch.setattr(cli_retrain, "pause", lambda s: controller.run_retraining_jobs())
    return cli_runner(capsys, monkeypatch, client, cli_retrain, cli_models)


def test_cli_sets_and_shows_the_recipe_and_names_the_file_and_key_of_a_wrong_one(run, client, tmp_path):
    client.post("/api/v1/models", json={"name": "digits"})
    out = run("models", "recipe", "digits", "--set", str(RECIPE))
    assert "edgefleet.compression.samples:retrain_digits" in out and "bundle, compression" in out
    assert json.loads(run("models", "recipe", "digits"))["recipe"]["training"]["memory_mb"] == 2048
    bad = tmp_path / "bad.toml"
    bad.write_text(RECIPE.read_text().replace("timeout_s = 600", "timeout_s = -1"))
    out = run("models", "recipe", "digits", "--set", str(bad), rc=2)
    assert f"{bad}: training.timeout_s" in out and "greater than 0" in out and "Traceback" not in out


def test_cli_retrain_waits_printing_the_phases_and_exits_by_the_outcome(run, client, controller, digits):
    doc = recipe(entry_point="training_entries:copies_parent")
    doc["compression"] = {"mode": "dynamic_int8", "latency_runs": 2}
    set_recipe(client, doc)
    out = run("retrain", "digits", "--incident", "inc-9", "--wait")
    for phase in ("gather", "train", "register", "compress", "bundle"):
        assert re.search(rf"{phase}\s+\d+\.\d\d s\s+done", out), out
    assert "succeeded" in out and "1.0.1-dynamic-int8" in out and "inc-9" in out
    first = client.get("/api/v1/retraining-jobs").json()[0]

    set_recipe(client, strict_gate(recipe()))
    out = run("retrain", "digits", "--wait", rc=3)
    assert "failed in phase compress" in out and "accuracy gate" in out and "gate" in out
    set_recipe(client, recipe(entry_point="training_entries:raises"))
    out = run("retrain", "start", "digits", "--wait", rc=1)
    assert "failed in phase train" in out and "ValueError: labels of digits are inconsistent" in out

    shown = run("retrain", "status", str(first["id"]), "--log")
    assert "1.0.1-dynamic-int8" in shown and "bundle 1" not in shown and first["bundle_digest"][:16] in shown
    listed = run("retrain", "list", "--model", "digits")
    assert listed.count("digits") >= 3 and "inc-9" in listed and "failed" in listed
    assert [j["state"] for j in json.loads(run("retrain", "list", "--json"))] == ["failed", "failed", "succeeded"]
    queued = json.loads(run("retrain", "digits", "--json"))
    assert queued["state"] == "pending" and queued["parent_version"] == "1.0.2"
    assert "Missing argument 'MODEL'" in run("retrain", "start", rc=2)
    assert "Commands:" in run("retrain", rc=2)


# ---------------------------------------------------------------- PostgreSQL


def test_retraining_on_postgresql(pg_url, settings, clock, transport, release_key, delegated_key, mlp, entries):
    from fastapi.testclient import TestClient

    from edgefleet.cloud.app import create_app

    from cloudkit import ADMIN

    app = create_app(settings.model_copy(update={"database_url": pg_url}), clock=clock,
                     transport_factory=lambda url, on_message: transport, reconcile_in_background=False)
    with TestClient(app) as pg:
        pg.headers["Authorization"] = f"Bearer {ADMIN}"
        controller = app.state.controller
        delegate(pg, clock, release_key, delegated_key[0])
        register_digits(pg, mlp)
        doc = recipe(entry_point="training_entries:copies_parent", auto=True)
        doc["compression"] = {"mode": "dynamic_int8", "latency_runs": 2}
        set_recipe(pg, doc)
        captured = add_captured(controller, clock)
        with controller.session() as session:
            made = retraining.retrain_on_incident(session, incident_id="inc-pg", model_name="digits", now=clock())
            assert made is not None
            assert retraining.retrain_on_incident(session, incident_id="inc-pg", model_name="digits",
                                                  now=clock()) is None
        assert controller.run_retraining_jobs() == [made.id]
        done = job(pg, made.id)
        assert done["state"] == "succeeded", done
        assert done["datasets"]["captured"]["ids"] == [captured] and done["bundle_digest"]
        assert pg.get("/api/v1/models/digits/versions/1.0.1").json()["lineage"]["incident"] == "inc-pg"


def test_cli_an_external_pipeline_downloads_registers_with_lineage_compresses_and_builds(run, client, controller,
                                                                                          digits, tmp_path):
    reference, parent = tmp_path / "reference.npz", tmp_path / "parent.onnx"
    assert "reference.npz" in run("models", "dataset-download", "digits", "--out", str(reference)).replace("\n", "")
    with np.load(reference) as npz:
        assert len(npz["x"]) == len(digits.x_train)
    run("models", "download", "digits", "1.0.0", "--out", str(parent))
    out = run("models", "upload", "digits", "1.0.1", str(parent), "--parent", "1.0.0",
              "--lineage", '{"incident": "inc-3", "pipeline": "ci#42"}')
    assert "digits 1.0.1" in out
    version = client.get("/api/v1/models/digits/versions/1.0.1").json()
    assert version["lineage"] == {"incident": "inc-3", "pipeline": "ci#42"}
    assert version["parent_id"] == client.get("/api/v1/models/digits/versions/1.0.0").json()["id"]
    assert "--lineage: not valid JSON" in run("models", "upload", "digits", "1.0.9", str(parent), "--lineage", "{",
                                              rc=2)
    compress = tmp_path / "compress.toml"
    compress.write_text('[compression]\nmode = "dynamic_int8"\nlatency_runs = 2\n')
    run("models", "compress", "digits", "1.0.1", "--variant", "1.0.1-int8", "--recipe", str(compress),
        "--data", "dataset")
    controller.run_pending_jobs()
    out = run("models", "build", "digits", "1.0.1-int8", "--recipe", str(RECIPE), "--bundle-version", "1.0.1",
              "--build", "7")
    assert "bundle digits-mlp 1.0.1+7" in out
    (bundle,) = client.get("/api/v1/bundles").json()
    assert (bundle["version"], bundle["build"]) == ("1.0.1", 7)


def test_the_controllers_worker_runs_a_queued_job_off_the_request_path(settings, clock, transport, release_key,
                                                                       delegated_key, mlp, entries):
    from fastapi.testclient import TestClient

    from edgefleet.cloud.app import create_app

    from cloudkit import ADMIN
    from testkit import wait_until

    app = create_app(settings.model_copy(update={"compression_poll_interval_s": 3600}), clock=clock,
                     transport_factory=lambda url, on_message: transport, reconcile_in_background=True)
    with TestClient(app) as live:
        live.headers["Authorization"] = f"Bearer {ADMIN}"
        delegate(live, clock, release_key, delegated_key[0])
        register_digits(live, mlp)
        doc = recipe(entry_point="training_entries:copies_parent")
        doc["compression"] = {"mode": "dynamic_int8", "latency_runs": 2}
        set_recipe(live, doc)
        queued = live.post("/api/v1/models/digits/retrain", json={})
        assert queued.status_code == 202 and queued.json()["state"] == "pending"
        done = wait_until(lambda: (j := job(live, queued.json()["id"]))["state"] in ("succeeded", "failed") and j,
                          "the retraining worker woken by the request")
        assert done["state"] == "succeeded", done
